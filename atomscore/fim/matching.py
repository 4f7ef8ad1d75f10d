"""FIMMatchingScore: optimal training weights by information matching.

Given the Fisher information matrix (FIM) :math:`\\mathcal{I}_i` of every candidate
configuration (``info['fim_training_set_score']``, written by
:class:`~atomscore.fim.training_set.FIMTrainingSetScore`) and the FIM
:math:`\\mathcal{I}_{\\rm target}` of the target properties (written by
:class:`~atomscore.fim.property.FIMPropertyScore`), the information-matching method finds
the smallest non-negative weights :math:`w_i` such that

.. math:: \\sum_i w_i \\mathcal{I}_i \\succeq \\mathcal{I}_{\\rm target},

i.e. training on the weighted candidates constrains the parameters at least as well as
the target precision needs. The convex problem (a semidefinite program) is formulated and
solved by ``information_matching.ConvexOpt`` through cvxpy, with CLARABEL by default or the
SDPA solver (``sdpa-python``) on request; when SDPA ends infeasible or inaccurate the problem
is solved again with CLARABEL and the solution info says so (``'fallback'``). This module
validates the inputs, preconditions the FIMs, checks the solver's status and returns one
weight per configuration.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from atomscore.errors import InputError, SolverError
from atomscore.quantity import ScoreQuantity
from atomscore.score import ConfigurationScore, records_metadata
from atomscore.validation import check_choice, check_finite_configs, load_array

#: where FIMTrainingSetScore (ours and the reference's) stores each configuration's FIM
CANDIDATE_FIM_KEY = "fim_training_set_score"
#: where FIMPropertyScore stores the target FIM in score_results.json
TARGET_FIM_KEY = "fim_property_score"
#: preconditioning modes. "diagonal" (the default) first changes parameter units,
#: I -> D I D with D = diag(I_target)^(-1/2), which leaves the matching constraint and so the
#: weights exactly unchanged but gives every parameter the same scale (SDPA otherwise
#: returns wrong "optimal" answers when parameters differ by orders of magnitude), then
#: applies "max_frobenius". "max_frobenius" (the reference's scheme) divides the target by
#: its Frobenius norm and every candidate by the largest candidate norm (optimum unchanged).
#: "frobenius" divides each candidate by its own norm (this changes the objective: weights
#: are counted in units of each configuration's information). "none" leaves the FIMs as
#: they are.
PRECONDITION_MODES = ("diagonal", "max_frobenius", "frobenius", "none")
#: SDPA's stopping tolerances when the caller sets none: its defaults (1e-7) end about one
#: problem in four with 'pdFEAS' (reported as optimal_inaccurate) although the answer
#: agrees with CLARABEL to 1e-6; 1e-6 is well below the zero_tol of the weights.
SDPA_DEFAULT_OPTIONS = {"epsilonStar": 1e-6, "epsilonDash": 1e-6}
#: a solution whose raw weights under-match the target by more than this (lowest
#: eigenvalue of sum_i w_i I_i - I_target relative to |I_target|_F, in parameter units where
#: the target has a unit diagonal), is refused even when the solver calls it optimal
VERIFY_TOL = 1e-4
#: the same check on the weights returned, after those below zero_tol are set to 0
MATCH_TOL = 1e-3
#: the solvers offered by default, in order of preference. CLARABEL first: at M = 10,000
#: candidates it takes about a second where SDPA takes minutes and a GB (SDPA scales as
#: M^2.4), and SDPA calls some feasible problems infeasible (benchmarks/fim_matching.py)
PREFERRED_SOLVERS = ("CLARABEL", "SDPA")
#: weight_tolerance keys and their defaults (those of information_matching)
DEFAULT_WEIGHT_TOLERANCE = {"zero_tol": 1e-4, "zero_tol_dual": 1e-4}
#: relative tolerances of the input checks
SYMMETRY_RTOL = 1e-6
PSD_RTOL = 1e-8


# --------------------------------------------------------------------------- inputs
def installed_solvers() -> list:
    """Names of the cvxpy solvers installed here (e.g. ``['CLARABEL', 'SCS', 'SDPA']``)."""
    import cvxpy as cp

    return list(cp.installed_solvers())


def default_solver() -> str:
    """CLARABEL when installed (it is a dependency of cvxpy), else SDPA."""
    have = installed_solvers()
    for name in PREFERRED_SOLVERS:
        if name in have:
            return name
    raise SolverError(f"FIMMatchingScore: neither SDPA nor CLARABEL is installed (installed cvxpy "
                      f"solvers: {', '.join(have) or 'none'}); pip install sdpa-python clarabel")


def _check_fim(matrix, label, shape=None):
    """A square, symmetric, positive semidefinite float matrix (a new array), or InputError."""
    fim = np.array(matrix, dtype=float)  # a copy: we symmetrise it below
    if fim.ndim == 0 or (fim.ndim == 1 and fim.size == 1):
        fim = fim.reshape(1, 1)
    elif fim.ndim == 1 and math.isqrt(fim.size) ** 2 == fim.size:
        n = math.isqrt(fim.size)
        fim = fim.reshape(n, n)  # a flattened P x P matrix
    if fim.ndim != 2 or fim.shape[0] != fim.shape[1]:
        raise InputError(f"{label}: expected a square P x P FIM, got shape {fim.shape}")
    if shape is not None and fim.shape != tuple(shape):
        raise InputError(f"{label}: expected a {shape[0]}x{shape[1]} FIM (the size of the target FIM), "
                         f"got {fim.shape[0]}x{fim.shape[1]}")
    if not np.all(np.isfinite(fim)):
        raise InputError(f"{label}: expected finite values, got NaN or infinity")
    scale = float(np.max(np.abs(fim))) if fim.size else 0.0
    asym = float(np.max(np.abs(fim - fim.T))) if fim.size else 0.0
    if asym > SYMMETRY_RTOL * scale:
        i, j = np.unravel_index(np.argmax(np.abs(fim - fim.T)), fim.shape)
        raise InputError(f"{label}: a FIM must be symmetric, got [{i},{j}]={fim[i, j]!r} but "
                         f"[{j},{i}]={fim[j, i]!r}")
    fim = 0.5 * (fim + fim.T)
    if scale > 0:
        lowest = float(np.linalg.eigvalsh(fim)[0])
        if lowest < -PSD_RTOL * float(np.linalg.norm(fim, 2)):
            raise InputError(f"{label}: a FIM must be positive semidefinite, got an eigenvalue {lowest!r}")
    return fim


def candidate_fims(list_of_atoms, fim_key=CANDIDATE_FIM_KEY):
    """The FIM of every configuration, read from ``atoms.info[fim_key]``.

    Parameters
    ----------
    list_of_atoms : list of ase.Atoms
        Never modified.
    fim_key : str
        The info key (default ``'fim_training_set_score'``). A value that ASE could not
        decode (the text ``'_JSON [[...]]'``) is decoded here.

    Returns
    -------
    list of numpy.ndarray
        One symmetric ``(P, P)`` array per configuration, all of the same ``P``.

    Raises
    ------
    InputError
        Naming the configuration index that lacks the key, or whose FIM is not a
        square symmetric matrix of the same size as the first one.
    """
    configs = check_finite_configs(list_of_atoms, "list_of_atoms")
    fims = []
    for i, atoms in enumerate(configs):
        if fim_key not in atoms.info:
            have = sorted(k for k in atoms.info if not k.startswith("_"))
            raise InputError(f"list_of_atoms: configuration {i} has no info[{fim_key!r}] (the FIM written "
                             f"by FIMTrainingSetScore); it has: {have or 'none'}")
        value = atoms.info[fim_key]
        if isinstance(value, str):
            text = value[len("_JSON "):] if value.startswith("_JSON ") else value
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                raise InputError(f"list_of_atoms: configuration {i}: info[{fim_key!r}] is text that is not "
                                 f"a matrix: {value!r:.80}") from None
        shape = fims[0].shape if fims else None
        fims.append(_check_fim(value, f"list_of_atoms: configuration {i}: info[{fim_key!r}]", shape))
    return fims


def _target_parts(value, label):
    """Yield ``(array, label)`` for every target FIM given in ``value`` (see :func:`target_fim`)."""
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if path.suffix == ".json":
            if not path.is_file():
                raise InputError(f"{label}: file not found: {str(path)!r}")
            try:
                data = json.loads(path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise InputError(f"{label}: cannot read {str(path)!r} as JSON: {exc}") from None
            yield from _target_parts(data, f"{label} ({path.name})")
            return
        yield load_array(value, label), label  # .npy / .txt, or a clear message
        return
    if isinstance(value, dict):
        if TARGET_FIM_KEY not in value:
            raise InputError(f"{label}: expected a dict with key {TARGET_FIM_KEY!r} (as in "
                             f"score_results.json of FIMPropertyScore), got keys {sorted(map(str, value))}")
        yield from _target_parts(value[TARGET_FIM_KEY], f"{label}[{TARGET_FIM_KEY!r}]")
        return
    if isinstance(value, (list, tuple)) and value and all(
            isinstance(v, (dict, str, os.PathLike)) for v in value):
        for k, item in enumerate(value):
            yield from _target_parts(item, f"{label}[{k}]")
        return
    yield load_array(value, label), label


def target_fim(fim_property, name="fim_property"):
    """The target FIM: the sum of every property FIM given.

    Parameters
    ----------
    fim_property : str, os.PathLike, dict, array_like or list of them
        A ``score_results.json`` path of FIMPropertyScore (or a ``.npy``/``.txt`` file),
        its dict ``{'fim_property_score': ..., '_metadata': ...}``, or the array itself:
        ``(P, P)`` for one property, ``(K, P, P)`` for ``K`` properties; or a list of
        these.

    Returns
    -------
    numpy.ndarray
        ``(P, P)``: the sum of the ``K`` property FIMs. Summing is the FIM of all the
        properties together when their errors are independent (block-diagonal target
        covariance), and matching the sum guarantees every property's target precision.

    Raises
    ------
    InputError
        Unreadable path, missing key, non-square, non-symmetric or mismatched FIMs.
    """
    if fim_property is None:
        raise InputError(f"{name}: required: the target FIM (score_results.json of FIMPropertyScore, "
                         "its dict, or a P x P array)")
    total = None
    for arr, label in _target_parts(fim_property, name):
        stack = arr if arr.ndim == 3 else arr[None] if arr.ndim == 2 else np.asarray(arr).reshape(1, -1)
        for k, item in enumerate(stack):
            lab = f"{label}[{k}]" if arr.ndim == 3 else label
            fim = _check_fim(item, lab, None if total is None else total.shape)
            total = fim if total is None else total + fim
    if total is None:
        raise InputError(f"{name}: expected at least one target FIM, got an empty list")
    return total


#: metadata fields that say what the rows of a FIM are; FIMs differing in one are not comparable
PROVENANCE_FIELDS = ("fim_index_to_parameter", "transform", "kim_id")
#: the OUTPUT_KEY under which FIMTrainingSetScore stores its metadata on each configuration
CANDIDATE_OUTPUT_KEY = "fim_training_set"


def fim_provenance(metadata):
    """The fields of a FIM's metadata (:data:`PROVENANCE_FIELDS`) that say which parameters its
    rows are; ``None`` when none is recorded (a plain array)."""
    if isinstance(metadata, str):
        try:
            metadata = json.loads(metadata)
        except json.JSONDecodeError:
            return None
    if not isinstance(metadata, dict):
        return None
    out = {}
    for field in PROVENANCE_FIELDS:
        value = metadata.get(field)
        if field == "kim_id" and value is None and isinstance(metadata.get("potential"), dict):
            pot = metadata["potential"]
            value = pot.get("name") or (pot.get("potential_args") or {}).get("kim_id")
        if isinstance(value, str) and field != "kim_id":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass
        if value is not None and value != "None":
            out[field] = value
    return out or None


def candidate_provenance(atoms, fim_key=CANDIDATE_FIM_KEY):
    """What a candidate's FIM rows are, from ``info['_metadata']['fim_training_set']`` or the
    flat ``info['fim_training_set_<field>']`` keys; None when the FIM carries no metadata."""
    if fim_key != CANDIDATE_FIM_KEY:
        return None
    meta = atoms.info.get("_metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = None
    found = fim_provenance(meta.get(CANDIDATE_OUTPUT_KEY)) if isinstance(meta, dict) else None
    if found:
        return found
    return fim_provenance({f: atoms.info[f"{CANDIDATE_OUTPUT_KEY}_{f}"] for f in PROVENANCE_FIELDS
                           if f"{CANDIDATE_OUTPUT_KEY}_{f}" in atoms.info})


def target_provenance(fim_property, name="fim_property"):
    """``[(label, provenance)]`` of every target FIM given as a results dict or JSON file
    that records its metadata (arrays record none)."""
    out = []
    if isinstance(fim_property, (str, os.PathLike)) and Path(fim_property).suffix == ".json":
        try:
            data = json.loads(Path(fim_property).read_text())
        except (OSError, json.JSONDecodeError):
            return out  # target_fim has already said what is wrong with the file
        return target_provenance(data, f"{name} ({Path(fim_property).name})")
    if isinstance(fim_property, dict):
        found = fim_provenance(fim_property.get("_metadata"))
        return [(name, found)] if found else []
    if isinstance(fim_property, (list, tuple)) and all(isinstance(v, (dict, str, os.PathLike)) for v in fim_property):
        for k, item in enumerate(fim_property):
            out.extend(target_provenance(item, f"{name}[{k}]"))
    return out


def _canonical(value):
    return json.dumps(value, sort_keys=True, default=str)


def check_same_parameters(labelled):
    """Refuse FIMs whose recorded provenance differs: ``labelled`` is ``[(label, provenance)]``.

    Raises
    ------
    InputError
        Naming both FIMs and showing both values of the first field that differs.
    """
    labelled = [(label, prov) for label, prov in labelled if prov]
    if len(labelled) < 2:
        return
    ref_label, ref = labelled[0]
    for label, prov in labelled[1:]:
        for field in PROVENANCE_FIELDS:
            if field in ref and field in prov and _canonical(ref[field]) != _canonical(prov[field]):
                raise InputError(
                    f"FIMMatchingScore: {label} and {ref_label} are FIMs of different parameters: their "
                    f"{field} differ:\n  {label}: {_canonical(prov[field])}\n  {ref_label}: {_canonical(ref[field])}\n"
                    "compute the training-set and property FIMs with the same potential, "
                    "parameters_optimize and transform")


def _check_weight_upper_bound(value, nconfigs):
    label = "convexopt_init_kwargs['weight_upper_bound']"
    if value is None or (isinstance(value, str) and value.strip().lower() == "inf"):
        return None
    if isinstance(value, str):
        raise InputError(f"{label}: expected None, 'inf', a number or one number per configuration, "
                         f"got {value!r}")
    arr = load_array(value, label, ndim=(0, 1), finite=False)
    if arr.ndim == 1 and arr.size != nconfigs:
        raise InputError(f"{label}: expected one bound per configuration ({nconfigs}), got {arr.size}")
    if np.any(np.isnan(arr)) or np.any(arr < 0):
        raise InputError(f"{label}: expected non-negative bounds, got {value!r}")
    if arr.ndim == 0:
        return None if np.isposinf(arr) else float(arr)
    return arr


def _check_tolerance(weight_tolerance):
    tol = dict(DEFAULT_WEIGHT_TOLERANCE)
    if weight_tolerance is None:
        return tol
    if not isinstance(weight_tolerance, dict):
        raise InputError(f"weight_tolerance: expected a dict with keys {sorted(tol)}, "
                         f"got {type(weight_tolerance).__name__}")
    for key, value in weight_tolerance.items():
        check_choice(key, "weight_tolerance key", tuple(DEFAULT_WEIGHT_TOLERANCE))
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"weight_tolerance[{key!r}]: expected a non-negative number, got {value!r}") from None
        if not math.isfinite(number) or number < 0:
            raise InputError(f"weight_tolerance[{key!r}]: expected a non-negative number, got {value!r}")
        tol[key] = number
    return tol


def _check_solver_kwargs(solver_kwargs):
    """A new dict of cvxpy ``solve`` arguments with ``solver`` resolved to an installed name."""
    if solver_kwargs is None:
        kwargs = {}
    elif isinstance(solver_kwargs, dict):
        kwargs = dict(solver_kwargs)
    else:
        raise InputError(f"solver_kwargs: expected a dict of cvxpy Problem.solve arguments, "
                         f"got {type(solver_kwargs).__name__}")
    solver = kwargs.get("solver")
    if solver is None:
        kwargs["solver"] = default_solver()
        return kwargs
    if not isinstance(solver, str):
        raise InputError(f"solver_kwargs['solver']: expected a solver name such as 'SDPA', got {solver!r}")
    have = installed_solvers()
    name = solver.strip().upper()
    if name not in have:
        raise InputError(f"solver_kwargs['solver']: unknown or not installed solver {solver!r}; "
                         f"installed: {', '.join(have)}")
    kwargs["solver"] = name
    return kwargs


def _probe_solver(solver_kwargs):
    """Let cvxpy and the solver judge ``solver_kwargs`` on a 1x1 semidefinite problem (a few
    ms), so an unknown or ill-typed option fails before any job, with the solver's own message.
    Returns ``solver_kwargs``. SDPA is not probed: it refuses no option."""
    import cvxpy as cp

    kwargs = dict(solver_kwargs)
    verbose = kwargs.pop("verbose", False)
    if not isinstance(verbose, (bool, np.bool_)):
        raise InputError(f"solver_kwargs['verbose']: expected True or False, got {verbose!r}")
    if kwargs.get("solver") == "SDPA":
        return solver_kwargs  # sdpa-python takes any option (it warns and keeps its default)
    x = cp.Variable((1, 1), symmetric=True)
    problem = cp.Problem(cp.Minimize(cp.trace(x)), [x >> 0, x[0, 0] >= 1.0])
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            problem.solve(**kwargs)
    except cp.error.SolverError:
        pass  # the options were taken; how a solve ends is judged on the real problem
    except Exception as exc:  # TypeError, ValueError... exactly as cvxpy or the solver says it
        raise InputError(f"solver_kwargs: {kwargs.get('solver')} refuses {solver_kwargs!r}: "
                         f"{type(exc).__name__}: {exc}") from None
    return solver_kwargs


def _check_convexopt_kwargs(convexopt_init_kwargs, nconfigs):
    """A new dict of ``ConvexOpt`` arguments (besides the FIMs), checked."""
    if convexopt_init_kwargs is None:
        kwargs = {}
    elif isinstance(convexopt_init_kwargs, dict):
        kwargs = dict(convexopt_init_kwargs)
    else:
        raise InputError(f"convexopt_init_kwargs: expected a dict, got {type(convexopt_init_kwargs).__name__}")
    from information_matching import ConvexOpt

    allowed = [p for p in inspect.signature(ConvexOpt.__init__).parameters
               if p not in ("self", "fim_qoi", "fim_configs")]
    for key in kwargs:
        check_choice(key, "convexopt_init_kwargs key", tuple(allowed))
    kwargs["weight_upper_bound"] = _check_weight_upper_bound(kwargs.get("weight_upper_bound"), nconfigs)
    return kwargs


def _check_precondition(precondition):
    if precondition is True:
        return "diagonal"
    if precondition is False or precondition is None:
        return "none"
    if isinstance(precondition, str):
        return check_choice(precondition.strip().lower(), "precondition", PRECONDITION_MODES)
    raise InputError(f"precondition: expected True, False or one of {PRECONDITION_MODES}, got {precondition!r}")


def other_solver(solver):
    """The solver to suggest when ``solver`` failed (SDPA <-> CLARABEL)."""
    for name in PREFERRED_SOLVERS:
        if name != solver:
            return name
    return "CLARABEL"


# --------------------------------------------------------------------------- solving
def match_information(candidates, target, *, weight_upper_bound=None, solver_kwargs=None,
                      zero_tol=1e-4, zero_tol_dual=1e-4, precondition="diagonal",
                      convexopt_kwargs=None):
    """Solve the information-matching problem; one weight per candidate.

    Parameters
    ----------
    candidates : list of numpy.ndarray
        The ``(P, P)`` FIMs of the candidates (checked symmetric arrays, not modified).
    target : numpy.ndarray
        The ``(P, P)`` target FIM.
    weight_upper_bound : float, numpy.ndarray or None
        Largest allowed weight (one value, or one per candidate), in the units of the
        unpreconditioned problem.
    solver_kwargs : dict
        Arguments of ``cvxpy.Problem.solve``; ``solver`` defaults to :func:`default_solver`.
        For SDPA without tolerances given, :data:`SDPA_DEFAULT_OPTIONS` are added.
    zero_tol, zero_tol_dual : float
        A weight counts as non-zero when it exceeds ``zero_tol`` and the dual value of its
        non-negativity constraint is below ``zero_tol_dual``; the others are returned as 0.
    precondition : {'diagonal', 'max_frobenius', 'frobenius', 'none'}
        Scaling applied to the FIMs before solving (see :data:`PRECONDITION_MODES`).
        Weights are returned in the units of the unscaled problem.
    convexopt_kwargs : dict, optional
        Further arguments of ``information_matching.ConvexOpt`` (``obj_fn``, ...).

    Returns
    -------
    weights : numpy.ndarray
        ``(n_candidates,)``, zero for the configurations not selected.
    info : dict
        ``status``, ``solver`` (the one whose weights are returned), ``objective`` (sum of
        the weights), ``match_margin`` (lowest eigenvalue of
        :math:`\\sum_i w_i \\mathcal{I}_i - \\mathcal{I}_{\\rm target}` over the target's
        Frobenius norm, in parameter units where the target has a unit diagonal: >= 0 up
        to solver accuracy when matched), ``n_selected``; and ``fallback``
        (``{'from_solver', 'from_status', 'reason', 'to_solver'}``) when SDPA failed and
        CLARABEL's weights are returned instead.

    Raises
    ------
    SolverError
        When the solver ends with any status but ``optimal`` (infeasible, unbounded,
        inaccurate, solver error), or calls optimal weights that do not match the target
        -- for SDPA, when CLARABEL then fails too: the message names both statuses.
    """
    solver_kwargs = dict(solver_kwargs or {})
    solver = solver_kwargs.get("solver") or default_solver()
    solver_kwargs["solver"] = solver
    if solver == "SDPA" and not any(k in solver_kwargs for k in SDPA_DEFAULT_OPTIONS):
        solver_kwargs.update(SDPA_DEFAULT_OPTIONS)
    n = len(candidates)
    weights = np.zeros(n)
    # A zero FIM carries no information: its optimal weight is 0, and leaving it out keeps
    # the per-configuration Frobenius scaling finite.
    active = [i for i, fim in enumerate(candidates) if np.any(fim)]
    if not active:
        raise InputError("list_of_atoms: every candidate FIM is zero; no weights can match the target")
    ub = weight_upper_bound
    if isinstance(ub, np.ndarray):
        ub = ub[active]

    fims = [np.array(candidates[i], dtype=float) for i in active]
    target = np.array(target, dtype=float)
    # Matches are judged with parameters in units where the target has a unit diagonal,
    # so that a margin is dimensionless whatever the parameters' own units.
    units = _parameter_units(target, fims)
    unit_fims = [fim * units for fim in fims]
    unit_target = target * units
    if precondition == "diagonal":
        target, fims = unit_target, unit_fims
    # information_matching's own preconditioner writes into the dicts it is given and
    # divides by zero for zero FIMs; the scalings are one line each, so they live here.
    if precondition == "none":
        target_scale = 1.0
        scales = np.ones(len(active))
    else:
        target_scale = 1.0 / float(np.linalg.norm(target))
        norms = np.array([np.linalg.norm(fim) for fim in fims])
        scales = 1.0 / (norms if precondition == "frobenius" else np.full(len(active), norms.max()))
    problem = dict(fims=fims, target=target, target_scale=target_scale, scales=scales, ub=ub,
                   unit_fims=unit_fims, unit_target=unit_target, zero_tol=zero_tol,
                   zero_tol_dual=zero_tol_dual, convexopt_kwargs=convexopt_kwargs)
    try:
        selected, info = _solve_once(solver, solver_kwargs, **problem)
    except _SolveFailed as first:
        fallback = FALLBACK_SOLVERS.get(solver)
        if fallback is None or fallback not in installed_solvers():
            raise SolverError(_solver_message(solver, first.status, first.detail, first.bounded)) from None
        # SDPA's false 'infeasible' / inaccurate answers: the other solver gets the same problem
        # (with none of SDPA's own options), and the solution says it was needed
        retry_kwargs = {"solver": fallback, **{k: v for k, v in solver_kwargs.items() if k in PORTABLE_SOLVE_KWARGS}}
        try:
            selected, info = _solve_once(fallback, retry_kwargs, **problem)
        except _SolveFailed as second:
            raise SolverError(_solver_message(solver, first.status, first.detail, first.bounded,
                                              tried=(fallback, second.status, second.detail))) from None
        info["fallback"] = {"from_solver": solver, "from_status": first.status, "reason": first.reason,
                            "to_solver": fallback}
    for k, w in selected.items():
        weights[active[int(k)]] = float(w)
    info["objective"] = float(weights.sum())
    info["n_selected"] = int(np.count_nonzero(weights))
    return weights, info


#: solver -> the one to re-solve with when it ends with any status but 'optimal' (infeasible,
#: inaccurate, solver error) or its weights fail the match check: SDPA's answers on badly
#: conditioned problems are not to be trusted. CLARABEL has none: re-solving a truly
#: infeasible problem with SDPA would cost minutes at M = 10,000 and say nothing new.
FALLBACK_SOLVERS = {"SDPA": "CLARABEL"}
#: cvxpy ``solve`` arguments that mean the same to every solver (kept for the fallback)
PORTABLE_SOLVE_KWARGS = ("verbose",)


class _SolveFailed(Exception):
    """One solver's failure: its status (``'optimal'`` when only our match check failed), a
    detail, whether the weights were bounded, and the reason recorded with a fallback."""

    def __init__(self, status, detail, bounded, reason):
        super().__init__(reason)
        self.status, self.detail, self.bounded, self.reason = status, detail, bounded, reason


def _solve_once(solver, solver_kwargs, *, fims, target, target_scale, scales, ub, unit_fims, unit_target,
                zero_tol, zero_tol_dual, convexopt_kwargs):
    """One solve with one solver: ``({index: weight}, info)`` or :class:`_SolveFailed`."""
    import cvxpy as cp
    from information_matching import ConvexOpt

    bounded = ub is not None
    fim_qoi = {"fim": target, "fim_scale": target_scale}
    fim_configs = {k: {"fim": fim, "fim_scale": float(scales[k])} for k, fim in enumerate(fims)}
    extra = dict(convexopt_kwargs or {})
    extra.pop("weight_upper_bound", None)
    opt = ConvexOpt(fim_qoi, fim_configs, weight_upper_bound=ub, **extra)
    try:
        with warnings.catch_warnings():
            # sdpa-python's own eigenvalue check warns on every matrix smaller than 3x3
            warnings.filterwarnings("ignore", message="k >= N - 1", category=RuntimeWarning)
            opt.solve(**solver_kwargs)
    except cp.error.SolverError as exc:
        raise _SolveFailed("solver_error", str(exc), bounded, "the solver raised an error") from None
    except (AttributeError, TypeError) as exc:
        # ConvexOpt.solve reads the weights before it looks at the status; when the
        # solver found no solution they are None. The status says why. No status at all:
        # the solver never ran (it refused an option): its own message says why.
        if opt.problem.status == cp.OPTIMAL:
            raise
        if opt.problem.status is None:
            raise InputError(f"solver_kwargs: the {solver} solver refused {solver_kwargs!r}: "
                             f"{type(exc).__name__}: {exc}") from None
    status = opt.problem.status
    if status != cp.OPTIMAL:
        raise _SolveFailed(status, None, bounded, f"status {status!r}")
    # The solver's own word is not enough (SDPA has called badly scaled problems optimal
    # with all weights 0): check that its raw weights satisfy the constraint.
    raw = np.clip(np.asarray(opt.result["wm"], dtype=float), 0.0, None) * scales / target_scale
    raw_margin = _margin(raw, unit_fims, unit_target)
    if raw_margin < -VERIFY_TOL:
        detail = (f"its weights do not match the target: the lowest eigenvalue of "
                  f"sum w_i I_i - I_target is {raw_margin:.3g} of |I_target|")
        raise _SolveFailed("optimal", detail, bounded, "optimal but its weights do not match the target")
    selected = opt.get_config_weights(zero_tol=zero_tol, zero_tol_dual=zero_tol_dual)
    kept = np.zeros(len(fims))
    for k, w in selected.items():
        kept[int(k)] = float(w)
    margin = _margin(kept, unit_fims, unit_target)
    if margin < -MATCH_TOL:
        detail = (f"the weights left after zero_tol={zero_tol:g} and zero_tol_dual={zero_tol_dual:g} "
                  f"no longer match the target (lowest eigenvalue of sum w_i I_i - I_target is {margin:.3g} of "
                  f"|I_target|); the solver's dual values are probably inaccurate: keep precondition=True, or "
                  f"raise zero_tol_dual")
        raise _SolveFailed("optimal", detail, bounded, "weights after the zero tolerances do not match the target")
    return selected, {"status": status, "solver": solver, "match_margin": margin}


def _parameter_units(target, fims):
    """The outer product d d^T of D = diag(I_target)^(-1/2) (candidates' largest diagonal where
    the target's is 0, 1 where both are), so that D I D has a unit diagonal."""
    diag = np.diag(target).copy()
    fallback = np.max([np.diag(fim) for fim in fims], axis=0)
    diag = np.where(diag > 0, diag, np.where(fallback > 0, fallback, 1.0))
    d = 1.0 / np.sqrt(diag)
    return np.outer(d, d)


def _margin(weights, fims, target):
    """Lowest eigenvalue of sum_i w_i I_i - I_target over |I_target|_F (>= 0: matched)."""
    matched = np.tensordot(np.asarray(weights, dtype=float), np.asarray(fims), axes=1) - target
    return float(np.linalg.eigvalsh(matched)[0] / np.linalg.norm(target))


def _solver_message(solver, status, detail, bounded, tried=None):
    """The SolverError text; ``tried``: ``(solver, status, detail)`` of the fallback solve."""
    other = other_solver(solver)
    if status == "optimal":
        msg = f"FIMMatchingScore: the {solver} solver ended with status 'optimal' but {detail}"
    else:
        msg = f"FIMMatchingScore: the {solver} solver ended with status {status!r}, not 'optimal'"
        if detail:
            msg += f" ({detail})"
    if tried is not None:
        msg += f"; {tried[0]}, tried next, ended with status {tried[1]!r} too" + (f" ({tried[2]})" if tried[2] else "")
        msg += "; no weights were returned. Check"
        statuses = (status, tried[1])
    else:
        msg += f"; no weights were returned. Try solver_kwargs={{'solver': '{other}'}}, and check"
        statuses = (status,)
    if any(s.startswith("infeasible") for s in statuses):
        msg += (" that the candidates' FIMs can cover the target FIM (no candidate carries "
                "information in a direction the target needs"
                + (", or weight_upper_bound is too small" if bounded else "") + ")")
    else:
        msg += " that preconditioning is on (precondition=True)"
    return msg + "."


# --------------------------------------------------------------------------- the score
class FIMMatchingScore(ConfigurationScore):
    """Optimal training weights of candidate configurations by information matching.

    Each configuration gets one weight :math:`w_i \\ge 0` (0 when it is not selected)
    such that :math:`\\sum_i w_i \\mathcal{I}_i \\succeq \\mathcal{I}_{\\rm target}` with
    :math:`\\sum_i w_i` minimal. A weight multiplies the configuration's FIM, i.e. it is
    the factor by which the inverse variance of that configuration's reference data
    must exceed the one assumed when its FIM was computed (dimensionless).
    Results are stored as ``info['fim_matching_weight_score']``.

    The weights depend on all candidates together, so only :meth:`compute_batch` over the
    whole candidate set is meaningful; :meth:`run` always writes one job with every
    configuration, whatever ``batch_size`` says.

    Examples
    --------
    >>> score = FIMMatchingScore()
    >>> weights = score.compute_batch(list_of_atoms, fim_property='score_results.json')  # doctest: +SKIP
    >>> score.save_results(weights, list_of_configs=list_of_atoms)  # doctest: +SKIP
    """

    OUTPUT_KEY = "fim_matching_weight"
    supported_score_quantities = (ScoreQuantity.IMPORTANCE,)
    single_job = True

    def __init__(self):
        super().__init__()

    @records_metadata
    def compute(self, atoms, score_quantity=ScoreQuantity.IMPORTANCE, **compute_args):
        """Not meaningful for one configuration: use :meth:`compute_batch` on every candidate."""
        raise InputError("FIMMatchingScore.compute: the weights depend on every candidate together; "
                         "call compute_batch(list_of_atoms, fim_property, ...) with all candidates")

    @records_metadata
    def compute_batch(self, list_of_atoms, fim_property=None, score_quantity=ScoreQuantity.IMPORTANCE,
                      convexopt_init_kwargs=None, solver_kwargs=None, weight_tolerance=None,
                      precondition=True, fim_key=CANDIDATE_FIM_KEY):
        """Compute the optimal weight of every candidate configuration.

        Parameters
        ----------
        list_of_atoms : list of ase.Atoms
            The candidates, each with its FIM in ``info[fim_key]`` (``(P, P)``, units of
            1 / parameter²). Never modified.
        fim_property : str, os.PathLike, dict or array_like
            The target FIM: a ``score_results.json`` path of FIMPropertyScore, its dict
            ``{'fim_property_score': ..., ...}``, a ``(P, P)`` array, a ``(K, P, P)`` stack
            or list of property FIMs (summed), or a ``.npy`` path. Required.
        score_quantity : ScoreQuantity or str
            Only ``IMPORTANCE``.
        convexopt_init_kwargs : dict, optional
            Arguments of ``information_matching.ConvexOpt``; chiefly
            ``weight_upper_bound`` (None or 'inf' for none, a number, or one per
            configuration; same units as the weights).
        solver_kwargs : dict, optional
            Arguments of ``cvxpy.Problem.solve``, e.g. ``{'solver': 'CLARABEL',
            'verbose': True}``. The solver defaults to CLARABEL; with ``'SDPA'``, a status
            infeasible or inaccurate (or weights that fail the match check) is followed by
            a CLARABEL solve, recorded as ``'fallback'`` in the metadata.
        weight_tolerance : dict, optional
            ``{'zero_tol': 1e-4, 'zero_tol_dual': 1e-4}`` (the defaults): a weight is
            non-zero when it exceeds ``zero_tol`` and the dual value of its
            non-negativity constraint is below ``zero_tol_dual``; the others are 0.
        precondition : bool or str
            ``True`` (default, ``'diagonal'``): parameters are rescaled so that the
            target FIM has a unit diagonal, then the target FIM is divided by its
            Frobenius norm and every candidate FIM by the largest candidate norm. Both
            leave the optimal weights unchanged but keep SDPA from reporting a false
            'infeasible' or a wrong 'optimal'. ``'max_frobenius'``: the second step only
            (the reference's scheme). ``'frobenius'``: each candidate by its own norm
            (changes the objective). ``False``: no scaling.
        fim_key : str
            The info key of the candidate FIMs (default ``'fim_training_set_score'``).

        Returns
        -------
        list of float
            One weight per configuration, in order; 0.0 for those not selected.

        Raises
        ------
        InputError
            Missing FIM key (naming the configuration), FIM shape mismatch between
            candidates and target, non-symmetric FIMs, unknown solver (listing those
            installed), bad tolerances or bounds.
        SolverError
            The solver did not end with status 'optimal' (the status and the other
            solver are named; after SDPA, CLARABEL failed too).
        """
        self.parse_quantity(score_quantity)
        problem = self._validated(list_of_atoms, fim_property, convexopt_init_kwargs, solver_kwargs,
                                  weight_tolerance, precondition, fim_key)
        weights, info = match_information(**problem)
        self.note_metadata(**info)
        return [float(w) for w in weights]

    def _validated(self, list_of_atoms, fim_property, convexopt_init_kwargs, solver_kwargs,
                   weight_tolerance, precondition, fim_key):
        """Check every input; return the keyword arguments of :func:`match_information`."""
        if not isinstance(fim_key, str):
            raise InputError(f"fim_key: expected an info key (str), got {fim_key!r}")
        target = target_fim(fim_property)
        fims = candidate_fims(list_of_atoms, fim_key)
        if fims[0].shape != target.shape:
            p = target.shape[0]
            raise InputError(f"list_of_atoms: configuration 0: info[{fim_key!r}]: expected a {p}x{p} FIM "
                             f"(the size of the target FIM fim_property), got "
                             f"{fims[0].shape[0]}x{fims[0].shape[1]}")
        if not np.any(target):
            raise InputError("fim_property: the target FIM is zero; there is nothing to match")
        configs = list(list_of_atoms)
        check_same_parameters(target_provenance(fim_property) + [
            (f"list_of_atoms: configuration {i}: info[{fim_key!r}]", candidate_provenance(a, fim_key))
            for i, a in enumerate(configs)])
        convexopt = _check_convexopt_kwargs(convexopt_init_kwargs, len(fims))
        tol = _check_tolerance(weight_tolerance)
        return dict(candidates=fims, target=target,
                    weight_upper_bound=convexopt.pop("weight_upper_bound"),
                    solver_kwargs=_probe_solver(_check_solver_kwargs(solver_kwargs)),
                    zero_tol=tol["zero_tol"], zero_tol_dual=tol["zero_tol_dual"],
                    precondition=_check_precondition(precondition), convexopt_kwargs=convexopt)

    # ---------------------------------------------------------------- jobs
    def check_compute_args(self, configs, score_quantity, compute_args):
        """Validate everything (FIMs, target, solver, bounds) before :meth:`run` writes a folder."""
        args = dict(compute_args)
        if "fim_property" not in args:
            raise InputError("FIMMatchingScore.run: compute_args needs 'fim_property' (the target FIM)")
        known = set(inspect.signature(FIMMatchingScore.compute_batch).parameters) - {
            "self", "list_of_atoms", "score_quantity"}
        for key in args:
            check_choice(key, "FIMMatchingScore.run compute_args key", tuple(sorted(known)))
        self._validated(configs, args.get("fim_property"), args.get("convexopt_init_kwargs"),
                        args.get("solver_kwargs"), args.get("weight_tolerance"),
                        args.get("precondition", True), args.get("fim_key", CANDIDATE_FIM_KEY))

    def prepare_compute_args(self, compute_args):
        """A new dict: a relative ``fim_property`` path made absolute (jobs run elsewhere)."""
        args = dict(compute_args)
        target = args.get("fim_property")
        if isinstance(target, (str, os.PathLike)):
            args["fim_property"] = str(Path(target).resolve())
        elif isinstance(target, (list, tuple)):
            args["fim_property"] = [str(Path(t).resolve()) if isinstance(t, (str, os.PathLike)) else t
                                    for t in target]
        return args

    def get_metadata(self, score_quantity, **compute_args):
        """The arguments that define the weights, and how the solver ended."""
        target = compute_args.get("fim_property")
        if isinstance(target, (str, os.PathLike)):
            target_desc = str(target)
        elif isinstance(target, dict):
            target_desc = "dict"
        else:
            target_desc = "array"
        solver_kwargs = compute_args.get("solver_kwargs") or {}
        tol = dict(DEFAULT_WEIGHT_TOLERANCE)
        tol.update(compute_args.get("weight_tolerance") or {})
        ub = (compute_args.get("convexopt_init_kwargs") or {}).get("weight_upper_bound")
        meta = {
            "score_quantity": ScoreQuantity.parse(score_quantity).name,
            "fim_property": target_desc,
            "fim_key": compute_args.get("fim_key", CANDIDATE_FIM_KEY),
            "precondition": _check_precondition(compute_args.get("precondition", True)),
            "weight_upper_bound": None if ub is None else (ub if isinstance(ub, (int, float, str))
                                                           else np.asarray(ub).tolist()),
            "zero_tol": float(tol["zero_tol"]),
            "zero_tol_dual": float(tol["zero_tol_dual"]),
            "solver_kwargs": {k: v for k, v in solver_kwargs.items()
                              if v is None or isinstance(v, (bool, int, float, str))},
        }
        return meta  # the solver's status, objective and margin are noted by compute_batch
