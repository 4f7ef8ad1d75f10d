"""Issue 21, items 1 and 2: results of different runs never mix; a job folder is data, never code.

Each test is a fault a hostile or careless user can cause, and fails on main at b951a2a.
References: ``compute()`` of the same score in this process (whose values equal the quests
package, tests/test_quests_scores.py) for the numbers; for "nothing ran", a marker file that
the planted code or executable would create; for "nothing was killed", ``os.kill(pid, 0)``.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from atomscore.errors import InputError
from atomscore.jobs import trust
from atomscore.jobs.folder import FILES, folder_inputs, read_status, update_status
from atomscore.jobs.workflow import LocalWorkflow, job_command
from atomscore.quests import QUESTSDeltaEntropyScore, QUESTSEfficiencyScore

TESTS = Path(__file__).resolve().parent
H = 0.3
Q = {"score_quantity": "SENSITIVITY"}


def _env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS.parent), str(TESTS), env.get("PYTHONPATH", "")])
    env.update(extra)
    return env


def _cli(*args, cwd, **env):
    return subprocess.run([sys.executable, "-m", "atomscore.cli", *args], cwd=cwd, env=_env(**env),
                          capture_output=True, text=True, timeout=300)


def _runner(folder, **env):
    return subprocess.run([sys.executable, "-m", "atomscore.job", str(folder)], env=_env(**env),
                          capture_output=True, text=True, timeout=300)


class _NoStart(LocalWorkflow):
    """Writes the folders, starts nothing (the test runs the runner itself)."""

    def submit(self, folder, job_details=None):
        return str(Path(folder).resolve())


def _dataset(n=8, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = Atoms("Si6", positions=rng.random((6, 3)) * 5, cell=[5, 5, 5], pbc=True)
        atoms.arrays["descriptors"] = rng.normal(size=(6, 4)) * (0.2 if seed == 0 else 2.0) + (i % 2)
        out.append(atoms)
    return out


def _wait(wf, ids):
    assert set(wf.block_until_completed(ids, timeout=300).values()) == {"done"}


# --------------------------------------------------------------------------- 1. runs never mix
def test_row_blocks_of_two_runs_never_make_one_efficiency(tmp_path):
    """Two datasets of the same size and settings, 2 row blocks each: any mix is refused,
    through data_from_calc_ids (naming the folders), the reduction itself, a results file
    copied from the other run, and `jobs collect` of a run folder holding another run's block
    (main: a number between the two, exit 0)."""
    a, b = _dataset(seed=0), _dataset(seed=1)
    wf = LocalWorkflow(tmp_path / "jobs", nprocs=2)
    args = {"score_quantity": "EFFICIENCY", "bandwidth": H}
    ids_a = QUESTSEfficiencyScore().run("eff", a, args, workflow=wf, batch_size=4)
    ids_b = QUESTSEfficiencyScore().run("eff", b, args, workflow=wf, batch_size=4)
    _wait(wf, ids_a + ids_b)
    score = QUESTSEfficiencyScore()
    (whole,) = score.data_from_calc_ids(ids_a)
    assert whole[score.result_key] == pytest.approx(score.compute(a, "EFFICIENCY", bandwidth=H), rel=1e-12)
    with pytest.raises(InputError, match="do not belong to one run") as error:
        score.data_from_calc_ids([ids_a[0], ids_b[1]])
    assert ids_a[0] in str(error.value) and ids_b[1] in str(error.value)
    # the reduction alone, given the two blocks' results, refuses them too
    results = [json.loads((Path(i) / FILES.results_json).read_text()) for i in (ids_a[0], ids_b[1])]
    with pytest.raises(InputError, match="different datasets"):
        QUESTSEfficiencyScore.reduce_job_results(results)
    # another run's results file copied over a block's own: not the file its runner wrote (sha256)
    shutil.copyfile(Path(ids_b[1]) / FILES.results_json, Path(ids_a[1]) / FILES.results_json)
    with pytest.raises(InputError, match="not the one its job wrote"):
        QUESTSEfficiencyScore.data_from_calc_ids(ids_a)
    # a block of run b copied into run a's folder: `jobs collect` refuses, naming it
    shutil.rmtree(ids_a[1])
    shutil.copytree(ids_b[1], ids_a[1])
    out = _cli("jobs", "collect", str(Path(ids_a[0]).parent), "-o", str(tmp_path / "eff.json"), cwd=tmp_path)
    assert out.returncode == 2 and "do not belong to one run" in out.stderr and ids_a[1] in out.stderr, out.stderr
    assert not (tmp_path / "eff.json").exists()


def _reference(seed, n=12):
    return np.random.default_rng(seed).normal(size=(n, 4)) * 0.5


def test_column_blocks_of_another_reference_or_bandwidth_never_combine(tmp_path):
    """dH in 2 reference column blocks: blocks of another reference (same shape) or of
    another bandwidth are refused, by data_from_calc_ids and by the reduction alone."""
    from atomscore.io import read_extxyz

    configs = _dataset(2)
    wf = LocalWorkflow(tmp_path / "jobs", nprocs=2)
    score = QUESTSDeltaEntropyScore()

    def run(ref, h):
        return score.run("dh", configs, {"score_quantity": "DELTA_ENTROPY", "reference_set": ref, "bandwidth": h,
                                         "reference_block_size": 6}, workflow=wf, batch_size=2)

    r1, r2 = _reference(1), _reference(2)
    ids_1, ids_2, ids_h = run(r1, H), run(r2, H), run(r1, 0.5)
    assert len(ids_1) == 2
    _wait(wf, ids_1 + ids_2 + ids_h)
    got = score.data_from_calc_ids(ids_1)
    expected = score.compute_batch(configs, "DELTA_ENTROPY", reference_set=r1, bandwidth=H)
    for atoms, ref in zip(got, expected):
        np.testing.assert_allclose(atoms.arrays[score.result_key], ref, rtol=1e-12, atol=1e-12)
    for other in (ids_2, ids_h):
        with pytest.raises(InputError, match="do not belong to one run"):
            score.data_from_calc_ids([ids_1[0], other[1]])
    read = [read_extxyz(Path(i) / FILES.results_xyz) for i in (ids_1[0], ids_2[1], ids_h[1])]
    with pytest.raises(InputError, match="another reference set"):
        QUESTSDeltaEntropyScore.reduce_job_results(read[0] + read[1])
    with pytest.raises(InputError, match="other settings"):
        QUESTSDeltaEntropyScore.reduce_job_results(read[0] + read[2])


def test_a_reference_file_is_copied_into_the_run(tmp_path):
    """reference_set given as a .npy path; the file is rewritten between the run's two jobs:
    both compute against what the run started with (main: the second read the new file)."""
    configs = _dataset(2)
    ref_file = tmp_path / "ref.npy"
    original = _reference(1)
    np.save(ref_file, original)
    score = QUESTSDeltaEntropyScore()
    ids = score.run("dh", configs, {"score_quantity": "DELTA_ENTROPY", "reference_set": str(ref_file),
                                    "bandwidth": H}, workflow=_NoStart(tmp_path / "jobs"), batch_size=1)
    assert len(ids) == 2
    assert str(ref_file) not in (Path(ids[1]) / FILES.job).read_text()  # the job names its own copy
    assert _runner(ids[0]).returncode == 0
    np.save(ref_file, _reference(2))  # rewritten in place, same shape
    assert _runner(ids[1]).returncode == 0
    got = score.data_from_calc_ids(ids)
    expected = score.compute_batch(configs, "DELTA_ENTROPY", reference_set=original, bandwidth=H)
    for atoms, ref in zip(got, expected):
        np.testing.assert_allclose(atoms.arrays[score.result_key], ref, rtol=1e-12)


def test_an_input_changed_after_run_is_refused(tmp_path):
    """A job's args/ file rewritten after run(): the runner refuses it (exit 2, named)."""
    (calc_id,) = QUESTSDeltaEntropyScore().run(
        "dh", _dataset(2), {"score_quantity": "DELTA_ENTROPY", "reference_set": _reference(1), "bandwidth": H},
        workflow=_NoStart(tmp_path / "jobs"), batch_size=2)
    (array,) = (Path(calc_id) / FILES.args).glob("*reference_set*.npy")
    np.save(array, _reference(2))
    proc = _runner(calc_id)
    assert proc.returncode == 2
    assert f"input args/{array.name} changed since run() wrote it" in read_status(calc_id)["error"]
    assert not (Path(calc_id) / FILES.results_xyz).exists()


# --------------------------------------------------------------------------- 2. data, never code
EVIL = "from pathlib import Path\nPath({marker!r}).write_text('ran')\n"


def _hand_made(folder, job, state=None):
    """A job folder written by hand (not by run()): with the digests run() records, unsealed."""
    folder.mkdir(parents=True)
    (folder / FILES.input_xyz).write_text("")
    job = {"format_version": 1, "cwd": str(folder), **job}
    job.update(run_id="hand-made", run_digest="x", job_id="j", inputs=folder_inputs(folder))
    (folder / FILES.job).write_text(json.dumps(job))
    if state:
        update_status(folder, state=state)
    return folder


@pytest.mark.parametrize("how", ["runner", "rerun", "collect"])
def test_a_module_named_by_job_json_is_never_imported(tmp_path, how):
    """job.json names a module of the attacker's (import_path, module_file): its top-level code
    never runs, whichever command reads the folder (main: imported, then refused)."""
    marker = tmp_path / "MARKER"
    (tmp_path / "evil_mod.py").write_text(EVIL.format(marker=str(marker)) + "class Thing:\n    pass\n")
    ref = {"target": "evil_mod:Thing", "import_path": str(tmp_path), "module_file": str(tmp_path / "evil_mod.py")}
    job = {"kind": "score", "score": ref, "init_args": {}, "compute_args": {}, "score_quantity": "SENSITIVITY",
           "score_kind": "atom"}
    folder = tmp_path / "jobs" / "Thing" / "x" / "run" / "00000"
    _hand_made(folder, job, state={"runner": None, "rerun": "failed", "collect": "done"}[how])
    if how == "runner":
        proc = _runner(folder)
        assert proc.returncode == 2 and "not sealed" in read_status(folder)["error"]
    elif how == "rerun":
        proc = _cli("jobs", "rerun", str(tmp_path / "jobs"), "--nprocs", "1", cwd=tmp_path)
        assert proc.returncode == 1 and "not sealed" in read_status(folder)["error"], proc.stderr
    else:
        (folder / FILES.results_xyz).write_text("")
        proc = _cli("jobs", "collect", str(folder.parent), "-o", str(tmp_path / "out.xyz"), cwd=tmp_path)
        assert proc.returncode == 2, proc.stderr
    assert not marker.exists(), "the folder's module was imported"


def test_a_command_module_of_atomscore_is_not_a_job(tmp_path):
    """job.json naming atomscore.cli.__main__ (which runs the command line on import) is refused
    before import (main: imported, running `atomscore <folder>` inside the runner)."""
    folder = _hand_made(tmp_path / "jobs" / "S" / "x" / "run" / "00000",
                        {"kind": "score", "score": {"target": "atomscore.cli.__main__:main"}, "init_args": {},
                         "compute_args": {}, "score_quantity": "SENSITIVITY", "score_kind": "atom"})
    proc = _runner(folder)
    assert proc.returncode == 2 and "a command, not a score" in read_status(folder)["error"]
    assert "usage: atomscore" not in proc.stderr


USER_SCORE = '''
import numpy as np
from atomscore.score import ConfigurationScore
from atomscore.quantity import ScoreQuantity


class CountScore(ConfigurationScore):
    OUTPUT_KEY = "count"
    supported_score_quantities = (ScoreQuantity.SENSITIVITY,)

    def compute(self, atoms, score_quantity):
        return float(len(atoms))
'''


@pytest.fixture
def user_score(tmp_path, monkeypatch):
    """A user's own score in its own module, importable here as the user would have it."""
    (tmp_path / "trust_user_score.py").write_text(USER_SCORE)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("trust_user_score", None)
    import trust_user_score

    yield trust_user_score.CountScore
    sys.modules.pop("trust_user_score", None)


def test_a_users_score_runs_only_as_run_recorded_it(tmp_path, user_score):
    """The user's module, recorded and sealed at run(), runs (values = compute()); the same
    folder with its seal removed, or after the module file changed, is refused before import."""
    marker = tmp_path / "MARKER"
    configs = _dataset(2)
    wf = _NoStart(tmp_path / "jobs")
    ok, unsealed, changed = (user_score().run("c", configs, Q, workflow=wf, batch_size=2)[0] for _ in range(3))
    assert _runner(ok).returncode == 0
    got = [a.info["count_score"] for a in user_score.data_from_calc_ids([ok])]
    assert got == user_score().compute_batch(configs, "SENSITIVITY") == [6.0, 6.0]
    job = json.loads((Path(unsealed) / FILES.job).read_text())
    del job["seal"]
    (Path(unsealed) / FILES.job).write_text(json.dumps(job))
    proc = _runner(unsealed)
    assert proc.returncode == 2 and "not sealed" in read_status(unsealed)["error"]
    with open(tmp_path / "trust_user_score.py", "a") as handle:
        handle.write(EVIL.format(marker=str(marker)))
    proc = _runner(changed)
    assert proc.returncode == 2 and "changed since run() recorded it" in read_status(changed)["error"]
    assert not marker.exists(), "the changed module was imported"


def test_executables_only_from_the_users_allow_list(tmp_path):
    """A call job (the built-in FIM property evaluation) whose input names a program as the
    LAMMPS simulator_path: not run unless ATOMSCORE_EXECUTABLES lists it (main: `<path> -h` ran)."""
    pytest.importorskip("kimpy")
    marker = tmp_path / "MARKER"
    program = tmp_path / "not-lammps"
    program.write_text(f"#!/bin/sh\ntouch {marker}\n")
    program.chmod(0o755)
    target = {"target_property_type": "ElasticConstants", "target_property_args": {
        "lattice_param": 5.43, "lattice_type": "diamond", "elements": ["Si"], "simulator_path": str(program)}}
    potential = {"potential_type": "KIM", "potential_args": {"kim_id": "SW_StillingerWeber_1985_Si__MO_405512056662_005"}}
    job = {"kind": "call", "function": {"target": "atomscore.fim.property:evaluate_target_property"},
           "kwargs": {"target_property": target, "potential": potential, "parameters": [{}]}}
    folder = _hand_made(tmp_path / "jobs" / "calls" / "p" / "run" / "00000", job)
    proc = _runner(folder)
    assert proc.returncode == 1 and "not on your allow-list" in read_status(folder)["error"], proc.stderr
    assert not marker.exists(), "the folder's program ran"
    # the user lists it: now it is run (and refused as not LAMMPS): the allow-list is the gate
    folder2 = _hand_made(tmp_path / "jobs" / "calls" / "p" / "run" / "00001", job)
    proc = _runner(folder2, ATOMSCORE_EXECUTABLES=str(program))
    assert marker.exists() and "does not look like LAMMPS" in read_status(folder2)["error"], proc.stderr


def test_cancel_signals_only_the_proven_runner(tmp_path):
    """status.json naming another process (its own group): `jobs cancel` marks the job cancelled
    and leaves that process alive (main: killed its group). A real runner of the folder, started
    elsewhere, is terminated."""
    from reliability_scores import NapScore

    wf = _NoStart(tmp_path / "jobs")
    victim = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        (forged,) = NapScore().run("nap", _dataset(1), {**Q, "seconds": 60}, workflow=wf)
        update_status(forged, state="running", pid=victim.pid)
        out = _cli("jobs", "cancel", str(Path(forged).parent), cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        assert read_status(forged)["state"] == "cancelled"
        time.sleep(0.3)
        assert victim.poll() is None, "an unrelated process was killed"
    finally:
        victim.kill()
        victim.wait()
    (real,) = NapScore().run("nap", _dataset(1), {**Q, "seconds": 60}, workflow=wf)
    runner = subprocess.Popen(job_command(real), start_new_session=True, env=_env(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while read_status(real).get("state") != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert trust.is_runner_of(read_status(real), real)
        LocalWorkflow(tmp_path / "jobs").cancel([real])  # another object: through status.json
        assert runner.wait(timeout=30) in (-signal.SIGTERM, -signal.SIGKILL, 1, 130, 143)
        assert read_status(real)["state"] == "cancelled"
    finally:
        if runner.poll() is None:
            runner.kill()


def test_a_job_root_others_can_write_is_refused(tmp_path):
    """As ssh refuses a group-writable key: run() into a group-writable root writes nothing;
    the runner refuses a folder whose run folder became group-writable (main: both accepted)."""
    root = tmp_path / "shared"
    root.mkdir()
    root.chmod(0o775)
    with pytest.raises(InputError, match="writable by others"):
        QUESTSEfficiencyScore().run("e", _dataset(), {"score_quantity": "EFFICIENCY"}, workflow=_NoStart(root))
    assert not list(root.rglob("job.json"))
    (calc_id,) = QUESTSEfficiencyScore().run("e", _dataset(), {"score_quantity": "EFFICIENCY"},
                                             workflow=_NoStart(tmp_path / "private"))
    Path(calc_id).parent.chmod(0o777)
    proc = _runner(calc_id)
    assert proc.returncode == 2 and "writable by others" in read_status(calc_id)["error"]
    assert not (Path(calc_id) / FILES.results_json).exists()


def test_a_key_others_can_read_is_refused_before_a_run_writes(tmp_path, monkeypatch):
    """The key that seals job folders: made 0600 on first use; opened to others, refused (as
    ssh refuses an open private key) before run() writes anything."""
    key = tmp_path / "cfg" / "job-key"
    monkeypatch.setenv(trust.KEY_ENV, str(key))
    job = {"x": 1}
    job["seal"] = trust.seal(job)
    assert trust.is_sealed(job) and (key.stat().st_mode & 0o777) == 0o600
    assert not trust.is_sealed({**job, "x": 2})  # the seal covers the content
    key.chmod(0o644)
    with pytest.raises(InputError, match="readable by you alone"):
        QUESTSEfficiencyScore().run("e", _dataset(), {"score_quantity": "EFFICIENCY"},
                                    workflow=_NoStart(tmp_path / "jobs"))
    assert not (tmp_path / "jobs").exists() or not list((tmp_path / "jobs").rglob("job.json"))
