"""Workflows: where job folders run.

A workflow only knows how to start a job folder and how to ask where it is. The runner
(``python -m atomscore.job FOLDER``) writes ``status.json``, which stays the record of
``done`` and ``failed``; a workflow adds what only it can see (pending in a queue,
killed, cancelled, past its walltime). Subclasses implement :meth:`Workflow.submit` and,
for a scheduler, :meth:`Workflow.poll`; scores never need to know which workflow runs them.
"""

from __future__ import annotations

import enum
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from atomscore.errors import InputError, JobFailedError
from atomscore.jobs.folder import JOB_FILE, job_folder, now, read_status, update_status
from atomscore.validation import check_keys

DEFAULT_ROOT = "./atomscore_jobs"
log = logging.getLogger(__name__)


class JobState(str, enum.Enum):
    """The states of a job; ``DONE`` and ``FAILED`` are final."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED)


def job_command(folder) -> list[str]:
    """The command that runs one job folder, with this interpreter."""
    return [sys.executable, "-m", "atomscore.job", str(Path(folder).resolve())]


def stderr_tail(folder, lines=20) -> str:
    """The last ``lines`` lines of a job's ``stderr.log`` ('' if none)."""
    try:
        text = (Path(folder) / "stderr.log").read_text(errors="replace")
    except FileNotFoundError:
        return ""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def failure_report(folders, calc_ids) -> list[dict]:
    """One dict per failed job among ``folders``: id, folder, state, exit code, error, stderr tail."""
    failures = []
    for calc_id, folder in zip(calc_ids, folders):
        status = read_status(folder)
        if status.get("state") == JobState.FAILED:
            failures.append({"calc_id": str(calc_id), "folder": str(folder), "state": status.get("state"),
                             "reason": status.get("reason"), "exit_code": status.get("exit_code"),
                             "error": status.get("error"), "stderr_tail": stderr_tail(folder)})
    return failures


def _log_finished(finished, total, visible_bar):
    """One log line per finished job: INFO when no progress bar shows it (not a terminal), else DEBUG."""
    level = logging.DEBUG if visible_bar else logging.INFO
    for folder in finished:
        status = read_status(folder)
        log.log(level, "job %s %s (%s s) of %d", folder, status.get("state"), status.get("seconds"), total)


def raise_failures(failures):
    if not failures:
        return
    parts = [f"{len(failures)} job(s) failed:"]
    for f in failures:
        parts.append(f"- {f['folder']}: {f.get('reason') or 'failed'}, exit code {f['exit_code']}: {f['error']}")
        if f["stderr_tail"]:
            parts.append("  stderr (last lines):\n    " + f["stderr_tail"].replace("\n", "\n    "))
    raise JobFailedError("\n".join(parts), failures)


def check_finished(folders, calc_ids):
    """Raise JobFailedError unless every job in ``folders`` is done."""
    raise_failures(failure_report(folders, calc_ids))
    unfinished = [str(f) for f in folders if read_status(f).get("state") != JobState.DONE]
    if unfinished:
        raise JobFailedError("jobs not finished yet (wait with block_until_completed first): "
                             + ", ".join(unfinished))


class Workflow:
    """Base of every workflow.

    Parameters
    ----------
    root_directory : str or Path
        Where job folders are written (``root/<ScoreClass>/<path_type>/<NNNNN>``).
    poll_interval : float
        Seconds between looks at job states while waiting.
    """

    def __init__(self, root_directory=DEFAULT_ROOT, poll_interval=0.2):
        self.root = Path(root_directory).resolve()
        self.poll_interval = float(poll_interval)

    # -- what a workflow implements
    def submit(self, folder, job_details=None) -> str:
        """Start the job in ``folder``; return its calc id (the folder's absolute path)."""
        raise NotImplementedError

    def poll(self, folders):
        """Update ``status.json`` of ``folders`` with what only the workflow knows (override)."""

    def check_job_details(self, job_details):
        """Validate ``job_details`` before any folder is written; return them as a dict.

        Raises
        ------
        InputError
            Not a dict, or keys this workflow does not know (override to check values).
        """
        if job_details is not None and not isinstance(job_details, dict):
            raise InputError(f"job_details: expected a dict or None, got {type(job_details).__name__}")
        return dict(job_details or {})

    # -- shared
    def folder(self, calc_id) -> Path:
        return job_folder(calc_id, self)

    def state(self, calc_id) -> JobState:
        """The job's current state."""
        folder = self.folder(calc_id)
        self.poll([folder])
        return JobState(read_status(folder).get("state", "pending"))

    def block_until_completed(self, calc_ids, timeout=None, raise_on_failure=True, progress=False):
        """Wait until every job is done or failed.

        Parameters
        ----------
        calc_ids : list of str
        timeout : float, optional
            Seconds; past it, :class:`~atomscore.errors.JobFailedError` names the jobs still open.
        raise_on_failure : bool
            Raise :class:`~atomscore.errors.JobFailedError` naming every failed job, its
            folder, exit code and the tail of its stderr.
        progress : bool
            Show a progress bar of finished jobs (quiet when not on a terminal).

        Returns
        -------
        dict
            calc id -> final :class:`JobState`.
        """
        calc_ids = list(calc_ids)
        folders = [self.folder(c) for c in calc_ids]
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(folders), desc="jobs", unit="job", disable=None)
        open_folders = list(folders)
        delay = min(0.05, self.poll_interval)
        try:
            while True:
                self.poll(open_folders)
                still = [f for f in open_folders if not JobState(read_status(f).get("state", "pending")).final]
                if bar is not None:
                    bar.update(len(open_folders) - len(still))
                _log_finished([f for f in open_folders if f not in still], len(folders),
                              visible_bar=bar is not None and not bar.disable)
                open_folders = still
                if not open_folders:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise JobFailedError(f"timed out after {timeout} s waiting for {len(open_folders)} job(s): "
                                         + ", ".join(map(str, open_folders)))
                time.sleep(delay)
                delay = min(delay * 1.5, self.poll_interval)
        finally:
            if bar is not None:
                bar.close()
        states = {c: JobState(read_status(f)["state"]) for c, f in zip(calc_ids, folders)}
        if raise_on_failure:
            raise_failures(failure_report(folders, calc_ids))
        return states

    def __repr__(self):
        return f"{type(self).__name__}(root_directory={str(self.root)!r})"


class LocalWorkflow(Workflow):
    """Run jobs as subprocesses on this machine, a bounded number at once.

    Each job's stdout and stderr go to ``stdout.log``/``stderr.log`` in its folder; its
    state and exit code are kept in ``status.json``, so a new ``LocalWorkflow`` on the same
    root sees earlier jobs — and takes over jobs left pending by a process that is gone.

    Parameters
    ----------
    root_directory : str or Path
        Where job folders are written.
    nprocs : int, optional
        Jobs running at once (default: the number of cores).
    poll_interval : float
        Seconds between looks at job states while waiting.

    Notes
    -----
    ``job_details`` of :meth:`submit` may hold ``walltime`` (seconds; a job past it is
    killed and marked failed) and ``env`` (extra environment variables).
    """

    def __init__(self, root_directory=DEFAULT_ROOT, nprocs=None, poll_interval=0.2):
        super().__init__(root_directory, poll_interval)
        if nprocs is None:
            nprocs = os.cpu_count() or 1
        if isinstance(nprocs, bool) or not isinstance(nprocs, int) or nprocs < 1:
            raise InputError(f"LocalWorkflow nprocs: expected an integer >= 1, got {nprocs!r}")
        self.nprocs = nprocs
        self._pool = ThreadPoolExecutor(max_workers=nprocs, thread_name_prefix="atomscore-job")
        self._mine: set[Path] = set()
        self._lock = threading.Lock()

    def submit(self, folder, job_details=None) -> str:
        folder = Path(folder).resolve()
        if not (folder / JOB_FILE).is_file():
            raise InputError(f"submit: {folder} is not a job folder (no {JOB_FILE})")
        details = self.check_job_details(job_details)
        with self._lock:
            self._mine.add(folder)
        update_status(folder, state="pending", owner_pid=os.getpid(), submitted=now())
        self._pool.submit(self._execute, folder, details)
        return str(folder)

    def check_job_details(self, job_details):
        """``walltime`` (seconds, > 0) and ``env`` (dict of str) are the keys a local job takes."""
        details = super().check_job_details(job_details)
        check_keys(details, ("walltime", "env"), "LocalWorkflow job_details")
        if "walltime" in details:
            from atomscore.validation import check_positive

            details["walltime"] = check_positive(details["walltime"], "job_details['walltime']", allow_array=False)
        if not isinstance(details.get("env", {}), dict):
            raise InputError(f"job_details['env']: expected a dict of environment variables, got {details['env']!r}")
        return details

    def _execute(self, folder: Path, details: dict):
        walltime = details.get("walltime")
        env = {**os.environ, **{k: str(v) for k, v in (details.get("env") or {}).items()}}
        with open(folder / "stdout.log", "ab") as out, open(folder / "stderr.log", "ab") as err:
            try:
                proc = subprocess.Popen(job_command(folder), stdout=out, stderr=err, env=env,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
            except OSError as exc:
                update_status(folder, state="failed", exit_code=None, error=f"could not start: {exc}", end_time=now())
                return
            reason = None
            try:
                code = proc.wait(timeout=walltime)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                code = proc.wait()
                reason = f"timed out after walltime {walltime:g} s"
        status = read_status(folder)
        if code == 0 and status.get("state") == JobState.DONE:
            return
        if code < 0:
            reason = reason or f"killed by signal {signal.Signals(-code).name}"
        if status.get("state") != JobState.FAILED or reason:
            update_status(folder, state="failed", exit_code=code, reason=reason,
                          error=status.get("error") or reason or "the runner exited without recording a result",
                          end_time=now())

    def poll(self, folders):
        """Take over jobs whose owner process is gone; fail jobs whose runner vanished."""
        for folder in folders:
            status = read_status(folder)
            state = status.get("state", "pending")
            if folder in self._mine:
                continue
            if state == JobState.PENDING and not _alive(status.get("owner_pid")):
                self.submit(folder)
            elif state == JobState.RUNNING and not _alive(status.get("pid")) \
                    and not _alive(status.get("owner_pid")):
                update_status(folder, state="failed", reason="runner process disappeared",
                              error="the runner process ended without recording a result", end_time=now())

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


#: workflow_type -> how to build it from workflow_args
WORKFLOW_TYPES = ("LOCAL", "SLURM", "LSF", "PBS", "FLUX")


def make_workflow(spec=None) -> Workflow:
    """A workflow from ``None`` (LocalWorkflow), a Workflow, or the seed's dict form.

    Parameters
    ----------
    spec : None, Workflow or dict
        ``{'workflow_type': 'LOCAL'|'SLURM'|'LSF'|'PBS'|'FLUX', 'workflow_args': {...}}``.
    """
    if spec is None:
        return LocalWorkflow()
    if isinstance(spec, Workflow):
        return spec
    if not isinstance(spec, dict) or "workflow_type" not in spec:
        raise InputError(f"workflow: expected a Workflow or a dict with 'workflow_type' and 'workflow_args', got {spec!r:.100}")
    kind = str(spec["workflow_type"]).upper()
    args = dict(spec.get("workflow_args") or {})
    if kind not in WORKFLOW_TYPES:
        raise InputError(f"workflow_type: unknown {spec['workflow_type']!r}; expected one of: {', '.join(WORKFLOW_TYPES)}")
    try:
        if kind == "LOCAL":
            return LocalWorkflow(**args)
        from atomscore.jobs import scheduler

        if kind == "SLURM":
            return scheduler.SlurmWorkflow(**args)
        return scheduler.PSIJWorkflow(executor=kind.lower(), **args)
    except TypeError as exc:
        raise InputError(f"workflow_args for {kind}: {exc}") from None
