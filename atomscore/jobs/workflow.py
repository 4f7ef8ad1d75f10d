"""Workflows: where job folders run.

A workflow only knows how to start a job folder, how to ask where it is, and how to stop
it. The runner (``python -m atomscore.job FOLDER``) writes ``status.json``, which stays the
record of ``done`` and ``failed``; a workflow adds what only it can see (pending in a
queue, killed, cancelled, past its walltime). Subclasses implement :meth:`Workflow.submit`,
:meth:`Workflow.cancel` and, for a scheduler, :meth:`Workflow.poll`; scores never need to
know which workflow runs them. The factory (``make_workflow``) lives in
:mod:`atomscore.jobs`, above this module and the scheduler workflows.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from atomscore.errors import InputError, JobFailedError, SchedulerError
from atomscore.jobs.folder import (ATTEMPT_ENV, FILES, JOB_FILE, FailureReason, JobState,  # noqa: F401
                                   check_submittable, job_folder, now, open_log, read_status, state_of, tail_text,
                                   update_status)
from atomscore.jobs.trust import is_runner_of
from atomscore.validation import check_keys

DEFAULT_ROOT = "./atomscore_jobs"
log = logging.getLogger(__name__)
#: seconds a cancelled job's process group gets between SIGTERM and SIGKILL
CANCEL_GRACE_S = 3.0


def job_command(folder) -> list[str]:
    """The command that runs one job folder, with this interpreter."""
    return [sys.executable, "-m", "atomscore.job", str(Path(folder).resolve())]


def stderr_tail(folder, lines=20) -> str:
    """The last ``lines`` lines of a job's ``stderr.log`` ('' if none), read from the end."""
    return tail_text(Path(folder) / FILES.stderr, lines)


def check_env(env, name="job_details['env']") -> dict:
    """Environment variables as a new ``{str: str}`` dict, or InputError.

    Names are non-empty strings without ``=`` or NUL; values strings or numbers without NUL.
    """
    if env is None:
        return {}
    if not isinstance(env, dict):
        raise InputError(f"{name}: expected a dict of environment variables, got {env!r:.80}")
    out = {}
    for key, value in env.items():
        if not isinstance(key, str) or not key or "=" in key or "\0" in key:
            raise InputError(f"{name}: variable names are non-empty strings without '=' or NUL, got {key!r}")
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise InputError(f"{name}[{key!r}]: expected a string or a number, got {value!r:.80}")
        if "\0" in str(value):
            raise InputError(f"{name}[{key!r}]: a value cannot hold a NUL character")
        out[key] = str(value)
    return out


def failure_report(folders, calc_ids, statuses=None) -> list[dict]:
    """One dict per failed or cancelled job among ``folders``: id, folder, state, exit code,
    error, stderr tail."""
    failures = []
    for i, (calc_id, folder) in enumerate(zip(calc_ids, folders)):
        status = read_status(folder) if statuses is None else statuses[i]
        state = state_of(status)
        if state in (JobState.FAILED, JobState.CANCELLED):
            failures.append({"calc_id": str(calc_id), "folder": str(folder), "state": state.value,
                             "reason": status.get("reason"), "exit_code": status.get("exit_code"),
                             "error": status.get("error"), "stderr_tail": stderr_tail(folder)})
    return failures


def _log_finished(workflow, finished, total, visible_bar):
    """One log line per finished job: INFO when no progress bar shows it (not a terminal), else DEBUG."""
    level = logging.DEBUG if visible_bar else logging.INFO
    for folder in finished:
        status = workflow.status_of(folder)
        log.log(level, "job %s %s (%s s) of %d", folder, status.get("state"), status.get("seconds"), total)


def raise_failures(failures):
    if not failures:
        return
    parts = [f"{len(failures)} job(s) failed:"]
    for f in failures:
        reason = f.get("reason") or f.get("state") or JobState.FAILED.value
        error = f.get("error")
        text = f"- {f['folder']}: {reason}, exit code {f['exit_code']}"
        if error and error != reason:
            text += f": {error}"
        parts.append(text)
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


class SubmissionError(SchedulerError):
    """A run's submission stopped at one batch (refused, or not answered); nothing of the
    run was left pending.

    Attributes
    ----------
    calc_ids : list of str
        Every folder of the run (the submitted ones were cancelled, the rest marked
        ``not submitted``).
    """

    def __init__(self, message, calc_ids=()):
        super().__init__(message)
        self.calc_ids = list(calc_ids)


@contextlib.contextmanager
def interrupts_raise():
    """While inside, SIGTERM raises KeyboardInterrupt like SIGINT (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


@contextlib.contextmanager
def interrupts_deferred():
    """While inside (cleaning up after an interrupt), SIGINT/SIGTERM are noted, not raised,
    so a second Ctrl-C cannot stop the clean-up half way and leave processes behind."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, lambda signum, frame: None) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class Workflow:
    """Base of every workflow.

    Parameters
    ----------
    root_directory : str or Path
        Where job folders are written (``root/<ScoreClass>/<path_type>/<run>/<NNNNN>``).
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

    def cancel(self, calc_ids):
        """Stop the given jobs and mark the open ones cancelled (override)."""
        for calc_id in calc_ids:
            folder = Path(str(calc_id))
            update_status(folder, only_if=lambda s: not state_of(s).final, state=JobState.CANCELLED,
                          reason=FailureReason.CANCELLED, error="cancelled before it ran", end_time=now())

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
    def submit_run(self, folders, job_details=None) -> list[str]:
        """Submit every folder of one run, all or nothing.

        If the submission of one folder fails (a refused batch, an interrupt), the folders
        already submitted are cancelled and the others marked failed with reason ``not
        submitted``; none is left pending.

        Raises
        ------
        SubmissionError
            Naming the batch that failed and why; ``calc_ids`` holds every folder's id.
        """
        folders = [Path(f).resolve() for f in folders]
        ids = []
        for k, folder in enumerate(folders):
            try:
                ids.append(self.submit(folder, job_details))
            except BaseException as exc:  # noqa: BLE001 - nothing may be left pending
                all_ids = [str(f) for f in folders]
                with interrupts_deferred():
                    self._abandon(ids, folders[k:], f"batch {k} of this run could not be submitted: "
                                                     f"{type(exc).__name__}: {exc}")
                if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                    raise
                raise SubmissionError(f"submission of batch {k} of {len(folders)} failed ({type(exc).__name__}: "
                                      f"{exc}); the {k} submitted before were cancelled and the rest marked "
                                      f"'not submitted'. Job folders: {', '.join(all_ids)}", all_ids) from exc
        return ids

    def _abandon(self, submitted, rest, why):
        import shutil

        try:
            if submitted:
                self.cancel(submitted)
        except Exception:  # noqa: BLE001 - best effort; the rest must still be marked
            pass
        for folder in rest:
            try:
                update_status(folder, only_if=lambda s: not state_of(s).final, state=JobState.FAILED,
                              reason=FailureReason.NOT_SUBMITTED, exit_code=None, error=why, end_time=now())
            except OSError:
                shutil.rmtree(folder, ignore_errors=True)  # cannot even mark it (disk full): no orphan

    def folder(self, calc_id) -> Path:
        return job_folder(calc_id, self)

    def status_of(self, folder) -> dict:
        """The status of one job as this workflow knows it (disk, plus what only it knows)."""
        return read_status(folder)

    def state(self, calc_id) -> JobState:
        """The job's current state."""
        folder = self.folder(calc_id)
        self.poll([folder])
        return state_of(self.status_of(folder))

    def block_until_completed(self, calc_ids, timeout=None, raise_on_failure=True, progress=False):
        """Wait until every job is done, failed or cancelled.

        Ctrl-C (SIGINT) or SIGTERM while waiting cancels the open jobs (queued ones never
        start, running ones are terminated), marks them cancelled and raises
        KeyboardInterrupt.

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
        # An absolute id whose folder is gone is waited on as 'failed: folder vanished'.
        folders = [Path(str(c)) if os.path.isabs(str(c)) else self.folder(c).resolve() for c in calc_ids]
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(folders), desc="jobs", unit="job", disable=None)
        open_folders = list(folders)
        delay = min(0.05, self.poll_interval)
        try:
            with interrupts_raise():
                try:
                    while True:
                        self.poll(open_folders)
                        still = [f for f in open_folders if not state_of(self.status_of(f)).final]
                        if bar is not None:
                            bar.update(len(open_folders) - len(still))
                        _log_finished(self, [f for f in open_folders if f not in still], len(folders),
                                      visible_bar=bar is not None and not bar.disable)
                        open_folders = still
                        if not open_folders:
                            break
                        if deadline is not None and time.monotonic() > deadline:
                            raise JobFailedError(f"timed out after {timeout} s waiting for {len(open_folders)} "
                                                 "job(s): " + ", ".join(map(str, open_folders)))
                        time.sleep(delay)
                        delay = min(delay * 1.5, self.poll_interval)
                except KeyboardInterrupt:
                    with interrupts_deferred():
                        self.cancel([str(f) for f in open_folders])
                    raise
        finally:
            if bar is not None:
                bar.close()
        statuses = [self.status_of(f) for f in folders]
        states = {c: state_of(s) for c, s in zip(calc_ids, statuses)}
        if raise_on_failure:
            raise_failures(failure_report(folders, calc_ids, statuses))
        return states

    def __repr__(self):
        return f"{type(self).__name__}(root_directory={str(self.root)!r})"


@dataclass
class _LocalJob:
    """What a LocalWorkflow knows of one job it started (this attempt only)."""

    attempt: str
    future: object = None
    proc: subprocess.Popen = None
    cancelled: bool = False
    outcome: dict = field(default_factory=dict)  # final status when status.json could not be written


class LocalWorkflow(Workflow):
    """Run jobs as subprocesses on this machine, a bounded number at once.

    Each job's stdout and stderr go to ``stdout.log``/``stderr.log`` in its folder; its
    state and exit code are kept in ``status.json``, so a new ``LocalWorkflow`` on the same
    root sees earlier jobs — and takes over jobs left pending by a process that is gone.
    Each job runs in a process group of its own, which :meth:`cancel` (and Ctrl-C during a
    wait) terminates.

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
        self._jobs: dict[Path, _LocalJob] = {}
        self._lock = threading.Lock()

    def submit(self, folder, job_details=None) -> str:
        folder = check_submittable(folder)
        details = self.check_job_details(job_details)
        job = _LocalJob(attempt=uuid.uuid4().hex)
        update_status(folder, state=JobState.PENDING, owner_pid=os.getpid(), submitted=now(), attempt=job.attempt,
                      exit_code=None, error=None, reason=None, pid=None)
        with self._lock:
            self._jobs[folder] = job
            job.future = self._pool.submit(self._execute, folder, details, job)
        return str(folder)

    def check_job_details(self, job_details):
        """``walltime`` (seconds, > 0) and ``env`` (dict of str) are the keys a local job takes."""
        details = super().check_job_details(job_details)
        check_keys(details, ("walltime", "env"), "LocalWorkflow job_details")
        if "walltime" in details:
            from atomscore.validation import check_positive

            details["walltime"] = check_positive(details["walltime"], "job_details['walltime']", allow_array=False)
        details["env"] = check_env(details.get("env"))
        return details

    # ------------------------------------------------------------------ one job
    def _finish(self, folder, job, **fields):
        """Record a final state for this attempt; kept in memory when the disk refuses it."""
        fields.setdefault("end_time", now())
        try:
            update_status(folder, expect={"attempt": job.attempt}, **fields)
        except OSError as exc:
            job.outcome = {**{k: (v.value if isinstance(v, JobState) else v) for k, v in fields.items()},
                           "error": f"{fields.get('error')}; {FILES.status} could not be written: {exc}"}

    def _execute(self, folder: Path, details: dict, job: _LocalJob):
        try:
            self._run(folder, details, job)
        except BaseException as exc:  # noqa: BLE001 - every start failure ends the job
            self._finish(folder, job, state=JobState.FAILED, exit_code=None, reason=FailureReason.COULD_NOT_START,
                         error=f"could not start: {type(exc).__name__}: {exc}")

    def _run(self, folder: Path, details: dict, job: _LocalJob):
        status = read_status(folder)
        if job.cancelled or state_of(status) is JobState.CANCELLED or status.get("attempt") != job.attempt:
            if status.get("attempt") == job.attempt and not state_of(status).final:
                self._finish(folder, job, state=JobState.CANCELLED, reason=FailureReason.CANCELLED, exit_code=None,
                             error="cancelled before it started")
            return
        walltime = details.get("walltime")
        env = {**os.environ, **details.get("env", {}), ATTEMPT_ENV: job.attempt}
        with open_log(folder / FILES.stdout) as out, open_log(folder / FILES.stderr) as err:
            with self._lock:
                if job.cancelled:
                    proc = None
                else:
                    proc = subprocess.Popen(job_command(folder), stdout=out, stderr=err, env=env,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
                    job.proc = proc
            if proc is None:
                self._finish(folder, job, state=JobState.CANCELLED, reason=FailureReason.CANCELLED, exit_code=None,
                             error="cancelled before it started")
                return
            reason = None
            try:
                code = proc.wait(timeout=walltime)
            except subprocess.TimeoutExpired:
                _kill_group(proc.pid, signal.SIGKILL)
                code = proc.wait()
                reason = FailureReason.TIMED_OUT.detail(f"{walltime:g} s")
        status = read_status(folder)
        if status.get("attempt") != job.attempt:
            return  # a newer job (or attempt) owns this path now, or the folder vanished
        if state_of(status) is JobState.CANCELLED:
            return
        if job.cancelled:
            self._finish(folder, job, state=JobState.CANCELLED, reason=FailureReason.CANCELLED, exit_code=code,
                         error="cancelled: its process group was terminated")
            return
        if code == 0 and state_of(status) is JobState.DONE:
            return
        if code < 0:
            reason = reason or FailureReason.KILLED.detail(signal.Signals(-code).name)
        if state_of(status) is not JobState.FAILED or reason:
            self._finish(folder, job, state=JobState.FAILED, exit_code=code, reason=reason,
                         error=status.get("error") or reason or
                         f"the runner exited with code {code} without recording a result")

    # ------------------------------------------------------------------ state, cancel
    def status_of(self, folder) -> dict:
        folder = Path(folder)
        status = read_status(folder)
        job = self._jobs.get(folder)
        if job is None:
            return status
        if FailureReason.of(status.get("reason")) is FailureReason.FOLDER_VANISHED:
            self._stop(job)  # nothing to record into; its process must not go on
            return status
        if state_of(status).final or status.get("attempt") != job.attempt:
            return status
        if job.future is not None and job.future.done():
            # Its bookkeeping ended but the disk says it is open: status.json could not be written.
            return {**status, "state": JobState.FAILED.value, "reason": FailureReason.COULD_NOT_RECORD.value,
                    **(job.outcome or {"error": "the job ended but its final state could not be recorded"})}
        return status

    def _stop(self, job: _LocalJob):
        job.cancelled = True
        if job.future is not None:
            job.future.cancel()
        if job.proc is not None and job.proc.poll() is None:
            _kill_group(job.proc.pid, signal.SIGKILL)

    def cancel(self, calc_ids):
        """Cancel jobs: queued ones never start, running ones get SIGTERM to their process
        group (SIGKILL after ``CANCEL_GRACE_S``); open ones are marked cancelled.

        Works on jobs of this object and, through ``status.json`` (their runner's pid), on
        jobs started by another process.
        """
        folders = [Path(str(c)).resolve() for c in calc_ids]
        pids = []
        for folder in folders:
            job = self._jobs.get(folder)
            proc = None
            if job is not None:
                with self._lock:  # the job's thread starts its process under this lock
                    job.cancelled = True
                    if job.future is not None:
                        job.future.cancel()
                    proc = job.proc
            try:
                # Under the status lock: either the runner recorded its pid first (and is killed
                # below) or it sees 'cancelled' and does not run.
                status = update_status(folder, only_if=lambda s: not state_of(s).final, state=JobState.CANCELLED,
                                       reason=FailureReason.CANCELLED, exit_code=None, end_time=now(),
                                       error="cancelled (Ctrl-C, SIGTERM or cancel())")
            except OSError:
                status = None  # disk full: the wait still sees it cancelled through this object
            if proc is not None:
                pid = proc.pid  # started by this object: its own child
            else:
                # named by status.json only: signalled only when /proc proves it is this folder's runner
                pid = (status or {}).get("pid")
                if pid and not is_runner_of(status, folder):
                    if _alive(pid):
                        log.warning("cancel %s: process %s named by its %s is not this folder's runner "
                                    "(command line or start time differ); not signalled", folder, pid,
                                    FILES.status)
                    pid = None
            if pid and _group_alive(pid):
                pids.append(int(pid))
        for pid in pids:
            _kill_group(pid, signal.SIGTERM)
        end = time.monotonic() + CANCEL_GRACE_S
        while pids and time.monotonic() < end:
            pids = [p for p in pids if _group_alive(p)]
            time.sleep(0.05)
        for pid in pids:
            _kill_group(pid, signal.SIGKILL)
        for folder in folders:
            job = self._jobs.get(folder)
            if job is not None and job.proc is not None:
                try:
                    job.proc.wait(timeout=CANCEL_GRACE_S)
                except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL was sent
                    pass

    def poll(self, folders):
        """Take over jobs whose owner process is gone; fail jobs whose runner vanished."""
        for folder in folders:
            folder = Path(folder)
            if folder in self._jobs:
                continue
            status = read_status(folder)
            state = state_of(status)
            if state is JobState.PENDING and not _alive(status.get("owner_pid")):
                try:
                    self.submit(folder)
                except InputError as exc:
                    update_status(folder, state=JobState.FAILED, reason=FailureReason.NOT_RUNNABLE, error=str(exc),
                                  end_time=now())
            elif state is JobState.RUNNING and not _runner_alive(status, folder) \
                    and not _alive(status.get("owner_pid")):
                update_status(folder, expect={"attempt": status.get("attempt")}, state=JobState.FAILED,
                              reason=FailureReason.RUNNER_DISAPPEARED, end_time=now(),
                              error="the runner process ended without recording a result")

    def __del__(self):
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=False)


def _kill_group(pid, sig):
    try:
        os.killpg(int(pid), sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_alive(pgid) -> bool:
    try:
        os.killpg(int(pgid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _runner_alive(status, folder) -> bool:
    """The runner ``status`` names is alive and, where ``/proc`` can tell, is that folder's runner."""
    return is_runner_of(status, folder) if os.path.isdir("/proc") else _alive(status.get("pid"))


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
