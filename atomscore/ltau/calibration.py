"""How well an uncertainty ranks and sizes the real force errors of held-out configurations.

:func:`calibration_report` takes any per-atom uncertainty (LTAU's expected error, QUESTS dH,
...) and the true error magnitudes, and gives the Spearman rank correlation per atom and per
configuration (configuration means); with the probability integral transform of each error
under its predicted distribution (``cdf``, LTAU only) also the fraction of errors within the
predicted q-quantiles and the miscalibration area. :func:`ltau_calibration` computes both
from an :class:`~atomscore.ltau.LTAUForcesUQScore`; :func:`plot_calibration` draws them.
See docs/ltau.md ("Is the uncertainty calibrated?").
"""

from __future__ import annotations

import numpy as np

from atomscore.errors import InputError
from atomscore.ltau.score import DEFAULT_NEIGHBORS, LTAUForcesUQScore
from atomscore.validation import check_configs, check_int, load_array, reference_forces

#: quantiles whose coverage the report lists
REPORT_QUANTILES = (0.5, 0.68, 0.9, 0.95)

#: image formats of :func:`plot_calibration`
PLOT_SUFFIXES = (".png", ".pdf", ".svg")


def force_errors(configs, predicted_key="forces", reference_key="REF_forces"):
    """``|F_predicted - F_reference|`` of every atom, one ``(n_atoms,)`` array per configuration (eV/Å)."""
    configs = check_configs(configs, "configs")
    if predicted_key == reference_key:
        raise InputError(f"predicted and reference forces: both read from {predicted_key!r}; give two keys")
    return [np.linalg.norm(reference_forces(a, predicted_key, i) - reference_forces(a, reference_key, i), axis=1)
            for i, a in enumerate(configs)]


def _per_config(values, name, sizes=None):
    """A list of 1-D arrays (one per configuration) checked finite, and their sizes."""
    if isinstance(values, np.ndarray) and values.ndim == 1:
        values = [values]
    if not isinstance(values, (list, tuple)) or not values:
        raise InputError(f"{name}: expected a list of per-atom arrays, one per configuration, got "
                         f"{type(values).__name__}")
    out = [load_array(v, f"{name}[{i}]", ndim=1) for i, v in enumerate(values)]
    got = [len(v) for v in out]
    if sizes is not None and got != sizes:
        raise InputError(f"{name}: expected configurations of {sizes} atoms (as uncertainty), got {got}")
    return out, got


def _spearman(a, b):
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None  # undefined: too few points or a constant side
    return float(spearmanr(a, b).statistic)


def miscalibration_area(pit):
    """``∫₀¹ |F(q) - q| dq`` of the empirical CDF ``F`` of the PIT values (exact; 0 = calibrated).

    ``F(q)`` is the fraction of errors within the predicted q-quantile; the integral is summed
    exactly over the steps of ``F`` (``∫ₐᵇ |q - c| dq = G(b - c) - G(a - c)``, ``G(x) = x|x|/2``).
    """
    p = np.sort(load_array(pit, "pit", ndim=1))
    if p.size == 0:
        raise InputError("pit: expected at least one value, got none")
    if p[0] < 0 or p[-1] > 1:
        raise InputError(f"pit: expected values within [0, 1], got [{p[0]}, {p[-1]}]")
    edges = np.concatenate([[0.0], p, [1.0]])
    level = np.arange(p.size + 1) / p.size  # F on [edges[j], edges[j+1])

    def g(x):
        return 0.5 * x * np.abs(x)

    return float(np.sum(g(edges[1:] - level) - g(edges[:-1] - level)))


def calibration_report(uncertainty, errors, cdf=None, quantiles=REPORT_QUANTILES):
    """Ranking and (with ``cdf``) calibration of a per-atom uncertainty against true errors.

    Parameters
    ----------
    uncertainty : list of array_like
        One ``(n_atoms,)`` array per configuration (any unit; LTAU: eV/Å).
    errors : list of array_like
        True force-error magnitudes, eV/Å, same shapes.
    cdf : list of array_like, optional
        ``P(error <= true error)`` under each atom's predicted distribution (PIT values in [0, 1]).
    quantiles : sequence of float
        Quantiles whose coverage is reported.

    Returns
    -------
    dict
        ``n_atoms``, ``n_configurations``, ``spearman_atoms``, ``spearman_configurations``
        (of configuration means; ``None`` with fewer than 3 or constant values),
        ``mean_uncertainty``, ``mean_error``; with ``cdf``: ``within_quantile``
        (``{q: fraction of errors <= the predicted q-quantile}``, ideal ``q``) and
        ``miscalibration_area`` (0 ideal, 0.5 worst).
    """
    u, sizes = _per_config(uncertainty, "uncertainty")
    e, _ = _per_config(errors, "errors", sizes)
    if any(np.any(x < 0) for x in e):
        raise InputError("errors: expected error magnitudes >= 0")
    flat_u, flat_e = np.concatenate(u), np.concatenate(e)
    if flat_u.size == 0:
        raise InputError("uncertainty: expected at least one atom, got none")
    kept = [i for i, n in enumerate(sizes) if n]
    report = {
        "n_atoms": int(flat_u.size),
        "n_configurations": len(sizes),
        "spearman_atoms": _spearman(flat_u, flat_e),
        "spearman_configurations": _spearman(np.array([u[i].mean() for i in kept]),
                                             np.array([e[i].mean() for i in kept])),
        "mean_uncertainty": float(flat_u.mean()),
        "mean_error": float(flat_e.mean()),
    }
    if cdf is not None:
        pit = np.concatenate(_per_config(cdf, "cdf", sizes)[0])
        qs = [float(q) for q in quantiles]
        if any(not 0 < q < 1 for q in qs):
            raise InputError(f"quantiles: expected values in (0, 1), got {qs}")
        report["within_quantile"] = {q: float(np.mean(pit <= q)) for q in qs}
        report["miscalibration_area"] = miscalibration_area(pit)
    return report


def ltau_calibration(score, configs, errors, descriptors_key="descriptors", num_nearest_neighbors=None):
    """LTAU's uncertainty, PIT values and :func:`calibration_report` on held-out configurations.

    Parameters
    ----------
    score : LTAUForcesUQScore
    configs : list of ase.Atoms
        With the model's descriptors in ``arrays[descriptors_key]``.
    errors : list of array_like
        True ``|F_model - F_reference|`` per atom, eV/Å (e.g. :func:`force_errors`).
    descriptors_key : str
    num_nearest_neighbors : int, optional
        Default: the score's (``DEFAULT_NEIGHBORS``).

    Returns
    -------
    (dict, list of numpy.ndarray, list of numpy.ndarray)
        The report, the uncertainty and the PIT values, one array per configuration.
    """
    if not isinstance(score, LTAUForcesUQScore):
        raise InputError(f"score: expected an LTAUForcesUQScore, got {type(score).__name__}")
    if num_nearest_neighbors is None:
        num_nearest_neighbors = DEFAULT_NEIGHBORS
    k = check_int(num_nearest_neighbors, "num_nearest_neighbors", minimum=1)
    configs = check_configs(configs, "configs")
    uq = score.compute_batch(configs, "UNCERTAINTY", descriptors_key=descriptors_key, num_nearest_neighbors=k)
    e, _ = _per_config(errors, "errors", [len(x) for x in uq])
    sizes = np.cumsum([len(x) for x in uq])[:-1]
    x = np.concatenate([a.arrays[descriptors_key] for a in configs])
    pit = np.split(score.estimator.cdf_at(x, np.concatenate(e), k), sizes)
    report = calibration_report(uq, e, pit)
    report["num_nearest_neighbors"] = k
    return report, uq, pit


def plot_calibration(path, uncertainty, errors, cdf=None, label="LTAU", others=None):
    """Write a calibration figure: coverage of the predicted quantiles, and uncertainty vs error.

    Parameters
    ----------
    path : str or os.PathLike
        A new image file (suffix gives the format, e.g. ``.png``).
    uncertainty, errors, cdf : lists of arrays, as :func:`calibration_report`
    label : str
    others : dict, optional
        ``{label: per-atom values}`` of other uncertainties (e.g. QUESTS dH) drawn on the
        right panel, rescaled to LTAU's range (only their ranking compares).
    """
    from atomscore.io import check_output

    target = check_output(path, inputs=[], overwrite=False, what="plot", suffixes=PLOT_SUFFIXES)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    u, sizes = _per_config(uncertainty, "uncertainty")
    e, _ = _per_config(errors, "errors", sizes)
    flat_u, flat_e = np.concatenate(u), np.concatenate(e)
    fig, axes = plt.subplots(1, 2 if cdf is not None else 1, figsize=(9 if cdf is not None else 4.5, 4))
    axes = np.atleast_1d(axes)
    if cdf is not None:
        pit = np.sort(np.concatenate(_per_config(cdf, "cdf", sizes)[0]))
        q = np.linspace(0, 1, 101)
        ax = axes[0]
        ax.plot(q, np.searchsorted(pit, q, side="right") / pit.size, label=label)
        ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
        ax.set(xlabel="predicted quantile q", ylabel="fraction of errors within it",
               title=f"miscalibration area {miscalibration_area(pit):.3f}")
        ax.legend()
    ax = axes[-1]
    ax.scatter(flat_e, flat_u, s=6, alpha=0.6, label=f"{label} (Spearman {_spearman(flat_u, flat_e) or 0:.2f})")
    for name, values in (others or {}).items():
        v = np.concatenate(_per_config(values, name, sizes)[0])
        span = np.ptp(v) or 1.0
        scaled = flat_u.min() + (v - v.min()) / span * (np.ptp(flat_u) or 1.0)
        ax.scatter(flat_e, scaled, s=6, alpha=0.4, label=f"{name}, rescaled (Spearman {_spearman(v, flat_e) or 0:.2f})")
    if flat_e.min() > 0 and flat_u.min() > 0:
        ax.set(xscale="log", yscale="log")
    ax.set(xlabel="true force error |ΔF| (eV/Å)", ylabel="uncertainty (eV/Å)", title="per atom")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
