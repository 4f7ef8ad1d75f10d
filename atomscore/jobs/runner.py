"""The job runner: ``python -m atomscore.job FOLDER``.

Re-creates the score (or function) from the folder alone, runs it, and writes the results
and ``status.json`` atomically. A failure is recorded as ``failed`` with the exit code and
the error message, the traceback goes to stderr (``stderr.log`` under a workflow), and the
process exits non-zero, so no workflow can mistake it for success.

What a folder can make the runner do is bounded (docs/jobs.md, "The trust boundary of a job
folder", :mod:`atomscore.jobs.trust`): the folder must be private to its user; its inputs
must be those its run wrote (digests); a built-in score or job call is imported by name, a
user's own only from a sealed folder whose module files still have their recorded digests,
checked before anything of it is imported; then a ``ScoreBase`` subclass is constructed and
run, or a function registered with :func:`~atomscore.jobs.calls.job_call` called; anything
else is refused. Executables run only from the user's allow-list. Arrays are read from
inside the folder only, without pickle. Results are never written over existing ones, and a
cleaned folder is never run again.
"""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from pathlib import Path

from atomscore.errors import RefusedJobError
from atomscore.io import write_json_atomic
from atomscore.jobs import trust
from atomscore.jobs.folder import (ATTEMPT_ENV, FILES, JobState, decode_args, encode_args, is_cleaned, now,
                                   read_inputs, read_job, resolve_reference, save_arrays, update_status,
                                   verify_inputs)
from atomscore.jobs.paths import JobPaths, ScoreKind
from atomscore.validation import executables_from_env, restrict_executables

#: exit code of a refused job (the folder is not run, its status not changed)
REFUSED = 2
RESULT_FILE = FILES.call_result
RESULT_ARRAYS_DIR = FILES.call_result_arrays


def run_score_job(paths: JobPaths, spec: dict) -> Path:
    folder = paths.folder
    cls = resolve_reference(spec["score"], "score", spec)
    score = cls(**decode_args(spec["init_args"], folder))
    score.job_root = paths.root  # where the score's own nested jobs go
    configs = read_inputs(folder)
    compute_args = decode_args(spec["compute_args"], folder)
    results = score.run_batch(configs, spec["score_quantity"], compute_args)
    if not paths.job.is_file():
        raise RuntimeError(f"folder vanished: {folder} was deleted while the job ran; results not written")
    return Path(score.save_results(results, save_dir=folder,
                                   list_of_configs=configs if ScoreKind(score.kind).on_configurations else None))


def run_call_job(paths: JobPaths, spec: dict) -> Path:
    folder = paths.folder
    func = resolve_reference(spec["function"], "call", spec)
    result = func(**decode_args(spec["kwargs"], folder))
    data, arrays = encode_args({"result": result}, "result", f"result of {spec['function']['target']}",
                               subdir=RESULT_ARRAYS_DIR, copy_files=False)
    save_arrays(folder / RESULT_ARRAYS_DIR, arrays)
    write_json_atomic(folder / RESULT_FILE, data)
    return folder / RESULT_FILE


def check_trust(folder: Path, spec: dict):
    """The folder-level rules of the trust boundary, before anything the folder names is
    imported or run: a private tree up to the workflow root, inputs as the run wrote them,
    and the executables this job may run (the user's ``ATOMSCORE_EXECUTABLES``, plus those
    the user's own process named when it wrote and sealed the job)."""
    trust.check_private_tree(folder, levels=min(4, len(folder.parents) - 1))
    if spec.get("kind") not in ("score", "call"):
        raise trust.UntrustedJob(f"{folder}: job.json kind {spec.get('kind')!r}; {trust.REFUSAL}")
    verify_inputs(folder, spec)
    allowed = executables_from_env()
    if trust.is_sealed(spec) and isinstance(spec.get("executables"), list):
        allowed |= {p for p in spec["executables"] if isinstance(p, str)}
    restrict_executables(allowed)


def _refuse(message) -> int:
    print(f"atomscore.job: {message}", file=sys.stderr)
    return REFUSED


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m atomscore.job FOLDER\n\nRun the job described by FOLDER/job.json.")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    paths = JobPaths(Path(argv[0]).resolve())
    folder = paths.folder
    if not paths.job.is_file():
        return _refuse(f"no {FILES.job} in {folder}")
    if is_cleaned(folder):
        return _refuse(f"{folder} was cleaned (its argument files were removed by 'atomscore jobs clean'); "
                       "it cannot be run again: run the score again to recompute. Its status is unchanged.")
    existing = paths.existing_results
    if existing:
        return _refuse(f"{folder} already holds results ({', '.join(existing)}); they are never overwritten. "
                       "Run the score again (a new run folder), or remove the results file by hand to re-run.")
    attempt = os.environ.get(ATTEMPT_ENV)
    expect = {"attempt": attempt} if attempt else None

    def not_cancelled(status):
        return status.get("state") != JobState.CANCELLED

    start = time.time()
    me = trust.process_identity(os.getpid()) or {}
    try:
        # pid and start time (ticks since boot) prove to 'cancel' that this process is this folder's runner
        written = update_status(folder, expect=expect, only_if=not_cancelled, state=JobState.RUNNING,
                                pid=os.getpid(), proc_start=me.get("start"), host=socket.gethostname(),
                                start_time=now(), exit_code=None, error=None)
    except OSError as exc:
        print(f"atomscore.job: cannot write {folder / FILES.status}: {exc}", file=sys.stderr)
        return 1
    if written is None:
        return _refuse(f"{folder}: this attempt is no longer the folder's current one (cancelled, replaced "
                       "by a newer job or re-submitted); not run")
    try:
        spec = read_job(folder)
        check_trust(folder, spec)
        if spec.get("cwd") and os.path.isdir(spec["cwd"]):
            os.chdir(spec["cwd"])  # relative paths in arguments mean what they meant to the caller
        if spec.get("kind") == "call":
            results = run_call_job(paths, spec)
        else:
            results = run_score_job(paths, spec)
        # what gathering checks: this job of this run computed these results from these inputs
        stamp = {"run_id": spec.get("run_id"), "job_id": spec.get("job_id"),
                 "inputs_digest": trust.digest_of(spec.get("inputs")), "results_file": results.name,
                 "results_sha256": trust.file_sha256(results)}
    except BaseException as exc:  # noqa: BLE001 - every failure must be recorded
        traceback.print_exc()
        sys.stderr.flush()
        code = REFUSED if isinstance(exc, RefusedJobError) else \
            exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code else 1
        try:
            update_status(folder, expect=expect, only_if=not_cancelled, state=JobState.FAILED, exit_code=code,
                          error=f"{type(exc).__name__}: {exc}", end_time=now(), seconds=round(time.time() - start, 3))
        except OSError as write_error:
            print(f"atomscore.job: cannot record the failure in {FILES.status}: {write_error}", file=sys.stderr)
        return code
    try:
        update_status(folder, expect=expect, only_if=not_cancelled, state=JobState.DONE, exit_code=0,
                      end_time=now(), seconds=round(time.time() - start, 3), **stamp)
    except OSError as exc:
        print(f"atomscore.job: results written but {FILES.status} could not be: {exc}", file=sys.stderr)
        return 1
    return 0
