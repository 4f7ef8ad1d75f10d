"""FIMMatchingScore as the Orchestrator's users call it (issue 22, items 4 and 6).

``fim_match``, ``setup_problem``, ``convexopt`` (``result``, ``get_config_weights``) and
``fim_preconditioning_kwargs``, with the signatures of llnl/orchestrator's
``orchestrator/computer/score/fim/fim_matching.py``; the SDPA -> CLARABEL fallback warns and
logs; an infeasible problem raises SolverError (the Orchestrator raised AttributeError).

Independent reference: ``information_matching.ConvexOpt`` itself (the package the
Orchestrator wraps), fed the FIMs scaled by ``information_matching.precondition.preconditioner``
exactly as the Orchestrator's ``setup_problem`` does, and solved with CLARABEL.
"""

import inspect
import logging

import numpy as np
import pytest

from atomscore import InputError, SolverError
from atomscore.fim.matching import FIMMatchingScore, installed_solvers
from test_matching_fallback import configs_with_fims, false_infeasible_problem

information_matching = pytest.importorskip("information_matching")
from information_matching.precondition import preconditioner  # noqa: E402

needs_sdpa = pytest.mark.skipif("SDPA" not in installed_solvers(), reason="sdpa-python not installed")


def problem(seed=0, m=12, p=4, rank=2):
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(m, rank, p))
    t = rng.normal(size=(p, p))
    return np.einsum("mri,mrj->mij", jac, jac), 5.0 * t.T @ t / p


def reference_convexopt(target, fims, scale_type="max_frobenius", pad=0.0):
    """information_matching's own problem, preconditioned as the Orchestrator's setup_problem does."""
    opt = information_matching.ConvexOpt(preconditioner(target, scale_type),
                                         preconditioner(dict(enumerate(fims)), scale_type, pad=pad))
    opt.solve(solver="CLARABEL")
    return opt


def full_weights(weight_dict, m):
    out = np.zeros(m)
    for k, w in weight_dict.items():
        out[int(k)] = w
    return out


# --------------------------------------------------------------------------- the signatures
def test_signatures_are_the_orchestrators():
    """The argument names and order of the Orchestrator's calls (its source, read with the search tools)."""
    params = lambda f: list(inspect.signature(f).parameters)[1:]  # noqa: E731
    assert params(FIMMatchingScore.fim_match) == [
        "fim_property", "fim_candidates", "convexopt_init_kwargs", "fim_preconditioning_kwargs", "solver_kwargs",
        "weight_tolerance"]
    assert params(FIMMatchingScore.setup_problem) == [
        "fim_property", "fim_candidates", "convexopt_init_kwargs", "fim_preconditioning_kwargs"]
    assert params(FIMMatchingScore.compute_batch)[:7] == [
        "list_of_atoms", "fim_property", "score_quantity", "convexopt_init_kwargs", "fim_preconditioning_kwargs",
        "solver_kwargs", "weight_tolerance"]


# --------------------------------------------------------------------------- fim_match
def test_fim_match_returns_the_list_of_weights_of_information_matching():
    """fim_match(target, (M, P, P) array) -> one weight per candidate, equal (1e-4 of the largest) to
    information_matching's ConvexOpt with the Orchestrator's max_frobenius preconditioning; the same
    from compute_batch on Atoms, from a list and from a dict of {'fim': ...} candidates."""
    fims, target = problem()
    ref = full_weights(reference_convexopt(target, fims).get_config_weights(), len(fims))
    assert 0 < np.count_nonzero(ref) < len(fims)
    score = FIMMatchingScore()
    weights = score.fim_match(target, fims, fim_preconditioning_kwargs={"scale_type": "max_frobenius"},
                              solver_kwargs={"solver": "CLARABEL"})
    assert isinstance(weights, list) and len(weights) == len(fims)
    np.testing.assert_array_equal(np.array(weights) > 0, ref > 0)
    np.testing.assert_allclose(weights, ref, rtol=0, atol=1e-4 * ref.max())
    default = score.fim_match(target, fims)  # our preconditioning: the same optimum
    np.testing.assert_allclose(default, ref, rtol=0, atol=1e-4 * ref.max())
    np.testing.assert_allclose(score.compute_batch(configs_with_fims(fims), target), default, rtol=1e-9)
    np.testing.assert_allclose(score.fim_match(target, list(fims)), default, rtol=1e-9)
    as_dicts = score.fim_match({"fim": target, "fim_scale": 0.5}, {k: {"fim": f} for k, f in enumerate(fims)})
    np.testing.assert_allclose(as_dicts, default, rtol=1e-6, atol=1e-9)


def test_setup_problem_then_convexopt_as_the_orchestrators_users_read_it():
    """setup_problem builds score.convexopt unsolved; convexopt.solve(**solver_kwargs) fills result with
    wm, dual_wm, status, value -- equal to ConvexOpt's own for the same preconditioning -- and
    get_config_weights(**tol) gives {index: weight} of the selected candidates."""
    fims, target = problem(seed=3)
    ref = reference_convexopt(target, fims)
    score = FIMMatchingScore()
    assert score.convexopt is None
    opt = score.setup_problem(target, fims, None, {"scale_type": "max_frobenius"})
    assert opt is score.convexopt and opt.result is None
    opt.solve(solver="CLARABEL")
    result = opt.result
    assert result["status"] == "optimal" and result["solver"] == "CLARABEL"
    scale = ref.result["wm"].max()
    np.testing.assert_allclose(result["wm"], ref.result["wm"], rtol=0, atol=1e-5 * scale)
    np.testing.assert_allclose(result["value"], ref.result["value"], rtol=1e-5)
    selected = ref.result["wm"] > 1e-3 * scale
    np.testing.assert_array_less(result["dual_wm"][selected], 1e-4)  # complementary slackness
    np.testing.assert_allclose(result["dual_wm"][~selected], ref.result["dual_wm"][~selected], rtol=1e-3, atol=1e-6)
    got = opt.get_config_weights(zero_tol=1e-4, zero_tol_dual=1e-4)
    expected = ref.get_config_weights(zero_tol=1e-4, zero_tol_dual=1e-4)
    assert sorted(got) == sorted(int(k) for k in expected)
    np.testing.assert_allclose([got[k] for k in sorted(got)], [expected[k] for k in sorted(expected)], rtol=1e-4)
    np.testing.assert_allclose(score.fim_property, target, rtol=1e-15)  # symmetrised copy
    assert score.fim_candidates.shape == fims.shape


def test_get_config_weights_before_solve_is_a_clear_error():
    fims, target = problem()
    opt = FIMMatchingScore().setup_problem(target, fims)
    with pytest.raises(InputError, match="call solve"):
        opt.get_config_weights()


# --------------------------------------------------------------------------- preconditioning
def test_fim_preconditioning_kwargs_in_compute_batch():
    """None: our precondition (default 'diagonal'); {}: none; {'scale_type': ...} exactly that, recorded in
    the metadata; 'frobenius' with pad changes the objective as information_matching's does; the
    Orchestrator's positional order works."""
    fims, target = problem(seed=1)
    configs = configs_with_fims(fims)
    score = FIMMatchingScore()
    for kwargs, mode in ((None, "diagonal"), ({}, "none"), ({"scale_type": "max_frobenius"}, "max_frobenius"),
                         ({"scale_type": "frobenius", "pad": 0.5}, "frobenius")):
        weights = score.compute_batch(configs, target, fim_preconditioning_kwargs=kwargs)
        meta = score.metadata_of(weights)
        assert meta["precondition"] == mode
        assert meta["precondition_pad"] == (kwargs or {}).get("pad", 0.0)
        ref = full_weights(reference_convexopt(target, fims, mode, pad=0.5).get_config_weights()
                           if mode == "frobenius" else reference_convexopt(target, fims).get_config_weights(),
                           len(fims))
        np.testing.assert_allclose(weights, ref, rtol=0, atol=1e-4 * ref.max())
    positional = score.compute_batch(configs, target, "IMPORTANCE", None, {"scale_type": "max_frobenius"},
                                     {"solver": "CLARABEL"}, {"zero_tol": 1e-4, "zero_tol_dual": 1e-4})
    meta = score.metadata_of(positional)
    assert meta["precondition"] == "max_frobenius" and meta["solver"] == "CLARABEL"


def test_bad_preconditioning_kwargs_are_refused():
    fims, target = problem()
    configs = configs_with_fims(fims)
    score = FIMMatchingScore()
    with pytest.raises(InputError, match=r"fim_preconditioning_kwargs: unknown key\(s\) \['scale'\]"):
        score.compute_batch(configs, target, fim_preconditioning_kwargs={"scale": "max_frobenius"})
    with pytest.raises(InputError, match="scale_type.*'max_frobenius', 'frobenius'"):
        score.fim_match(target, fims, fim_preconditioning_kwargs={"scale_type": "trace"})
    with pytest.raises(InputError, match="expected a 'scale_type'"):
        score.fim_match(target, fims, fim_preconditioning_kwargs={"pad": 0.1})
    with pytest.raises(InputError, match="pad.*non-negative"):
        score.fim_match(target, fims, fim_preconditioning_kwargs={"scale_type": "frobenius", "pad": -1})
    with pytest.raises(InputError, match="ask for different preconditioning"):
        score.compute_batch(configs, target, precondition=False, fim_preconditioning_kwargs={"scale_type": "frobenius"})
    with pytest.raises(InputError, match=r"fim_candidates\[3\].*expected a 4x4 FIM"):
        score.fim_match(target, list(fims[:3]) + [np.eye(3)])
    with pytest.raises(InputError, match=r"fim_candidates\['b'\]: unknown key"):
        score.fim_match(target, {"a": fims[0], "b": {"fim": fims[1], "weight_scale": 2.0}})
    with pytest.raises(InputError, match="fim_candidates: expected at least one"):
        score.fim_match(target, [])


# --------------------------------------------------------------------------- errors and warnings
def test_infeasible_is_a_solver_error_not_an_attribute_error():
    """The Orchestrator raised AttributeError (ConvexOpt reads weights that are None); one real script
    caught it as 'infeasible'. Ours: SolverError, from fim_match and from convexopt.solve."""
    fims = np.array([np.diag([1.0, 0.0]), np.diag([2.0, 0.0])])
    score = FIMMatchingScore()
    with pytest.raises(SolverError, match="infeasible") as info:
        score.fim_match(np.eye(2), fims)
    assert not isinstance(info.value, AttributeError)
    opt = score.setup_problem(np.eye(2), fims)
    with pytest.raises(SolverError, match="infeasible"):
        opt.solve(solver="CLARABEL")


@needs_sdpa
def test_sdpa_fallback_warns_and_logs(caplog):
    """SDPA's false 'infeasible' (issue 16's case): a UserWarning and a log line name both solvers, from
    compute_batch and from fim_match; the weights are CLARABEL's."""
    fims, target = false_infeasible_problem()
    score = FIMMatchingScore()
    with caplog.at_level(logging.WARNING, logger="atomscore"):
        with pytest.warns(UserWarning, match=r"SDPA solver ended with status 'infeasible'.*solved again with CLARABEL"):
            weights = score.compute_batch(configs_with_fims(fims), target, solver_kwargs={"solver": "SDPA"})
    assert any("solved again with CLARABEL" in r.getMessage() for r in caplog.records)
    assert score.metadata_of(weights)["fallback"]["from_solver"] == "SDPA"
    with pytest.warns(UserWarning, match="solved again with CLARABEL"):
        again = score.fim_match(target, fims, solver_kwargs={"solver": "SDPA"})
    assert score.convexopt.result["fallback"]["to_solver"] == "CLARABEL"
    clarabel = score.fim_match(target, fims)
    np.testing.assert_allclose(again, clarabel, rtol=1e-6, atol=1e-9 * max(clarabel))


def test_run_job_takes_fim_preconditioning_kwargs(tmp_path):
    """A job with fim_preconditioning_kwargs gives the in-memory weights and records the mode; a bad one
    fails before any folder is written."""
    from atomscore import LocalWorkflow

    fims, target = problem(seed=2)
    configs = configs_with_fims(fims)
    np.save(tmp_path / "target.npy", target)
    args = {"fim_property": str(tmp_path / "target.npy"), "fim_preconditioning_kwargs": {"scale_type": "max_frobenius"}}
    expected = FIMMatchingScore().compute_batch(configs, **args)
    workflow = LocalWorkflow(tmp_path / "jobs", nprocs=1)
    score = FIMMatchingScore()
    ids = score.run("matching", configs, dict(args, score_quantity="IMPORTANCE"), workflow=workflow)
    workflow.block_until_completed(ids)
    results = score.data_from_calc_ids(ids, workflow=workflow)
    np.testing.assert_allclose([a.info["fim_matching_weight_score"] for a in results], expected, rtol=1e-9)
    assert results[0].info["_metadata"]["fim_matching_weight"]["precondition"] == "max_frobenius"
    with pytest.raises(InputError, match="scale_type"):
        score.run("bad", configs, dict(args, fim_preconditioning_kwargs={"scale_type": "x"}), workflow=workflow)
    assert not (tmp_path / "jobs" / "FIMMatchingScore" / "bad").exists()
