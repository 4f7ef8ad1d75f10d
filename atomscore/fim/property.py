"""FIMPropertyScore: the Fisher information of target properties (elastic constants).

The derivative of the property vector ``g(φ)`` (e.g. the 36 elastic constants) with respect
to the free potential parameters φ (see :mod:`atomscore.fim.parameters`) is estimated by the
finite-difference formulas of :mod:`information_matching.fim.finitediff` (FD, FD2, FD3, FD4,
CD, CD4). Every perturbed parameter set is an independent property calculation, run as a job
through the workflow of that target property (:func:`atomscore.jobs.calls.map_calls`) when
one is given; without one, the embedded backend computes them in this process (a job's
start-up costs more than its calculation) and the LAMMPS backend as LOCAL jobs (parallel
subprocesses). Then, with the target covariance ``cov``,

    FIM = Jᵀ cov⁻¹ J,   J = ∂g/∂φ  (N × P).

Defaults follow the reference (and ``information_matching``'s ``FiniteDifference``):
``derivative_kwargs={'h': 0.1, 'method': 'FD'}``, ``h`` an absolute step in φ; the elastic
constants enter in eV/Å³ unless the target property names other ``units``.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from atomscore.errors import InputError, import_extra
from atomscore.jobs.calls import job_call
from atomscore.properties import TARGET_PROPERTIES
from atomscore.quantity import ScoreQuantity
from atomscore.score import ModelScore, to_jsonable, records_metadata
from atomscore.validation import check_int, check_keys, load_array

#: default finite-difference settings (those of information_matching's FiniteDifference)
DEFAULT_DERIVATIVE_KWARGS = {"h": 0.1, "method": "FD"}

#: the target-property types this score can compute (atomscore.properties registers them)
TARGET_PROPERTY_TYPES = tuple(TARGET_PROPERTIES)

_CALC_ARGS = ("workflow",)
#: more calculate_property_args of a type (KIMRun's picks; flatten=True is what the FIM uses)
_TYPE_CALC_ARGS = {"KIMRun": ("get_test_result_args", "flatten")}

#: a covariance eigenvalue below -COV_PSD_RTOL * n * |largest| is not round-off: refused
COV_PSD_RTOL = 1e-12


# ---------------------------------------------------------------------- one evaluation
@job_call
def evaluate_target_property(target_property, potential, parameters):
    """Property vectors of one target property at several parameter sets (run inside a job).

    One model is opened per job and its parameters are changed in place between points.

    Parameters
    ----------
    target_property : dict
        ``{'target_property_type': 'ElasticConstants', 'target_property_args': {...}}``.
    potential : dict
        Potential spec ``{'potential_type': 'KIM', 'potential_args': {...}}``.
    parameters : list of dict
        Each ``{name: list of values over all extents}``, set before its calculation.

    Returns
    -------
    list of list of float
        One property vector per parameter set (for elastic constants: 36 values, row-major,
        see :meth:`~atomscore.properties.elastic.ElasticConstants.property_vector`).
    """
    from atomscore.potentials.kim import KIMPotential
    from atomscore.properties import from_spec

    pot = KIMPotential.from_spec(potential)
    prop = from_spec(target_property)
    if hasattr(prop, "property_vectors"):  # relaxing properties check the relaxation paths
        return [v.tolist() for v in prop.property_vectors(pot, parameters)]
    out = []
    for values in parameters:
        pot.set_parameters({k: np.asarray(v, dtype=float) for k, v in values.items()})
        out.append(prop.property_vector(pot).tolist())
    return out


def _call(item):
    func, kwargs = item
    return func(**kwargs)


def _map_forked(func, list_of_kwargs, nprocs):
    """``func(**kw)`` for each kw in ``nprocs`` forked worker processes (no job folders)."""
    from concurrent.futures import ProcessPoolExecutor

    from atomscore.fim.workers import _pool_context

    with ProcessPoolExecutor(max_workers=min(nprocs, len(list_of_kwargs)), mp_context=_pool_context()) as pool:
        return list(pool.map(_call, [(func, kw) for kw in list_of_kwargs]))


def _map(func, list_of_kwargs, workflow, spec=None, root=None):
    """Evaluate ``func(**kw)`` for each kw through ``workflow`` (job folders, in parallel),
    or in this process when ``workflow`` is None.

    A workflow given without a ``root_directory`` (or none at all) puts its calls under
    ``root`` (the root of the job this runs in, the score's ``job_root``), or, called
    directly, into a temporary folder removed afterwards: never into the current directory.
    """
    if workflow is None:
        return [func(**kw) for kw in list_of_kwargs]
    import tempfile

    from atomscore.jobs import make_workflow
    from atomscore.jobs.calls import map_calls

    spec = {"workflow_type": "LOCAL"} if spec is None else spec
    if not isinstance(spec, dict) or (spec.get("workflow_args") or {}).get("root_directory"):
        return map_calls(func, list_of_kwargs, workflow=workflow, path_type="fim_property", progress=None)

    def under(root):
        placed = {**spec, "workflow_args": {**(spec.get("workflow_args") or {}), "root_directory": root}}
        return map_calls(func, list_of_kwargs, workflow=make_workflow(placed), path_type="fim_property",
                         progress=None)

    if root is not None:
        return under(str(root))
    with tempfile.TemporaryDirectory(prefix="atomscore-fim-property-") as root:
        return under(root)


def _in_process(prop, workflow_spec):
    """True when a property's perturbations run in this process: the embedded backend and no
    workflow asked for. A LOCAL job costs ~0.4 s of interpreter start-up and imports, about
    ten embedded elastic-constant calculations; LAMMPS runs (seconds each) stay parallel
    jobs, and an explicit workflow (LOCAL or a scheduler) is always used."""
    return workflow_spec is None and prop.backend == "embedded"


def _n_jobs(workflow, n_points):
    """How many jobs share the points: one per local process (each job start imports
    Python, kimpy and the model, which costs more than an embedded calculation), one
    per point on a scheduler."""
    from atomscore.jobs.workflow import LocalWorkflow

    if isinstance(workflow, LocalWorkflow):
        return max(1, min(n_points, workflow.nprocs))
    return n_points


# ---------------------------------------------------------------------- input checks
def _target_properties(list_of_target_property):
    from atomscore.properties import from_spec

    items = list_of_target_property
    if isinstance(items, dict):
        items = [items]
    if not isinstance(items, (list, tuple)) or not items:
        raise InputError("list_of_target_property: expected a non-empty list of dicts "
                         "{'init_args': {...}, 'calculate_property_args': {...}}, "
                         f"got {type(list_of_target_property).__name__}")
    out = []
    for i, item in enumerate(items):
        where = f"list_of_target_property[{i}]"
        if not isinstance(item, dict) or "init_args" not in item:
            raise InputError(f"{where}: expected a dict with 'init_args' (and optionally "
                             f"'calculate_property_args'), got {item!r:.200}")
        init = item["init_args"]
        ptype = init.get("target_property_type") if isinstance(init, dict) else None
        if ptype not in TARGET_PROPERTY_TYPES:
            raise InputError(f"{where}['init_args']['target_property_type']: unknown target property "
                             f"{ptype!r}; expected one of: {', '.join(map(repr, TARGET_PROPERTY_TYPES))}")
        calc = item.get("calculate_property_args") or {}
        if not isinstance(calc, dict):
            raise InputError(f"{where}['calculate_property_args']: expected a dict, got {calc!r}")
        check_keys(calc, _CALC_ARGS + _TYPE_CALC_ARGS.get(ptype, ()), f"{where}['calculate_property_args']")
        if calc.get("flatten", True) is not True:
            raise InputError(f"{where}['calculate_property_args']['flatten']: the FIM needs the flattened "
                             f"property vector (True), got {calc['flatten']!r}")
        try:
            prop = from_spec(init, calc)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None
        from atomscore.jobs import make_workflow

        try:  # its root is chosen when the calls run, unless given (see _map)
            workflow = make_workflow(calc.get("workflow"))
        except InputError as exc:
            raise InputError(f"{where}['calculate_property_args']: {exc}") from None
        out.append((prop, workflow, calc.get("workflow")))
    return out


def _derivative_kwargs(derivative_kwargs, n_params):
    finitediff_info = import_extra("information_matching.fim.finitediff", "FIMPropertyScore", "fim").finitediff_info

    if derivative_kwargs is None:
        derivative_kwargs = {}
    if not isinstance(derivative_kwargs, dict):
        raise InputError(f"derivative_kwargs: expected a dict {{'h': ..., 'method': ...}}, got {derivative_kwargs!r}")
    check_keys(derivative_kwargs, ("h", "method"), "derivative_kwargs")
    kw = {**DEFAULT_DERIVATIVE_KWARGS, **derivative_kwargs}
    method = kw["method"]
    if not isinstance(method, str) or method.upper() not in finitediff_info:
        raise InputError(f"derivative_kwargs['method']: unknown method {method!r}; expected one of: "
                         f"{', '.join(map(repr, finitediff_info))}")
    try:
        h = np.asarray(kw["h"], dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"derivative_kwargs['h']: expected a positive number or one per parameter, got {kw['h']!r}") from None
    if h.ndim == 0:
        h = np.full(n_params, float(h))
    if h.shape != (n_params,) or not np.all(np.isfinite(h)) or np.any(h <= 0):
        raise InputError(f"derivative_kwargs['h']: expected a positive number or {n_params} positive numbers "
                         f"(one per free parameter), got {kw['h']!r}")
    return {"h": h, "method": method.upper()}


def _one_cov(value, n, where):
    cov = load_array(value, where, ndim=2)
    if cov.shape[0] != cov.shape[1]:
        raise InputError(f"{where}: expected a square {n} x {n} covariance matrix, got shape {cov.shape}")
    if cov.shape != (n, n):
        raise InputError(f"{where}: expected a {n} x {n} covariance matrix (the size of the property "
                         f"vector), got shape {cov.shape}")
    scale = max(float(np.max(np.abs(cov))), np.finfo(float).tiny)
    if not np.allclose(cov, cov.T, rtol=1e-8, atol=1e-10 * scale):
        i, j = np.unravel_index(np.argmax(np.abs(cov - cov.T)), cov.shape)
        raise InputError(f"{where}: expected a symmetric covariance matrix, got cov[{i}, {j}] = {cov[i, j]} "
                         f"but cov[{j}, {i}] = {cov[j, i]}")
    eig = np.linalg.eigvalsh(0.5 * (cov + cov.T))
    # round-off of a singular PSD matrix stays within a few n*eps of its largest eigenvalue
    if eig[0] < -COV_PSD_RTOL * n * max(abs(eig[-1]), abs(eig[0])):
        raise InputError(f"{where}: expected a positive semi-definite covariance matrix, got an eigenvalue "
                         f"{eig[0]:.6g} (eigenvalues from {eig[0]:.6g} to {eig[-1]:.6g}); a covariance has no "
                         "negative variance")
    return cov


def _covariance(cov, sizes):
    """The full (N, N) covariance from one matrix or one per property (block diagonal)."""
    n = int(sum(sizes))
    per_property = (isinstance(cov, (list, tuple)) and len(cov) == len(sizes)
                    and all(isinstance(c, (np.ndarray, str, os.PathLike)) or
                            (isinstance(c, (list, tuple)) and c and isinstance(c[0], (list, tuple)))
                            for c in cov))
    if per_property:
        full = np.zeros((n, n))
        start = 0
        for k, (c, size) in enumerate(zip(cov, sizes)):
            full[start:start + size, start:start + size] = _one_cov(c, size, f"cov[{k}]")
            start += size
        return full
    expect = f"{n}" if len(sizes) == 1 else f"{n} (the {len(sizes)} property vectors stacked: {' + '.join(map(str, sizes))})"
    if cov is None:
        raise InputError(f"cov: expected a {expect} x {expect} covariance matrix or a .npy path, got None")
    try:
        return _one_cov(cov, n, "cov")
    except InputError as exc:
        if len(sizes) > 1:
            raise InputError(f"{exc}; or give a list of {len(sizes)} matrices, one per target property "
                             f"(sizes {list(sizes)})") from None
        raise


def _inverse(cov):
    """cov⁻¹, or its pseudo-inverse with a warning when cov is singular."""
    eig = np.linalg.eigvalsh(cov)
    if eig[-1] <= 0 or eig[0] <= eig[-1] * cov.shape[0] * np.finfo(float).eps:
        warnings.warn(f"cov is singular (eigenvalues from {eig[0]:.3g} to {eig[-1]:.3g}); "
                      "using its pseudo-inverse", RuntimeWarning, stacklevel=3)
        return np.linalg.pinv(cov, hermitian=True)
    return np.linalg.inv(cov)


def _copy_potential(potential):
    """A private KIMPotential (the caller's object and its parameters are never changed)."""
    from atomscore.potentials.kim import KIMPotential, check_spec

    return KIMPotential.from_spec(check_spec(potential))


# ---------------------------------------------------------------------- the score
class FIMPropertyScore(ModelScore):
    """Fisher information matrix of target properties with respect to potential parameters.

    ``compute(target_property, score_quantity, cov, potential, parameters_optimize,
    transform=None, derivative_kwargs=None, return_jacobian=False, nprocs=1)`` (one property
    dict or a list) and ``compute_batch(list_of_target_property, ...)`` return the P×P FIM
    (P transformed parameters φ), ``Jᵀ cov⁻¹ J`` summed over the stacked property vectors, or
    ``(fim, jacobians)`` with ``return_jacobian=True``. After a call,
    :attr:`fim_index_to_parameter` maps FIM rows to parameters, :attr:`jacobians` holds one
    J per property (N_k × P) and :attr:`jacobian` all of them stacked.

    Only :class:`~atomscore.potentials.kim.KIMPotential` models are supported (as in the spec).
    """

    OUTPUT_KEY = "fim_property"
    supported_score_quantities = (ScoreQuantity.SENSITIVITY,)

    def __init__(self):
        super().__init__()
        self.fim_index_to_parameter = {}
        self.transform = None
        self.jacobian = None
        self.jacobians = []

    # ------------------------------------------------------------------ checks
    def _prepare(self, list_of_target_property, cov, potential, parameters_optimize, transform,
                 derivative_kwargs):
        from atomscore.fim.parameters import ParameterMap

        props = _target_properties(list_of_target_property)
        pot = _copy_potential(potential)
        for i, (prop, _, _) in enumerate(props):
            try:
                prop.check_potential(pot)
            except InputError as exc:
                raise InputError(f"list_of_target_property[{i}]: {exc}") from None
        pmap = ParameterMap(pot, parameters_optimize, transform)
        dkw = _derivative_kwargs(derivative_kwargs, pmap.n_params)
        sizes = [prop.property_size for prop, _, _ in props]
        full_cov = _covariance(cov, sizes)
        return props, pot, pmap, dkw, full_cov

    def check_compute_args(self, configs, score_quantity, compute_args):
        """Check everything before :meth:`run` writes a job folder."""
        self.parse_quantity(score_quantity)
        args = dict(compute_args)
        args.pop("score_quantity", None)
        missing = [k for k in ("cov", "potential", "parameters_optimize") if k not in args]
        if missing:
            raise InputError(f"FIMPropertyScore compute_args: missing {missing}")
        check_keys(args, ("cov", "potential", "parameters_optimize", "transform", "derivative_kwargs",
                          "return_jacobian", "nprocs"), "FIMPropertyScore compute_args")
        if args.get("return_jacobian"):
            raise InputError("FIMPropertyScore compute_args['return_jacobian']: a job saves the FIM only; "
                             "call compute_batch(..., return_jacobian=True) in this process for the Jacobians")
        check_int(args.get("nprocs", 1), "nprocs", minimum=1)
        self._prepare(configs, args["cov"], args["potential"], args["parameters_optimize"],
                      args.get("transform"), args.get("derivative_kwargs"))

    def prepare_compute_args(self, compute_args):
        """Potential and transform objects in their JSON forms (a new dict); a transform that a
        job could not rebuild from its JSON form is refused (see :func:`~atomscore.fim.parameters.job_transform`)."""
        from atomscore.fim.parameters import job_transform
        from atomscore.potentials.kim import KIMPotential

        out = dict(compute_args)
        t = out.get("transform")
        if t is not None and not isinstance(t, dict):
            out["transform"] = job_transform(t, out.get("potential"), out.get("parameters_optimize"))
        if isinstance(out.get("potential"), KIMPotential):
            out["potential"] = out["potential"].to_spec()
        return out

    # ------------------------------------------------------------------ compute
    @records_metadata
    def compute(self, target_property=None, score_quantity="SENSITIVITY", cov=None, potential=None,
                parameters_optimize=None, transform=None, derivative_kwargs=None, return_jacobian=False,
                nprocs=1, list_of_target_property=None):
        """The FIM of one target property (or of a list of them, as :meth:`compute_batch`).

        Parameters
        ----------
        target_property : dict or list of dict
            ``{'init_args': {...}, 'calculate_property_args': {...}}`` (see :meth:`compute_batch`).
        score_quantity, cov, potential, parameters_optimize, transform, derivative_kwargs, nprocs
            As in :meth:`compute_batch`; ``cov`` is the property's (N, N) covariance (or a
            one-element list holding it).
        return_jacobian : bool
            Also return the Jacobian.
        list_of_target_property : list of dict, optional
            The spec's keyword for ``target_property`` (give one of the two).

        Returns
        -------
        numpy.ndarray or tuple
            The (P, P) FIM; with ``return_jacobian``, ``(fim, jacobian)`` (N × P) for one
            property dict, ``(fim, list_of_jacobians)`` for a list.
        """
        if list_of_target_property is not None:
            if target_property is not None:
                raise InputError("FIMPropertyScore.compute: give target_property or list_of_target_property, not both")
            target_property = list_of_target_property
        if target_property is None:
            raise InputError("FIMPropertyScore.compute: target_property is required: a dict "
                             "{'init_args': {...}, 'calculate_property_args': {...}} or a list of them")
        single = isinstance(target_property, dict)
        result = self.compute_batch([target_property] if single else target_property, score_quantity, cov,
                                    potential, parameters_optimize, transform, derivative_kwargs,
                                    return_jacobian, nprocs)
        if return_jacobian and single:
            fim, jacobians = result
            return fim, jacobians[0]
        return result

    @records_metadata
    def compute_batch(self, list_of_target_property, score_quantity="SENSITIVITY", cov=None, potential=None,
                      parameters_optimize=None, transform=None, derivative_kwargs=None, return_jacobian=False,
                      nprocs=1):
        """The FIM of the target properties together (the Orchestrator's ``compute_batch``).

        Parameters
        ----------
        list_of_target_property : list of dict
            Each ``{'init_args': {'target_property_type': 'ElasticConstants',
            'target_property_args': {...}}, 'calculate_property_args': {'workflow': {...}}}``.
            The workflow runs that property's perturbed calculations as jobs. Without
            one, the embedded backend computes them in this process (one model, no job
            start-up; ``nprocs`` > 1: in that many forked workers) and the LAMMPS backend in
            LOCAL jobs (parallel subprocesses).
        score_quantity : ScoreQuantity or str
            ``SENSITIVITY``.
        cov : array_like or str or list
            Target covariance of the stacked property vectors, (N, N) with N their total
            length (36 per elastic-constant property by default, see ``fim_quantities``; in the
            property's units squared, by default (eV/Å³)²), a ``.npy``/``.txt`` path, or a list
            with one matrix (or path) per target property (block diagonal: no covariance
            across properties). A singular cov is replaced by its pseudo-inverse, with a warning.
        potential : KIMPotential or dict
            The model (never modified) or its spec dict.
        parameters_optimize : dict
            Free/fixed parameters θ (see :mod:`atomscore.fim.parameters`).
        transform : object or dict, optional
            Parameter transform θ -> φ; derivatives are taken in φ, whose size may differ
            from θ's (``inverse_transform(φ)`` gives every free entry of θ).
        derivative_kwargs : dict, optional
            ``{'h': step (absolute, in φ; one number or one per φ), 'method':
            'FD'|'FD2'|'FD3'|'FD4'|'CD'|'CD4'}``; default ``{'h': 0.1, 'method': 'FD'}``.
        return_jacobian : bool
            Also return the Jacobians.
        nprocs : int
            Worker processes for the perturbed calculations done in this process.

        Returns
        -------
        numpy.ndarray or tuple
            The (P, P) FIM, the sum over properties; with ``return_jacobian``,
            ``(fim, list_of_jacobians)``, one (N_k, P) Jacobian per property.
        """
        fim = self._fim(list_of_target_property, score_quantity, cov, potential, parameters_optimize,
                        transform, derivative_kwargs, nprocs)
        if return_jacobian:
            return fim, [j.copy() for j in self.jacobians]
        return fim

    def _fim(self, list_of_target_property, score_quantity, cov, potential, parameters_optimize,
             transform=None, derivative_kwargs=None, nprocs=1):
        FiniteDifference = import_extra("information_matching.fim.finitediff", "FIMPropertyScore",
                                        "fim").FiniteDifference

        self.parse_quantity(score_quantity)
        nprocs = check_int(nprocs, "nprocs", minimum=1)
        if cov is None or potential is None or parameters_optimize is None:
            missing = [k for k, v in (("cov", cov), ("potential", potential),
                                      ("parameters_optimize", parameters_optimize)) if v is None]
            raise InputError(f"FIMPropertyScore: missing {', '.join(missing)} (required)")
        props, pot, pmap, dkw, full_cov = self._prepare(
            list_of_target_property, cov, potential, parameters_optimize, transform, derivative_kwargs)
        fd = FiniteDifference(pmap.phi0.copy(), h=list(dkw["h"]), method=dkw["method"])
        params_set = fd.generate_params_set()
        need_center = fd._fd_info["scale"][0] != 0.0  # central formulas never use g(φ0)
        keys = [k for k in params_set if k != "original" or need_center]
        pmap.apply(pot)  # fixed values and θ0 in the private copy
        base = {name: np.asarray(v, dtype=float) for name, v in pot.get_parameters().items()
                if pot.parameter_info()[name]["dtype"] == "Double"}
        calls = []
        for key in keys:
            theta = pmap.to_theta(params_set[key], where=f"finite-difference point {key!r}")
            values = {name: v.copy() for name, v in base.items()}
            for (name, e), t in zip(pmap.free, theta):
                values[name][e] = t
            calls.append({name: v.tolist() for name, v in values.items()})
        spec = pot.to_spec()
        jacobians = []
        evaluation = []
        for prop, workflow, workflow_spec in props:
            if _in_process(prop, workflow_spec):
                workflow = None  # one model, its parameters changed in place between points
            evaluation.append("in-process" if workflow is None else "jobs")
            n_chunks = min(nprocs, len(calls)) if workflow is None else _n_jobs(workflow, len(calls))
            chunks = np.array_split(np.arange(len(calls)), n_chunks)
            kwargs = [{"target_property": prop.to_spec(), "potential": spec,
                       "parameters": [calls[i] for i in chunk]} for chunk in chunks]
            if workflow is None and len(kwargs) > 1:
                parts = _map_forked(evaluate_target_property, kwargs, nprocs)
            else:
                parts = _map(evaluate_target_property, kwargs, workflow, workflow_spec, root=self.job_root)
            results = [vec for part in parts for vec in part]
            preds = {key: np.asarray(r, dtype=float) for key, r in zip(keys, results)}
            if not need_center:
                preds["original"] = np.zeros_like(next(iter(preds.values())))
            jacobians.append(np.asarray(fd.estimate_derivative(preds), dtype=float).reshape(len(results[0]), -1))
        jac = np.vstack(jacobians)
        fim = jac.T @ _inverse(full_cov) @ jac
        fim = 0.5 * (fim + fim.T)
        self.jacobians = jacobians
        self.jacobian = jac
        self.fim_index_to_parameter = pmap.fim_index_to_parameter
        self.transform = pmap.transform
        self.note_metadata(**{
            "potential": {"type": "KIM", "name": pot.kim_id, "spec": spec},
            "kim_id": pot.kim_id,
            **pmap.metadata(),
            "derivative_kwargs": {"h": dkw["h"].tolist(), "method": dkw["method"]},
            "target_property": [{"init_args": p.to_spec(),
                                 "calculate_property_args": {"workflow": w} if isinstance(w, dict) else {}}
                                for p, _, w in props],
            "property_units": [p.units or "eV/A^3" for p, _, _ in props],
            "property_evaluation": evaluation,
        })
        return fim

    def get_metadata(self, score_quantity, **compute_args):
        """Quantity and cov; the computation notes potential, parameters, transform,
        fim_index_to_parameter and steps."""
        meta = {"score_quantity": ScoreQuantity.parse(score_quantity).name}
        cov = compute_args.get("cov")
        if isinstance(cov, (str, os.PathLike)):
            meta["cov"] = str(cov)
        elif isinstance(cov, (list, tuple)) and all(isinstance(c, (str, os.PathLike)) for c in cov):
            meta["cov"] = [str(c) for c in cov]
        else:
            meta["cov"] = f"array {np.shape(cov) if not isinstance(cov, (list, tuple)) else 'list'}"
        return to_jsonable(meta)
