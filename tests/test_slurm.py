"""SlurmWorkflow / PSIJWorkflow against a real SLURM cluster (``scripts/slurm-local``).

The cluster is a real ``slurmctld`` + ``slurmd`` on loopback, started once for the test
session by the ``slurm`` fixture and always stopped at the end, even when tests fail. The
reference for results is :class:`LocalWorkflow` running the same score on the same inputs
(and ``compute_batch`` in this process): SLURM must give identical numbers. Scheduler
behaviour (cancel, walltime, dependency, unreachable controller) is checked against what
SLURM itself reports (``scancel``, ``squeue``), never against a fake.

Needs root and the Debian packages ``slurmctld slurmd slurm-client munge`` (``make test``
installs them); set ``ATOMSCORE_SKIP_SLURM=1`` to skip on a machine without them.
"""

import contextlib
import fcntl
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from atomscore.errors import InputError, JobFailedError
from atomscore.jobs.folder import read_status
from atomscore.jobs import make_workflow
from atomscore.jobs.workflow import LocalWorkflow
from atomscore.quantity import ScoreQuantity
from atomscore.score import ConfigurationScore

REPO = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO / "scripts" / "slurm-local"
STATE_DIR = Path(os.environ.get("SLURM_LOCAL_DIR", "/var/lib/atomscore-slurm-local"))
PID_DIR = STATE_DIR / "run"
SI_MODEL = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
pytestmark = pytest.mark.slurm


class SleepScore(ConfigurationScore):
    """Test score run by SLURM jobs: the cell volume (Å³), after sleeping ``seconds``; fails on request."""

    OUTPUT_KEY = "slurm_test_volume"
    supported_score_quantities = (ScoreQuantity.SENSITIVITY,)

    def compute(self, atoms, score_quantity, seconds=0.0, fail=False, kill=False):
        self.parse_quantity(score_quantity)
        if fail:
            raise RuntimeError("failure requested by the test")
        if kill:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(float(seconds))
        return float(atoms.get_volume())


def make_configs(n, seed=0):
    rng = np.random.default_rng(seed)
    configs = []
    for i in range(n):
        atoms = bulk("Si", "diamond", 5.43 + 0.01 * i, cubic=True)
        atoms.rattle(0.03, seed=seed + i)
        atoms.arrays["descriptors"] = rng.random((len(atoms), 5))
        configs.append(atoms)
    return configs


# --------------------------------------------------------------------------- the cluster
def _slurm_local(action, check):
    return subprocess.run([str(SLURM_LOCAL), action], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, timeout=180, check=check)


@contextlib.contextmanager
def _cluster_lock():
    """Serialise start/stop between test processes (pytest-xdist workers, two sessions)."""
    STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(STATE_DIR / "tests.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@pytest.fixture(scope="session")
def slurm():
    """A running single-node SLURM for the whole session; stopped at the end whatever happens.

    Each test process registers itself; the last one to finish stops the cluster, so
    pytest-xdist workers (or two sessions at once) never stop it under each other.
    """
    if os.environ.get("ATOMSCORE_SKIP_SLURM") == "1":
        pytest.skip("ATOMSCORE_SKIP_SLURM=1")
    users = STATE_DIR / "test-users"
    me = users / str(os.getpid())
    try:
        with _cluster_lock():
            users.mkdir(parents=True, exist_ok=True)
            me.touch()
            result = _slurm_local("start", check=False)
        if result.returncode != 0:
            pytest.fail(f"scripts/slurm-local start failed (needs root and the Debian packages slurmctld "
                        f"slurmd slurm-client munge):\n{result.stdout}")
        yield
    finally:
        with _cluster_lock():
            me.unlink(missing_ok=True)
            others = []
            for user in users.iterdir() if users.is_dir() else ():
                if user.name.isdigit() and _alive(int(user.name)):
                    others.append(user)
                else:
                    user.unlink(missing_ok=True)
            if not others:
                _slurm_local("stop", check=False)


def slurm_workflow(root, **kwargs):
    from atomscore.jobs.scheduler import SlurmWorkflow

    kwargs.setdefault("poll_interval", 0.5)
    kwargs.setdefault("walltime", 600)
    return SlurmWorkflow(root_directory=root, **kwargs)


def wait_until_running(folder, limit=120):
    """Wait (bounded) until the runner has started in ``folder``."""
    end = time.monotonic() + limit
    while time.monotonic() < end:
        if read_status(folder).get("state") == "running":
            return
        time.sleep(0.2)
    raise AssertionError(f"job {folder} did not start within {limit} s: {read_status(folder)}")


def volumes(results):
    return np.array([a.info["slurm_test_volume_score"] for a in results])


# --------------------------------------------------------------------------- walltime (submitted first)
@pytest.fixture(scope="module")
def walltime_job(slurm, tmp_path_factory):
    """A job that sleeps far past its 1-minute walltime (SLURM's smallest), submitted early so
    that SLURM's time-limit kill overlaps the other tests; checked by the last test."""
    wf = slurm_workflow(tmp_path_factory.mktemp("walltime"), walltime=60)
    ids = SleepScore().run("walltime", make_configs(1), {"score_quantity": "SENSITIVITY", "seconds": 900},
                           workflow=wf)
    return wf, ids


def test_a_job_is_in_squeue_under_the_native_id_kept_in_its_folder(walltime_job):
    """The native id in scheduler.json is the id squeue lists (squeue is the reference)."""
    wf, ids = walltime_job
    record = json.loads((Path(ids[0]) / "scheduler.json").read_text())
    assert record["executor"] == "slurm" and record["psij_id"]
    listed = subprocess.run(["squeue", "-h", "-o", "%i %l", "-j", record["native_id"]], stdout=subprocess.PIPE,
                            text=True, timeout=30, check=True).stdout.split()
    assert listed == [record["native_id"], "1:00"]
    assert wf.native_id(ids[0]) == record["native_id"]
    assert wf.scheduler_state(ids[0]) in ("QUEUED", "ACTIVE")


# --------------------------------------------------------------------------- same results as LocalWorkflow
def test_toy_score_through_slurm_equals_local(slurm, tmp_path):
    """run() through SLURM gives exactly what LocalWorkflow and compute_batch give."""
    configs = make_configs(5)
    args = {"score_quantity": "SENSITIVITY"}
    score = SleepScore()
    wf = slurm_workflow(tmp_path / "slurm")
    ids = score.run("eq", configs, args, workflow=wf, batch_size=2)
    assert len(ids) == 3
    assert set(wf.block_until_completed(ids).values()) == {"done"}
    through_slurm = volumes(score.data_from_calc_ids(ids))
    local = LocalWorkflow(tmp_path / "local", nprocs=1)
    lids = score.run("eq", configs, args, workflow=local, batch_size=2)
    local.block_until_completed(lids)
    assert np.array_equal(through_slurm, volumes(score.data_from_calc_ids(lids)))
    assert np.array_equal(through_slurm, [a.get_volume() for a in configs])
    for calc_id in ids:
        assert (Path(calc_id) / "stderr.log").exists()  # the runner's streams land in the job folder


def test_fim_training_set_through_slurm_equals_local(slurm, tmp_path):
    """FIMTrainingSetScore (real KIM SW Si model) through SLURM == LocalWorkflow, bit for bit."""
    from atomscore.fim.training_set import FIMTrainingSetScore

    configs = [bulk("Si", "diamond", 5.43, cubic=True) for _ in range(2)]
    for i, atoms in enumerate(configs):
        atoms.rattle(0.05, seed=10 + i)
    args = {"score_quantity": "SENSITIVITY",
            "potential": {"potential_type": "KIM", "potential_args": {"kim_id": SI_MODEL}},
            "parameters_optimize": {"A": [["default"]], "B": [["default"]]}}
    score = FIMTrainingSetScore()
    wf = slurm_workflow(tmp_path / "slurm")
    ids = score.run("fim", configs, args, workflow=wf, batch_size=1)
    local = LocalWorkflow(tmp_path / "local", nprocs=1)
    lids = score.run("fim", configs, args, workflow=local, batch_size=1)
    wf.block_until_completed(ids)
    local.block_until_completed(lids)
    got = [a.info["fim_training_set_score"] for a in score.data_from_calc_ids(ids)]
    ref = [a.info["fim_training_set_score"] for a in score.data_from_calc_ids(lids)]
    assert len(got) == 2 and np.asarray(got[0]).shape == (2, 2)
    for g, r in zip(got, ref):
        assert np.array_equal(g, r)
    assert np.all(np.linalg.eigvalsh(np.asarray(got[0])) > -1e-8 * np.abs(got[0]).max())


def test_quests_delta_entropy_through_slurm_equals_local(slurm, tmp_path):
    """QUESTSDeltaEntropyScore through SLURM == LocalWorkflow, bit for bit."""
    from atomscore.quests import QUESTSDeltaEntropyScore

    configs = make_configs(4, seed=3)
    reference = np.random.default_rng(7).random((40, 5))
    args = {"score_quantity": "DELTA_ENTROPY", "reference_set": reference, "bandwidth": 0.3,
            "descriptors_key": "descriptors"}
    score = QUESTSDeltaEntropyScore()
    wf = slurm_workflow(tmp_path / "slurm")
    ids = score.run("de", configs, args, workflow=wf, batch_size=2)
    local = LocalWorkflow(tmp_path / "local", nprocs=1)
    lids = score.run("de", configs, args, workflow=local, batch_size=2)
    wf.block_until_completed(ids)
    local.block_until_completed(lids)
    got = score.data_from_calc_ids(ids)
    ref = score.data_from_calc_ids(lids)
    assert len(got) == 4
    for g, r in zip(got, ref):
        assert g.arrays["quests_delta_entropy_score"].shape == (len(g),)
        assert np.array_equal(g.arrays["quests_delta_entropy_score"], r.arrays["quests_delta_entropy_score"])
    direct = score.compute_batch(configs, "DELTA_ENTROPY", reference_set=reference, bandwidth=0.3,
                                 descriptors_key="descriptors")
    assert np.array_equal(got[0].arrays["quests_delta_entropy_score"], direct[0])


# --------------------------------------------------------------------------- failures
def test_a_failing_job_raises_with_state_and_stderr(slurm, tmp_path):
    wf = slurm_workflow(tmp_path)
    ids = SleepScore().run("fail", make_configs(1), {"score_quantity": "SENSITIVITY", "fail": True}, workflow=wf)
    with pytest.raises(JobFailedError, match="failure requested by the test") as info:
        wf.block_until_completed(ids)
    (failure,) = info.value.failures
    assert failure["state"] == "failed" and failure["exit_code"] == 1
    assert "RuntimeError: failure requested by the test" in failure["stderr_tail"]
    with pytest.raises(JobFailedError):
        SleepScore().data_from_calc_ids(ids)


def test_a_runner_killed_without_a_result_is_failed(slurm, tmp_path):
    """The runner dies by SIGKILL (as on an out-of-memory kill): SLURM sees the batch script end,
    status.json still says running; after the grace period the job is failed, not done."""
    wf = slurm_workflow(tmp_path)
    wf.RESULT_GRACE_S = 1.0
    ids = SleepScore().run("killed", make_configs(1), {"score_quantity": "SENSITIVITY", "kill": True},
                           workflow=wf)
    with pytest.raises(JobFailedError, match="no result") as info:
        wf.block_until_completed(ids, timeout=120)
    assert info.value.failures[0]["reason"] == "ended without a result"


def test_a_job_cancelled_with_scancel_is_reported_cancelled(slurm, tmp_path):
    wf = slurm_workflow(tmp_path)
    ids = SleepScore().run("cancel", make_configs(1), {"score_quantity": "SENSITIVITY", "seconds": 600},
                           workflow=wf)
    wait_until_running(ids[0])
    subprocess.run(["scancel", wf.native_id(ids[0])], check=True, timeout=30)
    with pytest.raises(JobFailedError, match="cancelled") as info:
        wf.block_until_completed(ids, timeout=120)
    (failure,) = info.value.failures
    assert failure["reason"] == "cancelled"
    assert read_status(ids[0])["scheduler_state"] == "CANCELED"


def test_a_refused_submission_is_a_clear_error(slurm, tmp_path):
    """sbatch's own refusal (unknown partition) comes back as SchedulerError; the folder is failed."""
    from atomscore.jobs.scheduler import SchedulerError

    wf = slurm_workflow(tmp_path, queue="no_such_partition")
    with pytest.raises(SchedulerError, match="(?i)invalid partition"):
        SleepScore().run("refused", make_configs(1), {"score_quantity": "SENSITIVITY"}, workflow=wf)
    (folder,) = (tmp_path / "SleepScore" / "refused").glob("*/0*")  # <run>/<NNNNN>
    assert read_status(folder)["state"] == "failed" and read_status(folder)["reason"] == "not submitted"


# --------------------------------------------------------------------------- dependencies
def test_dependent_jobs_start_after_their_dependency(slurm, tmp_path):
    wf = slurm_workflow(tmp_path)
    score = SleepScore()
    first = score.run("first", make_configs(1), {"score_quantity": "SENSITIVITY", "seconds": 2}, workflow=wf)
    second = score.run("second", make_configs(2), {"score_quantity": "SENSITIVITY"}, workflow=wf,
                       job_details={"dependencies": first})
    record = json.loads((Path(second[0]) / "scheduler.json").read_text())
    assert record["custom_attributes"]["slurm.dependency"] == f"afterok:{wf.native_id(first[0])}"
    wf.block_until_completed(first + second)
    end_first = read_status(first[0])["end_time"]
    assert all(read_status(s)["start_time"] >= end_first for s in second)


def test_a_job_whose_dependency_failed_never_runs(slurm, tmp_path):
    wf = slurm_workflow(tmp_path)
    score = SleepScore()
    first = score.run("bad", make_configs(1), {"score_quantity": "SENSITIVITY", "fail": True}, workflow=wf)
    second = score.run("after_bad", make_configs(1), {"score_quantity": "SENSITIVITY"}, workflow=wf,
                       job_details={"dependencies": first})
    with pytest.raises(JobFailedError) as info:
        wf.block_until_completed(first + second, timeout=180)
    reasons = {f["calc_id"]: f["reason"] for f in info.value.failures}
    assert reasons[second[0]] == "dependency failed"
    assert "start_time" not in read_status(second[0])  # its runner never started


# --------------------------------------------------------------------------- restart
def test_a_new_process_reattaches_to_running_and_finished_jobs(slurm, tmp_path):
    """Jobs submitted by a Python process that then exits are followed by a new process's workflow."""
    script = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_slurm import SleepScore, make_configs
        from atomscore.jobs.scheduler import SlurmWorkflow
        wf = SlurmWorkflow(root_directory={str(tmp_path)!r}, walltime=600)
        ids = SleepScore().run("restart", make_configs(3), {{"score_quantity": "SENSITIVITY", "seconds": 3}},
                               workflow=wf)
        print(json.dumps(ids))
    """)
    out = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, check=True,
                         timeout=120, cwd=tmp_path).stdout
    ids = json.loads(out.strip().splitlines()[-1])
    assert len(ids) == 3
    assert any(not read_status(i).get("end_time") for i in ids)  # not all finished when we re-attach
    fresh = slurm_workflow(tmp_path)
    states = fresh.block_until_completed(ids, timeout=180)
    assert set(states.values()) == {"done"}
    configs = make_configs(3)
    assert np.array_equal(volumes(SleepScore().data_from_calc_ids(ids, cleanup=False)),
                          [a.get_volume() for a in configs])
    later = slurm_workflow(tmp_path)  # and once more, after everything finished
    assert [later.state(i) for i in ids] == ["done"] * 3


# --------------------------------------------------------------------------- scheduler unreachable
def test_the_wait_does_not_hang_when_slurmctld_stops_answering(slurm, tmp_path):
    """slurmctld is frozen with SIGSTOP (a hung controller): the wait raises SchedulerError after
    scheduler_timeout instead of waiting forever; once it answers again the job is followed on."""
    from atomscore.jobs.scheduler import SchedulerError

    wf = slurm_workflow(tmp_path, scheduler_timeout=3)
    ids = SleepScore().run("hang", make_configs(1), {"score_quantity": "SENSITIVITY", "seconds": 600},
                           workflow=wf)
    wait_until_running(ids[0])
    ctld = int((PID_DIR / "slurmctld.pid").read_text())
    os.kill(ctld, signal.SIGSTOP)
    try:
        with pytest.raises(SchedulerError, match="has not answered"):
            wf.block_until_completed(ids, timeout=300)
        assert read_status(ids[0])["state"] == "running"  # not declared failed: we do not know
    finally:
        os.kill(ctld, signal.SIGCONT)
    wf.cancel(ids)
    with pytest.raises(JobFailedError, match="cancelled"):
        wf.block_until_completed(ids, timeout=120)


# --------------------------------------------------------------------------- construction
def test_workflows_from_the_seed_dict_form(tmp_path):
    from atomscore.jobs.scheduler import PSIJWorkflow, SlurmWorkflow

    wf = make_workflow({"workflow_type": "SLURM", "workflow_args": {
        "root_directory": str(tmp_path), "queue": "debug", "account": "proj", "walltime": "01:30:00",
        "nodes": 2, "tasks_per_node": 4, "custom_attributes": {"qos": "low"}}})
    assert isinstance(wf, SlurmWorkflow) and wf.executor_name == "slurm"
    assert (wf.queue, wf.account, wf.walltime.total_seconds(), wf.nodes, wf.tasks_per_node) == \
        ("debug", "proj", 5400.0, 2, 4)
    assert wf.custom_attributes == {"slurm.qos": "low"}
    for kind in ("LSF", "PBS", "FLUX"):
        other = make_workflow({"workflow_type": kind, "workflow_args": {"root_directory": str(tmp_path)}})
        assert type(other) is PSIJWorkflow and other.executor_name == kind.lower()


@pytest.mark.parametrize("args, match", [
    ({"walltime": "ten minutes"}, "walltime"),
    ({"walltime": -5}, "walltime"),
    ({"nodes": 0}, "nodes"),
    ({"tasks_per_node": 1.5}, "tasks_per_node"),
    ({"custom_attributes": {"bad key": "x"}}, "custom_attributes"),
    ({"custom_attributes": {"qos": "a\nb"}}, "newline"),
    ({"no_such_argument": 1}, "no_such_argument"),
])
def test_bad_workflow_args_are_input_errors(tmp_path, args, match):
    with pytest.raises(InputError, match=match):
        make_workflow({"workflow_type": "SLURM", "workflow_args": {"root_directory": str(tmp_path), **args}})


def test_bad_job_details_are_input_errors(tmp_path):
    wf = slurm_workflow(tmp_path)
    with pytest.raises(InputError, match=r"unknown key\(s\) \[.partition_name.\]"):
        wf.check_job_details({"partition_name": "x"})
    with pytest.raises(InputError, match="dependencies"):
        wf.check_job_details({"dependencies": [str(tmp_path / "nowhere")]})
    details = wf.check_job_details({"walltime": 90, "custom_attributes": {"mem": "1G"}})
    assert details["walltime"].total_seconds() == 90 and details["custom_attributes"] == {"slurm.mem": "1G"}


# --------------------------------------------------------------------------- the CLI
def test_atomscore_run_accepts_a_slurm_workflow(slurm, tmp_path):
    """``atomscore run SPEC.json`` with a SLURM workflow writes the same numbers as compute_batch."""
    from atomscore.io import read_extxyz, write_extxyz
    from atomscore.quests import QUESTSDeltaEntropyScore

    configs = make_configs(3, seed=5)
    write_extxyz(tmp_path / "configs.xyz", configs)
    reference = np.random.default_rng(2).random((30, 5))
    np.save(tmp_path / "reference.npy", reference)
    spec = {"score": {"score_type": "QUESTSDeltaEntropyScore", "score_args": {},
                      "compute_args": {"score_quantity": "DELTA_ENTROPY", "reference_set": "reference.npy",
                                       "bandwidth": 0.3, "descriptors_key": "descriptors"},
                      "query_configs_path": "configs.xyz", "path_type": "cli"},
            "batch_size": 2,
            "workflow": {"workflow_type": "SLURM", "workflow_args": {
                "root_directory": str(tmp_path / "jobs"), "walltime": 600, "poll_interval": 0.5}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    result = subprocess.run([sys.executable, "-m", "atomscore.cli", "run", "spec.json", "--output", "out.xyz"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
    assert result.returncode == 0, result.stdout
    assert all(json.loads(p.read_text())["executor"] == "slurm"
               for p in (tmp_path / "jobs").rglob("scheduler.json"))
    out = read_extxyz(tmp_path / "out.xyz")
    direct = QUESTSDeltaEntropyScore().compute_batch(configs, "DELTA_ENTROPY", reference_set=reference,
                                                     bandwidth=0.3, descriptors_key="descriptors")
    assert len(out) == 3
    for atoms, ref in zip(out, direct):
        assert np.allclose(atoms.arrays["quests_delta_entropy_score"], ref, rtol=1e-12, atol=0)


# --------------------------------------------------------------------------- walltime (checked last)
def test_a_job_past_its_walltime_is_reported_as_timed_out(walltime_job):
    wf, ids = walltime_job
    with pytest.raises(JobFailedError, match="walltime") as info:
        wf.block_until_completed(ids, timeout=400)
    (failure,) = info.value.failures
    assert failure["reason"] == "timeout"
    assert read_status(ids[0])["scheduler_state"] == "FAILED"
