"""The job runner: ``python -m atomscore.job FOLDER``.

Re-creates the score (or function) from the folder alone, runs it, and writes the results
and ``status.json`` atomically. A failure is recorded as ``failed`` with the exit code and
the error message, the traceback goes to stderr (``stderr.log`` under a workflow), and the
process exits non-zero, so no workflow can mistake it for success.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
import traceback
from pathlib import Path

from atomscore.jobs.folder import (JOB_FILE, decode_args, encode_args, now, read_inputs, resolve_reference,
                                   save_arrays, update_status, write_json_atomic)

RESULT_FILE = "result.json"
RESULT_ARRAYS_DIR = "result"


def run_score_job(folder: Path, spec: dict):
    cls = resolve_reference(spec["score"])
    score = cls(**decode_args(spec["init_args"], folder))
    configs = read_inputs(folder)
    compute_args = decode_args(spec["compute_args"], folder)
    results = score.run_batch(configs, spec["score_quantity"], compute_args)
    score.save_results(results, save_dir=folder, list_of_configs=configs if score.kind in ("atom", "configuration") else None)


def run_call_job(folder: Path, spec: dict):
    func = resolve_reference(spec["function"])
    result = func(**decode_args(spec["kwargs"], folder))
    data, arrays = encode_args({"result": result}, "result", f"result of {spec['function']['target']}",
                               subdir=RESULT_ARRAYS_DIR)
    save_arrays(folder / RESULT_ARRAYS_DIR, arrays)
    write_json_atomic(folder / RESULT_FILE, data)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] in ("-h", "--help"):
        print("usage: python -m atomscore.job FOLDER\n\nRun the job described by FOLDER/job.json.")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    folder = Path(argv[0]).resolve()
    if not (folder / JOB_FILE).is_file():
        print(f"atomscore.job: no {JOB_FILE} in {folder}", file=sys.stderr)
        return 2
    start = time.time()
    update_status(folder, state="running", pid=os.getpid(), host=socket.gethostname(), start_time=now(),
                  exit_code=None, error=None)
    try:
        spec = json.loads((folder / JOB_FILE).read_text())
        if spec.get("cwd") and os.path.isdir(spec["cwd"]):
            os.chdir(spec["cwd"])  # relative paths in arguments mean what they meant to the caller
        if spec.get("kind") == "call":
            run_call_job(folder, spec)
        else:
            run_score_job(folder, spec)
    except BaseException as exc:  # noqa: BLE001 - every failure must be recorded
        traceback.print_exc()
        sys.stderr.flush()
        code = exc.code if isinstance(exc, SystemExit) and isinstance(exc.code, int) and exc.code else 1
        update_status(folder, state="failed", exit_code=code, error=f"{type(exc).__name__}: {exc}",
                      end_time=now(), seconds=round(time.time() - start, 3))
        return code
    update_status(folder, state="done", exit_code=0, end_time=now(), seconds=round(time.time() - start, 3))
    return 0
