"""approx=True delta entropy (k nearest references) vs the exact float32 kernel sum.

Issue 16, item 1: 10,000 queries of dimension 63 against N = 100,000 and 1,000,000 reference
descriptors (synthetic: a mixture of 2,000 Gaussian clusters, queries drawn near reference
points), bandwidth 0.015... scaled to the data (h = median nearest-neighbour distance), k = 3.
For each N, in one run:

* ``exact f32``: :func:`atomscore.kernels.gaussian.delta_entropy` with ``precision='float32'``
  (every pair; the obvious alternative);
* ``approx flat``: :func:`~atomscore.kernels.gaussian.approx_delta_entropy`, exact k-NN by
  faiss ``IndexFlatL2`` in equal blocks with the BLAS threshold lowered;
* ``approx flat, old blocks``: the same search in blocks of 8192 with faiss' own threshold
  (what the code did before issue 16), for the ratio;
* ``approx hnsw`` (``--hnsw-min-n`` and up): ``approx_index='hnsw'``, graph build included,
  and its bias against the exact k-NN sum (mean and max of dH_hnsw - dH_flat, nats, and the
  share of queries that differ).

Each line prints the wall time, the ratio exact f32 / this, and the gap to the exact sum.
Run: ``.venv/bin/python benchmarks/approx_dh.py [--sizes 100000 1000000] [--queries 10000]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def synthetic(n, m, d, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(2000, d))
    x = centres[rng.integers(0, len(centres), n)] + 0.15 * rng.normal(size=(n, d))
    y = x[rng.integers(0, n, m)] + 0.05 * rng.normal(size=(m, d))
    return x, y


def old_block_search(y, x, k):
    """The pre-issue-16 search: blocks of 8192, the leftover under faiss' BLAS threshold."""
    import faiss

    centre = x.mean(axis=0)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(np.ascontiguousarray(x - centre, dtype=np.float32))
    for start in range(0, len(y), 8192):
        index.search(np.ascontiguousarray(y[start:start + 8192] - centre, dtype=np.float32), k)


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--dim", type=int, default=63)
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--hnsw-min-n", type=int, default=1_000_000)
    args = parser.parse_args(argv)

    from atomscore.kernels import gaussian as G

    print(f"approx dH vs exact float32 dH: {args.queries} queries, dim {args.dim}, k = {args.k}")
    print(f"{'N':>9} {'method':<26}{'time s':>9}{'exact/this':>11}  gap")
    for n in args.sizes:
        x, y = synthetic(n, args.queries, args.dim, seed=n)
        sub = x[:: max(1, n // 20000)][:20000]
        d2, _ = __import__("atomscore.kernels.neighbors", fromlist=["x"]).knn_squared_distances(sub[:2000], sub, 2)
        h = float(np.median(np.sqrt(d2[:, 1])))
        exact, t_exact = timed(lambda: G.delta_entropy(y, x, h, precision="float32"))
        flat, t_flat = timed(lambda: G.approx_delta_entropy(y, x, h, args.k))
        _, t_old = timed(lambda: old_block_search(y, x, args.k))
        print(f"{n:>9} {'exact f32':<26}{t_exact:9.2f}{1.0:10.2f}x  (h = {h:.3g})", flush=True)
        print(f"{n:>9} {'approx flat':<26}{t_flat:9.2f}{t_exact / t_flat:10.2f}x  "
              f"dH_k - dH_exact: median {np.median(flat - exact):.3g}, max {np.max(flat - exact):.3g} nats",
              flush=True)
        print(f"{n:>9} {'faiss search, old blocks':<26}{t_old:9.2f}{t_exact / t_old:10.2f}x  "
              f"(search only; approx flat / this = {t_flat / t_old:.2f})", flush=True)
        if n >= args.hnsw_min_n:
            hnsw, t_hnsw = timed(lambda: G.approx_delta_entropy(y, x, h, args.k, approx_index="hnsw"))
            bias = hnsw - flat
            print(f"{n:>9} {'approx hnsw (build incl.)':<26}{t_hnsw:9.2f}{t_exact / t_hnsw:10.2f}x  "
                  f"dH_hnsw - dH_flat: mean {bias.mean():.3g}, max {bias.max():.3g} nats, "
                  f"{np.mean(bias > 1e-9) * 100:.2f}% of queries differ", flush=True)
        del x, y


if __name__ == "__main__":
    main()
