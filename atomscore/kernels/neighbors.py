"""k nearest neighbours through faiss, with distances recomputed in float64.

faiss finds the neighbours in float32, fast and multithreaded; the squared distances to
the neighbours found are then recomputed in float64 from the original descriptors, so
values built on them (e.g. a log-sum-exp of a Gaussian kernel) carry float64 accuracy, not
faiss' float32 expansion error.

Two indexes (``index=``):

* ``'flat'`` (default): ``IndexFlatL2``, brute force, exact. Queries go to faiss in equal
  blocks of at most :data:`QUERY_BLOCK` rows, and faiss' switch to its matrix-product (BLAS)
  path, ``distance_compute_blas_threshold``, is lowered to the block size for the call (and
  restored after; see :func:`blas_threshold`), so no block takes the per-query SIMD path --
  a leftover block of 1,808 queries did, at 4-8x the cost per query. One search then costs
  about one float32 GEMM of queries x reference plus a top-k scan.
* ``'hnsw'``: ``IndexHNSWFlat`` (graph, approximate; ``M = 32``, ``efConstruction = 40``,
  ``efSearch = max(64, 4 k)``), for references of 10^6 - 10^7 points where the flat search
  grows as M x N. Building the graph costs about as much as one flat search of 1-2k queries,
  so it pays when many queries meet a large reference. A missed neighbour can only make the
  k-term sum of :func:`atomscore.kernels.gaussian.approx_delta_entropy` smaller, i.e. dH
  larger; the bias measured against the exact k-NN sum is in ``docs/quests.md`` and
  ``benchmarks/approx_dh.py``.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext

import numpy as np

from atomscore.errors import InputError
from atomscore.validation import check_choice, check_int, load_array

#: the largest number of queries per faiss search (bounds the (block, k, d) float64 gather)
QUERY_BLOCK = 8192
#: searches of fewer queries keep faiss' own BLAS threshold (faiss' historic default)
SIMD_QUERIES = 20
#: the neighbour indexes offered
INDEXES = ("flat", "hnsw")
#: HNSW graph settings (faiss names)
HNSW_ARGS = {"M": 32, "efConstruction": 40, "efSearch": 64}


def query_blocks(n_queries, block=None, n_threads=1):
    """``(start, stop)`` of equal consecutive blocks (sizes differ by at most one) covering
    ``n_queries``, each of at most ``block`` (default :data:`QUERY_BLOCK`) rows, and a
    multiple of ``n_threads`` of them where each still gets :data:`SIMD_QUERIES` rows."""
    block = QUERY_BLOCK if block is None else int(block)
    if n_queries <= 0:
        return []
    n_blocks = math.ceil(n_queries / block)
    threads = max(1, min(int(n_threads), n_queries // SIMD_QUERIES))
    n_blocks = math.ceil(n_blocks / threads) * threads
    edges = np.linspace(0, n_queries, n_blocks + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


@contextmanager
def blas_threshold(n_rows):
    """faiss' BLAS threshold lowered to ``n_rows`` for the duration (restored after).

    Below ``distance_compute_blas_threshold`` faiss computes distances one query at a time
    (SIMD) instead of by one matrix product; in faiss 1.15 the threshold is 128,000 and
    compared with queries x dimension, so 1,808 queries of dimension 63 fell under it and
    took 4-8x longer per query. Lowering it to the block size makes every block of
    ``n_rows`` or more queries take the product. Fewer than :data:`SIMD_QUERIES` queries
    keep faiss' own choice."""
    import faiss

    old = int(faiss.cvar.distance_compute_blas_threshold)
    if n_rows < SIMD_QUERIES:
        yield
        return
    faiss.cvar.distance_compute_blas_threshold = min(old, int(n_rows))
    try:
        yield
    finally:
        faiss.cvar.distance_compute_blas_threshold = old


def build_index(reference32, index="flat", k=1):
    """A filled faiss index over ``reference32`` (C-contiguous float32, already centred)."""
    import faiss

    dim = reference32.shape[1]
    if index == "flat":
        found = faiss.IndexFlatL2(dim)
    else:
        found = faiss.IndexHNSWFlat(dim, HNSW_ARGS["M"])
        found.hnsw.efConstruction = HNSW_ARGS["efConstruction"]
    found.add(reference32)
    if index == "hnsw":
        found.hnsw.efSearch = max(HNSW_ARGS["efSearch"], 4 * int(k))
    return found


def knn_squared_distances(queries, reference, k, index="flat", n_threads=None):
    """Squared Euclidean distances to the ``k`` nearest reference points of each query.

    Parameters
    ----------
    queries : array_like, shape (M, d)
    reference : array_like, shape (N, d)
    k : int
        Neighbours per query, ``1 <= k <= N``.
    index : {'flat', 'hnsw'}
        ``'flat'``: exact. ``'hnsw'``: approximate graph search (module docstring); a
        neighbour it misses is replaced by a farther point.
    n_threads : int, optional
        Python threads sharing the query blocks, one faiss (OpenMP) thread each (default:
        the CPUs available).

    Returns
    -------
    d2 : numpy.ndarray, shape (M, k), float64
        Squared distances (descriptor units squared), ascending per row, recomputed in
        float64.
    index : numpy.ndarray, shape (M, k), int64
        Row indices into ``reference``.
    """
    y = load_array(queries, "queries", ndim=2)
    x = load_array(reference, "reference", ndim=2)
    if y.shape[1] != x.shape[1]:
        raise InputError(f"reference: expected dimension {y.shape[1]} (as the queries), got {x.shape[1]}")
    k = check_int(k, "num_nearest_neighbors", minimum=1)
    if k > len(x):
        raise InputError(f"num_nearest_neighbors: expected at most the {len(x)} reference points, got {k}")
    check_choice(index, "approx_index", INDEXES)
    centre = x.mean(axis=0)  # centring keeps faiss' float32 expansion accurate
    faiss_index = build_index(np.ascontiguousarray(x - centre, dtype=np.float32), index, k)
    d2 = np.empty((len(y), k))
    idx = np.empty((len(y), k), dtype=np.int64)
    threads = _threads(n_threads)
    blocks = query_blocks(len(y), n_threads=threads)

    def work(chunk):
        import faiss

        before = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)  # this thread's OpenMP only: our threads share the blocks
        try:
            _search_blocks(chunk)
        finally:
            faiss.omp_set_num_threads(before)

    def _search_blocks(chunk):
        for start, stop in chunk:
            block = y[start:stop]
            _, found = faiss_index.search(np.ascontiguousarray(block - centre, dtype=np.float32), k)
            if np.any(found < 0):  # HNSW may return fewer than k: never for k <= efSearch in practice
                raise InputError(f"approx_index={index!r}: the index found fewer than {k} neighbours for "
                                 f"{int(np.any(found < 0, axis=1).sum())} queries; use approx_index='flat'")
            diff = x[found] - block[:, None, :]
            exact = np.einsum("ijk,ijk->ij", diff, diff)
            order = np.argsort(exact, axis=1, kind="stable")
            d2[start:stop] = np.take_along_axis(exact, order, axis=1)
            idx[start:stop] = np.take_along_axis(found, order, axis=1)

    smallest = min((b - a for a, b in blocks), default=1)
    chunks = [blocks[t::threads] for t in range(threads) if blocks[t::threads]]
    with blas_threshold(smallest), _blas_one_thread():
        if len(chunks) <= 1:
            for chunk in chunks:
                work(chunk)
        else:
            with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
                list(pool.map(work, chunks))
    return d2, idx


def _threads(n_threads):
    if n_threads is not None:
        return check_int(n_threads, "n_threads", minimum=1)
    from atomscore.kernels.gaussian import default_threads

    return default_threads()


def _blas_one_thread():
    """BLAS (faiss' own OpenBLAS included) kept to one thread while our threads share the
    blocks: faiss' OpenMP threads spin at every barrier, which on a loaded machine made a
    2-thread search 2-4x slower than one thread."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return nullcontext()
    return threadpool_limits(limits=1, user_api="blas")
