"""``atomscore run SPEC.json``: a score over configurations through job folders, from a JSON spec."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from atomscore.cli import flags
from atomscore.errors import InputError

log = logging.getLogger(__name__)


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
    from atomscore.io import read_data

    configs = read_data(configs_path)  # any format ASE reads, by suffix; JSON: property dicts or Atoms
    if isinstance(configs, dict):
        configs = [configs]
    return {
        "spec_path": path,
        "configs_path": configs_path,
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

    ``output`` is checked (suffix, folder, not an input, exists only with ``overwrite``)
    before any job folder is written. Ctrl-C or SIGTERM cancels the run's jobs (queued ones
    never start, running ones are terminated and marked cancelled) and raises KeyboardInterrupt.
    """
    from atomscore.jobs import make_workflow
    from atomscore.jobs.workflow import DEFAULT_ROOT, LocalWorkflow

    spec = load_spec(spec_path, base_dir)
    log.debug("run: %s on %d configuration(s) of %s, path_type %r, batch_size %s, workflow %s, score_args %s, "
              "compute_args %s", spec["score_class"].__name__, len(spec["configs"]), spec["configs_path"],
              spec["path_type"], spec["batch_size"], (spec["workflow"] or {}).get("workflow_type", "LOCAL"),
              _short_value(spec["score_args"]), _short_value(spec["compute_args"]))
    try:
        score = spec["score_class"](**spec["score_args"])
    except TypeError as exc:
        raise InputError(f"score_args of {spec['score_class'].__name__}: {exc}") from None
    want = ".xyz" if score.kind.on_configurations else ".json"
    if output is not None:
        _check_run_output(output, score, spec, overwrite)
    workflow = spec["workflow"]
    if workflow is None:
        workflow = LocalWorkflow(root or DEFAULT_ROOT, nprocs=nprocs)
    else:
        if not isinstance(workflow, dict):
            raise InputError(f"{spec_path}: 'workflow' must be an object with 'workflow_type' and 'workflow_args', "
                             f"got {workflow!r:.80}")
        workflow = dict(workflow, workflow_args=dict(workflow.get("workflow_args") or {}))
        if root:
            workflow["workflow_args"]["root_directory"] = root
        if nprocs is not None:  # never dropped: it applies to the local workflow, or it is refused
            kind = str(workflow.get("workflow_type", "")).upper()
            if kind != "LOCAL":
                raise InputError(f"--nprocs {nprocs}: the spec {str(spec_path)!r} names the {kind or 'unnamed'} "
                                 "workflow, whose scheduler decides how many jobs run at once; --nprocs applies "
                                 "to the local workflow only")
            given = workflow["workflow_args"].get("nprocs")
            if given is not None and given != nprocs:
                raise InputError(f"--nprocs {nprocs}: the spec {str(spec_path)!r} sets workflow_args.nprocs = "
                                 f"{given!r}; give one of them")
            workflow["workflow_args"]["nprocs"] = nprocs
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
    score.write_data(output, results, overwrite=overwrite)
    return ids, results, output


def _ignore_further_interrupts():
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)


def _check_run_output(output, score, spec, overwrite):
    """Refuse a bad ``--output`` before any job runs (suffix of the score's kind, folder, inputs)."""
    from atomscore.io import CONFIG_SUFFIXES, RESULT_SUFFIXES, check_output

    inputs = [spec["spec_path"], spec["configs_path"], *_paths_in(spec["score_args"]),
              *_paths_in(spec["compute_args"])]
    suffixes = CONFIG_SUFFIXES if score.kind.on_configurations else RESULT_SUFFIXES
    check_output(output, inputs=inputs, overwrite=overwrite, what=f"--output ({type(score).__name__} results)",
                 suffixes=suffixes)


def _paths_in(value):
    """Every string in ``value`` (nested dicts and lists) that names an existing file."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths_in(v)]
    return [value] if isinstance(value, str) and os.path.isfile(value) else []


def cmd_example(name) -> int:
    """Print the spec template of score ``name`` (stdout: JSON) and what to replace in it (stderr)."""
    import sys

    from atomscore.catalog import SCORE_TYPES
    from atomscore.cli.templates import NOTES, TEMPLATES

    if not name:
        print("\n".join(SCORE_TYPES))
        return 0
    if name not in TEMPLATES:
        raise InputError(f"--example: expected one of {', '.join(SCORE_TYPES)}, got {name!r}")
    print(json.dumps(TEMPLATES[name], indent=2))
    print(f"atomscore: a {name} spec: replace {NOTES[name]}; then atomscore run spec.json", file=sys.stderr)
    return 0


def cmd_run(args):
    if args.example is not None:
        return cmd_example(args.example)
    if args.spec is None:
        raise InputError("run: give a spec file (atomscore run --example SCORE prints one to start from)")
    ids, results, output = run_spec(args.spec, root=args.root, base_dir=args.base_dir, output=args.output,
                                    nprocs=args.nprocs, overwrite=args.overwrite)
    print(f"atomscore: {len(ids)} job(s) done; {len(results)} result(s) written to {output}")
    for result in results:  # dataset and model scores: their value, at the end
        if isinstance(result, dict):
            for key, value in result.items():
                if key.endswith("_score"):
                    print(f"{key} = {_short_value(value)}")
    return 0


def _short_value(value):
    text = json.dumps(value)
    return text if len(text) <= 200 else text[:197] + "..."


def add_run_command(subparsers):
    """Register ``atomscore run``."""
    run = subparsers.add_parser("run", help="run a score over configurations from a JSON spec",
                         description="Run a score over configurations through a workflow from a JSON spec "
                         "(score.score_type, score_args, compute_args, query_configs_path or dataset_path, "
                         "batch_size, optional workflow {workflow_type, workflow_args} and job_details); writes "
                         "the gathered results.", epilog=RUN_EXAMPLES)
    run.add_argument("spec", nargs="?", help="the JSON spec file")
    run.add_argument("--example", nargs="?", const="", metavar="SCORE",
                     help="print a spec template of SCORE (e.g. FIMTrainingSetScore) and exit; alone: the scores")
    run.add_argument("--root", help="root folder of the job folders (default ./atomscore_jobs, or the "
                     "workflow's root_directory)")
    run.add_argument("--base-dir", help="folder that relative paths in the spec are taken from (default: here)")
    run.add_argument("-o", "--output", help="where to write the gathered results, by suffix: .xyz, .traj, .db or "
                     ".json for per-atom and per-configuration scores, .json for dataset and model scores "
                     "(default: ROOT/<ScoreClass>/<path_type>/<run>/results.*)")
    flags.add_nprocs(run)
    run.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    run.set_defaults(func=cmd_run)


RUN_EXAMPLES = """examples:
  atomscore run --example QUESTSDeltaEntropyScore > spec.json   a template to edit (--example alone: the scores)
  atomscore run spec.json                      results under atomscore_jobs/<ScoreClass>/<path_type>/<run>/
  atomscore run spec.json -o results.db        an ASE database (scores in data, settings as key-value pairs)
  atomscore run spec.json -o results.xyz --overwrite --nprocs 4
spec.json:
  {"batch_size": 50, "score": {"score_type": "QUESTSDeltaEntropyScore", "query_configs_path": "new.xyz",
   "score_args": {}, "compute_args": {"score_quantity": "DELTA_ENTROPY", "reference_set": "ref.npy"}}}
"""
