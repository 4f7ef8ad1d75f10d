"""The trust boundary of a job folder: what in a folder may make this process run code.

A job folder is data. Whatever it says, the runner and the ``atomscore jobs`` commands

* import built-in scores and job calls by name only (modules of the ``atomscore`` package,
  never from a path the folder names);
* import a user's own score or job call only when the folder is *sealed* — its ``job.json``
  carries an HMAC made with this user's key when ``run()`` wrote it — and the module's
  files still have the SHA-256 digests recorded then (checked before anything is imported);
* refuse a job tree that others can write (group- or world-writable, or owned by another
  user), as ssh refuses such a key;
* run executables only from the user's allow-list (:data:`atomscore.validation.EXECUTABLES_ENV`,
  and those the user's own process checked before writing a sealed folder);
* signal only a process whose ``/proc`` command line and start time prove it is the runner
  of that folder.

docs/jobs.md ("The trust boundary of a job folder") explains each rule.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
import sys
from pathlib import Path

from atomscore.errors import InputError, RefusedJobError

#: environment variable naming the key file (default ``$XDG_CONFIG_HOME/atomscore/job-key``)
KEY_ENV = "ATOMSCORE_KEY_FILE"
#: the words every refusal of code named by a folder carries (the runner exits 2 on them)
REFUSAL = "the job runner runs scores and registered job calls only"


class UntrustedJob(RefusedJobError):
    """A job folder asked for something outside the trust boundary (refused, exit code 2)."""


# --------------------------------------------------------------------------- digests
def file_sha256(path) -> str:
    """SHA-256 (hex) of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for piece in iter(lambda: handle.read(1 << 20), b""):
            digest.update(piece)
    return digest.hexdigest()


def canonical(value) -> bytes:
    """The one byte form of JSON data that digests and seals are made of."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def digest_of(value) -> str:
    return hashlib.sha256(canonical(value)).hexdigest()


# --------------------------------------------------------------------------- the user's key
def key_file() -> Path:
    """Where this user's job key lives (``$ATOMSCORE_KEY_FILE``, else the XDG config folder)."""
    if os.environ.get(KEY_ENV):
        return Path(os.environ[KEY_ENV]).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "atomscore" / "job-key"


def _read_key(path: Path) -> bytes:
    st = os.stat(path)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise InputError(f"{path}: the atomscore job key must be yours and readable by you alone (mode "
                         f"{stat.S_IMODE(st.st_mode):04o}, owner uid {st.st_uid}); run: chmod 600 {path}")
    key = path.read_bytes().strip()
    if len(key) < 32:
        raise InputError(f"{path}: not an atomscore job key (too short); remove it, a new one is made on the next run")
    return key


def user_key(create: bool) -> bytes | None:
    """This user's key (made on first use when ``create``), or None when there is none."""
    path = key_file()
    if not path.exists():
        if not create:
            return None
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(secrets.token_hex(32) + "\n")
            os.link(tmp, path)  # whole or not at all; another process's key wins if it came first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
    return _read_key(path)


def seal(job: dict) -> str | None:
    """The HMAC-SHA256 of ``job`` (without its ``seal``) under this user's key; None when no
    key can be made (a read-only home): such a folder runs built-in scores only."""
    try:
        key = user_key(create=True)
    except OSError:
        return None
    body = {k: v for k, v in job.items() if k != "seal"}
    return hmac.new(key, canonical(body), hashlib.sha256).hexdigest()


def is_sealed(job: dict) -> bool:
    """True if ``job`` carries a seal made with this user's key over exactly its content."""
    mark = job.get("seal") if isinstance(job, dict) else None
    if not isinstance(mark, str):
        return False
    try:
        key = user_key(create=False)
    except OSError:
        return False
    if key is None:
        return False
    body = {k: v for k, v in job.items() if k != "seal"}
    return hmac.compare_digest(mark, hmac.new(key, canonical(body), hashlib.sha256).hexdigest())


# --------------------------------------------------------------------------- who can write the tree
def check_private(path, what="job folder"):
    """Refuse ``path`` if another user owns it or anyone but its owner may write it.

    Raises
    ------
    UntrustedJob
        Naming the path, its mode and owner, and the ``chmod`` that fixes it.
    """
    path = Path(path)
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise UntrustedJob(f"{path}: is a symbolic link inside a {what}; refused (a job tree holds no links)")
    if st.st_uid not in (os.getuid(), 0):
        raise UntrustedJob(f"{path}: owned by uid {st.st_uid}, not by you (uid {os.getuid()}); a {what} others "
                           "own is refused")
    sticky_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX  # like /tmp: others cannot touch ours
    if st.st_mode & 0o022 and not sticky_dir:
        raise UntrustedJob(f"{path}: writable by others (mode {stat.S_IMODE(st.st_mode):04o}); a {what} others can "
                           f"write is refused, as ssh refuses such a key. Run: chmod go-w {path}")


def check_private_tree(folder, levels: int):
    """:func:`check_private` on ``folder``, its files (not the logs and status it writes
    itself) and ``levels`` folders above it (up to the workflow root)."""
    folder = Path(folder)
    for directory in [folder, *list(folder.parents)[:levels]]:
        check_private(directory)
    for path in sorted(folder.rglob("*")):
        if path.name in ("status.json", ".status.lock", "stdout.log", "stderr.log") or path.name.endswith(".tmp"):
            continue
        check_private(path)


def make_private(paths):
    """Remove group and world write from ``paths`` (what this process just created)."""
    for path in paths:
        mode = stat.S_IMODE(os.lstat(path).st_mode)
        if mode & 0o022:
            os.chmod(path, mode & ~0o022)


# --------------------------------------------------------------------------- code named by a folder
def is_builtin_module(module_name: str) -> bool:
    return module_name == "atomscore" or module_name.startswith("atomscore.")


def module_files(module_name: str, module_file: str, import_path: str | None) -> dict:
    """``{path: sha256}`` of a user's module file and of the ``__init__.py`` of each package
    above it (under ``import_path``): the code an import of it runs."""
    files = {str(Path(module_file).resolve()): file_sha256(module_file)}
    parts = module_name.split(".")
    for i in range(1, len(parts)):
        init = Path(import_path, *parts[:i], "__init__.py")
        if init.is_file():
            files[str(init.resolve())] = file_sha256(init)
    return files


def check_user_code(ref: dict, job: dict, target: str):
    """Before a user's module named by ``job.json`` is imported: the folder must be sealed by
    this user and every recorded file must still have its digest.

    Raises
    ------
    UntrustedJob
    """
    if not is_sealed(job):
        raise UntrustedJob(f"job.json names {target!r}, a module outside atomscore, but the folder is not sealed "
                           f"with your key ({key_file()}); {REFUSAL}: built-in ones by name, your own only as "
                           "recorded by your run() (see docs/jobs.md). Nothing was imported.")
    files = ref.get("files")
    if not isinstance(files, dict) or not files or ref.get("module_file") not in files:
        raise UntrustedJob(f"job.json names {target!r} without the digests of its files; {REFUSAL}. "
                           "Nothing was imported.")
    for path, recorded in files.items():
        try:
            now = file_sha256(path)
        except OSError as exc:
            raise UntrustedJob(f"{target!r}: cannot read {path} to check it ({exc.strerror or exc}); "
                               "nothing was imported") from None
        if now != recorded:
            raise UntrustedJob(f"{target!r}: {path} changed since run() recorded it (sha256 {recorded[:12]}..., now "
                               f"{now[:12]}...); {REFUSAL}. Run the score again to use the new code.")


def find_user_module(module_name: str, import_path: str, module_file: str):
    """Check, without running any of it, that importing ``module_name`` from ``import_path``
    loads the recorded files (nothing earlier on the path shadows them)."""
    import importlib.machinery

    top = module_name.split(".")[0]
    spec = importlib.machinery.PathFinder.find_spec(top, [import_path])
    origin = Path(spec.origin).resolve() if spec is not None and spec.origin else None
    expected = Path(module_file) if "." not in module_name else Path(import_path, top, "__init__.py")
    if origin is None or origin != expected.resolve():
        raise UntrustedJob(f"{module_name!r} from {import_path} is {origin}, not the recorded {expected}; "
                           "nothing was imported")


def insert_import_path(import_path):
    if import_path and import_path not in sys.path:
        sys.path.insert(0, import_path)


# --------------------------------------------------------------------------- processes
def process_identity(pid) -> dict | None:
    """``{'cmdline': [...], 'start': ticks since boot, 'pgid': ...}`` of a live process, or
    None (gone, another OS, not readable)."""
    try:
        pid = int(pid)
        stat_text = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, TypeError):
        return None
    fields = stat_text.rpartition(")")[2].split()
    try:
        return {"cmdline": [p.decode(errors="replace") for p in cmdline.split(b"\0") if p],
                "start": int(fields[19]), "pgid": int(fields[2])}
    except (IndexError, ValueError):
        return None


def is_runner_of(status: dict, folder) -> bool:
    """True if the process ``status['pid']`` is, provably, the runner of ``folder``: its
    command line ends in ``-m atomscore.job <folder>``, it leads its own process group, and
    it started when the runner recorded (``status['proc_start']``)."""
    pid, started = status.get("pid"), status.get("proc_start")
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 1 or isinstance(started, bool) \
            or not isinstance(started, int):
        return False
    found = process_identity(pid)
    if found is None:
        return False
    return (found["start"] == started and found["pgid"] == pid
            and found["cmdline"][-3:] == ["-m", "atomscore.job", str(Path(folder).resolve())])
