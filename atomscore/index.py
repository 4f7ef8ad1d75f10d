"""The one faiss index builder of atomscore: k nearest neighbours for QUESTS (flat, HNSW, IVF,
distances recomputed in float64) and the training-set index of LTAU (flat, HNSW, HNSW+IVFPQ),
with their tuning defaults in one table. Choices and measurements: docs/internals.md ("Indexes").
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Mapping
from contextlib import contextmanager

import numpy as np

from atomscore.errors import InputError
from atomscore.threads import blas_single_thread, resolve_threads
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
#: HNSW graph settings of the QUESTS k-NN search (faiss names; efSearch at least 4 k)
HNSW_ARGS = {"M": 32, "efConstruction": 40, "efSearch": 64}
#: the faiss index type behind each QUESTS short name (``approx_index=``)
FAISS_TYPES = {"flat": "IndexFlatL2", "hnsw": "IndexHNSWFlat", "ivf": "IndexIVFFlat"}
#: the index types a training-set index (LTAU's ``index_type``) may have
INDEX_TYPES = ("IndexFlatL2", "IndexHNSWFlat", "HNSW+IVFPQ")
#: tuning keys of every index type and their defaults (``None``: chosen from the data, see
#: :func:`index_defaults`)
INDEX_ARG_DEFAULTS = {
    "IndexFlatL2": {},
    "IndexHNSWFlat": {"M": 32, "efConstruction": 40, "efSearch": 16},
    "IndexIVFFlat": {"nlist": None, "nprobe": None},
    "HNSW+IVFPQ": {"nlist": None, "M": None, "nbits": None, "hnsw_m": 32,
                   "efConstruction": 40, "efSearch": 16, "nprobe": None},
}


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


def index_defaults(index_type, n_train, dim, index_args=None):
    """The full tuning arguments of ``index_type``: given values over documented defaults.

    Defaults:

    * ``IndexFlatL2``: none (exact search).
    * ``IndexHNSWFlat``: ``M=32`` (graph degree), ``efConstruction=40``, ``efSearch=16``.
    * ``HNSW+IVFPQ``: ``nlist = clip(round(4 sqrt(N)), 1, N // 39)`` inverted lists (faiss
      wants >= 39 training points per centroid); ``M`` = the largest divisor of ``dim`` that
      is <= 16 (PQ sub-quantizers; must divide ``dim``); ``nbits = min(8, floor(log2(N / 39)))``
      (at least 1) bits per code, so each sub-quantizer gets the 39 points per centroid
      faiss asks for (2**nbits <= N is required); ``hnsw_m=32``,
      ``efConstruction=40``, ``efSearch=16`` for the HNSW coarse quantizer;
      ``nprobe = min(nlist, 8)`` lists visited per query.

    Raises
    ------
    InputError
        Unknown index type (listing the valid ones), unknown keys (listing the valid ones),
        values that faiss cannot use.
    """
    check_choice(index_type, "index_type", tuple(INDEX_ARG_DEFAULTS))
    given = {} if index_args is None else index_args
    if not isinstance(given, dict):
        raise InputError(f"index_args: expected a dict or None, got {type(given).__name__}")
    allowed = INDEX_ARG_DEFAULTS[index_type]
    check_keys(given, sorted(allowed), f"index_args for index_type={index_type!r}")
    args = dict(allowed)
    args.update(given)
    if index_type == "IndexIVFFlat":
        args.update(ivf_options(n_train, {key: v for key, v in given.items() if v is not None}))
    if index_type == "HNSW+IVFPQ":
        if args["nlist"] is None:
            args["nlist"] = int(min(max(1, round(4 * math.sqrt(n_train))), max(1, n_train // 39)))
        if args["M"] is None:
            args["M"] = max(m for m in range(1, min(dim, 16) + 1) if dim % m == 0)
        if args["nbits"] is None:
            args["nbits"] = int(min(8, max(1, math.floor(math.log2(max(n_train / 39, 2))))))
        if args["nprobe"] is None:
            args["nprobe"] = int(min(args["nlist"], 8))
    for key, value in args.items():
        check_int(value, f"index_args[{key!r}]", minimum=1)
    if index_type == "HNSW+IVFPQ":
        if dim % args["M"]:
            raise InputError(f"index_args['M']: the number of PQ sub-quantizers must divide the descriptor "
                             f"dimension {dim}, got {args['M']}")
        if args["nlist"] > n_train:
            raise InputError(f"index_args['nlist']: expected at most the {n_train} training points, got {args['nlist']}")
        if 2 ** args["nbits"] > n_train:
            raise InputError(f"index_args['nbits']: PQ training needs at least 2**nbits = {2 ** args['nbits']} "
                             f"training points, got {n_train}; lower nbits")
        if args["nprobe"] > args["nlist"]:
            raise InputError(f"index_args['nprobe']: expected at most nlist = {args['nlist']}, got {args['nprobe']}")
    return args


def as_float32(x):
    """``x`` as a C-contiguous float32 array (what faiss takes)."""
    return np.ascontiguousarray(x, dtype=np.float32)


def build_index(train_descriptors, index_type="IndexFlatL2", index_args=None, *, n_threads=None):
    """Build and fill a faiss index: the one builder of the k-NN searches of QUESTS and LTAU.

    Parameters
    ----------
    train_descriptors : numpy.ndarray, (N, dim)
    index_type : {'IndexFlatL2', 'IndexHNSWFlat', 'IndexIVFFlat', 'HNSW+IVFPQ'}
    index_args : dict, optional
        Tuning keys; see :func:`index_defaults`.
    n_threads : int, optional
        Threads assigning the points to IVF cells (``'IndexIVFFlat'``).

    Returns
    -------
    index : faiss.Index
    args : dict
        The tuning arguments used (defaults filled in).
    """
    import faiss

    x = as_float32(train_descriptors)
    n, dim = x.shape
    args = index_defaults(index_type, n, dim, index_args)
    if index_type == "IndexFlatL2":
        index = faiss.IndexFlatL2(dim)
    elif index_type == "IndexIVFFlat":
        return _ivf_flat(x, args, n_threads), args
    elif index_type == "IndexHNSWFlat":
        index = faiss.IndexHNSWFlat(dim, args["M"])
        index.hnsw.efConstruction = args["efConstruction"]
    else:
        # faiss' own factory string: IVF with an HNSW coarse quantizer, PQ codes
        # 'np': no polysemous training (most of the build time; the search never uses it)
        index = faiss.index_factory(dim, f"IVF{args['nlist']}_HNSW{args['hnsw_m']},PQ{args['M']}x{args['nbits']}np")
        ivf = faiss.extract_index_ivf(index)
        faiss.downcast_index(ivf.quantizer).hnsw.efConstruction = args["efConstruction"]
        index.train(x)
    index.add(x)
    set_search_args(index, index_type, args)
    return index, args


def set_search_args(index, index_type, args):
    """Apply the search-time tuning (efSearch, nprobe) of ``args`` to ``index``."""
    import faiss

    if index_type == "IndexHNSWFlat":
        faiss.downcast_index(index).hnsw.efSearch = args["efSearch"]
    elif index_type == "IndexIVFFlat":
        faiss.extract_index_ivf(index).nprobe = args["nprobe"]
    elif index_type == "HNSW+IVFPQ":
        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = args["nprobe"]
        faiss.downcast_index(ivf.quantizer).hnsw.efSearch = args["efSearch"]


def read_index(path):
    """Read a faiss index: a file written by :meth:`LTAUEstimator.save_index` (or
    ``faiss.write_index``), or the directory written by :meth:`LTAUEstimator.save`.

    Raises
    ------
    InputError
        The path does not exist or does not hold a faiss index.
    """
    import faiss

    path = Path(path)
    if path.is_dir():
        path = path / "index.faiss"
    if not path.is_file():
        raise InputError(f"index_path: expected a faiss index file (or a folder holding index.faiss, as "
                         f"LTAUEstimator.save writes it), got {str(path)!r}: not found")
    try:
        return faiss.read_index(os.fspath(path))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputError(f"index_path: {str(path)!r} is not a faiss index ({first})") from None


def check_index_vectors(index, train_descriptors):
    """Refuse a flat/HNSW ``index`` whose stored vectors are not ``train_descriptors``
    (as float32, in order): an index saved from another training set gives wrong neighbours."""
    n, bad, first = index.ntotal, 0, None
    for start in range(0, n, 65536):  # blocks: memory bounded, not a second copy of the index
        stop = min(start + 65536, n)
        same = np.all(index.reconstruct_n(start, stop - start) == as_float32(train_descriptors[start:stop]), axis=1)
        if not same.all():
            bad += int(np.sum(~same))
            first = start + int(np.argmin(same)) if first is None else first
    if bad:
        raise InputError(f"index: its vectors are not the training descriptors ({bad} of {n} rows differ, "
                         f"first row {first}); was it saved from another training set?")


def kmeans_cells(x, n_cells, n_threads=None):
    """k-means cells of the rows of ``x`` (float32, C-contiguous): ``(quantizer, cells)``.

    faiss k-means of :data:`IVF_NITER` iterations on a fixed-seed subsample of
    :data:`IVF_TRAIN_PER_LIST` points per cell, on one OpenMP thread (module docstring);
    ``quantizer`` is a flat index of the ``n_cells`` centroids, ``cells`` (int64, shape
    (N,)) the nearest centroid of every row, found in our threads' equal blocks. Used by
    the IVF index and by the cells of the kernel sums (:mod:`atomscore.quests.kernels.cells`).
    """
    import faiss

    nlist = int(n_cells)
    quantizer = faiss.IndexFlatL2(x.shape[1])
    clus = faiss.Clustering(x.shape[1], nlist)
    clus.niter = IVF_NITER
    clus.seed = IVF_SEED
    n_train = min(len(x), IVF_TRAIN_PER_LIST * nlist)
    clus.max_points_per_centroid = max(1, -(-n_train // nlist))  # faiss keeps our subsample whole
    train = x
    if n_train < len(x):
        train = x[np.sort(np.random.default_rng(IVF_SEED).choice(len(x), n_train, replace=False))]
    with _omp_threads(1):  # k-means' many short OpenMP loops spin on a loaded machine (10x slower)
        clus.train(np.ascontiguousarray(train), quantizer)
    # the cell of every point (an N x nlist flat search, the costly part) in our threads' equal blocks
    cells = np.empty(len(x), dtype=np.int64)

    def assign(start, stop):
        cells[start:stop] = quantizer.search(x[start:stop], 1)[1][:, 0]

    in_threads(len(x), assign, n_threads)
    return quantizer, cells


def _ivf_flat(x, args, n_threads):
    """A filled ``IndexIVFFlat``: :func:`kmeans_cells`, then faiss files the points under their cells."""
    import faiss

    quantizer, cells = kmeans_cells(x, args["nlist"], n_threads)
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], args["nlist"], faiss.METRIC_L2)
    index.is_trained = True
    with _omp_threads(1):
        index.add_core(len(x), faiss.swig_ptr(x), None, faiss.swig_ptr(cells))
    index.nprobe = args["nprobe"]
    return index


def _quests_index_args(index, k, options):
    """The tuning of a QUESTS k-NN index: HNSW searches at least 4 k candidates."""
    if index == "hnsw":
        return dict(HNSW_ARGS, efSearch=max(HNSW_ARGS["efSearch"], 4 * int(k)))
    return dict(options or {}) if index == "ivf" else {}


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
    faiss_index, _ = build_index(as_float32(x - centre), FAISS_TYPES[index], _quests_index_args(index, k, options),
                                 n_threads=n_threads)
    d2 = np.empty((len(y), k))
    idx = np.empty((len(y), k), dtype=np.int64)

    def search(start, stop):
        block = y[start:stop]
        _, found = faiss_index.search(as_float32(block - centre), k)
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
    threads = resolve_threads(n_threads)
    blocks = query_blocks(n_rows, n_threads=threads)

    def chunk_work(chunk):
        with _omp_threads(1):  # this thread's OpenMP only: our threads share the blocks
            for start, stop in chunk:
                work(start, stop)

    smallest = min((b - a for a, b in blocks), default=1)
    chunks = [blocks[t::threads] for t in range(threads) if blocks[t::threads]]
    with blas_threshold(smallest), blas_single_thread():
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
