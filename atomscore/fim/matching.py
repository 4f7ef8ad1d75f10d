"""FIMMatchingScore: optimal training weights by information matching.

Given the Fisher information matrix (FIM) :math:`\\mathcal{I}_i` of every candidate
configuration (``info['fim_training_set_score']``, written by
:class:`~atomscore.fim.training_set.FIMTrainingSetScore`) and the FIM
:math:`\\mathcal{I}_{\\rm target}` of the target properties (written by
:class:`~atomscore.fim.property.FIMPropertyScore`), the information-matching method finds
the smallest non-negative weights :math:`w_i` such that

.. math:: \\sum_i w_i \\mathcal{I}_i \\succeq \\mathcal{I}_{\\rm target},

i.e. training on the weighted candidates constrains the parameters at least as well as
the target precision needs. This module reads and checks the inputs (Atoms or the
Orchestrator's arrays); :mod:`atomscore.fim.matching_problem` scales, solves (CLARABEL by
default, SDPA on request, SDPA failing -> CLARABEL with a warning) and checks the problem, and
picks the non-zero weights with tolerances that mean the same at every scale of the target.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import warnings
from pathlib import Path

import numpy as np

from atomscore.errors import InputError, import_extra
from atomscore.fim.matching_problem import (CONVEXOPT_KWARGS, DEFAULT_WEIGHT_TOLERANCE,  # noqa: F401
                                            PRECONDITION_MODES, MatchingProblem, check_weight_tolerance, default_solver,
                                            installed_solvers, other_solver)
from atomscore.quantity import ScoreQuantity
from atomscore.score import ConfigurationScore, records_metadata
from atomscore.validation import check_choice, check_finite_configs, check_keys, load_array

#: where FIMTrainingSetScore (ours and the reference's) stores each configuration's FIM
CANDIDATE_FIM_KEY = "fim_training_set_score"
#: where FIMPropertyScore stores the target FIM in score_results.json
TARGET_FIM_KEY = "fim_property_score"
#: relative tolerances of the input checks
SYMMETRY_RTOL = 1e-6
PSD_RTOL = 1e-8


# --------------------------------------------------------------------------- inputs
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
    numpy.ndarray
        ``(M, P, P)``: one symmetric ``(P, P)`` FIM per configuration (a new array).

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
        fims.append(value)
    label = f"list_of_atoms: configuration {{}}: info[{fim_key!r}]"
    return _check_fims(fims, label)


def _check_fims(values, label):
    """:func:`_check_fim` of every value (``label.format(i)`` names one), the same matrices as
    one ``(M, P, P)`` array and the same first error, with the checks of equal-shaped float
    matrices done as whole-stack array operations: at M = 10,000 candidates the one-by-one
    checks cost several times the solve (issue 27 item 4)."""
    try:
        stack = np.array(values, dtype=float)
    except (ValueError, TypeError):  # ragged or not numbers: one by one, for the message
        stack = None
    if stack is None or stack.ndim != 3 or stack.shape[1] != stack.shape[2] or stack.shape[1] == 0:
        out = []
        for i, value in enumerate(values):
            out.append(_check_fim(value, label.format(i), out[0].shape if out else None))
        return np.array(out)
    finite = np.isfinite(stack).all(axis=(1, 2))
    scale = np.abs(stack).max(axis=(1, 2), initial=0.0, where=np.isfinite(stack))
    asym = np.abs(stack - stack.transpose(0, 2, 1)).max(axis=(1, 2), initial=0.0, where=np.isfinite(stack))
    sym = 0.5 * (stack + stack.transpose(0, 2, 1))
    bad = ~finite | (asym > SYMMETRY_RTOL * scale)
    ok = ~bad & (scale > 0)
    if ok.any() and not _within_psd_tolerance(sym[ok] if not ok.all() else sym, scale[ok]):
        eig = np.linalg.eigvalsh(sym[ok])
        norm2 = np.abs(eig).max(axis=1)  # the 2-norm of a symmetric matrix
        bad[np.flatnonzero(ok)[eig[:, 0] < -PSD_RTOL * norm2]] = True
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        _check_fim(values[first], label.format(first), stack.shape[1:])  # raises, with its message
    return sym


def _within_psd_tolerance(stack, scale):
    """True when every symmetric matrix of ``stack`` surely passes :func:`_check_fim`'s PSD test.

    A Cholesky factorisation of ``I_k + PSD_RTOL * max|I_k| * 1`` exists only if the lowest
    eigenvalue of ``I_k`` exceeds ``-PSD_RTOL * max|I_k|`` (to rounding), and ``max|I_k|`` is at
    most the 2-norm the test uses. One batched Cholesky costs a third of a batched
    ``eigvalsh`` (10,000 4x4 FIMs: 2.5 vs 7.6 ms); False (some matrix fails it) sends the
    caller to the exact eigenvalue test, which names the first FIM that fails.
    """
    shifted = stack + (PSD_RTOL * scale)[:, None, None] * np.eye(stack.shape[-1])
    try:
        np.linalg.cholesky(shifted)
    except np.linalg.LinAlgError:
        return False
    return True


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


#: (field, info key) of the provenance FIMTrainingSetScore writes as flat info keys
_FLAT_PROVENANCE_KEYS = tuple((field, f"{CANDIDATE_OUTPUT_KEY}_{field}") for field in PROVENANCE_FIELDS)
#: the info keys that can hold provenance (most configurations have none of them)
_PROVENANCE_INFO_KEYS = frozenset(["_metadata"] + [key for _, key in _FLAT_PROVENANCE_KEYS])


def candidate_provenance(atoms, fim_key=CANDIDATE_FIM_KEY):
    """What a candidate's FIM rows are, from ``info['_metadata']['fim_training_set']`` or the
    flat ``info['fim_training_set_<field>']`` keys; None when the FIM carries no metadata."""
    info = atoms.info
    if fim_key != CANDIDATE_FIM_KEY or _PROVENANCE_INFO_KEYS.isdisjoint(info):
        return None
    meta = info.get("_metadata")
    if isinstance(meta, str):
        try:
            meta = json.loads(meta)
        except json.JSONDecodeError:
            meta = None
    found = fim_provenance(meta.get(CANDIDATE_OUTPUT_KEY)) if isinstance(meta, dict) else None
    if found:
        return found
    flat = {field: info[key] for field, key in _FLAT_PROVENANCE_KEYS if key in info}
    return fim_provenance(flat) if flat else None


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
    cp = import_extra("cvxpy", "FIMMatchingScore", "fim")

    kwargs = dict(solver_kwargs)
    verbose = kwargs.pop("verbose", False)
    if not isinstance(verbose, (bool, np.bool_)):
        raise InputError(f"solver_kwargs['verbose']: expected True or False, got {verbose!r}")
    if kwargs.get("solver") == "SDPA":
        return solver_kwargs  # sdpa-python takes any option (it warns and keeps its default)
    if set(kwargs) <= {"solver"}:
        return solver_kwargs  # no option to judge (the name is checked installed): no probe solve
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
    for key in kwargs:
        check_choice(key, "convexopt_init_kwargs key", CONVEXOPT_KWARGS)
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


#: keys of the Orchestrator's ``fim_preconditioning_kwargs`` (information_matching's preconditioner)
PRECONDITIONING_KWARGS = ("scale_type", "pad")


def resolve_precondition(precondition=True, fim_preconditioning_kwargs=None):
    """``(mode, pad)`` from our ``precondition`` and the Orchestrator's ``fim_preconditioning_kwargs``.

    ``fim_preconditioning_kwargs``: ``None`` leaves ``precondition`` in charge (its default,
    ``'diagonal'``, ends with the Orchestrator's ``max_frobenius`` scaling); ``{}`` is no
    preconditioning; ``{'scale_type': 'max_frobenius' | 'frobenius', 'pad': 0.0}`` is exactly
    that scaling. Given together with a ``precondition`` other than ``True`` that means
    something else, both are refused.
    """
    mode = _check_precondition(precondition)
    if fim_preconditioning_kwargs is None:
        return mode, 0.0
    label = "fim_preconditioning_kwargs"
    if not isinstance(fim_preconditioning_kwargs, dict):
        raise InputError(f"{label}: expected None, {{}} or a dict with keys {list(PRECONDITIONING_KWARGS)}, "
                         f"got {type(fim_preconditioning_kwargs).__name__}")
    check_keys(fim_preconditioning_kwargs, PRECONDITIONING_KWARGS, label)
    if not fim_preconditioning_kwargs:
        wanted, pad = "none", 0.0
    else:
        if "scale_type" not in fim_preconditioning_kwargs:
            raise InputError(f"{label}: expected a 'scale_type' ('max_frobenius' or 'frobenius'), "
                             f"got keys {sorted(fim_preconditioning_kwargs)}")
        scale_type = fim_preconditioning_kwargs["scale_type"]
        if not isinstance(scale_type, str):
            raise InputError(f"{label}['scale_type']: expected 'max_frobenius' or 'frobenius', got {scale_type!r}")
        wanted = check_choice(scale_type.strip().lower(), f"{label}['scale_type']", ("max_frobenius", "frobenius"))
        pad = fim_preconditioning_kwargs.get("pad", 0.0)
        if isinstance(pad, bool) or not isinstance(pad, (int, float, np.integer, np.floating)) \
                or not math.isfinite(pad) or pad < 0:
            raise InputError(f"{label}['pad']: expected a non-negative number, got {pad!r}")
    if precondition is not True and mode != wanted:
        raise InputError(f"precondition={precondition!r} and fim_preconditioning_kwargs="
                         f"{fim_preconditioning_kwargs!r} ask for different preconditioning "
                         f"({mode!r} and {wanted!r}); give one of them")
    return wanted, float(pad)


def _fim_dict_entry(value, label, shape=None):
    """An information_matching-style ``{'fim': ..., 'fim_scale': ...}`` entry's FIM, or the array."""
    if isinstance(value, dict):
        check_keys(value, ("fim", "fim_scale"), label)
        if "fim" not in value:
            raise InputError(f"{label}: expected a dict with key 'fim' (information_matching's form), "
                             f"got keys {sorted(map(str, value))}")
        # 'fim_scale' is a preconditioning factor: the weights in the FIMs' own units do not
        # depend on it, and our preconditioning (fim_preconditioning_kwargs) sets the scales.
        value = value["fim"]
    return _check_fim(value, label, shape)


def orchestrator_target(fim_property, name="fim_property"):
    """The target FIM as ``FIMMatchingScore.fim_match`` takes it: an array, information_matching's
    ``{'fim': ..., 'fim_scale': ...}``, or anything :func:`target_fim` reads (paths, results)."""
    if isinstance(fim_property, dict) and "fim" in fim_property:
        return _fim_dict_entry(fim_property, name)
    return target_fim(fim_property, name)


def orchestrator_candidates(fim_candidates, shape, name="fim_candidates"):
    """``(ids, fims)`` from an ``(M, P, P)`` array, a list of ``(P, P)`` arrays, or a dict
    ``{id: array or {'fim': array, 'fim_scale': s}}``; each checked against ``shape``."""
    if isinstance(fim_candidates, dict):
        items = list(fim_candidates.items())
    elif isinstance(fim_candidates, (str, os.PathLike)):
        items = list(enumerate(load_array(fim_candidates, name, ndim=3)))
    elif isinstance(fim_candidates, (list, tuple)) or hasattr(fim_candidates, "__array__"):
        items = list(enumerate(fim_candidates if isinstance(fim_candidates, (list, tuple))
                               else load_array(fim_candidates, name, ndim=3)))
    else:
        raise InputError(f"{name}: expected an (M, P, P) array, a list of (P, P) arrays or a dict "
                         f"{{id: FIM}}, got {type(fim_candidates).__name__}")
    if not items:
        raise InputError(f"{name}: expected at least one candidate FIM, got none")
    p = shape[0]
    fims = []
    for key, value in items:
        label = f"{name}[{key!r}]"
        try:
            fims.append(_fim_dict_entry(value, label, shape))
        except InputError as exc:
            if f"expected a {p}x{p} FIM" in str(exc):
                raise InputError(f"{exc} (fim_property is {p}x{p})") from None
            raise
    return [key for key, _ in items], fims


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
    configuration, whatever ``batch_size`` says. The Orchestrator's calls on arrays,
    :meth:`fim_match` and :meth:`setup_problem`, work too; after any of them
    :attr:`convexopt` holds the problem (:class:`~atomscore.fim.matching_problem.MatchingProblem`).

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
        #: the last problem set up (:meth:`setup_problem`, :meth:`fim_match`, :meth:`compute_batch`)
        self.convexopt = None
        #: its target FIM and candidate FIMs, as the Orchestrator's score keeps them
        self.fim_property = None
        self.fim_candidates = None

    @records_metadata
    def compute(self, atoms, score_quantity=ScoreQuantity.IMPORTANCE, **compute_args):
        """Not meaningful for one configuration: use :meth:`compute_batch` on every candidate."""
        raise InputError("FIMMatchingScore.compute: the weights depend on every candidate together; "
                         "call compute_batch(list_of_atoms, fim_property, ...) with all candidates")

    @records_metadata
    def compute_batch(self, list_of_atoms, fim_property=None, score_quantity=ScoreQuantity.IMPORTANCE,
                      convexopt_init_kwargs=None, fim_preconditioning_kwargs=None, solver_kwargs=None,
                      weight_tolerance=None, precondition=True, fim_key=CANDIDATE_FIM_KEY):
        """Compute the optimal weight of every candidate configuration.

        The first seven arguments are the Orchestrator's, in its order.

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
        fim_preconditioning_kwargs : dict, optional
            The Orchestrator's form of ``precondition``: ``None`` (default) leaves
            ``precondition`` in charge; ``{}`` is no preconditioning;
            ``{'scale_type': 'max_frobenius' or 'frobenius', 'pad': 0.0}`` exactly that scaling.
        solver_kwargs : dict, optional
            Arguments of ``cvxpy.Problem.solve``, e.g. ``{'solver': 'CLARABEL',
            'verbose': True}``. The solver defaults to CLARABEL; with ``'SDPA'``, a status
            infeasible or inaccurate (or weights that fail the match check) is followed by
            a CLARABEL solve, with a warning, recorded as ``'fallback'`` in the metadata.
        weight_tolerance : dict, optional
            ``{'zero_tol': 1e-4, 'zero_tol_dual': 1e-4, 'zero_tol_absolute': None}`` (the
            defaults). A weight is non-zero when its share of the target's information
            exceeds ``zero_tol``, its dual value is below ``zero_tol_dual`` (both
            dimensionless: the same at every scale of the target) and, if given, it exceeds
            ``zero_tol_absolute`` (units of the weights). Weights the match needs are kept,
            with a warning (docs/fim.md, "Zero weights").
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
            installed), bad tolerances, bounds or preconditioning.
        SolverError
            The problem is infeasible, or the solver failed (after SDPA, CLARABEL too):
            the statuses are named. The Orchestrator raised AttributeError here.
        """
        self.parse_quantity(score_quantity)
        problem = self._validated(list_of_atoms, fim_property, convexopt_init_kwargs, fim_preconditioning_kwargs,
                                  solver_kwargs, weight_tolerance, precondition, fim_key)
        weights, info = self._solve(**problem)
        self.note_metadata(**info)
        return [float(w) for w in weights]

    def fim_match(self, fim_property, fim_candidates, convexopt_init_kwargs=None, fim_preconditioning_kwargs=None,
                  solver_kwargs=None, weight_tolerance=None):
        """Information matching on arrays, as the Orchestrator's ``fim_match``: the list of weights.

        Parameters
        ----------
        fim_property : array_like, dict, str or os.PathLike
            The ``(P, P)`` target FIM (summed over the properties), information_matching's
            ``{'fim': ..., 'fim_scale': ...}``, or what ``compute_batch`` takes.
        fim_candidates : array_like or dict
            ``(M, P, P)`` candidate FIMs, a list of them, or ``{id: FIM or {'fim': FIM}}``.
        convexopt_init_kwargs, fim_preconditioning_kwargs, solver_kwargs, weight_tolerance : dict, optional
            As in :meth:`compute_batch`; ``fim_preconditioning_kwargs=None`` is our default
            preconditioning (``precondition=True``), ``{}`` none.

        Returns
        -------
        list of float
            One weight per candidate, in the order given (0.0 when not selected).

        Raises
        ------
        InputError
            Malformed FIMs or arguments, before anything is solved.
        SolverError
            Infeasible problem or failed solver (the Orchestrator raised AttributeError).
        """
        tol = check_weight_tolerance(weight_tolerance)
        solver_kwargs = _probe_solver(_check_solver_kwargs(solver_kwargs))
        problem = self.setup_problem(fim_property, fim_candidates, convexopt_init_kwargs, fim_preconditioning_kwargs)
        problem.solve(**solver_kwargs)
        weights, _ = problem.select(**tol)
        return [float(w) for w in weights]

    def setup_problem(self, fim_property, fim_candidates, convexopt_init_kwargs=None,
                      fim_preconditioning_kwargs=None):
        """Check the FIMs and build the convex problem, unsolved, as the Orchestrator's ``setup_problem``.

        Arguments as in :meth:`fim_match`. Then ``score.convexopt.solve(**solver_kwargs)``,
        ``score.convexopt.result`` (``wm``, ``dual_wm``, ``status``, ``value``, ...) and
        ``score.convexopt.get_config_weights(**weight_tolerance)``.

        Returns
        -------
        MatchingProblem
            Also kept as :attr:`convexopt`.
        """
        target = orchestrator_target(fim_property)
        if not np.any(target):
            raise InputError("fim_property: the target FIM is zero; there is nothing to match")
        ids, fims = orchestrator_candidates(fim_candidates, target.shape)
        convexopt = _check_convexopt_kwargs(convexopt_init_kwargs, len(fims))
        mode, pad = resolve_precondition(True, fim_preconditioning_kwargs)
        return self._setup(target, fims, ids, mode, pad, convexopt)

    def _setup(self, target, fims, ids, precondition, pad, convexopt_kwargs):
        kwargs = dict(convexopt_kwargs)
        self.fim_property, self.fim_candidates = target, np.array(fims)
        self.convexopt = MatchingProblem(target, fims, ids, precondition=precondition, pad=pad,
                                         weight_upper_bound=kwargs.pop("weight_upper_bound", None),
                                         convexopt_kwargs=kwargs)
        return self.convexopt

    def _solve(self, candidates, target, precondition, pad, convexopt_kwargs, solver_kwargs, tolerance):
        """Set up, solve and select: ``(weights, info)`` for the metadata."""
        problem = self._setup(target, candidates, None, precondition, pad, convexopt_kwargs)
        result = problem.solve(**solver_kwargs)
        weights, info = problem.select(**tolerance)
        info.update(status=result["status"], solver=result["solver"], objective=float(weights.sum()))
        if "fallback" in result:
            info["fallback"] = result["fallback"]
        return weights, info

    def _validated(self, list_of_atoms, fim_property, convexopt_init_kwargs, fim_preconditioning_kwargs,
                   solver_kwargs, weight_tolerance, precondition, fim_key):
        """Check every input; return the keyword arguments of :meth:`_solve`."""
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
        found = [candidate_provenance(a, fim_key) for a in list_of_atoms]
        check_same_parameters(target_provenance(fim_property) + [
            (f"list_of_atoms: configuration {i}: info[{fim_key!r}]", prov) for i, prov in enumerate(found) if prov])
        mode, pad = resolve_precondition(precondition, fim_preconditioning_kwargs)
        return dict(candidates=fims, target=target, precondition=mode, pad=pad,
                    convexopt_kwargs=_check_convexopt_kwargs(convexopt_init_kwargs, len(fims)),
                    solver_kwargs=_probe_solver(_check_solver_kwargs(solver_kwargs)),
                    tolerance=check_weight_tolerance(weight_tolerance))

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
                        args.get("fim_preconditioning_kwargs"), args.get("solver_kwargs"),
                        args.get("weight_tolerance"), args.get("precondition", True),
                        args.get("fim_key", CANDIDATE_FIM_KEY))

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
        tol = check_weight_tolerance(compute_args.get("weight_tolerance"))
        mode, pad = resolve_precondition(compute_args.get("precondition", True),
                                         compute_args.get("fim_preconditioning_kwargs"))
        ub = (compute_args.get("convexopt_init_kwargs") or {}).get("weight_upper_bound")
        meta = {
            "score_quantity": ScoreQuantity.parse(score_quantity).name,
            "fim_property": target_desc,
            "fim_key": compute_args.get("fim_key", CANDIDATE_FIM_KEY),
            "precondition": mode,
            "precondition_pad": pad,
            "weight_upper_bound": None if ub is None else (ub if isinstance(ub, (int, float, str))
                                                           else np.asarray(ub).tolist()),
            # zero_tol: share of the target's information; zero_tol_dual: reduced cost (both
            # dimensionless); zero_tol_absolute: weight units (None: not applied)
            **tol,
            "solver_kwargs": {k: v for k, v in solver_kwargs.items()
                              if v is None or isinstance(v, (bool, int, float, str))},
        }
        return meta  # the solver's status, objective and margin are noted by compute_batch
