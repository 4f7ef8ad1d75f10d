"""``atomscore select`` and ``atomscore curve``: choose configurations to label, and their learning curve."""

from __future__ import annotations

from pathlib import Path

from atomscore.cli import flags
from atomscore.errors import InputError
from atomscore.io import CONFIG_SUFFIXES, RESULT_SUFFIXES, check_output, write_configs, write_json_atomic

_PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def _check_output(path, inputs, flag, overwrite, suffixes=CONFIG_SUFFIXES):
    """:func:`atomscore.io.check_output` for an optional output (None stays None)."""
    return None if path is None else check_output(path, inputs=inputs, overwrite=overwrite, what=flag,
                                                  suffixes=suffixes)


def _select_args(args):
    from atomscore.quests.descriptor import QUESTSDescriptor

    if args.no_compute_descriptors:
        descriptor = None
    elif args.cutoff is not None or args.k is not None:
        settings = {key: value for key, value in (("cutoff", args.cutoff), ("k", args.k)) if value is not None}
        descriptor = QUESTSDescriptor(**settings, key=args.descriptors_key)
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
    from atomscore.quests.selection import select

    _check_inputs(args)
    out = _check_output(args.output, (args.pool, args.reference), "-o/--output", args.overwrite)
    summary_path = _check_output(args.summary, (args.pool, args.reference), "--summary", args.overwrite,
                                 RESULT_SUFFIXES)
    if summary_path is not None and summary_path.resolve() == out.resolve():
        raise InputError(f"--summary: {str(summary_path)!r} is also the -o/--output file; choose another name")
    sel = select(args.pool, args.size, method=args.method, atoms=args.atoms, **_select_args(args))
    write_configs(out, sel.configs, overwrite=args.overwrite)
    if summary_path is not None:
        write_json_atomic(summary_path, sel.summary, overwrite=args.overwrite)
    last = sel.summary["selection"] or {}
    entropy = last.get("entropy_with_reference", last.get("entropy"))
    print(f"atomscore: selected {len(sel.indices)} configurations ({last.get('n_envs', 0)} environments) by "
          f"{args.method}; entropy {entropy:.4f} nats{' with the reference' if args.reference else ''}; "
          f"wrote {out}" + (f" and {summary_path}" if summary_path else ""))
    return 0


def cmd_curve(args):
    """Learning curve along a selection order: JSON and a plot."""
    from atomscore.quests.curve import learning_curve, plot_curve

    _check_inputs(args)
    out = _check_output(args.output, (args.pool, args.reference), "-o/--output", args.overwrite, RESULT_SUFFIXES)
    plot = _check_output(args.plot, (args.pool, args.reference, args.output), "--plot", args.overwrite, _PLOT_SUFFIXES)
    curve = learning_curve(args.pool, args.size, method=args.method, atoms=args.atoms, **_select_args(args))
    write_json_atomic(out, curve, overwrite=args.overwrite)
    if plot is not None:
        plot_curve(curve, plot, overwrite=args.overwrite)
    print(f"atomscore: curve of {len(curve['indices'])} configurations by {args.method}; wrote {out}"
          + (f" and {plot}" if plot else ""))
    return 0


def _common(p):
    from atomscore.quests.selection import METHODS, REDUCTIONS

    p.add_argument("pool", help="candidate configurations (any file ASE reads; all frames)")
    p.add_argument("--method", default="entropy", choices=METHODS,
                   help="entropy (default: greedy QUESTS entropy), fps, msc, k_means, random (as quests), "
                        "uncertainty (LTAU), weights (information matching)")
    p.add_argument("--atoms", type=int, help="choose configurations up to this many environments instead of -n")
    p.add_argument("--reference", help="configurations already labelled (training set): select conditional on them")
    flags.add_bandwidth(p)
    flags.add_descriptor_settings(p)
    p.add_argument("--no-compute-descriptors", action="store_true",
                   help="never compute descriptors; configurations must carry them")
    p.add_argument("--seed", type=flags.int_at_least(0), default=0, help="seed of random and k_means (default 0)")
    p.add_argument("--reduce", default="mean", choices=REDUCTIONS, help="uncertainty per configuration: mean or max")
    p.add_argument("--min-dh", type=float, help="uncertainty: skip candidates whose largest dH against the "
                   "reference and the selected is below this (nats)")
    p.add_argument("--uncertainty-key", default="ltau_forces_uq_score", help="atoms.arrays key of the uncertainties")
    p.add_argument("--weights-key", default="fim_matching_weight_score", help="atoms.info key of the weights")
    p.add_argument("--no-pool-summary", action="store_true", help="skip the whole pool's entropy (an N x N pass)")
    flags.add_threads(p)
    flags.add_no_progress(p)


def add_select_command(subparsers):
    """Register ``atomscore select``."""
    p = subparsers.add_parser(
        "select", help="choose configurations to label next",
        description="Choose SIZE configurations from POOL (optionally conditional on an already labelled "
                    "reference) and write them, with info['pool_index'], to OUT; --summary writes the entropy, "
                    "diversity, efficiency and overlap after every step as JSON.",
        epilog="examples:\n"
               "  atomscore select pool.xyz -n 50 --reference train.xyz -o to_label.xyz\n"
               "  atomscore select pool.traj -n 20 --method fps -o picked.db --summary summary.json\n")
    _common(p)
    p.add_argument("-n", "--size", type=int, help="number of configurations to choose")
    flags.add_output(p, "to_label.xyz")
    p.add_argument("--summary", help="summary JSON file")
    p.set_defaults(func=cmd_select)


def add_curve_command(subparsers):
    """Register ``atomscore curve``."""
    p = subparsers.add_parser(
        "curve", help="entropy/diversity/overlap against selection size",
        description="Select along METHOD's order (default: the whole pool) and write entropy, diversity, "
                    "efficiency and overlap after every step as JSON, with a plot.",
        epilog="examples:\n"
               "  atomscore curve pool.xyz -o curve.json\n"
               "  atomscore curve pool.xyz --method random -n 100 --reference train.xyz -o random_curve.json\n")
    _common(p)
    p.add_argument("-n", "--size", type=int, help="length of the curve (default: the whole pool)")
    flags.add_output(p, "curve.json", suffixes=".json")
    p.add_argument("--plot", help="plot file (.png, .pdf, .svg)")
    p.set_defaults(func=cmd_curve)
