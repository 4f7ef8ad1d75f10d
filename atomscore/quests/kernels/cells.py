"""Cells of descriptors (k-means, each with a centre and a radius) and the kernel-sum pass
that skips the pairs of cells whose total cannot change a row's sum by more than a stated
tolerance: issue 27. How and why: docs/internals.md ("Pruned kernel sums").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from atomscore.quests.kernels.tiles import run_tiles as _run_tiles
from atomscore.threads import blas_single_thread

# Default tolerance of the pruning, per precision: every row's skipped terms sum to at most
# this fraction of its computed kernel sum, so each log p_i (and dH_i) is low by at most this
# many nats, the entropy high by at most it and the diversity too. float32: the tiles' own
# rounding (about u gamma |x|^2, 1e-6..1e-4 nats on QUESTS descriptors at h = 0.015) is far
# larger than 1e-10, so a bound near the float32 unit roundoff adds nothing visible.
TOLERANCE = {"float64": 1e-10, "float32": 1e-7}
# Members per cell: smaller cells bound tighter (fewer pairs kept), larger ones cost less per
# pair (benchmarks/quests_pruning.py; 128 is near the best of 64..256 on QUESTS descriptors).
CELL_SIZE = 128
# Columns gathered per product: one row cell against this many columns of its kept cells.
WIDTH = 2048
# Above this many cells the k-means runs in two levels (:func:`_kmeans_labels`).
_TWO_LEVELS = 256
# Above this share of pairs kept, the pruned pass runs the dense tiles instead: its gathered
# cell tiles cost more than the dense pass when nothing can be skipped.
DENSE_ABOVE = 0.75
# A computed (float32) sum can be off by far less than this factor: the lower bound of a row's
# sum taken from it is divided by it.
_SAFETY = 2.0


class Partition(NamedTuple):
    """Rows grouped into cells: ``order[starts[c]:starts[c + 1]]`` are the rows of cell ``c``.

    ``centres`` (float64, (C, d)) are the cells' means and ``radii`` (C,) the largest
    distance of a member to its centre, rounded up, so that every member lies within it.
    """

    order: np.ndarray
    starts: np.ndarray
    centres: np.ndarray
    radii: np.ndarray

    @property
    def sizes(self):
        return np.diff(self.starts)


def _kmeans_labels(x32, n_cells, n_threads):
    """Cell labels of the rows of ``x32`` (float32): k-means of ``n_cells`` cells, in two levels
    above ``_TWO_LEVELS`` cells -- ``sqrt(n_cells)`` groups, then each group cut in proportion
    to its rows -- so training costs ``N sqrt(C) d`` instead of ``40 C^2 d`` (faiss trains on 40
    rows per cell): at 10^6 rows the one-level k-means would cost a third of the pruned pass."""
    from atomscore.index import kmeans_cells

    if n_cells <= _TWO_LEVELS:
        return kmeans_cells(x32, n_cells, n_threads)[1]
    n_top = max(2, round(math.sqrt(n_cells)))
    top = kmeans_cells(x32, n_top, n_threads)[1]
    labels = np.empty(len(x32), dtype=np.int64)
    per_cell = len(x32) / n_cells
    next_label = 0
    for g in range(n_top):
        rows = np.flatnonzero(top == g)
        if rows.size == 0:
            continue
        k = max(1, round(rows.size / per_cell))
        sub = kmeans_cells(np.ascontiguousarray(x32[rows]), k, n_threads)[1] if k > 1 else np.zeros(rows.size, int)
        labels[rows] = next_label + sub
        next_label += k
    return labels


def partition(x, cell_size=None, n_threads=None):
    """k-means cells of about ``cell_size`` (default :data:`CELL_SIZE`) rows of ``x`` (float64
    (N, d)), none larger than ``2 * cell_size`` (a larger k-means cell is cut into pieces, each
    with its own centre and radius); ``N <= cell_size``: one cell."""
    cell_size = CELL_SIZE if cell_size is None else cell_size
    n = len(x)
    if n <= cell_size:
        cells = np.zeros(n, dtype=np.int64)
    else:
        cells = _kmeans_labels(np.ascontiguousarray(x, dtype=np.float32), max(2, round(n / cell_size)), n_threads)
    order = np.argsort(cells, kind="stable")
    bounds = np.flatnonzero(np.diff(np.concatenate(([-1], cells[order], [-2])))).tolist()
    starts = [0]
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        pieces = -(-(hi - lo) // (2 * cell_size))
        starts.extend(lo + ((hi - lo) * (p + 1)) // pieces for p in range(pieces))
    starts = np.asarray(starts, dtype=np.int64)
    xs = x[order]
    sizes = np.diff(starts)
    centres = np.add.reduceat(xs, starts[:-1], axis=0) / sizes[:, None]
    diff = xs - np.repeat(centres, sizes, axis=0)
    dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
    radii = np.maximum.reduceat(dist, starts[:-1]) * (1.0 + 1e-12) + 1e-300  # rounding: never too small
    return Partition(order, starts, centres, radii)


class CellBounds(NamedTuple):
    """What the plan needs of every (row cell, column cell) pair.

    ``dmin2`` (float32, (C_rows, C_cols), rounded down): every squared distance between a
    member of row cell A and one of column cell B is at least it; ``prior`` ((C_rows, H)):
    log of a lower bound of the kernel sum of every row of A before any term is computed
    (:func:`cell_bounds`); ``nearest`` ((C_rows,)): the column cell with the nearest centre.
    """

    dmin2: np.ndarray
    prior: np.ndarray
    nearest: np.ndarray


def _chunks(n_rows, n_cols, entries=1 << 22):
    """Row ranges of an ``n_rows x n_cols`` matrix, about ``entries`` entries each (the
    (cell x cell) work runs in such pieces: at 10^6 rows a whole matrix is 0.5 GB)."""
    step = max(1, entries // max(n_cols, 1))
    return [(a, min(a + step, n_rows)) for a in range(0, n_rows, step)]


def extents(xs, part, targets, n_threads=1):
    """How far each cell reaches toward each target point, (C, T): the largest projection
    ``(x - c_A) . (t - c_A) / |t - c_A|`` over the members ``x`` of cell A (rows of ``xs``,
    in ``part.order``), rounded up; at most the cell's radius (also where ``t`` is ``c_A``).

    In many dimensions a cell spreads much less along one direction than its radius.
    Cost: ``N T d`` (one float32 product of each cell's rows with the targets).
    """
    raw = _raw_extents(xs, part, targets, n_threads)
    return _finish_extents(raw, part, np.arange(len(part.sizes)), targets, _extent_slack(xs, targets))


def _raw_extents(xs, part, targets, n_threads):
    """``max over members x of cell A of x . t - x . c_A`` (float32, (C, T))."""
    sizes, starts = part.sizes, part.starts
    own = np.einsum("ij,ij->i", xs, np.repeat(part.centres, sizes, axis=0)).astype(np.float32)  # x . c_A
    x32, t32 = xs.astype(np.float32), np.ascontiguousarray(targets.T, dtype=np.float32)  # float32: twice as fast
    top = np.empty((len(sizes), len(targets)), dtype=np.float32)

    def work(cells):
        for a in cells:
            g = x32[starts[a]:starts[a + 1]] @ t32
            g -= own[starts[a]:starts[a + 1], None]
            g.max(axis=0, out=top[a])
        return None

    with blas_single_thread():  # one cell's product is small: BLAS threads would only spin
        _run_tiles(work, list(range(len(sizes))), n_threads)
    return top


def _extent_slack(xs, targets):
    """The float32 products' rounding, ``|fl(x . t) - x . t| <= d u |x| |t|`` (and the
    conversions'), taken four times over."""
    norm_x = float(np.sqrt(np.max(np.einsum("ij,ij->i", xs, xs))))
    norm_t = float(np.sqrt(np.max(np.einsum("ij,ij->i", targets, targets))))
    return 4.0 * (xs.shape[1] + 2) * float(np.finfo(np.float32).eps) * max(norm_x, 1e-300) * max(norm_t, norm_x)


def _finish_extents(raw, part, cells, targets, slack):
    """Extents of ``cells`` (rows of ``raw``) toward ``targets`` from the raw maxima."""
    from scipy.spatial.distance import cdist

    centres = part.centres[cells]
    # (x - c_A) . (t - c_A) = x . t - x . c_A - c_A . t + |c_A|^2
    num = raw.astype(np.float64) - centres @ targets.T + np.einsum("ij,ij->i", centres, centres)[:, None]
    dist = cdist(centres, targets)
    with np.errstate(divide="ignore", invalid="ignore"):
        ext = np.maximum((num + slack) / dist, 0.0)  # >= 0: the centre is the members' mean
    ext[~np.isfinite(ext)] = np.inf  # a target at the centre: the radius
    return np.minimum(ext, part.radii[cells, None])


def cell_bounds(rows, cols, xr, xc, gammas, symmetric, n_threads=1):
    """:class:`CellBounds` of two partitions of the rows ``xr`` and ``xc`` (each in its
    partition's order), for the bandwidths' ``gammas``.

    Lower bound of a distance: the larger of ``|c_A - c_B| - r_A - r_B`` (balls) and
    ``|c_A - c_B| - e_A(B) - e_B(A)`` (the cells' :func:`extents` along the line of the
    centres: every ``x - y`` projects on it by at least that). Prior lower bound of a row's
    kernel sum: ``sum_B |B| exp(-gamma dmax^2)`` with ``dmax = |c_A - c_B| + r_A + r_B``, and
    at least 1 (its own term) when the set is compared with itself. Built in pieces of row
    cells (memory: the float32 ``dmin2`` and the two float32 extent matrices).
    """
    from scipy.spatial.distance import cdist

    raw_rows = _raw_extents(xr, rows, cols.centres, n_threads)  # row cells toward column centres
    slack_rows = _extent_slack(xr, cols.centres)
    if symmetric:
        raw_cols, slack_cols = raw_rows, slack_rows
    else:
        raw_cols = _raw_extents(xc, cols, rows.centres, n_threads)  # column cells toward row centres
        slack_cols = _extent_slack(xc, rows.centres)
    n_rows, n_cols = len(rows.sizes), len(cols.sizes)
    dmin2 = np.empty((n_rows, n_cols), dtype=np.float32)
    prior = np.empty((n_rows, len(gammas)))
    nearest = np.empty(n_rows, dtype=np.int64)
    log_size = np.log(cols.sizes)[None, :]
    all_cols = np.arange(n_cols)
    for a, b in _chunks(n_rows, n_cols):
        part = np.arange(a, b)
        dc = cdist(rows.centres[a:b], cols.centres)
        nearest[a:b] = np.argmin(dc, axis=1)
        reach = rows.radii[a:b, None] + cols.radii[None, :]
        toward_cols = _finish_extents(raw_rows[a:b], rows, part, cols.centres, slack_rows)
        toward_rows = _finish_extents(raw_cols[:, a:b], cols, all_cols, rows.centres[a:b], slack_cols).T
        dmin = np.maximum(dc - np.minimum(reach, toward_cols + toward_rows), 0.0)
        dmin2[a:b] = (dmin * dmin) * (1.0 - 1e-6)  # rounded down for float32
        dmax2 = (dc + reach) ** 2
        for k, g in enumerate(gammas):
            prior[a:b, k] = _logsumexp_rows(log_size - g * dmax2)
    if symmetric:
        prior = np.maximum(prior, 0.0)
    return CellBounds(dmin2, prior, nearest)


def seed_pairs(bounds, symmetric):
    """The cell pairs computed first (bool (C_rows, C_cols)): each row cell's column cell of
    the nearest centre, and its own cell when the set is compared with itself; their sums give
    each row a lower bound of its kernel sum (:func:`plan`)."""
    n_rows, n_cols = bounds.dmin2.shape
    seeds = np.zeros((n_rows, n_cols), dtype=bool)
    seeds[np.arange(n_rows), bounds.nearest] = True
    if symmetric:
        np.fill_diagonal(seeds, True)
        seeds |= seeds.T
    return seeds


class CellPairs(NamedTuple):
    """Which cell pairs a pass computes, and what the skipped ones can hold.

    ``keep`` (bool, (C_rows, C_cols)); ``log_skipped`` (C_rows, H): for every row of a row
    cell, log of an upper bound of the sum of its skipped terms (true kernel units, per
    bandwidth; ``-inf`` when nothing is skipped).
    """

    keep: np.ndarray
    log_skipped: np.ndarray


def plan(bounds, cols, gammas, log_lower, tolerance, symmetric, done=None):
    """The cell pairs to compute so that each row's skipped terms sum to at most ``tolerance``
    times ``exp(log_lower)`` (a lower bound of its kernel sum), for every bandwidth.

    A column cell B holds at most ``U = |B| exp(-gamma dmin^2)`` of a row's sum. Each row cell's
    candidates are ordered by ``U``, largest (nearest) first; the longest tail whose total ``U``
    is within ``tolerance * exp(log_lower)`` is skipped, the rest kept. ``done`` (bool, same
    shape): pairs already computed, kept whatever their bound. ``symmetric``: a pair computed
    serves both its cells, so the kept set is made symmetric (which only shrinks what is
    skipped). Runs in pieces of row cells.
    """
    log_size = np.log(cols.sizes)[None, :]
    n_rows, n_cols = bounds.dmin2.shape
    keep = np.zeros((n_rows, n_cols), dtype=bool) if done is None else done.copy()
    # tolerance / (1 + tolerance): a prior lower bound may count terms that are then skipped, yet the
    # computed sum stays above L / (1 + tolerance), so skipped / computed <= tolerance still holds
    log_tol = math.log(tolerance) - math.log1p(tolerance)
    pieces = _chunks(n_rows, n_cols)
    for a, b in pieces:
        dmin2 = bounds.dmin2[a:b].astype(np.float64)
        for k, g in enumerate(gammas):
            lu = log_size - g * dmin2
            order = np.argsort(-lu, axis=1, kind="stable")
            sorted_u = np.take_along_axis(lu, order, axis=1)
            tail = np.logaddexp.accumulate(sorted_u[:, ::-1], axis=1)[:, ::-1]  # log sum of U from here on
            need = np.zeros((b - a, n_cols), dtype=bool)
            np.put_along_axis(need, order, tail > log_lower[a:b, k, None] + log_tol, axis=1)
            keep[a:b] |= need
    if symmetric:
        keep |= keep.T
    log_skipped = np.empty((n_rows, len(gammas)))
    for a, b in pieces:
        dmin2 = bounds.dmin2[a:b].astype(np.float64)
        for k, g in enumerate(gammas):
            log_skipped[a:b, k] = _logsumexp_rows(np.where(keep[a:b], -np.inf, log_size - g * dmin2))
    return CellPairs(keep, log_skipped)


def _logsumexp_rows(a):
    top = a.max(axis=1)
    safe = np.where(np.isfinite(top), top, 0.0)
    with np.errstate(divide="ignore"):
        return np.where(np.isfinite(top), safe + np.log(np.exp(a - safe[:, None]).sum(axis=1)), -np.inf)


def kept_share(rows, cols, keep):
    """The share of all row x column pairs that ``keep`` computes."""
    return float(rows.sizes.astype(float) @ keep @ cols.sizes.astype(float)) / (rows.starts[-1] * cols.starts[-1])


def pruned_pass(left_list, right_list, rows, cols, pairs, symmetric, dtype, n_threads, clip, width=WIDTH):
    """Row sums of ``exp(clip(left @ right.T))`` over the cell pairs ``pairs`` (bool) only, (n_rows, H).

    ``left_list`` / ``right_list``: one augmented operand pair per bandwidth (as the dense
    tile pass builds them), rows already in ``rows.order`` / ``cols.order``. Each row cell is
    multiplied with the columns of its cells, gathered ``width`` at a time. ``symmetric``:
    rows and columns are the same cells; only pairs ``A <= B`` are computed and give row and
    column sums (so ``pairs`` must be symmetric).
    """
    n_rows, n_h = len(left_list[0]), len(left_list)
    todo = np.triu(pairs) if symmetric else pairs
    rs, cs = rows.starts, cols.starts
    work_cells = [int(a) for a in np.flatnonzero(todo.any(axis=1))]
    if not work_cells:
        return np.zeros((n_rows, n_h))
    sizes = cols.sizes

    def columns(cells):
        """The column indices of ``cells``, in order."""
        lengths = sizes[cells]
        offsets = np.repeat(cs[cells] - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        return np.arange(int(lengths.sum())) + offsets

    def work(chunk):
        acc = np.zeros((n_rows, n_h))
        buf = np.empty((int(np.max(rows.sizes)), max(width, int(np.max(sizes)))), dtype=dtype)
        ones = np.ones(buf.shape[1], dtype=dtype)
        for a in chunk:
            a0, a1 = int(rs[a]), int(rs[a + 1])
            cells = np.flatnonzero(todo[a])
            blocks = []
            if symmetric and todo[a, a]:  # the diagonal cell: row sums only (its columns are its rows)
                blocks.append((slice(a0, a1), False))
                cells = cells[cells != a]
            if len(cells):
                idx = columns(cells)
                blocks.extend((idx[c0:c0 + width], symmetric) for c0 in range(0, len(idx), width))
            for cols_idx, add_cols in blocks:
                for k in range(n_h):
                    right = right_list[k][cols_idx]
                    e = buf[:a1 - a0, :len(right)]
                    np.matmul(left_list[k][a0:a1], right.T, out=e)
                    if clip is not None:
                        np.clip(e, *clip, out=e)
                    np.exp(e, out=e)
                    acc[a0:a1, k] += e @ ones[:e.shape[1]]
                    if add_cols:
                        acc[cols_idx, k] += ones[:e.shape[0]] @ e
        return acc

    with blas_single_thread():
        parts = _run_tiles(work, work_cells, n_threads)
    return sum(parts)
