"""MatchingProblem writes information_matching.ConvexOpt's problem itself (issue 27 item 4).

The cvxpy problem is built here rather than through ``ConvexOpt`` (whose per-candidate set-up
was most of the overhead beyond the bare CLARABEL solve at M = 1,000), and the candidates'
PSD check tries one batched Cholesky before the exact eigenvalue test.

Independent references: ``information_matching.ConvexOpt`` itself, given the same scaled FIMs
(the conic data cvxpy hands CLARABEL, and the solutions); numpy's ``eigvalsh`` and the
one-by-one check ``_check_fim`` for the PSD tolerance.
"""

import numpy as np
import pytest

from atomscore import InputError
from atomscore.fim.matching import PSD_RTOL, _check_fim, _check_fims
from atomscore.fim.matching_problem import MatchingProblem

cp = pytest.importorskip("cvxpy")
information_matching = pytest.importorskip("information_matching")
convex_optimization = pytest.importorskip("information_matching.convex_optimization")


def problem(seed=0, m=40, p=4, rank=2):
    rng = np.random.default_rng(seed)
    scales = 10 ** rng.uniform(-1, 1, size=p)
    jac = rng.normal(size=(m, rank, p)) * scales
    t = rng.normal(size=(2, p)) * scales
    return np.einsum("mri,mrj->mij", jac, jac), 5.0 * t.T @ t


def convexopt_of(mp, **kwargs):
    """information_matching's problem from the same scaled FIMs (scales already applied: 1.0)."""
    shape = mp.constraints[1].args[0].shape
    return information_matching.ConvexOpt({"fim": mp.fim_qoi_vec.reshape(shape), "fim_scale": 1.0},
                                          {k: {"fim": row.reshape(shape), "fim_scale": 1.0}
                                           for k, row in enumerate(mp.fim_configs_vec)}, **kwargs)


@pytest.mark.parametrize("bound", [None, "array"])
def test_same_conic_problem_and_solution_as_convexopt(bound):
    """The data cvxpy hands CLARABEL (c, A, b, cones) equal ConvexOpt's for the same scaled FIMs, and
    so do the weights and duals CLARABEL returns; with a bound per candidate too (ConvexOpt rescales
    it by scale_qoi / scale_conf, as we do)."""
    fims, target = problem()
    ub = None if bound is None else np.linspace(2.0, 40.0, len(fims))
    mp = MatchingProblem(target, fims, weight_upper_bound=ub)
    scaled_ub = None if ub is None else ub * mp.scale_qoi / mp.scale_conf
    ref = convexopt_of(mp, weight_upper_bound=scaled_ub)
    ours, theirs = mp.problem.get_problem_data("CLARABEL")[0], ref.problem.get_problem_data("CLARABEL")[0]
    np.testing.assert_array_equal(ours["c"], theirs["c"])
    np.testing.assert_array_equal(ours["b"], theirs["b"])
    assert (ours["A"] != theirs["A"]).nnz == 0
    assert str(ours["dims"]) == str(theirs["dims"])
    result = mp.solve(solver="CLARABEL")
    ref.solve(solver="CLARABEL")
    assert result["status"] == ref.result["status"] == "optimal"
    np.testing.assert_allclose(result["wm"], ref.result["wm"], rtol=1e-12, atol=1e-12 * ref.result["wm"].max())
    np.testing.assert_allclose(result["dual_wm"], ref.result["dual_wm"], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(result["rel_error"], ref.result["rel_error"], rtol=1e-9)
    # cvxpy's own PSD violation of the LMI, with our weights put in
    ref.wm.value = result["wm"].reshape(-1, 1)
    np.testing.assert_allclose(result["violation"], float(np.max(ref.constraints[1].violation())), atol=1e-12)


def test_objective_options_as_convexopt():
    """obj_fn (information_matching's l1-norm objective) gives ConvexOpt's weights; a non-convex
    obj_fn is refused with an InputError naming it (ConvexOpt raised a bare ValueError)."""
    fims, target = problem(seed=2)
    mp = MatchingProblem(target, fims, convexopt_kwargs={"obj_fn": convex_optimization.obj_fn_l1_norm})
    ref = convexopt_of(mp, obj_fn=convex_optimization.obj_fn_l1_norm)
    ref.solve(solver="CLARABEL")
    wm = mp.solve(solver="CLARABEL")["wm"]
    np.testing.assert_allclose(wm, ref.result["wm"], rtol=0, atol=1e-7 * ref.result["wm"].max())
    with pytest.raises(InputError, match=r"obj_fn.*convex"):
        MatchingProblem(target, fims, convexopt_kwargs={"obj_fn": lambda x: -cp.sum_squares(x)})


def test_psd_check_tolerance_between_the_two_bounds():
    """A FIM whose lowest eigenvalue lies between -PSD_RTOL * max|I| (where the batched Cholesky
    stops) and -PSD_RTOL * |I|_2 (the test's own bound) is accepted, as one by one; one beyond
    the bound is refused with its index named. All-ones 4x4: |I|_2 = 4 max|I| (numpy eigvalsh)."""
    ones = np.ones((4, 4))
    borderline = ones - 2.0 * PSD_RTOL * np.eye(4)  # eigenvalues 4 - 2e-8 and -2e-8 (x3); max|I| = 1
    eig = np.linalg.eigvalsh(borderline)
    assert -PSD_RTOL * np.abs(eig).max() < eig[0] < -PSD_RTOL * np.abs(borderline).max()
    fims = [np.eye(4), borderline, 2.0 * np.eye(4)]
    stack = _check_fims(fims, "candidate {}")
    assert isinstance(stack, np.ndarray) and stack.shape == (3, 4, 4)
    np.testing.assert_array_equal(stack[1], _check_fim(borderline, "one"))
    beyond = ones - 40.0 * PSD_RTOL * np.eye(4)  # lowest eigenvalue -4e-7 < -PSD_RTOL * |I|_2
    with pytest.raises(InputError, match=r"candidate 2: a FIM must be positive semidefinite"):
        _check_fims([np.eye(4), borderline, beyond], "candidate {}")


def test_convexopt_arguments_are_all_taken():
    """Every argument of information_matching.ConvexOpt besides the FIMs (its signature) is one the
    problem written here takes; an unknown one is refused before anything is solved."""
    import inspect

    from atomscore.fim.matching import FIMMatchingScore
    from atomscore.fim.matching_problem import CONVEXOPT_KWARGS

    theirs = [p for p in inspect.signature(information_matching.ConvexOpt.__init__).parameters
              if p not in ("self", "fim_qoi", "fim_configs")]
    assert sorted(theirs) == sorted(CONVEXOPT_KWARGS)
    fims, target = problem()
    with pytest.raises(InputError, match=r"convexopt_init_kwargs key.*obj_fn"):
        FIMMatchingScore().fim_match(target, fims, convexopt_init_kwargs={"objective": "sum"})
