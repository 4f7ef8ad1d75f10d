"""Validation at the boundary: the one place where user input is checked.

Every function raises :class:`~atomscore.errors.InputError` with what was expected, what
came, and where (``name`` is the argument, ``where`` the configuration or job). None of
them modifies what it is given.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np

from atomscore.errors import InputError, NonFiniteResultError

ARRAY_FILE_SUFFIXES = (".npy", ".txt")


def _where(name, where):
    return f"{name} ({where})" if where else name


def is_array_file(value) -> bool:
    """True if ``value`` is a path (str or Path) ending in ``.npy`` or ``.txt``."""
    return isinstance(value, (str, os.PathLike)) and str(value).endswith(ARRAY_FILE_SUFFIXES)


def load_array(value, name, *, ndim=None, shape=None, dtype=float, finite=True,
               allow_none=False, where=None):
    """Return ``value`` as a numpy array, reading it from a file if it is a path.

    Parameters
    ----------
    value : array_like, str or os.PathLike
        The array, or a path to a ``.npy`` file (read with ``allow_pickle=False``) or a
        ``.txt`` file (read with ``np.loadtxt``).
    name : str
        Argument name, for messages.
    ndim : int or tuple of int, optional
        Allowed numbers of dimensions.
    shape : tuple, optional
        Expected shape; ``None`` entries match any length.
    dtype : numpy dtype, optional
        Result dtype (default float64); ``None`` keeps the array's own.
    finite : bool
        Refuse NaN and infinite entries (numeric arrays only).
    allow_none : bool
        Return ``None`` for ``None`` instead of refusing it.
    where : str, optional
        Context for messages, e.g. ``"configuration 3"``.

    Returns
    -------
    numpy.ndarray
        A new array when ``value`` was converted; the caller's array is never modified
        (a view may be returned only when no conversion was needed, so callers must not
        write into it).
    """
    label = _where(name, where)
    if value is None:
        if allow_none:
            return None
        raise InputError(f"{label}: expected an array or a .npy/.txt path, got None")
    if isinstance(value, (str, os.PathLike)):
        path = Path(value)
        if not path.suffix in ARRAY_FILE_SUFFIXES:
            raise InputError(f"{label}: expected an array or a path ending in .npy or .txt, got {str(value)!r}")
        if not path.is_file():
            raise InputError(f"{label}: file not found: {str(path)!r}")
        try:
            if path.suffix == ".npy":
                arr = np.load(path, allow_pickle=False)
            else:
                arr = np.loadtxt(path, ndmin=1)
        except Exception as exc:  # unreadable file: one clear message
            raise InputError(f"{label}: cannot read {str(path)!r}: {exc}") from None
    else:
        try:
            arr = np.asarray(value)
        except Exception as exc:
            raise InputError(f"{label}: expected an array, got {type(value).__name__}: {exc}") from None
    if arr.dtype == object:
        raise InputError(f"{label}: expected a numeric array, got ragged or object data")
    if dtype is not None:
        try:
            arr = arr.astype(dtype, copy=False)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{label}: expected {np.dtype(dtype).name} values, got {arr.dtype}: {exc}") from None
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if arr.ndim not in allowed:
            raise InputError(f"{label}: expected {' or '.join(map(str, allowed))} dimensions, got shape {arr.shape}")
    if shape is not None:
        if len(shape) != arr.ndim or any(s is not None and s != a for s, a in zip(shape, arr.shape)):
            want = "(" + ", ".join("any" if s is None else str(s) for s in shape) + ")"
            raise InputError(f"{label}: expected shape {want}, got {arr.shape}")
    if finite and arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
        bad = np.argwhere(~np.isfinite(arr))[0]
        raise InputError(f"{label}: expected finite values, got {arr[tuple(bad)]} at index {tuple(int(i) for i in bad)}")
    return arr


def check_configs(configs, name="configs", allow_empty=False):
    """Check that ``configs`` is a list (or tuple) of ``ase.Atoms``; return it as a list."""
    from ase import Atoms

    if isinstance(configs, Atoms):
        raise InputError(f"{name}: expected a list of ase.Atoms, got a single Atoms; wrap it in a list")
    if not isinstance(configs, (list, tuple)):
        raise InputError(f"{name}: expected a list of ase.Atoms, got {type(configs).__name__}")
    if not configs and not allow_empty:
        raise InputError(f"{name}: expected at least one configuration, got an empty list")
    for i, atoms in enumerate(configs):
        if not isinstance(atoms, Atoms):
            raise InputError(f"{name}: configuration {i}: expected ase.Atoms, got {type(atoms).__name__}")
    return list(configs)


def check_finite_positions(atoms, where="configuration", allow_empty=False):
    """Refuse an empty configuration, or NaN/infinite positions or cell; return ``atoms``.

    ``where`` names the configuration in the message (e.g. ``"list_of_atoms: configuration 3"``).
    Positions and cell are in Å; nothing is modified.
    """
    if len(atoms) == 0 and not allow_empty:
        raise InputError(f"{where}: expected at least one atom, got an empty configuration")
    pos = np.asarray(atoms.positions)
    if not np.all(np.isfinite(pos)):
        bad = int(np.argwhere(~np.isfinite(pos))[0][0])
        raise InputError(f"{where}: expected finite positions, got {pos[bad].tolist()} for atom {bad}")
    cell = np.asarray(atoms.cell.array)
    if not np.all(np.isfinite(cell)):
        raise InputError(f"{where}: expected a finite cell, got {cell.tolist()}")
    return atoms


def check_finite_configs(configs, name="configs", allow_empty_atoms=False):
    """:func:`check_configs`, then :func:`check_finite_positions` on each (its index named)."""
    configs = check_configs(configs, name)
    positions = [a.positions for a in configs]
    if configs and (allow_empty_atoms or all(map(len, positions))):
        # one whole-list test first (10,000 configurations: 1 s one by one); the loop below
        # only runs to name the first bad configuration. Positions (n, 3) and cells (3, 3)
        # stack as they are.
        if np.isfinite(np.concatenate(positions + [a.cell.array for a in configs])).all():
            return configs
    for i, atoms in enumerate(configs):
        check_finite_positions(atoms, f"{name}: configuration {i}", allow_empty=allow_empty_atoms)
    return configs


def per_atom_array(atoms, key, index=None, ncols=None, name=None, like="the reference"):
    """Return ``atoms.arrays[key]`` as a float64 (n_atoms, ncols) array, checked.

    ``index`` is the configuration's position in its list, named in messages; ``like`` names
    what fixed ``ncols`` (e.g. the first configuration).
    """
    where = f"configuration {index}" if index is not None else "configuration"
    label = name or "descriptors_key"
    if key not in atoms.arrays:
        have = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
        raise InputError(f"{label}={key!r}: {where} has no atoms.arrays[{key!r}]; it has: {have or 'none'}")
    arr = load_array(atoms.arrays[key], f"arrays[{key!r}]", where=where)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2:
        raise InputError(f"arrays[{key!r}] ({where}): expected (n_atoms, n_features), got shape {arr.shape}")
    if ncols is not None and arr.shape[1] != ncols:
        raise InputError(f"arrays[{key!r}] ({where}): expected {ncols} columns, descriptors of dimension {ncols} "
                         f"(as {like}), got {arr.shape[1]}")
    return arr


def reference_forces(atoms, key="forces", index=None):
    """Per-atom forces of a configuration, ``(n_atoms, 3)`` float64 (eV/Å), checked finite.

    ``atoms.arrays[key]``; for ``key='forces'`` also the forces of an attached calculator that
    already holds them (ASE's extxyz reader puts a ``forces`` column there). Nothing is computed.
    """
    where = f"configuration {index}" if index is not None else "configuration"
    if not isinstance(key, str) or not key:
        raise InputError(f"forces key: expected an atoms.arrays key (string), got {key!r}")
    if key not in atoms.arrays and key == "forces" and atoms.calc is not None:
        forces = atoms.calc.get_property("forces", atoms, allow_calculation=False) \
            if "forces" in getattr(atoms.calc, "results", {}) else None
        if forces is not None:
            return load_array(forces, "calculator forces", shape=(len(atoms), 3), where=where)
    if key not in atoms.arrays:
        have = sorted(k for k in atoms.arrays if k not in ("numbers", "positions"))
        raise InputError(f"forces key {key!r}: {where} has no atoms.arrays[{key!r}]"
                         f"{' nor calculator forces' if key == 'forces' else ''}; it has: {have or 'none'}")
    return load_array(atoms.arrays[key], f"arrays[{key!r}]", shape=(len(atoms), 3), where=where)


def check_positive(value, name, where=None, allow_array=True):
    """Check a positive finite number (or, if allowed, an array of them); return it as float/array."""
    label = _where(name, where)
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise InputError(f"{label}: expected a positive number, got {value!r}") from None
    if arr.ndim > (1 if allow_array else 0) or arr.size == 0:
        raise InputError(f"{label}: expected a positive number{' or a 1-D array of them' if allow_array else ''}, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        expected = "a positive number" if arr.ndim == 0 else "positive finite values"
        raise InputError(f"{label}: expected {expected}, got {value!r}")
    return float(arr) if arr.ndim == 0 else arr


def check_int(value, name, minimum=None, where=None):
    """Check an integer (not bool) at least ``minimum``; return it as int."""
    label = _where(name, where)
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(f"{label}: expected an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{label}: expected an integer >= {minimum}, got {value}")
    return int(value)


def check_bool(value, name):
    """Check a bool (``True``/``False`` or numpy's); return it as bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def check_choice(value, name, choices, where=None):
    """Check that ``value`` is one of ``choices``; the message lists them."""
    if value not in choices:
        raise InputError(f"{_where(name, where)}: unknown value {value!r}; expected one of: {', '.join(map(repr, choices))}")
    return value


def check_keys(mapping, allowed, where, ignore=()):
    """Refuse keys of ``mapping`` outside ``allowed``; the message lists the allowed ones.

    ``ignore`` names keys accepted without being listed (e.g. ``score_quantity``).
    """
    unknown = sorted(set(mapping) - set(allowed) - set(ignore))
    if unknown:
        raise InputError(f"{where}: unknown key(s) {unknown}; expected some of: "
                         f"{', '.join(map(str, allowed)) or 'none'}")
    return mapping


def check_jsonable(value, name):
    """Check that ``value`` is JSON data (None, bool, numbers, str, lists, str-keyed dicts).

    Arrays are not accepted here: job folders store them as ``.npy`` before this check.
    """
    def walk(v, path):
        if v is None or isinstance(v, (bool, int, str)):
            return
        if isinstance(v, float):
            if not math.isfinite(v):
                raise InputError(f"{path}: JSON cannot hold {v!r}")
            return
        if isinstance(v, (list, tuple)):
            for i, item in enumerate(v):
                walk(item, f"{path}[{i}]")
            return
        if isinstance(v, dict):
            for k, item in v.items():
                if not isinstance(k, str):
                    raise InputError(f"{path}: dictionary keys must be strings for a job file, got {k!r}")
                walk(item, f"{path}[{k!r}]")
            return
        raise InputError(f"{path}: a job file cannot hold a {type(v).__name__} ({v!r:.80}); "
                         "pass numbers, strings, lists, dicts, numpy arrays or .npy paths")
    walk(value, name)
    json.dumps(value)
    return value


# ---------------------------------------------------------------------- descriptor provenance
#: ``atoms.info[<descriptors key> + DESCRIPTOR_SETTINGS_SUFFIX]`` holds the settings of the
#: descriptors in ``atoms.arrays[<descriptors key>]`` (name, cutoff, k, package version)
DESCRIPTOR_SETTINGS_SUFFIX = "_settings"


def array_digest(arr) -> dict:
    """``{'shape', 'sha256'}`` of an array's float64 values in C order: what identifies a set of
    descriptors in metadata without storing it."""
    a = np.ascontiguousarray(arr, dtype=np.float64)
    return {"shape": list(a.shape), "sha256": hashlib.sha256(a.tobytes()).hexdigest()}


def _canonical(value):
    return json.dumps(value, sort_keys=True, default=str)


def _settings_value(value):
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


def descriptor_settings(configs, key, name="configs"):
    """The descriptor settings the configurations record for ``arrays[key]`` (None if none does).

    Raises
    ------
    InputError
        Two configurations record different settings (naming both).
    """
    found, first = None, None
    for i, atoms in enumerate(configs):
        value = _settings_value(atoms.info.get(f"{key}{DESCRIPTOR_SETTINGS_SUFFIX}"))
        if value is None:
            continue
        if found is None:
            found, first = value, i
        elif _canonical(value) != _canonical(found):
            raise InputError(f"{name}: configuration {i} records descriptor settings {_canonical(value)} for "
                             f"arrays[{key!r}], configuration {first} records {_canonical(found)}; "
                             "descriptors computed with different settings cannot be compared")
    return found


def check_same_descriptor_settings(settings_a, label_a, settings_b, label_b):
    """Refuse two descriptor sets whose recorded settings differ (unknown on either side: accepted)."""
    if settings_a is None or settings_b is None:
        return
    if _canonical(settings_a) != _canonical(settings_b):
        raise InputError(f"descriptor settings differ: {label_a} were computed with {_canonical(settings_a)}, "
                         f"{label_b} with {_canonical(settings_b)}; compute both with the same descriptor")


# --------------------------------------------------------------------------- executables
#: environment variable holding the user's allow-list of executables a job may run
#: (paths or names on PATH, separated by ``os.pathsep``)
EXECUTABLES_ENV = "ATOMSCORE_EXECUTABLES"
#: None: this process runs what its caller names (the user's own process); a set of real
#: paths: the only executables it may run (set by the job runner, see docs/jobs.md)
_allowed_executables: frozenset | None = None
#: executables this process checked while unrestricted: the user named them, so a job this
#: process writes (and seals) may run them
_named_by_user: set = set()


def _real_executable(value):
    import shutil

    found = shutil.which(value) if os.sep not in value else value
    return os.path.realpath(found) if found else None


def executables_from_env(env=None) -> set:
    """The real paths of the executables listed in ``ATOMSCORE_EXECUTABLES`` (missing ones skipped)."""
    text = (os.environ if env is None else env).get(EXECUTABLES_ENV, "")
    return {p for p in (_real_executable(v) for v in text.split(os.pathsep) if v.strip()) if p}


def restrict_executables(allowed):
    """Allow this process to run only ``allowed`` (real paths); None lifts the restriction."""
    global _allowed_executables
    _allowed_executables = None if allowed is None else frozenset(os.path.realpath(p) for p in allowed)


def user_executables() -> list:
    """The executables the user's own process checked (recorded into the jobs it seals); inside
    a job, those it may run, so that the nested jobs it writes may run them too."""
    return sorted(_named_by_user | (_allowed_executables or frozenset()))


def check_executable_allowed(value, name) -> None:
    """Refuse to run ``value`` unless it is on the allow-list in force (call it before running
    any executable a user's input names).

    Raises
    ------
    InputError
        Inside a job: the executable is neither in ``ATOMSCORE_EXECUTABLES`` nor named by the
        user's own process that wrote the (sealed) job.
    """
    real = _real_executable(str(value))
    if _allowed_executables is None:
        if real:
            _named_by_user.add(real)
        return
    if real is None or real not in _allowed_executables:
        raise InputError(f"{name}: {str(value)!r} is not on your allow-list of executables, so a job does not run "
                         f"it; list it in {EXECUTABLES_ENV} (paths separated by {os.pathsep!r}), or name it in the "
                         "run() of your own process (see docs/jobs.md, trust boundary)")


def check_finite_output(value, stage, source=None, hint=None):
    """Refuse a result that holds NaN or infinity, before it is returned or written; return it.

    Parameters
    ----------
    value : float, array_like, or lists / tuples / dicts of them
        The result (non-numeric entries are skipped).
    stage : str
        What was computed (e.g. ``"Gaussian kernel sums"``), for the message.
    source : str, optional
        The input it was computed from (a file, an argument), for the message.
    hint : str, optional
        What to check, appended to the message.

    Raises
    ------
    NonFiniteResultError
        Naming the stage, the input, how many values and the first one's place.
    """
    def first_bad(v, where):
        if v is None or isinstance(v, (str, bytes)):
            return None
        if isinstance(v, dict):
            items = v.items()
        elif isinstance(v, (list, tuple)) and not (v and all(isinstance(x, (int, float)) for x in v)):
            items = enumerate(v)
        else:
            try:
                arr = np.asarray(v, dtype=float)
            except (TypeError, ValueError):
                return None
            bad = ~np.isfinite(arr)
            if not bad.any():
                return None
            at = tuple(int(i) for i in np.argwhere(bad)[0]) if arr.ndim else ()
            return int(bad.sum()), arr[at] if at else float(arr), f"{where}{list(at) if at else ''}"
        for k, item in items:
            found = first_bad(item, f"{where}[{k!r}]")
            if found:
                return found
        return None

    found = first_bad(value, "result")
    if found:
        count, bad, where = found
        of = f" of {source}" if source else ""
        raise NonFiniteResultError(f"{stage}{of}: the result holds {count} non-finite value(s) (first: {bad} at "
                                   f"{where}); nothing was returned or written"
                                   + (f"; {hint}" if hint else ""))
    return value



def common_descriptor_settings(groups, key):
    """The descriptor settings recorded by every group of configurations, checked to agree.

    The one check of descriptor provenance, used by every command and score that compares
    descriptors of several sources (a test set and its reference, a pool and its training set).

    Parameters
    ----------
    groups : list of (list of ase.Atoms, str)
        Configurations and their name for messages (e.g. ``"--reference 'train.xyz'"``).
    key : str
        The ``atoms.arrays`` key of the descriptors; settings are read from ``info[key + '_settings']``.

    Returns
    -------
    dict or None
        The settings, or None when no configuration records any.

    Raises
    ------
    InputError
        Settings differ within one group (both configurations named) or between two groups
        (both named): e.g. descriptors of cutoff 4 Å and 5 Å, which have the same width.
    """
    first, first_label = None, None
    for configs, label in groups:
        settings = descriptor_settings([a for a in configs if key in a.arrays], key, label)
        if settings is None:
            continue
        if first is None:
            first, first_label = settings, label
        else:
            check_same_descriptor_settings(first, f"the descriptors of {first_label}", settings, f"those of {label}")
    return first

