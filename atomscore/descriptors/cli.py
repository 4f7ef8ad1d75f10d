"""``atomscore descriptors IN -o OUT``: attach QUESTS descriptors to configurations."""

from __future__ import annotations

from pathlib import Path

from atomscore.errors import InputError


def cmd_descriptors(args):
    """Read ``args.input``, attach descriptors, write ``args.output`` (exact extxyz)."""
    import ase.io

    from atomscore.descriptors.quests import QUESTSDescriptor
    from atomscore.io import write_extxyz

    source = Path(args.input)
    if not source.is_file():
        raise InputError(f"descriptors: input file not found: {str(source)!r}")
    target = Path(args.output)
    if target.resolve() == source.resolve():
        raise InputError(f"descriptors: output {str(target)!r} would overwrite the input; choose another name")
    descriptor = QUESTSDescriptor(cutoff=args.cutoff, k=args.k, key=args.key)  # checks before reading
    try:
        configs = ase.io.read(source, index=":")
    except Exception as exc:  # unreadable file: one clear message
        raise InputError(f"descriptors: cannot read {str(source)!r}: {exc}") from None
    progress = False if args.no_progress else None
    new = descriptor.attach(configs, progress=progress)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.tmp")
    try:
        write_extxyz(tmp, new)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    n_atoms = sum(len(a) for a in new)
    print(f"atomscore: wrote {len(new)} configurations ({n_atoms} environments, "
          f"arrays[{args.key!r}] with {descriptor.n_features} columns) to {target}")
    return 0


def add_descriptors_command(subparsers):
    """Register ``atomscore descriptors`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "descriptors", help="attach QUESTS descriptors to configurations",
        description="Compute the QUESTS descriptor of every atom (the quests package; species are not "
                    "distinguished) and write the configurations with arrays[KEY] as extxyz.")
    p.add_argument("input", help="configurations (any format ASE reads; all frames)")
    p.add_argument("-o", "--output", required=True, help="output extxyz file")
    p.add_argument("--cutoff", type=float, default=5.0, help="cutoff radius in Å (default 5.0)")
    p.add_argument("-k", "--k", type=int, default=32, dest="k", help="nearest neighbours per environment (default 32)")
    p.add_argument("--key", default="descriptors", help="atoms.arrays key to write (default 'descriptors')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_descriptors)
