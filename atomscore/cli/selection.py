"""``atomscore select`` and ``atomscore curve``: choose configurations to label, and their learning curve."""

from __future__ import annotations

import logging
from pathlib import Path

from atomscore.cli import flags
from atomscore.cli.common import STEP, stage
from atomscore.errors import InputError
from atomscore.io import CONFIG_SUFFIXES, RESULT_SUFFIXES, check_output, write_configs, write_json_atomic

_PLOT_SUFFIXES = (".png", ".pdf", ".svg")
log = logging.getLogger(__name__)

#: library argument names -> the flags of select and curve (their error lines name the flags)
FLAG_NAMES = {"size": "-n/--size", "atoms": "--atoms", "min_delta_entropy": "--min-dh", "bandwidth": "-b/--bandwidth",
              "seed": "--seed", "reduce": "--reduce", "method": "--method", "reference": "--reference",
              "pool": "POOL", "n_threads": "--threads", "uncertainty_key": "--uncertainty-key",
              "weights_key": "--weights-key", "descriptors_key": "--descriptors-key", "cutoff": "--cutoff", "k": "-k",
              **flags.PRUNE_FLAGS}


def _check_output(path, inputs, flag, overwrite, suffixes=CONFIG_SUFFIXES):
    """:func:`atomscore.io.check_output` for an optional output (None stays None)."""
    return None if path is None else check_output(path, inputs=inputs, overwrite=overwrite, what=flag,
                                                  suffixes=suffixes)


def _select_args(args, pool_summary=None):
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
                pool_summary=(not args.no_pool_summary) if pool_summary is None else pool_summary,
                progress=False if args.no_progress else None,
                n_threads=args.threads, prune=args.prune, prune_tolerance=args.prune_tolerance)


def _check_inputs(args):
    flags.check_prune(args)  # select's own check, before any work
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
    with stage(f"select by {args.method}", bar=True, size=args.size, atoms=args.atoms, bandwidth=args.bandwidth,
               reference=args.reference):
        sel = select(args.pool, args.size, method=args.method, atoms=args.atoms, **_select_args(args))
    _log_steps(sel.summary["steps"])
    write_configs(out, sel.configs, overwrite=args.overwrite)
    if summary_path is not None:
        write_json_atomic(summary_path, sel.summary, overwrite=args.overwrite)
    print_selection(sel, args.label)
    print(f"atomscore: wrote the {len(sel.indices)} selected configurations (info['pool_index']) to {out}"
          + (f" and the summary to {summary_path}" if summary_path else ""))
    return 0


def _log_steps(steps):
    """-vv: the measures after every step."""
    for s in steps:
        log.log(STEP, "step %d: pool index %d, %d environments, entropy %.4f nats, overlap %.4f", s["step"],
                s["pool_index"], s["n_envs"], s["entropy"], s.get("overlap_with_reference", s["overlap"]))


def print_selection(sel, label_key=None):
    """The picks (step, pool index, label, atoms, overlap after it) and what the selection achieved."""
    summary = sel.summary
    steps = summary["steps"]
    with_ref = "reference" in summary
    cover = "overlap_with_reference" if with_ref else "overlap"
    print(f"{'step':>4} {'pool index':>10} " + (f"{label_key[:14]:<14} " if label_key else "")
          + f"{'atoms':>6} {'overlap':>8}")
    for step, atoms in zip(steps, sel.configs):
        label = atoms.info.get(label_key, "-") if label_key else None
        print(f"{step['step']:>4} {step['pool_index']:>10} " + (f"{str(label)[:14]:<14} " if label_key else "")
              + f"{len(atoms):>6} {step[cover]:>8.4f}")
    last = summary["selection"] or {}
    before = summary["reference"].get("overlap_with_pool") if with_ref else 0.0
    after = last.get(cover)
    pool = summary["pool"]
    who = "reference + selection" if with_ref else "selection"
    if after is not None:
        start = "" if before is None else f"{before:.4f} before -> "
        print(f"overlap with the pool: {start}{after:.4f} after: the fraction of the pool's {pool['n_envs']} "
              f"environments that the {who} covers (dH < {summary['overlap_epsilon']:g} nats); near 1, the pool "
              "holds little that is new")
    if with_ref and last.get("entropy_with_reference") is not None:
        ref = summary["reference"]
        print(f"entropy with the reference: {last['entropy_with_reference']:.4f} nats for reference + selection, "
              f"against {ref['entropy']:.4f} for the reference alone"
              + (f" and {pool['entropy']:.4f} for the whole pool" if pool.get("entropy") is not None else ""))
    elif last.get("entropy") is not None:
        print(f"entropy of the selection: {last['entropy']:.4f} nats"
              + (f", against {pool['entropy']:.4f} for the whole pool" if pool.get("entropy") is not None else ""))
    if summary.get("prune_tolerance") is not None:
        print(f"pruned kernel sums (--prune): the whole-set sums skip at most {summary['prune_tolerance']:g} of each "
              "environment's kernel sum")
    if summary.get("stopped_early"):
        print(f"stopped early: {summary['stopped_early']}")


def cmd_curve(args):
    """Learning curve(s) along selection orders: JSON and/or a plot, and where they reach the pool."""
    from atomscore.quests.curve import learning_curve, plot_curve

    _check_inputs(args)
    if args.output is None and args.plot is None:
        raise InputError("curve: give -o/--output (JSON), --plot (an image) or both")
    out = _check_output(args.output, (args.pool, args.reference), "-o/--output", args.overwrite, RESULT_SUFFIXES)
    plot = _check_output(args.plot, (args.pool, args.reference, args.output), "--plot", args.overwrite, _PLOT_SUFFIXES)
    curves = []
    for method in args.method:
        with stage(f"curve by {method}", bar=True, size=args.size, bandwidth=args.bandwidth, reference=args.reference):
            curves.append(learning_curve(args.pool, args.size, method=method, atoms=args.atoms,
                                         **_select_args(args, pool_summary=(not args.no_pool_summary) and not curves)))
        if len(curves) > 1:  # the pool's own measures come once, from the first
            curves[-1]["pool"] = curves[0]["pool"]
            from atomscore.quests.curve import milestones

            curves[-1]["milestones"] = milestones(curves[-1])
        _log_steps([{"step": n, "pool_index": i, "n_envs": e, "entropy": h, "overlap": o}
                    for n, i, e, h, o in zip(curves[-1]["n_configs"], curves[-1]["indices"], curves[-1]["n_envs"],
                                             curves[-1]["entropy"], curves[-1]["overlap"])])
    if out is not None:
        write_json_atomic(out, curves[0] if len(curves) == 1 else {"curves": curves}, overwrite=args.overwrite)
    if plot is not None:
        plot_curve(curves, plot, overwrite=args.overwrite)
    for curve in curves:
        print_milestones(curve)
    wrote = " and ".join(str(p) for p in (out, plot) if p is not None)
    print(f"atomscore: curve of {len(curves[0]['indices'])} configurations by {', '.join(args.method)}; wrote {wrote}")
    return 0


def print_milestones(curve):
    """Where diversity and overlap reach 95 and 99 % of the pool, in configurations selected."""
    m = curve.get("milestones") or {}

    def at(values):
        return ", ".join(f"{float(f):.0%} at {n} configurations" if n is not None else f"{float(f):.0%} not reached"
                         for f, n in values.items())

    n = len(curve["indices"])
    if "diversity" in m:
        print(f"{curve['method']}: diversity of the selection reaches {at(m['diversity'])} of the whole pool's "
              f"{curve['pool']['diversity']:.4f} nats (of {n} selected)")
    print(f"{curve['method']}: the {m['overlap_of']} covers {at(m['overlap'])} of the pool's environments")


def _methods(text):
    """``--method`` of curve: one method or several, comma-separated."""
    import argparse

    from atomscore.quests.selection import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if not methods or bad:
        raise argparse.ArgumentTypeError(f"expected methods among {', '.join(METHODS)}, comma-separated, got {text!r}")
    return list(dict.fromkeys(methods))


def _common(p, several=False):
    from atomscore.quests.selection import METHODS, REDUCTIONS

    p.add_argument("pool", help="candidate configurations (any file ASE reads; all frames)")
    methods = ("entropy (default: greedy QUESTS entropy), fps, msc, k_means, random (as quests), "
               "uncertainty (LTAU), weights (information matching)")
    if several:
        p.add_argument("--method", default=["entropy"], type=_methods,
                       help=methods + "; several, comma-separated (entropy,random), share one plot")
    else:
        p.add_argument("--method", default="entropy", choices=METHODS, help=methods)
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
    flags.add_prune(p)
    flags.add_threads(p)
    flags.add_no_progress(p)
    p.set_defaults(flag_names=FLAG_NAMES)


def add_select_command(subparsers):
    """Register ``atomscore select``."""
    p = subparsers.add_parser(
        "select", help="choose configurations to label next",
        description="Choose SIZE configurations from POOL (optionally conditional on an already labelled "
                    "reference) and write them, with info['pool_index'], to OUT; --summary writes the entropy, "
                    "diversity, efficiency and overlap after every step as JSON.",
        epilog="examples:\n"
               "  atomscore select pool.xyz -n 50 --reference train.xyz -o to_label.xyz\n"
               "  atomscore select pool.traj -n 20 --method fps -o picked.db --summary summary.json\n"
               "  atomscore select flagged.xyz -n 10 --reference train.xyz --label config_type -o to_label.xyz\n")
    _common(p)
    p.add_argument("-n", "--size", type=int, help="number of configurations to choose")
    flags.add_output(p, "to_label.xyz")
    flags.add_label(p)
    p.add_argument("--summary", help="summary JSON file")
    p.set_defaults(func=cmd_select)


def add_curve_command(subparsers):
    """Register ``atomscore curve``."""
    p = subparsers.add_parser(
        "curve", help="entropy/diversity/overlap against selection size",
        description="Select along METHOD's order (default: the whole pool) and write entropy, diversity, "
                    "efficiency and overlap after every step as JSON (-o) and/or a plot (--plot); print where "
                    "diversity and overlap reach 95 and 99 %% of the pool. With --reference the plot shows the "
                    "selection and reference + selection.",
        epilog="examples:\n"
               "  atomscore curve pool.xyz -o curve.json\n"
               "  atomscore curve pool.xyz --method entropy,random --plot curves.png\n"
               "  atomscore curve pool.xyz --method random -n 100 --reference train.xyz -o random_curve.json\n")
    _common(p, several=True)
    p.add_argument("-n", "--size", type=int, help="length of the curve (default: the whole pool)")
    flags.add_output(p, "curve.json", required=False, suffixes=".json")
    p.add_argument("--plot", help="plot file (.png, .pdf, .svg)")
    p.set_defaults(func=cmd_curve)
