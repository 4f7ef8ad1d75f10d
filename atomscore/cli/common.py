"""Steps shared by the one-step commands: read inputs, attach descriptors, write scored outputs."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from atomscore.errors import InputError, NonFiniteResultError
from atomscore.quests.defaults import DEFAULT_CUTOFF, DEFAULT_K

log = logging.getLogger(__name__)

#: the log level of ``-vv``: every step of a selection (below DEBUG, the level of ``-v``)
STEP = 5
logging.addLevelName(STEP, "STEP")


def on_terminal() -> bool:
    """Whether stderr is a terminal (progress bars there; one log line per stage otherwise)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


@contextmanager
def stage(what, bar=False, **settings):
    """Log one stage of a command: its settings at -v, then ``what: done in S s``.

    The closing line is INFO (shown by default) unless the stage showed a progress bar on a
    terminal (``bar=True``), where it is DEBUG (-v); ``settings`` are logged at -v before
    the stage starts. The dict yielded takes details for the closing line (``note``).
    """
    if settings:
        log.debug("%s: %s", what, ", ".join(f"{k} {v}" for k, v in settings.items()))
    start = time.perf_counter()
    extra = {}
    yield extra
    seconds = time.perf_counter() - start
    level = logging.DEBUG if (bar and on_terminal()) else logging.INFO
    note = f"; {extra['note']}" if extra.get("note") else ""
    log.log(level, "%s: done in %.2f s%s", what, seconds, note)


def input_file(path, what) -> Path:
    """``path`` as a Path; InputError naming ``what`` when it is no file."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: file not found: {str(path)!r}")
    return path


def read_input_configs(path, what):
    """The configurations of ``path`` (any format ASE reads); InputError when there are none."""
    from atomscore.io import read_configs

    configs = read_configs(input_file(path, what), what)
    if not configs:
        raise InputError(f"{what}: {str(path)!r} holds no configurations")
    return configs


def has_descriptors(configs, key) -> bool:
    """Whether every configuration holds ``arrays[key]``."""
    return all(key in atoms.arrays for atoms in configs)


def descriptor_settings(args, *configs_lists):
    """Use the files' ``arrays[key]`` when all have them and no setting was asked; else compute."""
    asked = args.cutoff is not None or args.k is not None
    if not asked and all(has_descriptors(c, args.descriptors_key) for c in configs_lists):
        log.debug("descriptors: read from arrays[%r] of the input files (no --cutoff/-k given)", args.descriptors_key)
        return None
    return {"cutoff": DEFAULT_CUTOFF if args.cutoff is None else args.cutoff,
            "k": DEFAULT_K if args.k is None else args.k}


def attach(configs, settings, key):
    """Configurations with QUESTS descriptors in ``arrays[key]`` (copies when computed)."""
    if settings is None:
        return configs
    from atomscore.quests.descriptor import QUESTSDescriptor

    descriptor = QUESTSDescriptor(cutoff=settings["cutoff"], k=settings["k"], key=key)
    n_atoms = sum(len(a) for a in configs)
    with stage(f"QUESTS descriptors of {len(configs)} configuration(s), {n_atoms} atoms", bar=True,
               cutoff=f"{settings['cutoff']} Å", k=settings["k"], key=repr(key)):
        return descriptor.attach(configs, progress=None)


def provenance(settings, key):
    """Where the descriptors came from (metadata)."""
    if settings is None:
        return {"source": f"arrays[{key!r}] of the input files"}
    return {"source": "computed by quests", "cutoff": settings["cutoff"], "k": settings["k"]}


def stacked(configs, key, what):
    """The per-atom ``arrays[key]`` of all configurations, stacked."""
    from atomscore.validation import per_atom_array

    blocks = []
    for i, atoms in enumerate(configs):  # every configuration as wide as the first (named when not)
        blocks.append(per_atom_array(atoms, key, index=i, ncols=blocks[0].shape[1] if blocks else None,
                                     name=what, like="the first configuration"))
    return np.concatenate(blocks, axis=0)


def descriptor_array(path, what):
    """An ``(n, dim)`` descriptor array from a ``.npy``/``.txt`` file."""
    from atomscore.validation import load_array

    return load_array(str(path), what, ndim=2)


def reference_descriptors(path, configs, args, what, configs_what):
    """Descriptors of a reference (``.npy``, or configurations) and the settings used for both sides.

    A configurations file gets the same descriptor settings as ``configs``: both are read from
    the files when both hold descriptors and no setting was asked, else both are computed.
    Descriptors read from files must record the same settings (one check,
    :func:`atomscore.validation.common_descriptor_settings`), also within each file.
    """
    if path.suffix.lower() in (".npy", ".txt"):
        x = descriptor_array(path, what)
        log.debug("%s: %d descriptors of dimension %d read from %s", what, x.shape[0], x.shape[1], path)
        settings = descriptor_settings(args, configs)
        if settings is None:
            recorded_settings(args, (configs, configs_what))
        return x, settings
    ref_configs = read_input_configs(path, what)
    settings = descriptor_settings(args, configs, ref_configs)
    if settings is None:
        recorded_settings(args, (configs, configs_what), (ref_configs, f"{what} {str(path)!r}"))
    return stacked(attach(ref_configs, settings, args.descriptors_key), args.descriptors_key, what), settings


def recorded_settings(args, *groups):
    """The settings the files' descriptors record, checked to agree within and between files."""
    from atomscore.validation import common_descriptor_settings

    return common_descriptor_settings(list(groups), args.descriptors_key)


@contextlib.contextmanager
def naming(source):
    """Inside, a NaN or infinite result is refused with ``source`` (the command's input files) named."""
    try:
        yield
    except NonFiniteResultError as exc:
        raise NonFiniteResultError(f"{source}: {exc}") from None


def output_configs(inputs, scored, args):
    """What a scoring command writes: the input configurations as read (labels, info, arrays),
    or with ``--keep-descriptors`` the copies that carry the descriptors computed for them."""
    return scored if getattr(args, "keep_descriptors", False) else inputs


def write_scored(score, results, configs, metadata, args):
    """Write ``configs`` with the score's results and metadata to ``args.output``."""
    from atomscore.io import write_data

    data = score.parse_for_storage(results, configs, metadata=metadata)
    path = write_data(args.output, data, overwrite=args.overwrite)
    log.info("wrote %d configuration(s) with arrays[%r] to %s", len(data), score.result_key, path)
    return path


def check_command_output(args, inputs):
    """Refuse ``args.output`` before any work (see :func:`atomscore.io.check_output`)."""
    from atomscore.io import check_output

    return check_output(args.output, inputs=inputs, overwrite=args.overwrite)
