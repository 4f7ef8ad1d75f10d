"""Exact k nearest neighbours through faiss, with distances recomputed in float64.

faiss (``IndexFlatL2``: brute force, exact) finds the neighbours in float32, fast and
multithreaded; the squared distances to the neighbours found are then recomputed in
float64 from the original descriptors, so values built on them (e.g. a log-sum-exp of a
Gaussian kernel) carry float64 accuracy, not faiss' float32 expansion error.
"""

from __future__ import annotations

import numpy as np

from atomscore.errors import InputError
from atomscore.validation import check_int, load_array

_QUERY_BLOCK = 8192  # queries per faiss search (bounds the (block, k) result arrays)


def knn_squared_distances(queries, reference, k):
    """Squared Euclidean distances to the ``k`` nearest reference points of each query.

    Parameters
    ----------
    queries : array_like, shape (M, d)
    reference : array_like, shape (N, d)
    k : int
        Neighbours per query, ``1 <= k <= N``.

    Returns
    -------
    d2 : numpy.ndarray, shape (M, k), float64
        Squared distances (descriptor units squared), ascending per row.
    index : numpy.ndarray, shape (M, k), int64
        Row indices into ``reference``.
    """
    import faiss

    y = load_array(queries, "queries", ndim=2)
    x = load_array(reference, "reference", ndim=2)
    if y.shape[1] != x.shape[1]:
        raise InputError(f"reference: expected dimension {y.shape[1]} (as the queries), got {x.shape[1]}")
    k = check_int(k, "num_nearest_neighbors", minimum=1)
    if k > len(x):
        raise InputError(f"num_nearest_neighbors: expected at most the {len(x)} reference points, got {k}")
    centre = x.mean(axis=0)  # centring keeps faiss' float32 expansion accurate
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x - centre, dtype=np.float32))
    d2 = np.empty((len(y), k))
    idx = np.empty((len(y), k), dtype=np.int64)
    for start in range(0, len(y), _QUERY_BLOCK):
        block = y[start:start + _QUERY_BLOCK]
        _, found = index.search(np.ascontiguousarray(block - centre, dtype=np.float32), k)
        diff = x[found] - block[:, None, :]
        exact = np.einsum("ijk,ijk->ij", diff, diff)
        order = np.argsort(exact, axis=1, kind="stable")
        d2[start:start + len(block)] = np.take_along_axis(exact, order, axis=1)
        idx[start:start + len(block)] = np.take_along_axis(found, order, axis=1)
    return d2, idx
