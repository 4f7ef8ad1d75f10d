"""``atomscore jobs ...``: look at, gather, re-run, cancel and clean job folders.

``atomscore jobs status ROOT``        a table of the jobs under ROOT, per run
``atomscore jobs collect RUN -o OUT`` gather the results of a run's finished jobs
``atomscore jobs rerun PATH``         run the failed / cancelled jobs under PATH again
``atomscore jobs cancel PATH``        cancel the open jobs under PATH
``atomscore jobs clean PATH``         remove the argument files of the finished jobs under PATH

Everything here reads the folders alone: ``collect`` re-creates no score, it asks the score
class recorded in each folder to read its results.
"""

from __future__ import annotations

import logging
from pathlib import Path

from atomscore.errors import InputError
from atomscore.jobs.folder import (FILES, FailureReason, JobState, check_one_run, clean_folder, is_cleaned,
                                   job_folders_under, read_job, read_status, resolve_reference, state_of)
from atomscore.jobs.trust import check_private_tree

log = logging.getLogger(__name__)


def _folders(path, what, private=False) -> list[Path]:
    """The job folders under ``path``; with ``private``, each checked to be writable by its
    owner alone, from the folder up to ``path`` (docs/jobs.md, trust boundary)."""
    path = Path(path)
    if not path.is_dir():
        raise InputError(f"jobs {what}: no folder {str(path)!r}")
    folders = job_folders_under(path)
    if not folders:
        raise InputError(f"jobs {what}: no job folders under {str(path)!r}")
    log.debug("jobs %s: %d job folder(s) under %s", what, len(folders), path)
    if private:
        for folder in folders:
            check_private_tree(folder, levels=len(folder.resolve().relative_to(path.resolve()).parts))
    return folders


def job_table(root) -> list[dict]:
    """One row per job folder under ``root``: run, job, state, exit code, seconds, error."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"jobs status: no folder {str(root)!r}")
    rows = []
    folders = job_folders_under(root)
    log.debug("jobs status: %d job folder(s) under %s", len(folders), root)
    for folder in folders:
        status = read_status(folder)
        run = folder.parent.relative_to(root) if folder != root else Path(".")
        state = state_of(status) if isinstance(status.get("state", ""), str) else JobState.FAILED
        rows.append({"run": str(run), "job": folder.name, "folder": str(folder.relative_to(root)),
                     "state": state.value, "reason": _text(status.get("reason")),
                     "exit_code": _typed(status.get("exit_code"), int), "seconds": _typed(status.get("seconds"), float),
                     "error": _text(status.get("error")), "cleaned": is_cleaned(folder)})
    return rows


def _text(value) -> str:
    """A status entry shown as text (a hand-edited status.json may hold anything)."""
    return "" if value is None else value if isinstance(value, str) else str(value)


def _typed(value, kind):
    """A status number, or None when a hand-edited status.json holds something else there."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) and \
        (kind is float or isinstance(value, int)) else None


def _counts(rows) -> str:
    counts = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


def cmd_status(args):
    rows = job_table(args.root)
    if args.state:
        rows = [r for r in rows if r["state"] == args.state]
    if not rows:
        print(f"no jobs under {args.root}")
        return 0
    runs = {}
    for r in rows:
        runs.setdefault(r["run"], []).append(r)
    for run, items in runs.items():
        print(f"run {run}: {_counts(items)}")
        print(f"  {'job':<6} {'state':<9} {'exit':>4} {'seconds':>8}  error")
        for r in items:
            code = "" if r["exit_code"] is None else r["exit_code"]
            secs = "" if r["seconds"] is None else f"{r['seconds']:.1f}"
            error = r["error"].splitlines()[0][:80] if r["error"] else ""
            mark = " (cleaned)" if r["cleaned"] else ""
            print(f"  {r['job']:<6} {r['state']:<9} {code!s:>4} {secs:>8}  {error}{mark}")
    print(f"total: {_counts(rows)}")
    return 1 if any(r["state"] in (JobState.FAILED, JobState.CANCELLED) for r in rows) else 0


def cmd_collect(args):
    folders = _folders(args.run, "collect", private=True)
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        raise InputError(f"--output: {str(output)!r} exists; results never overwrite a file (pass --overwrite)")
    targets = set()
    for folder in folders:
        job = read_job(folder)
        if job.get("kind") == "call":
            raise InputError(f"jobs collect: {folder} is a call job (its result.json is read by map_calls)")
        targets.add(job["score"]["target"])
    if len(targets) != 1:
        raise InputError(f"jobs collect: the jobs under {args.run} belong to {len(targets)} score classes "
                         f"({', '.join(sorted(targets))}); collect one run at a time")
    check_one_run(folders, "jobs collect")  # one run, results as its jobs wrote them: before any import
    cls = resolve_reference(read_job(folders[0])["score"], "score", read_job(folders[0]))
    from atomscore.io import CONFIG_SUFFIXES, RESULT_SUFFIXES, check_output

    check_output(output, overwrite=args.overwrite, what=f"--output ({cls.__name__} results)",
                 suffixes=CONFIG_SUFFIXES if cls.kind.on_configurations else RESULT_SUFFIXES)
    results = cls.data_from_calc_ids([str(f) for f in folders])
    cls.write_data(output, results, overwrite=args.overwrite)
    print(f"atomscore: {len(results)} result(s) of {len(folders)} job(s) written to {output}")
    return 0


def _workflow_for(folder, root, nprocs):
    """The workflow that ran ``folder``: its scheduler (from scheduler.json) or a local one."""
    from atomscore.jobs import make_workflow

    record = folder / FILES.scheduler
    if record.is_file():
        import json

        data = json.loads(record.read_text())
        args = {"root_directory": str(root)}
        for key in ("queue", "account"):
            if data.get(key):
                args[key] = data[key]
        if data.get("walltime_s"):
            args["walltime"] = data["walltime_s"]
        return make_workflow({"workflow_type": data["executor"].upper(), "workflow_args": args})
    from atomscore.jobs.workflow import LocalWorkflow

    return LocalWorkflow(root, nprocs=nprocs)


def _group_by_workflow(folders, root, nprocs):
    groups = {}
    for folder in folders:
        key = "local" if not (folder / FILES.scheduler).is_file() else "scheduler"
        if key not in groups:
            groups[key] = (_workflow_for(folder, root, nprocs), [])
        groups[key][1].append(folder)
    return groups.values()


def cmd_rerun(args):
    from atomscore.jobs.folder import now, update_status
    from atomscore.jobs.workflow import interrupts_raise

    folders = _folders(args.path, "rerun", private=True)
    again = [f for f in folders if state_of(read_status(f)) in (JobState.FAILED, JobState.CANCELLED)
             and FailureReason.of(read_status(f).get("reason")) is not FailureReason.FOLDER_VANISHED]
    cleaned = [f for f in again if is_cleaned(f)]
    if cleaned:
        raise InputError("jobs rerun: these folders were cleaned and cannot run again (run the score again): "
                         + ", ".join(map(str, cleaned)))
    if not again:
        print(f"no failed or cancelled jobs under {args.path}")
        return 0
    for folder in again:
        for name in (FILES.results_xyz, FILES.results_json, FILES.call_result):
            if (folder / name).exists():
                raise InputError(f"jobs rerun: {folder} holds {name} although it is "
                                 f"{read_status(folder).get('state')}; remove it by hand to re-run")
        update_status(folder, rerun_of=read_status(folder).get("end_time") or now())
    ids = []
    with interrupts_raise():
        for workflow, group in _group_by_workflow(again, Path(args.path).resolve(), args.nprocs):
            ids.append((workflow, workflow.submit_run(group)))
        states = {}
        for workflow, group_ids in ids:
            states.update(workflow.block_until_completed(group_ids, raise_on_failure=False, progress=True))
    failed = [c for c, s in states.items() if s is not JobState.DONE]
    print(f"atomscore: re-ran {len(states)} job(s): {len(states) - len(failed)} done, {len(failed)} not")
    return 1 if failed else 0


def cmd_cancel(args):
    from atomscore.jobs.workflow import interrupts_deferred

    folders = [f for f in _folders(args.path, "cancel", private=True) if not state_of(read_status(f)).final]
    if not folders:
        print(f"no open jobs under {args.path}")
        return 0
    with interrupts_deferred():
        for workflow, group in _group_by_workflow(folders, Path(args.path).resolve(), None):
            workflow.cancel([str(f) for f in group])
    print(f"atomscore: cancelled {len(folders)} job(s)")
    return 0


def cmd_clean(args):
    folders = _folders(args.path, "clean")
    done, skipped = 0, []
    for folder in folders:
        state = state_of(read_status(folder))
        if not state.final or (state is not JobState.DONE and not args.all):
            skipped.append((folder, state.value))
            continue
        if not is_cleaned(folder):
            clean_folder(folder)
            done += 1
    print(f"atomscore: cleaned {done} job folder(s)" + (f"; left {len(skipped)} that are not done "
                                                         "(--all cleans failed and cancelled ones too)"
                                                         if skipped else ""))
    return 0


EXAMPLES = """examples:
  atomscore jobs status atomscore_jobs
  atomscore jobs collect atomscore_jobs/QUESTSDeltaEntropyScore/dH/<run> -o dh.db
  atomscore jobs rerun atomscore_jobs
  atomscore jobs cancel atomscore_jobs
  atomscore jobs clean atomscore_jobs
"""


def add_jobs_command(subparsers):
    """Register ``atomscore jobs ...``."""
    jobs = subparsers.add_parser("jobs", help="look at, collect, re-run, cancel and clean job folders",
                                 description="Look at, collect, re-run, cancel and clean job folders.",
                                 epilog=EXAMPLES)
    sub = jobs.add_subparsers(dest="jobs_command", required=True)
    status = sub.add_parser("status", epilog=EXAMPLES, help="a table of the jobs under ROOT, per run",
                            description="Print the jobs under ROOT and their states, grouped by run; exit "
                            "code 1 if any failed or was cancelled.")
    status.add_argument("root", help="root folder of the job folders (or one run, or one job)")
    status.add_argument("--state", choices=[s.value for s in JobState], help="show only this state")
    status.set_defaults(func=cmd_status)

    collect = sub.add_parser("collect", epilog=EXAMPLES, help="gather the results of a run's finished jobs",
                             description="Gather the results of the finished jobs under RUN (in folder order) "
                             "into one file, read by the score class recorded in the folders.")
    collect.add_argument("run", help="a run folder (ROOT/<ScoreClass>/<path_type>/<run>)")
    collect.add_argument("-o", "--output", required=True, help="the results file, format by suffix (.xyz, .traj, "
                         ".db or .json; .json for dataset and model scores)")
    collect.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    collect.set_defaults(func=cmd_collect)

    rerun = sub.add_parser("rerun", epilog=EXAMPLES, help="run the failed and cancelled jobs under PATH again",
                           description="Run the failed and cancelled jobs under PATH again (through the "
                           "scheduler that ran them, else locally) and wait for them.")
    rerun.add_argument("path", help="a root, run or job folder")
    rerun.add_argument("--nprocs", type=int, help="jobs at once when run locally (default: cores)")
    rerun.set_defaults(func=cmd_rerun)

    cancel = sub.add_parser("cancel", epilog=EXAMPLES, help="cancel the open jobs under PATH",
                            description="Cancel the pending and running jobs under PATH (local process "
                            "groups are terminated; scheduler jobs cancelled in the scheduler).")
    cancel.add_argument("path", help="a root, run or job folder")
    cancel.set_defaults(func=cmd_cancel)

    clean = sub.add_parser("clean", epilog=EXAMPLES, help="remove the argument files of finished jobs",
                           description="Remove the argument files (args/) of the done jobs under PATH and "
                           "mark them cleaned: results, logs and status stay, and the folder refuses to "
                           "run again.")
    clean.add_argument("path", help="a root, run or job folder")
    clean.add_argument("--all", action="store_true", help="clean failed and cancelled jobs too")
    clean.set_defaults(func=cmd_clean)
    return jobs
