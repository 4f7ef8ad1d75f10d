"""The one small error hierarchy of atomscore.

Every error a user can cause is an :class:`InputError` (a ``ValueError``), raised at the
boundary before anything is written. Failures of the machinery have their own types.
"""


class AtomscoreError(Exception):
    """Base class of every error atomscore raises on purpose."""


class InputError(AtomscoreError, ValueError):
    """Bad input: says what was expected, what came, and where (argument, configuration)."""


class RefusedJobError(InputError):
    """A job folder names something the job runner never runs (not a score, not a registered
    job call); the runner exits with its ``REFUSED`` code."""


class JobFailedError(AtomscoreError, RuntimeError):
    """One or more jobs failed, were killed, cancelled or timed out.

    Attributes
    ----------
    failures : list of dict
        One entry per failed job: ``calc_id``, ``folder``, ``state``, ``exit_code``,
        ``error`` and ``stderr_tail``.
    """

    def __init__(self, message, failures=()):
        super().__init__(message)
        self.failures = list(failures)


class NonFiniteResultError(AtomscoreError, ArithmeticError):
    """A computation gave NaN or infinity (e.g. descriptors of 1e200 whose squared distances
    overflow float64); raised instead of returning or writing the value, naming the stage
    and the input."""


class SolverError(AtomscoreError, RuntimeError):
    """A convex solver did not reach an optimal, accurate solution (status in the message)."""


class SchedulerError(AtomscoreError, RuntimeError):
    """The batch scheduler did not answer, or refused a job.

    Raised by a wait when the scheduler's status command has failed or hung for longer than
    the workflow's ``scheduler_timeout``; the message holds the command and its last output.
    """


class PotentialError(AtomscoreError, RuntimeError):
    """A potential (KIM model, simulator) could not be opened or evaluated."""


class UnknownModelError(PotentialError, InputError):
    """The potential named (a KIM model id) is not installed: bad input (exit code 2), and a
    :class:`PotentialError` for code that catches those."""


class MissingExtraError(AtomscoreError, ImportError):
    """An optional part was used without its dependencies.

    The message names the pip extra and the Debian packages that provide it.
    """


def missing_extra(what, extra, debian=(), cause=None):
    """Build a :class:`MissingExtraError` for ``what`` needing ``atomscore[extra]``."""
    msg = f"{what} needs the optional extra: pip install 'atomscore[{extra}]'"
    if debian:
        msg += f" and the Debian packages: apt-get install {' '.join(debian)}"
    if cause is not None:
        msg += f" ({type(cause).__name__}: {cause})"
    return MissingExtraError(msg)


def import_extra(module, what, extra, debian=()):
    """Import ``module``, or raise the :class:`MissingExtraError` naming ``atomscore[extra]``."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise missing_extra(what, extra, debian=debian, cause=exc) from None


class UncertaintyExceeded(AtomscoreError, RuntimeError):
    """A molecular-dynamics step left the training set's neighbourhood (see
    :class:`atomscore.ltau.md.UncertaintyCalculator`).

    Attributes
    ----------
    frame : ase.Atoms
        A copy of the configuration, with ``arrays['uncertainty']`` (eV/Å),
        ``arrays['descriptor_distance']``, ``info['step']`` and the forces and energy.
    step : int
        Index of the step (the calculator's evaluation count, 0 for the first frame).
    uncertainty, descriptor_distance : numpy.ndarray, (n_atoms,)
        The scores of the step.
    """

    def __init__(self, message, frame=None, step=None, uncertainty=None, descriptor_distance=None):
        super().__init__(message)
        self.frame = frame
        self.step = step
        self.uncertainty = uncertainty
        self.descriptor_distance = descriptor_distance
