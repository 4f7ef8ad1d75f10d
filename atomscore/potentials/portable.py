"""Private portable KIM models: built from a model driver and parameter files, or from a
parameter point of a live model, and installed into a collection of our own.

A KIM portable model that uses a driver is a small shared library holding its parameter files;
the driver (e.g. Debian's ``EAM_Dynamo__MD_120291908751_005``, installed as a compiled library
without sources) is found by name when the model is opened. So a model can be built from the
installed driver and any parameter files: we write the model's ``CMakeLists.txt`` (the KIM
API's ``add_kim_api_model_library``), and ``kim-api-collections-management install
environment`` compiles it (cmake and a C++ compiler) into the first folder of
``KIM_API_PORTABLE_MODELS_DIR``, which we point at a folder of ours: the user's and the
system's collections are never written.

A model's name holds a digest of the driver name and the parameter files (names, order and
bytes), so a folder of models is a cache: the same files are built once, and two processes
building the same model at once each build into a temporary folder and the first rename wins.

The process that opens a private model must see its folder on ``KIM_API_PORTABLE_MODELS_DIR``:
:func:`models_on_path` for this process (the KIM API reads the variable when a model is
created), :func:`environment_with` for a subprocess.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from atomscore.errors import InputError, PotentialError, missing_extra

_kimpy = None


def import_kimpy():
    """Import kimpy once; silence the KIM API's ``kim.log`` (we raise our own errors)."""
    global _kimpy
    if _kimpy is None:
        try:
            import kimpy
        except ImportError as exc:
            raise missing_extra("KIMPotential", "kim", debian=["libkim-api-dev", "openkim-models"],
                                cause=exc) from None
        # Without this the KIM API appends to ./kim.log in whatever directory we run in.
        kimpy.log.Log.push_default_verbosity(kimpy.log_verbosity.silent)
        _kimpy = kimpy
    return _kimpy


#: the KIM API's list of portable-model folders (``:``-separated; installs go to the first)
MODELS_ENV = "KIM_API_PORTABLE_MODELS_DIR"
#: where models built from parameter files are cached (default: ~/.cache/atomscore/kim-models)
CACHE_ENV = "ATOMSCORE_KIM_MODELS_DIR"
#: a file in each model folder we built: driver, files and their digest
RECORD = "atomscore-model.json"
#: seconds one model build may take
BUILD_TIMEOUT = 600

_DEFAULT_KIM_API = "kim-api-collections-management"
_CMAKE = """\
cmake_minimum_required(VERSION 3.10)
list(APPEND CMAKE_PREFIX_PATH $ENV{{KIM_API_CMAKE_PREFIX_DIR}})
find_package(KIM-API-ITEMS 2.2 REQUIRED CONFIG)
kim_api_items_setup_before_project(ITEM_TYPE "portableModel")
project({name})
kim_api_items_setup_after_project(ITEM_TYPE "portableModel")
add_kim_api_model_library(
  NAME            ${{PROJECT_NAME}}
  DRIVER_NAME     "{driver}"
  PARAMETER_FILES {files}
  )
"""


@dataclass(frozen=True)
class PrivateModel:
    """A portable model we installed: open it by ``name`` with ``collection`` on the path.

    Attributes
    ----------
    name : str
        The model's name (``<driver prefix>_atomscore_<digest[:16]>``).
    collection : str
        The folder holding it (put it on ``KIM_API_PORTABLE_MODELS_DIR``).
    driver : str
        The model driver it uses.
    digest : str
        sha256 of the driver name and the parameter files (names, order and bytes).
    files : tuple of str
        The parameter files' names, in the driver's order.
    """

    name: str
    collection: str
    driver: str
    digest: str
    files: tuple

    def metadata(self):
        """JSON-able record: name, driver, parameter file names and their digest."""
        return {"model_name": self.name, "model_driver": self.driver, "param_files": list(self.files),
                "param_files_digest": self.digest}


def default_cache_dir() -> Path:
    """Folder of cached models: ``$ATOMSCORE_KIM_MODELS_DIR``, else ``$XDG_CACHE_HOME`` (or
    ``~/.cache``) ``/atomscore/kim-models``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "atomscore" / "kim-models"


def files_digest(driver, paths) -> str:
    """sha256 (hex) of the driver name and each file's name and bytes, in order."""
    h = hashlib.sha256()
    h.update(b"driver\0" + driver.encode() + b"\0")
    for p in paths:
        data = Path(p).read_bytes()
        h.update(b"file\0" + Path(p).name.encode() + b"\0" + str(len(data)).encode() + b"\0")
        h.update(data)
    return h.hexdigest()


def model_name(driver, digest) -> str:
    """``<driver prefix>_atomscore_<digest[:16]>``: the driver family stays visible (some
    code treats model families apart, e.g. ``DUNN_``)."""
    head = re.sub(r"[^A-Za-z0-9_]", "_", driver.split("__")[0]) or "model"
    return f"{head}_atomscore_{digest[:16]}"


def check_build_tools(kim_api=_DEFAULT_KIM_API):
    """Raise PotentialError naming the Debian packages if cmake, a C++ compiler or the KIM
    collections tool is missing."""
    missing = [f"{tool} ({pkg})" for tool, pkg in
               ((kim_api, "libkim-api-dev"), ("cmake", "cmake"), ("c++", "g++"))
               if shutil.which(tool) is None]
    if missing:
        raise PotentialError("building a private KIM portable model needs " + ", ".join(missing) +
                             ": install the Debian packages named (scripts/install-system does)")


def _installed_drivers():
    kimpy = import_kimpy()
    col = kimpy.collections.create()
    n = col.cache_list_of_item_names_by_type(kimpy.collection_item_type.modelDriver)
    return sorted(col.get_item_name_by_type(i) for i in range(n))


def check_driver(driver, where="model_driver"):
    """Raise InputError unless ``driver`` is an installed KIM model driver (lists similar ones)."""
    import difflib

    if not isinstance(driver, str) or not driver:
        raise InputError(f"{where}: expected the name of an installed KIM model driver, got {driver!r}")
    names = _installed_drivers()
    if driver not in names:
        close = difflib.get_close_matches(driver, names, n=5, cutoff=0.4)
        hint = f" Installed drivers with similar names: {', '.join(close)}." if close else \
            f" {len(names)} drivers are installed; none has a similar name."
        raise InputError(f"{where}: KIM model driver {driver!r} is not installed.{hint}")


def check_param_files(param_files, where="param_files"):
    """The parameter files as a list of readable file paths (order kept), or InputError."""
    if isinstance(param_files, (str, os.PathLike)):
        param_files = [param_files]
    if not isinstance(param_files, (list, tuple)) or not param_files:
        raise InputError(f"{where}: expected a non-empty list of parameter file paths (in the driver's "
                         f"order), got {param_files!r}")
    out = []
    for i, p in enumerate(param_files):
        if not isinstance(p, (str, os.PathLike)):
            raise InputError(f"{where}[{i}]: expected a file path, got {p!r}")
        path = Path(p)
        if not path.is_file():
            raise InputError(f"{where}[{i}]: no such file: {str(p)!r}")
        if not os.access(path, os.R_OK):
            raise InputError(f"{where}[{i}]: file {str(p)!r} is not readable")
        out.append(path)
    names = [p.name for p in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"{where}: two parameter files share the name {dup[0]!r}; a KIM model holds "
                         "its files by name: rename one")
    return out


def _kim_name(name):
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise InputError(f"model name: expected a C identifier (letters, digits, '_'), got {name!r}")
    return name


def install_from_files(model_driver, param_files, collection=None, kim_api=_DEFAULT_KIM_API,
                       timeout=BUILD_TIMEOUT, expect_digest=None) -> PrivateModel:
    """Build (or find already built) the portable model of ``model_driver`` + ``param_files``.

    Parameters
    ----------
    model_driver : str
        An installed KIM model driver, e.g. ``"EAM_Dynamo__MD_120291908751_005"``.
    param_files : list of str or Path
        Its parameter files, in the order the driver reads them (not modified).
    collection : str or Path, optional
        Folder to install into (created); default :func:`default_cache_dir`.
    kim_api : str
        The ``kim-api-collections-management`` executable.
    timeout : float
        Seconds the build may take.
    expect_digest : str, optional
        Refuse (InputError) files whose digest differs (they changed since it was recorded).

    Returns
    -------
    PrivateModel
        Name, folder and digest of the model (open it inside :func:`models_on_path`).
    """
    check_driver(model_driver)
    paths = check_param_files(param_files)
    collection = Path(default_cache_dir() if collection is None else collection)
    digest = files_digest(model_driver, paths)
    if expect_digest is not None and expect_digest != digest:
        raise InputError(f"param_files: their digest is {digest}, not the recorded {expect_digest}: the files "
                         f"changed since this potential was described ({[str(p) for p in paths]})")
    name = _kim_name(model_name(model_driver, digest))
    model = PrivateModel(name, str(collection.resolve()) if collection.exists() else str(collection.absolute()),
                         model_driver, digest, tuple(p.name for p in paths))
    if _built(collection / name, digest):
        return model
    check_build_tools(kim_api)
    try:
        collection.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"collection: cannot create the model folder {str(collection)!r} ({exc})") from None
    with tempfile.TemporaryDirectory(prefix=".build-", dir=collection) as tmp:
        src = Path(tmp) / "src" / name
        src.mkdir(parents=True)
        for p in paths:
            shutil.copyfile(p, src / p.name)
        files = " ".join(f'"{p.name}"' for p in paths)
        (src / "CMakeLists.txt").write_text(_CMAKE.format(name=name, driver=model_driver, files=files))
        staging = Path(tmp) / "collection"
        staging.mkdir()
        _run_install(kim_api, src, staging, timeout, name)
        built = staging / name
        if not built.is_dir():
            raise PotentialError(f"building KIM model {name}: {kim_api} reported success but left no "
                                 f"folder {name} in {staging}")
        (built / RECORD).write_text(json.dumps(model.metadata(), indent=1))
        try:
            os.rename(built, collection / name)
        except OSError:
            if not _built(collection / name, digest):  # not another process's identical model
                raise
    return PrivateModel(name, str(collection.resolve()), model_driver, digest, model.files)


def _built(folder, digest):
    record = folder / RECORD
    if not record.is_file():
        return False
    try:
        return json.loads(record.read_text()).get("param_files_digest") == digest
    except (OSError, ValueError):
        return False


def _run_install(kim_api, src, staging, timeout, name):
    env = {**os.environ, MODELS_ENV: str(staging)}
    cmd = [kim_api, "install", "--force", "environment", str(src)]
    try:
        proc = subprocess.run(cmd, env=env, cwd=src.parent, stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise PotentialError(f"building KIM model {name} took more than {timeout} s ({' '.join(cmd)})") from None
    except OSError as exc:
        raise PotentialError(f"building KIM model {name}: cannot run {kim_api!r} ({exc})") from None
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr)[-3000:]
        raise PotentialError(f"building KIM model {name} failed (exit {proc.returncode}) with "
                             f"{' '.join(cmd)}:\n{tail}")


def install_parameterized(potential, collection, kim_api=_DEFAULT_KIM_API, timeout=BUILD_TIMEOUT) -> PrivateModel:
    """Install ``potential`` at its live parameters as a private portable model.

    The model's driver writes its parameter files (KIM API ``WriteParameterizedModel``,
    through kimpy's ``write_parameterized_model``); they are built as in
    :func:`install_from_files`, so the same point is built once per ``collection``.

    Parameters
    ----------
    potential : KIMPotential
        A model whose driver can write its parameters (SW, EAM, LJ ... drivers can).
    collection : str or Path
        Folder to install into, e.g. inside a job's folder.
    """
    with tempfile.TemporaryDirectory(prefix="atomscore-write-model-") as tmp:
        out = Path(tmp) / "model"
        out.mkdir()  # the KIM API writes into an existing folder only
        probe = "atomscore_written_model"
        try:
            potential._model.write_parameterized_model(str(out), probe)
        except RuntimeError as exc:
            raise PotentialError(f"{potential.kim_id}: its driver cannot write its parameters as a new "
                                 f"model ({exc})") from None
        driver, files = _read_cmake(out / "CMakeLists.txt", potential.kim_id)
        return install_from_files(driver, [out / f for f in files], collection, kim_api=kim_api, timeout=timeout)


def _read_cmake(path, kim_id):
    """Driver name and parameter file names from a ``CMakeLists.txt`` the KIM API wrote."""
    text = path.read_text() if path.is_file() else ""
    drv = re.search(r'DRIVER_NAME\s+"([^"]+)"', text)
    files = re.search(r"PARAMETER_FILES((?:\s+\"[^\"]+\")+)", text)
    if not drv or not files:
        raise PotentialError(f"{kim_id}: the parameterized model written by the KIM API has no driver or "
                             f"parameter files in {path.name}:\n{text[:500]}")
    return drv.group(1), re.findall(r'"([^"]+)"', files.group(1))


def environment_with(collection, env=None) -> dict:
    """A copy of ``env`` (default ``os.environ``) with ``collection`` first on the model path."""
    env = dict(os.environ if env is None else env)
    old = env.get(MODELS_ENV)
    env[MODELS_ENV] = str(collection) + (os.pathsep + old if old else "")
    return env


@contextmanager
def models_on_path(collection):
    """Put ``collection`` first on ``KIM_API_PORTABLE_MODELS_DIR`` in this process for the
    duration (models are opened inside; an opened model stays usable afterwards)."""
    old = os.environ.get(MODELS_ENV)
    os.environ[MODELS_ENV] = environment_with(collection)[MODELS_ENV]
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(MODELS_ENV, None)
        else:
            os.environ[MODELS_ENV] = old
