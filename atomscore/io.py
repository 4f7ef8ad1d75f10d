"""Files: JSON and atomic writes (first section); configurations and results by suffix (second).

Atomic writes go through a temporary name in the same folder and a rename, so a killed
process or a full disk never leaves half a file, and the temporary file is removed when
the write fails.

One pair of functions, :func:`read_data` / :func:`write_data`, is used by every part of
atomscore that reads or writes configurations (the CLI, ``save_results``, job folders):

=================  =================================================================
suffix             written as
=================  =================================================================
``.xyz .extxyz``   extended XYZ, floats with 17 significant digits (exact float64); the
                   first frame records the number of frames (``atomscore_frames``)
``.traj``          ASE trajectory (per-atom arrays ASE does not keep go to ``info``)
``.db``            ASE database: per-atom arrays in ``data``, per-configuration
                   scalars as key-value pairs, everything else in ``data``
``.json``          a result dict (dataset and model scores) as JSON, or configurations
                   as an ASE JSON database
=================  =================================================================

Reading takes any format ASE reads (LAMMPS dumps, VASP, CIF, ...) besides these.
:func:`check_output` refuses, before anything is computed, an output whose suffix is
unknown, whose folder is missing or read-only or inside a job folder, that is one of the
inputs, or that exists (unless overwriting was asked for).
"""

from __future__ import annotations

import enum
import functools
import json
import numbers
import os
import uuid
import warnings
from pathlib import Path

import numpy as np

from atomscore.errors import InputError


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


def publish(tmp, path, overwrite=True):
    """Give the finished temporary file ``tmp`` its final name ``path``.

    ``overwrite=True``: an atomic rename (an existing ``path`` is replaced). ``overwrite=False``:
    a hard link, which fails when ``path`` exists, also when another process created it since
    it was checked; where links are not supported (some network file systems) the name is
    reserved with ``O_CREAT | O_EXCL`` first. ``tmp`` is gone afterwards either way.

    Raises
    ------
    InputError
        ``path`` exists and ``overwrite`` is False (the temporary file is removed).
    """
    tmp, path = Path(tmp), Path(path)
    try:
        if overwrite:
            os.replace(tmp, path)
            return path
        try:
            os.link(tmp, path)
        except FileExistsError:
            raise _exists_error(path) from None
        except OSError:  # no hard links here: reserve the name, then rename onto our own empty file
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            except FileExistsError:
                raise _exists_error(path) from None
            os.replace(tmp, path)
        return path
    finally:
        tmp.unlink(missing_ok=True)


def _exists_error(path):
    return InputError(f"{str(path)!r} exists (created while this command ran, or before); results never "
                      "overwrite a file: choose another name or pass --overwrite / overwrite=True")


def _named(exc, path):
    """An OSError without a file name (a full disk while writing) as one that names ``path``."""
    if isinstance(exc, OSError) and exc.filename is None:
        return OSError(exc.errno, f"{exc.strerror or exc} while writing", str(path))
    return exc


def _write_atomic(path, mode, write, overwrite=True):
    """Call ``write(handle)`` on a new temporary name next to ``path``, then :func:`publish` it.

    On any failure (a full disk: ``OSError`` ENOSPC, which then names ``path``) the temporary
    file is removed and the error raised; ``path`` is then either its old content or absent,
    never half written.
    """
    path = Path(path)
    tmp = temporary_name(path)
    try:
        with open(tmp, mode) as handle:
            write(handle)
            handle.flush()
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise _named(exc, path) from None
    return publish(tmp, path, overwrite)


def write_text_atomic(path, text, overwrite=True):
    """Write ``text`` to ``path`` through a temporary name (see :func:`_write_atomic`)."""
    return _write_atomic(path, "x", lambda handle: handle.write(text), overwrite)


def write_json_atomic(path, data, overwrite=True):
    """Write ``data`` (JSON-able after :func:`to_jsonable`) atomically to ``path``."""
    return write_text_atomic(path, json.dumps(to_jsonable(data), indent=2), overwrite)


def write_npy_atomic(path, array, overwrite=True):
    """Write ``array`` as ``.npy`` to ``path`` through a temporary name (no pickles)."""
    import numpy as np

    return _write_atomic(path, "xb", lambda handle: np.save(handle, np.asarray(array), allow_pickle=False),
                         overwrite)


def read_json(path):
    """The JSON content of ``path``.

    Raises
    ------
    InputError
        The file is empty or not valid JSON (half written by a killed process, edited by
        hand), naming the file and the place; ``FileNotFoundError`` when it is missing.
    """
    path = Path(path)
    text = path.read_bytes()
    try:
        return json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        state = "empty" if not text.strip() else f"not valid JSON ({exc})"
        raise InputError(f"{str(path)!r} is {state}; was it cut short or edited by hand?") from None


# --------------------------------------------------------------------------- formats by suffix

#: the file that makes a folder a job folder (``atomscore.jobs.folder.FILES.job``; named here
#: because io sits below jobs): no output of a command goes into such a folder
JOB_FILE = "job.json"

#: suffix -> format written (and read back exactly)
WRITE_FORMATS = {".xyz": "extxyz", ".extxyz": "extxyz", ".traj": "traj", ".db": "db", ".json": "json"}
#: suffixes that can hold a dict of results (dataset and model scores)
RESULT_SUFFIXES = (".json",)
#: suffixes that can hold configurations
CONFIG_SUFFIXES = tuple(WRITE_FORMATS)

# info / data key under which per-atom arrays that a format does not keep are stored
_ARRAYS_KEY = "__atomscore_arrays__"
# data key of the manifest that lets read_data rebuild Atoms exactly from an ASE database
_MANIFEST_KEY = "__atomscore__"


def output_format(path, what="output", suffixes=CONFIG_SUFFIXES) -> str:
    """The format written for ``path`` (by its suffix), or InputError naming the known ones."""
    suffix = Path(path).suffix.lower()
    if suffix not in suffixes:
        kind = "configuration" if set(suffixes) & {".xyz", ".traj"} else "results"
        raise InputError(f"{what}: cannot write {str(path)!r}: unknown suffix {suffix or '(none)'!r}; cannot tell "
                         f"a {kind} format from it: expected one of {', '.join(suffixes)} (a name ending in "
                         f"{' or '.join(suffixes)})")
    return WRITE_FORMATS.get(suffix, suffix.lstrip("."))


def same_file(a, b) -> bool:
    """Whether paths ``a`` and ``b`` name the same file (also through links)."""
    a, b = Path(a), Path(b)
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return a.resolve() == b.resolve()


def check_output(path, *, inputs=(), overwrite=False, what="--output", suffixes=CONFIG_SUFFIXES) -> Path:
    """Check an output path before any work is done; return it as a Path.

    Parameters
    ----------
    path : str or Path
    inputs : iterable of str or Path
        Files the same command reads (spec, configurations, references): the output
        may be none of them, whatever ``overwrite`` says.
    overwrite : bool
        Allow replacing an existing file.
    what : str
        Name of the argument, for messages.
    suffixes : tuple of str
        The suffixes this output may have.

    Raises
    ------
    InputError
        Unknown suffix, missing or unwritable folder, output equal to an input, or an
        existing file without ``overwrite``.
    """
    path = Path(path)
    for source in inputs:
        if source is not None and same_file(path, source):
            raise InputError(f"{what}: {str(path)!r} is also an input of this command; choose another name "
                             "(writing it would overwrite the input, and an input is never overwritten)")
    output_format(path, what, suffixes)
    folder = path.parent
    if not folder.is_dir():
        raise InputError(f"{what}: folder {str(folder)!r} of {str(path)!r} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"{what}: folder {str(folder)!r} is not writable")
    if path.is_dir():
        raise InputError(f"{what}: {str(path)!r} is a folder; expected a file name")
    for above in (folder.resolve(), *folder.resolve().parents):
        if (above / JOB_FILE).is_file():
            raise InputError(f"{what}: {str(path)!r} is inside the job folder {str(above)!r}; results are never "
                             "written into a job folder (they would replace or add to its files); write them "
                             "next to the run")
    if path.exists() and not overwrite:
        raise InputError(f"{what}: {str(path)!r} exists; results never overwrite a file "
                         "(pass --overwrite to replace it)")
    return path


def write_data(path, data, overwrite=False) -> Path:
    """Write configurations or results to ``path`` in the format of its suffix, atomically.

    Parameters
    ----------
    path : str or Path
        ``.xyz``/``.extxyz``, ``.traj``, ``.db`` or ``.json``.
    data : list of ase.Atoms, or dict / list of dicts (``.json`` only)
    overwrite : bool
        Replace an existing ``path``. Without it an existing file is refused, also one
        that another process created while this one computed (see :func:`publish`).

    The file is written under a temporary name in the same folder and renamed (or linked),
    so an interrupted write never leaves half a file and never damages an existing one.
    """
    path = Path(path)
    fmt = output_format(path, "write_data")
    images = _as_images(data, fmt, path)
    if path.exists() and not overwrite:  # early, before the work of writing
        raise _exists_error(path)
    tmp = temporary_name(path)
    try:
        if images is None:
            tmp.write_text(json.dumps(to_jsonable(data), indent=2))
        elif fmt == "extxyz":
            write_extxyz(tmp, images, count=True)
        elif fmt == "traj":
            _write_traj(tmp, images)
        else:
            _write_ase_db(tmp, images, "json" if fmt == "json" else "db")
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise _named(exc, path) from None
        raise
    return publish(tmp, path, overwrite)


def write_configs(path, images, overwrite=False) -> Path:
    """Write configurations (a list of ase.Atoms) to ``path`` by its suffix, atomically.

    The suffixes of :data:`WRITE_FORMATS` are written exactly by :func:`write_data`; any
    other format ASE writes (``.cif``, ``POSCAR``-style ``.vasp``, ...) goes through
    ``ase.io.write`` (with what that format can hold), still through a temporary name.
    """
    path = Path(path)
    if path.suffix.lower() in WRITE_FORMATS:
        return write_data(path, images, overwrite)
    import ase.io

    images = _as_images(images, "other", path)
    if path.exists() and not overwrite:
        raise _exists_error(path)
    tmp = temporary_name(path).with_suffix(path.suffix)
    try:
        ase.io.write(tmp, images)
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise InputError(f"cannot write {str(path)!r}: {type(exc).__name__}: {exc}") from None
    return publish(tmp, path, overwrite)


def read_data(path, index=":"):
    """Read what :func:`write_data` wrote, or configurations in any format ASE reads.

    Returns
    -------
    list of ase.Atoms, or the dict / list of a JSON results file
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {str(path)!r}")
    suffix = path.suffix.lower()
    _check_whole(path, suffix)
    try:
        if suffix == ".json":
            with open(path, encoding="utf-8") as f:
                data = json.load(f)
            if not _is_ase_json_db(data):
                return data
            return _read_ase_db(path, "json", index)
        if suffix == ".db":
            return _read_ase_db(path, "db", index)
        if suffix in (".xyz", ".extxyz"):
            return read_extxyz(path, index)
        import ase.io

        images = ase.io.read(path, index=index)
    except InputError:
        raise
    except Exception as exc:  # any reader's failure is one message naming the file
        raise InputError(f"cannot read {str(path)!r}: {type(exc).__name__}: {exc}") from None
    images = images if isinstance(images, list) else [images]
    if suffix == ".traj":
        for atoms in images:
            for name, value in (atoms.info.pop(_ARRAYS_KEY, None) or {}).items():
                atoms.arrays[name] = np.asarray(value)
    return images


def _check_whole(path, suffix):
    """Refuse a file that is empty, or a text file cut short (checked before any reader opens it).

    An extended XYZ file written by atomscore (and by ASE and most tools) ends with a newline;
    one cut in its last line would otherwise be read with the cut number taken as another
    value. A cut inside a frame is refused by ASE's reader (too few atom lines), which is
    named here too. An ASE database must start with SQLite's header (it is then opened
    read-only, so reading never creates or changes a file).
    """
    size = path.stat().st_size
    if size == 0:
        raise InputError(f"{str(path)!r} is empty (0 bytes); expected configurations")
    with open(path, "rb") as handle:
        head = handle.read(16)
        handle.seek(max(0, size - 1))
        last = handle.read(1)
    if suffix == ".db" and head != b"SQLite format 3\x00":
        raise InputError(f"{str(path)!r} is not an ASE database (no SQLite header); expected a .db file "
                         "written by ASE or atomscore")
    if suffix in (".xyz", ".extxyz") and last not in (b"\n", b"\r"):
        raise InputError(f"{str(path)!r} does not end with a line break: it looks cut short (a copy or a write "
                         "that did not finish); if it is whole, add a final newline")


def read_configs(path, what="configurations", index=":"):
    """Read configurations (a list of ase.Atoms) from any file :func:`read_data` reads."""
    from ase import Atoms

    try:
        data = read_data(path, index)
    except InputError as exc:
        raise InputError(f"{what}: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(a, Atoms) for a in data):
        raise InputError(f"{what}: {str(path)!r} holds {type(data).__name__} data, not configurations")
    if not data:
        raise InputError(f"{what}: {str(path)!r} holds no configurations")
    return data


def copy_with_labels(atoms):
    """A copy of ``atoms`` that keeps its calculator's results (energy, forces, stress: the labels).

    ``Atoms.copy()`` drops the calculator, and with it the labels an extxyz or database file
    was read with; the copy gets them back in an ASE ``SinglePointCalculator`` (copied arrays).
    """
    new = atoms.copy()
    results = getattr(atoms.calc, "results", None)
    if results:
        from ase.calculators.singlepoint import SinglePointCalculator

        new.calc = SinglePointCalculator(new, **{k: np.copy(v) if isinstance(v, np.ndarray) else v
                                                 for k, v in results.items()})
    return new


def _as_images(data, fmt, path):
    """The list of Atoms to write, or None for a JSON result (dict or list of dicts)."""
    from ase import Atoms

    if isinstance(data, Atoms):
        return [data]
    if fmt == "json" and (isinstance(data, dict) or (isinstance(data, list) and data
                                                      and all(isinstance(d, dict) for d in data))):
        return None
    items = list(data) if isinstance(data, (list, tuple)) else None
    if items is None or not all(isinstance(a, Atoms) for a in items):
        kind = "a dict or list of dicts, or " if fmt == "json" else ""
        raise InputError(f"write_data: {str(path)!r} takes {kind}a list of ase.Atoms, got {type(data).__name__}")
    return items


# --------------------------------------------------------------------------- exact extxyz
# ASE's extxyz writer formats float columns as ``%16.8f`` and offers no option, so
# per-atom floats are written here: the comment line (lattice, properties, info) is built
# with ASE's own public ``key_val_dict_to_str`` (which prints floats by repr: exact), the
# columns with ``%.16e`` (17 significant digits). The file is ordinary extxyz that ASE and
# any other reader take.

_COLUMN_TYPES = {"f": ("R", "%.16e"), "i": ("I", "%d"), "u": ("I", "%d"), "b": ("L", None),
                 "U": ("S", "%s"), "S": ("S", "%s"), "O": ("S", "%s")}
_NAMES = {"positions": "pos", "numbers": "Z", "symbols": "species"}


#: ``info`` key of the first frame of an extxyz file written by :func:`write_data`: how many
#: frames the file holds, so that a file cut at a frame boundary is refused when read
FRAMES_KEY = "atomscore_frames"


def write_extxyz(target, images, count=False):
    """Write ``images`` (Atoms or list of Atoms) to ``target`` (path or text file) as exact extxyz.

    ``count``: record the number of frames in the first frame's ``info[FRAMES_KEY]``
    (:func:`read_extxyz` checks it and removes it).
    """
    from ase import Atoms

    images = [images] if isinstance(images, Atoms) else list(images)
    frames = (_extxyz_frame(atoms, len(images) if count and i == 0 else None) for i, atoms in enumerate(images))
    if hasattr(target, "write"):
        for frame in frames:
            target.write(frame)
        return
    with open(target, "w", encoding="utf-8") as f:
        for frame in frames:
            f.write(frame)


def read_extxyz(source, index=":"):
    """Read the configurations of an extxyz file (a list of Atoms).

    A file whose first frame records how many frames it holds (``info[FRAMES_KEY]``, as
    :func:`write_data` writes) is refused when it holds fewer (cut at a frame boundary);
    the count is removed from ``info``.
    """
    import ase.io

    images = ase.io.read(source, index=":", format="extxyz")
    expected = images[0].info.pop(FRAMES_KEY, None) if images else None
    if expected is not None and int(expected) != len(images):
        raise InputError(f"{str(source)!r} holds {len(images)} of the {int(expected)} configurations it was written "
                         "with: it was cut short (a copy or a write that did not finish)")
    for atoms in images[1:]:
        atoms.info.pop(FRAMES_KEY, None)
    return _pick(images, index)


def _extxyz_frame(atoms, n_frames=None) -> str:
    from ase.constraints import FixAtoms
    from ase.io.extxyz import key_val_dict_to_str, per_atom_properties, per_config_properties
    from ase.stress import voigt_6_to_full_3x3_stress

    n = len(atoms)
    info = dict(atoms.info)
    columns = {"symbols": np.array(atoms.get_chemical_symbols(), dtype=str).reshape(n),
               "positions": atoms.positions}
    for name, value in atoms.arrays.items():
        if name not in ("numbers", "positions"):
            columns[name] = value
    fixed = [c for c in atoms.constraints if isinstance(c, FixAtoms)]
    if fixed:
        mask = np.ones(n, dtype=bool)
        for c in fixed:
            mask[c.index] = False
        columns["move_mask"] = mask
    if atoms.calc is not None:  # calculator results: per atom as columns, per configuration in info
        for prop, value in atoms.calc.results.items():
            if prop in per_atom_properties and prop not in columns:
                columns[prop] = np.asarray(value)
            elif prop in per_config_properties and prop not in info:
                if prop == "stress" and np.shape(value) == (6,):
                    value = voigt_6_to_full_3x3_stress(value)
                info[prop] = value
    props, fmts, cols = [], [], []  # cols: one Python list per written column (fast to format row-wise)
    for name, value in columns.items():
        value = np.asarray(value)
        if value.shape[:1] != (n,) or value.ndim > 2:
            raise InputError(f"write_extxyz: arrays[{name!r}] has shape {value.shape}; expected ({n},) or ({n}, m)")
        kind = value.dtype.kind
        if kind not in _COLUMN_TYPES:
            raise InputError(f"write_extxyz: arrays[{name!r}] has dtype {value.dtype}, which extxyz cannot hold")
        value = value.reshape(n, -1)
        type_code, fmt = _COLUMN_TYPES[kind]
        props.append(f"{_NAMES.get(name, name)}:{type_code}:{value.shape[1]}")
        if kind == "b":
            value, fmt = np.where(value, "T", "F"), "%s"
        elif kind in "USO":
            value = value.astype(str)
        fmts.extend([fmt] * value.shape[1])
        cols.extend(value.T.tolist())
    for key, value in info.items():
        if isinstance(value, str):
            info[key] = _extxyz_string(key, value)
    info.pop(FRAMES_KEY, None)
    if n_frames is not None:
        info[FRAMES_KEY] = int(n_frames)
    header = {}
    if atoms.cell.any():
        header["Lattice"] = " ".join(repr(float(x)) for x in atoms.cell.array.reshape(9))
    header["Properties"] = ":".join(props)
    header.update(info)
    header["pbc"] = np.asarray(atoms.pbc)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an info entry ASE would skip is an error, not a lost value
        try:
            comment = key_val_dict_to_str(header)
        except UserWarning as exc:
            raise InputError(f"write_extxyz: {exc}") from None
    row = " ".join(fmts)
    lines = [str(n), comment]
    lines.extend(row % values for values in zip(*cols))
    return "\n".join(lines) + "\n"


@functools.lru_cache(maxsize=4096)
def _extxyz_string(key, value):
    """How the info string ``value`` is written so that ASE's extxyz reader gives it back as
    that string: as is when it does, else in ASE's own ``_JSON`` form (``'007'``, ``'1.5'``,
    ``'True'``, ``'1 2'`` would otherwise come back as numbers, booleans or arrays)."""
    from ase.io.extxyz import key_val_dict_to_str, key_val_str_to_dict

    for form in (value, "_JSON " + json.dumps(value)):
        back = key_val_str_to_dict(key_val_dict_to_str({key: form})).get(key)
        if isinstance(back, str) and back == value:
            return form
    raise InputError(f"write_extxyz: info[{key!r}] = {value!r} cannot be written to extended XYZ so that it "
                     "is read back as the same string; write a .db or .json file instead")


# --------------------------------------------------------------------------- ASE trajectory

def _write_traj(path, images):
    """ASE trajectory; per-atom arrays it does not keep go to ``info['__atomscore_arrays__']``."""
    from ase.io.trajectory import Trajectory

    kept = {"numbers", "positions", "momenta", "masses", "tags", "initial_magmoms", "initial_charges"}
    with Trajectory(str(path), "w") as traj:
        for atoms in images:
            extra = {k: v for k, v in atoms.arrays.items() if k not in kept}
            if extra:
                calc, atoms = atoms.calc, atoms.copy()
                atoms.calc = calc  # the copy keeps the results (energy, forces) the trajectory stores
                for k in extra:
                    del atoms.arrays[k]
                atoms.info[_ARRAYS_KEY] = {k: np.array(v) for k, v in extra.items()}
            traj.write(atoms)


# --------------------------------------------------------------------------- ASE database

_DB_ARRAYS = ("numbers", "positions", "momenta", "masses", "tags", "initial_magmoms", "initial_charges")


def _key_value_pair(key, value) -> bool:
    """Whether ``info[key] = value`` can be an ASE database key-value pair, read back as it was."""
    from ase.db.core import reserved_keys, str_represents, word

    if not isinstance(key, str) or not word.match(key) or key in reserved_keys:
        return False
    if isinstance(value, (bool, np.bool_, str)):
        return not (isinstance(value, str) and any(str_represents(value, t) for t in (bool, int, float)))
    return isinstance(value, numbers.Real) and not isinstance(value, np.generic)


def _db_rows(images):
    """(atoms, key_value_pairs, data) per configuration, with the manifest that rebuilds it exactly."""
    for atoms in images:
        kvp, data = {}, {}
        manifest = {"arrays": [], "info": {}, "kvp": []}
        for name, value in atoms.arrays.items():
            if name not in _DB_ARRAYS:
                data[name] = np.array(value)
                manifest["arrays"].append(name)
        for key, value in atoms.info.items():
            if isinstance(value, np.generic):  # numpy.int64 from an extxyz reader: ASE's database cannot encode it
                value = value.item()
            if _key_value_pair(key, value):
                kvp[key] = value
                manifest["kvp"].append(key)
            else:
                slot = key if key not in data and key != _MANIFEST_KEY else f"info.{key}"
                data[slot] = value
                manifest["info"][slot] = key
        data[_MANIFEST_KEY] = manifest
        yield atoms, kvp, data


def _write_ase_db(path, images, db_type):
    import ase.db

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # keys that look like chemical formulas: still stored exactly
        if db_type == "json":
            return _write_ase_json(path, images)
        with ase.db.connect(str(path), type=db_type, append=False, use_lock_file=False) as db:
            for atoms, kvp, data in _db_rows(images):
                db.write(atoms, key_value_pairs=kvp, data=data)


def _write_ase_json(path, images):
    """An ASE JSON database written once.

    ASE's JSON backend re-reads and rewrites the whole file for every row (quadratic: 300
    configurations of 64 atoms took 5 minutes); this subclass keeps the rows in memory and
    lets ASE's own code build and encode them, so the file is what ASE writes.
    """
    from ase.db.jsondb import JSONDatabase

    class _InMemory(JSONDatabase):
        def _read_json(self):
            return self._rows

        def _write_json(self, bigdct, ids, nextid):
            self._rows = (bigdct, ids, nextid)

    Path(path).write_text("")  # exists: ASE then asks _read_json for the rows so far
    db = _InMemory(str(path), use_lock_file=False)
    db._rows = ({}, [], 1)
    for atoms, kvp, data in _db_rows(images):
        db.write(atoms, key_value_pairs=kvp, data=data)
    JSONDatabase._write_json(db, *db._rows)


def _read_only_sqlite(path):
    """An ASE SQLite database opened read-only (SQLite's ``mode=ro``): reading never writes.

    ``ase.db.connect`` opens read-write and creates its tables in any file it is given (an
    empty file became a 69 KB database by being read); ASE has no read-only option, so its
    connection method is replaced here, the one line that opens the file.
    """
    import sqlite3
    from urllib.parse import quote

    from ase.db.sqlite import SQLite3Database

    uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro"

    class _ReadOnly(SQLite3Database):
        def _connect(self):
            return sqlite3.connect(uri, uri=True, timeout=20)

    return _ReadOnly(str(path), create_indices=False, use_lock_file=False)


def _read_ase_db(path, db_type, index):
    import ase.db

    db = _read_only_sqlite(path) if db_type == "db" else ase.db.connect(str(path), type=db_type,
                                                                         use_lock_file=False)
    with db:
        rows = list(db.select())
    images = []
    for row in rows:
        atoms = row.toatoms()
        data = dict(row.data)
        manifest = data.pop(_MANIFEST_KEY, None)
        if manifest is None:  # a database written by another tool: its pairs and data as info
            atoms.info.update(row.key_value_pairs)
            atoms.info.update(data)
        else:
            for name in manifest["arrays"]:
                atoms.arrays[name] = np.asarray(data[name])
            for key in manifest["kvp"]:
                atoms.info[key] = row.key_value_pairs[key]
            for slot, key in manifest["info"].items():
                atoms.info[key] = data[slot]
        images.append(atoms)
    return _pick(images, index)


def _pick(images, index):
    """``images[index]`` as a list; ``index`` as ASE takes it (``':'``, ``'-1'``, ``'2:5'``, int, slice)."""
    if index == ":" or index is None:
        return images
    if isinstance(index, str):
        from ase.io.formats import string2index

        index = string2index(index)
    picked = images[index]
    return picked if isinstance(picked, list) else [picked]


def _is_ase_json_db(data) -> bool:
    return isinstance(data, dict) and "nextid" in data and "ids" in data
