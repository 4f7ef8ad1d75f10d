"""The Score contract, job folders, the runner and LocalWorkflow (issue 2).

The reference for every result is the same score's in-memory ``compute_batch``: a job
must give exactly the same numbers, whatever the batching.
"""

import copy
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from atomscore import (InputError, JobFailedError, LocalWorkflow, ScoreQuantity, make_workflow)
from atomscore.io import read_extxyz, write_extxyz
from atomscore.jobs.folder import read_status
from atomscore.jobs.workflow import JobState

sys.path.insert(0, str(Path(__file__).parent))
from toy_scores import CellVolumeScore, MeanDescriptorScore, WeightedDistanceScore  # noqa: E402


def make_configs(n=7, seed=0):
    rng = np.random.default_rng(seed)
    configs = []
    for i in range(n):
        atoms = bulk("Si", "diamond", 5.2 + 0.05 * i, cubic=True)
        atoms.rattle(0.05, seed=seed + i)
        atoms.arrays["descriptors"] = rng.random((len(atoms), 4))
        atoms.info["tag"] = f"config-{i}"
        configs.append(atoms)
    return configs


def snapshot(configs):
    return [(a.positions.copy(), a.cell.array.copy(), copy.deepcopy(a.info),
             {k: v.copy() for k, v in a.arrays.items()}) for a in configs]


def assert_same_configs(before, configs):
    assert len(before) == len(configs)
    for (pos, cell, info, arrays), atoms in zip(before, configs):
        np.testing.assert_array_equal(pos, atoms.positions)
        np.testing.assert_array_equal(cell, atoms.cell.array)
        assert info == atoms.info
        assert set(arrays) == set(atoms.arrays)
        for k in arrays:
            np.testing.assert_array_equal(arrays[k], atoms.arrays[k])


@pytest.fixture
def workflow(tmp_path):
    return LocalWorkflow(tmp_path / "jobs", nprocs=2)


# --------------------------------------------------------------------------- quantity
@pytest.mark.parametrize("value", [ScoreQuantity.UNCERTAINTY, "UNCERTAINTY", "uncertainty", "Uncertainty", 2])
def test_quantity_accepts_member_name_and_value(value):
    assert ScoreQuantity.parse(value) is ScoreQuantity.UNCERTAINTY


@pytest.mark.parametrize("value", ["UNCERTAIN", 99, None, 2.0, True])
def test_quantity_refuses_unknown_and_lists_accepted(value):
    with pytest.raises(ValueError, match="expected one of: IMPORTANCE"):
        ScoreQuantity.parse(value)


def test_unsupported_quantity_lists_what_the_score_accepts():
    score = WeightedDistanceScore([1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match=r"unsupported quantity.*UNCERTAINTY \(2\), IMPORTANCE \(1\)"):
        score.compute(make_configs(1)[0], "DIVERSITY")


# --------------------------------------------------------------------------- run == compute_batch
@pytest.mark.parametrize("batch_size", [1, 3])
def test_run_gives_exactly_compute_batch(tmp_path, workflow, batch_size):
    configs = make_configs(7)
    before = snapshot(configs)
    weights = np.array([1.0, 2.0, 3.0]) / 7
    centre = np.array([0.1, np.pi, 1 / 3])
    compute_args = {"score_quantity": "uncertainty", "centre": centre, "scale": np.float64(1.7)}
    args_before = copy.deepcopy(compute_args)
    score = WeightedDistanceScore(weights, offset=0.25)
    ids = score.run("toy", configs, compute_args, workflow=workflow, batch_size=batch_size)
    assert len(ids) == -(-7 // batch_size)
    states = workflow.block_until_completed(ids)
    assert set(states.values()) == {JobState.DONE}
    gathered = score.data_from_calc_ids(ids)
    expected = score.compute_batch(configs, "UNCERTAINTY", centre=centre, scale=1.7)
    assert len(gathered) == 7
    for atoms, ref, orig in zip(gathered, expected, configs):
        np.testing.assert_array_equal(atoms.arrays["toy_distance_score"], ref)
        np.testing.assert_array_equal(atoms.positions, orig.positions)
        assert atoms.info["tag"] == orig.info["tag"]
        assert atoms.info["_metadata"]["toy_distance"]["score_quantity"] == "UNCERTAINTY"
    # inputs untouched, deep-equal before and after
    assert_same_configs(before, configs)
    assert compute_args.keys() == args_before.keys()
    np.testing.assert_array_equal(compute_args["centre"], args_before["centre"])
    assert compute_args["score_quantity"] == "uncertainty"


def test_npy_paths_work_as_init_and_compute_args(tmp_path, workflow):
    configs = make_configs(4)
    weights, centre = np.array([0.5, -1.0, 2.0]), np.array([1.0, 2.0, 3.0])
    np.save(tmp_path / "w.npy", weights)
    np.save(tmp_path / "c.npy", centre)
    np.savetxt(tmp_path / "c.txt", centre)
    in_memory = WeightedDistanceScore(weights).compute_batch(configs, "IMPORTANCE", centre=centre)
    from_files = WeightedDistanceScore(str(tmp_path / "w.npy"))
    for centre_arg in (str(tmp_path / "c.npy"), str(tmp_path / "c.txt")):
        ids = from_files.run("files", configs, {"score_quantity": "IMPORTANCE", "centre": centre_arg},
                             workflow=workflow, batch_size=2)
        workflow.block_until_completed(ids)
        for atoms, ref in zip(from_files.data_from_calc_ids(ids), in_memory):
            np.testing.assert_array_equal(atoms.arrays["toy_distance_score"], ref)


def test_job_folder_is_self_contained_and_readable(tmp_path, workflow):
    configs = make_configs(2)
    score = WeightedDistanceScore(np.ones(3))
    [calc_id] = score.run("folder", configs, {"score_quantity": 2, "centre": np.zeros(3)},
                          workflow=workflow, batch_size=5)
    folder = Path(calc_id)
    assert folder.parent.parent == workflow.root / "WeightedDistanceScore" / "folder"  # <run>/<NNNNN>
    assert folder.name == "00000" and json.loads((folder.parent / "run.json").read_text())["jobs"] == ["00000"]
    job = json.loads((folder / "job.json").read_text())
    assert job["score"]["target"] == "toy_scores:WeightedDistanceScore"
    assert job["score_quantity"] == "UNCERTAINTY"
    assert job["format_version"] == 1
    assert (folder / job["init_args"]["weights"]["__ndarray__"]).is_file()
    assert not list(folder.glob("*.py")), "no Python source is generated"
    workflow.block_until_completed([calc_id])
    # the folder alone re-runs the job, in a fresh interpreter, from another directory
    (folder / "score_results.xyz").unlink()
    proc = subprocess.run([sys.executable, "-m", "atomscore.job", str(folder)], cwd="/", capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()
    status = read_status(folder)
    assert status["state"] == "done" and status["exit_code"] == 0 and status["start_time"] and status["end_time"]
    assert len(read_extxyz(folder / "score_results.xyz")) == 2


def test_npy_arguments_are_loaded_without_pickle(tmp_path):
    """A pickled object array planted in args/ is refused, not unpickled."""
    configs = make_configs(1)
    score = WeightedDistanceScore(np.ones(3))
    [calc_id] = score.run("pickle", configs, {"score_quantity": 2, "centre": np.zeros(3)},
                          workflow=_NoStart(tmp_path / "jobs"))
    job = json.loads((Path(calc_id) / "job.json").read_text())
    np.save(Path(calc_id) / job["compute_args"]["centre"]["__ndarray__"], np.array([{"x": 1}], dtype=object),
            allow_pickle=True)
    proc = subprocess.run([sys.executable, "-m", "atomscore.job", calc_id], capture_output=True)
    assert proc.returncode != 0
    # the runner refuses the planted file by its digest (issue 21) before reading it ...
    assert "changed since run() wrote it" in read_status(calc_id)["error"]
    # ... and reading it would still refuse the pickle
    from atomscore.jobs.folder import decode_args

    with pytest.raises(ValueError, match="allow_pickle=False"):
        decode_args(job["compute_args"], calc_id)


class _NoStart(LocalWorkflow):
    """A workflow that records submissions without starting them (for folder inspection)."""

    def submit(self, folder, job_details=None):
        return str(Path(folder).resolve())


def test_configuration_and_dataset_scores(tmp_path, workflow):
    configs = make_configs(5)
    vol = CellVolumeScore()
    ids = vol.run("v", configs, {"score_quantity": "SENSITIVITY", "as_matrix": True}, workflow=workflow, batch_size=2)
    workflow.block_until_completed(ids)
    for atoms, ref in zip(vol.data_from_calc_ids(ids), configs):
        np.testing.assert_array_equal(atoms.info["toy_volume_score"], ref.get_volume() * np.eye(2))
        assert atoms.info["toy_volume_as_matrix"] is True or atoms.info["toy_volume_as_matrix"] == True  # noqa: E712
    mean = MeanDescriptorScore()
    ids = mean.run("m", configs, {"score_quantity": "diversity"}, workflow=workflow, batch_size=2)
    assert len(ids) == 1, "a dataset score runs as one job"
    workflow.block_until_completed(ids)
    [result] = mean.data_from_calc_ids(ids)
    assert result["toy_mean_score"] == mean.compute(configs, "DIVERSITY")
    assert result["_metadata"]["descriptors_key"] == "descriptors"


def test_save_results_writes_metadata_on_every_configuration(tmp_path):
    configs = make_configs(3)
    score = WeightedDistanceScore(np.ones(3))
    results = score.compute_batch(configs, "UNCERTAINTY", centre=np.zeros(3))
    path = score.save_results(results, save_dir=tmp_path, list_of_configs=configs)
    assert path.name == "score_results.xyz"
    back = read_extxyz(path)
    for atoms, ref in zip(back, results):
        np.testing.assert_array_equal(atoms.arrays["toy_distance_score"], ref)
        assert atoms.info["_metadata"]["toy_distance"]["score_quantity"] == "UNCERTAINTY"
        assert atoms.info["toy_distance_score_quantity"] == "UNCERTAINTY"
    assert "toy_distance_score" not in configs[0].arrays, "save_results must not modify the caller's Atoms"


def test_extxyz_round_trip_is_exact(tmp_path):
    configs = make_configs(2)
    configs[0].arrays["x"] = np.array([np.pi * 10.0 ** k for k in range(-10, len(configs[0]) - 10)])
    write_extxyz(tmp_path / "a.xyz", configs)
    back = read_extxyz(tmp_path / "a.xyz")
    np.testing.assert_array_equal(back[0].arrays["x"], configs[0].arrays["x"])
    np.testing.assert_array_equal(back[1].positions, configs[1].positions)


# --------------------------------------------------------------------------- failures
def test_a_job_that_raises_is_failed_with_its_message(workflow):
    score = WeightedDistanceScore(np.ones(3))
    ids = score.run("raise", make_configs(3), {"score_quantity": 2, "action": "raise"}, workflow=workflow)
    with pytest.raises(JobFailedError) as info:
        workflow.block_until_completed(ids)
    message = str(info.value)
    assert "3 job(s) failed" in message and "toy failure requested" in message
    assert all(f["exit_code"] == 1 and f["folder"] in message for f in info.value.failures)
    assert "RuntimeError: toy failure requested" in info.value.failures[0]["stderr_tail"]
    with pytest.raises(JobFailedError):
        score.data_from_calc_ids(ids)


def test_a_job_killed_by_sigkill_is_failed_and_the_wait_returns(workflow):
    score = WeightedDistanceScore(np.ones(3))
    ids = score.run("kill", make_configs(1), {"score_quantity": 2, "action": "sigkill"}, workflow=workflow)
    states = workflow.block_until_completed(ids, raise_on_failure=False, timeout=60)
    assert list(states.values()) == [JobState.FAILED]
    status = read_status(ids[0])
    assert status["exit_code"] == -9 and "SIGKILL" in status["reason"]


def test_walltime_kills_a_job_and_marks_it_failed(workflow):
    score = WeightedDistanceScore(np.ones(3))
    ids = score.run("slow", make_configs(1), {"score_quantity": 2, "action": "sleep"}, workflow=workflow,
                    job_details={"walltime": 3})
    with pytest.raises(JobFailedError, match="timed out after walltime 3 s"):
        workflow.block_until_completed(ids, timeout=60)


def test_two_runs_in_one_root_at_once_do_not_touch_each_other(tmp_path):
    root = tmp_path / "shared_root"
    results, errors = {}, []

    def one_run(name, centre):
        try:
            wf = LocalWorkflow(root, nprocs=2)
            score = WeightedDistanceScore(np.ones(3))
            ids = score.run("same", make_configs(4), {"score_quantity": 2, "centre": centre}, workflow=wf)
            wf.block_until_completed(ids)
            results[name] = (ids, score.data_from_calc_ids(ids, cleanup=False))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=one_run, args=(n, np.full(3, c))) for n, c in (("a", 0.0), ("b", 5.0))]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors, errors
    ids_a, res_a = results["a"]
    ids_b, res_b = results["b"]
    assert not set(ids_a) & set(ids_b), "each run gets its own folders"
    assert len(set(ids_a) | set(ids_b)) == 8
    configs = make_configs(4)
    score = WeightedDistanceScore(np.ones(3))
    for res, c in ((res_a, 0.0), (res_b, 5.0)):
        for atoms, ref in zip(res, score.compute_batch(configs, 2, centre=np.full(3, c))):
            np.testing.assert_array_equal(atoms.arrays["toy_distance_score"], ref)


def test_a_fresh_workflow_on_the_same_root_reports_finished_jobs(tmp_path, workflow):
    score = WeightedDistanceScore(np.ones(3))
    ok = score.run("ok", make_configs(2), {"score_quantity": 2}, workflow=workflow)
    bad = score.run("bad", make_configs(1), {"score_quantity": 2, "action": "raise"}, workflow=workflow)
    workflow.block_until_completed(ok + bad, raise_on_failure=False)
    fresh = LocalWorkflow(tmp_path / "jobs")
    assert [fresh.state(i) for i in ok] == [JobState.DONE, JobState.DONE]
    assert fresh.state(bad[0]) is JobState.FAILED
    assert score.data_from_calc_ids(ok, workflow=fresh)[0].arrays["toy_distance_score"].shape == (8,)


def test_a_fresh_workflow_takes_over_jobs_left_pending(tmp_path):
    score = WeightedDistanceScore(np.ones(3))
    ids = score.run("orphan", make_configs(2), {"score_quantity": 2}, workflow=_NoStart(tmp_path / "jobs"))
    assert all(read_status(i)["state"] == "pending" for i in ids)
    fresh = LocalWorkflow(tmp_path / "jobs", nprocs=1)
    assert set(fresh.block_until_completed(ids, timeout=60).values()) == {JobState.DONE}


def test_cleanup_removes_only_this_runs_argument_files(tmp_path, workflow):
    score = WeightedDistanceScore(np.ones(3))
    other = WeightedDistanceScore(np.ones(3))
    ids = score.run("c", make_configs(2), {"score_quantity": 2, "centre": np.ones(3)}, workflow=workflow)
    other_ids = other.run("c", make_configs(1), {"score_quantity": 2, "centre": np.ones(3)}, workflow=workflow)
    workflow.block_until_completed(ids + other_ids)
    score.cleanup()
    for i in ids:
        assert not (Path(i) / "args").exists()
        assert (Path(i) / "score_results.xyz").is_file() and (Path(i) / "stderr.log").is_file()
    assert (Path(other_ids[0]) / "args").is_dir(), "another run's files stay"


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("configs, compute_args, batch_size, match", [
    ([], {"score_quantity": 2}, 1, "empty list"),
    ("x", {"score_quantity": 2}, 1, "expected a list of ase.Atoms"),
    (None, {"score_quantity": 2}, 0, "batch_size: expected an integer >= 1"),
    (None, {"score_quantity": 2}, 1.5, "batch_size: expected an integer"),
    (None, {"score_quantity": "VARIANCE"}, 1, "unknown quantity 'VARIANCE'"),
    (None, {"score_quantity": "DIVERSITY"}, 1, "unsupported quantity"),
    (None, {"score_quantity": 2, "centre": object()}, 1, r"compute_args.*cannot hold a object"),
    (None, {"score_quantity": 2, "centre": lambda: 1}, 1, "cannot hold a function"),
    (None, {"score_quantity": 2, "centre": float("nan")}, 1, "JSON cannot hold nan"),
    (None, {"score_quantity": 2}, True, "batch_size"),
])
def test_bad_run_input_raises_before_any_folder_is_written(tmp_path, configs, compute_args, batch_size, match):
    workflow = LocalWorkflow(tmp_path / "jobs")
    score = WeightedDistanceScore(np.ones(3))
    with pytest.raises(InputError, match=match):
        score.run("bad", make_configs(2) if configs is None else configs, compute_args, workflow=workflow,
                  batch_size=batch_size)
    assert not (tmp_path / "jobs").exists()


def test_a_score_defined_inside_a_function_is_refused_before_writing(tmp_path):
    class Local(WeightedDistanceScore):
        pass

    with pytest.raises(InputError, match="defined inside a function"):
        Local(np.ones(3)).run("x", make_configs(1), {"score_quantity": 2}, workflow=LocalWorkflow(tmp_path / "j"))
    assert not (tmp_path / "j").exists()


@pytest.mark.parametrize("spec, match", [
    ({"workflow_type": "CONDOR"}, "unknown 'CONDOR'"),
    ({"workflow_args": {}}, "workflow_type"),
    ({"workflow_type": "LOCAL", "workflow_args": {"bogus": 1}}, "workflow_args for LOCAL"),
    ({"workflow_type": "LOCAL", "workflow_args": {"nprocs": 0}}, "nprocs"),
])
def test_bad_workflow_specs(spec, match):
    with pytest.raises(InputError, match=match):
        make_workflow(spec)


def test_workflow_from_the_seed_dict_form(tmp_path):
    wf = make_workflow({"workflow_type": "local", "workflow_args": {"root_directory": str(tmp_path / "r"), "nprocs": 3}})
    assert isinstance(wf, LocalWorkflow) and wf.nprocs == 3 and wf.root == tmp_path / "r"


def test_init_args_recreate_the_score():
    score = WeightedDistanceScore(np.array([1.0, 2.0, 3.0]), offset=2.0)
    again = type(score)(**score._init_args)
    atoms = make_configs(1)[0]
    np.testing.assert_array_equal(score.compute(atoms, 2), again.compute(atoms, 2))


def test_import_atomscore_does_not_import_optional_parts():
    code = "import sys, atomscore; print(sorted(m for m in ('kimpy','faiss','cvxpy','psij','quests') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_job_runner_reports_a_missing_folder(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "atomscore.job", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 2 and "no job.json" in proc.stderr
    assert os.listdir(tmp_path) == []


def test_per_configuration_arguments_are_sliced_per_batch(workflow):
    from toy_scores import PerConfigFactorScore

    configs = make_configs(7)
    factors = [1.5, 2.0, 3.0, 5.0, 7.0, 11.0, 13.0]
    score = PerConfigFactorScore()
    ids = score.run("slice", configs, {"score_quantity": "IMPORTANCE", "factors": factors}, workflow=workflow,
                    batch_size=3)
    workflow.block_until_completed(ids)
    got = [a.info["toy_factor_score"] for a in score.data_from_calc_ids(ids)]
    assert got == score.compute_batch(configs, "IMPORTANCE", factors=factors)
    assert factors == [1.5, 2.0, 3.0, 5.0, 7.0, 11.0, 13.0]


@pytest.mark.parametrize("details, match", [
    ({"walltime": -1}, "walltime"),
    ({"queue": "debug"}, r"unknown key\(s\) \['queue'\]"),
    ("fast", "expected a dict"),
    ({"env": "X=1"}, "environment variables"),
])
def test_bad_job_details_raise_before_any_folder_is_written(tmp_path, details, match):
    workflow = LocalWorkflow(tmp_path / "jobs")
    with pytest.raises(InputError, match=match):
        WeightedDistanceScore(np.ones(3)).run("bad", make_configs(1), {"score_quantity": 2}, workflow=workflow,
                                               job_details=details)
    assert not (tmp_path / "jobs").exists()
