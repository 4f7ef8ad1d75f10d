"""The worker processes of FIMTrainingSetScore with ``nprocs > 1``.

:func:`_parallel` splits the configurations into balanced groups (:func:`_balance`): this
process computes one, forked workers the others, each with its own
:class:`~atomscore.fim.evaluator._FIMEvaluator`. Workers are kept between calls (:data:`_KEPT`,
stopped by :func:`close_workers`), get their groups as arrays through a pipe and send each FIM
back as it is computed; an error comes back with the worker's traceback
(:class:`WorkerTraceback`). Where fork is not available, a ``ProcessPoolExecutor`` runs
:func:`_worker_init` and :func:`_worker_fim` instead.
"""

from __future__ import annotations

import os
import pickle
import sys
import threading
import time

from atomscore.errors import InputError
from atomscore.fim.evaluator import _FIMEvaluator, _fims, _is_plain_central
from atomscore.fim.parameters import IdentityTransform


def _pool_context():
    """'fork' where available: importing information_matching (for its transforms) replaces
    multiprocessing's default reducer with one that breaks 'spawn' and 'forkserver' start-up.
    Workers open their own KIM model in the initializer, so nothing of the parent's model is used."""
    import multiprocessing as mp
    import sys

    return mp.get_context("spawn" if sys.platform == "win32" else "fork")


def _pool_init_args(ev, parameters_optimize, derivative_kwargs):
    """The arguments of :func:`_worker_init`, with every module a worker will need imported
    here first, so that no forked worker pays for an import (it inherits the parent's).

    The transform goes to the workers as the object itself, never rebuilt from its
    ``jsonable_kwargs`` (which need not hold its state): a forked worker inherits it; where
    workers are spawned it is pickled, and one that cannot be is refused here, before any work.
    """
    _preimport(ev)
    transform = None if isinstance(ev.pmap.transform, IdentityTransform) else ev.pmap.transform
    method = _pool_context().get_start_method()
    if transform is not None and method != "fork":
        import pickle

        try:
            pickle.dumps(transform)
        except Exception as exc:  # whatever pickling raises, said as it says it
            raise InputError(f"transform: with nprocs > 1 the {type(transform).__name__} object goes to worker "
                             f"processes started by {method!r}, which needs it pickled, and it cannot be "
                             f"({type(exc).__name__}: {exc}); use nprocs=1") from None
    return ev.potential.to_spec(), parameters_optimize, transform, derivative_kwargs


def _preimport(ev):
    """Import here what computing a FIM with ``ev``'s settings imports on first use, so that no
    worker pays for an import (a forked worker inherits the parent's modules)."""
    if not _is_plain_central(ev.settings):
        import numdifftools  # noqa: F401


# ---------------------------------------------------------------------------- kept workers
#: held by the call using the kept workers (another thread's call forks its own)
_KEPT_LOCK = threading.Lock()

#: the cost of a configuration besides its atoms' (its setup, J^T J), in atoms
_CONFIG_COST_ATOMS = 16

#: what this process does in a parallel call besides its own group (sending the workers'
#: groups, taking in their FIMs), in atoms: its group is that much smaller
_PARENT_COST_ATOMS = 64


def _balance(configs, n_groups, head_start=0):
    """Split configuration indices into ``n_groups`` groups of about equal cost (atoms + a
    constant per configuration), largest first onto the least loaded group (LPT), the first
    group starting at ``head_start``; each group in index order, empty groups left out."""
    loads = [head_start] + [0] * (n_groups - 1)
    groups = [[] for _ in range(n_groups)]
    for i in sorted(range(len(configs)), key=lambda i: -len(configs[i])):
        g = loads.index(min(loads))
        groups[g].append(i)
        loads[g] += len(configs[i]) + _CONFIG_COST_ATOMS
    return [sorted(g) for g in groups if g]


class WorkerTraceback(Exception):
    """The traceback of an exception raised in a worker process (set as its ``__cause__``)."""


def _portable(exc):
    """``exc`` if it survives pickling, else a RuntimeError saying what it was."""
    try:
        return pickle.loads(pickle.dumps(exc))
    except Exception:  # whatever an exception's own pickling raises
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _run_group(conn, init, group, configs, quantities, masks):
    """In a worker: open the model for ``init`` (:func:`_worker_init`'s arguments, or them
    pickled: then only when they differ from the last call's), then send the FIM of each
    configuration of ``group`` as ``('fim', i, fim)`` and ``('end', cpu)`` (the worker's CPU
    seconds so far, which benchmarks read), or the first error (its start-up's included) as
    ``('error', i, exc, traceback)``."""
    import traceback

    at = [group[0]]
    try:
        if not isinstance(init, bytes):  # a worker forked for this call: the arguments themselves
            _worker_init(*init)
        elif _WORKER.get("init") != init:  # a kept worker: a new model when they change
            _WORKER.pop("ev", None)
            _worker_init(*pickle.loads(init))
            _WORKER["init"] = init
        if "error" in _WORKER:
            _WORKER.pop("init", None)
            raise _WORKER["error"]
        for i, fim in _fims(_WORKER["ev"], group, configs, quantities, masks, at):
            conn.send(("fim", i, fim))
        conn.send(("end", time.process_time()))
    except Exception as exc:
        conn.send(("error", at[0], _portable(exc), traceback.format_exc()))


def _serve(conn):
    """A kept worker's life: run the groups this process sends (configurations as arrays)
    until it closes the pipe, sends None or exits. Ctrl-C is left to this process, which
    kills the worker."""
    import signal

    from ase import Atoms

    code = 0
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        parent = os.getppid()
        last = time.monotonic()
        while True:
            if not conn.poll(1.0):
                # orphaned (the parent was killed), or idle for long: the parent stops using a
                # worker idle for KEEP_IDLE_S, so this one cannot be sent a job while it exits
                if os.getppid() != parent or time.monotonic() - last > 2 * KEEP_IDLE_S:
                    break
                continue
            job = conn.recv()
            if job is None:
                break
            init, items = job
            configs, quantities, masks = {}, {}, {}
            for i, z, positions, cell, pbc, quantity, mask in items:
                configs[i] = Atoms(numbers=z, positions=positions, cell=cell, pbc=pbc)
                quantities[i], masks[i] = quantity, mask
            _run_group(conn, init, [item[0] for item in items], configs, quantities, masks)
            last = time.monotonic()
    except BaseException:  # EOF (this process is gone) or a broken pipe
        code = 1
    finally:
        os._exit(code)


class _Worker:
    """A forked worker process: its pid, this process's end of its pipe, whether it is kept
    for later calls, how many modules this process had when it was forked, its CPU seconds
    at the end of its last group and when that was (``time.monotonic``)."""

    __slots__ = ("pid", "conn", "kept", "modules", "cpu", "used")

    def __init__(self, pid, conn, kept, modules):
        self.pid, self.conn, self.kept, self.modules = pid, conn, kept, modules
        self.cpu = 0.0
        self.used = time.monotonic()


#: workers kept between calls (forking one costs milliseconds per 100 MB of this process,
#: more than the FIMs of 20 configurations of 64 atoms take)
_KEPT = []

#: seconds a kept worker may stay idle before it is replaced at the next call (it exits by
#: itself after twice as long): a worker holds on to the memory this process had when it was
#: forked, which this process may have freed since
KEEP_IDLE_S = 60.0


def _fork(target, kept):
    """Fork a worker running ``target(conn)``; it closes every other worker's pipe end."""
    from multiprocessing.connection import Pipe

    mine, theirs = Pipe()
    pid = os.fork()
    if pid == 0:
        try:
            mine.close()
            for w in _KEPT:
                w.conn.close()
            target(theirs)  # exits
        finally:
            os._exit(1)
    theirs.close()
    return _Worker(pid, mine, kept, len(sys.modules))


def _kill(worker):
    """Kill and reap a worker (an error or Ctrl-C while it works): never kept after."""
    import signal

    try:
        os.kill(worker.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    _wait(worker.pid)
    worker.conn.close()
    if worker in _KEPT:
        _KEPT.remove(worker)


def close_workers():
    """Stop the worker processes FIMTrainingSetScore keeps between ``nprocs > 1`` calls."""
    while _KEPT:
        worker = _KEPT.pop()
        try:
            worker.conn.send(None)
        except OSError:
            pass
        worker.conn.close()
        _wait(worker.pid)


def _kept_workers(n):
    """``n`` kept workers, forked where missing. A worker forked before this process imported
    more modules is replaced (it would import them itself, see ``tests/test_fim_pool.py``), so
    is one idle for more than :data:`KEEP_IDLE_S`, and one that has died is forgotten."""
    now = time.monotonic()
    for worker in list(_KEPT):
        if _wait(worker.pid, os.WNOHANG)[0]:  # died while idle (reaped now)
            _KEPT.remove(worker)
            worker.conn.close()
        elif worker.modules != len(sys.modules) or now - worker.used > KEEP_IDLE_S:
            _KEPT.remove(worker)
            worker.conn.close()  # it exits on EOF
            _reap_later(worker.pid)
    while len(_KEPT) < n:
        _KEPT.append(_fork(_serve, kept=True))
    return _KEPT[:n]


def _as_items(group, configs, quantities, masks):
    """A group's configurations as arrays (numbers, positions, cell, pbc), not Atoms."""
    return [(i, configs[i].numbers, configs[i].positions, configs[i].cell.array, configs[i].pbc,
             quantities[i], masks[i]) for i in group]


def _parallel(ev, init, configs, quantities, masks, nprocs):
    """FIMs of all configurations in ``nprocs`` processes: this one and ``nprocs - 1``
    workers, each with one balanced group of configurations (see :func:`_balance`).

    Workers are forked once and kept for later calls (:data:`_KEPT`); each gets its group
    as arrays and opens its own model from ``init`` (:func:`_pool_init_args`) when that
    changes, while this process computes its own group. Where ``init`` cannot be pickled
    (a transform object that cannot), workers are forked for this call, inheriting ``init``
    and the configurations. Each FIM comes back through a pipe as soon as it is computed;
    this process reads the pipes between its configurations (progress bar). The first
    error, here or in a worker, is raised here with the worker's traceback as its cause; on
    any error or Ctrl-C the workers still busy are killed and reaped before it propagates.
    """
    from tqdm.auto import tqdm

    groups = _balance(configs, min(nprocs, len(configs)), head_start=_PARENT_COST_ATOMS)
    try:
        init_bytes = pickle.dumps(init)
    except Exception:  # a transform that cannot be pickled: inherited by a worker forked now
        init_bytes = None
    results = [None] * len(configs)
    busy = {}  # connection -> (worker, its group)
    keep = init_bytes is not None and _KEPT_LOCK.acquire(blocking=False)
    try:
        if keep:
            for worker, group in zip(_kept_workers(len(groups) - 1), groups[1:]):
                worker.conn.send((init_bytes, _as_items(group, configs, quantities, masks)))
                busy[worker.conn] = (worker, group)
        else:
            for group in groups[1:]:
                def run(conn, group=group):
                    _run_group(conn, init, group, configs, quantities, masks)
                    conn.close()
                    os._exit(0)

                worker = _fork(run, kept=False)
                busy[worker.conn] = (worker, group)
        with tqdm(total=len(configs), desc="FIM training set", disable=None, leave=False) as bar:
            for i, fim in _fims(ev, groups[0], configs, quantities, masks):
                results[i] = fim
                bar.update()
                _receive(busy, results, bar, timeout=0)
            while busy:
                _receive(busy, results, bar, timeout=None)
    finally:
        for worker, _ in busy.values():  # still busy: an error or Ctrl-C
            _kill(worker)
        if keep:
            _KEPT_LOCK.release()
    return results


def _receive(busy, results, bar, timeout):
    """Take in what the busy workers have sent (waiting up to ``timeout`` s; None: until one
    sends); a worker that has sent its group's end is no longer busy."""
    from multiprocessing.connection import wait

    for conn in wait(list(busy), timeout):
        worker, group = busy[conn]
        try:
            message = conn.recv()
        except EOFError:
            missing = [i for i in group if results[i] is None]
            _, status = _wait(worker.pid)
            del busy[conn]
            conn.close()
            if worker in _KEPT:
                _KEPT.remove(worker)
            before = f"configuration {missing[0]}" if missing else "its end"
            raise RuntimeError(f"FIM training set: the worker process {worker.pid} computing configurations "
                               f"{group} ended ({_exit_status(status)}) before {before}") from None
        if message[0] == "error":
            _, i, exc, tb = message
            raise exc from WorkerTraceback(f"in worker process {worker.pid} (configuration {i}):\n{tb}")
        if message[0] == "end":
            worker.cpu, worker.used = message[1], time.monotonic()
            del busy[conn]
            if not worker.kept:
                conn.close()
                _reap_later(worker.pid)
            continue
        _, i, fim = message
        results[i] = fim
        bar.update()


def _reap_later(pid):
    """Reap a worker that has sent everything: its exit (unmapping a copy of this process,
    ~3 ms per 100 MB) finishes in a thread, not on the way to the results."""
    import threading

    if _wait(pid, os.WNOHANG)[0] == 0:
        threading.Thread(target=_wait, args=(pid,), name=f"reap-{pid}", daemon=True).start()


def _wait(pid, flags=0):
    """``os.waitpid(pid, flags)``; a worker already reaped by someone else's ``waitpid(-1)``
    (an asyncio child watcher) counts as ended (status 0)."""
    try:
        return os.waitpid(pid, flags)
    except ChildProcessError:
        return pid, 0


def _exit_status(status):
    if os.WIFSIGNALED(status):
        import signal

        return f"killed by signal {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exit status {os.WEXITSTATUS(status)}"


# one evaluator per worker process (workers started by 'spawn', where fork is not available)
_WORKER = {}


def _worker_init(potential, parameters_optimize, transform, derivative_kwargs):
    # the spec carries the parameters changed in place (KIMPotential.to_spec); a failure is
    # kept and raised by the first task, so that its cause reaches the parent (an exception in
    # an initializer only breaks the pool, with the cause on the workers' stderr)
    import warnings

    _WORKER.pop("error", None)
    try:
        with warnings.catch_warnings():  # the parent has said these once, for the same inputs
            warnings.simplefilter("ignore", RuntimeWarning)
            _WORKER["ev"] = _FIMEvaluator(potential, parameters_optimize, transform, derivative_kwargs)
    except Exception as exc:
        _WORKER["error"] = exc


def _worker_fim(task):
    if "error" in _WORKER:
        raise _WORKER["error"]
    index, atoms, quantity, mask = task
    return index, _WORKER["ev"].fim(atoms, quantity, mask, f"configuration {index}")


def _pooled(init, configs, quantities, masks, nprocs):
    """FIMs of all configurations in a ``ProcessPoolExecutor`` of ``nprocs`` workers started
    with :func:`_worker_init` (where fork is not available; this process computes none)."""
    from concurrent.futures import ProcessPoolExecutor

    from tqdm.auto import tqdm

    results = [None] * len(configs)
    tasks = [(i, atoms, quantities[i], masks[i]) for i, atoms in enumerate(configs)]
    with ProcessPoolExecutor(max_workers=min(nprocs, len(configs)), mp_context=_pool_context(),
                             initializer=_worker_init, initargs=init) as pool:
        chunk = max(1, len(tasks) // (4 * nprocs))
        for i, fim in tqdm(pool.map(_worker_fim, tasks, chunksize=chunk), total=len(tasks),
                           desc="FIM training set", disable=None, leave=False):
            results[i] = fim
    return results
