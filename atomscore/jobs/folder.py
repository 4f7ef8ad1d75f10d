"""Job folders: what a job is on disk, and nothing else.

A job is a folder a person can read by hand::

    root/<ScoreClass>/<path_type>/<run>/<NNNNN>/
        job.json        score class (module:QualName), init args, compute args, quantity, job id
        args/*.npy      every array argument (loaded back with allow_pickle=False)
        input.xyz       the configurations (input.json for model scores)
        status.json     state, exit code, error, start/end times, attempt
        stdout.log  stderr.log
        score_results.xyz | score_results.json

Every ``run()`` writes its own ``<run>`` folder (with ``run.json``), and every ``job.json`` of it
records the run id, the SHA-256 of each of its inputs and the run's digest; gathering refuses
jobs of two runs (:func:`check_one_run`), the runner inputs changed since (:func:`verify_inputs`).
What a folder may make this process import or run is bounded by :mod:`atomscore.jobs.trust`.
The file names are those of :data:`~atomscore.jobs.paths.FILES`; the states those of :class:`JobState`; a status
is read by :func:`read_status` only. The run plan (what goes into the folders) lives with
the scores (``atomscore.score``); this module imports nothing above it.
"""

from __future__ import annotations

import contextlib
import enum
import io
import json
import os
import re
import shutil
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atomscore.errors import AtomscoreError, InputError
from atomscore.io import read_json, to_jsonable, write_json_atomic, write_text_atomic
from atomscore.jobs import trust
from atomscore.jobs.paths import FILES, ScoreKind  # noqa: F401 - FILES also importable from here, as before
from atomscore.validation import check_jsonable, is_array_file

FORMAT_VERSION = 1

JOB_FILE, STATUS_FILE, ARGS_DIR = FILES.job, FILES.status, FILES.args
ARRAY_TAG = "__ndarray__"
#: a file the caller named (a ``.npy``/``.txt`` path), copied into the folder at run()
FILE_TAG = "__file__"
#: environment variable through which a workflow tells the runner which attempt it runs
ATTEMPT_ENV = "ATOMSCORE_JOB_ATTEMPT"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_TARGET = re.compile(r"^[A-Za-z_][A-Za-z0-9_.]*:[A-Za-z_][A-Za-z0-9_.]*$")


class JobState(str, enum.Enum):
    """The states of a job; ``DONE``, ``FAILED`` and ``CANCELLED`` are final."""

    PENDING = "pending"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def final(self) -> bool:
        return self in (JobState.DONE, JobState.FAILED, JobState.CANCELLED)


class FailureReason(str, enum.Enum):
    """Why a job ended ``failed`` or ``cancelled``: ``status.json``'s ``reason``, stored as the text.

    Compare members, not strings (``FailureReason.of(status.get('reason'))``). ``TIMED_OUT``
    and ``KILLED`` are stored with their detail after the text (:meth:`detail`).
    """

    CANCELLED = "cancelled"
    NOT_SUBMITTED = "not submitted"
    COULD_NOT_START = "could not start"
    NOT_RUNNABLE = "not runnable"
    #: the local walltime ran out (followed by the walltime)
    TIMED_OUT = "timed out after walltime"
    #: the runner process died of a signal (followed by the signal's name)
    KILLED = "killed by signal"
    FOLDER_VANISHED = "folder vanished"
    COULD_NOT_RECORD = "could not record"
    RUNNER_DISAPPEARED = "runner process disappeared"
    #: the scheduler's time limit
    TIMEOUT = "timeout"
    SCHEDULER_FAILED = "failed in the scheduler"
    NO_RESULT = "ended without a result"
    DEPENDENCY_FAILED = "dependency failed"

    def __str__(self):
        return self.value

    def detail(self, text) -> str:
        """The stored reason with its detail, e.g. ``killed by signal SIGKILL``."""
        return f"{self.value} {text}"

    @classmethod
    def of(cls, reason):
        """The member a stored reason is (or starts with, for a detailed one); None if none."""
        if not reason:
            return None
        for member in cls:
            if reason == member.value or str(reason).startswith(member.value + " "):
                return member
        return None


class JobWriteError(AtomscoreError, OSError):
    """A job folder or its status could not be written (disk full, read-only, ...)."""


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


# --------------------------------------------------------------------------- status
def _read_status_file(folder) -> dict:
    try:
        data = json.loads((Path(folder) / FILES.status).read_text())
    except FileNotFoundError:
        return {}
    except (json.JSONDecodeError, UnicodeDecodeError):  # only possible if written by something else than us
        return {"state": JobState.FAILED.value, "error": "status.json is not valid JSON"}
    return data if isinstance(data, dict) else {"state": JobState.FAILED.value,
                                                "error": "status.json does not hold an object"}


def read_status(folder) -> dict:
    """The job's ``status.json`` as a dict, the one place a status is read.

    ``{}`` when the folder has no status yet; a ``failed`` status with reason ``folder
    vanished`` when the folder (or its ``job.json``) is gone.
    """
    folder = Path(folder)
    if not (folder / FILES.job).is_file():
        return {"state": JobState.FAILED.value, "reason": FailureReason.FOLDER_VANISHED.value, "exit_code": None,
                "error": f"folder vanished: the job folder {str(folder)!r} (or its {FILES.job}) was deleted"}
    return _read_status_file(folder)


def state_of(status: dict) -> JobState:
    """The :class:`JobState` of a status dict."""
    try:
        return JobState(status.get("state", JobState.PENDING.value))
    except ValueError:
        return JobState.FAILED


@contextlib.contextmanager
def _status_lock(folder: Path):
    import fcntl

    fd = os.open(folder / FILES.lock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def update_status(folder, expect=None, only_if=None, **fields):
    """Merge ``fields`` into the job's ``status.json`` (locked, atomic replace).

    Parameters
    ----------
    expect : dict, optional
        Write only if the current status holds these values (e.g. ``{'attempt': a}``: a
        bookkeeping thread never writes into a newer job at the same path).
    only_if : callable, optional
        Write only if ``only_if(current_status)`` is true.

    Returns
    -------
    dict or None
        The new status, or None when nothing was written (expectation not met, or the
        folder is gone: a vanished folder is never re-created).

    Raises
    ------
    OSError
        When the file cannot be written (disk full); no temporary file is left.
    """
    folder = Path(folder)
    fields = {k: (v.value if isinstance(v, JobState) else v) for k, v in fields.items()}
    try:
        with _status_lock(folder):
            status = _read_status_file(folder)
            if expect and any(status.get(k) != v for k, v in expect.items()):
                return None
            if only_if is not None and not only_if(status):
                return None
            status.update(fields)
            write_json_atomic(folder / FILES.status, status)
            return status
    except FileNotFoundError:  # the folder is gone: never re-create it
        return None


# --------------------------------------------------------------------------- files
def tail_text(path, lines=20, max_bytes=65536) -> str:
    """The last ``lines`` lines of a text file, reading at most its last ``max_bytes``
    (a 300 MB stderr costs 64 kB); '' if there is no such file."""
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - max_bytes))
            data = handle.read()
    except OSError:
        return ""
    text = data.decode(errors="replace")
    if size > max_bytes:
        text = text.split("\n", 1)[-1]  # drop the partial first line
    return "\n".join(text.rstrip().splitlines()[-lines:])


def open_log(path):
    """Open a log file for appending without following a symlink planted at its name."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o644)
    except OSError:
        if os.path.islink(path):
            raise InputError(f"{path}: is a symbolic link; a job's log is never written through one") from None
        raise
    return os.fdopen(fd, "ab")


def is_cleaned(folder) -> bool:
    return (Path(folder) / FILES.cleaned).exists()


def clean_folder(folder):
    """Remove a job's argument files (``args/``) and mark the folder cleaned.

    Results, logs and the status stay; a cleaned folder refuses to be run again.
    """
    folder = Path(folder)
    write_text_atomic(folder / FILES.cleaned, f"argument files removed at {now()}; this job cannot be run "
                      "again from this folder (run the score again to recompute)\n")
    shutil.rmtree(folder / FILES.args, ignore_errors=True)


def remove_temporary_files(folder):
    """Remove temporary files a killed writer may have left (``.<name>.<pid>.<id>.tmp``)."""
    for tmp in Path(folder).glob(".*.tmp"):
        tmp.unlink(missing_ok=True)


def check_submittable(folder) -> Path:
    """Refuse (InputError) to start a folder that is not a job, was cleaned, or holds results."""
    folder = Path(folder).resolve()
    if not (folder / FILES.job).is_file():
        raise InputError(f"submit: {folder} is not a job folder (no {FILES.job})")
    if is_cleaned(folder):
        raise InputError(f"submit: {folder} was cleaned (argument files removed by 'atomscore jobs clean'); it "
                         "cannot be run again, run the score again instead. Its status is left as it was.")
    existing = [n for n in (FILES.results_xyz, FILES.results_json, FILES.call_result) if (folder / n).exists()]
    if existing:
        raise InputError(f"submit: {folder} already holds results ({', '.join(existing)}), which are never "
                         "overwritten; run the score again (a new run folder) instead")
    return folder


def job_folder(calc_id, workflow=None) -> Path:
    """The folder of ``calc_id`` (an absolute path, or relative to the workflow's root)."""
    path = Path(str(calc_id))
    if not path.is_absolute() and workflow is not None and not (path / FILES.job).is_file():
        path = Path(workflow.root) / path  # relative to the root, unless it names a folder from here
    if not (path / FILES.job).is_file():
        raise InputError(f"calc id {calc_id!r}: no job folder at {str(path)!r}")
    return path


def read_job(folder) -> dict:
    """The job's ``job.json``."""
    return read_json(Path(folder) / FILES.job)


def job_folders_under(path) -> list[Path]:
    """Every job folder at or below ``path``, sorted."""
    path = Path(path)
    if (path / FILES.job).is_file():
        return [path]
    return sorted(p.parent for p in path.rglob(FILES.job))


# --------------------------------------------------------------------------- arguments
@dataclass(frozen=True)
class FileCopy:
    """An array file named by an argument, to be copied into the job folder (``args/``), so
    that a job, and any re-run of it, reads what the run started with."""

    source: str


class _ArgEncoder:
    """Turns arguments into JSON, collecting arrays to be saved as ``args/<name>.npy`` (and
    array files named by path, to be copied there)."""

    def __init__(self, prefix, subdir=FILES.args, copy_files=True):
        self.prefix = prefix
        self.subdir = subdir
        self.copy_files = copy_files
        self.arrays: dict[str, np.ndarray | FileCopy] = {}

    def _name(self, path, suffix):
        name = re.sub(r"[^A-Za-z0-9_]+", "_", path).strip("_")
        while f"{name}{suffix}" in self.arrays:
            name += "_"
        return f"{name}{suffix}"

    def encode(self, value, path):
        if self.copy_files and is_array_file(value) and Path(value).is_file():
            source = Path(value).resolve()
            name = self._name(path, source.suffix)
            self.arrays[name] = FileCopy(str(source))
            return {FILE_TAG: f"{self.subdir}/{name}"}
        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise InputError(f"{path}: a job file cannot hold an object array; pass a numeric array")
            name = self._name(path, ".npy")
            self.arrays[name] = value
            return {ARRAY_TAG: f"{self.subdir}/{name}"}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, enum.Enum):
            return to_jsonable(value)
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, dict):
            if ARRAY_TAG in value or FILE_TAG in value:
                raise InputError(f"{path}: the keys {ARRAY_TAG!r} and {FILE_TAG!r} are reserved")
            return {k: self.encode(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.encode(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value


def encode_args(args, prefix: str, name: str, subdir: str = FILES.args, copy_files: bool = True):
    """Return ``(json_data, arrays)`` for ``args``; JSON-ability is checked here.

    ``arrays`` maps file names to the arrays to save in ``subdir`` of the job folder (and,
    with ``copy_files``, to the :class:`FileCopy` of each existing ``.npy``/``.txt`` file an
    argument names: the job reads the copy).
    """
    encoder = _ArgEncoder(prefix, subdir, copy_files)
    data = encoder.encode(args, prefix)
    check_jsonable(data, name)
    return data, encoder.arrays


def decode_args(data, folder):
    """Inverse of :func:`encode_args`: arrays are read back from ``folder``.

    An ``{"__ndarray__": path}`` reference must name a file inside ``folder`` (no absolute
    path, no ``..``, no symlink leading out); anything else is refused.
    """
    if isinstance(data, dict):
        if set(data) == {ARRAY_TAG}:
            return np.load(_inside(folder, data[ARRAY_TAG]), allow_pickle=False)
        if set(data) == {FILE_TAG}:
            return str(_inside(folder, data[FILE_TAG]))
        return {k: decode_args(v, folder) for k, v in data.items()}
    if isinstance(data, list):
        return [decode_args(v, folder) for v in data]
    return data


def _inside(folder, relative) -> Path:
    base = Path(folder).resolve()
    if not isinstance(relative, str) or os.path.isabs(relative):
        raise InputError(f"{ARRAY_TAG} reference {relative!r}: expected a path relative to the job folder")
    path = (base / relative).resolve()
    if path != base and base not in path.parents:
        raise InputError(f"{ARRAY_TAG} reference {relative!r} leads outside the job folder {str(base)!r}; refused")
    return path


# --------------------------------------------------------------------------- classes
def class_reference(obj) -> dict:
    """How a job re-imports ``obj`` (a class or function defined at module level).

    Returns ``{'target': 'module:QualName', 'import_path': dir or None, 'module_file': ...}``.
    Objects defined inside functions cannot be re-created in another process and are
    refused here, at the boundary.
    """
    qualname = obj.__qualname__
    if "<locals>" in qualname:
        raise InputError(f"{qualname} is defined inside a function; a job can only re-create "
                         "classes and functions defined at module level")
    module = sys.modules.get(obj.__module__)
    module_file = getattr(module, "__file__", None)
    import_path = None
    if module_file:
        depth = obj.__module__.count(".") + 1
        if Path(module_file).name == "__init__.py":
            depth += 1
        import_path = str(Path(module_file).resolve().parents[depth - 1])
    if obj.__module__ == "__main__" and not module_file:
        raise InputError(f"{qualname} is defined in an interactive session; define it in a module "
                         "(a .py file) so that a job can import it")
    ref = {"target": f"{obj.__module__}:{qualname}", "import_path": import_path,
           "module_file": str(Path(module_file).resolve()) if module_file else None}
    if trust.is_builtin_module(obj.__module__):
        return {"target": ref["target"], "import_path": None, "module_file": None}  # by name only
    if not module_file:
        raise InputError(f"{qualname}: its module {obj.__module__!r} has no file; a job can only re-create "
                         "classes and functions defined in a .py file")
    ref["files"] = trust.module_files(obj.__module__, module_file, import_path)  # checked before import
    return ref


def is_score_class(obj) -> bool:
    """True for a subclass of ``atomscore.score.ScoreBase`` (found by walking the MRO, so
    that this module needs no import of the scores)."""
    return isinstance(obj, type) and any(c.__name__ == "ScoreBase" and c.__module__ == "atomscore.score"
                                         for c in obj.__mro__)


def is_job_call(obj) -> bool:
    """True for a function registered as a job call (see :func:`atomscore.jobs.calls.job_call`)."""
    import inspect

    return inspect.isfunction(obj) and getattr(obj, "__atomscore_job_call__", False) is True


def resolve_reference(ref, what="score", job=None):
    """Import what :func:`class_reference` described, within the trust boundary, and check it
    may be run.

    Parameters
    ----------
    ref : dict
        ``{'target': 'module:QualName', 'import_path': ..., 'module_file': ..., 'files': ...}``.
    what : {'score', 'call'}
        A score job runs ``ScoreBase`` subclasses only; a call job functions registered as
        job calls only.
    job : dict, optional
        The whole ``job.json``: a module outside atomscore is imported only when it is sealed
        with this user's key and its files still have their recorded digests
        (:mod:`atomscore.jobs.trust`).

    Raises
    ------
    UntrustedJob
        A malformed target, a user's module the folder may not name, or an object that is not
        a score class / registered job call. Nothing outside atomscore is imported before
        the checks pass.
    """
    import importlib
    import importlib.util

    target = ref.get("target") if isinstance(ref, dict) else None
    if not isinstance(target, str) or not _TARGET.match(target):
        raise trust.UntrustedJob(f"job.json: expected a target 'module:QualName', got {target!r}")
    module_name, qualname = target.split(":")
    if trust.is_builtin_module(module_name):
        if module_name.rpartition(".")[2] == "__main__":  # the one kind of atomscore module that acts on import
            raise trust.UntrustedJob(f"job.json names {target!r}, a command, not a score or job call; {trust.REFUSAL}")
        module = importlib.import_module(module_name)  # by name: never from a path the folder names
    else:
        trust.check_user_code(ref, job or {}, target)
        if module_name == "__main__":
            # A user's script: import it under another name, so its main guard does not run.
            spec = importlib.util.spec_from_file_location("atomscore_user_script", ref["module_file"])
            module = importlib.util.module_from_spec(spec)
            sys.modules["atomscore_user_script"] = module
            spec.loader.exec_module(module)
        else:
            trust.find_user_module(module_name, ref.get("import_path"), ref["module_file"])
            trust.insert_import_path(ref.get("import_path"))
            module = importlib.import_module(module_name)
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    if what == "score" and not is_score_class(obj):
        raise trust.UntrustedJob(f"job.json names {target!r}, which is not a ScoreBase subclass; {trust.REFUSAL} "
                                 "(see docs/jobs.md)")
    if what == "call" and not is_job_call(obj):
        raise trust.UntrustedJob(f"job.json names {target!r}, which is not a registered job call; "
                                 f"{trust.REFUSAL} (functions decorated with atomscore.jobs.calls.job_call)")
    return obj


# --------------------------------------------------------------------------- inputs
def serialize_inputs(kind, configs) -> tuple[str, str]:
    """``(filename, text)`` of a job's configurations: extxyz, or JSON for model scores."""
    if ScoreKind(kind) is ScoreKind.MODEL:
        data = to_jsonable(list(configs))
        check_jsonable(data, "configs")
        return FILES.input_json, json.dumps(data, indent=2)
    from atomscore.io import write_extxyz

    buffer = io.StringIO()
    try:
        write_extxyz(buffer, configs)
    except Exception as exc:
        raise InputError(f"configs: cannot be written as extxyz: {type(exc).__name__}: {exc}") from None
    return FILES.input_xyz, buffer.getvalue()


def read_inputs(folder):
    folder = Path(folder)
    if (folder / FILES.input_json).is_file():
        return read_json(folder / FILES.input_json)
    from atomscore.io import read_extxyz

    return read_extxyz(folder / FILES.input_xyz)


def new_numbered_folder(base: Path) -> Path:
    """Create and return the next free ``base/NNNNN`` (safe against concurrent runs)."""
    base.mkdir(parents=True, exist_ok=True)
    taken = [int(p.name) for p in base.iterdir() if p.name.isdigit()]
    number = max(taken, default=-1) + 1
    while True:
        folder = base / f"{number:05d}"
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            number += 1


def new_run_folder(base: Path) -> Path:
    """Create ``base/<run>`` for one ``run()``: ``YYYYMMDD-HHMMSS-<6 hex>`` (sorts by time,
    unique across processes and hosts).

    ``base`` is ``root/<ScoreClass or 'calls'>/<path_type>``: each of these folders that
    exists already must be private (:func:`atomscore.jobs.trust.check_private`, refused
    before anything is written); those made here are made private.
    """
    base = Path(base)
    try:
        trust.user_key(create=True)  # a key others can read is refused here, before anything is written
    except OSError:
        pass  # no key can be made (read-only home): the run's folders are unsealed
    levels = [base.parent.parent, base.parent, base]
    made = [p for p in levels if not p.exists()]
    for path in levels:
        if path.exists():
            trust.check_private(path, "job root")
    base.mkdir(parents=True, exist_ok=True)
    trust.make_private([p for p in made if p.exists()])
    while True:
        folder = base / f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
        try:
            folder.mkdir()
            trust.make_private([folder])
            return folder
        except FileExistsError:  # pragma: no cover - 1 in 16 million
            continue


def save_arrays(directory: Path, arrays: dict, first_paths: dict | None = None):
    """Save ``arrays`` (file name -> array) in ``directory`` with ``allow_pickle=False``.

    With ``first_paths`` (a dict kept across the folders of one run), an array already
    saved under the same name is hard-linked instead of written again.
    """
    if not arrays:
        return
    directory.mkdir(exist_ok=True)
    for name, array in arrays.items():
        path = directory / name
        first = None if first_paths is None else first_paths.get(name)
        if first is not None:
            try:
                os.link(first, path)
                continue
            except OSError:
                pass  # another file system: fall back to a copy
        tmp = path.with_name(f".{name}.tmp")
        try:
            if isinstance(array, FileCopy):
                shutil.copyfile(array.source, tmp)  # a copy, not a link: the user's file may change in place
            else:
                with open(tmp, "wb") as handle:
                    np.save(handle, array, allow_pickle=False)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        if first_paths is not None:
            first_paths.setdefault(name, path)


def abandon_run(run: Path, exc: OSError):
    """After a failed write of a run's folders (disk full, ...): remove the run folder, so
    that no half-written or pending-but-unsubmitted job is left, and raise JobWriteError."""
    shutil.rmtree(run, ignore_errors=True)
    raise JobWriteError(f"cannot write the job folders of this run under {str(run.parent)!r}: "
                        f"{exc.strerror or exc} ({type(exc).__name__}); nothing was submitted and the partial "
                        f"run folder was removed") from exc


def finish_job_folder(folder: Path, job: dict) -> dict:
    """Give a written job folder its identity (a new ``job_id``), the executables the user's
    process named, its seal, mark it pending and write its ``job.json`` last (what the runner
    reads). Everything in the folder is made private. Returns the job dict written."""
    from atomscore.validation import user_executables

    job = {**job, "job_id": uuid.uuid4().hex, "executables": user_executables()}
    job["seal"] = trust.seal(job)
    update_status(folder, state=JobState.PENDING, created=now(), job_id=job["job_id"])
    write_json_atomic(folder / FILES.job, job)
    trust.make_private([folder, *folder.rglob("*")])
    return job


def _is_input(folder: Path, path: Path) -> bool:
    rel = path.relative_to(folder).parts
    return path.is_file() and (rel[0] == FILES.args or rel == (FILES.input_xyz,) or rel == (FILES.input_json,))


def folder_inputs(folder, cache=None) -> dict:
    """``{relative path: sha256}`` of a job's inputs (``input.*`` and ``args/``); ``cache``
    (a dict kept across one run) hashes a hard-linked file once."""
    folder = Path(folder)
    out = {}
    for path in sorted(folder.rglob("*")):
        if not _is_input(folder, path) or path.name.endswith(".tmp"):
            continue
        st = path.stat()
        key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
        if cache is None or key not in cache:
            digest = trust.file_sha256(path)
            if cache is None:
                out[path.relative_to(folder).as_posix()] = digest
                continue
            cache[key] = digest
        out[path.relative_to(folder).as_posix()] = cache[key]
    return out


def finish_run(run: Path, folders: list, jobs: list, record: dict) -> list:
    """Give every job folder of a run (data files written) its ``job.json`` and the run its
    ``run.json``: one run id, the digests of each job's inputs, and the run's digest (of
    every job's inputs and settings), the same in every folder. Returns the job dicts."""
    run_id = uuid.uuid4().hex
    cache = {}
    inputs = [folder_inputs(f, cache) for f in folders]
    ignored = ("cwd", "submitted_from", "python")  # where it was run from, not what
    run_digest = trust.digest_of([{"job": {k: v for k, v in job.items() if k not in ignored}, "inputs": i}
                                  for job, i in zip(jobs, inputs)])
    written = [finish_job_folder(f, {**job, "run": run.name, "run_id": run_id, "run_digest": run_digest,
                                     "inputs": i})
               for f, job, i in zip(folders, jobs, inputs)]
    write_json_atomic(run / FILES.run, {**record, "run": run.name, "run_id": run_id, "run_digest": run_digest,
                                        "created": now(), "jobs": [f.name for f in folders]})
    trust.make_private([run, run / FILES.run])
    return written


def verify_inputs(folder, job) -> dict:
    """Refuse a job whose inputs are not those its run wrote (a file changed, added or gone).

    Raises
    ------
    UntrustedJob
        Naming the file; a job computes only against what its run started with.
    """
    recorded = job.get("inputs")
    if not isinstance(recorded, dict) or not job.get("run_id"):
        raise trust.UntrustedJob(f"{folder}: job.json records no run id or digests of its inputs (written by an "
                                 "older atomscore, or not by run()); run the score again")
    found = folder_inputs(folder)
    for name in sorted(set(recorded) | set(found)):
        if recorded.get(name) != found.get(name):
            what = "is missing" if name not in found else "was added" if name not in recorded else \
                "changed since run() wrote it"
            raise trust.UntrustedJob(f"{folder}: input {name} {what}; a job computes only against what its run "
                                     "started with: run the score again")
    return recorded


def check_one_run(folders, what) -> list:
    """Refuse to gather jobs that do not belong to one run, or results no job of it wrote.

    Every folder must record the same run id and run digest, and its ``status.json`` must
    show that its runner computed the results from these inputs (run id, job id, inputs
    digest) and wrote the results file that is there now (its sha256).

    Raises
    ------
    InputError
        Naming the folders of each run, or the folder whose results do not match.
    """
    folders = [Path(f) for f in folders]
    jobs = [read_job(f) for f in folders]
    runs: dict = {}
    for folder, job in zip(folders, jobs):
        runs.setdefault((job.get("run_id"), job.get("run_digest")), []).append(str(folder))
    if len(runs) > 1 or None in next(iter(runs)):
        parts = [f"run {rid or '(none recorded)'} (inputs {str(dig)[:12]}): {', '.join(fs)}"
                 for (rid, dig), fs in runs.items()]
        raise InputError(f"{what}: the jobs do not belong to one run; results of different runs never mix. "
                         + "; ".join(parts))
    for folder, job in zip(folders, jobs):
        status = read_status(folder)
        if status.get("state") != JobState.DONE:
            continue  # not finished: reported as such by the caller (check_finished)
        stamp = (status.get("run_id"), status.get("job_id"), status.get("inputs_digest"))
        if stamp != (job.get("run_id"), job.get("job_id"), trust.digest_of(job.get("inputs"))):
            raise InputError(f"{what}: {folder}: its status does not show a result computed by this job of run "
                             f"{job.get('run_id')} (from the inputs its run wrote); run it again")
        name = status.get("results_file")
        if not isinstance(name, str) or "/" in name or not (folder / name).is_file() \
                or trust.file_sha256(folder / name) != status.get("results_sha256"):
            raise InputError(f"{what}: {folder}: its results file {name!r} is not the one its job wrote "
                             "(changed, replaced or missing); run the job again")
    return jobs


def check_path_type(path_type):
    if not isinstance(path_type, str) or not _SAFE_NAME.match(path_type) or path_type in (".", ".."):
        raise InputError(f"path_type: expected a folder name of letters, digits, '_', '-', '.', got {path_type!r}")
    return path_type


# --------------------------------------------------------------------------- the one run-folder writer
@dataclass
class JobFiles:
    """What one job folder of a run holds before its ``job.json`` is written.

    ``job``: the ``job.json`` fields (the run's name and a job id are added); ``arrays``:
    ``args/*.npy`` of this job only; ``linked``: arrays shared by the run's jobs (written once,
    hard-linked into the other folders); ``input``: ``(file name, text)`` or None.
    """

    job: dict
    arrays: dict = field(default_factory=dict)
    linked: dict = field(default_factory=dict)
    input: tuple | None = None


def write_run(base, jobs, run_fields) -> list[Path]:
    """Write a new run folder under ``base`` holding one job folder per :class:`JobFiles`,
    then (:func:`finish_run`) every ``job.json`` and the ``run.json`` (``run_fields`` plus the
    run's name and id, the digests, creation time and job names).

    The one writer of run folders (score runs and job calls). Returns the job folders.

    Raises
    ------
    JobWriteError
        When the disk refuses (full, read-only): the partial run folder is removed.
    """
    run = new_run_folder(Path(base))
    folders = []
    linked_paths: dict[str, Path] = {}
    try:
        for files in jobs:
            folder = new_numbered_folder(run)
            save_arrays(folder / FILES.args, files.linked, linked_paths)
            save_arrays(folder / FILES.args, files.arrays)  # per job: never linked
            if files.input is not None:
                write_text_atomic(folder / files.input[0], files.input[1])
            folders.append(folder)
        # one run id and the digests of every job's inputs, in every job.json (written last)
        finish_run(run, folders, [files.job for files in jobs], run_fields)
    except OSError as exc:
        abandon_run(run, exc)
    return folders
