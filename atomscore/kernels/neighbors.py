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
* ``'ivf'``: ``IndexIVFFlat`` (inverted file, approximate): the reference is split into
  ``nlist`` k-means cells and each query scans only the ``nprobe`` cells whose centroids are
  nearest, so a search scans about ``nprobe / nlist`` of the reference. Defaults
  (:func:`ivf_options`): ``nlist = round(sqrt(N))`` clipped to ``[1, N // 39]`` (faiss wants
  >= 39 training points per cell) and to :data:`IVF_MAX_NLIST`; ``nprobe`` =
  :data:`IVF_NPROBE` clipped to ``nlist``. k-means runs on a random subsample of
  :data:`IVF_TRAIN_PER_LIST` points per cell (fixed seed :data:`IVF_SEED`, so runs repeat)
  for :data:`IVF_NITER` iterations, on one OpenMP thread (many short parallel loops lost
  10x on a loaded machine); the reference points are assigned to cells in our threads'
  equal blocks, as the queries are searched. ``sqrt(N)`` rather than faiss' query-heavy ``4 sqrt(N)``:
  assigning the N reference points to cells costs ``N x nlist`` distances, which with
  ``4 sqrt(N)`` cells (4,000 at N = 10^6) is 40 % of a flat search of 10^4 queries.
  ``nprobe = nlist`` scans every cell and is exact. Like HNSW, a missed neighbour can only
  raise dH.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping
from contextlib import contextmanager, nullcontext

import numpy as np

from atomscore.errors import InputError
from atomscore.validation import check_choice, check_int, check_keys, load_array

#: the largest number of queries per faiss search (bounds the (block, k, d) float64 gather)
QUERY_BLOCK = 8192
#: searches of fewer queries keep faiss' own BLAS threshold (faiss' historic default)
SIMD_QUERIES = 20
#: the neighbour indexes offered
INDEXES = ("flat", "hnsw", "ivf")
#: the options ``approx_options`` may set, per index
INDEX_OPTIONS = {"flat": (), "hnsw": (), "ivf": ("nlist", "nprobe")}
#: IVF: cells scanned per query by default (clipped to nlist)
IVF_NPROBE = 16
#: IVF: the most cells by default, and the k-means training points per cell, iterations, seed
IVF_MAX_NLIST = 65536
IVF_TRAIN_PER_LIST = 40
IVF_NITER = 10
IVF_SEED = 1234
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


def check_index_options(index, options, where="approx_options"):
    """Check ``options`` (a mapping or None) against the options ``index`` takes.

    Returns a new dict of the options given, as ints; nothing is resolved against the
    reference size here (see :func:`ivf_options`). Raises :class:`InputError` naming the key.
    """
    check_choice(index, "approx_index", INDEXES)
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise InputError(f"{where}: expected a dict (e.g. {{'nlist': 1000, 'nprobe': 16}}) or None, "
                         f"got {type(options).__name__}")
    allowed = INDEX_OPTIONS[index]
    if options and not allowed:
        raise InputError(f"{where}: approx_index={index!r} takes no options, got {sorted(map(str, options))}; "
                         f"options {list(INDEX_OPTIONS['ivf'])} are for approx_index='ivf'")
    check_keys(options, allowed, where)
    out = {key: check_int(options[key], key, minimum=1, where=where) for key in allowed if key in options}
    if "nlist" in out and "nprobe" in out and out["nprobe"] > out["nlist"]:
        raise InputError(f"{where}: expected nprobe <= nlist ({out['nlist']}), got nprobe = {out['nprobe']}")
    return out


def ivf_options(n_reference, options=None):
    """``{'nlist', 'nprobe'}`` an IVF index over ``n_reference`` points uses: the given
    ones (checked by :func:`check_index_options`), the defaults (module docstring) for the rest.

    Raises :class:`InputError` when ``nlist`` exceeds ``n_reference``."""
    given = check_index_options("ivf", options)
    n = int(n_reference)
    if "nlist" in given:
        nlist = given["nlist"]
        if nlist > n:
            raise InputError(f"approx_options: expected nlist <= the {n} reference points, got {nlist}")
    else:
        nlist = int(min(max(1, round(math.sqrt(n))), max(1, n // 39), IVF_MAX_NLIST))
    nprobe = given.get("nprobe", min(IVF_NPROBE, nlist))
    if nprobe > nlist:
        raise InputError(f"approx_options: expected nprobe <= nlist ({nlist} for {n} reference points), "
                         f"got nprobe = {nprobe}")
    return {"nlist": nlist, "nprobe": nprobe}


def index_settings(index, n_reference, options=None):
    """The settings an ``index`` over ``n_reference`` points runs with (for metadata)."""
    check_index_options(index, options)
    if index == "ivf":
        return ivf_options(n_reference, options)
    if index == "hnsw":
        return dict(HNSW_ARGS)
    return {}


def build_index(reference32, index="flat", k=1, options=None, n_threads=None):
    """A filled faiss index over ``reference32`` (C-contiguous float32, already centred)."""
    import faiss

    dim = reference32.shape[1]
    if index == "flat":
        found = faiss.IndexFlatL2(dim)
    elif index == "ivf":
        settings = ivf_options(len(reference32), options)
        nlist = settings["nlist"]
        quantizer = faiss.IndexFlatL2(dim)
        found = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_L2)
        found.cp.niter = IVF_NITER
        found.cp.seed = IVF_SEED
        n_train = min(len(reference32), IVF_TRAIN_PER_LIST * nlist)
        found.cp.max_points_per_centroid = max(1, -(-n_train // nlist))  # faiss keeps our subsample whole
        if n_train < len(reference32):
            rows = np.random.default_rng(IVF_SEED).choice(len(reference32), n_train, replace=False)
            train = reference32[np.sort(rows)]
        else:
            train = reference32
        with _omp_threads(1):  # k-means' many short OpenMP loops spin on a loaded machine (10x slower)
            found.train(train)
        # the cell of every reference point (an N x nlist flat search, the costly part) in our
        # threads' equal blocks; then faiss files the points under their cells
        cells = np.empty(len(reference32), dtype=np.int64)

        def assign(start, stop):
            cells[start:stop] = quantizer.search(reference32[start:stop], 1)[1][:, 0]

        in_threads(len(reference32), assign, n_threads)
        with _omp_threads(1):
            found.add_core(len(reference32), faiss.swig_ptr(reference32), None, faiss.swig_ptr(cells))
        found.nprobe = settings["nprobe"]
        return found
    else:
        found = faiss.IndexHNSWFlat(dim, HNSW_ARGS["M"])
        found.hnsw.efConstruction = HNSW_ARGS["efConstruction"]
    found.add(reference32)
    if index == "hnsw":
        found.hnsw.efSearch = max(HNSW_ARGS["efSearch"], 4 * int(k))
    return found


def knn_squared_distances(queries, reference, k, index="flat", n_threads=None, options=None):
    """Squared Euclidean distances to the ``k`` nearest reference points of each query.

    Parameters
    ----------
    queries : array_like, shape (M, d)
    reference : array_like, shape (N, d)
    k : int
        Neighbours per query, ``1 <= k <= N``.
    index : {'flat', 'hnsw', 'ivf'}
        ``'flat'``: exact. ``'hnsw'``: approximate graph search; ``'ivf'``: inverted file
        (module docstring); a neighbour they miss is replaced by a farther point.
    n_threads : int, optional
        Python threads sharing the query blocks, one faiss (OpenMP) thread each (default:
        the CPUs available).
    options : dict, optional
        ``'ivf'`` only: ``{'nlist': int, 'nprobe': int}`` (either may be left out; defaults
        in the module docstring, :func:`ivf_options`).

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
    check_index_options(index, options)
    if index == "ivf":
        ivf_options(len(x), options)  # refused here, before the reference is copied or trained
    centre = x.mean(axis=0)  # centring keeps faiss' float32 expansion accurate
    faiss_index = build_index(np.ascontiguousarray(x - centre, dtype=np.float32), index, k, options, n_threads)
    d2 = np.empty((len(y), k))
    idx = np.empty((len(y), k), dtype=np.int64)

    def search(start, stop):
        block = y[start:stop]
        _, found = faiss_index.search(np.ascontiguousarray(block - centre, dtype=np.float32), k)
        if np.any(found < 0):  # HNSW/IVF may return fewer than k (IVF: fewer in the cells probed)
            raise InputError(f"approx_index={index!r}: the index found fewer than {k} neighbours for "
                             f"{int(np.any(found < 0, axis=1).sum())} queries; use approx_index='flat'"
                             + (" or a larger approx_options['nprobe']" if index == "ivf" else ""))
        diff = x[found] - block[:, None, :]
        exact = np.einsum("ijk,ijk->ij", diff, diff)
        order = np.argsort(exact, axis=1, kind="stable")
        d2[start:stop] = np.take_along_axis(exact, order, axis=1)
        idx[start:stop] = np.take_along_axis(found, order, axis=1)

    in_threads(len(y), search, n_threads)
    return d2, idx


def in_threads(n_rows, work, n_threads=None):
    """``work(start, stop)`` over equal blocks of ``n_rows`` rows (:func:`query_blocks`),
    shared by ``n_threads`` Python threads (default: the CPUs available) that each run faiss
    with one OpenMP thread and BLAS with one thread, under a BLAS threshold lowered to the
    smallest block (:func:`blas_threshold`). The first error of a block is raised."""
    threads = _threads(n_threads)
    blocks = query_blocks(n_rows, n_threads=threads)

    def chunk_work(chunk):
        with _omp_threads(1):  # this thread's OpenMP only: our threads share the blocks
            for start, stop in chunk:
                work(start, stop)

    smallest = min((b - a for a, b in blocks), default=1)
    chunks = [blocks[t::threads] for t in range(threads) if blocks[t::threads]]
    with blas_threshold(smallest), _blas_one_thread():
        if len(chunks) <= 1:
            for chunk in chunks:
                chunk_work(chunk)
        else:
            with ThreadPoolExecutor(max_workers=len(chunks)) as pool:
                list(pool.map(chunk_work, chunks))


@contextmanager
def _omp_threads(n):
    """faiss' OpenMP threads (of the calling thread) set to ``n`` for the duration."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(before)


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
