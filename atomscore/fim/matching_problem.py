"""The information-matching problem: set up, solved, checked, and its non-zero weights.

:class:`MatchingProblem` is what ``FIMMatchingScore.convexopt`` holds (the Orchestrator's
users read ``convexopt.result`` and call ``convexopt.get_config_weights``). It scales the
FIMs (preconditioning), writes the semidefinite program in cvxpy as
``information_matching.ConvexOpt`` does (same variable, objective and constraints; see
:meth:`MatchingProblem._build` for why not through it), solves it with CLARABEL or SDPA
(SDPA failing -> CLARABEL, with a warning), checks the solution against the target, and
picks the non-zero weights with tolerances that mean the same at every scale of the target
(docs/fim.md, "Zero weights").
"""

from __future__ import annotations

import functools

import logging
import math
import warnings

import numpy as np

from atomscore.errors import InputError, SolverError, import_extra
from atomscore.validation import check_choice

log = logging.getLogger(__name__)

#: preconditioning modes (docs/fim.md, "Preconditioning"). "diagonal" (the default) first
#: changes parameter units, I -> D I D with D = diag(I_target)^(-1/2), which leaves the
#: constraint and so the weights exactly unchanged but gives every parameter the same scale,
#: then applies "max_frobenius": the target divided by its Frobenius norm and every candidate
#: by the largest candidate norm (the Orchestrator's scheme; optimum unchanged). "frobenius"
#: divides each candidate by its own norm (changes the objective). "none": no scaling.
PRECONDITION_MODES = ("diagonal", "max_frobenius", "frobenius", "none")
#: SDPA's stopping tolerances when the caller sets none: its defaults (1e-7) end about one
#: problem in four with 'pdFEAS' (reported as optimal_inaccurate) although the answer
#: agrees with CLARABEL to 1e-6.
SDPA_DEFAULT_OPTIONS = {"epsilonStar": 1e-6, "epsilonDash": 1e-6}
#: a solution whose raw weights under-match the target by more than this (lowest eigenvalue
#: of sum_i w_i I_i - I_target relative to |I_target|_F, in parameter units where the target
#: has a unit diagonal) is refused even when the solver calls it optimal
VERIFY_TOL = 1e-4
#: the same check on the weights returned, after the zero tolerances; weights below the
#: tolerances are kept (with a warning) when the match needs them to pass it
MATCH_TOL = 1e-3
#: the solvers offered by default, in order of preference. CLARABEL first: at M = 10,000
#: candidates it takes about a second where SDPA takes minutes and a GB (SDPA scales as
#: M^2.4), and SDPA calls some feasible problems infeasible (benchmarks/fim_matching.py)
PREFERRED_SOLVERS = ("CLARABEL", "SDPA")
#: solver -> the one to re-solve with when it ends with any status but 'optimal' or its
#: weights fail the match check. CLARABEL has none: re-solving a truly infeasible problem
#: with SDPA would cost minutes at M = 10,000 and say nothing new.
FALLBACK_SOLVERS = {"SDPA": "CLARABEL"}
#: cvxpy ``solve`` arguments that mean the same to every solver (kept for the fallback)
PORTABLE_SOLVE_KWARGS = ("verbose",)
#: the arguments of ``information_matching.ConvexOpt`` (besides the FIMs) that the problem
#: written here takes, with ConvexOpt's meaning (:meth:`MatchingProblem._build`)
CONVEXOPT_KWARGS = ("weight_upper_bound", "l1norm_obj", "obj_fn", "obj_fn_kwargs")
#: weight_tolerance keys and their defaults. zero_tol and zero_tol_dual are dimensionless
#: (see :meth:`MatchingProblem.get_config_weights`); zero_tol_absolute (off by default) is in
#: the units of the weights themselves.
DEFAULT_WEIGHT_TOLERANCE = {"zero_tol": 1e-4, "zero_tol_dual": 1e-4, "zero_tol_absolute": None}


def installed_solvers() -> list:
    """Names of the cvxpy solvers installed here (e.g. ``['CLARABEL', 'SCS', 'SDPA']``)."""
    return list(_installed_solvers())


@functools.lru_cache(maxsize=1)
def _installed_solvers():
    # cvxpy imports every solver interface to answer (~70 ms): once per process
    cp = import_extra("cvxpy", "FIMMatchingScore", "fim")

    return tuple(cp.installed_solvers())


def default_solver() -> str:
    """CLARABEL when installed (it is a dependency of cvxpy), else SDPA."""
    have = installed_solvers()
    for name in PREFERRED_SOLVERS:
        if name in have:
            return name
    raise SolverError(f"FIMMatchingScore: neither SDPA nor CLARABEL is installed (installed cvxpy "
                      f"solvers: {', '.join(have) or 'none'}); pip install sdpa-python clarabel")


def other_solver(solver):
    """The solver to suggest when ``solver`` failed (SDPA <-> CLARABEL)."""
    for name in PREFERRED_SOLVERS:
        if name != solver:
            return name
    return "CLARABEL"


def check_weight_tolerance(weight_tolerance):
    """A new dict of every :data:`DEFAULT_WEIGHT_TOLERANCE` key, the given ones checked.

    Raises
    ------
    InputError
        Not a dict, an unknown key (the known ones listed), a negative or non-finite value.
    """
    tol = dict(DEFAULT_WEIGHT_TOLERANCE)
    if weight_tolerance is None:
        return tol
    if not isinstance(weight_tolerance, dict):
        raise InputError(f"weight_tolerance: expected a dict with keys {sorted(tol)}, "
                         f"got {type(weight_tolerance).__name__}")
    for key, value in weight_tolerance.items():
        check_choice(key, "weight_tolerance key", tuple(DEFAULT_WEIGHT_TOLERANCE))
        if value is None and DEFAULT_WEIGHT_TOLERANCE[key] is None:
            continue
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise InputError(f"weight_tolerance[{key!r}]: expected a non-negative number, got {value!r}") from None
        if not math.isfinite(number) or number < 0:
            raise InputError(f"weight_tolerance[{key!r}]: expected a non-negative number, got {value!r}")
        tol[key] = number
    return tol


def parameter_units(target, fims):
    """The outer product d d^T of D = diag(I_target)^(-1/2) (candidates' largest diagonal where
    the target's is 0, 1 where both are), so that D I D has a unit diagonal."""
    diag = np.diag(target).copy()
    fallback = np.diagonal(np.asarray(fims), axis1=-2, axis2=-1).max(axis=0)
    diag = np.where(diag > 0, diag, np.where(fallback > 0, fallback, 1.0))
    d = 1.0 / np.sqrt(diag)
    return np.outer(d, d)


def match_margin(weights, fims, target):
    """Lowest eigenvalue of sum_i w_i I_i - I_target over |I_target|_F (>= 0: matched)."""
    matched = np.tensordot(np.asarray(weights, dtype=float), fims, axes=1) - target
    return float(np.linalg.eigvalsh(matched)[0] / np.linalg.norm(target))


class _SolveFailed(Exception):
    """One solver's failure: its status (``'optimal'`` when only our match check failed), a
    detail, and the reason recorded with a fallback."""

    def __init__(self, status, detail, reason):
        super().__init__(reason)
        self.status, self.detail, self.reason = status, detail, reason


class MatchingProblem:
    """The convex problem ``min sum_i w_i`` s.t. ``w >= 0``, ``sum_i w_i I_i - I_target ⪰ 0``.

    Built by ``FIMMatchingScore.setup_problem`` (inputs already checked) and kept as
    ``FIMMatchingScore.convexopt``; the attributes an Orchestrator user reads are those of
    ``information_matching.ConvexOpt``: ``problem`` (the cvxpy problem), ``wm``,
    ``constraints``, ``result`` and :meth:`get_config_weights`.

    Parameters
    ----------
    target : numpy.ndarray
        ``(P, P)`` target FIM (checked symmetric PSD, not modified).
    candidates : sequence of numpy.ndarray
        ``(P, P)`` candidate FIMs (not modified); an all-zero one gets weight 0 unsolved.
    ids : list, optional
        The identifier of each candidate (keys of :meth:`get_config_weights`); default 0..M-1.
    precondition : {'diagonal', 'max_frobenius', 'frobenius', 'none'}
        See :data:`PRECONDITION_MODES`.
    pad : float
        Added to the candidates' Frobenius norms before they divide (information_matching's
        ``pad``), >= 0.
    weight_upper_bound : float, numpy.ndarray or None
        Largest allowed weight (one, or one per candidate), in the units of the weights.
    convexopt_kwargs : dict, optional
        Further checked arguments of ``information_matching.ConvexOpt`` (``obj_fn``, ...).
    """

    def __init__(self, target, candidates, ids=None, *, precondition="diagonal", pad=0.0,
                 weight_upper_bound=None, convexopt_kwargs=None):
        self.ids = list(range(len(candidates))) if ids is None else list(ids)
        self.precondition, self.pad = precondition, float(pad)
        stack = np.asarray(candidates, dtype=float)
        # A zero FIM carries no information: its optimal weight is 0, and leaving it out
        # keeps the per-configuration Frobenius scaling finite.
        self.active = np.flatnonzero(stack.reshape(len(stack), -1).any(axis=1))
        if not self.active.size:
            raise InputError("FIMMatchingScore: every candidate FIM is zero; no weights can match the target")
        fims = stack[self.active]
        target = np.array(target, dtype=float)
        # Matches and weight shares are judged with parameters in units where the target has
        # a unit diagonal: dimensionless, whatever the parameters' and the property's units.
        units = parameter_units(target, fims)
        self._unit_fims = fims * units
        self._unit_target = target * units
        #: each active candidate's information per unit weight, as a fraction of the target's
        self._share_per_weight = (np.linalg.norm(self._unit_fims, axis=(1, 2))
                                  / np.linalg.norm(self._unit_target))
        if precondition == "diagonal":
            target, fims = self._unit_target, self._unit_fims
        # information_matching's own preconditioner writes into the dicts it is given and
        # divides by zero for zero FIMs; the scalings are one line each, so they live here.
        if precondition == "none":
            self.scale_qoi, self.scale_conf = 1.0, np.ones(len(fims))
        else:
            self.scale_qoi = 1.0 / float(np.linalg.norm(target))
            norms = np.linalg.norm(fims, axis=(1, 2)) + self.pad
            self.scale_conf = 1.0 / (norms if precondition == "frobenius" else np.full(len(fims), norms.max()))
        ub = weight_upper_bound
        if isinstance(ub, np.ndarray):
            ub = ub[self.active]
        self.bounded = ub is not None
        extra = dict(convexopt_kwargs or {})
        extra.pop("weight_upper_bound", None)
        #: the scaled FIMs, flattened (``(M_active, P*P)`` and ``(P*P,)``), as ConvexOpt's
        #: ``fim_configs_vec`` and ``fim_qoi_vec``
        self.fim_configs_vec = (fims * self.scale_conf[:, None, None]).reshape(len(fims), -1)
        self.fim_qoi_vec = (target * self.scale_qoi).ravel()
        self._build(target.shape, ub, **extra)
        self.result = None

    def _build(self, shape, weight_upper_bound, l1norm_obj=False, obj_fn=None, obj_fn_kwargs=None):
        """The cvxpy problem ``information_matching.ConvexOpt`` writes, written here.

        Same variable (``wm``, ``(M, 1)``), objective (``obj_fn``, default the sum; the
        deprecated ``l1norm_obj`` as there) and constraints (``wm >= 0``, the LMI, ``wm <=``
        the bound in the scaled units), so CLARABEL returns the same weights bit for bit.
        Not through ConvexOpt because its set-up was most of the overhead at M = 1,000
        (issue 27 item 4): it takes one dict per candidate, copies them one by one, and writes
        the LMI as ``sum(multiply(F, wm), axis=0)``, which cvxpy compiles slower than the one
        matrix product ``F.T @ wm`` used here.
        """
        cp = import_extra("cvxpy", "FIMMatchingScore", "fim")
        im = import_extra("information_matching.convex_optimization", "FIMMatchingScore", "fim")

        if l1norm_obj:
            warnings.warn("The argument 'l1norm_obj' of information_matching.ConvexOpt is deprecated; "
                          "use obj_fn", DeprecationWarning, stacklevel=4)
        if obj_fn is None:
            obj_fn = im.obj_fn_l1_norm if l1norm_obj else im.default_obj_fn
        self.wm = cp.Variable((len(self.fim_configs_vec), 1))
        objective = obj_fn(self.wm, **(obj_fn_kwargs or {}))
        if not objective.is_convex():
            raise InputError(f"convexopt_init_kwargs['obj_fn']: expected a convex function of the weights "
                             f"(cvxpy), got {obj_fn!r}, not convex")
        self.objective = cp.Minimize(objective)
        lmi = cp.reshape(self.fim_configs_vec.T @ self.wm, shape, order="C") - self.fim_qoi_vec.reshape(shape)
        self.constraints = [self.wm >= 0.0, lmi >> 0]
        if weight_upper_bound is not None:
            # in the scaled problem's units, as ConvexOpt scales it
            bound = np.broadcast_to(np.asarray(weight_upper_bound, dtype=float), (len(self.fim_configs_vec),))
            self.constraints.append(self.wm <= (bound * self.scale_qoi / self.scale_conf).reshape(-1, 1))
        self.problem = cp.Problem(self.objective, self.constraints)

    # ----------------------------------------------------------------- solving
    def solve(self, **solver_kwargs):
        """Solve with ``solver_kwargs`` (``cvxpy.Problem.solve`` arguments; solver default CLARABEL).

        With SDPA, a status other than 'optimal' (or weights that fail the match check) is
        followed by a CLARABEL solve of the same problem, with a warning and a log line; the
        result then says ``solver: 'CLARABEL'`` and ``fallback``.

        Returns
        -------
        dict
            :attr:`result`: ``status``, ``wm`` (weights of the preconditioned problem, one per
            candidate), ``dual_wm`` (dual values of ``w >= 0`` there, dimensionless reduced
            costs), ``value`` (objective), ``weights`` (in the units of the given FIMs),
            ``rel_error``, ``violation``, ``solver``, ``raw_margin`` and maybe ``fallback``.

        Raises
        ------
        SolverError
            The problem is infeasible (the message says which inputs to check), or the
            solver (and, after SDPA, CLARABEL) ended with another status or with weights
            that do not match the target.
        """
        kwargs = dict(solver_kwargs)
        solver = kwargs.get("solver") or default_solver()
        solver = str(solver).strip().upper()
        kwargs["solver"] = solver
        if solver == "SDPA" and not any(k in kwargs for k in SDPA_DEFAULT_OPTIONS):
            kwargs.update(SDPA_DEFAULT_OPTIONS)
        try:
            result = self._solve_once(solver, kwargs)
        except _SolveFailed as first:
            fallback = FALLBACK_SOLVERS.get(solver)
            if fallback is None or fallback not in installed_solvers():
                raise SolverError(self._message(solver, first)) from None
            message = (f"FIMMatchingScore: the {solver} solver ended with {first.reason}; the problem is "
                       f"solved again with {fallback}, whose weights are returned (metadata 'fallback')")
            log.warning(message)
            warnings.warn(message, UserWarning, stacklevel=2)
            retry = {"solver": fallback, **{k: v for k, v in kwargs.items() if k in PORTABLE_SOLVE_KWARGS}}
            try:
                result = self._solve_once(fallback, retry)
            except _SolveFailed as second:
                raise SolverError(self._message(solver, first, tried=(fallback, second))) from None
            result["fallback"] = {"from_solver": solver, "from_status": first.status, "reason": first.reason,
                                  "to_solver": fallback}
        self.result = result
        return result

    def _solve_once(self, solver, solver_kwargs):
        cp = import_extra("cvxpy", "FIMMatchingScore", "fim")

        try:
            with warnings.catch_warnings():
                # sdpa-python's own eigenvalue check warns on every matrix smaller than 3x3
                warnings.filterwarnings("ignore", message="k >= N - 1", category=RuntimeWarning)
                self.problem.solve(**solver_kwargs)
        except cp.error.SolverError as exc:
            raise _SolveFailed("solver_error", str(exc), "an error") from None
        except (TypeError, ValueError) as exc:
            if self.problem.status is not None:
                raise
            raise InputError(f"solver_kwargs: the {solver} solver refused {solver_kwargs!r}: "
                             f"{type(exc).__name__}: {exc}") from None
        status = self.problem.status
        if status != cp.OPTIMAL or self.wm.value is None:
            raise _SolveFailed(status, None, f"status {status!r}")
        wm = np.asarray(self.wm.value, dtype=float).ravel()
        dual = np.asarray(self.constraints[0].dual_value, dtype=float).ravel()
        weights = np.clip(wm, 0.0, None) * self.scale_conf / self.scale_qoi
        # The solver's own word is not enough (SDPA has called badly scaled problems optimal
        # with all weights 0): its raw weights must satisfy the constraint.
        raw_margin = match_margin(weights, self._unit_fims, self._unit_target)
        if raw_margin < -VERIFY_TOL:
            detail = (f"its weights do not match the target: the lowest eigenvalue of "
                      f"sum w_i I_i - I_target is {raw_margin:.3g} of |I_target|")
            raise _SolveFailed("optimal", detail, "status 'optimal' but weights that do not match the target")
        n = len(self.ids)
        full = {name: np.zeros(n) for name in ("wm", "weights")}
        full["dual_wm"] = np.ones(n)  # an all-zero FIM's reduced cost is its objective coefficient, 1
        for name, values in (("wm", wm), ("weights", weights), ("dual_wm", dual)):
            full[name][self.active] = values
        fim_diff = wm @ self.fim_configs_vec - self.fim_qoi_vec
        # the LMI's violation as cvxpy's PSD.violation() defines it (minus the lowest
        # eigenvalue of the symmetric part, if negative), from the difference just formed
        diff = fim_diff.reshape(self.constraints[1].args[0].shape)
        violation = max(0.0, -float(np.linalg.eigvalsh(0.5 * (diff + diff.T))[0]))
        return {"status": status, "solver": solver, "value": float(self.problem.value),
                "rel_error": float(np.linalg.norm(fim_diff) / np.linalg.norm(self.fim_qoi_vec)),
                "violation": violation, "raw_margin": raw_margin, **full}

    def _message(self, solver, first, tried=None):
        """The SolverError text; ``tried``: ``(solver, _SolveFailed)`` of the fallback solve."""
        if first.status == "optimal":
            msg = f"FIMMatchingScore: the {solver} solver ended with status 'optimal' but {first.detail}"
        else:
            msg = f"FIMMatchingScore: the {solver} solver ended with status {first.status!r}, not 'optimal'"
            if first.detail:
                msg += f" ({first.detail})"
        statuses = [first.status]
        if tried is not None:
            name, second = tried
            msg += (f"; {name}, tried next, ended with status {second.status!r} too"
                    + (f" ({second.detail})" if second.detail else "") + "; no weights were returned. Check")
            statuses.append(second.status)
        else:
            msg += f"; no weights were returned. Try solver_kwargs={{'solver': '{other_solver(solver)}'}}, and check"
        if any(str(s).startswith("infeasible") for s in statuses):
            msg += (" that the candidates' FIMs can cover the target FIM (no candidate carries "
                    "information in a direction the target needs"
                    + (", or weight_upper_bound is too small" if self.bounded else "") + ")")
        else:
            msg += " that preconditioning is on (precondition=True)"
        return msg + "."

    # ----------------------------------------------------------------- the weights
    def select(self, zero_tol=1e-4, zero_tol_dual=1e-4, zero_tol_absolute=None):
        """The weights after the zero tolerances: ``(weights, info)``.

        ``weights`` has one entry per candidate (0.0 for those not selected), in the units
        of the given FIMs; ``info`` holds ``match_margin``, ``n_selected`` and
        ``n_kept_for_match`` (weights below the tolerances kept because the match needs them).
        See :meth:`get_config_weights` for the rule.
        """
        if self.result is None:
            raise InputError("FIMMatchingScore.convexopt: no solution yet; call solve() first")
        tol = check_weight_tolerance({"zero_tol": zero_tol, "zero_tol_dual": zero_tol_dual,
                                      "zero_tol_absolute": zero_tol_absolute})
        raw = self.result["weights"][self.active]
        share = raw * self._share_per_weight
        keep = (share > tol["zero_tol"]) & (self.result["dual_wm"][self.active] < tol["zero_tol_dual"])
        if tol["zero_tol_absolute"] is not None:
            keep &= raw > tol["zero_tol_absolute"]
        margin = match_margin(np.where(keep, raw, 0.0), self._unit_fims, self._unit_target)
        added = 0
        if margin < -MATCH_TOL:
            # Adding a weighted PSD matrix never lowers the margin, so the fewest dropped
            # weights (largest share first) that restore the match are found by bisection.
            dropped = np.flatnonzero(~keep & (raw > 0))
            dropped = dropped[np.argsort(-share[dropped], kind="stable")]
            lo, hi = 1, len(dropped)
            while lo < hi:
                mid = (lo + hi) // 2
                trial = keep.copy()
                trial[dropped[:mid]] = True
                if match_margin(np.where(trial, raw, 0.0), self._unit_fims, self._unit_target) >= -MATCH_TOL:
                    hi = mid
                else:
                    lo = mid + 1
            added = lo if dropped.size else 0
            keep[dropped[:added]] = True
            before = margin
            margin = match_margin(np.where(keep, raw, 0.0), self._unit_fims, self._unit_target)
            message = (f"FIMMatchingScore: setting the weights below the zero tolerances ({tol}) to 0 would break "
                       f"the match (lowest eigenvalue of sum w_i I_i - I_target {before:.3g} of |I_target|); "
                       f"{added} of them are kept, as the match needs them (metadata 'n_kept_for_match')")
            log.warning(message)
            warnings.warn(message, UserWarning, stacklevel=3)
        weights = np.zeros(len(self.ids))
        weights[self.active[keep]] = raw[keep]
        return weights, {"match_margin": margin, "n_selected": int(np.count_nonzero(weights)),
                         "n_kept_for_match": added}

    def get_config_weights(self, zero_tol=1e-4, zero_tol_dual=1e-4, zero_tol_absolute=None):
        """The non-zero weights, ``{candidate id: weight}`` (``information_matching``'s form).

        A weight is non-zero when its share of the target's information,
        ``w_i |I_i|_F / |I_target|_F`` (parameters in units where the target FIM has a unit
        diagonal), exceeds ``zero_tol``, the dual value of its ``w_i >= 0`` constraint (a
        dimensionless reduced cost) is below ``zero_tol_dual``, and, when given, the weight
        exceeds ``zero_tol_absolute`` (in the units of the weights). The first two do not
        change when the target or the candidates are scaled (units, covariance). When
        setting the others to 0 would break the match, the largest of them are kept, with
        a warning.

        Returns
        -------
        dict
            Candidate id -> weight (float), for the selected candidates only.
        """
        weights, _ = self.select(zero_tol, zero_tol_dual, zero_tol_absolute)
        return {self.ids[i]: float(weights[i]) for i in np.flatnonzero(weights)}
