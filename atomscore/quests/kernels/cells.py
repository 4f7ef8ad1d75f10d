"""Cells of descriptors (k-means, each with a centre and a radius) and the kernel-sum tile pass
that skips pairs of cells too far apart to matter: issue 27. How and why: docs/internals.md
("Pruned kernel sums").
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from atomscore.quests.kernels.tiles import run_tiles as _run_tiles
from atomscore.threads import blas_single_thread

# A term below this fraction of its row's largest term cannot change a log-sum to 1e-12
# (the criterion); a pair of cells is skipped when all its terms are below it.
PRUNE_TOLERANCE = 1e-30
# Members per cell: small cells bound tightly, large ones multiply fast; measured on
# QUESTS descriptors (benchmarks/quests_pruning.py), 256 is near the best of 64..1024.
CELL_SIZE = 256
# Above this share of pairs kept, the pruned pass runs the dense tiles instead: its cell-sized
# tiles cost 1.6-1.8x the dense pass when nothing can be skipped (benchmarks/quests_pruning.py).
DENSE_ABOVE = 0.75


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


def partition(x, cell_size=CELL_SIZE, n_threads=None):
    """k-means cells of about ``cell_size`` rows of ``x`` (float64 (N, d)), none larger than
    ``2 * cell_size`` (a larger k-means cell is cut into pieces, each with its own centre and
    radius); ``N <= cell_size``: one cell."""
    n = len(x)
    if n <= cell_size:
        cells = np.zeros(n, dtype=np.int64)
    else:
        from atomscore.index import kmeans_cells

        _, cells = kmeans_cells(np.ascontiguousarray(x, dtype=np.float32), max(2, round(n / cell_size)), n_threads)
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
    dist = np.sqrt(np.einsum("ij,ij->i", xs - np.repeat(centres, sizes, axis=0),
                             xs - np.repeat(centres, sizes, axis=0)))
    radii = np.maximum.reduceat(dist, starts[:-1]) * (1.0 + 1e-12) + 1e-300  # rounding: never too small
    return Partition(order, starts, centres, radii)


def _centre_distances(a, b):
    from scipy.spatial.distance import cdist

    return cdist(a.centres, b.centres)


class CellPairs(NamedTuple):
    """Which cell pairs a pass computes, and a bound on what the skipped ones hold.

    ``keep`` (bool, (C_rows, C_cols)); ``skipped_bound`` (C_rows, H): for every row of a
    row cell, the skipped terms' sum is at most ``skipped_bound`` times the row's kernel
    sum (a relative bound on ``p``, hence on ``log p`` to first order).
    """

    keep: np.ndarray
    skipped_bound: np.ndarray


def cell_pairs(rows, cols, gammas, symmetric, tolerance=PRUNE_TOLERANCE):
    """The cell pairs whose every term may exceed ``tolerance`` times its row's largest term.

    For rows in cell A and columns in cell B, every distance is at least
    ``dmin = max(0, |c_A - c_B| - r_A - r_B)`` and at most ``|c_A - c_B| + r_A + r_B``. A
    row's largest term is at least 1 when the set is compared with itself (its own term),
    else at least ``L_A = max_B exp(-gamma dmax(A, B)^2)``. The pair is skipped (for every
    bandwidth) when ``|B| exp(-gamma dmin^2) < tolerance * L_A``: then each of its terms,
    and even their sum, is below ``tolerance`` of the row's largest term.
    """
    dc = _centre_distances(rows, cols)
    reach = rows.radii[:, None] + cols.radii[None, :]
    dmin2 = np.maximum(dc - reach, 0.0) ** 2
    dmax2 = (dc + reach) ** 2
    log_size = np.log(cols.sizes)[None, :]
    keep = np.zeros(dc.shape, dtype=bool)
    bound = np.zeros((len(dc), len(gammas)))
    for k, g in enumerate(gammas):
        log_low = np.zeros(len(dc)) if symmetric else (-g * dmax2).max(axis=1)  # log of a lower bound of the row max
        log_mass = log_size - g * dmin2  # log of an upper bound of the pair's sum, per row
        needed = log_mass >= log_low[:, None] + math.log(tolerance)
        if symmetric:  # a skipped pair is skipped both ways: it must be negligible for the columns' rows too
            needed |= needed.T
        keep |= needed
    for k, g in enumerate(gammas):
        log_low = np.zeros(len(dc)) if symmetric else (-g * dmax2).max(axis=1)
        log_mass = log_size - g * dmin2
        skipped = np.where(keep, -np.inf, log_mass - log_low[:, None])
        top = skipped.max(axis=1)
        with np.errstate(invalid="ignore", over="ignore"):
            bound[:, k] = np.where(np.isfinite(top), np.exp(top) * np.exp(skipped - top[:, None]).sum(axis=1), 0.0)
    return CellPairs(keep, bound)


def pruned_pass(left_list, right_list, rows, cols, pairs, tile, symmetric, dtype, n_threads, clip):
    """Row sums of ``exp(clip(left @ right.T))`` over the kept cell pairs only, (n_rows, H).

    ``left_list`` / ``right_list``: one augmented operand pair per bandwidth (as the dense
    tile pass builds them), rows already in ``rows.order`` / ``cols.order``. ``symmetric``:
    rows and columns are the same cells; only pairs ``A <= B`` are computed and give row
    and column sums. Cells larger than ``tile`` are cut into ``tile``-row pieces.
    """
    n_rows, n_h = len(left_list[0]), len(left_list)
    keep = np.triu(pairs.keep) if symmetric else pairs.keep
    work_pairs = [(int(a), int(b)) for a, b in zip(*np.nonzero(keep))]
    if not work_pairs:
        return np.zeros((n_rows, n_h))
    rs, cs = rows.starts, cols.starts

    def work(chunk):
        acc = np.zeros((n_rows, n_h))
        buf = np.empty((tile, tile), dtype=dtype)
        ones = np.ones(tile, dtype=dtype)
        for ca, cb in chunk:
            for a0 in range(rs[ca], rs[ca + 1], tile):
                a1 = min(a0 + tile, rs[ca + 1])
                for b0 in range(cs[cb], cs[cb + 1], tile):
                    b1 = min(b0 + tile, cs[cb + 1])
                    for k in range(n_h):
                        e = buf[:a1 - a0, :b1 - b0]
                        np.matmul(left_list[k][a0:a1], right_list[k][b0:b1].T, out=e)
                        if clip is not None:
                            np.clip(e, *clip, out=e)
                        np.exp(e, out=e)
                        acc[a0:a1, k] += e @ ones[:b1 - b0]
                        if symmetric and cb != ca:
                            acc[b0:b1, k] += ones[:a1 - a0] @ e
        return acc

    with blas_single_thread():
        parts = _run_tiles(work, work_pairs, n_threads)
    return sum(parts)
