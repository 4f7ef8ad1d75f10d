"""The ``atomscore`` command.

``atomscore run SPEC.json``        run a score over configurations through a workflow
``atomscore jobs status ROOT``     a table of the jobs under ROOT and their states
``atomscore descriptors IN -o OUT`` attach QUESTS descriptors to configurations
``atomscore entropy DATASET``      QUESTS entropy, diversity and efficiency of a dataset
``atomscore dh TEST --reference R`` QUESTS delta entropy of each atom of TEST against R
``atomscore uq CONFIGS ...``       LTAU force uncertainty of each atom
``atomscore select POOL -n N -o OUT`` choose configurations to label next (``curve``: its learning curve)
``atomscore demo``                 information-matching active learning on SW silicon, as a report

Conventions of every command: ``-v``/``-q`` set how much is logged (to stderr), ``-T``
shows the traceback of an error, and failures are one line on stderr with exit code 2
(bad input: nothing was computed or written) or 1 (jobs or a computation failed).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from atomscore.errors import AtomscoreError, InputError, JobFailedError, MissingExtraError

log = logging.getLogger("atomscore")


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
    try:
        score = spec["score_class"](**spec["score_args"])
    except TypeError as exc:
        raise InputError(f"score_args of {spec['score_class'].__name__}: {exc}") from None
    want = ".xyz" if score.kind in ("atom", "configuration") else ".json"
    if output is not None:
        _check_run_output(output, score, spec, overwrite)
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


def _check_run_output(output, score, spec, overwrite):
    """Refuse a bad ``--output`` before any job runs (suffix of the score's kind, folder, inputs)."""
    from atomscore.io import CONFIG_SUFFIXES, RESULT_SUFFIXES, check_output

    inputs = [spec["spec_path"], spec["configs_path"], *_paths_in(spec["score_args"]),
              *_paths_in(spec["compute_args"])]
    suffixes = CONFIG_SUFFIXES if score.kind in ("atom", "configuration") else RESULT_SUFFIXES
    check_output(output, inputs=inputs, overwrite=overwrite, what=f"--output ({type(score).__name__} results)",
                 suffixes=suffixes)


def _paths_in(value):
    """Every string in ``value`` (nested dicts and lists) that names an existing file."""
    if isinstance(value, dict):
        return [p for v in value.values() for p in _paths_in(v)]
    if isinstance(value, list):
        return [p for v in value for p in _paths_in(v)]
    return [value] if isinstance(value, str) and os.path.isfile(value) else []


def cmd_run(args):
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


# --------------------------------------------------------------------------- parser
class _Formatter(argparse.HelpFormatter):
    """Wraps one-paragraph texts; keeps texts with line breaks (the examples) as written."""

    def _fill_text(self, text, width, indent):
        if "\n" in text:
            return "".join(indent + line for line in text.splitlines(keepends=True))
        return super()._fill_text(text, width, indent)


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit code 2) and help examples kept as written."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", _Formatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {message} (see: {self.prog} --help)\n")
        sys.exit(2)


def _add_global_options(parser, top=False):
    """-v, -q and -T on ``parser`` and every subcommand below it (so they go anywhere on the line)."""
    default = {} if top else {"default": argparse.SUPPRESS}
    options = [(("-v", "--verbose"), dict(action="count", help="log more (-vv: debug)", **({"default": 0} if top else default))),
               (("-q", "--quiet"), dict(action="count", help="log only warnings (-qq: only errors)",
                                        **({"default": 0} if top else default))),
               (("-T", "--traceback"), dict(action="store_true", help="show the full traceback of an error",
                                            **default))]
    for flags, kwargs in options:
        try:
            parser.add_argument(*flags, **kwargs)
        except argparse.ArgumentError:  # a command that uses the letter itself keeps it
            pass
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                _add_global_options(child)


def build_parser() -> argparse.ArgumentParser:
    from atomscore import __version__

    parser = _Parser(prog="atomscore", description=
                     "Score atomistic data for machine-learned interatomic potentials: LTAU force "
                     "uncertainty, QUESTS dataset information, Fisher-information matching.",
                     epilog=EXAMPLES)
    parser.add_argument("--version", action="version", version=f"atomscore {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="run a score over configurations from a JSON spec",
                         description="Run a score over configurations through a workflow from a JSON spec "
                         "(score.score_type, score_args, compute_args, query_configs_path or dataset_path, "
                         "batch_size, optional workflow {workflow_type, workflow_args} and job_details); writes "
                         "the gathered results.", epilog=RUN_EXAMPLES)
    run.add_argument("spec", help="the JSON spec file")
    run.add_argument("--root", help="root folder of the job folders (default ./atomscore_jobs, or the "
                     "workflow's root_directory)")
    run.add_argument("--base-dir", help="folder that relative paths in the spec are taken from (default: here)")
    run.add_argument("-o", "--output", help="where to write the gathered results, by suffix: .xyz, .traj, .db or "
                     ".json for per-atom and per-configuration scores, .json for dataset and model scores "
                     "(default: ROOT/<ScoreClass>/<path_type>/<run>/results.*)")
    run.add_argument("--nprocs", type=int, help="jobs at once for the local workflow (default: cores)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    run.set_defaults(func=cmd_run)

    for register in _optional_commands():
        register(sub)
    _add_global_options(parser, top=True)
    return parser


def _optional_commands():
    """Commands defined next to what they run (imported lazily when invoked)."""
    from atomscore.demo import add_demo_command
    from atomscore.descriptors.cli import add_descriptors_command
    from atomscore.jobs.commands import add_jobs_command
    from atomscore.score_commands import add_dh_command, add_entropy_command, add_uq_command
    from atomscore.selection_cli import add_curve_command, add_select_command

    return [add_jobs_command, add_entropy_command, add_dh_command, add_uq_command, add_descriptors_command,
            add_select_command, add_curve_command, add_demo_command]


RUN_EXAMPLES = """examples:
  atomscore run spec.json                      results under atomscore_jobs/<ScoreClass>/<path_type>/<run>/
  atomscore run spec.json -o results.db        an ASE database (scores in data, settings as key-value pairs)
  atomscore run spec.json -o results.xyz --overwrite --nprocs 4
spec.json:
  {"batch_size": 50, "score": {"score_type": "QUESTSDeltaEntropyScore", "query_configs_path": "new.xyz",
   "score_args": {}, "compute_args": {"score_quantity": "DELTA_ENTROPY", "reference_set": "ref.npy"}}}
"""

EXAMPLES = """examples:
  atomscore entropy dataset.xyz                      entropy, diversity, efficiency of a dataset
  atomscore dh new.xyz --reference train.xyz -o dh.xyz   per-atom delta entropy against a training set
  atomscore uq new.xyz --train-descriptors train.xyz --error-logs errors.npy -o uq.xyz
  atomscore run spec.json -o results.db               any score through job folders
  atomscore jobs status atomscore_jobs
exit codes: 0 done, 2 bad input (nothing computed or written), 1 failed jobs or computation
"""


def _configure_logging(verbose, quiet):
    """Log records of ``atomscore.*`` to stderr: INFO by default, -v DEBUG, -q WARNING, -qq ERROR."""
    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO}.get(max(-2, verbose - quiet), logging.DEBUG)
    logger = logging.getLogger("atomscore")
    for handler in [h for h in logger.handlers if getattr(h, "_atomscore_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("atomscore: %(message)s"))
    handler._atomscore_cli = True
    logger.addHandler(handler)
    logger.setLevel(level)


def _one_line(text) -> str:
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    return "; ".join(lines[:1]) if lines else ""


def describe_error(exc) -> tuple[int, str]:
    """The exit code and the one line that the command prints for ``exc``."""
    if isinstance(exc, JobFailedError):
        if exc.failures:
            first = exc.failures[0]
            error = _one_line(first.get("error") or first.get("stderr_tail") or first.get("state") or "failed")
            more = f" (and {len(exc.failures) - 1} more)" if len(exc.failures) > 1 else ""
            return 1, (f"{len(exc.failures)} job(s) failed; {first['folder']}: {error}{more}; see its "
                       "stderr.log and `atomscore jobs status`")
        return 1, _one_line(exc)
    if isinstance(exc, (InputError, MissingExtraError)):
        return 2, f"error: {_one_line(exc)}"
    if isinstance(exc, AtomscoreError):
        return 1, f"error: {_one_line(exc)}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return 2, f"error: {exc.strerror or exc}: {exc.filename!r}"
    return 1, f"error: {type(exc).__name__}: {_one_line(exc)} (unexpected; run with -T for the traceback)"


def main(argv=None) -> int:
    """The ``atomscore`` command; returns its exit code (see the module docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "verbose", 0) or 0, getattr(args, "quiet", 0) or 0)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("atomscore: interrupted; finished job folders are kept", file=sys.stderr)
        return 130
    except Exception as exc:
        if getattr(args, "traceback", False):
            raise
        code, line = describe_error(exc)
        print(f"atomscore: {line}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
