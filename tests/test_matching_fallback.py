"""FIMMatchingScore's default solver and its SDPA -> CLARABEL fallback (issue 16).

The problem: 10 candidates with FIMs J^T J of rank 3 over 4 parameters whose scales differ
by up to 10^(+-2), target 1e-3 I. SDPA with the default preconditioning calls it
'infeasible' (pdINF); it is feasible -- CLARABEL solves it, with and without
preconditioning, and the weights satisfy sum w_i I_i >= I_target (checked here by the
eigenvalues, numpy). Independent reference: CLARABEL on the unpreconditioned problem.
"""

import numpy as np
import pytest
from ase import Atoms

from atomscore import SolverError
from atomscore.fim.matching import FIMMatchingScore, default_solver, installed_solvers
from test_fim_matching import ill_scaled_problem

needs_sdpa = pytest.mark.skipif("SDPA" not in installed_solvers(), reason="sdpa-python not installed")


def false_infeasible_problem(seed=5, n=10, p=4, rank=3, spread=2.0):
    """The candidates of test_fim_matching's ill-scaled problems, with the target 1e-3 I."""
    fims, _ = ill_scaled_problem(seed, n=n, p=p, rank=rank, spread=spread)
    return fims, 1e-3 * np.eye(p)


def configs_with_fims(fims):
    out = []
    for fim in fims:
        atoms = Atoms("Si", positions=[[0, 0, 0]])
        atoms.info["fim_training_set_score"] = np.array(fim)
        out.append(atoms)
    return out


def lowest_match_eigenvalue(weights, fims, target):
    return np.linalg.eigvalsh(sum(w * f for w, f in zip(weights, fims)) - target)[0]


def test_clarabel_is_the_default_solver():
    assert default_solver() == "CLARABEL"


def test_false_infeasible_case_ends_optimal_by_default():
    fims, target = false_infeasible_problem()
    score = FIMMatchingScore()
    result = score.compute_batch(configs_with_fims(fims), target)
    weights = np.array(result)
    meta = score.metadata_of(result)
    assert meta["status"] == "optimal" and meta["solver"] == "CLARABEL"
    assert "fallback" not in meta
    ref = np.array(score.compute_batch(configs_with_fims(fims), target, precondition=False))
    np.testing.assert_allclose(weights, ref, rtol=1e-3, atol=1e-3 * ref.max())
    assert lowest_match_eigenvalue(weights, fims, target) > -1e-3 * np.linalg.norm(target)


@needs_sdpa
def test_sdpa_false_infeasible_falls_back_to_clarabel_and_says_so():
    fims, target = false_infeasible_problem()
    configs = configs_with_fims(fims)
    score = FIMMatchingScore()
    with pytest.warns(UserWarning, match="SDPA solver ended with status 'infeasible'"):  # issue 22 item 6
        result = score.compute_batch(configs, target, solver_kwargs={"solver": "SDPA"})
    weights = np.array(result)
    meta = score.metadata_of(result)
    assert meta["status"] == "optimal"
    assert meta["solver"] == "CLARABEL"
    assert meta["fallback"]["from_solver"] == "SDPA"
    assert meta["fallback"]["from_status"] == "infeasible"
    assert meta["fallback"]["to_solver"] == "CLARABEL"
    ref = np.array(FIMMatchingScore().compute_batch(configs, target, precondition=False,
                                                   solver_kwargs={"solver": "CLARABEL"}))
    np.testing.assert_allclose(weights, ref, rtol=1e-3, atol=1e-3 * ref.max())


@needs_sdpa
def test_sdpa_success_records_no_fallback():
    fims, target = false_infeasible_problem(seed=0)
    score = FIMMatchingScore()
    meta = score.metadata_of(score.compute_batch(configs_with_fims(fims), target, solver_kwargs={"solver": "SDPA"}))
    assert meta["solver"] == "SDPA" and "fallback" not in meta


@needs_sdpa
def test_truly_infeasible_names_both_solvers():
    """Candidates without information on parameter 2: SDPA infeasible, CLARABEL too -> one SolverError."""
    configs = configs_with_fims([np.diag([1.0, 0.0]), np.diag([2.0, 0.0])])
    with pytest.raises(SolverError, match=r"SDPA.*'infeasible'.*CLARABEL, tried next, ended with status 'infeasible'"), \
            pytest.warns(UserWarning, match="solved again with CLARABEL"):
        FIMMatchingScore().compute_batch(configs, np.eye(2), solver_kwargs={"solver": "SDPA"})
