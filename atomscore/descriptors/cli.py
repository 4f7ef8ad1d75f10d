"""``atomscore descriptors IN -o OUT``: attach QUESTS descriptors to configurations (any format)."""

from __future__ import annotations

from pathlib import Path

from atomscore.errors import InputError


def cmd_descriptors(args):
    """Read ``args.input``, attach descriptors, write ``args.output`` (format by its suffix)."""
    from atomscore.descriptors.quests import QUESTSDescriptor
    from atomscore.io import check_output, read_configs, write_data

    source = Path(args.input)
    if not source.is_file():
        raise InputError(f"descriptors: input file not found: {str(source)!r}")
    target = check_output(args.output, inputs=[source], overwrite=args.overwrite)
    descriptor = QUESTSDescriptor(cutoff=args.cutoff, k=args.k, key=args.key)  # checks before reading
    configs = read_configs(source, "descriptors: input")
    progress = False if args.no_progress else None
    new = descriptor.attach(configs, progress=progress)
    write_data(target, new)
    n_atoms = sum(len(a) for a in new)
    print(f"atomscore: wrote {len(new)} configurations ({n_atoms} environments, "
          f"arrays[{args.key!r}] with {descriptor.n_features} columns) to {target}")
    return 0


def add_descriptors_command(subparsers):
    """Register ``atomscore descriptors`` on an argparse subparsers object."""
    p = subparsers.add_parser(
        "descriptors", help="attach QUESTS descriptors to configurations",
        description="Compute the QUESTS descriptor of every atom (the quests package; species are not "
                    "distinguished) and write the configurations with arrays[KEY], in the format of the "
                    "output's suffix.",
        epilog="examples:\n"
               "  atomscore descriptors train.xyz -o train_descriptors.xyz\n"
               "  atomscore descriptors md.traj --cutoff 4.5 -k 24 -o md_descriptors.db\n")
    p.add_argument("input", help="configurations (any format ASE reads; all frames)")
    p.add_argument("-o", "--output", required=True,
                   help="output file, format by suffix: .xyz/.extxyz, .traj, .db or .json")
    p.add_argument("--overwrite", action="store_true", help="replace --output if it exists")
    p.add_argument("--cutoff", type=float, default=5.0, help="cutoff radius in Å (default 5.0)")
    p.add_argument("-k", "--k", type=int, default=32, dest="k", help="nearest neighbours per environment (default 32)")
    p.add_argument("--key", default="descriptors", help="atoms.arrays key to write (default 'descriptors')")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_descriptors)
