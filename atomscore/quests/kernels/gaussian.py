"""Gaussian kernel sums of descriptor sets in memory-bounded GEMM tiles, and the QUESTS
measures built on them (entropy, efficiency, diversity, delta entropy), equal to the quests
package's definitions. Lifted exponents and an exact log-sum-exp repair keep every dH finite;
how and why: docs/internals.md ("Kernel sums").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from atomscore.errors import InputError
from atomscore.quests.defaults import DEFAULT_BANDWIDTH
from atomscore.quests.kernels import cells as _cells
from atomscore.quests.kernels.tiles import run_tiles as _run_tiles
from atomscore.quests.kernels.tiles import tile_pairs
from atomscore.threads import blas_single_thread, default_threads, resolve_threads  # noqa: F401 - default_threads re-exported
from atomscore.validation import check_bool as _check_bool
from atomscore.validation import check_choice, check_finite_output, check_int, check_positive, load_array

__all__ = [
    "log_kernel_sums",
    "pruned_log_kernel_sums",
    "entropy",
    "diversity",
    "efficiency",
    "delta_entropy",
    "approx_delta_entropy",
    "estimate_delta_entropy",
    "dataset_information",
    "DatasetInformation",
    "default_threads",
    "estimate_entropy",
    "estimate_diversity",
    "estimate_efficiency",
    "sampled_log_sums",
    "information_from_log_sums",
    "Estimate",
    "BACKENDS",
]

DEFAULT_TILE = 1024
PRECISIONS = ("float64", "float32")
BACKENDS = ("numpy", "torch")
# Exponent floors: exp(floor) is a normal number, so no slow subnormal arithmetic.
_FLOOR = {"float64": -700.0, "float32": -87.0}
# exp(x) overflows above these.
_EXP_MAX = {"float64": 709.0, "float32": 88.0}
# A row whose (lifted) kernel sum is below N * exp(floor) * margin is recomputed by
# log-sum-exp: elsewhere the floor changes log p by less than 1 / margin.
_REPAIR_MARGIN = {"float64": 1e12, "float32": 1e7}
# estimate_delta_entropy: rows whose term may exceed this fraction of the probed cells' sum are
# summed exactly; it caps what the sample can miss, and so the bar's floor (nats, times
# sqrt(N/n - 1)). 1e-2: 2.3x the exact float32 pass at N = 2e5 (MD and copper); 1e-3 costs
# 1.5-1.7x as much. With the cap's variance cap^2 (N/n - 1) in the bar, 2.58 standard errors
# cover >= 99 % with either, also where only a few cells are exact
# (tests/test_dh_estimate.py; benchmarks/dh_estimate.py, docs/quests.md).
EXACT_ABOVE = 1e-2


def default_sample_size(n_reference):
    """:func:`estimate_delta_entropy`'s default sample: ``max(2000, N // 32)`` rows, at most N."""
    return min(n_reference, max(2000, n_reference // 32))


# ----------------------------------------------------------------------------- checks

def _descriptors(x, name):
    arr = load_array(x, name, ndim=2, dtype=np.float64)
    if arr.shape[0] == 0:
        raise InputError(f"{name}: expected at least one descriptor row, got an empty array of shape {arr.shape}")
    if arr.shape[1] == 0:
        raise InputError(f"{name}: expected at least one descriptor column, got shape {arr.shape}")
    return arr


def _bandwidths(bandwidth):
    h = check_positive(bandwidth, "bandwidth", allow_array=True)
    return np.atleast_1d(np.asarray(h, dtype=np.float64)), np.ndim(h) == 0


def _options(precision, tile_size, n_threads):
    check_choice(precision, "precision", PRECISIONS)
    tile = check_int(tile_size, "tile_size", minimum=16)
    threads = resolve_threads(n_threads)
    return precision, tile, threads


def _queries_and_reference(queries, reference):
    """``(y, x, symmetric)`` checked: a reference of ``None`` is the queries themselves."""
    y = _descriptors(queries, "queries")
    symmetric = reference is None
    x = y if symmetric else _descriptors(reference, "reference")
    if x.shape[1] != y.shape[1]:
        raise InputError(f"reference: expected descriptors of dimension {y.shape[1]} (as the queries), "
                         f"got dimension {x.shape[1]}")
    return y, x, symmetric


def prune_option(prune, prune_tolerance, precision):
    """The pruning tolerance of a call (float; default :data:`.cells.TOLERANCE` of
    ``precision``), or ``None`` for the dense pass; ``prune_tolerance`` without ``prune`` is
    refused."""
    if not _check_bool(prune, "prune"):
        if prune_tolerance is not None:
            raise InputError(f"prune_tolerance: applies with prune=True only, got prune=False and "
                             f"prune_tolerance={prune_tolerance!r}")
        return None
    if prune_tolerance is None:
        return _cells.TOLERANCE[precision]
    tol = float(check_positive(prune_tolerance, "prune_tolerance", allow_array=False))
    if not tol < 1.0:
        raise InputError(f"prune_tolerance: expected a relative bound below 1 (e.g. 1e-10), got {prune_tolerance!r}")
    return tol


def _engine(backend, device, prune=False):
    """The tile pass of ``backend``: ``None`` for numpy (:func:`_tile_pass`), else torch's on ``device``."""
    check_choice(backend, "backend", BACKENDS)
    if prune and backend != "numpy":
        raise InputError(f"prune=True: runs on the numpy backend only, got backend={backend!r}")
    if backend == "numpy":
        if device not in (None, "cpu"):
            raise InputError(f"device: the numpy backend runs on the CPU only, got device={device!r}; "
                             "use backend='torch' for another device")
        return None
    from atomscore.quests.kernels import torch_backend

    return torch_backend.tile_pass_on(device)


# ----------------------------------------------------------------------------- tiles

class _Operands:
    """Centred, augmented descriptor blocks for one bandwidth.

    ``left[i] @ right[j]`` is ``lift - gamma |y_i - x_j|^2`` (``gamma = 1/(2h^2)``): the
    exponent of the kernel, lifted by a constant. ``right`` is used transposed in the
    products (BLAS reads it so, no copy).
    """

    def __init__(self, left, right):
        self.left, self.right = left, right

    @classmethod
    def build(cls, yc, xc, gamma, dtype, lift=0.0):
        d = yc.shape[1]
        ny = -gamma * np.einsum("ij,ij->i", yc, yc)
        nx = ny if xc is yc else -gamma * np.einsum("ij,ij->i", xc, xc)
        left = np.empty((len(yc), d + 2), dtype=dtype)
        left[:, :d] = (2.0 * gamma) * yc
        left[:, d] = ny + lift
        left[:, d + 1] = 1.0
        right = np.empty((len(xc), d + 2), dtype=dtype)
        right[:, :d] = xc
        right[:, d] = 1.0
        right[:, d + 1] = nx
        return cls(left, right)

    def rows(self, index):
        """The same operands for a subset of the query rows."""
        return _Operands(self.left[index], self.right)


def _tile_pass(ops_list, tile, symmetric, dtype, n_threads, clip, shifted=False):
    """One pass over the tiles of exponents ``e = left @ right.T``; returns (n_rows, n_h).

    ``shifted=False``: row sums of ``exp(clip(e, *clip))`` (no clip if ``None``; plus the
    column sums of the off-diagonal tiles when ``symmetric``), accumulated in float64.
    ``shifted=True``: ``log`` of the row sums by a one-pass log-sum-exp: each row keeps its
    largest exponent so far ``m`` and the sum ``s`` of ``exp(e - m)`` (rescaled by
    ``exp(m_old - m_new)`` when a tile raises ``m``), so its largest term is 1 and no row
    underflows; ``log p = m + log s``.
    """
    n_rows, n_cols, n_h = len(ops_list[0].left), len(ops_list[0].right), len(ops_list)
    pairs = tile_pairs(n_rows, n_cols, tile, symmetric)

    def work(chunk):
        acc = np.zeros((n_rows, n_h))
        top = np.full((n_rows, n_h), -np.inf) if shifted else None
        acc_cols = np.zeros((n_cols, n_h)) if symmetric else None
        buf = np.empty((tile, tile), dtype=dtype)
        ones = np.ones(tile, dtype=dtype)
        for a, b in chunk:
            for k, ops in enumerate(ops_list):
                left, right = ops.left[a:a + tile], ops.right[b:b + tile]
                e = buf[:len(left), :len(right)]
                np.matmul(left, right.T, out=e)
                if shifted:
                    m_old = top[a:a + tile, k]
                    m_new = np.maximum(m_old, e.max(axis=1))
                    e -= m_new[:, None].astype(dtype)
                    acc[a:a + tile, k] *= np.exp(m_old - m_new)
                    top[a:a + tile, k] = m_new
                if clip is not None:  # float64 exp is ~50x slower where its result is subnormal
                    np.clip(e, *clip, out=e)  # (two-sided: 3x faster than np.maximum)
                np.exp(e, out=e)
                acc[a:a + tile, k] += e @ ones[:e.shape[1]]  # BLAS row sums: faster than e.sum(axis=1)
                if symmetric and b != a:
                    acc_cols[b:b + tile, k] += ones[:e.shape[0]] @ e
        if shifted:
            return top, acc
        return acc if not symmetric else acc + acc_cols

    parts = _run_tiles(work, pairs, n_threads)
    if not shifted:
        return sum(parts)
    top = np.maximum.reduce([m for m, _ in parts])
    return top + np.log(sum(s * np.exp(m - top) for m, s in parts))


def log_kernel_sums(queries, reference=None, bandwidth=DEFAULT_BANDWIDTH, *, precision="float64",
                    tile_size=DEFAULT_TILE, n_threads=None, backend="numpy", device=None, prune=False,
                    prune_tolerance=None):
    """Log of the Gaussian kernel sums of each query over a reference set.

    Parameters
    ----------
    queries : array_like or str, shape (M, d)
        Query descriptors (or a ``.npy``/``.txt`` path).
    reference : array_like or str, shape (N, d), optional
        Reference descriptors; ``None`` means the queries themselves (the symmetric case,
        computed on half the tiles).
    bandwidth : float or array_like of float, shape (H,)
        Kernel bandwidth(s) ``h`` in descriptor units; all bandwidths share one pass.
    precision : {'float64', 'float32'}
        Arithmetic of the tiles. Sums are accumulated in float64 either way, and rows
        that would underflow are recomputed by log-sum-exp (module docstring).
    tile_size : int
        Rows and columns per tile; memory is about ``tile_size**2`` numbers per thread.
    n_threads : int, optional
        Worker threads (default: the CPUs available to the process).
    backend : {'numpy', 'torch'}
        ``'torch'`` runs the tiles with torch (extra ``atomscore[gpu]``).
    device : str, optional
        torch device, ``'cpu'`` (default) or ``'cuda'`` / ``'cuda:N'``; numpy: CPU only.
    prune : bool
        Skip the pairs of descriptor cells (k-means, centre and radius) that together hold at
        most ``prune_tolerance`` of each row's kernel sum (numpy backend); faster where the
        data has structure (docs/internals.md, "Pruned kernel sums");
        :func:`pruned_log_kernel_sums` also returns the bound.
    prune_tolerance : float, optional
        With ``prune``: each row's skipped terms sum to at most this fraction of its kernel
        sum, so every ``log p_i`` is low by at most this many nats (and entropy, diversity
        and each dH off by at most it). Default 1e-10 for float64, 1e-7 for float32 (whose
        tiles' own rounding, ~1e-6..1e-4 nats on QUESTS descriptors, is larger anyway).

    Returns
    -------
    numpy.ndarray
        ``log p_i = log sum_j exp(-|y_i - x_j|^2 / (2 h^2))``, shape (M,) for a scalar
        bandwidth, (M, H) for an array of bandwidths. Always finite.
    """
    y, x, symmetric = _queries_and_reference(queries, reference)
    h, scalar = _bandwidths(bandwidth)
    precision, tile, threads = _options(precision, tile_size, n_threads)
    tol = prune_option(prune, prune_tolerance, precision)
    engine = _engine(backend, device, tol is not None)
    logp = _log_sums(y, x, symmetric, h, precision, tile, threads, engine, prune=tol)
    return logp[:, 0] if scalar else logp


def pruned_log_kernel_sums(queries, reference=None, bandwidth=DEFAULT_BANDWIDTH, *, precision="float64",
                           tile_size=DEFAULT_TILE, n_threads=None, prune_tolerance=None):
    """:func:`log_kernel_sums` with ``prune=True``, and the bound on what the pruning left out.

    Returns
    -------
    logp : numpy.ndarray, shape (M,) or (M, H)
        As :func:`log_kernel_sums`.
    skipped_bound : numpy.ndarray, same shape
        For every row, an upper bound on the skipped terms' sum relative to the row's
        computed kernel sum, so the true ``log p`` exceeds the returned one by at most
        ``log(1 + skipped_bound) <= skipped_bound`` (nats); at most ``prune_tolerance`` by
        construction, 0 where nothing was skipped.
    """
    y, x, symmetric = _queries_and_reference(queries, reference)
    h, scalar = _bandwidths(bandwidth)
    precision, tile, threads = _options(precision, tile_size, n_threads)
    report = {}
    tol = prune_option(True, prune_tolerance, precision)
    logp = _log_sums(y, x, symmetric, h, precision, tile, threads, prune=tol, report=report)
    bound = report["skipped_bound"]
    return (logp[:, 0], bound[:, 0]) if scalar else (logp, bound)


def _log_sums(y, x, symmetric, h, precision, tile, threads, engine=None, prune=None, report=None):
    """``log p`` (n_rows, n_h): a lifted plain pass, then a shifted pass for rows it cannot hold.

    ``engine`` is the tile pass (signature of :func:`_tile_pass`); ``None`` is numpy's.
    ``prune`` (a tolerance, or ``None``): the plain pass skips the cell pairs that hold at most
    that fraction of each row's sum (:mod:`.cells`); the bound on the skipped mass (relative
    to each row's sum, shape (n_rows, n_h); 0 for rows recomputed exactly) goes to
    ``report['skipped_bound']`` and the share of pairs computed (1 when the dense tiles ran)
    to ``report['pairs_kept']`` when ``report`` is a dict.
    """
    tile_pass = _tile_pass if engine is None else engine
    dtype = np.float32 if precision == "float32" else np.float64
    centre = x.mean(axis=0)
    xc = x - centre
    yc = xc if symmetric else y - centre
    # Exponents lifted so that a sum of N terms <= exp(lift) cannot overflow: rows far from X
    # (dH up to lift - floor - log(margin N)) need no repair.
    lift = _EXP_MAX[precision] - math.log(len(x)) - 1.0
    ops_list = [_Operands.build(yc, xc, g, dtype, lift) for g in 1.0 / (2.0 * h * h)]
    floor = _FLOOR[precision]
    clip = (floor, lift) if precision == "float64" else None  # float32 exp is as fast on subnormals
    bound = None
    if prune is not None:
        p, bound, kept = _pruned_sums(yc, xc, ops_list, symmetric, h, tile, dtype, threads, clip, lift, prune)
        if report is not None:
            report["pairs_kept"] = kept
    else:
        p = tile_pass(ops_list, tile, symmetric, dtype, threads, clip)
    with np.errstate(divide="ignore"):
        logp = np.log(p) - lift
    limit = len(x) * math.exp(floor) * _REPAIR_MARGIN[precision]
    bad = np.nonzero(np.any(~(p >= limit) | ~np.isfinite(p), axis=1))[0]
    if bad.size:
        # the few rows the plain pass cannot hold: an exact float64 log-sum-exp, whatever the precision
        if dtype is np.float64:
            rows = [ops.rows(bad) for ops in ops_list]
        else:
            rows = [_Operands.build(yc[bad], xc, g, np.float64, lift) for g in 1.0 / (2.0 * h * h)]
        clip64 = (_FLOOR["float64"], lift)
        logp[bad] = tile_pass(rows, tile, False, np.float64, threads, clip64, shifted=True) - lift
        if bound is not None:
            bound[bad] = 0.0  # every term summed
    if report is not None and bound is not None:
        report["skipped_bound"] = bound
    if not np.all(np.isfinite(logp)):
        scale = max(float(np.max(np.abs(x))), float(np.max(np.abs(y))))
        check_finite_output(logp, "Gaussian kernel sums (log p)", "the descriptors",
                            hint=f"descriptor values up to {scale:.3g} with bandwidth {float(np.min(h)):.3g} overflow "
                                 "float64 in the squared distances / (2 h^2); check the descriptors (or their units)")
    return logp


def _pruned_sums(yc, xc, ops_list, symmetric, h, tile, dtype, threads, clip, lift, tolerance):
    """The plain pass over the cell pairs that can matter: ``(p, skipped_bound)``, rows in input order.

    First each row cell's nearest cells (its own included) are summed; the smallest of its rows'
    sums is a lower bound of their kernel sums, which sets how much each row may skip
    (:func:`.cells.plan`); then the remaining kept pairs. ``skipped_bound``: the bound on every
    row's skipped terms divided by its computed sum (the lift cancels).
    """
    gammas = 1.0 / (2.0 * h * h)
    cols = _cells.partition(xc, n_threads=threads)
    rows = cols if symmetric else _cells.partition(yc, n_threads=threads)
    xr_sorted = yc[rows.order]
    bounds = _cells.cell_bounds(rows, cols, xr_sorted, xr_sorted if symmetric else xc[cols.order], gammas, symmetric,
                                threads)
    lefts = [ops.left[rows.order] for ops in ops_list]
    rights = [ops.right[cols.order] for ops in ops_list]
    seeds = _cells.seed_pairs(bounds, symmetric)
    p_seed = _cells.pruned_pass(lefts, rights, rows, cols, seeds, symmetric, dtype, threads, clip)
    with np.errstate(divide="ignore"):
        measured = np.minimum.reduceat(np.log(p_seed) - lift, rows.starts[:-1], axis=0) - math.log(_cells._SAFETY)
    log_lower = np.maximum(bounds.prior, measured)
    pairs = _cells.plan(bounds, cols, gammas, log_lower, tolerance, symmetric, done=seeds)
    if _cells.kept_share(rows, cols, pairs.keep) > _cells.DENSE_ABOVE:  # little to skip: the dense tiles
        return _tile_pass(ops_list, tile, symmetric, dtype, threads, clip), np.zeros((len(yc), len(gammas))), 1.0
    p_sorted = p_seed + _cells.pruned_pass(lefts, rights, rows, cols, pairs.keep & ~seeds, symmetric, dtype,
                                           threads, clip)
    p = np.empty_like(p_sorted)
    p[rows.order] = p_sorted
    with np.errstate(divide="ignore", over="ignore"):
        rel = np.exp(np.repeat(pairs.log_skipped, rows.sizes, axis=0) - (np.log(p_sorted) - lift))
    bound = np.empty_like(rel)
    bound[rows.order] = rel
    return p, bound, _cells.kept_share(rows, cols, pairs.keep)


# ----------------------------------------------------------------------------- measures

def _reduce(value, scalar):
    return float(value[0]) if scalar else np.asarray(value)


def _self_log_sums(x, bandwidth, precision, tile_size, n_threads, backend="numpy", device=None, prune=False,
                   prune_tolerance=None):
    x = _descriptors(x, "descriptors")
    h, scalar = _bandwidths(bandwidth)
    precision, tile, threads = _options(precision, tile_size, n_threads)
    tol = prune_option(prune, prune_tolerance, precision)
    engine = _engine(backend, device, tol is not None)
    return x, _log_sums(x, x, True, h, precision, tile, threads, engine, prune=tol), scalar


def entropy(x, bandwidth=DEFAULT_BANDWIDTH, *, precision="float64", tile_size=DEFAULT_TILE, n_threads=None,
            backend="numpy", device=None, prune=False, prune_tolerance=None):
    """Information entropy ``H = -(1/N) sum_i log(p_i / N)`` of a descriptor set, in nats.

    Same definition as ``quests.entropy.entropy``. Parameters as :func:`log_kernel_sums`;
    returns a float, or one value per bandwidth (shape (H,)).
    """
    x, logp, scalar = _self_log_sums(x, bandwidth, precision, tile_size, n_threads, backend, device, prune,
                                     prune_tolerance)
    return _reduce(math.log(len(x)) - logp.mean(axis=0), scalar)


def efficiency(x, bandwidth=DEFAULT_BANDWIDTH, *, precision="float64", tile_size=DEFAULT_TILE, n_threads=None,
               backend="numpy", device=None, prune=False, prune_tolerance=None):
    """Efficiency ``H / log N`` (dimensionless, 1 when no two points overlap); needs N >= 2."""
    x = _descriptors(x, "descriptors")
    if len(x) < 2:
        raise InputError(f"descriptors: efficiency H/log N needs at least 2 environments, got {len(x)}")
    return entropy(x, bandwidth, precision=precision, tile_size=tile_size, n_threads=n_threads,
                   backend=backend, device=device, prune=prune, prune_tolerance=prune_tolerance) / math.log(len(x))


def diversity(x, bandwidth=DEFAULT_BANDWIDTH, *, precision="float64", tile_size=DEFAULT_TILE, n_threads=None,
              backend="numpy", device=None, prune=False, prune_tolerance=None):
    """Diversity ``D = log sum_i 1/p_i`` (nats), as ``quests.entropy.diversity``."""
    _, logp, scalar = _self_log_sums(x, bandwidth, precision, tile_size, n_threads, backend, device, prune,
                                     prune_tolerance)
    return _reduce(_logsumexp(-logp, axis=0), scalar)


def delta_entropy(y, x, bandwidth=DEFAULT_BANDWIDTH, *, precision="float64", tile_size=DEFAULT_TILE,
                  n_threads=None, backend="numpy", device=None, prune=False, prune_tolerance=None):
    """Differential entropy ``dH(y_i | X) = -log sum_j K(y_i, x_j)`` of each query, in nats.

    As ``quests.entropy.delta_entropy`` where that is finite; where its kernel sum
    underflows (queries far from all of ``X``) quests gives ``+inf`` and we give the exact
    finite value by log-sum-exp. Returns shape (M,) or (M, H) for an array of bandwidths.
    """
    return -log_kernel_sums(y, x, bandwidth, precision=precision, tile_size=tile_size, n_threads=n_threads,
                            backend=backend, device=device, prune=prune, prune_tolerance=prune_tolerance)


def approx_delta_entropy(y, x, bandwidth=DEFAULT_BANDWIDTH, num_nearest_neighbors=3, approx_index="flat",
                         approx_options=None):
    """``dH`` restricted to the ``k`` nearest reference points of each query.

    ``-log sum_{j in kNN(y_i)} K(y_i, x_j)``, an upper bound of :func:`delta_entropy`
    (tight when farther points contribute little). The neighbours are exact (faiss
    ``IndexFlatL2``, see :mod:`atomscore.index`), not approximate as
    ``quests.entropy.approx_delta_entropy``'s pynndescent graph; the sum is a float64
    log-sum-exp, so the result is finite for any query. ``approx_index='hnsw'`` finds the
    neighbours with an HNSW graph instead (for references of 10^6 - 10^7 points; a missed
    neighbour can only raise dH, see docs/quests.md for the measured bias);
    ``approx_index='ivf'`` with an inverted file (faiss ``IndexIVFFlat``; ``approx_options``
    ``{'nlist': int, 'nprobe': int}``, defaults in :mod:`atomscore.index`).

    Returns shape (M,), or (M, H) for an array of bandwidths.
    """
    from atomscore.index import knn_squared_distances

    y = _descriptors(y, "queries")
    x = _descriptors(x, "reference")
    h, scalar = _bandwidths(bandwidth)
    scale = max(float(np.max(np.abs(x))), float(np.max(np.abs(y))))
    if not (2.0 * scale) ** 2 * x.shape[1] < np.finfo(np.float32).max:  # faiss' squared distances are float32
        raise InputError(f"queries/reference: descriptor values up to {scale:.3g} overflow the float32 squared "
                         "distances of the faiss index; use the exact kernel (approx=False) or check the descriptors")
    d2, _ = knn_squared_distances(y, x, num_nearest_neighbors, index=approx_index, options=approx_options)
    exponents = -d2[:, :, None] / (2.0 * h * h)  # (M, k, H)
    dh = -_logsumexp(exponents, axis=1)
    return dh[:, 0] if scalar else dh


def estimate_delta_entropy(y, x, bandwidth=DEFAULT_BANDWIDTH, sample_size=None, seed=0, *, n_cells=None,
                           n_probe=32, exact_above=EXACT_ABOVE, precision="float32", tile_size=DEFAULT_TILE,
                           n_threads=None) -> "Estimate":
    """``dH`` of each query: its nearest reference cells summed exactly, the rest sampled, with an error bar.

    The reference is cut into ``n_cells`` k-means cells (faiss, as the IVF index). For each
    query the terms of its ``n_probe`` nearest cells (by centroid) are summed exactly, giving
    ``E``, and so is every other reference row whose term could exceed ``exact_above * E``
    (bound: ``|y - x| >= |y - c| - |x - c|``, ``c`` the row's cell centre). The remaining
    terms, ``R``, each at most ``cap = exp(-gamma (|y - c| - |x - c|)^2)`` (the largest such
    bound left, ``<= exact_above * E``), are estimated from one uniform sample ``S`` of
    ``sample_size`` reference rows drawn without replacement and shared by all queries:
    ``R^ = (N/n) sum_{j in S, not exact} K(y, x_j)`` (Horvitz-Thompson, unbiased). The
    standard error combines in quadrature (relative to ``p^``, i.e. in nats):
    the sampling error ``N sqrt((1 - n/N) / n) s_z / p^`` (``s_z``: the sample standard
    deviation of the terms, exact ones counted as 0), ``sqrt(N/n - 1) cap / p^`` (the
    variance one unsampled term as large as ``cap`` would add to ``R^``: what a sample that
    missed the rare large terms cannot show; it keeps the bars honest where the remainder
    is a few large terms) and the tiles' rounding ``u gamma (|y|^2 + median |x|^2)``
    (``u``: the unit roundoff of ``precision``, centred descriptors). Coverage and cost
    measured, and when to use which dH: docs/quests.md ("Which dH").

    Parameters
    ----------
    y, x : array_like, shapes (M, d), (N, d)
        Queries and reference descriptors.
    bandwidth : float
        ``h`` in descriptor units.
    sample_size : int, optional
        ``n``, default ``max(2000, N // 32)``; ``n >= N`` takes every row (exact, error 0).
    seed : int
        ``numpy.random.default_rng`` seed of the sample.
    n_cells, n_probe : int, optional
        Cells (default ``round(sqrt(N))``, as the IVF index) and exactly summed cells per
        query (default 32).
    exact_above : float
        Rows whose term may exceed this fraction of the probed cells' sum are summed exactly
        (default :data:`EXACT_ABOVE`, 1e-2); the ``cap`` part of the error bar stays below
        ``sqrt(N/n - 1)`` times it (nats).
    precision : {'float32', 'float64'}
        Arithmetic of the tiles (sums in float64).

    Returns
    -------
    Estimate
        ``(value, standard_error)``: ``dH`` in nats, shape (M,), and its standard error.
        Queries so far from the reference that the float tiles cannot hold them get the
        exact float64 value and an error of 0.
    """
    from atomscore.index import ivf_options, kmeans_cells

    y, x, _ = _queries_and_reference(y, x)
    h = float(check_positive(bandwidth, "bandwidth", allow_array=False))
    tau = float(check_positive(exact_above, "exact_above", allow_array=False))
    n_ref = len(x)
    n = default_sample_size(n_ref) if sample_size is None else check_int(sample_size, "sample_size", minimum=2)
    n = min(n, n_ref)
    check_int(seed, "seed", minimum=0)
    cells_n = ivf_options(n_ref)["nlist"] if n_cells is None else check_int(n_cells, "n_cells", minimum=1)
    cells_n = min(cells_n, n_ref)
    probe = min(check_int(n_probe, "n_probe", minimum=1), cells_n)
    precision, tile, threads = _options(precision, tile_size, n_threads)
    dtype = np.float32 if precision == "float32" else np.float64
    gamma = 1.0 / (2.0 * h * h)
    centre = x.mean(axis=0)
    xc, yc = x - centre, y - centre
    quantizer, cell_of = kmeans_cells(np.ascontiguousarray(xc, dtype=np.float32), cells_n, threads)
    cells = _Cells.build(xc, cell_of, quantizer.reconstruct_n(0, cells_n).astype(np.float64), gamma, dtype)
    dist = cells.centre_distances(yc)  # (M, C) float32, rounded down
    m = len(y)
    probed = (np.argpartition(dist, probe - 1, axis=1)[:, :probe] if probe < cells_n
              else np.broadcast_to(np.arange(cells_n), (m, cells_n)))
    lift = _EXP_MAX[precision] - math.log(n_ref) - 1.0
    clip = (_FLOOR[precision], lift) if precision == "float64" else None
    # the exact sums work in each cell's own frame (queries and rows relative to the cell centre):
    # the expanded product then rounds like |y - c|^2, not like |y|^2 (float32: 10-40x less)
    local = _LocalOperands(yc, cells, gamma, dtype, lift)
    # exact prefixes, as triples (query, cell, rows): query q sums the first `rows` rows of the
    # cell (farthest from its centre first); the probed cells whole
    q_at, c_at = np.repeat(np.arange(m), probed.shape[1]), probed.ravel()
    k_at = cells.sizes[c_at]
    near = _prefix_sums(local, q_at, c_at, k_at, clip, tile, threads)
    limit = n_ref * math.exp(_FLOOR[precision]) * _REPAIR_MARGIN[precision]
    good = near >= limit
    top = np.full(m, 0.0)
    top[good] = np.log(near[good]) - lift  # log of the exact part: sampled terms are scaled by it
    # every other row whose bound exceeds tau * E: summed exactly too (a prefix of its cell,
    # rounded up to a power of 2 of at least _PREFIX_MIN rows: fewer, larger products)
    reach = np.sqrt(np.maximum(-(math.log(tau) + top) / gamma, 0.0))  # |y - c| - |x - c| below this: exact
    qi, ci, k = cells.rows_within(dist, reach, probed)
    if qi.size:
        k = np.minimum(np.maximum(_PREFIX_MIN, 2 ** np.ceil(np.log2(k)).astype(np.int64)), cells.sizes[ci])
        near = near + _prefix_sums(local, qi, ci, k, clip, tile, threads)
        top[good] = np.log(near[good]) - lift
        q_at, c_at, k_at = np.concatenate([q_at, qi]), np.concatenate([c_at, ci]), np.concatenate([k_at, k])
    log_cap = cells.log_largest_left(dist, q_at, c_at, k_at, gamma)  # log of the largest term no exact sum holds
    order_of = np.empty(n_ref, dtype=np.int64)
    order_of[cells.order] = np.arange(n_ref)
    rows = np.arange(n_ref) if n >= n_ref else np.random.default_rng(seed).choice(n_ref, n, replace=False)
    at = np.sort(order_of[rows])  # the sample's positions in the cell order
    small = np.uint16 if cells.sizes.max(initial=0) < 2 ** 16 else np.int64  # a narrower gather per tile
    held = np.zeros(dist.shape, dtype=small)
    held[q_at, c_at] = k_at
    nearest2 = np.take_along_axis(dist, probed[:, :1], axis=1)[:, 0] ** 2 if probe == 1 else dist.min(axis=1) ** 2
    del dist, local
    s1, s2 = _sampled_far_sums(yc, xc[cells.order[at]], cells, at, held, gamma, top, dtype, precision, tile, threads)
    ratio = 1.0 + (n_ref / n) * s1  # p / exp(top)
    var = np.maximum(s2 - s1 * s1 / n, 0.0) / (n - 1)
    se = n_ref * math.sqrt(max(1.0 - n / n_ref, 0.0) / n) * np.sqrt(var) / ratio
    # the variance one unsampled term of the largest possible size adds to the sampled sum, a Bernoulli(n/N)
    # draw scaled by N/n: cap^2 (N/n - 1). The sample's own s_z cannot show the rare large terms it missed
    # (cap alone, without the factor, covered 98.4 % at 2.58 where 2 of 77 cells are exact; with it 99.7 %)
    cap = np.exp(np.minimum(log_cap - top, 0.0)) / ratio * math.sqrt(max(n_ref / n - 1.0, 0.0))
    # the tiles' rounding: an exponent -gamma |y - x|^2 from the expanded product carries about
    # u gamma (|y|^2 + |x|^2) (u: unit roundoff, centred descriptors), and so does the log-sum
    # (u: unit roundoff, centred descriptors; sqrt(d + 2): the product's d + 2 roundings add up
    # like a random walk). The exact sums work in the cells' frames (the nearest centre and a
    # typical radius), the sampled part globally, weighted by its share; and the float64 value
    # any dense evaluation in the global frame carries (the exact reference's own rounding).
    unit = float(np.finfo(dtype).eps) / 2.0
    walk = math.sqrt(yc.shape[1] + 2.0)
    norms = np.einsum("ij,ij->i", yc, yc) + float(np.median(np.einsum("ij,ij->i", xc, xc)))
    radius2 = float(np.median(cells.radius)) ** 2
    sampled_share = 1.0 - 1.0 / ratio
    rounding = walk * gamma * (unit * (nearest2 + radius2 + sampled_share * norms)
                               + float(np.finfo(np.float64).eps) / 2.0 * norms)
    se = np.sqrt(se * se + cap * cap + rounding * rounding)
    value = -(top + np.log(ratio))
    bad = np.flatnonzero(~good)
    if bad.size:  # far from every reference point: the exact float64 log-sum-exp, error 0
        value[bad] = -_log_sums(y[bad], x, False, np.array([h]), "float64", tile, threads)[:, 0]
        se[bad] = 0.0
    return Estimate(value, se)


class _Cells(NamedTuple):
    """The reference in k-means cells, each cell's rows farthest from its centre first.

    ``right`` (N, d + 2), ``dtype``: the rows in that order as kernel operands in their
    cell's frame, ``[x - c, 1, -gamma |x - c|^2]`` (see :class:`_LocalOperands`);
    ``starts`` (C + 1,): cell ``c`` is ``right[starts[c]:starts[c + 1]]``; ``radius`` (N,):
    each row's distance to its centre, same order; ``centres`` (C, d) float64; ``order``:
    the original index of each row; ``cell``: its cell.
    """

    right: np.ndarray
    starts: np.ndarray
    radius: np.ndarray
    centres: np.ndarray
    order: np.ndarray
    cell: np.ndarray

    @classmethod
    def build(cls, xc, cell_of, centres, gamma, dtype):
        by_cell = np.argsort(cell_of, kind="stable")
        starts = np.searchsorted(cell_of[by_cell], np.arange(len(centres) + 1))
        right = np.empty((len(xc), xc.shape[1] + 2), dtype=dtype)
        radius = np.empty(len(xc))
        order = np.empty(len(xc), dtype=np.int64)
        for c in np.flatnonzero(np.diff(starts)):  # cell by cell: no (N, d) temporaries
            lo, hi = starts[c], starts[c + 1]
            local = xc[by_cell[lo:hi]] - centres[c]
            r2 = np.einsum("ij,ij->i", local, local)
            far = np.argsort(-r2, kind="stable")
            right[lo:hi, :-2] = local[far]
            right[lo:hi, -1] = -gamma * r2[far]
            radius[lo:hi] = np.sqrt(r2[far])
            order[lo:hi] = by_cell[lo:hi][far]
        right[:, -2] = 1.0
        return cls(right, starts, radius, centres, order, cell_of[order])

    @property
    def sizes(self):
        return np.diff(self.starts)

    @property
    def largest_radius(self):
        """(C,): each cell's largest distance of a row to its centre (0 for an empty cell)."""
        return np.where(self.sizes > 0, self.radius[np.minimum(self.starts[:-1], len(self.radius) - 1)], 0.0)

    def centre_distances(self, yc):
        """(M, C) float32: ``|y - c|``, rounded down by more than the float32 expansion's rounding
        (~1e-7 of the norms), so the bounds built on it stay bounds."""
        y32, c32 = yc.astype(np.float32), self.centres.astype(np.float32)
        ny, nc = np.einsum("ij,ij->i", y32, y32), np.einsum("ij,ij->i", c32, c32)
        d2 = y32 @ c32.T
        d2 *= -2.0
        d2 += ny[:, None]
        d2 += (nc - 1e-5 * (ny.max(initial=0.0) + nc.max(initial=0.0)))[None]
        np.maximum(d2, 0.0, out=d2)
        return np.sqrt(d2, out=d2)

    def rows_within(self, dist, reach, probed):
        """The rows of the cells not ``probed`` with ``|x - c| > |y - c| - reach`` (those whose
        term ``exp(-gamma |y - x|^2)`` the triangle inequality cannot keep below
        ``exp(-gamma reach^2)``), as triples ``(query, cell, count)``: a prefix of the cell,
        farthest rows first, for each pair that has any."""
        bound = dist - reach[:, None]
        np.put_along_axis(bound, probed, np.inf, axis=1)
        qi, ci = np.nonzero(bound < self.largest_radius[None])
        by_cell = np.argsort(ci, kind="stable")
        qi, ci = qi[by_cell], ci[by_cell]
        edges = np.searchsorted(ci, np.arange(len(self.centres) + 1))
        counts = np.empty(len(qi), dtype=np.int64)
        for c in np.flatnonzero(np.diff(edges)):
            lo, hi = self.starts[c], self.starts[c + 1]
            a, b = edges[c], edges[c + 1]  # radius descending in the cell: count of radius > bound
            counts[a:b] = (hi - lo) - np.searchsorted(self.radius[lo:hi][::-1], bound[qi[a:b], c], side="right")
        return qi, ci, counts

    def log_largest_left(self, dist, q_at, c_at, k_at, gamma):
        """(M,): log of the largest bound ``exp(-gamma (|y - c| - |x - c|)_+^2)`` over the rows
        that no exact prefix ``(query, cell, rows)`` holds (the first row after each prefix);
        -inf where none is left."""
        gap = dist - self.largest_radius[None]  # an untouched cell: its farthest row first
        whole = k_at >= self.sizes[c_at]
        first = self.radius[np.minimum(self.starts[c_at] + k_at, len(self.radius) - 1)]
        gap[q_at, c_at] = np.where(whole, np.inf, dist[q_at, c_at] - first)
        nearest = gap.min(axis=1, initial=np.inf)
        return np.where(np.isfinite(nearest), -gamma * np.maximum(nearest, 0.0) ** 2, -np.inf)


_PREFIX_MIN = 16  # an extra exact prefix is rounded up to a power of 2 of at least this many rows


class _LocalOperands:
    """Kernel operands in each cell's frame: ``right`` holds every row as ``x - c`` (cell
    order, :class:`_Cells`), ``left(q, c)`` the queries ``q`` as ``y - c``; their product is
    ``lift - gamma |y - x|^2`` as in :class:`_Operands`."""

    def __init__(self, yc, cells, gamma, dtype, lift):
        self.cells, self.gamma, self.lift = cells, gamma, lift
        self.y = (2.0 * gamma) * yc.astype(dtype)
        self.c = ((2.0 * gamma) * cells.centres).astype(dtype)
        self.right = cells.right

    def __len__(self):
        return len(self.y)

    def left(self, q, c):
        out = np.empty((len(q), self.y.shape[1] + 2), dtype=self.y.dtype)
        diff = out[:, :-2]
        np.subtract(self.y[q], self.c[c], out=diff)  # 2 gamma (y - c), rounded once
        # |y - c|^2 of the same rounded difference: the exponent is then -gamma |y~ - x|^2 exactly
        # for a query y~ within rounding of y (no cancellation between the terms)
        out[:, -2] = self.lift - np.einsum("ij,ij->i", diff, diff) / (4.0 * self.gamma)
        out[:, -1] = 1.0
        return out


def _prefix_sums(local, q_at, c_at, k_at, clip, tile, threads):
    """Lifted kernel sums of each query over the exact prefixes ``(query, cell, rows)`` given
    (the first ``rows`` rows of the cell), (M,) float64. Inverted: for each cell and prefix
    length, one product of the queries that need it with those rows, in the cell's frame."""
    order = np.lexsort((k_at, c_at))
    q_at, c_at, k_at = q_at[order], c_at[order], k_at[order]
    cuts = np.flatnonzero((np.diff(c_at) != 0) | (np.diff(k_at) != 0)) + 1
    starts = local.cells.starts
    work = [(q_at[a:b], int(c_at[a]), int(starts[c_at[a]]), int(starts[c_at[a]] + k_at[a]))
            for a, b in zip(np.concatenate(([0], cuts)), np.concatenate((cuts, [len(q_at)])))
            if b > a and k_at[a] > 0]

    def run(chunk):
        acc = np.zeros(len(local))
        for q, c, lo, hi in chunk:
            right = local.right[lo:hi]
            for a in range(0, len(q), tile):
                qa = q[a:a + tile]
                left = local.left(qa, c)
                for b in range(0, len(right), tile):
                    e = left @ right[b:b + tile].T
                    if clip is not None:
                        np.clip(e, *clip, out=e)
                    np.exp(e, out=e)
                    acc[qa] += e.sum(axis=1)  # pairwise in the tile's precision, tiles in float64
        return acc

    return sum(_run_tiles(run, work, threads)) if work else np.zeros(len(local))


def _sampled_far_sums(yc, xs, cells, at, held, gamma, top, dtype, precision, tile, threads):
    """``(sum_j t_j, sum_j t_j^2)`` per query over the sampled rows ``xs`` (positions ``at`` in
    the cell order, ascending) that no exact prefix holds (``rank in cell >= held[i, cell]``),
    ``t_j = K(y_i, x_j) / exp(top_i)``."""
    ops = _Operands.build(yc, xs, gamma, dtype)
    ops.left[:, -2] -= top.astype(dtype)  # exponents come out of the product already scaled: e - top
    cell_s = cells.cell[at]
    rank_s = (at - cells.starts[cell_s]).astype(held.dtype)
    pairs = [(a, b) for a in range(0, len(yc), tile) for b in range(0, len(at), tile)]
    cap = _EXP_MAX[precision] - 1.0  # a sampled term may exceed the exact part; only overflow is cut

    def work(chunk):
        s1, s2 = np.zeros(len(yc)), np.zeros(len(yc))
        buf = np.empty((tile, tile), dtype=dtype)
        for a, b in chunk:
            left, right = ops.left[a:a + tile], ops.right[b:b + tile]
            e = buf[:len(left), :len(right)]
            np.matmul(left, right.T, out=e)
            np.minimum(e, cap, out=e)
            np.exp(e, out=e)
            np.copyto(e, 0.0, where=held[a:a + len(left)][:, cell_s[b:b + len(right)]] > rank_s[b:b + len(right)])
            # a tile row's pairwise sum in its own precision (~1e-7 relative in float32), tiles in float64
            s1[a:a + len(left)] += e.sum(axis=1)
            s2[a:a + len(left)] += np.einsum("ij,ij->i", e, e)
        return s1, s2

    parts = _run_tiles(work, pairs, threads)
    return sum(p[0] for p in parts), sum(p[1] for p in parts)


# ----------------------------------------------------------------------------- sampled estimates

class Estimate(NamedTuple):
    """A sampled estimate and its standard error (same units; arrays for several bandwidths)."""

    value: object
    standard_error: object


def sampled_log_sums(x, bandwidth=DEFAULT_BANDWIDTH, sample_size=1000, seed=0, *, precision="float64",
                     tile_size=DEFAULT_TILE, n_threads=None, backend="numpy", device=None):
    """``log p_i`` of ``sample_size`` rows of ``x`` drawn without replacement, against all rows.

    Returns ``(rows, logp)``: the sorted row indices (shape (n,)) and their log kernel sums
    over the whole set (shape (n, H)); ``n = min(sample_size, N)``. With ``n = N`` every
    row is used (the exact, symmetric pass). ``seed`` feeds ``numpy.random.default_rng``.
    """
    x = _descriptors(x, "descriptors")
    n = check_int(sample_size, "sample_size", minimum=2)
    if seed is not None:
        check_int(seed, "seed", minimum=0)
    h, _ = _bandwidths(bandwidth)
    precision, tile, threads = _options(precision, tile_size, n_threads)
    engine = _engine(backend, device)
    if n >= len(x):
        return np.arange(len(x)), _log_sums(x, x, True, h, precision, tile, threads, engine)
    rows = np.sort(np.random.default_rng(seed).choice(len(x), size=n, replace=False))
    return rows, _log_sums(x[rows], x, False, h, precision, tile, threads, engine)


def _sample_mean(values, n_total):
    """Mean over the sample's rows and its standard error (finite-population corrected)."""
    n = len(values)
    if n >= n_total:
        return values.mean(axis=0), np.zeros(values.shape[1])
    return values.mean(axis=0), values.std(axis=0, ddof=1) * math.sqrt((1.0 - n / n_total) / n)


def estimate_entropy(x, bandwidth=DEFAULT_BANDWIDTH, sample_size=1000, seed=0, **options) -> Estimate:
    """Entropy ``H`` (nats) from ``sample_size`` rows' kernel sums against all N rows, with its error.

    ``H = log N - mean_i log p_i``; the mean over a uniform sample of rows (each ``log p_i``
    exact, over all N rows) is unbiased, and its standard error is
    ``std(log p_S) sqrt((1 - n/N) / n)``. Cost ``n x N`` kernel terms. ``sample_size >= N``
    gives the exact value and a zero error. Keyword options as :func:`log_kernel_sums`.
    Unlike ``quests``' ``entropy_sampler`` (the entropy *of* a subsample, which is biased
    low for the whole set), this estimates the entropy of the whole set.

    Returns
    -------
    Estimate
        ``(value, standard_error)`` in nats: floats, or arrays of shape (H,) for an
        array of bandwidths.
    """
    x = _descriptors(x, "descriptors")
    h, scalar = _bandwidths(bandwidth)
    _, logp = sampled_log_sums(x, h, sample_size, seed, **options)
    return _entropy_estimate(logp, len(x), scalar)


def _entropy_estimate(logp, n_total, scalar) -> Estimate:
    mean, se = _sample_mean(logp, n_total)
    return Estimate(_reduce(math.log(n_total) - mean, scalar), _reduce(se, scalar))


def _diversity_estimate(logp, n_total, scalar) -> Estimate:
    top = (-logp).max(axis=0)
    w = np.exp(-logp - top)  # 1/p_i scaled by exp(-top): the largest is 1, nothing overflows
    mean, se = _sample_mean(w, n_total)
    return Estimate(_reduce(math.log(n_total) + top + np.log(mean), scalar), _reduce(se / mean, scalar))


def estimate_information(x, bandwidth=DEFAULT_BANDWIDTH, sample_size=1000, seed=0, **options) -> dict:
    """Entropy, diversity and efficiency estimates from ONE sampled pass (cost ``n x N``).

    Returns ``{'entropy': Estimate, 'diversity': Estimate, 'efficiency': Estimate}`` with
    the same values as :func:`estimate_entropy`, :func:`estimate_diversity` and
    :func:`estimate_efficiency` for the same ``seed`` (nats; efficiency dimensionless).
    """
    x = _descriptors(x, "descriptors")
    if len(x) < 2:
        raise InputError(f"descriptors: efficiency H/log N needs at least 2 environments, got {len(x)}")
    h, scalar = _bandwidths(bandwidth)
    _, logp = sampled_log_sums(x, h, sample_size, seed, **options)
    entropy_ = _entropy_estimate(logp, len(x), scalar)
    log_n = math.log(len(x))
    return {"entropy": entropy_, "diversity": _diversity_estimate(logp, len(x), scalar),
            "efficiency": Estimate(entropy_.value / log_n, entropy_.standard_error / log_n)}


def estimate_efficiency(x, bandwidth=DEFAULT_BANDWIDTH, sample_size=1000, seed=0, **options) -> Estimate:
    """Efficiency ``H / log N`` from :func:`estimate_entropy` (value and error divided by log N)."""
    x = _descriptors(x, "descriptors")
    if len(x) < 2:
        raise InputError(f"descriptors: efficiency H/log N needs at least 2 environments, got {len(x)}")
    value, se = estimate_entropy(x, bandwidth, sample_size, seed, **options)
    return Estimate(value / math.log(len(x)), se / math.log(len(x)))


def estimate_diversity(x, bandwidth=DEFAULT_BANDWIDTH, sample_size=1000, seed=0, **options) -> Estimate:
    """Diversity ``D = log sum_i 1/p_i`` (nats) from a sample of rows, with its standard error.

    ``D = log N + log mean_i (1/p_i)``: the mean of ``1/p_i`` over the sampled rows is
    unbiased; its log carries a bias of order ``-se^2 / 2`` (small next to the error for
    any useful sample). The standard error is the delta-method ``se(mean) / mean``.
    Keyword options as :func:`log_kernel_sums`.

    Returns
    -------
    Estimate
        ``(value, standard_error)`` in nats (arrays of shape (H,) for an array of bandwidths).
    """
    x = _descriptors(x, "descriptors")
    h, scalar = _bandwidths(bandwidth)
    _, logp = sampled_log_sums(x, h, sample_size, seed, **options)
    return _diversity_estimate(logp, len(x), scalar)


def information_from_log_sums(logp, scalar=False) -> "DatasetInformation":
    """Every measure from ``log p_i`` of all N rows of a set against the whole set.

    ``logp`` has shape (N, H) (one column per bandwidth), e.g. the row blocks of block
    jobs put back together; ``scalar`` returns floats and an (N,) ``delta_entropy`` for
    H = 1. The same arithmetic as :func:`entropy`, :func:`diversity`, :func:`efficiency`.
    """
    logp = np.asarray(logp, dtype=np.float64)
    if logp.ndim != 2 or len(logp) == 0:
        raise InputError(f"logp: expected log kernel sums of shape (N, H) with N >= 1, got shape {logp.shape}")
    n = len(logp)
    h_value = math.log(n) - logp.mean(axis=0)
    eff = h_value / math.log(n) if n > 1 else np.full_like(h_value, np.nan)
    dh = -logp
    return DatasetInformation(_reduce(h_value, scalar), _reduce(_logsumexp(-logp, axis=0), scalar),
                              _reduce(eff, scalar), dh[:, 0] if scalar else dh)


class DatasetInformation(NamedTuple):
    """All QUESTS measures of one set from one kernel-sum pass (see :func:`dataset_information`)."""

    entropy: object
    diversity: object
    efficiency: object
    delta_entropy: np.ndarray


def dataset_information(x, bandwidth=DEFAULT_BANDWIDTH, *, precision="float64", tile_size=DEFAULT_TILE,
                        n_threads=None, backend="numpy", device=None, prune=False,
                        prune_tolerance=None) -> DatasetInformation:
    """Entropy, diversity, efficiency and self delta entropy ``-log p_i`` from one pass.

    ``delta_entropy`` here is each point against the whole set including itself (as the
    third value of ``quests.entropy.get_all_metrics``). Efficiency is NaN for N = 1.
    """
    _, logp, scalar = _self_log_sums(x, bandwidth, precision, tile_size, n_threads, backend, device, prune,
                                     prune_tolerance)
    return information_from_log_sums(logp, scalar)


def _logsumexp(a, axis):
    m = a.max(axis=axis, keepdims=True)
    return np.squeeze(m, axis=axis) + np.log(np.exp(a - m).sum(axis=axis))


# ----------------------------------------------------------------------------- grouped sums (selection)

class GroupedKernelSums:
    """Kernel sums of query sets against one fixed reference cut into contiguous groups.

    Used by :mod:`atomscore.quests.selection`, where the reference rows are the environments of
    a pool and a group is one configuration. The reference is centred and laid out once;
    each call is one tiled pass (queries x reference), no N x N matrix.

    Parameters
    ----------
    reference : array_like, shape (N, d)
    group_starts : array_like of int, shape (G,)
        First reference row of each group, increasing from 0; group ``g`` is rows
        ``group_starts[g]:group_starts[g + 1]`` (the last runs to N).
    bandwidth : float
        ``h`` in descriptor units.
    tile_size, n_threads
        As :func:`log_kernel_sums` (a pass holds about ``tile_size**2`` numbers per thread).

    Calling it with queries ``(M, d)`` returns ``(column_sums, group_sums)``:
    ``column_sums[j] = sum_i K(y_i, x_j)`` (shape (N,)) and
    ``group_sums[i, g] = sum_{j in g} K(y_i, x_j)`` (shape (M, G)). These are plain float64
    sums, not logs: terms below ``exp(-745)`` are 0, which suits sums later added to 1 or
    more (a self term) or compared with thresholds near 1.
    """

    def __init__(self, reference, group_starts, bandwidth=DEFAULT_BANDWIDTH, *, tile_size=DEFAULT_TILE,
                 n_threads=None):
        x = _descriptors(reference, "reference")
        starts = np.asarray(group_starts, dtype=np.int64).ravel()
        if starts.size == 0 or starts[0] != 0 or np.any(np.diff(starts) <= 0) or starts[-1] >= len(x):
            raise InputError(f"group_starts: expected increasing row indices from 0 below {len(x)}, "
                             f"got {starts[:8].tolist()}...")
        h = float(check_positive(bandwidth, "bandwidth", allow_array=False))
        _, self.tile, self.threads = _options("float64", tile_size, n_threads)
        self.gamma = 1.0 / (2.0 * h * h)
        self.centre = x.mean(axis=0)
        xc = x - self.centre
        d = x.shape[1]
        self.right = np.empty((len(x), d + 2))
        self.right[:, :d] = xc
        self.right[:, d] = 1.0
        self.right[:, d + 1] = -self.gamma * np.einsum("ij,ij->i", xc, xc)
        self.n_cols, self.n_groups, self.dim, self.starts = len(x), len(starts), d, starts
        self.group_of = np.repeat(np.arange(len(starts)), np.diff(np.append(starts, len(x))))

    def __call__(self, queries, groups=None):
        """``(column_sums, group_sums)`` of ``queries``; ``groups`` (bool, shape (G,)) limits the
        pass to those groups' columns (the others are returned as 0)."""
        y = _descriptors(queries, "queries")
        if y.shape[1] != self.dim:
            raise InputError(f"queries: expected descriptors of dimension {self.dim} (as the reference), "
                             f"got dimension {y.shape[1]}")
        yc = y - self.centre
        d = self.dim
        left = np.empty((len(y), d + 2))
        left[:, :d] = (2.0 * self.gamma) * yc
        left[:, d] = -self.gamma * np.einsum("ij,ij->i", yc, yc)
        left[:, d + 1] = 1.0
        n_rows, tile = len(y), self.tile
        right, group_of, n_cols, n_groups = self.right, self.group_of, self.n_cols, self.n_groups
        if groups is None:
            runs = [(0, n_cols)]
        else:
            mask = np.asarray(groups, dtype=bool)
            if mask.shape != (n_groups,):
                raise InputError(f"groups: expected {n_groups} booleans, got shape {mask.shape}")
            edges = np.flatnonzero(np.diff(np.concatenate(([0], mask.astype(np.int8), [0]))))
            bounds = np.append(self.starts, n_cols)
            runs = [(int(bounds[g0]), int(bounds[g1])) for g0, g1 in zip(edges[::2], edges[1::2])]
        n_active = sum(c1 - c0 for c0, c1 in runs)
        if n_active == 0:
            return np.zeros(n_cols), np.zeros((n_rows, n_groups))
        index = None
        if len(runs) > 1:  # scattered groups: one compact copy of their columns, then one pass
            index = np.flatnonzero(mask[group_of])
            right, group_of, n_cols, runs = right[index], group_of[index], n_active, [(0, n_active)]
        rows = min(n_rows, tile)
        width = max(tile, (tile * tile) // rows)  # few query rows: wide column blocks, same memory
        threads = self.threads if n_rows * n_active >= (1 << 17) else 1  # small passes: no thread start-up
        if n_rows <= rows and threads > 1:  # one row block: cut the columns so every thread has work
            width = max(64, min(width, -(-n_active // threads)))
        pairs = [(a, b, min(b + width, c1)) for a in range(0, n_rows, rows)
                 for c0, c1 in runs for b in range(c0, c1, width)]

        def work(chunk):
            cols = np.zeros(n_cols)
            groups_out = np.zeros((n_rows, n_groups))
            buf = np.empty((rows, width))
            ones = np.ones(max(rows, 1))
            for a, b, b1 in chunk:
                lt, rt = left[a:a + rows], right[b:b1]
                e = buf[:len(lt), :len(rt)]
                np.matmul(lt, rt.T, out=e)
                np.minimum(e, 0.0, out=e)  # true exponents are <= 0; rounding may give +1e-13
                np.exp(e, out=e)
                cols[b:b1] += ones[:len(lt)] @ e
                g = group_of[b:b1]
                seg = np.concatenate(([0], np.flatnonzero(g[1:] != g[:-1]) + 1))
                groups_out[a:a + len(lt), g[seg]] += np.add.reduceat(e, seg, axis=1)
            return cols, groups_out

        with blas_single_thread():  # our threads share the tiles; BLAS threads on small GEMMs only contend
            parts = _run_tiles(work, pairs, threads)
        cols, groups_out = parts[0] if len(parts) == 1 else (sum(p[0] for p in parts), sum(p[1] for p in parts))
        if index is not None:
            full = np.zeros(self.n_cols)
            full[index] = cols
            cols = full
        return cols, groups_out


def grouped_kernel_sums(queries, reference, group_starts, bandwidth=DEFAULT_BANDWIDTH, *,
                        tile_size=DEFAULT_TILE, n_threads=None):
    """``(column_sums, group_sums)`` of ``queries`` against ``reference``: see :class:`GroupedKernelSums`."""
    return GroupedKernelSums(reference, group_starts, bandwidth, tile_size=tile_size, n_threads=n_threads)(queries)


def group_self_sums(x, group_starts, bandwidth=DEFAULT_BANDWIDTH, *, block=2048):
    """Kernel sum of every row over the rows of its own group (self term included), shape (N,).

    Each group's pairwise squared distances come from ``scipy.spatial.distance.cdist``
    (exact differences), in row blocks of ``block``.
    """
    from scipy.spatial.distance import cdist

    x = _descriptors(x, "descriptors")
    starts = np.asarray(group_starts, dtype=np.int64).ravel()
    ends = np.append(starts[1:], len(x))
    h = float(check_positive(bandwidth, "bandwidth", allow_array=False))
    gamma = 1.0 / (2.0 * h * h)
    out = np.empty(len(x))
    for s, e in zip(starts, ends):
        g = x[s:e]
        for a in range(0, len(g), block):
            k = cdist(g[a:a + block], g, "sqeuclidean")
            k *= -gamma
            np.exp(k, out=k)
            out[s + a:s + min(a + block, len(g))] = k.sum(axis=1)
    return out
