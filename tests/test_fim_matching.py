"""FIMMatchingScore (issue 7): information matching through information_matching.ConvexOpt.

Independent references used here:
- scipy.optimize.linprog: with diagonal FIMs the semidefinite constraint is one linear
  inequality per diagonal entry, so the optimal weights are those of a linear program;
- the generalised eigenvalue problem (scipy.linalg.eigh): one candidate alone matches the
  target with weight lambda_max(I_target, I_i);
- the reference system's conformance case 13 (weights in its saved_config.extxyz);
- the two solvers SDPA and CLARABEL against each other.
"""

import copy
import json
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import scipy.optimize
from ase import Atoms
from ase.io import read

from atomscore import InputError, LocalWorkflow, ScoreQuantity, SolverError
from atomscore.fim.matching import FIMMatchingScore, installed_solvers

CONFORMANCE = Path(os.environ.get("ATOMSCORE_CONFORMANCE_DIR", "/work/shared/conformance"))
CASE13 = CONFORMANCE / "orchestrator-score" / "score"
needs_conformance = pytest.mark.skipif(not (CASE13 / "test_inputs" / "query_configs_with_fim.extxyz").is_file(),
                                       reason="conformance data not found (set ATOMSCORE_CONFORMANCE_DIR)")
SOLVERS = [s for s in ("SDPA", "CLARABEL") if s in installed_solvers()]


def configs_with_fims(fims):
    out = []
    for i, fim in enumerate(fims):
        atoms = Atoms("Si2", positions=[[0, 0, 0], [1.3, 1.3, 1.3]], cell=[5.43] * 3, pbc=True)
        atoms.info["fim_training_set_score"] = np.array(fim, dtype=float)
        atoms.info["tag"] = i
        out.append(atoms)
    return out


def diagonal_problem(seed=3, n=6, p=3):
    rng = np.random.default_rng(seed)
    diags = rng.uniform(0.1, 5.0, size=(n, p)) * rng.choice([1e-3, 1.0, 1e3], size=(1, p))
    target = rng.uniform(1.0, 50.0, size=p) * diags.max(axis=0)
    return diags, target


def linprog_weights(diags, target, upper=None):
    """min sum w  s.t.  diags.T @ w >= target, 0 <= w <= upper (scipy's HiGHS)."""
    n = len(diags)
    res = scipy.optimize.linprog(np.ones(n), A_ub=-diags.T, b_ub=-target,
                                 bounds=[(0, upper)] * n, method="highs")
    assert res.status == 0
    return res.x


def conformance_inputs():
    configs = read(CASE13 / "test_inputs" / "query_configs_with_fim.extxyz", index=":")
    return configs, CASE13 / "test_inputs" / "target_property_fim.json"


def info_snapshot(configs):
    return [copy.deepcopy(a.info) for a in configs]


def assert_same_info(before, configs):
    for info, atoms in zip(before, configs):
        assert set(info) == set(atoms.info)
        for key, value in info.items():
            np.testing.assert_array_equal(np.asarray(value), np.asarray(atoms.info[key]))


# --------------------------------------------------------------------------- numbers
@pytest.mark.parametrize("solver", SOLVERS)
def test_diagonal_fims_match_linear_program(solver):
    """Diagonal FIMs: weights equal scipy linprog's optimum (independent LP solver)."""
    diags, target = diagonal_problem()
    configs = configs_with_fims([np.diag(d) for d in diags])
    weights = np.array(FIMMatchingScore().compute_batch(configs, np.diag(target),
                                                        solver_kwargs={"solver": solver}))
    expected = linprog_weights(diags, target)
    assert weights.shape == (len(configs),)
    np.testing.assert_allclose(weights.sum(), expected.sum(), rtol=1e-4)
    np.testing.assert_allclose(weights, expected, rtol=1e-3, atol=1e-3 * expected.max())


@pytest.mark.parametrize("solver", SOLVERS)
def test_upper_bound_respected_and_matches_linear_program(solver):
    """With weight_upper_bound the LP optimum (linprog with bounds) is reproduced and no weight exceeds it."""
    diags, target = diagonal_problem(seed=5)
    unbounded = linprog_weights(diags, target)
    upper = 0.6 * unbounded.max()
    expected = linprog_weights(diags, target, upper=upper)
    configs = configs_with_fims([np.diag(d) for d in diags])
    weights = np.array(FIMMatchingScore().compute_batch(
        configs, np.diag(target), convexopt_init_kwargs={"weight_upper_bound": upper},
        solver_kwargs={"solver": solver}))
    assert np.all(weights <= upper * (1 + 1e-6))
    np.testing.assert_allclose(weights.sum(), expected.sum(), rtol=1e-4)
    np.testing.assert_allclose(weights, expected, rtol=1e-3, atol=1e-3 * upper)


def test_single_candidate_weight_is_generalised_eigenvalue():
    """One full candidate FIM: the weight is lambda_max of I_target v = lambda I_1 v (scipy eigh)."""
    rng = np.random.default_rng(0)
    a = rng.normal(size=(4, 4))
    b = rng.normal(size=(4, 4))
    fim, target = a @ a.T + 0.1 * np.eye(4), b @ b.T
    expected = scipy.linalg.eigh(target, fim, eigvals_only=True)[-1]
    score = FIMMatchingScore()
    weights = score.compute_batch(configs_with_fims([fim]), target)
    np.testing.assert_allclose(weights[0], expected, rtol=1e-4)
    meta = score._last_metadata
    assert meta["status"] == "optimal" and meta["n_selected"] == 1
    assert meta["match_margin"] > -1e-5


# --------------------------------------------------------------------------- conformance data
@needs_conformance
def test_conformance_13_weights_and_closed_form():
    """Reference weights of case 13 (rtol 5e-3; zeros exactly 0) and the one-candidate closed form."""
    configs, target_path = conformance_inputs()
    ref = read(CONFORMANCE / "orchestrator-score" / "reference_output" / "score" / "FIMMatchingScore"
               / "13_fim_matching" / "00000" / "saved_config.extxyz", index=":")
    expected = np.array([float(a.info["fim_matching_weight_score"]) for a in ref])
    weights = np.array(FIMMatchingScore().compute_batch(configs, str(target_path)))
    # Weights below zero_tol are returned as exactly 0 (as the reference writes them).
    np.testing.assert_array_equal(weights == 0, expected == 0)
    np.testing.assert_allclose(weights, expected, rtol=5e-3, atol=0)
    target = np.array(json.loads(target_path.read_text())["fim_property_score"])
    k = int(np.argmax(weights))
    closed = scipy.linalg.eigh(target, np.asarray(configs[k].info["fim_training_set_score"], float),
                               eigvals_only=True)[-1]
    np.testing.assert_allclose(weights[k], closed, rtol=1e-4)


@needs_conformance
@pytest.mark.skipif(len(SOLVERS) < 2, reason="needs both SDPA and CLARABEL")
def test_conformance_13_sdpa_and_clarabel_agree():
    """SDPA and CLARABEL weights agree within 1e-3 relative on case 13; inputs untouched."""
    configs, target_path = conformance_inputs()
    before = info_snapshot(configs)
    got = {s: np.array(FIMMatchingScore().compute_batch(configs, target_path, solver_kwargs={"solver": s}))
           for s in ("SDPA", "CLARABEL")}
    np.testing.assert_array_equal(got["SDPA"] == 0, got["CLARABEL"] == 0)
    np.testing.assert_allclose(got["SDPA"], got["CLARABEL"], rtol=1e-3, atol=0)
    assert_same_info(before, configs)


@needs_conformance
def test_unpreconditioned_sdpa_falls_back_to_clarabel():
    """Without preconditioning SDPA calls case 13 infeasible (the reference's flaw): the problem is
    solved again by CLARABEL, the metadata says so, and the weights are CLARABEL's (issue 16).
    CLARABEL solves the unscaled problem to the same weight as the scaled one."""
    configs, target_path = conformance_inputs()
    score = FIMMatchingScore()
    plain = score.compute_batch(configs, target_path, precondition=False, solver_kwargs={"solver": "CLARABEL"})
    scaled = score.compute_batch(configs, target_path, solver_kwargs={"solver": "CLARABEL"})
    np.testing.assert_allclose(plain, scaled, rtol=1e-3, atol=0)
    if "SDPA" in SOLVERS:
        with pytest.warns(UserWarning, match="solved again with CLARABEL"):
            got = score.compute_batch(configs, target_path, precondition=False, solver_kwargs={"solver": "SDPA"})
        meta = score.metadata_of(got)
        assert meta["fallback"]["from_solver"] == "SDPA" and meta["fallback"]["from_status"] == "infeasible"
        assert meta["solver"] == "CLARABEL"
        np.testing.assert_allclose(got, plain, rtol=1e-3, atol=0)


@pytest.mark.parametrize("solver", SOLVERS)
def test_infeasible_upper_bound_raises_solver_error(solver):
    """A target no candidate can match under the upper bound -> SolverError with the status."""
    diags, target = diagonal_problem()
    upper = 0.1 * linprog_weights(diags, target).max() / len(diags)
    configs = configs_with_fims([np.diag(d) for d in diags])
    other = "CLARABEL" if solver == "SDPA" else "SDPA"
    with pytest.raises(SolverError, match=rf"{solver}.*infeasible.*{other}.*weight_upper_bound"):
        FIMMatchingScore().compute_batch(configs, np.diag(target), solver_kwargs={"solver": solver},
                                         convexopt_init_kwargs={"weight_upper_bound": upper})


@pytest.mark.parametrize("solver", SOLVERS)
def test_uncovered_direction_raises_solver_error(solver):
    """Candidates carrying no information on a parameter the target needs -> SolverError."""
    configs = configs_with_fims([np.diag([1.0, 0.0]), np.diag([2.0, 0.0])])
    with pytest.raises(SolverError, match="infeasible"):
        FIMMatchingScore().compute_batch(configs, np.eye(2), solver_kwargs={"solver": solver})


# --------------------------------------------------------------------------- target forms
def test_target_forms_give_the_same_weights(tmp_path):
    """Path to score_results.json, its dict, the array, a (1,P,P) stack, a .npy path: same weights;
    a list of two property FIMs equals their sum."""
    diags, target = diagonal_problem()
    configs = configs_with_fims([np.diag(d) for d in diags])
    t = np.diag(target)
    doc = {"fim_property_score": [t.tolist()], "_metadata": {"cov": "x"}}
    (tmp_path / "score_results.json").write_text(json.dumps(doc))
    np.save(tmp_path / "t.npy", t)
    score = FIMMatchingScore()
    ref = np.array(score.compute_batch(configs, t))
    for form in (str(tmp_path / "score_results.json"), tmp_path / "score_results.json", doc,
                 t[None], t.tolist(), str(tmp_path / "t.npy")):
        np.testing.assert_allclose(score.compute_batch(configs, form), ref, rtol=1e-9)
    half = {"fim_property_score": 0.5 * t}
    np.testing.assert_allclose(score.compute_batch(configs, [half, half]), ref, rtol=1e-6)
    np.testing.assert_allclose(score.compute_batch(configs, np.stack([0.25 * t, 0.75 * t])), ref, rtol=1e-6)
    assert doc["fim_property_score"] == [t.tolist()]  # not modified


def test_json_string_fim_is_decoded_and_zero_fim_gets_zero_weight():
    """A FIM left as ASE's '_JSON [[...]]' text is read; an all-zero candidate gets weight 0 (also with
    per-configuration 'frobenius' scaling, which would otherwise divide by zero)."""
    diags, target = diagonal_problem()
    fims = [np.diag(d) for d in diags] + [np.zeros((3, 3))]
    configs = configs_with_fims(fims)
    configs[0].info["fim_training_set_score"] = "_JSON " + json.dumps(fims[0].tolist())
    ref = linprog_weights(diags, target)
    weights = np.array(FIMMatchingScore().compute_batch(configs, np.diag(target)))
    np.testing.assert_allclose(weights[:-1], ref, rtol=1e-3, atol=1e-3 * ref.max())
    assert weights[-1] == 0.0
    fro = np.array(FIMMatchingScore().compute_batch(configs, np.diag(target), precondition="frobenius"))
    assert fro[-1] == 0.0 and np.all(fro >= 0) and fro.sum() > 0


def test_spec_call_and_save_results(tmp_path):
    """The spec's call (keywords, 'IMPORTANCE', spec kwargs) and save_results -> info key in score_results.xyz."""
    diags, target = diagonal_problem()
    configs = configs_with_fims([np.diag(d) for d in diags])
    before = info_snapshot(configs)
    (tmp_path / "score_results.json").write_text(json.dumps({"fim_property_score": np.diag(target).tolist()}))
    score = FIMMatchingScore()
    weights = score.compute_batch(
        list_of_atoms=configs, fim_property=str(tmp_path / "score_results.json"), score_quantity="IMPORTANCE",
        convexopt_init_kwargs={"weight_upper_bound": None},
        solver_kwargs={"solver": SOLVERS[0], "verbose": False},
        weight_tolerance={"zero_tol": 1e-4, "zero_tol_dual": 1e-4})
    path = score.save_results(compute_results=weights, save_dir=tmp_path, list_of_configs=configs)
    assert path.name == "score_results.xyz"
    back = read(path, index=":")
    np.testing.assert_allclose([a.info["fim_matching_weight_score"] for a in back], weights, rtol=1e-12)
    meta = back[0].info["_metadata"]["fim_matching_weight"]
    assert meta["status"] == "optimal" and meta["solver"] == SOLVERS[0] and meta["precondition"] == "diagonal"
    assert_same_info(before, configs)


# --------------------------------------------------------------------------- bad input
def test_bad_inputs_raise_input_error(tmp_path):
    """Missing key (index named), PxP mismatch, non-symmetric, unknown solver (installed listed), bad args."""
    diags, target = diagonal_problem()
    t = np.diag(target)
    score = FIMMatchingScore()

    configs = configs_with_fims([np.diag(d) for d in diags])
    del configs[2].info["fim_training_set_score"]
    with pytest.raises(InputError, match=r"configuration 2 has no info\['fim_training_set_score'\]"):
        score.compute_batch(configs, t)

    configs = configs_with_fims([np.diag(d) for d in diags])
    with pytest.raises(InputError, match=r"configuration 0.*expected a 2x2 FIM.*got 3x3"):
        score.compute_batch(configs, np.eye(2))
    configs[4].info["fim_training_set_score"] = np.eye(2)
    with pytest.raises(InputError, match=r"configuration 4.*expected a 3x3 FIM"):
        score.compute_batch(configs, t)

    configs = configs_with_fims([np.diag(d) for d in diags])
    bad = np.diag(diags[1]).copy()
    bad[0, 1] = 1.0
    configs[1].info["fim_training_set_score"] = bad
    with pytest.raises(InputError, match=r"configuration 1.*symmetric"):
        score.compute_batch(configs, t)
    with pytest.raises(InputError, match=r"fim_property.*symmetric"):
        score.compute_batch(configs_with_fims([np.diag(d) for d in diags]), bad)

    configs = configs_with_fims([np.diag(d) for d in diags])
    with pytest.raises(InputError, match=r"unknown or not installed solver 'NOPE'; installed: .*CLARABEL"):
        score.compute_batch(configs, t, solver_kwargs={"solver": "NOPE"})
    with pytest.raises(InputError, match="zero_tol"):
        score.compute_batch(configs, t, weight_tolerance={"zero_toll": 1e-4})
    with pytest.raises(InputError, match="weight_upper_bound.*one bound per configuration"):
        score.compute_batch(configs, t, convexopt_init_kwargs={"weight_upper_bound": [1.0, 2.0]})
    with pytest.raises(InputError, match="convexopt_init_kwargs key"):
        score.compute_batch(configs, t, convexopt_init_kwargs={"upper": 1.0})
    with pytest.raises(InputError, match="fim_property: required"):
        score.compute_batch(configs)
    with pytest.raises(InputError, match="fim_property_score"):
        score.compute_batch(configs, {"fim": t})
    with pytest.raises(InputError, match="file not found"):
        score.compute_batch(configs, str(tmp_path / "missing.json"))
    with pytest.raises(InputError, match="IMPORTANCE"):
        score.compute_batch(configs, t, score_quantity="UNCERTAINTY")
    with pytest.raises(InputError, match="precondition"):
        score.compute_batch(configs, t, precondition="sometimes")
    with pytest.raises(InputError, match="compute_batch"):
        score.compute(configs[0], ScoreQuantity.IMPORTANCE, fim_property=t)


# --------------------------------------------------------------------------- jobs
def test_run_writes_one_job_with_every_candidate(tmp_path):
    """run() puts all candidates in one job whatever batch_size (warning when it would split);
    the job's weights equal the in-memory compute_batch; bad input fails before any folder."""
    diags, target = diagonal_problem()
    configs = configs_with_fims([np.diag(d) for d in diags])
    (tmp_path / "target.json").write_text(json.dumps({"fim_property_score": np.diag(target).tolist()}))
    score = FIMMatchingScore()
    expected = score.compute_batch(configs, str(tmp_path / "target.json"))
    workflow = LocalWorkflow(tmp_path / "jobs", nprocs=1)
    args = {"score_quantity": "IMPORTANCE", "fim_property": str(tmp_path / "target.json")}
    with pytest.warns(UserWarning, match="batch_size=2 ignored"):
        ids = score.run("matching", configs, args, workflow=workflow, batch_size=2)
    assert len(ids) == 1
    workflow.block_until_completed(ids)
    results = score.data_from_calc_ids(ids, workflow=workflow)
    np.testing.assert_allclose([a.info["fim_matching_weight_score"] for a in results], expected, rtol=1e-9)

    bad = dict(args, solver_kwargs={"solver": "NOPE"})
    with pytest.raises(InputError, match="installed"):
        score.run("bad", configs, bad, workflow=workflow)
    with pytest.raises(InputError, match="compute_args key"):
        score.run("bad", configs, dict(args, batch=3), workflow=workflow)
    assert not (tmp_path / "jobs" / "FIMMatchingScore" / "bad").exists()


def ill_scaled_problem(seed, n=10, p=4, rank=3, spread=2.0):
    """Candidate FIMs J^T J of rank ``rank`` with parameters of scales 10^(+-spread)."""
    rng = np.random.default_rng(seed)
    scales = 10 ** rng.uniform(-spread, spread, size=p)
    fims = []
    for _ in range(n):
        jac = rng.normal(size=(rank, p)) * scales
        fims.append(jac.T @ jac)
    jac = rng.normal(size=(2, p)) * scales
    return fims, 20 * jac.T @ jac


@pytest.mark.parametrize("seed", range(4))
def test_parameters_of_very_different_scales(seed):
    """Parameters 4 orders of magnitude apart: the default (parameter-unit preconditioning) with every
    solver agrees with unpreconditioned CLARABEL (objective 1e-4, weights 1e-3), and SDPA with the
    reference's max-Frobenius scaling alone never returns a silently wrong answer: it either raises
    SolverError or its weights match the target."""
    fims, target = ill_scaled_problem(seed)
    configs = configs_with_fims(fims)
    score = FIMMatchingScore()
    ref = np.array(score.compute_batch(configs, target, precondition=False, solver_kwargs={"solver": "CLARABEL"}))
    for solver in SOLVERS:
        got = np.array(score.compute_batch(configs, target, solver_kwargs={"solver": solver}))
        np.testing.assert_allclose(got.sum(), ref.sum(), rtol=1e-4)
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3 * ref.max())
        assert score._last_metadata["match_margin"] > -1e-4
    if "SDPA" in SOLVERS:
        try:
            weights = np.array(score.compute_batch(configs, target, precondition="max_frobenius",
                                                   solver_kwargs={"solver": "SDPA"}))
        except SolverError as exc:
            assert "do not match the target" in str(exc) or "not 'optimal'" in str(exc)
        else:
            matched = sum(w * f for w, f in zip(weights, fims)) - target
            d = 1 / np.sqrt(np.diag(target))
            assert np.linalg.eigvalsh(matched * np.outer(d, d))[0] > -1e-3 * np.linalg.norm(target * np.outer(d, d))
