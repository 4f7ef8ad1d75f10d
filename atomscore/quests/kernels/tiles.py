"""The tiling of a kernel-sum matrix, shared by the numpy and torch tile passes."""

from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext

from atomscore.threads import blas_single_thread


def tile_pairs(n_rows, n_cols, tile, symmetric):
    """(row start, column start) of every ``tile`` x ``tile`` block of an ``n_rows`` x ``n_cols``
    matrix; the upper triangle of blocks only when ``symmetric``."""
    rows = range(0, n_rows, tile)
    if symmetric:
        return [(a, b) for a in rows for b in range(a, n_cols, tile)]
    return [(a, b) for a in rows for b in range(0, n_cols, tile)]


def run_tiles(work, pairs, n_threads):
    """Run ``work(chunk_of_pairs)`` on ``n_threads`` threads; return the list of results."""
    if n_threads == 1 or len(pairs) == 1:
        with blas_single_thread() if n_threads == 1 and len(pairs) > 1 else nullcontext():
            return [work(pairs)]
    chunks = [pairs[k::n_threads] for k in range(n_threads) if pairs[k::n_threads]]
    with blas_single_thread(), ThreadPoolExecutor(max_workers=len(chunks)) as pool:
        return list(pool.map(work, chunks))
