"""Scheduler workflows: job folders run as batch jobs through PSI/J.

`PSI/J <https://exaworks.org/psij>`_ (``psij-python``) speaks to SLURM, LSF, PBS and Flux
through one API: it writes the batch script, submits it, and builds and parses the
scheduler's status command. We do not hand-write ``sbatch``/``squeue`` handling.

What a scheduler workflow adds to a job folder::

    scheduler.json   executor, PSI/J job id, native (scheduler) job id, what was asked
                     (queue, account, walltime, nodes, ...) and the last scheduler state seen
    stdout.log  stderr.log   the runner's output (written by the batch job)

``status.json`` (written by the runner, ``python -m atomscore.job FOLDER``) stays the record
of ``done`` and ``failed``. The scheduler says what only it can see: pending, running,
cancelled, past its walltime, or gone without a result; those end states are written into
``status.json`` as ``failed`` with a ``reason``. Because the ids live in the folder, a new
workflow object (after the Python process restarted) re-attaches to running and finished
jobs just by being asked about their calc ids.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path

from atomscore.errors import InputError, SchedulerError, missing_extra
from atomscore.io import write_json_atomic
from atomscore.jobs.folder import (ATTEMPT_ENV, FILES, FailureReason, JobState, check_submittable, now, read_status,
                                   state_of, tail_text, update_status)
from atomscore.jobs.workflow import DEFAULT_ROOT, Workflow, check_env, job_command
from atomscore.validation import check_choice, check_int, check_keys, check_positive

SCHEDULER_FILE = FILES.scheduler
EXECUTORS = ("slurm", "lsf", "pbs", "flux")
#: keys accepted in ``job_details`` (per run) besides the constructor's
JOB_DETAIL_KEYS = ("queue", "account", "walltime", "nodes", "tasks_per_node", "custom_attributes",
                   "dependencies", "env", "name")
_DEBIAN = {"slurm": ["slurmctld", "slurmd", "slurm-client", "munge"]}
_SUBMIT_COMMANDS = {"slurm": "sbatch", "lsf": "bsub", "pbs": "qsub"}
_ATTRIBUTE_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_\-]*(\.[A-Za-z][A-Za-z0-9_\-]*)?$")
#: how each batch system names "run after these jobs ended successfully" (PSI/J has no
#: portable dependency attribute, so it goes in as a custom attribute)
_DEPENDENCY_ATTRIBUTE = {
    "slurm": ("slurm.dependency", lambda ids: "afterok:" + ":".join(ids)),
    "pbs": ("pbs.W", lambda ids: "depend=afterok:" + ":".join(ids)),
    "lsf": ("lsf.w", lambda ids: " && ".join(f"done({i})" for i in ids)),
}



# --------------------------------------------------------------------------- arguments
def parse_walltime(value, name="walltime"):
    """A walltime as a :class:`datetime.timedelta`.

    Parameters
    ----------
    value : float, int, str, timedelta or None
        Seconds, or ``"[D-]HH:MM:SS"``, ``"MM:SS"``, or a timedelta. ``None`` means the
        scheduler's default.

    Notes
    -----
    SLURM counts walltimes in whole minutes; shorter values are rounded up to one minute.
    """
    if value is None:
        return None
    if isinstance(value, datetime.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)\s*", value)
        if not match:
            raise InputError(f"{name}: expected seconds or 'HH:MM:SS' / 'D-HH:MM:SS', got {value!r}")
        days, hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
        seconds = ((days * 24 + hours) * 60 + minutes) * 60 + secs
    else:
        seconds = check_positive(value, name, allow_array=False)
    if not seconds > 0:
        raise InputError(f"{name}: expected a positive duration, got {value!r}")
    return datetime.timedelta(seconds=seconds)


def _custom_attributes(executor, attrs, name):
    """``{'qos': 'x', 'slurm.mem': '1G'}`` -> ``{'slurm.qos': 'x', 'slurm.mem': '1G'}`` (a new dict)."""
    if attrs is None:
        return {}
    if not isinstance(attrs, dict):
        raise InputError(f"{name}: expected a dict of scheduler attributes, got {type(attrs).__name__}")
    out = {}
    for key, value in attrs.items():
        if not isinstance(key, str) or not _ATTRIBUTE_KEY.match(key):
            raise InputError(f"{name}: attribute names are letters, digits, '-', '_' (optionally "
                             f"'{executor}.name'), got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InputError(f"{name}[{key!r}]: expected a string or a number, got {value!r}")
        if "\n" in str(value):
            raise InputError(f"{name}[{key!r}]: a scheduler attribute cannot hold a newline")
        out[key if "." in key else f"{executor}.{key}"] = str(value)
    return out


def _check_optional_str(value, name):
    if value is not None and (not isinstance(value, str) or not value or "\n" in value):
        raise InputError(f"{name}: expected a non-empty string or None, got {value!r}")
    return value


def _read_record(folder):
    try:
        return json.loads((Path(folder) / SCHEDULER_FILE).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _tail(path, lines=20):
    return tail_text(path, lines)


def _call_with_timeout(func, timeout, what):
    """Run ``func()`` in a helper thread; raise SchedulerError if it does not return in time.

    PSI/J's own command calls have no timeout; this keeps a hung scheduler from hanging us.
    """
    box = {}

    def target():
        try:
            box["value"] = func()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True, name=f"atomscore-{what}")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise SchedulerError(f"{what}: the scheduler did not answer within {timeout:g} s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


# --------------------------------------------------------------------------- workflow
class PSIJWorkflow(Workflow):
    """Run job folders as batch jobs of SLURM, LSF, PBS or Flux, through PSI/J.

    Parameters
    ----------
    executor : {'slurm', 'lsf', 'pbs', 'flux'}
        The PSI/J executor (batch system).
    root_directory : str or Path
        Where job folders are written; must be visible from the compute nodes.
        PSI/J's batch scripts go to ``root/.psij/``.
    queue : str, optional
        Partition (SLURM) or queue name; default: the scheduler's default.
    account : str, optional
        Account / project to charge.
    walltime : float, str or timedelta, optional
        Per job: seconds, ``"HH:MM:SS"`` or ``"D-HH:MM:SS"``. SLURM rounds up to minutes.
    nodes : int
        Nodes per job.
    tasks_per_node : int
        Tasks (cores) reserved per node. The job runs one runner process, which may use them.
    custom_attributes : dict, optional
        Extra scheduler directives, e.g. ``{'qos': 'debug', 'mem': '4G'}`` (prefixed with the
        executor name when given without one: ``slurm.qos`` -> ``#SBATCH --qos="debug"``).
    poll_interval : float
        Seconds between scheduler queries while waiting.
    scheduler_timeout : float
        Seconds the scheduler may fail to answer (status command failing or hanging)
        before a wait raises :class:`SchedulerError`; also the limit of one submission.

    Notes
    -----
    ``job_details`` (per :meth:`submit`, i.e. per ``score.run``) may hold ``queue``,
    ``account``, ``walltime``, ``nodes``, ``tasks_per_node``, ``custom_attributes`` (merged
    over the workflow's), ``env`` (extra environment variables), ``name`` (job name) and
    ``dependencies``: calc ids of earlier jobs of this scheduler that must end successfully
    before these start (SLURM ``afterok``, PBS ``depend=afterok``, LSF ``done()``).
    """

    #: seconds a job that left the queue may take to show its final status.json before it
    #: is declared failed (``ended without a result``); covers NFS attribute caching
    RESULT_GRACE_S = 30.0

    def __init__(self, executor="slurm", root_directory=DEFAULT_ROOT, queue=None, account=None,
                 walltime=None, nodes=1, tasks_per_node=1, custom_attributes=None,
                 poll_interval=2.0, scheduler_timeout=120.0):
        executor = check_choice(str(executor).lower() if isinstance(executor, str) else executor,
                                "executor", EXECUTORS)
        poll_interval = check_positive(poll_interval, "poll_interval", allow_array=False)
        super().__init__(root_directory, poll_interval)
        self.executor_name = executor
        self.queue = _check_optional_str(queue, "queue")
        self.account = _check_optional_str(account, "account")
        self.walltime = parse_walltime(walltime)
        self.nodes = check_int(nodes, "nodes", minimum=1)
        self.tasks_per_node = check_int(tasks_per_node, "tasks_per_node", minimum=1)
        self.custom_attributes = _custom_attributes(executor, custom_attributes, "custom_attributes")
        self.scheduler_timeout = check_positive(scheduler_timeout, "scheduler_timeout", allow_array=False)
        self._executor = None
        self._lock = threading.Lock()
        self._last_query = None         # monotonic time of the last status query
        self._unanswered_since = None   # monotonic time the scheduler stopped answering
        self._last_problem = ""
        self._attached = {}             # native id -> psij.Job (executors without a status command)

    # ------------------------------------------------------------------ psij
    @property
    def psij_executor(self):
        """The PSI/J ``JobExecutor`` (created on first use)."""
        with self._lock:
            if self._executor is None:
                self._executor = self._make_executor()
            return self._executor

    def _make_executor(self):
        try:
            import psij
        except ImportError as exc:  # psij-python comes with the [hpc] extra
            raise missing_extra(f"{type(self).__name__}", "hpc", cause=exc) from None
        work = self.root / ".psij"
        if self.executor_name == "flux":
            config = psij.JobExecutorConfig(work_directory=work)
        else:
            if self.executor_name == "slurm":
                from psij.executors.batch.slurm import SlurmExecutorConfig as Config
            elif self.executor_name == "lsf":
                from psij.executors.batch.lsf import LsfExecutorConfig as Config
            else:
                from psij.executors.batch.pbs_base import PBSExecutorConfig as Config
            # We poll ourselves (with a timeout); PSI/J's own polling thread only needs to
            # run rarely and must never declare jobs failed because a poll failed.
            config = Config(work_directory=work, queue_polling_interval=60,
                            initial_queue_polling_delay=60, queue_polling_error_threshold=10**9,
                            keep_files=True)
        try:
            return psij.JobExecutor.get_instance(self.executor_name, config=config)
        except Exception as exc:
            raise missing_extra(f"{type(self).__name__}(executor={self.executor_name!r})",
                                self.executor_name, debian=_DEBIAN.get(self.executor_name, ()),
                                cause=exc) from None

    def _check_commands(self):
        command = _SUBMIT_COMMANDS.get(self.executor_name)
        if command and shutil.which(command) is None:
            raise missing_extra(f"{type(self).__name__}: the '{command}' command (not on PATH)",
                                self.executor_name, debian=_DEBIAN.get(self.executor_name, ()))

    # ------------------------------------------------------------------ submit
    def check_job_details(self, job_details):
        """Validate ``job_details`` (see the class notes) without submitting anything.

        Returns
        -------
        dict
            The resolved settings of a job: the workflow's, overridden by ``job_details``.

        Raises
        ------
        InputError
            Unknown keys, malformed values, or dependencies that are not scheduler jobs.
        """
        return self._details(job_details)

    def _details(self, job_details):
        if job_details is not None and not isinstance(job_details, dict):
            raise InputError(f"job_details: expected a dict or None, got {type(job_details).__name__}")
        details = dict(job_details or {})
        check_keys(details, JOB_DETAIL_KEYS, f"{type(self).__name__} job_details")
        out = {
            "queue": _check_optional_str(details.get("queue", self.queue), "job_details['queue']"),
            "account": _check_optional_str(details.get("account", self.account), "job_details['account']"),
            "walltime": (parse_walltime(details["walltime"], "job_details['walltime']")
                         if "walltime" in details else self.walltime),
            "nodes": check_int(details.get("nodes", self.nodes), "job_details['nodes']", minimum=1),
            "tasks_per_node": check_int(details.get("tasks_per_node", self.tasks_per_node),
                                        "job_details['tasks_per_node']", minimum=1),
            "custom_attributes": {**self.custom_attributes,
                                  **_custom_attributes(self.executor_name, details.get("custom_attributes"),
                                                       "job_details['custom_attributes']")},
            "name": _check_optional_str(details.get("name"), "job_details['name']"),
        }
        env = check_env(details.get("env"))
        if not all(k.isidentifier() for k in env):
            raise InputError(f"job_details['env']: a batch job's variable names are identifiers, got {list(env)!r:.80}")
        out["env"] = env
        deps = details.get("dependencies") or []
        if isinstance(deps, (str, os.PathLike)):
            deps = [deps]
        native, dep_folders = [], []
        for dep in deps:
            try:
                dep_folder = self.folder(dep)
            except InputError as exc:
                raise InputError(f"job_details['dependencies']: {exc}") from None
            record = _read_record(dep_folder)
            if not record or not record.get("native_id"):
                raise InputError(f"job_details['dependencies']: {dep!r} was not submitted through a scheduler workflow")
            native.append(str(record["native_id"]))
            dep_folders.append(str(dep_folder.resolve()))
        if native:
            if self.executor_name not in _DEPENDENCY_ATTRIBUTE:
                raise InputError(f"job_details['dependencies']: not supported for executor {self.executor_name!r}; "
                                 f"supported for: {', '.join(_DEPENDENCY_ATTRIBUTE)}")
            key, fmt = _DEPENDENCY_ATTRIBUTE[self.executor_name]
            out["custom_attributes"][key] = fmt(native)
        out["dependencies"] = native
        out["dependency_folders"] = dep_folders
        return out

    def _job_spec(self, folder, details, attempt):
        import psij

        command = job_command(folder)
        if details["dependency_folders"]:
            # Batch scripts written by PSI/J end with exit code 0 whatever the runner did, so
            # the scheduler's "afterok" only orders the jobs; this guard (see _main) runs the
            # job only if every dependency's status.json says done.
            command = [command[0], "-m", "atomscore.jobs.scheduler", "--after",
                       *details["dependency_folders"], "--", str(folder)]
        attributes = psij.JobAttributes(queue_name=details["queue"], account=details["account"],
                                        custom_attributes=details["custom_attributes"] or None)
        attributes.duration = details["walltime"]  # None: no --time, the partition's default
        resources = psij.ResourceSpecV1(node_count=details["nodes"],
                                        processes_per_node=details["tasks_per_node"])
        # Unique per job (its job id), so that a submission whose answer was lost can be
        # found again by name (see _reconcile).
        job_id = (read_status(folder).get("job_id") or uuid.uuid4().hex)[:8]
        name = f"{details['name'] or 'atomscore-' + '-'.join(folder.parts[-3:])}-{job_id}"
        return psij.JobSpec(executable=command[0], arguments=command[1:], directory=folder,
                            name=re.sub(r"[^A-Za-z0-9_.\-]", "_", name),
                            environment={**details["env"], ATTEMPT_ENV: attempt}, inherit_environment=True,
                            stdout_path=folder / FILES.stdout, stderr_path=folder / FILES.stderr,
                            attributes=attributes, resources=resources)

    def submit(self, folder, job_details=None) -> str:
        """Submit the job in ``folder`` to the scheduler; return its calc id (the folder's path).

        Raises
        ------
        InputError
            For unknown or malformed ``job_details``.
        SchedulerError
            If the scheduler refused the job or did not answer within ``scheduler_timeout``;
            the folder is then marked failed.
        """
        import psij

        folder = check_submittable(folder)
        details = self._details(job_details)
        self._check_commands()
        executor = self.psij_executor
        attempt = uuid.uuid4().hex
        job = psij.Job(self._job_spec(folder, details, attempt))
        # Written before the job can start, so the runner's later writes are never overwritten.
        update_status(folder, state=JobState.PENDING, submitted=now(), workflow=self.executor_name,
                      exit_code=None, error=None, reason=None, attempt=attempt)
        native_id, reconciled = None, False
        try:
            _call_with_timeout(lambda: executor.submit(job), self.scheduler_timeout,
                               f"submitting {folder} to {self.executor_name}")
            native_id = job.native_id
        except Exception as exc:
            message = f"{self.executor_name} refused the job: {type(exc).__name__}: {exc}".strip()
            if isinstance(exc, SchedulerError):
                message = str(exc)
                native_id = self._reconcile(job)  # timed out: it may have been submitted all the same
                reconciled = native_id is not None
            if native_id is None:
                update_status(folder, state=JobState.FAILED, reason=FailureReason.NOT_SUBMITTED, exit_code=None,
                              error=message, end_time=now())
                raise SchedulerError(f"{folder}: {message}") from None
        record = {
            "executor": self.executor_name,
            "psij_id": job.id,
            "native_id": str(native_id),
            "reconciled": reconciled,  # the submission timed out; found again in the queue
            "submitted": now(),
            "submit_script": str(executor.work_directory / f"{job.id}.job")
            if hasattr(executor, "work_directory") else None,
            "scheduler_output": str(executor.work_directory / f"{job.native_id}.out")
            if hasattr(executor, "work_directory") else None,
            "queue": details["queue"], "account": details["account"],
            "walltime_s": details["walltime"].total_seconds() if details["walltime"] else None,
            "nodes": details["nodes"], "tasks_per_node": details["tasks_per_node"],
            "custom_attributes": details["custom_attributes"], "dependencies": details["dependencies"],
            "scheduler_state": "QUEUED", "scheduler_message": None,
        }
        write_json_atomic(folder / SCHEDULER_FILE, record)
        if self.executor_name == "flux":
            self._attached[record["native_id"]] = job
        return str(folder)

    #: seconds a submission that timed out is looked for in the scheduler's queue (by name)
    RECONCILE_S = 15.0

    def _reconcile(self, job):
        """After a submission timed out: the scheduler's id of the job if it was submitted all
        the same (PSI/J's late answer, or the queue listing the job's unique name), else None."""
        if self.executor_name != "slurm":
            return job.native_id
        end = time.monotonic() + self.RECONCILE_S
        while True:
            if job.native_id is not None:
                return job.native_id
            try:
                found = subprocess.run(["squeue", "-h", "-o", "%i", "-n", job.spec.name], stdout=subprocess.PIPE,
                                       stderr=subprocess.DEVNULL, text=True, timeout=10,
                                       stdin=subprocess.DEVNULL).stdout.split()
            except (OSError, subprocess.TimeoutExpired):
                found = []
            if len(found) == 1:
                return found[0]
            if time.monotonic() > end:
                return None
            time.sleep(0.5)

    # ------------------------------------------------------------------ state
    def native_id(self, calc_id) -> str:
        """The scheduler's id of the job ``calc_id`` (from its folder)."""
        record = _read_record(self.folder(calc_id))
        if not record:
            raise InputError(f"calc id {calc_id!r}: not submitted through a scheduler workflow (no {SCHEDULER_FILE})")
        return record["native_id"]

    def scheduler_state(self, calc_id) -> str:
        """The last scheduler state seen for ``calc_id``: a PSI/J state name
        (``QUEUED``, ``ACTIVE``, ``COMPLETED``, ``FAILED``, ``CANCELED``) after querying."""
        folder = self.folder(calc_id)
        self._query([folder], force=True)
        return (_read_record(folder) or {}).get("scheduler_state")

    def poll(self, folders):
        """Ask the scheduler about the open jobs among ``folders`` (at most once per
        ``poll_interval``) and record cancelled, timed-out and vanished jobs as failed.

        Raises
        ------
        SchedulerError
            When the scheduler has not answered for ``scheduler_timeout`` seconds.
        """
        self._query(folders, force=False)

    def _query(self, folders, force):
        open_jobs = {}
        for folder in folders:
            folder = Path(folder)
            status = read_status(folder)
            if state_of(status).final:
                continue
            record = _read_record(folder)
            if record is None:
                self._unrecorded(folder, status)
                continue
            open_jobs[folder] = record
        if not open_jobs:
            return
        start = time.monotonic()
        if not force and self._last_query is not None and start - self._last_query < self.poll_interval:
            return
        self._last_query = start
        native_ids = sorted({r["native_id"] for r in open_jobs.values()})
        if self.executor_name == "flux":
            states = self._states_from_attached(native_ids)
        else:
            states = self._states_from_command(native_ids)
        if states is None:
            return
        for folder, record in open_jobs.items():
            self._apply(folder, record, states.get(record["native_id"]))

    def _states_from_command(self, native_ids):
        """``{native_id: psij.JobStatus}`` from the scheduler's status command (PSI/J builds
        and parses it); ``None`` when the scheduler did not answer (yet)."""
        executor = self.psij_executor
        command = executor.get_status_command(native_ids)
        now_t = time.monotonic()
        budget = self.scheduler_timeout - (now_t - self._unanswered_since if self._unanswered_since else 0.0)
        try:
            result = subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                    timeout=max(1.0, budget), stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return self._no_answer(now_t, f"{' '.join(command)} did not return within {max(1.0, budget):.0f} s")
        except OSError as exc:
            return self._no_answer(now_t, f"{' '.join(command)} could not run: {exc}")
        try:
            states = executor.parse_status_output(result.returncode, result.stdout)
        except Exception as exc:  # noqa: BLE001 - a refusal or unreadable answer
            states = self._parse_lines(executor, result, native_ids)
            if states is None:
                output = (result.stdout + result.stderr).strip()[-500:]
                return self._no_answer(now_t, f"{' '.join(command)} exited with {result.returncode}: "
                                              f"{type(exc).__name__}: {exc}; output: {output!r}")
        self._unanswered_since = None
        self._last_problem = ""
        return states

    @staticmethod
    def _parse_lines(executor, result, native_ids):
        """If one line of a tabular answer is not understood (e.g. a state PSI/J does not map),
        parse the others one by one, so one odd job does not blind us to the rest."""
        lines = result.stdout.splitlines()
        if result.returncode != 0 or len(lines) < 2:
            return None
        from psij import JobState as PState, JobStatus

        states = {}
        for line in lines[1:]:
            if not line.strip():
                continue
            try:
                states.update(executor.parse_status_output(0, lines[0] + "\n" + line + "\n"))
            except Exception:  # noqa: BLE001
                for native_id in native_ids:
                    if line.split() and line.split()[0] == native_id:
                        states[native_id] = JobStatus(PState.FAILED, message=f"scheduler state: {line.strip()}")
        return states

    def _no_answer(self, started, problem):
        if self._unanswered_since is None:
            self._unanswered_since = started
        self._last_problem = problem
        waited = time.monotonic() - self._unanswered_since
        if waited >= self.scheduler_timeout:
            self._unanswered_since = None
            raise SchedulerError(f"the {self.executor_name} scheduler has not answered for {waited:.0f} s "
                                 f"(scheduler_timeout={self.scheduler_timeout:g} s): {problem}. "
                                 "The jobs may still be queued or running; wait again, or check the "
                                 "scheduler (for scripts/slurm-local: 'scripts/slurm-local status').")
        return None

    def _states_from_attached(self, native_ids):
        import psij

        states = {}
        for native_id in native_ids:
            job = self._attached.get(native_id)
            if job is None:
                job = psij.Job()
                _call_with_timeout(lambda: self.psij_executor.attach(job, native_id), self.scheduler_timeout,
                                   f"attaching to {self.executor_name} job {native_id}")
                self._attached[native_id] = job
            states[native_id] = job.status
        return states

    def _apply(self, folder, record, status):
        """Record what the scheduler says about one open job; fail it if it ended without a result."""
        if status is None:
            # Not in the scheduler's list any more: finished and purged (see MinJobAge).
            state, message = "COMPLETED", None
        else:
            state, message = status.state.name, status.message
        if state != record.get("scheduler_state") or message != record.get("scheduler_message"):
            record = {**record, "scheduler_state": state, "scheduler_message": message,
                      "scheduler_seen": now()}
            if state in ("FAILED", "CANCELED"):
                record["scheduler_end_state"] = state
            write_json_atomic(folder / SCHEDULER_FILE, record)
        if state in ("NEW", "QUEUED", "ACTIVE"):
            return
        if state == "COMPLETED" and not state_of(read_status(folder)).final:
            # Gone without a final status.json. On a shared file system the runner's last write
            # may not be visible here yet (NFS attribute caching): allow RESULT_GRACE_S for it.
            first = record.get("ended_without_result_since")
            if first is None:
                record = {**record, "ended_without_result_since": time.time()}
                write_json_atomic(folder / SCHEDULER_FILE, record)
                first = record["ended_without_result_since"]
            if time.time() - first < self.RESULT_GRACE_S:
                return
        # The scheduler says the job ended; the runner's status.json is written before the
        # runner exits, so a job still open here did not finish normally.
        status_now = read_status(folder)
        if state_of(status_now).final:
            return
        end_state = record.get("scheduler_end_state", state)
        end_message = message or record.get("scheduler_message")
        if end_state == "CANCELED":
            reason = FailureReason.CANCELLED
            error = f"{self.executor_name} job {record['native_id']} was cancelled"
        elif end_state == "FAILED" and end_message and _is_time_limit(end_message):
            walltime = record.get("walltime_s")
            reason = FailureReason.TIMEOUT
            error = (f"{self.executor_name} job {record['native_id']} passed its walltime"
                     + (f" of {walltime:g} s" if walltime else "") + f": {end_message}")
        elif end_state == "FAILED":
            reason = FailureReason.SCHEDULER_FAILED
            error = f"{self.executor_name} job {record['native_id']}: {end_message or 'failed'}"
        else:
            reason = FailureReason.NO_RESULT
            error = (f"{self.executor_name} job {record['native_id']} left the queue but the runner "
                     "recorded no result (killed, out of memory, or past its walltime)")
        tail = _tail(folder / FILES.stderr) or _tail(record.get("scheduler_output") or "")
        update_status(folder, state=JobState.CANCELLED if reason is FailureReason.CANCELLED else JobState.FAILED,
                      reason=reason, error=error, end_time=now(),
                      exit_code=status_now.get("exit_code"),
                      scheduler_state=end_state, **({"scheduler_output_tail": tail} if tail else {}))

    def _unrecorded(self, folder, status):
        """A folder with no scheduler record: submission was interrupted, or it is not ours."""
        submitted = status.get("submitted")
        if status.get("workflow") == self.executor_name and submitted:
            try:
                age = time.time() - time.mktime(time.strptime(submitted, "%Y-%m-%dT%H:%M:%S%z"))
            except (ValueError, OverflowError):
                age = float("inf")
            if age < self.scheduler_timeout:
                return  # being submitted right now, by another process
        update_status(folder, state=JobState.FAILED, reason=FailureReason.NOT_SUBMITTED, end_time=now(),
                      error=f"no {SCHEDULER_FILE}: this job was never submitted to {self.executor_name} "
                            "(submission interrupted, or the folder belongs to another workflow)")

    # ------------------------------------------------------------------ cancel
    def cancel(self, calc_ids):
        """Cancel the given jobs in the scheduler (``scancel``/``bkill``/``qdel``) and mark the
        open ones cancelled; folders never submitted are marked cancelled too."""
        problems = []
        for calc_id in calc_ids:
            folder = self.folder(calc_id)
            if state_of(read_status(folder)).final:
                continue
            record = _read_record(folder)
            if record and record.get("native_id"):
                try:
                    self._cancel_native(record["native_id"])
                except SchedulerError as exc:
                    problems.append(str(exc))
                    continue
            update_status(folder, only_if=lambda s: not state_of(s).final, state=JobState.CANCELLED,
                          reason=FailureReason.CANCELLED, end_time=now(),
                          **({"scheduler_state": "CANCELED"} if record else {}),
                          error=(f"{self.executor_name} job {record['native_id']} was cancelled" if record
                                 else "cancelled before it was submitted"))
        if problems:
            raise SchedulerError("; ".join(problems))

    def _cancel_native(self, native_id):
        executor = self.psij_executor
        if self.executor_name == "flux":
            job = self._attached.get(native_id)
            if job is None:
                import psij

                job = psij.Job()
                executor.attach(job, native_id)
            _call_with_timeout(lambda: executor.cancel(job), self.scheduler_timeout, f"cancelling {native_id}")
            return
        command = executor.get_cancel_command(native_id)
        try:
            subprocess.run(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                           timeout=self.scheduler_timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            raise SchedulerError(f"{' '.join(command)} did not return within {self.scheduler_timeout:g} s") from None

    def __repr__(self):
        return (f"{type(self).__name__}(executor={self.executor_name!r}, root_directory={str(self.root)!r}, "
                f"queue={self.queue!r}, account={self.account!r}, walltime={self.walltime}, "
                f"nodes={self.nodes}, tasks_per_node={self.tasks_per_node})")


def _is_time_limit(message) -> bool:
    text = str(message).lower()
    return "time limit" in text or "timelimit" in text or "walltime" in text


class SlurmWorkflow(PSIJWorkflow):
    """Run job folders as SLURM batch jobs (:class:`PSIJWorkflow` with ``executor='slurm'``).

    Parameters
    ----------
    root_directory : str or Path
        Where job folders are written; must be visible from the compute nodes.
    queue : str, optional
        The partition (``#SBATCH --partition``).
    account : str, optional
        ``#SBATCH --account``.
    walltime : float, str or timedelta, optional
        Seconds or ``"HH:MM:SS"``; SLURM rounds up to whole minutes.
    nodes, tasks_per_node : int
        ``--nodes`` and ``--ntasks-per-node``.
    custom_attributes : dict, optional
        More ``#SBATCH --key="value"`` lines, e.g. ``{'qos': 'debug', 'mem': '4G'}``.
    poll_interval : float
        Seconds between ``squeue`` calls while waiting.
    scheduler_timeout : float
        Seconds ``squeue`` may fail or hang before a wait raises :class:`SchedulerError`.

    Examples
    --------
    >>> wf = SlurmWorkflow(root_directory="jobs", queue="debug", walltime="00:30:00")  # doctest: +SKIP
    >>> ids = score.run("train", configs, {"score_quantity": "DELTA_ENTROPY"}, workflow=wf)  # doctest: +SKIP
    >>> wf.block_until_completed(ids)  # doctest: +SKIP
    """

    def __init__(self, root_directory=DEFAULT_ROOT, queue=None, account=None, walltime=None, nodes=1,
                 tasks_per_node=1, custom_attributes=None, poll_interval=2.0, scheduler_timeout=120.0,
                 executor="slurm"):
        if str(executor).lower() != "slurm":
            raise InputError(f"SlurmWorkflow: executor is always 'slurm', got {executor!r}; use PSIJWorkflow")
        super().__init__("slurm", root_directory, queue, account, walltime, nodes, tasks_per_node,
                         custom_attributes, poll_interval, scheduler_timeout)


# --------------------------------------------------------------------------- dependency guard
def _main(argv=None) -> int:
    """``python -m atomscore.jobs.scheduler --after DEP... -- FOLDER``: run FOLDER's job only
    if every dependency folder's ``status.json`` says ``done``; otherwise record FOLDER as
    failed (reason ``dependency failed``) without running it."""
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) < 4 or argv[0] != "--after" or "--" not in argv or argv.index("--") != len(argv) - 2:
        print("usage: python -m atomscore.jobs.scheduler --after DEP [DEP...] -- FOLDER", file=sys.stderr)
        return 2
    deps, folder = argv[1:-2], Path(argv[-1])
    for dep in deps:
        state = read_status(dep).get("state", "missing")
        if state != JobState.DONE.value:
            message = f"dependency {dep} is {state!r}, not 'done'; this job was not run"
            print(f"atomscore: {message}", file=sys.stderr)
            update_status(folder, state=JobState.FAILED, reason=FailureReason.DEPENDENCY_FAILED, exit_code=None,
                          error=message, end_time=now())
            return 1
    sys.stdout.flush()
    command = job_command(folder)
    os.execv(command[0], command)
    return 0  # pragma: no cover - execv does not return


if __name__ == "__main__":
    raise SystemExit(_main())
