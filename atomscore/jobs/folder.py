"""Job folders: what a job is on disk.

A job is a folder a person can read by hand::

    root/<ScoreClass>/<path_type>/<NNNNN>/
        job.json        score class (module:QualName), init args, compute args, quantity, format
        args/*.npy      every array argument (loaded back with allow_pickle=False)
        input.xyz       the configurations (input.json for model scores)
        status.json     state, exit code, error, start/end times (written by the runner)
        stdout.log  stderr.log
        score_results.xyz | score_results.json

Everything here is validated before the first folder is written (:func:`prepare_score_jobs`),
so bad input never leaves a half-made folder behind. No Python source is generated.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atomscore.errors import InputError
from atomscore.validation import check_configs, check_int, check_jsonable

FORMAT_VERSION = 1
JOB_FILE = "job.json"
STATUS_FILE = "status.json"
ARGS_DIR = "args"
ARRAY_TAG = "__ndarray__"
_SAFE_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


# --------------------------------------------------------------------------- files
def write_text_atomic(path, text):
    """Write ``text`` to ``path`` through a temporary name and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_json_atomic(path, data):
    write_text_atomic(path, json.dumps(data, indent=2))


def read_status(folder) -> dict:
    """The job's ``status.json`` as a dict (``{}`` if there is none yet)."""
    try:
        return json.loads((Path(folder) / STATUS_FILE).read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:  # only possible if written by something else than us
        return {"state": "failed", "error": "status.json is not valid JSON"}


def update_status(folder, **fields) -> dict:
    """Merge ``fields`` into the job's ``status.json`` (atomic replace) and return it."""
    status = read_status(folder)
    status.update(fields)
    write_json_atomic(Path(folder) / STATUS_FILE, status)
    return status


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def remove_args(folder):
    """Remove a job's temporary argument files (``args/``); results and logs stay."""
    shutil.rmtree(Path(folder) / ARGS_DIR, ignore_errors=True)


def job_folder(calc_id, workflow=None) -> Path:
    """The folder of ``calc_id`` (an absolute path, or relative to the workflow's root)."""
    path = Path(str(calc_id))
    if not path.is_absolute() and workflow is not None and not (path / JOB_FILE).is_file():
        path = Path(workflow.root) / path  # relative to the root, unless it names a folder from here
    if not (path / JOB_FILE).is_file():
        raise InputError(f"calc id {calc_id!r}: no job folder at {str(path)!r}")
    return path


# --------------------------------------------------------------------------- arguments
class _ArgEncoder:
    """Turns arguments into JSON, collecting arrays to be saved as ``args/<name>.npy``."""

    def __init__(self, prefix, subdir=ARGS_DIR):
        self.prefix = prefix
        self.subdir = subdir
        self.arrays: dict[str, np.ndarray] = {}

    def encode(self, value, path):
        from atomscore.quantity import ScoreQuantity

        if isinstance(value, np.ndarray):
            if value.dtype == object:
                raise InputError(f"{path}: a job file cannot hold an object array; pass a numeric array")
            name = re.sub(r"[^A-Za-z0-9_]+", "_", path).strip("_")
            while f"{name}.npy" in self.arrays:
                name += "_"
            self.arrays[f"{name}.npy"] = value
            return {ARRAY_TAG: f"{self.subdir}/{name}.npy"}
        if isinstance(value, np.generic):
            return value.item()
        if isinstance(value, ScoreQuantity):
            return value.name
        if isinstance(value, os.PathLike):
            return os.fspath(value)
        if isinstance(value, dict):
            if ARRAY_TAG in value:
                raise InputError(f"{path}: the key {ARRAY_TAG!r} is reserved")
            return {k: self.encode(v, f"{path}.{k}") for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.encode(v, f"{path}.{i}") for i, v in enumerate(value)]
        return value


def encode_args(args, prefix: str, name: str, subdir: str = ARGS_DIR):
    """Return ``(json_data, arrays)`` for ``args``; JSON-ability is checked here.

    ``arrays`` maps file names to the arrays to save in ``subdir`` of the job folder.
    """
    encoder = _ArgEncoder(prefix, subdir)
    data = encoder.encode(args, prefix)
    check_jsonable(data, name)
    return data, encoder.arrays


def decode_args(data, folder):
    """Inverse of :func:`encode_args`: arrays are read back from ``folder``."""
    if isinstance(data, dict):
        if set(data) == {ARRAY_TAG}:
            return np.load(Path(folder) / data[ARRAY_TAG], allow_pickle=False)
        return {k: decode_args(v, folder) for k, v in data.items()}
    if isinstance(data, list):
        return [decode_args(v, folder) for v in data]
    return data


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
    return {"target": f"{obj.__module__}:{qualname}", "import_path": import_path,
            "module_file": str(Path(module_file).resolve()) if module_file else None}


def resolve_reference(ref: dict):
    """Import what :func:`class_reference` described."""
    import importlib
    import importlib.util

    module_name, qualname = ref["target"].split(":")
    if ref.get("import_path") and ref["import_path"] not in sys.path:
        sys.path.insert(0, ref["import_path"])
    if module_name == "__main__":
        # A user's script: import it under another name, so its main guard does not run.
        spec = importlib.util.spec_from_file_location("atomscore_user_script", ref["module_file"])
        module = importlib.util.module_from_spec(spec)
        sys.modules["atomscore_user_script"] = module
        spec.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    obj = module
    for part in qualname.split("."):
        obj = getattr(obj, part)
    return obj


# --------------------------------------------------------------------------- inputs
def serialize_inputs(kind, configs) -> tuple[str, str]:
    """``(filename, text)`` of a job's configurations: extxyz, or JSON for model scores."""
    if kind == "model":
        from atomscore.score import to_jsonable

        data = to_jsonable(list(configs))
        check_jsonable(data, "configs")
        return "input.json", json.dumps(data, indent=2)
    from atomscore.io import write_extxyz

    buffer = io.StringIO()
    try:
        write_extxyz(buffer, configs)
    except Exception as exc:
        raise InputError(f"configs: cannot be written as extxyz: {type(exc).__name__}: {exc}") from None
    return "input.xyz", buffer.getvalue()


def write_inputs(folder, kind, configs):
    name, text = serialize_inputs(kind, configs)
    write_text_atomic(Path(folder) / name, text)
    return Path(folder) / name


def read_inputs(folder):
    folder = Path(folder)
    if (folder / "input.json").is_file():
        return json.loads((folder / "input.json").read_text())
    from atomscore.io import read_extxyz

    return read_extxyz(folder / "input.xyz")


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


# --------------------------------------------------------------------------- jobs
@dataclass
class PreparedJob:
    """One validated, serialised job: its input file and its (batch-specific) compute args."""

    input_name: str
    input_text: str
    compute_args: dict
    compute_arrays: dict


@dataclass
class PreparedJobs:
    """Validated, serialised jobs, ready to be written (see :func:`prepare_score_jobs`)."""

    score_name: str
    path_type: str
    header: dict
    init_arrays: dict
    jobs: list = field(default_factory=list)

    def write(self, root) -> list[Path]:
        """Write every job folder under ``root``; return their paths."""
        base = Path(root) / self.score_name / self.path_type
        folders = []
        first_paths: dict[str, Path] = {}
        for job in self.jobs:
            folder = new_numbered_folder(base)
            save_arrays(folder / ARGS_DIR, self.init_arrays, first_paths)
            save_arrays(folder / ARGS_DIR, job.compute_arrays)  # per batch: never linked
            write_text_atomic(folder / job.input_name, job.input_text)
            finish_job_folder(folder, {**self.header, "compute_args": job.compute_args, "input": job.input_name})
            folders.append(folder)
        return folders


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
        np.save(path, array, allow_pickle=False)
        if first_paths is not None:
            first_paths.setdefault(name, path)


def finish_job_folder(folder: Path, job: dict):
    """Mark a written job folder pending and write its ``job.json`` last (what the runner reads)."""
    update_status(folder, state="pending", created=now())
    write_json_atomic(folder / JOB_FILE, job)


def check_path_type(path_type):
    if not isinstance(path_type, str) or not _SAFE_NAME.match(path_type) or path_type in (".", ".."):
        raise InputError(f"path_type: expected a folder name of letters, digits, '_', '-', '.', got {path_type!r}")
    return path_type


def prepare_score_jobs(score, path_type, configs, compute_args, batch_size) -> PreparedJobs:
    """Validate a run and serialise its jobs in memory; nothing is written here.

    Raises
    ------
    InputError
        For empty or malformed configurations, ``batch_size < 1``, a bad ``path_type``,
        an unknown or unsupported quantity, arguments a job file cannot hold, or a score
        class that another process cannot import.
    """
    from atomscore.quantity import ScoreQuantity

    name = type(score).__name__
    check_path_type(path_type)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if score.kind == "model":
        if not isinstance(configs, (list, tuple)) or not configs:
            raise InputError(f"{name}.run: configs: expected a non-empty list of items, got {configs!r:.80}")
        configs = list(configs)
    else:
        configs = check_configs(configs, f"{name}.run: configs")
    if not isinstance(compute_args, dict):
        raise InputError(f"{name}.run: compute_args: expected a dict, got {type(compute_args).__name__}")
    args = dict(compute_args)
    quantity = args.pop("score_quantity", None)
    if quantity is None:
        if len(score.supported_score_quantities) != 1:
            raise InputError(f"{name}.run: compute_args needs 'score_quantity'; expected one of: "
                             + ", ".join(q.name for q in score.supported_score_quantities))
        quantity = score.supported_score_quantities[0]
    quantity = score.parse_quantity(quantity)
    args = score.prepare_compute_args(args)
    score.check_compute_args(configs, quantity, args)

    reference = class_reference(type(score))
    init_data, init_arrays = encode_args(score._init_args, "init", f"{name} init args")
    if score.single_job:
        if 1 < batch_size < len(configs) and score.kind != "dataset":
            import warnings

            warnings.warn(f"{name}.run: batch_size={batch_size} ignored; {name} needs all {len(configs)} "
                          "configurations in one job", stacklevel=3)
        bounds = [(0, len(configs))]
    else:
        bounds = [(i, min(i + batch_size, len(configs))) for i in range(0, len(configs), batch_size)]
    jobs = []
    for start, stop in bounds:
        batch_args = args if len(bounds) == 1 else score.slice_compute_args(args, start, stop)
        compute_data, compute_arrays = encode_args(batch_args, "compute", f"{name}.run compute_args")
        jobs.append(PreparedJob(*serialize_inputs(score.kind, configs[start:stop]), compute_data, compute_arrays))
    header = {
        "format_version": FORMAT_VERSION,
        "kind": "score",
        "score": reference,
        "score_kind": score.kind,
        "init_args": init_data,
        "score_quantity": ScoreQuantity(quantity).name,
        "cwd": os.getcwd(),
        "submitted_from": socket.gethostname(),
        "python": sys.executable,
    }
    return PreparedJobs(name, path_type, header, init_arrays, jobs)
