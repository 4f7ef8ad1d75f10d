"""The job layer under real faults (issue 12): every wait returns, Ctrl-C stops, runs never
mix, a finished folder stays what it was, nothing is written outside the root, the runner
runs scores and registered calls only.

Faults are real: runner processes killed, a job folder deleted, a tmpfs filled to ENOSPC
(skipped where this machine cannot mount one), SIGINT/SIGTERM sent to the real ``atomscore``
command, symlinks planted in folders, and the real local SLURM (``scripts/slurm-local``, the
fixture of tests/test_slurm.py) refusing or losing submissions. References: the state and
error each job records in ``status.json``, what ``squeue``/``scancel`` say, the processes
the kernel still lists (``os.kill(pid, 0)``), and in-memory ``compute_batch`` for numbers.
Every wait here is bounded by a timeout; set ``ATOMSCORE_RELIABILITY_LOG=file`` to record
how long each wait took to return (for the closing note; nothing asserts on times).
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
from ase.build import bulk

from atomscore.errors import InputError, JobFailedError
from atomscore.jobs import trust
from atomscore.jobs.folder import (FILES, JobState, JobWriteError, folder_inputs, read_status, tail_text,
                                   update_status)
from atomscore.jobs.workflow import LocalWorkflow, SubmissionError, failure_report

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from reliability_scores import NapScore  # noqa: E402
from toy_scores import WeightedDistanceScore  # noqa: E402

Q = {"score_quantity": "SENSITIVITY"}


def make_configs(n=3, seed=0):
    configs = []
    for i in range(n):
        atoms = bulk("Si", "diamond", 5.40 + 0.02 * i, cubic=True)
        atoms.rattle(0.02, seed=seed + i)
        configs.append(atoms)
    return configs


def record(case, ends, seconds):
    """Append one row of the fault table (case, how it ended, seconds until the wait returned)."""
    log = os.environ.get("ATOMSCORE_RELIABILITY_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"case": case, "ends": ends, "seconds": round(seconds, 2)}) + "\n")


def wait_for(predicate, limit=60.0, what="condition"):
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {limit} s")


def wait_running(folder, limit=60.0):
    wait_for(lambda: read_status(folder).get("state") == JobState.RUNNING, limit, f"{folder} running")


def alive(pid):
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    # a zombie is not running: it waits for its parent to read its exit code
    try:
        return Path(f"/proc/{int(pid)}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def no_tmp_files(root):
    return sorted(str(p) for p in Path(root).rglob("*.tmp"))


def env_with_tests():
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), env.get("PYTHONPATH", "")])
    return env


# --------------------------------------------------------------------------- 1. every wait returns
@pytest.mark.parametrize("env, match", [
    ({"A=B": "1"}, "without '='"),
    ({1: "x"}, "non-empty strings"),
    ({"": "x"}, "non-empty strings"),
    ({"A\0B": "1"}, "NUL"),
    ({"A": "x\0y"}, "NUL"),
    ({"A": {"nested": 1}}, "string or a number"),
])
def test_bad_env_is_refused_before_any_folder_is_written(tmp_path, env, match):
    """Before issue 12 an env key with '=' or a NUL made Popen raise ValueError inside the
    bookkeeping thread: the job stayed pending and the wait never returned."""
    wf = LocalWorkflow(tmp_path / "jobs")
    with pytest.raises(InputError, match=match):
        NapScore().run("env", make_configs(1), Q, workflow=wf, job_details={"env": env})
    assert not (tmp_path / "jobs").exists()


def test_env_is_checked_by_the_scheduler_workflow_too(tmp_path):
    from atomscore.jobs.scheduler import SlurmWorkflow

    wf = SlurmWorkflow(root_directory=tmp_path / "jobs")
    for env in ({"A=B": "1"}, {"A": "x\0y"}, {"A": [1]}):
        with pytest.raises(InputError, match="job_details\\['env'\\]"):
            NapScore().run("env", make_configs(1), Q, workflow=wf, job_details={"env": env})
    assert not (tmp_path / "jobs").exists()


def remove_tree(path, seconds=10):
    """``rm -rf`` as a user does it, again if the live job wrote a file meanwhile
    ("Directory not empty"): the folder must end up gone, as the test needs."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            shutil.rmtree(path)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise


def test_any_start_failure_fails_the_job_and_the_wait_returns(tmp_path):
    """A start failure that is not an OSError (here: a symlink planted at stdout.log, refused
    by O_NOFOLLOW with an InputError) fails the job instead of leaving it pending."""
    outside = tmp_path / "outside.txt"
    outside.write_text("keep me\n")

    class Planted(LocalWorkflow):
        def submit(self, folder, job_details=None):
            os.symlink(outside, Path(folder) / FILES.stdout)
            return super().submit(folder, job_details)

    wf = Planted(tmp_path / "jobs", nprocs=1)
    ids = NapScore().run("start", make_configs(1), Q, workflow=wf)
    start = time.monotonic()
    with pytest.raises(JobFailedError, match="symbolic link") as info:
        wf.block_until_completed(ids, timeout=60)
    record("log file is a planted symlink (start failure)", "failed: could not start", time.monotonic() - start)
    assert info.value.failures[0]["reason"] == "could not start"
    assert outside.read_text() == "keep me\n"


def test_a_job_folder_deleted_during_the_wait_fails_and_its_process_is_stopped(tmp_path):
    wf = LocalWorkflow(tmp_path / "jobs", nprocs=1)
    (calc_id,) = NapScore().run("vanish", make_configs(1), {**Q, "seconds": 120}, workflow=wf)
    wait_running(calc_id)
    pid = read_status(calc_id)["pid"]
    remove_tree(calc_id)
    start = time.monotonic()
    with pytest.raises(JobFailedError, match="folder vanished") as info:
        wf.block_until_completed([calc_id], timeout=60)
    record("job folder deleted while running", "failed: folder vanished", time.monotonic() - start)
    assert info.value.failures[0]["reason"] == "folder vanished"
    wait_for(lambda: not alive(pid), 30, "runner stopped")
    time.sleep(0.5)
    assert not Path(calc_id).exists(), "a vanished folder is never re-created"


def test_a_runner_killed_with_sigkill_fails_and_the_wait_returns(tmp_path):
    wf = LocalWorkflow(tmp_path / "jobs", nprocs=1)
    (calc_id,) = NapScore().run("kill", make_configs(1), {**Q, "seconds": 120}, workflow=wf)
    wait_running(calc_id)
    os.kill(read_status(calc_id)["pid"], signal.SIGKILL)
    start = time.monotonic()
    states = wf.block_until_completed([calc_id], timeout=60, raise_on_failure=False)
    record("runner killed by SIGKILL", "failed: killed by signal SIGKILL", time.monotonic() - start)
    assert states[calc_id] is JobState.FAILED and read_status(calc_id)["exit_code"] == -9


def test_an_old_jobs_bookkeeping_never_writes_into_a_newer_job(tmp_path):
    """The user deletes the root while a job runs and runs again. Before issue 12 the new job got
    the same path (numbering restarted) and the old job's thread, ending at its walltime, wrote
    its failure into the new job's status.json: a successful job reported failed."""
    root = tmp_path / "jobs"
    wf = LocalWorkflow(root, nprocs=2)
    (old,) = NapScore().run("same", make_configs(1), {**Q, "seconds": 60}, workflow=wf,
                            job_details={"walltime": 3})
    wait_running(old)
    remove_tree(root)
    (new,) = NapScore().run("same", make_configs(1), Q, workflow=wf)
    assert wf.block_until_completed([new], timeout=60)[new] is JobState.DONE
    wait_for(lambda: wf._jobs[Path(old)].future.done(), 30, "old job's bookkeeping ended")
    status = read_status(new)
    assert status["state"] == JobState.DONE and status["exit_code"] == 0 and not status.get("reason")
    assert not Path(old).exists() or Path(old) == Path(new)


def test_a_status_update_for_another_attempt_is_not_written(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / FILES.job).write_text("{}")
    update_status(folder, state=JobState.RUNNING, attempt="new")
    assert update_status(folder, expect={"attempt": "old"}, state=JobState.FAILED, exit_code=1) is None
    assert read_status(folder)["state"] == JobState.RUNNING


def test_walltime_is_said_once(tmp_path):
    wf = LocalWorkflow(tmp_path / "jobs", nprocs=1)
    ids = NapScore().run("slow", make_configs(1), {**Q, "seconds": 60}, workflow=wf, job_details={"walltime": 2})
    start = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        wf.block_until_completed(ids, timeout=60)
    record("walltime 2 s passed", "failed: timed out after walltime", time.monotonic() - start)
    assert str(info.value).count("timed out after walltime 2 s") == 1


# --------------------------------------------------------------------------- 1. a full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 2 MiB tmpfs (needs root); skipped where mounting is not allowed."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)],
                          capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()}); the ENOSPC cases need one")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, timeout=30)


def fill(disk, leave=0):
    """Fill ``disk`` up to ``leave`` bytes free (real ENOSPC beyond)."""
    filler = disk / "filler"
    with open(filler, "ab", buffering=0) as handle:
        chunk = b"\0" * 65536
        while True:
            free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
            if free <= leave:
                return
            try:
                handle.write(chunk[: max(4096, min(len(chunk), free - leave))])
                handle.flush()
            except OSError:
                return


def test_a_full_disk_while_writing_job_folders_leaves_nothing(small_disk):
    configs = make_configs(3)
    for atoms in configs:
        atoms.arrays["descriptors"] = np.random.default_rng(0).random((len(atoms), 400))
    wf = LocalWorkflow(small_disk / "jobs")
    fill(small_disk, leave=64 * 1024)
    start = time.monotonic()
    with pytest.raises(JobWriteError, match="No space left on device"):
        NapScore().run("full", configs, Q, workflow=wf)
    record("disk full while run() writes folders", "JobWriteError, partial run removed", time.monotonic() - start)
    assert list((small_disk / "jobs" / "NapScore" / "full").iterdir()) == []
    assert no_tmp_files(small_disk) == []


def test_a_full_disk_while_jobs_write_results_fails_them_and_the_wait_returns(small_disk):
    wf = LocalWorkflow(small_disk / "jobs", nprocs=2)
    ids = NapScore().run("results", make_configs(4), {**Q, "seconds": 1.5, "width": 20000}, workflow=wf,
                         batch_size=2)
    fill(small_disk)  # the runners are still importing: their results (~1 MB) cannot be written
    start = time.monotonic()
    with pytest.raises(JobFailedError) as info:
        wf.block_until_completed(ids, timeout=120)
    record("disk full while jobs write results/status", "failed (ENOSPC in the error)", time.monotonic() - start)
    assert len(info.value.failures) == 2
    for failure in info.value.failures:
        assert "No space left on device" in (failure["error"] or "") + failure["stderr_tail"], failure
    assert all(wf.status_of(Path(i))["state"] == JobState.FAILED for i in ids), "no job left pending"
    assert no_tmp_files(small_disk) == []


def test_a_full_disk_at_submission_leaves_no_pending_orphans(small_disk):
    from test_jobs import _NoStart

    folders = NapScore().run("submit", make_configs(3), Q, workflow=_NoStart(small_disk / "jobs"))
    fill(small_disk)
    wf = LocalWorkflow(small_disk / "jobs", nprocs=1)
    start = time.monotonic()
    with pytest.raises(SubmissionError, match="No space left on device") as info:
        wf.submit_run(folders)
    record("disk full while submitting (status.json)", "SubmissionError, folders failed or removed",
           time.monotonic() - start)
    assert info.value.calc_ids == [str(Path(f)) for f in folders]
    for folder in folders:
        assert not Path(folder).exists() or read_status(folder)["state"] != JobState.PENDING
    assert no_tmp_files(small_disk) == []


# --------------------------------------------------------------------------- 2. Ctrl-C stops
@pytest.fixture
def sleepy_spec(tmp_path):
    from atomscore.io import write_extxyz

    write_extxyz(tmp_path / "configs.xyz", make_configs(4))
    spec = {"batch_size": 1, "score": {"score_type": "reliability_scores:NapScore", "path_type": "nap",
                                       "query_configs_path": "configs.xyz", "score_args": {},
                                       "compute_args": {**Q, "seconds": 120}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    return tmp_path


@pytest.mark.parametrize("signals", [[signal.SIGINT], [signal.SIGTERM], [signal.SIGINT, signal.SIGINT]],
                         ids=["sigint", "sigterm", "double-ctrl-c"])
def test_an_interrupted_run_cancels_every_job_and_exits_130(sleepy_spec, signals):
    """Before issue 12 every queued job still ran after Ctrl-C."""
    proc = subprocess.Popen([sys.executable, "-m", "atomscore.cli", "run", "spec.json", "--root", "jobs",
                             "--nprocs", "2"], cwd=sleepy_spec, env=env_with_tests(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def two_running():
            folders = sorted((sleepy_spec / "jobs").glob("NapScore/nap/*/0*"))
            return len(folders) == 4 and sum(read_status(f).get("state") == JobState.RUNNING for f in folders) == 2

        wait_for(two_running, 120, "two jobs running")
        folders = sorted((sleepy_spec / "jobs").glob("NapScore/nap/*/0*"))
        pids = [read_status(f)["pid"] for f in folders if read_status(f).get("pid")]
        start = time.monotonic()
        for sig in signals:
            proc.send_signal(sig)
            time.sleep(0.05)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    record(f"atomscore run + {'+'.join(signal.Signals(s).name for s in signals)}",
           f"exit {proc.returncode}, 4 cancelled", took)
    assert proc.returncode == 130, err
    states = [read_status(f)["state"] for f in folders]
    assert states == [JobState.CANCELLED] * 4, states
    assert sum("start_time" not in read_status(f) for f in folders) == 2, "queued jobs never started"
    assert len(pids) == 2 and not any(alive(p) for p in pids), "no runner left behind"


def test_sigterm_during_block_until_completed_cancels(tmp_path):
    script = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
from ase.build import bulk
from reliability_scores import NapScore
from atomscore.jobs.workflow import LocalWorkflow
def make_configs(n):
    return [bulk("Si", "diamond", 5.4 + 0.02 * i, cubic=True) for i in range(n)]
wf = LocalWorkflow({str(tmp_path / 'jobs')!r}, nprocs=1)
ids = NapScore().run("term", make_configs(3), {{"score_quantity": "SENSITIVITY", "seconds": 120}}, workflow=wf)
print("submitted", flush=True)
try:
    wf.block_until_completed(ids, timeout=300)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env_with_tests())
    try:
        wait_for(lambda: any(read_status(f).get("state") == JobState.RUNNING
                             for f in (tmp_path / "jobs").glob("NapScore/term/*/0*")), 120, "a job running")
        folders = sorted((tmp_path / "jobs").glob("NapScore/term/*/0*"))
        pid = next(read_status(f)["pid"] for f in folders if read_status(f).get("pid"))
        start = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        took = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    record("block_until_completed + SIGTERM", f"KeyboardInterrupt, exit {proc.returncode}, 3 cancelled", took)
    assert proc.returncode == 130 and "interrupted" in out, err
    assert [read_status(f)["state"] for f in folders] == [JobState.CANCELLED] * 3
    assert not alive(pid)


# --------------------------------------------------------------------------- 3. runs never mix
def test_two_runs_of_the_same_spec_are_two_runs(sleepy_spec):
    spec = json.loads((sleepy_spec / "spec.json").read_text())
    spec["score"]["compute_args"]["seconds"] = 0
    spec["score"]["path_type"] = "quick"
    (sleepy_spec / "quick.json").write_text(json.dumps(spec))
    for _ in range(2):
        done = subprocess.run([sys.executable, "-m", "atomscore.cli", "run", "quick.json", "--root", "jobs"],
                              cwd=sleepy_spec, env=env_with_tests(), capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
    runs = sorted((sleepy_spec / "jobs" / "NapScore" / "quick").iterdir())
    assert len(runs) == 2 and all(len(list(r.glob("0*"))) == 4 and (r / "results.xyz").is_file() for r in runs)
    table = subprocess.run([sys.executable, "-m", "atomscore.cli", "jobs", "status", "jobs"], cwd=sleepy_spec,
                           env=env_with_tests(), capture_output=True, text=True, timeout=120)
    assert table.returncode == 0
    assert [line for line in table.stdout.splitlines() if line.startswith("run ")] == \
        [f"run NapScore/quick/{r.name}: 4 done" for r in runs]
    again = subprocess.run([sys.executable, "-m", "atomscore.cli", "run", "quick.json", "--root", "jobs", "-o",
                            str(runs[0] / "results.xyz")], cwd=sleepy_spec, env=env_with_tests(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "never overwrite" in again.stderr


def test_gathering_keeps_a_folder_runnable_and_cleaning_is_explicit(tmp_path):
    """Before issue 12, data_from_calc_ids(cleanup=True) removed args/: a re-run then failed and
    flipped 'done' to 'failed'."""
    wf = LocalWorkflow(tmp_path / "jobs")
    score = WeightedDistanceScore(np.array([1.0, 2.0, 3.0]))
    (calc_id,) = score.run("keep", make_configs(2), {"score_quantity": 2, "centre": np.ones(3)}, workflow=wf,
                           batch_size=2)
    wf.block_until_completed([calc_id], timeout=60)
    first = score.data_from_calc_ids([calc_id], cleanup=True)
    folder = Path(calc_id)
    assert (folder / "args").is_dir()
    # a done folder with results refuses to run again, and stays done
    results = (folder / FILES.results_xyz).read_bytes()
    proc = subprocess.run([sys.executable, "-m", "atomscore.job", calc_id], capture_output=True, text=True,
                          timeout=120, env=env_with_tests())
    assert proc.returncode == 2 and "never overwritten" in proc.stderr
    assert (folder / FILES.results_xyz).read_bytes() == results and read_status(folder)["state"] == JobState.DONE
    # without its results it re-runs from its kept arguments, to the same numbers
    (folder / FILES.results_xyz).unlink()
    proc = subprocess.run([sys.executable, "-m", "atomscore.job", calc_id], capture_output=True, text=True,
                          timeout=120, env=env_with_tests())
    assert proc.returncode == 0, proc.stderr
    again = WeightedDistanceScore.data_from_calc_ids([calc_id])  # from the class: no instance needed
    np.testing.assert_array_equal(again[1].arrays["toy_distance_score"], first[1].arrays["toy_distance_score"])
    # cleaning is the user's explicit choice; a cleaned folder refuses a re-run and stays done
    clean = subprocess.run([sys.executable, "-m", "atomscore.cli", "jobs", "clean", str(tmp_path / "jobs")],
                           capture_output=True, text=True, timeout=120, env=env_with_tests())
    assert clean.returncode == 0 and "cleaned 1" in clean.stdout
    assert not (folder / "args").exists() and (folder / FILES.cleaned).is_file()
    (folder / FILES.results_xyz).unlink()
    proc = subprocess.run([sys.executable, "-m", "atomscore.job", calc_id], capture_output=True, text=True,
                          timeout=120, env=env_with_tests())
    assert proc.returncode == 2 and "was cleaned" in proc.stderr
    assert read_status(folder)["state"] == JobState.DONE
    with pytest.raises(InputError, match="was cleaned"):
        wf.submit(calc_id)


# --------------------------------------------------------------------------- 5. nothing outside the folder
def test_an_array_reference_outside_the_folder_is_refused(tmp_path):
    from test_jobs import _NoStart

    secret = tmp_path / "secret.npy"
    np.save(secret, np.arange(3.0))
    for bad in (str(secret), "../../../../secret.npy"):
        (calc_id,) = WeightedDistanceScore(np.ones(3)).run("ref", make_configs(1), {"score_quantity": 2},
                                                           workflow=_NoStart(tmp_path / "jobs"))
        job = json.loads((Path(calc_id) / FILES.job).read_text())
        job["compute_args"]["centre"] = {"__ndarray__": bad}
        job["seal"] = trust.seal(job)  # as if the user edited it: an unsealed edit is refused before (issue 21)
        (Path(calc_id) / FILES.job).write_text(json.dumps(job))
        proc = subprocess.run([sys.executable, "-m", "atomscore.job", calc_id], capture_output=True, text=True,
                              timeout=120, env=env_with_tests())
        assert proc.returncode == 1
        assert "__ndarray__" in read_status(calc_id)["error"] and read_status(calc_id)["state"] == JobState.FAILED


def test_fim_property_jobs_go_under_the_callers_root(tmp_path, monkeypatch):
    """Before issue 12 the property calls of a FIMPropertyScore job went to ./atomscore_jobs."""
    pytest.importorskip("kimpy")
    from atomscore.fim import FIMPropertyScore

    monkeypatch.chdir(tmp_path)
    target = {"init_args": {"target_property_type": "ElasticConstants", "target_property_args": {
        "lattice_param": 5.43, "lattice_type": "diamond", "deformation_mag": 0.0001, "elements": ["Si"]}},
        "calculate_property_args": {"workflow": {"workflow_type": "LOCAL", "workflow_args": {"nprocs": 1}}}}
    args = {"score_quantity": "SENSITIVITY", "cov": np.eye(36), "parameters_optimize": {"A": [["default"]]},
            "potential": {"potential_type": "KIM", "potential_args": {
                "kim_id": "SW_StillingerWeber_1985_Si__MO_405512056662_005"}}}
    wf = LocalWorkflow(tmp_path / "root", nprocs=1)
    ids = FIMPropertyScore().run("fim", [target], args, workflow=wf)
    wf.block_until_completed(ids, timeout=300)
    assert not (tmp_path / "atomscore_jobs").exists()
    assert list((tmp_path / "root" / "calls" / "fim_property").glob("*/0*/result.json"))


# --------------------------------------------------------------------------- 6. what the runner runs
@pytest.mark.parametrize("kind, target, args", [
    ("score", "subprocess:run", {"args": ["touch", "MARKER"]}),
    ("score", "os:system", {"command": "touch MARKER"}),
    ("score", "json:JSONDecoder", {}),
    ("call", "subprocess:run", {"args": ["touch", "MARKER"]}),
    ("call", "os:system", {"command": "touch MARKER"}),
    ("call", "atomscore.fim.property:_target_properties", {"list_of_target_property": []}),
])
def test_the_runner_refuses_what_is_not_a_score_or_a_registered_call(tmp_path, kind, target, args):
    folder = tmp_path / "job"
    folder.mkdir()
    ref = {"target": target, "import_path": None, "module_file": None}
    job = {"format_version": 1, "kind": kind, "cwd": str(tmp_path)}
    if kind == "score":
        job.update(score=ref, init_args=args, compute_args={}, score_quantity="SENSITIVITY", score_kind="atom")
        (folder / FILES.input_xyz).write_text("")
    else:
        job.update(function=ref, kwargs=args)
    job.update(run_id="hand-made", inputs=folder_inputs(folder))  # digests as run() records them (issue 21)
    (folder / FILES.job).write_text(json.dumps(job))
    proc = subprocess.run([sys.executable, "-m", "atomscore.job", str(folder)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert proc.returncode == 2
    assert "runs scores and" in read_status(folder)["error"]
    assert not (tmp_path / "MARKER").exists(), "nothing was called"


def test_map_calls_refuses_an_unregistered_function(tmp_path):
    from atomscore.jobs.calls import map_calls

    with pytest.raises(InputError, match="not registered as a job call"):
        map_calls(os.getcwd, [{}], workflow=LocalWorkflow(tmp_path / "jobs"))
    assert not (tmp_path / "jobs").exists()


# --------------------------------------------------------------------------- 7. failure reports
def test_a_huge_stderr_is_read_from_its_end_only(tmp_path):
    import tracemalloc

    wf = LocalWorkflow(tmp_path / "jobs", nprocs=1)
    ids = NapScore().run("err", make_configs(1), {**Q, "fail_unless": str(tmp_path / "none")}, workflow=wf)
    wf.block_until_completed(ids, timeout=60, raise_on_failure=False)
    log = Path(ids[0]) / FILES.stderr
    text = log.read_bytes()
    with open(log, "wb") as handle:  # 300 MB of stderr before the traceback (sparse: cheap on disk)
        handle.truncate(300 * 2**20)
        handle.seek(0, os.SEEK_END)
        handle.write(b"\n" + text)
    tracemalloc.start()
    (failure,) = failure_report([Path(ids[0])], ids)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert "fault requested" in failure["stderr_tail"]
    assert peak < 2 * 2**20, peak
    assert tail_text(tmp_path / "missing.log") == ""


# --------------------------------------------------------------------------- 8. jobs commands
def cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "atomscore.cli", *args], cwd=cwd, env=env_with_tests(),
                          capture_output=True, text=True, timeout=300)


def test_collect_rerun_cancel_from_the_command_line(tmp_path):
    flag = tmp_path / "flag"
    wf = LocalWorkflow(tmp_path / "jobs", nprocs=2)
    configs = make_configs(4)
    ids = NapScore().run("cli", configs, {**Q, "fail_unless": str(flag)}, workflow=wf, batch_size=2)
    wf.block_until_completed(ids, timeout=60, raise_on_failure=False)
    run = Path(ids[0]).parent
    assert cli("jobs", "collect", str(run), "-o", "out.xyz", cwd=tmp_path).returncode == 1  # failed jobs
    flag.touch()
    rerun = cli("jobs", "rerun", str(run), cwd=tmp_path)
    assert rerun.returncode == 0 and "re-ran 2 job(s): 2 done" in rerun.stdout, rerun.stderr
    collect = cli("jobs", "collect", str(run), "-o", "out.xyz", cwd=tmp_path)
    assert collect.returncode == 0, collect.stderr
    from atomscore.io import read_extxyz

    got = [a.info["nap_volume_score"] for a in read_extxyz(tmp_path / "out.xyz")]
    assert got == NapScore().compute_batch(configs, "SENSITIVITY")
    assert cli("jobs", "collect", str(run), "-o", "out.xyz", cwd=tmp_path).returncode == 2  # never overwrites

    ids = NapScore().run("cancel", make_configs(3), {**Q, "seconds": 120}, workflow=wf)
    wait_running(ids[0])
    pids = [read_status(i)["pid"] for i in ids if read_status(i).get("pid")]
    start = time.monotonic()
    cancel = cli("jobs", "cancel", str(Path(ids[0]).parent), cwd=tmp_path)
    states = wf.block_until_completed(ids, timeout=60, raise_on_failure=False)
    record("atomscore jobs cancel (from another process)", "cancelled", time.monotonic() - start)
    assert cancel.returncode == 0 and "cancelled 3" in cancel.stdout, cancel.stderr
    assert set(states.values()) == {JobState.CANCELLED}
    assert not any(alive(p) for p in pids)
    status = cli("jobs", "status", str(tmp_path / "jobs"), "--state", "cancelled", cwd=tmp_path)
    assert status.returncode == 1 and "3 cancelled" in status.stdout


# --------------------------------------------------------------------------- 4. scheduler submission (real SLURM)
from test_slurm import slurm  # noqa: E402,F401 - the session fixture starting scripts/slurm-local


def slurm_wf(root, **kwargs):
    from atomscore.jobs.scheduler import SlurmWorkflow

    kwargs.setdefault("poll_interval", 0.5)
    kwargs.setdefault("walltime", 600)
    return SlurmWorkflow(root_directory=root, **kwargs)


def squeue_ids():
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=30).stdout
    return set(out.split())


@pytest.mark.slurm
def test_an_unknown_partition_leaves_no_batch_pending(slurm, tmp_path):
    wf = slurm_wf(tmp_path / "jobs", queue="no_such_partition")
    start = time.monotonic()
    with pytest.raises(SubmissionError, match="(?i)invalid partition") as info:
        NapScore().run("part", make_configs(3), Q, workflow=wf)
    record("SLURM: unknown partition, 3 batches", "SubmissionError, 3 not submitted", time.monotonic() - start)
    assert len(info.value.calc_ids) == 3
    for calc_id in info.value.calc_ids:
        status = read_status(calc_id)
        assert status["state"] == JobState.FAILED and status["reason"] == "not submitted"


@pytest.mark.slurm
def test_a_refused_second_batch_cancels_the_first_and_marks_the_rest(slurm, tmp_path):
    """sbatch really refuses batch 1 (its partition does not exist); batch 0 was already in the
    queue and is cancelled with scancel, batch 2 is never submitted."""
    from atomscore.jobs.scheduler import SlurmWorkflow

    class SecondRefused(SlurmWorkflow):
        calls = 0

        def _details(self, job_details):
            details = super()._details(job_details)
            if self.calls == 1:
                details["queue"] = "no_such_partition"
            return details

        def submit(self, folder, job_details=None):
            try:
                return super().submit(folder, job_details)
            finally:
                SecondRefused.calls += 1

    wf = SecondRefused(root_directory=tmp_path / "jobs", poll_interval=0.5, walltime=600)
    start = time.monotonic()
    with pytest.raises(SubmissionError, match="batch 1 of 3") as info:
        NapScore().run("second", make_configs(3), {**Q, "seconds": 60}, workflow=wf)
    record("SLURM: batch 1 of 3 refused", "SubmissionError; batch 0 cancelled, 1-2 not submitted",
           time.monotonic() - start)
    first, second, third = info.value.calc_ids
    native = json.loads((Path(first) / FILES.scheduler).read_text())["native_id"]
    assert read_status(first)["state"] == JobState.CANCELLED
    wait_for(lambda: native not in squeue_ids(), 60, "batch 0 left the queue")
    for calc_id in (second, third):
        assert read_status(calc_id)["state"] == JobState.FAILED and read_status(calc_id)["reason"] == "not submitted"


@pytest.mark.slurm
def test_a_submission_that_timed_out_but_reached_slurm_is_reconciled(slurm, tmp_path):
    """scheduler_timeout far below sbatch's answer time: the submission 'times out', but sbatch
    did queue the job; it is found by its unique name and followed, not failed and run twice."""
    wf = slurm_wf(tmp_path / "jobs", scheduler_timeout=0.001)
    (calc_id,) = NapScore().run("late", make_configs(1), Q, workflow=wf)
    wf.scheduler_timeout = 120.0
    record_ = json.loads((Path(calc_id) / FILES.scheduler).read_text())
    assert record_["reconciled"] is True and record_["native_id"]
    start = time.monotonic()
    assert wf.block_until_completed([calc_id], timeout=300)[calc_id] is JobState.DONE
    record("SLURM: sbatch answer lost (timeout) but submitted", "reconciled by name, done", time.monotonic() - start)
    assert NapScore.data_from_calc_ids([calc_id])[0].info["nap_volume_score"] == make_configs(1)[0].get_volume()
