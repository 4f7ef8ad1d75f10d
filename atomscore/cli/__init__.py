"""The ``atomscore`` command.

``atomscore run SPEC.json``        run a score over configurations through a workflow
``atomscore jobs status ROOT``     a table of the jobs under ROOT and their states
``atomscore descriptors IN -o OUT`` attach QUESTS descriptors to configurations
``atomscore entropy DATASET``      QUESTS entropy, diversity and efficiency of a dataset
``atomscore dh TEST --reference R`` QUESTS delta entropy of each atom of TEST against R
``atomscore uq CONFIGS ...``       LTAU force uncertainty of each atom (calibration: --reference-forces)
``atomscore ltau-logs TRAIN ...``  LTAU error logs of a MACE run's per-epoch checkpoints
``atomscore select POOL -n N -o OUT`` choose configurations to label next (``curve``: its learning curve)
``atomscore demo``                 information-matching active learning on SW silicon, as a report

Conventions of every command: ``-v``/``-q`` set how much is logged (to stderr), ``-T``
shows the traceback of an error, and failures are one line on stderr with exit code 2
(bad input: nothing was computed or written) or 1 (jobs or a computation failed).
"""

from __future__ import annotations

import argparse
import logging
import sys

from atomscore.errors import AtomscoreError, InputError, JobFailedError, MissingExtraError

log = logging.getLogger("atomscore")


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

    for register in _optional_commands():
        register(sub)
    _add_global_options(parser, top=True)
    return parser


def _optional_commands():
    """The command groups, one module each (their heavy imports happen when a command runs)."""
    from atomscore.cli.demo import add_demo_command
    from atomscore.cli.jobs import add_jobs_command
    from atomscore.cli.ltau import add_ltau_logs_command, add_uq_command
    from atomscore.cli.quests import add_descriptors_command, add_dh_command, add_entropy_command
    from atomscore.cli.run import add_run_command
    from atomscore.cli.selection import add_curve_command, add_select_command

    return [add_run_command, add_jobs_command, add_entropy_command, add_dh_command, add_uq_command,
            add_descriptors_command, add_select_command, add_curve_command, add_demo_command,
            add_ltau_logs_command]


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
