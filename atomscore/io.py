"""extxyz reading and writing that keeps every float64 digit.

ASE's extxyz writer formats float columns as ``%16.8f``: positions and per-atom scores
lose everything below 1e-8, so a job's results would differ from an in-memory
``compute_batch``. ASE offers no option for this, so while we write we wrap its column
formatter to use ``%.16e`` (17 significant digits: float64 round-trips exactly). The files
stay ordinary extxyz that any reader takes.
"""

from __future__ import annotations

import threading

import ase.io
import ase.io.extxyz as _extxyz

_EXACT = "%24.16e"
_lock = threading.Lock()


def _exact_columns(original):
    def output_column_format(*args, **kwargs):
        comment, ncols, dtype, fmt = original(*args, **kwargs)
        return comment, ncols, dtype, fmt.replace("%16.8f", _EXACT)

    return output_column_format


def write_extxyz(target, images):
    """Write ``images`` (list of Atoms) to ``target`` (path or text file) as exact extxyz."""
    images = list(images)
    original = getattr(_extxyz, "output_column_format", None)
    with _lock:
        if original is not None:
            _extxyz.output_column_format = _exact_columns(original)
        try:
            ase.io.write(target, images, format="extxyz")
        finally:
            if original is not None:
                _extxyz.output_column_format = original


def read_extxyz(source, index=":"):
    """Read every configuration of an extxyz file (a list of Atoms)."""
    return ase.io.read(source, index=index, format="extxyz")
