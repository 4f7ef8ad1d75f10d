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
                                                     "stopped_early")}
    if "reference" in sel.summary:
        curve["reference"] = sel.summary["reference"]
    return curve


def plot_curve(curves, path, overwrite=False):
    """Plot entropy, diversity and overlap against the number of configurations.

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
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.3), constrained_layout=True)
    panels = (("entropy", "entropy H (nats)"), ("diversity", "diversity D (nats)"),
              ("overlap", "overlap with the pool"))
    for curve in curves:
        for ax, (key, label) in zip(axes, panels):
            y = [np.nan if v is None else v for v in curve[key]]
            ax.plot(curve["n_configs"], y, marker="." if len(y) < 60 else None, label=curve["method"])
            ax.set_xlabel("configurations selected")
            ax.set_ylabel(label)
    pool = curves[0].get("pool", {})
    if pool.get("entropy") is not None:
        axes[0].axhline(pool["entropy"], color="grey", ls="--", lw=1, label="whole pool")
        axes[1].axhline(pool["diversity"], color="grey", ls="--", lw=1)
    axes[0].legend(fontsize=8)
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
