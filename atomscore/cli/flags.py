"""Every flag shared by several commands, defined once: one name, type, default and help.

Defaults come from where the computation defines them (:mod:`atomscore.quests.defaults`);
values are checked by the computation they go to (one check, the library's), before any output.
"""

from __future__ import annotations

import argparse

from atomscore.quests.defaults import DEFAULT_BANDWIDTH, DEFAULT_CUTOFF, DEFAULT_K


def int_at_least(minimum):
    """argparse type: an integer >= ``minimum``."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def add_bandwidth(p):
    """``-b/--bandwidth``: the QUESTS kernel bandwidth."""
    p.add_argument("-b", "--bandwidth", type=float, default=DEFAULT_BANDWIDTH,
                   help=f"kernel bandwidth h in descriptor units, 1/Å (default {DEFAULT_BANDWIDTH}, as quests)")


def add_descriptor_settings(p, always_computed=False):
    """``--cutoff``, ``-k`` and ``--descriptors-key``: the QUESTS descriptor read or computed.

    ``always_computed``: the command always computes descriptors (``atomscore descriptors``),
    so the defaults apply directly; otherwise None means "read them from the file if it has them".
    """
    default_cutoff, default_k = (DEFAULT_CUTOFF, DEFAULT_K) if always_computed else (None, None)
    computed = "" if always_computed else "; given, descriptors are computed even when the file holds some"
    p.add_argument("--cutoff", type=float, default=default_cutoff,
                   help=f"QUESTS descriptor cutoff radius in Å (default {DEFAULT_CUTOFF}){computed}")
    p.add_argument("-k", "--k", type=int, default=default_k, dest="k",
                   help=f"QUESTS neighbours per environment (default {DEFAULT_K})")
    p.add_argument("--descriptors-key", "--key", default="descriptors", dest="descriptors_key",
                   help="atoms.arrays key of the descriptors, read or written (default 'descriptors')")


def add_keep_descriptors(p):
    """``--keep-descriptors``: write the computed descriptors with the scores."""
    p.add_argument("--keep-descriptors", action="store_true",
                   help="also write the descriptors computed for the configurations (arrays[KEY], one row per "
                        "atom; default: the output holds the input as read plus the scores)")


def add_output(p, example, required=True, suffixes=".xyz/.extxyz, .traj, .db or .json"):
    """``-o/--output`` and ``--overwrite``."""
    p.add_argument("-o", "--output", required=required,
                   help=f"output file, format by suffix: {suffixes} (e.g. {example})")
    p.add_argument("--overwrite", action="store_true", help="replace the output file(s) if they exist")


def add_threads(p):
    """``--threads``: kernel threads."""
    p.add_argument("--threads", type=int_at_least(1), help="kernel threads (default: the CPUs available)")


def add_no_progress(p):
    """``--no-progress``."""
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_nprocs(p):
    """``--nprocs``: jobs at once for the local workflow."""
    p.add_argument("--nprocs", type=int_at_least(1), help="jobs at once when run locally (default: cores)")


def add_label(p):
    """``--label KEY``: an ``atoms.info`` key printed as a label column."""
    p.add_argument("--label", metavar="KEY",
                   help="atoms.info key shown as a label column (e.g. config_type); '-' where a frame lacks it")


def add_mace_model(p, help_text, required=False):
    """``--mace MODEL``: a trained MACE model file (``atomscore[mace]``)."""
    p.add_argument("--mace", metavar="MODEL", required=required,
                   help=f"{help_text} (a .model file of mace_run_train; needs atomscore[mace])")


#: library argument names -> the pruning flags (for the error lines of the commands that have them)
PRUNE_FLAGS = {"prune": "--prune", "prune_tolerance": "--prune-tolerance"}


def add_prune(p):
    """``--prune`` and ``--prune-tolerance``: kernel sums that skip the terms that cannot matter."""
    p.add_argument("--prune", action="store_true",
                   help="skip the kernel terms that cannot matter: every environment's skipped terms sum to at most "
                        "--prune-tolerance of its kernel sum, so the values equal the dense ones to that tolerance "
                        "(faster on large sets with structure; docs/quests.md)")
    p.add_argument("--prune-tolerance", type=float, default=None, metavar="TOL",
                   help="with --prune: the relative bound on each kernel sum's skipped terms (default 1e-10)")


def check_prune(args, estimate=None):
    """``--prune``/``--prune-tolerance`` checked by the scores' own check, before any work
    (``estimate``: the library name of a given argument that asks for an estimate, which has no
    pruned pass); returns the tolerance the command will use (None: dense)."""
    from atomscore.quests.score import check_prune as check

    return check(args.prune, args.prune_tolerance, "float64", exact_only=estimate)


def prune_settings(metadata) -> dict:
    """``{'prune_tolerance', 'prune_skipped_bound'}`` of a pruned result's metadata (None: dense sums)."""
    from atomscore.quests.score import PRUNE_BOUND_KEY

    return {key: metadata.get(key) for key in ("prune_tolerance", PRUNE_BOUND_KEY)}


def prune_line(metadata) -> str:
    """One printed line on the pruning of a result ('' for the dense sums)."""
    if metadata.get("prune_tolerance") is None:
        return ""
    from atomscore.quests.score import PRUNE_BOUND_KEY

    bound = metadata.get(PRUNE_BOUND_KEY)
    bound = max(bound) if isinstance(bound, list) else bound  # one per bandwidth: the largest
    worst = "" if bound is None else f"; largest skipped share met {bound:.3g}"
    return (f"pruned      kernel sums to a tolerance of {metadata['prune_tolerance']:g} of each environment's sum "
            f"(--prune){worst}: each log kernel sum within that many nats of the dense one")
