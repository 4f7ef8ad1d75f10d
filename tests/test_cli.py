"""The ``atomscore`` command: run specs, job tables, errors (issue 2).

Reference: the same score's in-memory ``compute_batch`` on the same configurations.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from atomscore.io import read_extxyz, write_extxyz

TESTS = Path(__file__).parent


def atomscore(*args, cwd, env_path=True):
    env = dict(os.environ)
    if env_path:
        env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "atomscore.cli", *args], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture
def spec_dir(tmp_path):
    configs = [bulk("Si", "diamond", 5.3 + 0.05 * i, cubic=True) for i in range(5)]
    for i, atoms in enumerate(configs):
        atoms.rattle(0.03, seed=i)
    write_extxyz(tmp_path / "configs.xyz", configs)
    np.save(tmp_path / "weights.npy", np.array([1.0, 0.5, 0.25]))
    spec = {"batch_size": 2, "score": {"path_type": "cli_run", "score_type": "toy_scores:WeightedDistanceScore",
                                       "query_configs_path": "configs.xyz", "score_args": {"weights": "weights.npy"},
                                       "compute_args": {"score_quantity": "UNCERTAINTY", "centre": [1.0, 2.0, 3.0]}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return tmp_path, configs


def test_run_a_users_own_score_from_a_spec(spec_dir):
    from toy_scores import WeightedDistanceScore

    folder, configs = spec_dir
    proc = atomscore("run", "spec.json", "--root", "jobs", "-o", "out.xyz", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert "3 job(s) done; 5 result(s)" in proc.stdout
    expected = WeightedDistanceScore(np.array([1.0, 0.5, 0.25])).compute_batch(configs, 2, centre=[1.0, 2.0, 3.0])
    out = read_extxyz(folder / "out.xyz")
    for atoms, ref in zip(out, expected):
        np.testing.assert_array_equal(atoms.arrays["toy_distance_score"], ref)
    [run] = (folder / "jobs" / "WeightedDistanceScore" / "cli_run").iterdir()  # one run folder per run
    assert len(list(run.glob("0000*"))) == 3

    table = atomscore("jobs", "status", "jobs", cwd=folder)
    assert table.returncode == 0
    assert f"run WeightedDistanceScore/cli_run/{run.name}: 3 done" in table.stdout and "00002" in table.stdout


def test_jobs_status_exits_1_when_a_job_failed(spec_dir):
    folder, _ = spec_dir
    spec = json.loads((folder / "spec.json").read_text())
    spec["score"]["compute_args"]["action"] = "raise"
    (folder / "bad.json").write_text(json.dumps(spec))
    proc = atomscore("run", "bad.json", "--root", "jobs", cwd=folder)
    assert proc.returncode == 1
    assert "toy failure requested" in proc.stderr and "job(s) failed" in proc.stderr
    table = atomscore("jobs", "status", "jobs", "--state", "failed", cwd=folder)
    assert table.returncode == 1 and "RuntimeError: toy failure requested" in table.stdout


@pytest.mark.parametrize("change, message", [
    (lambda s: s["score"].update(score_type="NoSuchScore"), "unknown score_type 'NoSuchScore'; expected one of: LTAU"),
    (lambda s: s["score"].update(score_type="os:NoSuchScore"), "cannot import it"),
    (lambda s: s["score"].update(score_type="json:JSONDecoder"), "not a score class"),
    (lambda s: s["score"].update(query_configs_path="missing.xyz"), "configurations file not found"),
    (lambda s: s.update(batch_size=0), "batch_size: expected an integer >= 1"),
    (lambda s: s["score"]["compute_args"].update(score_quantity="VARIANCE"), "unknown quantity 'VARIANCE'"),
    (lambda s: s["score"]["score_args"].update(bogus=1), "score_args of WeightedDistanceScore"),
])
def test_bad_specs_give_one_clear_error_and_write_nothing(spec_dir, change, message):
    folder, _ = spec_dir
    spec = json.loads((folder / "spec.json").read_text())
    change(spec)
    (folder / "bad.json").write_text(json.dumps(spec))
    proc = atomscore("run", "bad.json", "--root", "jobs", cwd=folder)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert not (folder / "jobs").exists()


def test_every_command_has_help(tmp_path):
    for args in (["--help"], ["run", "--help"], ["jobs", "--help"], ["jobs", "status", "--help"],
                 ["descriptors", "--help"], ["demo", "--help"]):
        proc = atomscore(*args, cwd=tmp_path)
        assert proc.returncode == 0 and "usage: atomscore" in proc.stdout, args


def test_a_relative_calc_id_is_found_from_here_or_from_the_root(spec_dir, monkeypatch):
    from atomscore import LocalWorkflow
    from atomscore.jobs.folder import job_folder

    folder, configs = spec_dir
    monkeypatch.chdir(folder)
    wf = LocalWorkflow("jobs")
    from toy_scores import WeightedDistanceScore

    [calc_id] = WeightedDistanceScore([1.0, 1.0, 1.0]).run("rel", configs[:1], {"score_quantity": 2}, workflow=wf)
    wf.block_until_completed([calc_id])
    relative_to_root = os.path.relpath(calc_id, wf.root)
    relative_to_here = os.path.relpath(calc_id, folder)
    assert job_folder(relative_to_root, wf) == Path(calc_id)
    assert job_folder(relative_to_here, wf).resolve() == Path(calc_id)


def test_an_output_file_of_the_wrong_kind_is_refused_before_running(spec_dir):
    folder, _ = spec_dir
    proc = atomscore("run", "spec.json", "--root", "jobs", "-o", "out.json", cwd=folder)
    assert proc.returncode == 2 and "results are written as .xyz, got 'out.json'" in proc.stderr
    assert not (folder / "jobs").exists()
