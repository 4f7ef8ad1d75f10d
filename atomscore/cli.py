"""The ``atomscore`` command.

``atomscore run SPEC.json``        run a score over configurations through a workflow
``atomscore jobs status ROOT``     a table of the jobs under ROOT and their states
``atomscore descriptors IN -o OUT`` attach QUESTS descriptors to configurations
``atomscore select POOL -n N -o OUT`` choose configurations to label next (``curve``: its learning curve)
``atomscore demo``                 the main job: information-matching active learning on SW silicon
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from atomscore.errors import AtomscoreError, InputError, JobFailedError


# --------------------------------------------------------------------------- run
def _resolve_paths(value, base: Path):
    """Strings naming existing files relative to ``base`` become absolute paths (new objects)."""
    if isinstance(value, dict):
        return {k: _resolve_paths(v, base) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_paths(v, base) for v in value]
    if isinstance(value, str) and value and not os.path.isabs(value) and (base / value).exists():
        return str((base / value).resolve())
    return value


def load_spec(path, base_dir=None) -> dict:
    """Read a run spec (the form of the reference's score test inputs) and check it.

    Returns a dict with ``score_type``, ``score_args``, ``compute_args``, ``configs``,
    ``path_type``, ``batch_size`` and ``workflow``.
    """
    from atomscore.catalog import score_class

    path = Path(path)
    try:
        spec = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"spec file not found: {str(path)!r}") from None
    except json.JSONDecodeError as exc:
        raise InputError(f"{path}: not valid JSON: {exc}") from None
    base = Path(base_dir) if base_dir else Path.cwd()
    score = spec.get("score")
    if not isinstance(score, dict) or "score_type" not in score:
        raise InputError(f"{path}: expected a 'score' object with 'score_type', 'score_args', 'compute_args' "
                         "and 'query_configs_path' or 'dataset_path'")
    cls = score_class(score["score_type"])
    configs_path = score.get("query_configs_path") or score.get("dataset_path")
    if not configs_path:
        raise InputError(f"{path}: score needs 'query_configs_path' or 'dataset_path'")
    configs_path = Path(_resolve_paths(configs_path, base))
    if not configs_path.is_file():
        raise InputError(f"{path}: configurations file not found: {str(configs_path)!r} (relative paths are "
                         f"taken from {str(base)!r}; set --base-dir)")
    if configs_path.suffix == ".json":
        data = json.loads(configs_path.read_text())
        configs = data if isinstance(data, list) else [data]
    else:
        from atomscore.io import read_extxyz

        configs = read_extxyz(configs_path)
    return {
        "score_class": cls,
        "score_args": _resolve_paths(score.get("score_args") or {}, base),
        "compute_args": _resolve_paths(score.get("compute_args") or {}, base),
        "configs": configs,
        "path_type": score.get("path_type") or path.stem,
        "batch_size": spec.get("batch_size", score.get("batch_size", 1)),
        "workflow": spec.get("workflow") or score.get("workflow"),
        "job_details": spec.get("job_details") or score.get("job_details"),
    }


def run_spec(spec_path, root=None, base_dir=None, output=None, nprocs=None, progress=True, overwrite=False):
    """Run a spec file end to end; return ``(calc_ids, results, output_path)``.

    Ctrl-C or SIGTERM cancels the run's jobs (queued ones never start, running ones are
    terminated and marked cancelled) and raises KeyboardInterrupt.
    """
    from atomscore.jobs import make_workflow
    from atomscore.jobs.workflow import DEFAULT_ROOT, LocalWorkflow

    spec = load_spec(spec_path, base_dir)
    try:
        score = spec["score_class"](**spec["score_args"])
    except TypeError as exc:
        raise InputError(f"score_args of {spec['score_class'].__name__}: {exc}") from None
    want = ".xyz" if score.kind in ("atom", "configuration") else ".json"
    if output is not None and Path(output).suffix not in ((want, ".extxyz") if want == ".xyz" else (want,)):
        raise InputError(f"--output: {type(score).__name__} results are written as {want}, got {str(output)!r}")
    if output is not None and Path(output).exists() and not overwrite:
        raise InputError(f"--output: {str(output)!r} exists; results never overwrite a file (remove it, choose "
                         "another name, or pass --overwrite)")
    workflow = spec["workflow"]
    if workflow is None:
        workflow = LocalWorkflow(root or DEFAULT_ROOT, nprocs=nprocs)
    else:
        workflow = dict(workflow, workflow_args=dict(workflow.get("workflow_args") or {}))
        if root:
            workflow["workflow_args"]["root_directory"] = root
        workflow = make_workflow(workflow)
    from atomscore.jobs.workflow import interrupts_raise

    try:
        with interrupts_raise():  # SIGTERM as Ctrl-C: the run's jobs are cancelled on the way out
            ids = score.run(spec["path_type"], spec["configs"], spec["compute_args"], workflow=workflow,
                            job_details=spec["job_details"], batch_size=spec["batch_size"])
            workflow.block_until_completed(ids, progress=progress)
    except KeyboardInterrupt:
        _ignore_further_interrupts()  # the jobs are cancelled; a second Ctrl-C must not cut the exit short
        raise
    results = score.data_from_calc_ids(ids, workflow=workflow)
    if output is None:
        output = Path(ids[0]).parent / f"results{want}"  # in the run's own folder
    output = Path(output)
    score.write_data(output, results)
    return ids, results, output


def _ignore_further_interrupts():
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def cmd_run(args):
    ids, results, output = run_spec(args.spec, root=args.root, base_dir=args.base_dir, output=args.output,
                                    nprocs=args.nprocs, overwrite=args.overwrite)
    print(f"atomscore: {len(ids)} job(s) done; {len(results)} result(s) written to {output}")
    return 0


# --------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="atomscore", description=
                                     "Score atomistic data for machine-learned interatomic potentials: LTAU force "
                                     "uncertainty, QUESTS dataset information, Fisher-information matching.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a score over configurations from a JSON spec",
                         description="Run a score over configurations through a workflow from a JSON spec "
                         "(score.score_type, score_args, compute_args, query_configs_path or dataset_path, "
                         "batch_size, optional workflow {workflow_type, workflow_args} and job_details); writes "
                         "the gathered results.")
    run.add_argument("spec", help="the JSON spec file")
    run.add_argument("--root", help="root folder of the job folders (default ./atomscore_jobs, or the "
                     "workflow's root_directory)")
    run.add_argument("--base-dir", help="folder that relative paths in the spec are taken from (default: here)")
    run.add_argument("-o", "--output", help="where to write the gathered results (.xyz or .json; default: "
                     "ROOT/<ScoreClass>/<path_type>/<run>/results.*)")
    run.add_argument("--nprocs", type=int, help="jobs at once for the local workflow (default: cores)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    run.set_defaults(func=cmd_run)

    for register in _optional_commands():
        register(sub)
    return parser


def _optional_commands():
    """Commands defined next to what they run (imported lazily when invoked)."""
    from atomscore.demo import add_demo_command
    from atomscore.descriptors.cli import add_descriptors_command
    from atomscore.jobs.commands import add_jobs_command
    from atomscore.selection_cli import add_curve_command, add_select_command

    return [add_jobs_command, add_descriptors_command, add_demo_command, add_select_command, add_curve_command]


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except JobFailedError as exc:
        print(f"atomscore: {exc}", file=sys.stderr)
        return 1
    except (InputError, AtomscoreError) as exc:
        print(f"atomscore: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("atomscore: interrupted; finished job folders are kept", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
