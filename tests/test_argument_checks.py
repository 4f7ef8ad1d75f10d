"""Arguments checked before any job folder is written, with the library's own message.

Before the fix: an unknown ``derivative_kwargs`` key failed every job with a numdifftools
TypeError; ``evaluate_kwargs`` given as numpy arrays were not sliced per batch (every job
failed); unknown or ill-typed ``solver_kwargs`` ended in an AttributeError on
``status=None`` that hid cvxpy's message; a negative ``step`` (accepted by numdifftools)
was refused. References: numdifftools.Jacobian with the same settings, and the in-memory
compute_batch for the jobs' numbers.
"""

import numpy as np
import pytest
from ase.build import bulk

from atomscore.errors import InputError

pytest.importorskip("kimpy")

SW = {"potential_type": "KIM", "potential_args": {"kim_id": "SW_StillingerWeber_1985_Si__MO_405512056662_005"}}
OPT = {"A": [["default"]], "lambda": [["default"]]}


def _configs(n=3):
    out = []
    for i in range(n):
        atoms = bulk("Si", "diamond", 5.43, cubic=True)
        atoms.rattle(0.05, seed=i)
        out.append(atoms)
    return out


def _no_job_folders(root):
    return not root.exists() or not any(p.name == "job.json" for p in root.rglob("*"))


def test_unknown_derivative_key_refused_before_any_folder(tmp_path):
    from atomscore.fim import FIMTrainingSetScore
    from atomscore.jobs.workflow import LocalWorkflow

    root = tmp_path / "jobs"
    args = {"score_quantity": "SENSITIVITY", "potential": SW, "parameters_optimize": OPT,
            "derivative_kwargs": {"stepsize": 0.1}}
    with pytest.raises(InputError, match=r"derivative_kwargs.*numdifftools.*stepsize"):
        FIMTrainingSetScore().run("fim", _configs(), args, workflow=LocalWorkflow(root))
    assert _no_job_folders(root)
    with pytest.raises(InputError, match=r"derivative_kwargs.*num_steps"):
        FIMTrainingSetScore().compute_batch(_configs(1), "SENSITIVITY", potential=SW, parameters_optimize=OPT,
                                            derivative_kwargs={"num_steps": "a"})


def test_negative_step_accepted_as_numdifftools_does():
    import numdifftools as nd
    from atomscore.fim import FIMTrainingSetScore
    from atomscore.potentials.kim import KIMPotential

    atoms = _configs(1)[0]
    score = FIMTrainingSetScore()
    fim = score.compute(atoms, "SENSITIVITY", potential=SW, parameters_optimize={"A": [["default"]]},
                        derivative_kwargs={"step": -0.01, "method": "forward"})
    pot = KIMPotential(SW["potential_args"]["kim_id"])
    a0 = float(pot.get_parameter("A")[0])

    def forces(phi):
        pot.set_parameter("A", [phi[0]])
        return pot.compute(atoms, energy=False, forces=True)["forces"].ravel()

    jac = nd.Jacobian(forces, step=-0.01, method="forward")(np.array([a0]))
    np.testing.assert_allclose(fim, jac.reshape(-1, 1).T @ jac.reshape(-1, 1), rtol=1e-10)
    with pytest.raises(InputError, match="non-zero"):
        score.compute(atoms, "SENSITIVITY", potential=SW, parameters_optimize={"A": [["default"]]},
                      derivative_kwargs={"step": 0.0})


def test_evaluate_kwargs_as_arrays_are_sliced_per_batch(tmp_path):
    from atomscore.fim import FIMTrainingSetScore
    from atomscore.jobs.workflow import LocalWorkflow

    configs = _configs(3)
    evk = {"compute_energy": np.array([True, False, False]), "compute_forces": np.array([False, True, False]),
           "compute_stress": np.array([False, False, True])}
    score = FIMTrainingSetScore()
    expected = score.compute_batch(configs, "SENSITIVITY", potential=SW, parameters_optimize=OPT, evaluate_kwargs=evk)
    workflow = LocalWorkflow(tmp_path / "jobs", nprocs=2)
    ids = score.run("fim", configs, {"score_quantity": "SENSITIVITY", "potential": SW, "parameters_optimize": OPT,
                                     "evaluate_kwargs": evk}, workflow=workflow, batch_size=1)
    workflow.block_until_completed(ids, timeout=300)
    out = score.data_from_calc_ids(ids, workflow)
    for atoms, fim in zip(out, expected):
        np.testing.assert_allclose(np.asarray(atoms.info["fim_training_set_score"]), fim, rtol=1e-12)
    assert evk["compute_energy"].dtype == bool  # the caller's arrays untouched


@pytest.mark.parametrize("solver_kwargs, match", [
    ({"solver": "CLARABEL", "bogus": 1}, r"CLARABEL.*unrecognized solver setting 'bogus'"),
    ({"solver": "CLARABEL", "max_iter": "abc"}, r"CLARABEL.*Incorrect type for setting 'max_iter'"),
    ({"solver": "CLARABEL", "verbose": "yes"}, r"verbose.*True or False"),
])
def test_bad_solver_kwargs_surface_the_solver_message(tmp_path, solver_kwargs, match):
    pytest.importorskip("cvxpy")
    from atomscore.fim import FIMMatchingScore
    from atomscore.jobs.workflow import LocalWorkflow

    configs = _configs(2)
    for atoms in configs:
        atoms.info["fim_training_set_score"] = np.eye(2)
    with pytest.raises(InputError, match=match):
        FIMMatchingScore().compute_batch(configs, fim_property=np.eye(2), solver_kwargs=solver_kwargs)
    root = tmp_path / "jobs"
    with pytest.raises(InputError, match=match):
        FIMMatchingScore().run("m", configs, {"fim_property": np.eye(2), "solver_kwargs": solver_kwargs},
                               workflow=LocalWorkflow(root))
    assert _no_job_folders(root)
