"""Files: JSON and atomic writes (first section), exact extxyz (second section).

Atomic writes go through a temporary name in the same folder and a rename, so a killed
process or a full disk never leaves half a file, and the temporary file is removed when
the write fails.

ASE's extxyz writer formats float columns as ``%16.8f``: positions and per-atom scores
lose everything below 1e-8, so a job's results would differ from an in-memory
``compute_batch``. ASE offers no option for this, so while we write we wrap its column
formatter to use ``%.16e`` (17 significant digits: float64 round-trips exactly). The files
stay ordinary extxyz that any reader takes.
"""

from __future__ import annotations

import enum
import json
import os
import threading
import uuid
from pathlib import Path

import numpy as np

import ase.io
import ase.io.extxyz as _extxyz


# --------------------------------------------------------------------------- JSON, atomic writes
def to_jsonable(value):
    """Return ``value`` with numpy arrays and scalars turned into lists and Python numbers
    (enums by name, string enums by value, paths as strings); a new object, the input is never modified."""
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, enum.Enum):  # a str enum (JobState) by its value, others by name
        return value.value if isinstance(value, str) else value.name
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    return value


def temporary_name(path) -> Path:
    """A hidden temporary name next to ``path``, unique to this process and call."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")


def write_text_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary name and a rename.

    On any failure (a full disk: ``OSError`` ENOSPC) the temporary file is removed and the
    error raised; ``path`` is then either its old content or absent, never half written.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, "w") as handle:
            handle.write(text)
            handle.flush()
        os.replace(tmp, path)
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
    return path


def write_json_atomic(path, data):
    """Write ``data`` (JSON-able after :func:`to_jsonable`) atomically to ``path``."""
    return write_text_atomic(path, json.dumps(to_jsonable(data), indent=2))


def read_json(path):
    """The JSON content of ``path``."""
    return json.loads(Path(path).read_text())


# --------------------------------------------------------------------------- extxyz
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
