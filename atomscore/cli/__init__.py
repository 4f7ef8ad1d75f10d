"""The ``atomscore`` command.

``atomscore run SPEC.json``        run a score over configurations through a workflow
``atomscore jobs status ROOT``     a table of the jobs under ROOT and their states
``atomscore descriptors IN -o OUT`` attach QUESTS descriptors to configurations
``atomscore entropy DATASET``      QUESTS entropy, diversity and efficiency of a dataset, and their meaning
``atomscore bandwidth FILE``       the bandwidth of the QUESTS authors' volume rule (``quests bandwidth``)
``atomscore dh TEST --reference R`` QUESTS delta entropy of each atom of TEST against R, ranked
``atomscore overlap A B``          fraction of A's environments that B covers (``quests overlap``)
``atomscore uq CONFIGS ...``       LTAU force uncertainty of each atom (calibration: --reference-forces)
``atomscore ltau-logs TRAIN ...``  LTAU error logs of a MACE run's per-epoch checkpoints
``atomscore select POOL -n N -o OUT`` choose configurations to label next (``curve``: its learning curve)
``atomscore run --example SCORE``  a spec template of any score (FIM scores included)
``atomscore demo``                 information-matching active learning on SW silicon, as a report

Conventions of every command: ``-v``/``-q`` set how much is logged (to stderr; ``-v`` the
settings resolved and the time of each stage, ``-vv`` also every step), ``-T`` shows the
traceback of an error, and failures are one line on stderr with exit code 2 (bad input:
nothing was computed or written) or 1 (jobs or a computation failed). Warnings are one
``atomscore: warning:`` line; a closed pipe (``atomscore dh ... | head``) ends quietly with 0.
A bare ``atomscore`` prints this help.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import warnings

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
    options = [(("-v", "--verbose"), dict(action="count", help="log the settings resolved and the time of each stage (-vv: also every step)", **({"default": 0} if top else default))),
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
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

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
    from atomscore.cli.quests import add_bandwidth_command, add_overlap_command
    from atomscore.cli.selection import add_curve_command, add_select_command

    return [add_run_command, add_jobs_command, add_entropy_command, add_dh_command, add_overlap_command,
            add_bandwidth_command, add_uq_command, add_descriptors_command, add_select_command,
            add_curve_command, add_demo_command, add_ltau_logs_command]


EXAMPLES = """examples:
  atomscore entropy dataset.xyz                      entropy, diversity, efficiency of a dataset
  atomscore bandwidth dataset.xyz                    the bandwidth the QUESTS authors' volume rule gives
  atomscore dh new.xyz --reference train.xyz -o dh.xyz   per-atom delta entropy against a training set
  atomscore overlap new.xyz train.xyz                fraction of new.xyz's environments train.xyz covers
  atomscore select pool.xyz -n 20 --reference train.xyz -o to_label.xyz
  atomscore uq new.xyz --train-descriptors train.xyz --error-logs errors.npy -o uq.xyz
  atomscore run spec.json -o results.db               any score through job folders
  atomscore run --example FIMTrainingSetScore > spec.json   a spec template of any score
  atomscore jobs status atomscore_jobs
exit codes: 0 done, 2 bad input (nothing computed or written), 1 failed jobs or computation
"""


def _configure_logging(verbose, quiet):
    """Log records of ``atomscore.*`` to stderr: INFO by default, -v DEBUG, -vv STEP, -q WARNING, -qq ERROR."""
    from atomscore.cli.common import STEP

    level = {-2: logging.ERROR, -1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}.get(
        max(-2, verbose - quiet), STEP)
    logger = logging.getLogger("atomscore")
    for handler in [h for h in logger.handlers if getattr(h, "_atomscore_cli", False)]:
        logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("atomscore: %(message)s"))
    handler._atomscore_cli = True
    logger.addHandler(handler)
    logger.setLevel(level)


def _show_warning(message, category, filename, lineno, file=None, line=None):
    """``warnings.showwarning`` of the command: one ``atomscore: warning:`` line, no source line."""
    text = _one_line(message) if not isinstance(message, Warning) else _one_line(message.args[0] if message.args
                                                                               else message)
    log.warning("warning: %s", cli_wording(text))


#: library argument names -> the command's flags, for the error and warning lines of the running command
_FLAG_NAMES: dict = {}


def cli_wording(text) -> str:
    """``text`` with the library's argument names (``size``, ``atoms=``) as the running command's flags."""
    for name, flag in _FLAG_NAMES.items():
        text = re.sub(rf"(^|\(or |\(|; | )({re.escape(name)})(=|:)(?=\s|\)|$)",
                      lambda m: f"{m.group(1)}{flag}{':' if m.group(3) == ':' else ''}", text)
    return text


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
        return 2, f"error: {cli_wording(_one_line(exc))}"
    if isinstance(exc, AtomscoreError):
        return 1, f"error: {cli_wording(_one_line(exc))}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return 2, f"error: {exc.strerror or exc}: {exc.filename!r}"
    return 1, f"error: {type(exc).__name__}: {_one_line(exc)} (unexpected; run with -T for the traceback)"


def _quiet_broken_pipe() -> int:
    """A reader closed our stdout (``| head``): end quietly with 0, as Unix tools do."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail again
    except (OSError, ValueError, AttributeError):
        pass
    return 0


def _is_interrupt(exc) -> bool:
    """Whether ``exc`` is a Ctrl-C in disguise: the interrupt raised inside compiled code (quests'
    numba kernel, a C extension) comes out as ``SystemError: ... returned a result with an exception
    set`` whose cause (or context) is the KeyboardInterrupt."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, KeyboardInterrupt):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return False


def _interrupted() -> int:
    print("atomscore: interrupted; nothing more was written (finished job folders are kept)", file=sys.stderr)
    return 130


def main(argv=None) -> int:
    """The ``atomscore`` command; returns its exit code (see the module docstring)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a bare command: its help, as git and the quests CLI do
        parser.print_help()
        return 0
    args = parser.parse_args(argv)
    _configure_logging(getattr(args, "verbose", 0) or 0, getattr(args, "quiet", 0) or 0)
    _FLAG_NAMES.clear()
    _FLAG_NAMES.update(getattr(args, "flag_names", None) or {})
    show, warnings.showwarning = warnings.showwarning, _show_warning
    from atomscore.jobs.workflow import interrupts_raise

    try:
        with interrupts_raise():  # SIGTERM (a scheduler's or `kill`'s stop) ends the command as Ctrl-C does
            code = args.func(args)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        return _interrupted()
    except Exception as exc:
        if _is_interrupt(exc):
            return _interrupted()
        if getattr(args, "traceback", False):
            raise
        code, line = describe_error(exc)
        print(f"atomscore: {line}", file=sys.stderr)
        return code
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
