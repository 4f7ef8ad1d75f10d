"""Learning curves: entropy, diversity, efficiency and overlap along a selection order, and their plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from atomscore.io import publish, temporary_name
from atomscore.quests.selection import read_pool, select

CURVE_FIELDS = ("n_envs", "entropy", "diversity", "efficiency", "overlap")


def learning_curve(pool, size=None, *, method="entropy", **select_args) -> dict:
    """Entropy, diversity, efficiency and overlap against selection size, along the selection order.

    Like quests' ``learning_curve``, but along the order the chosen ``method`` adds
    configurations (one selection of ``size``, default the whole pool), so each point is
    the first ``n`` selected.

    Parameters
    ----------
    pool : list of ase.Atoms or str
    size : int, optional
        Length of the curve (default: every configuration of the pool).
    method : str
        One of ``METHODS``.
    **select_args
        Passed to :func:`select` (``reference``, ``bandwidth``, ``seed``, ...).

    Returns
    -------
    dict
        ``method``, ``indices``, ``n_configs`` (1..n) and one list per measure
        (``entropy``/``diversity`` in nats, ``efficiency``, ``overlap``; with a reference
        also ``*_with_reference``), plus ``pool`` and the selection's settings.
    """
    pool = read_pool(pool, "pool")
    if size is None and select_args.get("atoms") is None and method != "weights":
        size = len(pool)
    sel = select(pool, size, method=method, **select_args)
    steps = sel.summary["steps"]
    fields = list(CURVE_FIELDS)
    if steps and "entropy_with_reference" in steps[0]:
        fields += ["entropy_with_reference", "diversity_with_reference", "overlap_with_reference"]
    curve = {"method": method, "indices": sel.indices, "n_configs": [s["n_configs"] for s in steps]}
    for f in fields:
        curve[f] = [s[f] for s in steps]
    curve["pool"] = sel.summary["pool"]
    curve["settings"] = {k: sel.summary[k] for k in ("bandwidth", "descriptors", "seed", "overlap_epsilon",
                                                     "prune_tolerance", "stopped_early")}
    if "reference" in sel.summary:
        curve["reference"] = sel.summary["reference"]
    curve["milestones"] = milestones(curve)
    return curve


def milestones(curve, fractions=(0.95, 0.99)) -> dict:
    """Where the curve first reaches each fraction of the whole pool (configurations selected).

    ``diversity``: the selection's diversity against the pool's (needs the pool summary);
    ``overlap``: the fraction of the pool's environments covered -- by reference ∪ selection
    when the curve has a reference (``overlap_with_reference``), else by the selection. None
    where the curve never gets there.

    Returns
    -------
    dict
        ``{"diversity": {"0.95": n or None, ...}, "overlap": {...}, "overlap_of": ...}``.
    """
    def first(values, target):
        for n, v in zip(curve["n_configs"], values):
            if v is not None and v >= target:
                return int(n)
        return None

    out = {}
    pool_div = (curve.get("pool") or {}).get("diversity")
    if pool_div is not None:
        out["diversity"] = {f"{f:g}": first(curve["diversity"], f * pool_div) for f in fractions}
    key = "overlap_with_reference" if "overlap_with_reference" in curve else "overlap"
    out["overlap"] = {f"{f:g}": first(curve[key], f) for f in fractions}
    out["overlap_of"] = "reference + selection" if key != "overlap" else "selection"
    return out


def plot_curve(curves, path, overwrite=False):
    """Plot entropy, diversity and overlap against the number of configurations.

    With a reference, each curve has two lines: the selection alone (solid) and reference +
    selection (dashed, what the labelled set becomes); grey dotted lines mark the whole pool
    and black dash-dotted ones the reference alone.

    Parameters
    ----------
    curves : dict or list of dict
        Results of :func:`learning_curve` (one line per curve).
    path : str or os.PathLike
        Image file (``.png``, ``.pdf``, ``.svg``); written via a temporary name.
    overwrite : bool
        Replace an existing file (otherwise refused, also one created while plotting).
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    curves = [curves] if isinstance(curves, dict) else list(curves)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), constrained_layout=True)
    panels = (("entropy", "entropy H (nats)"), ("diversity", "diversity D (nats)"),
              ("overlap", "fraction of the pool covered"))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, curve in enumerate(curves):
        colour = colours[i % len(colours)]
        with_ref = "entropy_with_reference" in curve
        for ax, (key, label) in zip(axes, panels):
            y = [np.nan if v is None else v for v in curve[key]]
            ax.plot(curve["n_configs"], y, color=colour, marker="." if len(y) < 60 else None,
                    label=f"{curve['method']}: selection")
            if with_ref:  # what the labelled set becomes: reference + the first n selected
                y = [np.nan if v is None else v for v in curve[f"{key}_with_reference"]]
                ax.plot(curve["n_configs"], y, color=colour, ls="--",
                        label=f"{curve['method']}: reference + selection")
            ax.set_xlabel("configurations selected")
            ax.set_ylabel(label)
    pool = curves[0].get("pool", {})
    if pool.get("entropy") is not None:
        axes[0].axhline(pool["entropy"], color="grey", ls=":", lw=1, label="whole pool")
        axes[1].axhline(pool["diversity"], color="grey", ls=":", lw=1, label="whole pool")
    reference = curves[0].get("reference")
    if reference is not None:
        axes[0].axhline(reference["entropy"], color="black", ls="-.", lw=1, label="reference alone")
        axes[1].axhline(reference["diversity"], color="black", ls="-.", lw=1, label="reference alone")
        if reference.get("overlap_with_pool") is not None:
            axes[2].axhline(reference["overlap_with_pool"], color="black", ls="-.", lw=1, label="reference alone")
    axes[2].axhline(1.0, color="grey", ls=":", lw=1, label="whole pool")
    axes[2].set_ylim(-0.02, 1.05)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8)
    path = Path(path)
    tmp = temporary_name(path).with_suffix(path.suffix)
    try:
        fig.savefig(tmp, dpi=100)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return publish(tmp, path, overwrite)
