"""The information-matching loop closed: refit the free parameters to the chosen configurations.

After :class:`~atomscore.fim.FIMMatchingScore` has chosen configurations and weights, the
model's free parameters are fitted to their labels by weighted least squares
(``scipy.optimize.least_squares``, trust-region reflective, forward-difference Jacobian),
with the parameters of one private :class:`~atomscore.potentials.kim.KIMPotential` changed in
place (the caller's potential is never changed)::

    cost(φ) = ½ Σ_i w_i ( (E_i(φ) − E_i)² + Σ_a |F_ia(φ) − F_ia|² )

over the configurations with ``w_i > 0`` (a zero weight leaves a configuration out, labels
or not), in the parameterisation φ of ``transform`` (identity by default). At the minimum,
``Σ_i w_i J_iᵀ J_i`` is the weighted FIM the matching worked with, so with weights that are
inverse label variances the fitted parameters have covariance ≈ FIM⁻¹ and a property g has
covariance ``J_g FIM⁻¹ J_gᵀ`` (:func:`property_covariance`). See docs/fim.md.
"""

from __future__ import annotations

import numpy as np

from atomscore.errors import InputError, SolverError
from atomscore.validation import check_finite_configs, load_array

#: default tolerances of least_squares (tighter than scipy's 1e-8: labels are often exact)
DEFAULT_SOLVER_KWARGS = {"xtol": 1e-12, "ftol": 1e-12, "gtol": 1e-12}


def _label(atoms, key, kind, index):
    """``info``/``arrays`` value named ``key``, else the calculator's stored result ``key``."""
    store = atoms.info if kind == "energy" else atoms.arrays
    if key in store:
        return store[key]
    calc = atoms.calc
    results = getattr(calc, "results", None) or {}
    if key in results:
        return results[key]
    where = "info" if kind == "energy" else "arrays"
    raise InputError(f"list_of_atoms: configuration {index} (weight > 0) has no {kind} label: expected "
                     f"atoms.{where}[{key!r}] or a calculator result {key!r}"
                     + (f"; pass {kind}_key=None to fit without {kind} labels" if kind == "energy" else ""))


def _labels(configs, weights, energy_key, forces_key, quantities=None):
    """``(index, atoms, weight, energy label or None, forces label or None)`` of every fitted
    configuration; ``quantities`` (one 'energy'/'forces' per configuration) fits only that one."""
    out = []
    for i, (atoms, w) in enumerate(zip(configs, weights)):
        if w == 0.0:
            continue
        e = f = None
        keys = {"energy": energy_key, "forces": forces_key}
        if quantities is not None:
            keys = {q: (k if q == quantities[i] else None) for q, k in keys.items()}
            if keys[quantities[i]] is None:
                raise InputError(f"evaluate_kwargs: configuration {i} is fitted on its {quantities[i]}, but "
                                 f"{quantities[i]}_key is None")
        if keys["energy"] is not None:
            e = load_array(_label(atoms, keys["energy"], "energy", i), f"energy label {keys['energy']!r}",
                           where=f"configuration {i}")
            if e.size != 1:
                raise InputError(f"energy label {keys['energy']!r} (configuration {i}): expected one number, got shape {e.shape}")
            e = float(e.reshape(()))
        if keys["forces"] is not None:
            f = load_array(_label(atoms, keys["forces"], "forces", i), f"forces label {keys['forces']!r}",
                           shape=(len(atoms), 3), where=f"configuration {i}")
        out.append((i, atoms, float(w), e, f))
    return out


def _weights(weights, n):
    w = load_array(weights, "weights", ndim=1)
    if w.shape != (n,):
        raise InputError(f"weights: expected one weight per configuration ({n}), got {w.size}")
    if np.any(w < 0):
        i = int(np.flatnonzero(w < 0)[0])
        raise InputError(f"weights: expected non-negative weights, got {w[i]} for configuration {i}")
    if not np.any(w > 0):
        raise InputError("weights: every weight is zero; at least one configuration must be fitted")
    return w


def refit(potential, list_of_atoms, weights, parameters_optimize, energy_key="energy", forces_key="forces",
          transform=None, solver_kwargs=None, full_output=False, evaluate_kwargs=None):
    """Fit the free parameters to weighted energy and force labels (weighted least squares).

    Parameters
    ----------
    potential : KIMPotential or dict
        The model (never modified; a private copy is fitted) or its spec dict.
    list_of_atoms : list of ase.Atoms
        Configurations with labels (not modified).
    weights : array_like or str
        One non-negative weight per configuration (e.g. the matching's
        ``fim_matching_weight_score``), or a ``.npy``/``.txt`` path; zero leaves a
        configuration out. Weights are inverse label variances: 1/eV² for energies, (Å/eV)²
        for force components.
    parameters_optimize : dict
        Free and fixed parameters and starting values (see :mod:`atomscore.fim.parameters`).
    energy_key, forces_key : str or None
        Labels: ``atoms.info[energy_key]`` (eV) and ``atoms.arrays[forces_key]`` (eV/Å), else
        the calculator's stored results of those names (as read from an extxyz file). None
        leaves that quantity out of the fit.
    transform : object or dict, optional
        Parameter transform; the fit runs in φ = transform(θ) (e.g. log scale).
    solver_kwargs : dict, optional
        More arguments of ``scipy.optimize.least_squares`` (default tolerances 1e-12).
    evaluate_kwargs : dict, optional
        Which quantity each configuration is fitted on, as for ``FIMTrainingSetScore``
        (``{'compute_energy': [...], 'compute_forces': [...]}``, exactly one per configuration):
        the labels its FIM was computed for. Default: every configuration on every key given.
    full_output : bool
        Also return a dict of the fit: ``cost``, ``nfev``, ``status``, ``message``, ``phi``,
        ``fim`` (``Σ w_i J_iᵀ J_i`` at the fit, in φ), ``fim_index_to_parameter``,
        ``configurations`` (indices fitted).

    Returns
    -------
    dict
        ``{name: [values of all extents]}`` for each parameter of ``parameters_optimize``
        after the fit; with ``full_output``, ``(values, info)``.

    Raises
    ------
    InputError
        Bad inputs, missing labels of a configuration with positive weight (named).
    SolverError
        The least-squares solver stopped without converging (its status and message).
    """
    from scipy.optimize import least_squares

    from atomscore.fim.parameters import IdentityTransform, ParameterMap
    from atomscore.fim.property import _copy_potential

    configs = check_finite_configs(list_of_atoms, "list_of_atoms")
    w = _weights(weights, len(configs))
    if energy_key is None and forces_key is None:
        raise InputError("energy_key, forces_key: both None; at least one kind of label must be fitted")
    for name, key in (("energy_key", energy_key), ("forces_key", forces_key)):
        if key is not None and not isinstance(key, str):
            raise InputError(f"{name}: expected a key name or None, got {key!r}")
    quantities = None
    if evaluate_kwargs is not None:
        from atomscore.fim.evaluator import _flags

        quantities = _flags(evaluate_kwargs, len(configs))
        if "stress" in quantities:
            raise InputError("evaluate_kwargs: refit fits energies and forces; a configuration asks for stress")
    data = _labels(configs, w, energy_key, forces_key, quantities)
    kw = dict(DEFAULT_SOLVER_KWARGS)
    if solver_kwargs is not None:
        if not isinstance(solver_kwargs, dict):
            raise InputError(f"solver_kwargs: expected a dict of least_squares arguments, got {solver_kwargs!r}")
        kw.update(solver_kwargs)
    pot = _copy_potential(potential)
    pmap = ParameterMap(pot, parameters_optimize, transform)
    identity = isinstance(pmap.transform, IdentityTransform)
    if not identity and (np.isfinite(pmap.lower).any() or np.isfinite(pmap.upper).any()):
        raise InputError("parameters_optimize: bounds with a transform are not supported by refit; give the "
                         "bounds without a transform, or drop them")
    pmap.apply(pot)
    set_theta = pot.parameter_writer(pmap.free)
    # one (sqrt weight, label vector, predictions) per fitted quantity of each configuration
    terms = []
    for _, atoms, wi, e, f in data:
        if e is not None:
            terms.append((np.sqrt(wi), np.array([e]), pot.predictions(atoms, "energy")))
        if f is not None:
            terms.append((np.sqrt(wi), f.ravel(), pot.predictions(atoms, "forces")))

    def residuals(phi):
        set_theta(phi if identity else pmap.to_theta(phi))
        return np.concatenate([sw * (predict() - label) for sw, label, predict in terms])

    bounds = (pmap.lower, pmap.upper) if identity else (-np.inf, np.inf)
    try:
        res = least_squares(residuals, pmap.phi0.copy(), bounds=bounds, x_scale="jac", **kw)
    except TypeError as exc:
        raise InputError(f"solver_kwargs: {exc}") from None
    if res.status <= 0:
        raise SolverError(f"refit: least_squares stopped without converging (status {res.status}: {res.message})")
    theta = res.x if identity else pmap.to_theta(res.x)
    set_theta(theta)
    values = {name: pot.get_parameter(name).tolist() for name in parameters_optimize}
    if not full_output:
        return values
    jac = np.asarray(res.jac, dtype=float)
    fim = jac.T @ jac
    info = {"cost": float(res.cost), "nfev": int(res.nfev), "status": int(res.status), "message": res.message,
            "phi": res.x.tolist(), "fim": 0.5 * (fim + fim.T),
            "fim_index_to_parameter": pmap.fim_index_to_parameter,
            "configurations": [i for i, *_ in data]}
    return values, info


def property_covariance(jacobian, fim):
    """Predicted covariance ``J FIM⁻¹ Jᵀ`` of a property from its Jacobian and a FIM.

    Parameters
    ----------
    jacobian : array_like
        ``(N, P)`` derivative of the property vector with respect to φ (e.g.
        ``FIMPropertyScore().jacobian``), in the property's units per φ unit.
    fim : array_like
        ``(P, P)`` FIM in φ (e.g. the weighted training-set FIM, or ``info['fim']`` of
        :func:`refit`); a singular one is pseudo-inverted.

    Returns
    -------
    numpy.ndarray
        ``(N, N)``, in the property's units squared.
    """
    j = load_array(jacobian, "jacobian", ndim=(1, 2))
    j = j[None, :] if j.ndim == 1 else j
    f = load_array(fim, "fim", ndim=2)
    if f.shape != (j.shape[1], j.shape[1]):
        raise InputError(f"fim: expected a {j.shape[1]} x {j.shape[1]} matrix (the Jacobian has {j.shape[1]} "
                         f"columns), got shape {f.shape}")
    cov = j @ np.linalg.pinv(0.5 * (f + f.T), hermitian=True) @ j.T
    return 0.5 * (cov + cov.T)


def property_prediction(potential, list_of_target_property, fim, parameters_optimize, cov, transform=None,
                        derivative_kwargs=None):
    """The target properties predicted by ``potential`` and their uncertainty from ``fim``.

    The closing check of information matching: with the refitted parameters, is each target
    value predicted within the target precision? The Jacobian comes from
    :class:`~atomscore.fim.FIMPropertyScore` (finite differences, as for the target FIM).

    Parameters
    ----------
    potential : KIMPotential or dict
        The model at the parameters to check (e.g. ``KIMPotential(kim_id, parameters=fitted)``);
        never modified.
    list_of_target_property : dict or list of dict
        As for ``FIMPropertyScore`` (``{'init_args': {...}, 'calculate_property_args': {...}}``).
    fim : array_like
        ``(P, P)`` weighted training FIM in φ (``Σ w_i FIM_i``, or ``info['fim']`` of :func:`refit`).
    parameters_optimize : dict
        The free parameters the FIM is over (same order).
    cov : array_like or list
        The target covariance (as for ``FIMPropertyScore``): the target precision.
    transform, derivative_kwargs : optional
        As for ``FIMPropertyScore``.

    Returns
    -------
    dict
        ``value`` (the property vector, in the property's units), ``uncertainty`` (predicted
        standard deviations), ``target_uncertainty`` (square roots of ``cov``'s diagonal),
        ``within_target`` (uncertainty <= target, per value), ``covariance`` (N × N),
        ``jacobian`` (N × P).
    """
    from atomscore.fim.property import FIMPropertyScore, _copy_potential, _covariance
    from atomscore.properties import from_spec

    items = [list_of_target_property] if isinstance(list_of_target_property, dict) else list(list_of_target_property)
    score = FIMPropertyScore()
    score.compute(items, "SENSITIVITY", cov=cov, potential=potential, parameters_optimize=parameters_optimize,
                  transform=transform, derivative_kwargs=derivative_kwargs)
    jac = np.asarray(score.jacobian, dtype=float)
    pot = _copy_potential(potential)
    vectors = [from_spec(item).property_vector(pot) for item in items]
    value = np.concatenate(vectors)
    covariance = property_covariance(jac, fim)
    sigma = np.sqrt(np.clip(np.diag(covariance), 0.0, None))
    target = np.sqrt(np.clip(np.diag(_covariance(cov, [len(v) for v in vectors])), 0.0, None))
    return {"value": value, "uncertainty": sigma, "target_uncertainty": target, "within_target": sigma <= target,
            "covariance": covariance, "jacobian": jac}

