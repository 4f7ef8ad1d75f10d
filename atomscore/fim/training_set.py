"""FIMTrainingSetScore: the Fisher information matrix of each training configuration.

For a configuration with predictions f(φ) (its energy, its forces or its stress, computed by an
OpenKIM model with parameters θ = transform⁻¹(φ)), the FIM is ``Jᵀ J`` with ``J = ∂f/∂φ``
(rows of ``J`` excluded by the configuration's mask are dropped). It is P×P, symmetric and
positive semi-definite; ``fim_index_to_parameter`` says which parameter each row is.

Cost: one KIM model per process, parameters changed in place, the configuration's padding and
neighbour list built once and reused for every evaluation (built by blocks of configurations,
see :data:`BLOCK_CONFIGS`), only the requested quantity computed. The finite-difference points
are the same for every configuration: transformed, checked and turned into the few parameter
writes each needs once per call (:class:`~atomscore.potentials.kim.ParameterPath`). With
``nprocs > 1`` this process computes one balanced group of configurations and kept worker
processes the others (see :func:`_parallel`). With the default derivative (central
differences with one step per parameter) the 2P model evaluations are done here directly
(the same numbers numdifftools gives for these settings, see ``tests/test_fim_training_set.py``)
because numdifftools' per-element best-estimate search costs more than the evaluations of a
64-atom configuration; any other ``derivative_kwargs`` go to :class:`numdifftools.Jacobian`
as given.
"""

from __future__ import annotations

import numbers
import os
import pickle
import sys
import threading
import time

import numpy as np

from atomscore.errors import InputError, import_extra
from atomscore.fim.parameters import IdentityTransform, ParameterMap, job_transform
from atomscore.potentials.kim import check_spec
from atomscore.quantity import ScoreQuantity
from atomscore.score import ConfigurationScore, records_metadata
from atomscore.validation import check_finite_configs, check_int, is_array_file, load_array

EVALUATE_KEYS = ("compute_energy", "compute_forces", "compute_stress")
_QUANTITY_OF_KEY = {"compute_energy": "energy", "compute_forces": "forces", "compute_stress": "stress"}
_COMPLEX_METHODS = ("complex", "multicomplex")


# ---------------------------------------------------------------------------- argument checks
def _flags(evaluate_kwargs, n_configs):
    """Return the quantity ('energy'/'forces'/'stress') of each configuration."""
    if evaluate_kwargs is None or (isinstance(evaluate_kwargs, dict) and not evaluate_kwargs):
        return ["forces"] * n_configs
    if not isinstance(evaluate_kwargs, dict):
        raise InputError(f"evaluate_kwargs: expected a dict with keys {', '.join(EVALUATE_KEYS)}, "
                         f"got {type(evaluate_kwargs).__name__}")
    unknown = [k for k in evaluate_kwargs if k not in EVALUATE_KEYS]
    if unknown:
        raise InputError(f"evaluate_kwargs: unknown keys {unknown}; expected some of: {', '.join(EVALUATE_KEYS)}")
    table = {}
    for key in EVALUATE_KEYS:
        value = evaluate_kwargs.get(key, False)
        if isinstance(value, (bool, np.bool_)):
            table[key] = [bool(value)] * n_configs
            continue
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (bool, np.bool_)) for v in value):
            raise InputError(f"evaluate_kwargs[{key!r}]: expected a bool or a list of bools (one per "
                             f"configuration), got {value!r:.80}")
        if len(value) == 1 and n_configs > 1:
            value = list(value) * n_configs
        if len(value) != n_configs:
            raise InputError(f"evaluate_kwargs[{key!r}]: expected {n_configs} values (one per configuration), "
                             f"got {len(value)}")
        table[key] = [bool(v) for v in value]
    out = []
    for i in range(n_configs):
        chosen = [_QUANTITY_OF_KEY[k] for k in EVALUATE_KEYS if table[k][i]]
        if len(chosen) != 1:
            raise InputError(f"evaluate_kwargs: configuration {i} asks for {chosen or 'nothing'}; each "
                             "configuration evaluates exactly one of energy, forces, stress (duplicate a "
                             "configuration to use several)")
        out.append(chosen[0])
    return out


def _n_values(atoms, quantity):
    return {"energy": 1, "forces": 3 * len(atoms), "stress": 6}[quantity]


def _masks(list_of_mask, configs, quantities):
    """Return one boolean row selection (or None) per configuration."""
    n = len(configs)
    if list_of_mask is None:
        return [None] * n
    if isinstance(list_of_mask, np.ndarray) or is_array_file(list_of_mask):
        if n != 1:
            raise InputError(f"list_of_mask: expected a list with one mask per configuration ({n}), "
                             "got a single mask")
        list_of_mask = [list_of_mask]
    if not isinstance(list_of_mask, (list, tuple)):
        raise InputError(f"list_of_mask: expected a list (one mask per configuration: list, array, "
                         f".npy/.txt path or None), got {type(list_of_mask).__name__}")
    if len(list_of_mask) == 1 and n > 1:
        list_of_mask = list(list_of_mask) * n  # one mask for every configuration
    if len(list_of_mask) != n:
        raise InputError(f"list_of_mask: expected {n} masks (one per configuration), got {len(list_of_mask)}")
    out = []
    for i, (mask, atoms, quantity) in enumerate(zip(list_of_mask, configs, quantities)):
        where = f"configuration {i}"
        if mask is None:
            out.append(None)
            continue
        arr = load_array(mask, "list_of_mask", dtype=float, where=where)
        expected = _n_values(atoms, quantity)
        if quantity == "forces" and arr.shape == (len(atoms), 3):
            arr = arr.reshape(-1)
        if arr.ndim != 1 or arr.size != expected:
            what = {"forces": f"3N = {expected} values (forces of {len(atoms)} atoms)",
                    "energy": "1 value (the energy)", "stress": "6 values (the stress, Voigt)"}[quantity]
            raise InputError(f"list_of_mask ({where}): expected {what}, got shape {arr.shape}")
        if not np.all((arr == 0) | (arr == 1)):
            raise InputError(f"list_of_mask ({where}): expected a binary mask of 0/1 values, "
                             f"got values {np.unique(arr)[:5].tolist()}")
        out.append(arr.astype(bool))
    return out


def _derivative_settings(derivative_kwargs, pmap):
    """Merge the user's numdifftools.Jacobian kwargs onto the default (central, 10% step)."""
    if derivative_kwargs is None:
        derivative_kwargs = {}
    if not isinstance(derivative_kwargs, dict):
        raise InputError(f"derivative_kwargs: expected a dict of numdifftools.Jacobian arguments, "
                         f"got {type(derivative_kwargs).__name__}")
    settings = {"method": "central", "step": pmap.default_step()}
    settings.update(derivative_kwargs)
    method = settings.get("method")
    if method in _COMPLEX_METHODS:
        raise InputError(f"derivative_kwargs['method']={method!r}: a KIM model cannot be evaluated at complex "
                         "parameters; use 'central', 'forward' or 'backward'")
    if method not in ("central", "forward", "backward"):
        raise InputError(f"derivative_kwargs['method']: unknown {method!r}; expected 'central', 'forward' or 'backward'")
    step = settings.get("step")
    if step is not None and not hasattr(step, "__call__"):
        try:
            arr = np.asarray(step, dtype=float)
        except (TypeError, ValueError):
            raise InputError(f"derivative_kwargs['step']: expected a non-zero number or one per parameter, got {step!r}") from None
        # a negative step is a step (numdifftools takes it as given); zero is no difference
        if arr.ndim > 1 or (arr.ndim == 1 and arr.size != pmap.n_params) or not np.all(np.isfinite(arr)) \
                or np.any(arr == 0):
            raise InputError(f"derivative_kwargs['step']: expected a non-zero finite number or {pmap.n_params} "
                             f"of them (one per free parameter), got {step!r}")
        settings["step"] = arr
    if not _is_plain_central(settings):
        _probe_numdifftools(settings, pmap.phi0, derivative_kwargs)
    return settings


def _probe_numdifftools(settings, phi0, given):
    """Let numdifftools judge the settings on a linear function of the parameters (microseconds),
    so an unknown or ill-typed key fails here, with numdifftools' own message, not in a job."""
    import numdifftools as nd

    try:
        jac = nd.Jacobian(lambda x: 2.0 * np.asarray(x, dtype=float), **settings)(np.array(phi0, dtype=float))
        np.asarray(jac, dtype=float)
    except Exception as exc:  # whatever numdifftools raises for these settings, said as it says it
        raise InputError(f"derivative_kwargs: numdifftools.Jacobian refuses {given!r}: "
                         f"{type(exc).__name__}: {exc}") from None


def _is_plain_central(settings):
    """True when numdifftools would take one central difference per parameter (no extrapolation)."""
    return (settings.get("method") == "central" and settings.get("order", 2) == 2
            and set(settings) <= {"method", "step", "order"} and isinstance(settings.get("step"), np.ndarray))


def _jsonable_settings(settings):
    out = {}
    for k, v in settings.items():
        if isinstance(v, np.ndarray):
            out[k] = v.tolist()
        elif v is None or isinstance(v, (bool, str, numbers.Number)):
            out[k] = v
        else:
            out[k] = repr(v)
    return out


# ---------------------------------------------------------------------------- the numbers
class _FIMEvaluator:
    """One potential (kept for many configurations) with one ParameterMap."""

    def __init__(self, potential, parameters_optimize, transform, derivative_kwargs):
        from atomscore.potentials.kim import KIMPotential

        self.potential = KIMPotential.from_spec(potential)
        self.pmap = ParameterMap(self.potential, parameters_optimize, transform)
        self.settings = _derivative_settings(derivative_kwargs, self.pmap)
        self._saved = self.potential.get_parameters()
        self.pmap.apply(self.potential)
        self._write = self.potential.parameter_writer(self.pmap.free)
        #: the 2P points of the default central difference, the same for every configuration:
        #: transformed, checked and turned into parameter writes once (None: other settings)
        self._path = self._central_path() if _is_plain_central(self.settings) else None

    def fim(self, atoms, quantity, mask, where="configuration", pred=None):
        """The P×P FIM of one configuration (P = the number of transformed parameters φ);
        ``pred``: its :meth:`predictions`, if made already."""
        jac = self._jacobian(self.predictions(atoms, quantity, where) if pred is None else pred, where)
        if mask is not None:
            jac = jac[mask]
        fim = jac.T @ jac
        return 0.5 * (fim + fim.T)

    def restore(self):
        """Give the potential back the parameters it had before this evaluator set any."""
        self.potential.set_parameters(self._saved)

    def predictions(self, atoms, quantity, where="configuration"):
        """The configuration's :class:`~atomscore.potentials.kim.Predictions` (padding and
        neighbour list built)."""
        try:
            return self.potential.predictions(atoms, quantity)
        except InputError as exc:
            raise InputError(f"evaluate_kwargs: {where} asks for {quantity}: {exc}") from None

    def _jacobian(self, pred, where):
        pmap = self.pmap
        if self._path is not None:
            return pred.central_differences(self._path, self._steps())
        write = self._write
        try:
            if _is_plain_central(self.settings):
                return self._central(pred, where)

            def predict(phi):
                write(pmap.to_theta(phi, where=f"{where}, finite-difference point (numdifftools)"))
                return pred.fold(pred.raw()).reshape(-1)

            return self._numdifftools(predict)
        finally:
            write(pmap.theta0)

    def _steps(self):
        return np.broadcast_to(self.settings["step"], self.pmap.phi0.shape)

    def _central_points(self, where=""):
        """θ at φ0 + h_i and φ0 - h_i for each i, in that order (checked: finite, in bounds)."""
        phi0 = self.pmap.phi0
        for i, h in enumerate(self._steps()):
            for label in ("+", "-"):
                phi = phi0.copy()
                phi[i] = phi0[i] + h if label == "+" else phi0[i] - h
                yield self.pmap.to_theta(phi, where=f"{where}finite-difference point phi[{i}] {label} {h:g}")

    def _central_path(self):
        """The central difference's points as a :class:`~atomscore.potentials.kim.ParameterPath`
        (None when they change too many entries to keep: a dense transform of a large θ)."""
        return self.potential.parameter_path(self.pmap.free, self._central_points())

    def _central(self, pred, where):
        """One central difference per parameter (what numdifftools does for these settings),
        the points written whole (see :meth:`_central_path`), on the raw predictions (forces on
        the padded atoms), folded once per configuration."""
        steps = self._steps()
        points = self._central_points(f"{where}, ")
        cols = []
        for h in steps:
            self._write(next(points))
            plus = pred.raw()
            self._write(next(points))
            cols.append((plus - pred.raw()) / (2.0 * h))
        return pred.fold(np.stack(cols, axis=-1)).reshape(pred.n_values, len(steps))

    def _numdifftools(self, predict):
        phi0 = self.pmap.phi0
        nd = import_extra("numdifftools", "FIMTrainingSetScore (derivative_kwargs)", "fim")

        jac = nd.Jacobian(predict, **self.settings)(phi0.copy())
        return np.asarray(jac, dtype=float).reshape(-1, len(phi0))


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


def _named(exc, i):
    """Add a note naming configuration ``i`` to an error whose message does not."""
    if f"configuration {i}" not in str(exc):
        exc.add_note(f"(while computing the FIM of configuration {i})")


def _fim_of(ev, i, configs, quantities, masks, pred=None):
    """The FIM of configuration ``i`` (``pred``: its predictions, if made); an error names it."""
    try:
        return ev.fim(configs[i], quantities[i], masks[i], f"configuration {i}", pred)
    except Exception as exc:
        _named(exc, i)
        raise


#: configurations whose neighbour lists are built in a row before their FIMs, at most this
#: many and this many atoms: a build between model evaluations runs ~2x slower than in a row
#: (code and data out of cache), which cost 10-20 % of the evaluations at 64 atoms
BLOCK_CONFIGS = 32
BLOCK_ATOMS = 4096


def _blocks(indices, configs):
    block, atoms = [], 0
    for i in indices:
        if block and (len(block) >= BLOCK_CONFIGS or atoms + len(configs[i]) > BLOCK_ATOMS):
            yield block
            block, atoms = [], 0
        block.append(i)
        atoms += len(configs[i])
    if block:
        yield block


def _fims(ev, indices, configs, quantities, masks, at=None):
    """``(i, FIM)`` for each configuration index, in order, built by blocks (see
    :data:`BLOCK_CONFIGS`); an error names its configuration (``at[0]``: the last one begun)."""
    at = [None] if at is None else at
    for block in _blocks(indices, configs):
        preds = []
        for i in block:
            at[0] = i
            try:
                preds.append(ev.predictions(configs[i], quantities[i], f"configuration {i}"))
            except Exception as exc:
                _named(exc, i)
                raise
        for i, pred in zip(block, preds):
            at[0] = i
            yield i, _fim_of(ev, i, configs, quantities, masks, pred)


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


# ---------------------------------------------------------------------------- the score
class FIMTrainingSetScore(ConfigurationScore):
    """Fisher information matrix of each configuration's energy, forces or stress.

    The FIM of a configuration is ``Jᵀ J`` (P×P, symmetric positive semi-definite), with
    ``J`` the derivative of its predictions (energy in eV, forces in eV/Å, or stress in eV/Å³)
    with respect to the (transformed) potential parameters; rows excluded by the
    configuration's mask are left out. Saved as ``atoms.info['fim_training_set_score']``.

    Examples
    --------
    >>> score = FIMTrainingSetScore()
    >>> fims = score.compute_batch(list_of_atoms, 'SENSITIVITY',
    ...     potential={'potential_type': 'KIM', 'potential_args': {'kim_id': KIM_ID}},
    ...     parameters_optimize={'A': [[15.28]], 'B': [['default']], 'lambda': [[0.0, 'fix']]})
    >>> score.save_results(fims, list_of_configs=list_of_atoms)   # doctest: +SKIP
    """

    OUTPUT_KEY = "fim_training_set"
    supported_score_quantities = (ScoreQuantity.SENSITIVITY,)

    def __init__(self):
        super().__init__()
        self.fim_index_to_parameter = {}
        self.transform = None

    @property
    def list_of_jac(self):
        """Not kept (the Orchestrator keeps every configuration's 3N × P Jacobian after
        ``compute_batch``): raises AttributeError saying so."""
        raise AttributeError("FIMTrainingSetScore.list_of_jac: the Jacobians are not kept (3N x P per "
                             "configuration, only J^T J is returned); for a configuration's Jacobian use "
                             "KIMPotential.predictions and finite differences, see docs/orchestrator.md")

    # -------------------------------------------------------------- compute
    @records_metadata
    def compute(self, atoms, score_quantity="SENSITIVITY", potential=None, parameters_optimize=None,
                transform=None, evaluate_kwargs=None, derivative_kwargs=None, mask=None, **kwargs):
        """FIM of one configuration (see :meth:`compute_batch`; ``mask`` is its mask).

        Returns
        -------
        numpy.ndarray
            ``(P, P)``.
        """
        if "list_of_mask" in kwargs:
            lom = kwargs.pop("list_of_mask")
            if mask is None and lom is not None:
                mask = lom[0] if isinstance(lom, (list, tuple)) and len(lom) == 1 else lom
        nprocs = kwargs.pop("nprocs", 1)
        if kwargs:
            raise InputError(f"FIMTrainingSetScore.compute: unknown arguments {sorted(kwargs)}")
        evaluate_kwargs = None if evaluate_kwargs is None else {
            k: (v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v) for k, v in evaluate_kwargs.items()}
        return self._compute_all([atoms], score_quantity, potential, parameters_optimize, transform,
                                 evaluate_kwargs, derivative_kwargs, [mask], nprocs)[0]

    @records_metadata
    def compute_batch(self, list_of_atoms, score_quantity="SENSITIVITY", potential=None,
                      parameters_optimize=None, transform=None, evaluate_kwargs=None,
                      derivative_kwargs=None, list_of_mask=None, nprocs=1):
        """FIM of each configuration.

        Parameters
        ----------
        list_of_atoms : list of ase.Atoms
            Configurations (periodic or not); never modified.
        score_quantity : ScoreQuantity or str
            ``SENSITIVITY``.
        potential : KIMPotential or dict
            ``{'potential_type': 'KIM', 'potential_args': {'kim_id': ..., 'kim_api': ...}}``.
            A KIMPotential's parameters are restored after the computation.
        parameters_optimize : dict
            ``{name: [[value], ['default'], [value, 'fix'], [value, lower, upper]], ...}``
            (see :mod:`atomscore.fim.parameters`).
        transform : object or dict, optional
            From :mod:`information_matching.transform`, or
            ``{'transform_type': ..., 'transform_args': {...}}``; default identity.
        evaluate_kwargs : dict, optional
            ``compute_energy``, ``compute_forces``, ``compute_stress``: a bool or a list of
            bools per configuration; exactly one true per configuration. Default: forces.
        derivative_kwargs : dict, optional
            Arguments of :class:`numdifftools.Jacobian`, on top of the default
            ``{'method': 'central', 'step': max(0.1 |φ|, 1e-4)}`` (φ: the transformed parameters).
        list_of_mask : list, optional
            Per configuration: a binary array (list, array, ``.npy`` or ``.txt`` path) over
            the predictions (3N for forces, row-major ``(N, 3)``; 1 for energy; 6 for stress),
            or None for all rows. A one-element list applies to every configuration.
        nprocs : int
            Worker processes (one model each) over the configurations.

        Returns
        -------
        list of numpy.ndarray
            One ``(P, P)`` FIM per configuration, rows/columns as ``fim_index_to_parameter``.
        """
        return self._compute_all(list_of_atoms, score_quantity, potential, parameters_optimize, transform,
                                 evaluate_kwargs, derivative_kwargs, list_of_mask, nprocs)

    def _compute_all(self, configs, score_quantity, potential, parameters_optimize, transform,
                     evaluate_kwargs, derivative_kwargs, list_of_mask, nprocs):
        self.parse_quantity(score_quantity)
        configs = check_finite_configs(configs, "list_of_atoms")
        nprocs = check_int(nprocs, "nprocs", minimum=1)
        if potential is None:
            raise InputError("potential: required, e.g. {'potential_type': 'KIM', 'potential_args': {'kim_id': ...}}")
        if parameters_optimize is None:
            raise InputError("parameters_optimize: required, e.g. {'A': [[15.28]], 'B': [['default']]}")
        check_spec(potential)
        quantities = _flags(evaluate_kwargs, len(configs))
        masks = _masks(list_of_mask, configs, quantities)
        from atomscore.potentials.kim import pooled_potential

        with pooled_potential(potential) as pot:
            return self._compute_with(pot, configs, quantities, masks, parameters_optimize, transform,
                                      derivative_kwargs, list_of_mask, nprocs)

    def _compute_with(self, potential, configs, quantities, masks, parameters_optimize, transform,
                      derivative_kwargs, list_of_mask, nprocs):
        ev = _FIMEvaluator(potential, parameters_optimize, transform, derivative_kwargs)
        for i, (atoms, q) in enumerate(zip(configs, quantities)):
            if q == "stress" and not np.any(atoms.pbc):
                raise InputError(f"evaluate_kwargs: configuration {i} asks for stress but is not periodic")
        self.note_metadata(**self._details(ev, quantities, list_of_mask))
        #: FIM row/column -> {'parameter': name, 'extent': e}, as the spec shows
        self.fim_index_to_parameter = ev.pmap.fim_index_to_parameter
        #: the transform object used (the Orchestrator's attribute)
        self.transform = ev.pmap.transform

        from tqdm.auto import tqdm

        results = [None] * len(configs)
        if nprocs == 1 or len(configs) == 1:
            try:
                fims = _fims(ev, range(len(configs)), configs, quantities, masks)
                for i, fim in tqdm(fims, total=len(configs), desc="FIM training set", disable=None, leave=False):
                    results[i] = fim
            finally:
                ev.restore()
            return results
        try:  # the potential gets its parameters back whatever happens
            init = _pool_init_args(ev, parameters_optimize, derivative_kwargs)
            if _pool_context().get_start_method() == "fork":
                return _parallel(ev, init, configs, quantities, masks, nprocs)
        finally:
            ev.restore()
        from concurrent.futures import ProcessPoolExecutor

        tasks = [(i, atoms, quantities[i], masks[i]) for i, atoms in enumerate(configs)]
        with ProcessPoolExecutor(max_workers=min(nprocs, len(configs)), mp_context=_pool_context(),
                                 initializer=_worker_init, initargs=init) as pool:
            chunk = max(1, len(tasks) // (4 * nprocs))
            for i, fim in tqdm(pool.map(_worker_fim, tasks, chunksize=chunk), total=len(tasks),
                               desc="FIM training set", disable=None, leave=False):
                results[i] = fim
        return results

    def _details(self, ev, quantities, list_of_mask):
        masks = list_of_mask if isinstance(list_of_mask, (list, tuple)) else [list_of_mask]
        described = []
        for m in masks:
            if m is None or isinstance(m, (str, os.PathLike)):
                described.append(None if m is None else str(m))
            else:
                arr = np.asarray(m)
                described.append(f"array of {arr.size} values, {int(np.count_nonzero(arr))} selected")
        meta = {
            "potential": ev.potential.to_spec(),
            "kim_id": ev.potential.kim_id,
            "derivative_kwargs": _jsonable_settings(ev.settings),
            "evaluated_quantity": sorted(set(quantities)) if len(set(quantities)) > 1 else quantities[0],
            "list_of_mask": None if list_of_mask is None else described,
        }
        meta.update(ev.pmap.metadata())
        return meta

    # -------------------------------------------------------------- jobs and metadata
    def prepare_compute_args(self, compute_args):
        """Turn a KIMPotential, a transform object and arrays of ``evaluate_kwargs`` flags into
        their JSON forms (a new dict)."""
        args = dict(compute_args)
        evk = args.get("evaluate_kwargs")
        if isinstance(evk, dict):
            args["evaluate_kwargs"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in evk.items()}
        if args.get("transform") is not None and not isinstance(args["transform"], dict):
            args["transform"] = job_transform(args["transform"], args.get("potential"), args.get("parameters_optimize"))
        if args.get("potential") is not None:
            args["potential"] = check_spec(args["potential"])  # live parameters included
        return args

    def check_compute_args(self, configs, score_quantity, compute_args):
        """Validate everything before a job folder is written (opens the model once)."""
        args = dict(compute_args)
        potential = args.get("potential")
        if potential is None or args.get("parameters_optimize") is None:
            raise InputError("FIMTrainingSetScore.run: compute_args needs 'potential' and 'parameters_optimize'")
        allowed = {"potential", "parameters_optimize", "transform", "evaluate_kwargs", "derivative_kwargs",
                   "list_of_mask", "nprocs"}
        unknown = sorted(set(args) - allowed)
        if unknown:
            raise InputError(f"FIMTrainingSetScore.run: unknown compute_args {unknown}; expected some of {sorted(allowed)}")
        configs = check_finite_configs(configs, "configs")
        quantities = _flags(args.get("evaluate_kwargs"), len(configs))
        _masks(args.get("list_of_mask"), configs, quantities)
        check_int(args.get("nprocs", 1), "nprocs", minimum=1)
        ev = _FIMEvaluator(potential, args["parameters_optimize"], args.get("transform"), args.get("derivative_kwargs"))
        ev.restore()
        for i, (atoms, q) in enumerate(zip(configs, quantities)):
            ev.potential.check_species(atoms, f"configuration {i}")
            if q == "stress" and not np.any(atoms.pbc):
                raise InputError(f"evaluate_kwargs: configuration {i} asks for stress but is not periodic")

    def get_metadata(self, score_quantity, **compute_args):
        """The quantity; the computation notes the rest (potential id and spec, parameters,
        transform, derivative settings, ``fim_index_to_parameter``, evaluated quantity, masks)."""
        return {"score_quantity": ScoreQuantity.parse(score_quantity).name}

    def slice_compute_args(self, compute_args, start, stop):
        """The compute arguments of configurations ``start:stop`` (per-configuration lists cut).

        For job runners that split a run into batches: ``list_of_mask`` and the lists of
        ``evaluate_kwargs`` hold one entry per configuration.
        """
        args = dict(compute_args)
        lom = args.get("list_of_mask")
        if isinstance(lom, (list, tuple)) and len(lom) > 1:
            args["list_of_mask"] = list(lom[start:stop])
        evk = args.get("evaluate_kwargs")
        if isinstance(evk, dict):
            args["evaluate_kwargs"] = {
                k: (list(np.asarray(v).tolist()[start:stop]) if isinstance(v, (list, tuple, np.ndarray))
                    and np.ndim(v) == 1 and len(v) > 1 else v)
                for k, v in evk.items()}
        return args
