"""Which configurations to label next: selection from a pool, optionally given a labelled reference.

Methods (``METHODS``; docs/selection.md explains each and what is exact):

* ``entropy`` (default): greedy maximisation of the QUESTS entropy of reference ∪ selected.
  Every step adds the configuration whose union with the current set has the largest
  entropy; the gain of every candidate is exact (not an estimate). The pool environments'
  kernel sums against the selected set and the kernel sums of every selected (or
  reference) environment over each pool configuration are kept up to date by one tiled
  kernel pass per added configuration (new environments x pool environments), so a step
  never recomputes an entropy from scratch and no N x N matrix is formed.
* ``fps``, ``msc``, ``k_means``, ``random``: the definitions of ``quests.compression``
  (``DatasetCompressor.get_indices``), on our kernels; ``msc`` with a reference is quests'
  ``msc_conditional``.
* ``uncertainty``: the largest LTAU uncertainty (mean or max over the atoms) first, with an
  optional diversity guard.
* ``weights``: the configurations with non-zero information-matching weights, largest first.

Every selection returns a :class:`Selection`: indices into the pool, the selected
configurations (copies of the pool's Atoms, ``info['pool_index']`` recorded) and a summary
with the entropy, diversity, efficiency and overlap after every step.
"""

from __future__ import annotations

import math
import os
import random as _random
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atomscore.errors import InputError
from atomscore.io import copy_with_labels, read_configs
from atomscore.quests.defaults import DEFAULT_BANDWIDTH
from atomscore.quests.kernels import gaussian
from atomscore.threads import resolve_threads
from atomscore.validation import (check_choice, check_configs, check_int, check_positive, check_same_descriptor_settings,
                                  check_finite_output, common_descriptor_settings, load_array)

__all__ = ["METHODS", "REDUCTIONS", "Selection", "select", "OVERLAP_EPSILON"]

METHODS = ("entropy", "fps", "msc", "k_means", "random", "uncertainty", "weights")
#: an environment is covered by a set when its dH against it is below this (nats), as quests' overlap
OVERLAP_EPSILON = 1e-5
REDUCTIONS = ("mean", "max")
UNCERTAINTY_KEY = "ltau_forces_uq_score"
WEIGHTS_KEY = "fim_matching_weight_score"
# A kernel sum over a configuration below this fraction of an environment's own kernel sum
# changes that environment's log p by less than it: its row is dropped from the gain matrix.
_NEGLIGIBLE = 1e-18
_COVERED = math.exp(-OVERLAP_EPSILON)
# Configurations whose environments are all farther apart than _REACH h have kernels below
# exp(-_REACH^2 / 2) = 4e-19: below _NEGLIGIBLE of the self term (1) every kernel sum of a gain holds,
# so a pass skips them (a sum of at most 1e6 such terms moves a log p by < 1e-12).
_REACH = 9.2  # p > this  <=>  dH = -log p < OVERLAP_EPSILON


@dataclass
class Selection:
    """The result of :func:`select`.

    Attributes
    ----------
    indices : list of int
        Pool indices, in selection order.
    configs : list of ase.Atoms
        Copies of the selected pool configurations (info kept), with ``info['pool_index']``
        and ``info['selection_step']`` (1-based).
    summary : dict
        ``method``, settings, ``steps`` (one dict per step: ``pool_index``, ``n_configs``,
        ``n_envs``, ``entropy`` and ``diversity`` in nats, ``efficiency``, ``overlap``;
        with a reference also ``*_with_reference``), ``selection`` (the last step),
        ``pool`` and ``reference`` (their own entropy, diversity, efficiency; the reference's
        ``overlap_with_pool``: the fraction of pool environments it covers before any pick).
    """

    indices: list
    configs: list
    summary: dict = field(repr=False)


# ----------------------------------------------------------------------------- inputs

def read_pool(source, name):
    """A list of Atoms, or a path ASE reads (every frame)."""
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise InputError(f"{name}: file not found: {str(path)!r}")
        return list(read_configs(path, name))
    return check_configs(source, name)


def _descriptor_blocks(pool, reference, key, descriptor):
    """Per-configuration descriptor arrays of pool and reference, and the settings used.

    ``descriptor``: ``'auto'`` (use what the configurations hold; compute QUESTS descriptors
    with default settings when none holds them), ``None`` (never compute), or a
    :class:`~atomscore.quests.descriptor.QUESTSDescriptor` (compute every configuration
    with it).
    """
    from atomscore.quests.descriptor import QUESTSDescriptor

    if not isinstance(key, str) or not key:
        raise InputError(f"descriptors_key: expected a non-empty string (an atoms.arrays key), got {key!r}")
    sets = [("pool", pool)] + ([("reference", reference)] if reference is not None else [])
    if isinstance(descriptor, QUESTSDescriptor):
        return [descriptor.compute_batch(configs) for _, configs in sets], descriptor.settings, "computed"
    if not (descriptor is None or (isinstance(descriptor, str) and descriptor == "auto")):
        raise InputError(f"descriptor: expected 'auto', None or a QUESTSDescriptor, got {descriptor!r}")
    have = {name: [key in a.arrays for a in configs] for name, configs in sets}
    # settings recorded next to the descriptors (info[key + '_settings'], as QUESTSDescriptor.attach writes)
    settings = common_descriptor_settings([(configs, f"the {name}") for name, configs in sets], key)
    every = all(all(v) for v in have.values())
    none = not any(any(v) for v in have.values())
    if every:
        blocks = [[_per_atom(a, key, i, name) for i, a in enumerate(configs)] for name, configs in sets]
        return _same_width(blocks, sets, key), settings, "given"
    missing = [(name, i) for name, flags in have.items() for i, f in enumerate(flags) if not f]
    where = ", ".join(f"{n} configuration {i}" for n, i in missing[:3]) + (" ..." if len(missing) > 3 else "")
    if descriptor is None:
        raise InputError(f"descriptors_key={key!r}: {where} has no atoms.arrays[{key!r}] and descriptor=None "
                         f"forbids computing them; attach descriptors (atomscore descriptors) or pass a descriptor")
    if none:
        desc = QUESTSDescriptor()
    elif isinstance(settings, dict) and str(settings.get("name", "QUESTS")).upper() == "QUESTS" \
            and "cutoff" in settings and "k" in settings:
        desc = QUESTSDescriptor(cutoff=settings["cutoff"], k=settings["k"], key=key)
        check_same_descriptor_settings(settings, "the configurations' recorded descriptors", desc.settings,
                                       "the missing ones computed now")
    else:
        raise InputError(f"descriptors_key={key!r}: {where} has no atoms.arrays[{key!r}] while others have, and "
                         f"their settings are not recorded, so missing ones cannot be computed to match; attach "
                         f"descriptors to all, or pass descriptor=QUESTSDescriptor(...) to compute all")
    computed = []
    for (name, configs), flags in zip(sets, have.values()):
        todo = [a for a, f in zip(configs, flags) if not f]
        fresh = iter(desc.compute_batch(todo)) if todo else iter(())
        computed.append([next(fresh) if not f else _per_atom(a, key, i, name)
                         for i, (a, f) in enumerate(zip(configs, flags))])
    return _same_width(computed, sets, key), desc.settings, "computed" if none else "given and computed"


def _same_width(blocks, sets, key):
    """Refuse descriptor sets of different widths (other settings) within or between pool and reference."""
    dims = {name: {b.shape[1] for b in bl} for (name, _), bl in zip(sets, blocks)}
    for name, d in dims.items():
        if len(d) > 1:
            raise InputError(f"{name}: arrays[{key!r}] have different numbers of columns: {sorted(d)}")
    if "reference" in dims and dims["pool"] != dims["reference"]:
        raise InputError(f"reference: arrays[{key!r}] have {min(dims['reference'])} columns but the pool's "
                         f"have {min(dims['pool'])}: descriptors of other settings; use the same descriptor")
    return blocks


def _per_atom(atoms, key, index, name):
    arr = load_array(atoms.arrays[key], f"arrays[{key!r}]", where=f"{name} configuration {index}")
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] != len(atoms):
        raise InputError(f"arrays[{key!r}] ({name} configuration {index}): expected (n_atoms, n_features), "
                         f"got shape {arr.shape}")
    return arr


def _per_config_values(pool, given, key, name, per_atom):
    """Uncertainties (per atom) or weights (per configuration) from an argument or the configurations."""
    if given is not None:
        if per_atom and isinstance(given, (list, tuple)) and len(given) == len(pool) \
                and any(np.ndim(v) > 0 for v in given):
            out = []
            for i, v in enumerate(given):
                arr = load_array(v, name, ndim=1, where=f"configuration {i}")
                if arr.shape[0] != len(pool[i]):
                    raise InputError(f"{name} (configuration {i}): expected {len(pool[i])} values (one per atom), "
                                     f"got {arr.shape[0]}")
                out.append(arr)
            return out
        arr = load_array(given, name, ndim=1)
        if arr.shape[0] != len(pool):
            raise InputError(f"{name}: expected one value per pool configuration ({len(pool)}), got {arr.shape[0]}")
        return [np.array([v]) for v in arr] if per_atom else arr
    values = []
    for i, atoms in enumerate(pool):
        store = atoms.arrays if per_atom else atoms.info
        if key not in store:
            where = "atoms.arrays" if per_atom else "atoms.info"
            raise InputError(f"{name}: pool configuration {i} has no {where}[{key!r}]; pass {name}= or compute it "
                             f"first ({'LTAUForcesUQScore' if per_atom else 'FIMMatchingScore'})")
        v = load_array(store[key], f"{'arrays' if per_atom else 'info'}[{key!r}]", where=f"pool configuration {i}")
        values.append(v.ravel())
    if per_atom:
        return values
    for i, v in enumerate(values):
        if v.size != 1:
            raise InputError(f"info[{key!r}] (pool configuration {i}): expected one number, got shape {v.shape}")
    return np.array([v[0] for v in values])


# ----------------------------------------------------------------------------- the pool state

class _Pool:
    """Pool environments, their kernel sums against the selection, and the rows of the gain matrix."""

    def __init__(self, blocks, ref_blocks, h, n_threads, tile_size, keep_rows, prune=None):
        self.h, self.threads, self.tile = h, n_threads, tile_size
        # whole-set kernel sums (the reference's own, msc's): pruned to this tolerance, or dense (None)
        self.prune = prune
        self.sizes = np.array([len(b) for b in blocks])
        self.starts = np.concatenate(([0], np.cumsum(self.sizes)[:-1]))
        self.x = np.concatenate(blocks, axis=0)
        self.n_configs, self.n_envs = len(blocks), len(self.x)
        # each pool environment's kernel sum within its own configuration (self term included)
        self.own = gaussian.group_self_sums(self.x, self.starts, h)
        self.kernel = gaussian.GroupedKernelSums(self.x, self.starts, h, tile_size=tile_size, n_threads=n_threads)
        # centroid and radius of each configuration: a pass skips configurations out of reach (_REACH)
        self.centroid = np.add.reduceat(self.x, self.starts, axis=0) / self.sizes[:, None]
        dist = np.linalg.norm(self.x - self.centroid[np.repeat(np.arange(self.n_configs), self.sizes)], axis=1)
        self.radius = np.maximum.reduceat(dist, self.starts)
        self.t_sel = np.zeros(self.n_configs)  # sum over selected rows of log1p(M[i, C] / p_i)
        self.t_ref = np.zeros(self.n_configs)  # ... over the kept reference rows
        self.p_sel = np.zeros(self.n_envs)   # kernel sum against the selected environments
        self.p_ref = np.zeros(self.n_envs)   # ... against the reference environments
        self.selected = np.zeros(self.n_configs, dtype=bool)
        self.sel_envs = []                   # pool rows of the selected environments
        self.keep_rows = keep_rows
        self.buf, self.n_rows = None, 0       # gain-matrix rows of the selected envs: (n_rows, P)
        self.ref = None
        self.history = []                    # measures after every step
        if ref_blocks:
            self._init_reference(np.concatenate(ref_blocks, axis=0))

    # reference ----------------------------------------------------------------
    def _init_reference(self, r):
        self.ref_n = len(r)
        p_rr = np.exp(gaussian.log_kernel_sums(r, None, self.h, n_threads=self.threads, **self.prune_args()))
        kept_p, kept_m, dropped = [], [], []
        chunk = max(1, min(len(r), 2 ** 23 // max(self.n_configs, 1)))  # ~64 MB of group sums at a time
        for a in range(0, len(r), chunk):
            cols, groups = self.kernel(r[a:a + chunk])
            self.p_ref += cols
            p = p_rr[a:a + chunk]
            keep = groups.max(axis=1) > _NEGLIGIBLE * p
            kept_p.append(p[keep])
            kept_m.append(groups[keep])
            dropped.append(np.log(p[~keep]))
        self.ref_p = np.concatenate(kept_p)          # kernel sums of the kept reference rows against R ∪ S
        self.ref_m = np.concatenate(kept_m, axis=0)  # their kernel sums over every pool configuration
        self.ref_dropped = np.concatenate(dropped)   # log p of rows no pool configuration reaches
        self.ref_dropped_logp = float(self.ref_dropped.sum())
        self.ref_p0 = self.ref_p.copy()
        self.t_ref = _log1p_ratio_sums(self.ref_m, self.ref_p, self.threads) if len(self.ref_p) else self.t_ref
        self.t_ref0 = self.t_ref.copy()
        self.ref_logp_own = np.log(p_rr)            # against R only (for the reference's own summary)
        self.ref = r

    def prune_args(self):
        """Keyword arguments of the whole-set kernel sums: pruned or not."""
        return {} if self.prune is None else {"prune": True, "prune_tolerance": self.prune}

    # one step -----------------------------------------------------------------
    def add(self, c):
        """Add pool configuration ``c`` to the selection: one tiled pass (its envs x pool envs)."""
        s, n = self.starts[c], self.sizes[c]
        gap = np.linalg.norm(self.centroid - self.centroid[c], axis=1) - self.radius - self.radius[c]
        cols, groups = self.kernel(self.x[s:s + n], groups=gap < _REACH * self.h)
        if self.keep_rows and self.n_rows:  # rows whose p changes: their gain terms are recomputed
            rows = self._sel_rows()
            delta = self.buf[:self.n_rows, c]
            changed = np.flatnonzero(delta > _NEGLIGIBLE * (self.p_sel[rows] + self.p_ref[rows]))
            r = rows[changed]
            p_old = self.p_sel[r] + self.p_ref[r]
            self.p_sel += cols
            if len(changed):
                self.t_sel += _log1p_change_sums(self.buf[changed], p_old, cols[r], self.threads)
        else:
            self.p_sel += cols
        if self.ref is not None and len(self.ref_p):
            delta = self.ref_m[:, c]
            changed = np.flatnonzero(delta > _NEGLIGIBLE * self.ref_p)
            if self.keep_rows and len(changed):
                self.t_ref += _log1p_change_sums(self.ref_m[changed], self.ref_p[changed], delta[changed],
                                                 self.threads)
            self.ref_p = self.ref_p + delta
        self.selected[c] = True
        self.sel_envs.append(np.arange(s, s + n))
        if self.keep_rows:
            self._append_rows(groups)
            self.t_sel += _log1p_ratio_sums(groups, self.p_sel[s:s + n] + self.p_ref[s:s + n], self.threads)
        self.history.append({"step": len(self.history) + 1, "pool_index": int(c), **self.metrics()})

    def _append_rows(self, groups):
        """Store the new environments' kernel sums over every pool configuration (a growing buffer)."""
        need = self.n_rows + len(groups)
        if self.buf is None or need > len(self.buf):
            grown = np.empty((max(need, 2 * (0 if self.buf is None else len(self.buf))), self.n_configs))
            if self.n_rows:
                grown[:self.n_rows] = self.buf[:self.n_rows]
            self.buf = grown
        self.buf[self.n_rows:need] = groups
        self.n_rows = need

    def reset(self):
        """Back to the empty selection (reference kept)."""
        self.p_sel[:] = 0.0
        self.selected[:] = False
        self.sel_envs, self.history, self.n_rows = [], [], 0
        self.t_sel[:] = 0.0
        if self.ref is not None:
            self.ref_p = self.ref_p0.copy()
            self.t_ref = self.t_ref0.copy()

    # measures -----------------------------------------------------------------
    def _sel_rows(self):
        return np.concatenate(self.sel_envs) if self.sel_envs else np.zeros(0, dtype=int)

    def metrics(self):
        """Entropy, diversity, efficiency and overlap of the selection (and with the reference)."""
        rows = self._sel_rows()
        n = len(rows)
        p = self.p_sel[rows]
        out = {"n_configs": int(self.selected.sum()), "n_envs": int(n)}
        out.update(_measures(np.log(p), n))
        out["overlap"] = float(np.mean(self.p_sel > _COVERED))
        if self.ref is not None:
            n_all = n + self.ref_n
            logp = np.concatenate([np.log(p + self.p_ref[rows]), np.log(self.ref_p)])
            sum_logp = float(logp.sum()) + self.ref_dropped_logp
            h_all = math.log(n_all) - sum_logp / n_all
            # diversity: dropped reference rows keep their p against R (they change by < 1e-18)
            all_logp = np.concatenate([logp, self.ref_dropped])
            out["entropy_with_reference"] = h_all
            out["diversity_with_reference"] = float(_logsumexp(-all_logp))
            out["efficiency_with_reference"] = h_all / math.log(n_all) if n_all > 1 else None
            out["overlap_with_reference"] = float(np.mean(self.p_sel + self.p_ref > _COVERED))
        return out

    def entropy_gains(self):
        """Entropy of (reference ∪ selected ∪ C) for every pool configuration C (nats)."""
        rows = self._sel_rows()
        p_d = self.p_sel + self.p_ref                # every pool env against D = R ∪ S
        n_d = len(rows) + (self.ref_n if self.ref is not None else 0)
        sum_logp = float(np.log(p_d[rows]).sum())
        t = self.t_sel + self.t_ref  # kept up to date by add()
        if self.ref is not None:
            sum_logp += float(np.log(self.ref_p).sum()) + self.ref_dropped_logp
        u = np.add.reduceat(np.log(p_d + self.own), self.starts)
        n_new = n_d + self.sizes
        return np.log(n_new) - (sum_logp + t + u) / n_new

    def covered(self):
        """True for configurations whose every environment has dH < 1e-5 against the reference."""
        if self.ref is None:
            return np.zeros(self.n_configs, dtype=bool)
        return np.logical_and.reduceat(self.p_ref > _COVERED, self.starts)

    def max_delta_entropy(self):
        """Largest dH of each configuration's environments against R ∪ S (nats; inf when far)."""
        p_d = self.p_sel + self.p_ref
        with np.errstate(divide="ignore"):
            return np.maximum.reduceat(-np.log(p_d), self.starts)

    def config_entropies(self):
        """Entropy of each configuration on its own (as ``DatasetCompressor._entropies``)."""
        return np.log(self.sizes) - np.add.reduceat(np.log(self.own), self.starts) / self.sizes


def _log1p_ratio_sums(m, p, threads, block=1 << 20):
    """``sum_i log1p(m[i, g] / p[i])`` for every column ``g``, in row chunks on ``threads`` threads."""
    rows = max(1, block // max(1, m.shape[1]))
    chunks = [(a, min(a + rows, len(m))) for a in range(0, len(m), rows)]

    def work(part):
        out = np.zeros(m.shape[1])
        for a, b in part:
            tmp = m[a:b] / p[a:b, None]
            np.log1p(tmp, out=tmp)
            out += tmp.sum(axis=0)
        return out

    if threads == 1 or len(chunks) == 1 or m.size < (1 << 21):  # small: threads cost more than they save
        return work(chunks)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(work, [chunks[k::threads] for k in range(threads) if chunks[k::threads]]))


def _log1p_change_sums(m, p_old, delta, threads):
    """Change of ``sum_i log1p(m[i, g] / p_i)`` when every ``p_i`` grows by ``delta_i``, per column.

    ``log1p(m/(p+d)) - log1p(m/p) = log1p(d/(p+m)) - log1p(d/p)``: one log per entry, exactly 0
    where ``m`` is 0, so only the columns some changed row reaches are computed.
    """
    reach = np.flatnonzero(m.any(axis=0))
    out = np.zeros(m.shape[1])
    if reach.size == 0:
        return out
    sub = m[:, reach] if reach.size < m.shape[1] else m
    base = float(np.log1p(delta / p_old).sum())
    rows = max(1, (1 << 20) // max(1, sub.shape[1]))

    def work(a):
        tmp = sub[a:a + rows] + p_old[a:a + rows, None]
        np.divide(delta[a:a + rows, None], tmp, out=tmp)
        np.log1p(tmp, out=tmp)
        return tmp.sum(axis=0)

    starts = range(0, len(sub), rows)
    if threads == 1 or len(starts) == 1 or sub.size < (1 << 21):
        total = sum(work(a) for a in starts)
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads) as pool:
            total = sum(pool.map(work, starts))
    out[reach] = total - base
    return out


def _measures(logp, n):
    if n == 0:
        return {"entropy": None, "diversity": None, "efficiency": None}
    h = math.log(n) - float(logp.mean())
    return {"entropy": h, "diversity": float(_logsumexp(-logp)), "efficiency": h / math.log(n) if n > 1 else None}


def _logsumexp(a):
    m = float(np.max(a))
    return m + math.log(float(np.exp(a - m).sum()))


# ----------------------------------------------------------------------------- methods

def _order_entropy(pool, size, budget, bar):
    order, stop = [], None
    used = 0
    while len(order) < size:
        gains = pool.entropy_gains()
        excluded = pool.selected | pool.covered()
        if budget is not None:
            excluded |= used + pool.sizes > budget
        if excluded.all():  # the budget is spent (expected: no warning), or the reference holds the rest
            if budget is None or (pool.selected | pool.covered()).all():
                stop = ("every remaining configuration is already in the reference (all its environments have "
                        f"dH < {OVERLAP_EPSILON:g} against it)")
            break
        gains[excluded] = -np.inf
        c = int(np.argmax(gains))
        pool.add(c)
        used += int(pool.sizes[c])
        order.append(c)
        bar.update(1)
    return order, stop


def _order_msc(pool, size, bar, conditional):
    """quests ``msc`` (or ``msc_conditional`` with a reference), ranked by finite log sums."""
    entropies = pool.config_entropies()
    log_k = np.full(pool.n_envs, -np.inf)
    if conditional:
        log_k = gaussian.log_kernel_sums(pool.x, pool.ref, pool.h, n_threads=pool.threads, **pool.prune_args())
    remaining = np.ones(pool.n_configs, dtype=bool)
    order = []
    if not conditional:
        c = int(np.argmax(entropies))
        order.append(c)
        remaining[c] = False
        bar.update(1)
    while len(order) < size:
        if order:
            last = order[-1]
            s, n = pool.starts[last], pool.sizes[last]
            log_k = np.logaddexp(log_k, gaussian.log_kernel_sums(pool.x, pool.x[s:s + n], pool.h,
                                                                 n_threads=pool.threads, **pool.prune_args()))
        struct_dh = -np.minimum.reduceat(log_k, pool.starts)
        score = struct_dh + entropies
        score[~remaining] = -np.inf
        c = int(np.argmax(score))
        order.append(c)
        remaining[c] = False
        bar.update(1)
    return order


def _order_fps(pool, size, bar):
    """quests ``fps``: farthest by the mean environment distance between configurations."""
    entropies = pool.config_entropies()
    x = pool.x
    centre = x.mean(axis=0)
    xc = x - centre
    norms = np.einsum("ij,ij->i", xc, xc)
    remaining = np.ones(pool.n_configs, dtype=bool)
    min_dist = np.full(pool.n_configs, np.inf)
    c = int(np.argmax(entropies))
    order = [c]
    remaining[c] = False
    bar.update(1)
    tile = max(1, 2 ** 22 // max(1, int(pool.sizes.max())))
    while len(order) < size:
        s, n = pool.starts[c], pool.sizes[c]
        y, ny = xc[s:s + n], norms[s:s + n]
        sums = np.zeros(pool.n_envs)
        for b in range(0, pool.n_envs, tile):
            d2 = ny[:, None] + norms[None, b:b + tile] - 2.0 * (y @ xc[b:b + tile].T)
            sums[b:b + tile] = np.sqrt(np.maximum(d2, 0.0)).sum(axis=0)
        mean_dist = np.add.reduceat(sums, pool.starts) / (n * pool.sizes)
        min_dist = np.minimum(min_dist, mean_dist)
        masked = np.where(remaining, min_dist, -np.inf)
        c = int(np.argmax(masked))
        order.append(c)
        remaining[c] = False
        bar.update(1)
    return order


def _order_k_means(blocks, size, seed):
    """quests ``k_means`` on the mean descriptor of each configuration, one member per cluster."""
    from sklearn.cluster import KMeans

    rng = np.random.RandomState(seed)
    means = np.array([b.mean(axis=0) for b in blocks])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fewer distinct points than clusters: filled below
        labels = KMeans(n_clusters=size, random_state=rng).fit(means).labels_
    order = []
    for num in range(size):  # quests stops at labels.max() - 1 and so returns one fewer
        members = np.where(labels == num)[0]
        if len(members):
            order.append(int(rng.choice(members)))
    rest = [i for i in range(len(blocks)) if i not in set(order)]
    while len(order) < size:
        order.append(int(rest.pop(rng.randint(len(rest)))))
    return order


def _order_uncertainty(pool, scores, size, min_dh, budget, bar):
    order, stop, used = [], None, 0
    ranked = sorted(range(pool.n_configs), key=lambda i: (-scores[i], i))
    for c in ranked:
        if len(order) >= size:
            break
        if budget is not None and used + pool.sizes[c] > budget:
            continue
        if min_dh is not None and (order or pool.ref is not None):
            if pool.max_delta_entropy()[c] < min_dh:
                continue
        pool.add(c)
        used += int(pool.sizes[c])
        order.append(c)
        bar.update(1)
    if len(order) < size and min_dh is not None and budget is None:
        stop = f"only {len(order)} configurations pass the diversity guard (largest dH >= {min_dh} nats)"
    return order, stop


# ----------------------------------------------------------------------------- select

def select(pool, size=None, *, method="entropy", reference=None, atoms=None, bandwidth=DEFAULT_BANDWIDTH,
           descriptors_key="descriptors", descriptor="auto", seed=0, uncertainties=None,
           uncertainty_key=UNCERTAINTY_KEY, reduce="mean", min_delta_entropy=None, weights=None,
           weights_key=WEIGHTS_KEY, pool_summary=True, progress=None, n_threads=None,
           tile_size=gaussian.DEFAULT_TILE, prune=False, prune_tolerance=None) -> Selection:
    """Choose configurations from a pool, optionally conditional on a labelled reference.

    Parameters
    ----------
    pool : list of ase.Atoms or str
        Candidate configurations (or a file ASE reads); never modified.
    size : int, optional
        Number of configurations to choose (``weights``: default all with non-zero weight).
    method : str
        One of ``METHODS`` (default ``'entropy'``).
    reference : list of ase.Atoms or str, optional
        Configurations already labelled (training set): ``entropy`` maximises the entropy of
        reference ∪ selected, ``msc`` becomes quests' ``msc_conditional``, the uncertainty
        guard counts it; ``fps``, ``k_means``, ``random`` and ``weights`` ignore it (its
        measures are still reported).
    atoms : int, optional
        Instead of ``size``: choose configurations while their environments total at most
        this many (not with ``k_means``).
    bandwidth : float
        Kernel bandwidth ``h`` in descriptor units (default 0.015).
    descriptors_key : str
        ``atoms.arrays`` key of the per-atom descriptors.
    descriptor : 'auto', None or QUESTSDescriptor
        How descriptors are found (:func:`_descriptor_blocks`): ``'auto'`` uses the
        configurations' arrays, computing QUESTS descriptors (default settings) when no
        configuration holds them; ``None`` never computes; a descriptor computes all.
    seed : int
        Seed of ``random`` (Python ``random.Random``) and ``k_means`` (numpy ``RandomState``).
    uncertainties : list of arrays or array, optional
        ``uncertainty``: per-atom values per configuration, or one value per configuration;
        default ``atoms.arrays[uncertainty_key]``.
    reduce : {'mean', 'max'}
        ``uncertainty``: per-configuration value from the atoms'.
    min_delta_entropy : float, optional
        ``uncertainty``: skip a candidate whose largest dH against reference ∪ selected is
        below this (nats).
    weights : array_like, optional
        ``weights``: one weight per configuration; default ``atoms.info[weights_key]``.
    pool_summary : bool
        Also compute the entropy, diversity and efficiency of the whole pool (one pass
        over its pairs of environments).
    progress : bool, optional
        Progress bar per step (default: when writing to a terminal).
    n_threads, tile_size
        Kernel threads and tile size (:mod:`atomscore.quests.kernels.gaussian`).
    prune, prune_tolerance
        Whole-set kernel sums (the pool summary, the reference's own sums, ``msc``) skip the
        cell pairs that hold at most ``prune_tolerance`` (default 1e-10) of each row's sum, as
        :func:`~atomscore.quests.kernels.gaussian.log_kernel_sums`: every ``log p`` low by at
        most that many nats. The greedy steps always skip configurations out of reach (below
        4e-19 of the own term). Recorded in the summary.

    Returns
    -------
    Selection
    """
    from tqdm.auto import tqdm

    check_choice(method, "method", METHODS)
    configs = read_pool(pool, "pool")
    ref_configs = None if reference is None else read_pool(reference, "reference")
    n_pool = len(configs)
    if size is not None and atoms is not None:
        raise InputError("size and atoms: give one of them (configurations or environments), not both")
    if atoms is not None:
        atoms = check_int(atoms, "atoms", minimum=1)
        if method == "k_means":
            raise InputError("atoms: k_means needs the number of configurations (size), not an environment budget")
        smallest = min(len(a) for a in configs)
        if atoms < smallest:
            raise InputError(f"atoms: a budget of {atoms} environments holds no configuration "
                             f"(the smallest has {smallest})")
    if size is None and atoms is None and method != "weights":
        raise InputError(f"size: expected the number of configurations to choose (or atoms=), got None")
    if size is not None:
        size = check_int(size, "size", minimum=1)
        if size > n_pool:
            raise InputError(f"size: expected at most the {n_pool} configurations of the pool, got {size}")
    for i, a in enumerate(configs):
        if len(a) == 0:
            raise InputError(f"pool: configuration {i} has no atoms")
    if ref_configs is not None:
        if not ref_configs:
            ref_configs = None
        else:
            for i, a in enumerate(ref_configs):
                if len(a) == 0:
                    raise InputError(f"reference: configuration {i} has no atoms")
    h = float(check_positive(bandwidth, "bandwidth", allow_array=False))
    if check_int(seed, "seed", minimum=0) > 2**32 - 1:  # what numpy's RandomState (k_means) takes
        raise InputError(f"seed: expected an integer from 0 to 2**32 - 1, got {seed}")
    check_choice(reduce, "reduce", REDUCTIONS)
    if min_delta_entropy is not None:
        min_delta_entropy = float(np.asarray(min_delta_entropy, dtype=float))
        if not math.isfinite(min_delta_entropy):
            raise InputError(f"min_delta_entropy: expected a finite number of nats, got {min_delta_entropy}")
    threads = resolve_threads(n_threads)
    tile = check_int(tile_size, "tile_size", minimum=16)
    tolerance = gaussian.prune_option(prune, prune_tolerance, "float64")

    # per-method inputs, checked before any descriptor work
    scores = order_w = None
    if method == "uncertainty":
        per_atom = _per_config_values(configs, uncertainties, uncertainty_key, "uncertainties", per_atom=True)
        scores = np.array([v.mean() if reduce == "mean" else v.max() for v in per_atom])
    elif method == "weights":
        w = _per_config_values(configs, weights, weights_key, "weights", per_atom=False)
        if np.any(w < 0):
            raise InputError(f"weights: expected non-negative weights, got {float(w.min())} at configuration "
                             f"{int(np.argmin(w))}")
        nonzero = np.flatnonzero(w > 0)
        if nonzero.size == 0:
            raise InputError("weights: every weight is zero; nothing to select")
        order_w = sorted(nonzero.tolist(), key=lambda i: (-w[i], i))
        if size is not None and size > len(order_w):
            raise InputError(f"size: expected at most the {len(order_w)} configurations with non-zero weight, "
                             f"got {size}")
        if size is None and atoms is None:
            size = len(order_w)

    blocks, settings, origin = _descriptor_blocks(configs, ref_configs, descriptors_key, descriptor)
    pool_blocks = blocks[0]
    ref_blocks = blocks[1] if ref_configs is not None else None
    if size is None:  # an environment budget: at most this many configurations can fit
        size = int(np.searchsorted(np.cumsum(np.sort([len(a) for a in configs])), atoms, side="right"))
        size = max(1, size)

    state = _Pool(pool_blocks, ref_blocks, h, threads, tile, keep_rows=(method == "entropy"), prune=tolerance)
    stop = None
    disable = None if progress is None else not progress
    with tqdm(total=size, desc=f"select {method}", unit="config", disable=disable) as bar:
        if method == "entropy":
            order, stop = _order_entropy(state, size, atoms, bar)
        elif method == "uncertainty":
            order, stop = _order_uncertainty(state, scores, size, min_delta_entropy, atoms, bar)
        else:
            if method == "msc":
                order = _order_msc(state, size, bar, conditional=ref_blocks is not None)
            elif method == "fps":
                order = _order_fps(state, size, bar)
            elif method == "k_means":
                order = _order_k_means(pool_blocks, size, seed)
                bar.update(size)
            elif method == "random":
                order = _random.Random(seed).sample(range(n_pool), size)
                bar.update(size)
            else:
                order = order_w[:size]
                bar.update(size)
            if atoms is not None:
                cum = np.cumsum(state.sizes[order])
                order = order[:int(np.searchsorted(cum, atoms, side="right"))]

    # per-step measures along the order: recorded by the state as it grew, or replayed
    if method in ("entropy", "uncertainty"):
        steps = state.history
    else:
        state.reset()
        for c in order:
            state.add(c)
        steps = state.history
    summary = {
        "method": method, "size": len(order), "requested_size": size if atoms is None else None,
        "atoms": atoms, "bandwidth": h, "descriptors_key": descriptors_key, "descriptors": settings,
        "descriptors_origin": origin, "seed": seed if method in ("random", "k_means") else None,
        "reduce": reduce if method == "uncertainty" else None,
        "min_delta_entropy": min_delta_entropy if method == "uncertainty" else None,
        "overlap_epsilon": OVERLAP_EPSILON, "prune_tolerance": tolerance,
        "stopped_early": stop, "indices": [int(i) for i in order],
        "steps": steps, "selection": steps[-1] if steps else None,
    }
    if pool_summary:
        x = np.concatenate(pool_blocks, axis=0)
        info = gaussian.dataset_information(x, h, n_threads=threads, tile_size=tile, **state.prune_args())
        summary["pool"] = {"n_configs": n_pool, "n_envs": len(x), "entropy": float(info.entropy),
                           "diversity": float(info.diversity),
                           "efficiency": float(info.efficiency) if len(x) > 1 else None}
    else:
        summary["pool"] = {"n_configs": n_pool, "n_envs": int(state.n_envs)}
    if ref_blocks is not None:
        r = np.concatenate(ref_blocks, axis=0)
        summary["reference"] = {"n_configs": len(ref_configs), "n_envs": len(r),
                                **_measures(state.ref_logp_own, len(r)),
                                # before any pick: the fraction of the pool's environments it covers
                                "overlap_with_pool": float(np.mean(state.p_ref > _COVERED))}
    check_finite_output({k: summary[k] for k in ("steps", "pool", "reference") if k in summary},
                        f"select ({method}): entropy, diversity and overlap along the selection", "the descriptors",
                        hint="descriptors this large overflow float64 in the kernel; check them (or their units)")
    if stop:
        warnings.warn(f"select: stopped after {len(order)} configurations: {stop}", stacklevel=2)
    out = []
    for step, c in enumerate(order, 1):
        new = copy_with_labels(configs[c])
        new.info["pool_index"] = int(c)
        new.info["selection_step"] = step
        out.append(new)
    return Selection([int(i) for i in order], out, summary)


# ----------------------------------------------------------------------------- learning curve
