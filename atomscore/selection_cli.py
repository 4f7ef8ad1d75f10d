"""``atomscore select`` and ``atomscore curve``: choose configurations to label, and their learning curve."""

from __future__ import annotations

import os
from pathlib import Path

from atomscore.errors import InputError

_PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _check_output(path, inputs, flag, force, suffixes=None):
    """Refuse, before any work, an output that would overwrite an input or a file, or cannot be written."""
    if path is None:
        return None
    target = Path(path)
    if suffixes is not None and target.suffix.lower() not in suffixes:
        raise InputError(f"{flag}: expected a file ending in {', '.join(suffixes)}, got {str(target)!r}")
    for source in inputs:
        if source is not None and Path(source).exists() and target.resolve() == Path(source).resolve():
            raise InputError(f"{flag}: {str(target)!r} would overwrite the input {str(source)!r}; choose another name")
    if target.is_dir():
        raise InputError(f"{flag}: {str(target)!r} is a folder; expected a file name")
    if target.exists() and not force:
        raise InputError(f"{flag}: {str(target)!r} exists; choose another name or pass --overwrite")
    parent = target.parent
    if not parent.is_dir():
        raise InputError(f"{flag}: folder {str(parent)!r} does not exist; create it first")
    if not os.access(parent, os.W_OK):
        raise InputError(f"{flag}: cannot write in {str(parent)!r}")
    return target


def _write_json(target, data):
    from atomscore.io import write_json_atomic

    write_json_atomic(target, data)


def _write_configs(target, configs):
    from atomscore import io as _io

    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    try:
        writer = getattr(_io, "write_configs", None)
        if writer is not None:
            writer(tmp, configs)
        elif target.suffix.lower() in (".xyz", ".extxyz"):
            _io.write_extxyz(tmp, configs)
        else:
            import ase.io

            ase.io.write(tmp, configs)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)


def _check_config_suffix(target, flag):
    """Refuse an output name from which ASE cannot tell a format (before any work)."""
    from ase.io.formats import filetype, ioformats

    try:
        fmt = filetype(str(target), read=False)
        ok = fmt in ioformats and ioformats[fmt].can_write
    except Exception:
        ok = False
    if not ok:
        raise InputError(f"{flag}: cannot tell a configuration format ASE writes from {str(target)!r}; use .xyz, "
                         ".extxyz, .traj, .db or .json")


def _select_args(args):
    from atomscore.descriptors.quests import QUESTSDescriptor

    if args.no_compute_descriptors:
        descriptor = None
    elif args.cutoff is not None or args.k is not None:
        descriptor = QUESTSDescriptor(cutoff=5.0 if args.cutoff is None else args.cutoff,
                                      k=32 if args.k is None else args.k, key=args.descriptors_key)
    else:
        descriptor = "auto"
    return dict(reference=args.reference, bandwidth=args.bandwidth, descriptors_key=args.descriptors_key,
                descriptor=descriptor, seed=args.seed, uncertainty_key=args.uncertainty_key, reduce=args.reduce,
                min_delta_entropy=args.min_dh, weights_key=args.weights_key,
                pool_summary=not args.no_pool_summary, progress=False if args.no_progress else None,
                n_threads=args.threads)


def _check_inputs(args):
    for flag, path in (("POOL", args.pool), ("--reference", args.reference)):
        if path is not None and not Path(path).is_file():
            raise InputError(f"{flag}: file not found: {str(path)!r}")


def cmd_select(args):
    """Select configurations; write them (and the summary) only when the selection succeeded."""
    from atomscore.selection import select

    _check_inputs(args)
    out = _check_output(args.output, (args.pool, args.reference), "-o/--output", args.overwrite)
    _check_config_suffix(out, "-o/--output")
    summary_path = _check_output(args.summary, (args.pool, args.reference), "--summary", args.overwrite, (".json",))
    if summary_path is not None and summary_path.resolve() == out.resolve():
        raise InputError(f"--summary: {str(summary_path)!r} is also the -o/--output file; choose another name")
    sel = select(args.pool, args.size, method=args.method, atoms=args.atoms, **_select_args(args))
    _write_configs(out, sel.configs)
    if summary_path is not None:
        _write_json(summary_path, sel.summary)
    last = sel.summary["selection"] or {}
    entropy = last.get("entropy_with_reference", last.get("entropy"))
    print(f"atomscore: selected {len(sel.indices)} configurations ({last.get('n_envs', 0)} environments) by "
          f"{args.method}; entropy {entropy:.4f} nats{' with the reference' if args.reference else ''}; "
          f"wrote {out}" + (f" and {summary_path}" if summary_path else ""))
    return 0


def cmd_curve(args):
    """Learning curve along a selection order: JSON and a plot."""
    from atomscore.selection import learning_curve, plot_curve

    _check_inputs(args)
    out = _check_output(args.output, (args.pool, args.reference), "-o/--output", args.overwrite, (".json",))
    plot = _check_output(args.plot, (args.pool, args.reference, args.output), "--plot", args.overwrite, _PLOT_SUFFIXES)
    curve = learning_curve(args.pool, args.size, method=args.method, atoms=args.atoms, **_select_args(args))
    _write_json(out, curve)
    if plot is not None:
        plot_curve(curve, plot)
    print(f"atomscore: curve of {len(curve['indices'])} configurations by {args.method}; wrote {out}"
          + (f" and {plot}" if plot else ""))
    return 0


def _common(p):
    from atomscore.selection import METHODS, REDUCTIONS

    p.add_argument("pool", help="candidate configurations (any file ASE reads; all frames)")
    p.add_argument("--method", default="entropy", choices=METHODS,
                   help="entropy (default: greedy QUESTS entropy), fps, msc, k_means, random (as quests), "
                        "uncertainty (LTAU), weights (information matching)")
    p.add_argument("--atoms", type=int, help="choose configurations up to this many environments instead of -n")
    p.add_argument("--reference", help="configurations already labelled (training set): select conditional on them")
    p.add_argument("-b", "--bandwidth", type=float, default=0.015, help="kernel bandwidth h (default 0.015)")
    p.add_argument("--descriptors-key", default="descriptors", help="atoms.arrays key of the descriptors")
    p.add_argument("--cutoff", type=float, help="compute QUESTS descriptors with this cutoff (Å) for all")
    p.add_argument("-k", "--k", type=int, dest="k", help="compute QUESTS descriptors with k neighbours for all")
    p.add_argument("--no-compute-descriptors", action="store_true",
                   help="never compute descriptors; configurations must carry them")
    p.add_argument("--seed", type=int, default=0, help="seed of random and k_means (default 0)")
    p.add_argument("--reduce", default="mean", choices=REDUCTIONS, help="uncertainty per configuration: mean or max")
    p.add_argument("--min-dh", type=float, help="uncertainty: skip candidates whose largest dH against the "
                   "reference and the selected is below this (nats)")
    p.add_argument("--uncertainty-key", default="ltau_forces_uq_score", help="atoms.arrays key of the uncertainties")
    p.add_argument("--weights-key", default="fim_matching_weight_score", help="atoms.info key of the weights")
    p.add_argument("--no-pool-summary", action="store_true", help="skip the whole pool's entropy (an N x N pass)")
    p.add_argument("--threads", type=int, help="kernel threads (default: the CPUs available)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_select_command(subparsers):
    """Register ``atomscore select``."""
    p = subparsers.add_parser(
        "select", help="choose configurations to label next",
        description="Choose SIZE configurations from POOL (optionally conditional on an already labelled "
                    "reference) and write them, with info['pool_index'], to OUT; --summary writes the entropy, "
                    "diversity, efficiency and overlap after every step as JSON.")
    _common(p)
    p.add_argument("-n", "--size", type=int, help="number of configurations to choose")
    p.add_argument("-o", "--output", required=True, help="selected configurations (.xyz, .extxyz, .traj, ...)")
    p.add_argument("--summary", help="summary JSON file")
    p.set_defaults(func=cmd_select)


def add_curve_command(subparsers):
    """Register ``atomscore curve``."""
    p = subparsers.add_parser(
        "curve", help="entropy/diversity/overlap against selection size",
        description="Select along METHOD's order (default: the whole pool) and write entropy, diversity, "
                    "efficiency and overlap after every step as JSON, with a plot.")
    _common(p)
    p.add_argument("-n", "--size", type=int, help="length of the curve (default: the whole pool)")
    p.add_argument("-o", "--output", required=True, help="curve JSON file")
    p.add_argument("--plot", help="plot file (.png, .pdf, .svg)")
    p.set_defaults(func=cmd_curve)
