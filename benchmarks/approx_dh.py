"""approx=True delta entropy (k nearest references) vs the exact float32 kernel sum.

Issue 16, item 1: 10,000 queries of dimension 63 against N = 100,000 and 1,000,000 reference
descriptors (synthetic: a mixture of 2,000 Gaussian clusters, queries drawn near reference
points), bandwidth 0.015... scaled to the data (h = median nearest-neighbour distance), k = 3.
``--data copper`` uses QUESTS descriptors of strained, rattled fcc Cu instead (:func:`copper`;
computing them takes ~0.1 ms per atom). For each N, in one run:

* ``exact f32``: :func:`atomscore.quests.kernels.gaussian.delta_entropy` with ``precision='float32'``
  (every pair; the obvious alternative);
* ``approx flat``: :func:`~atomscore.quests.kernels.gaussian.approx_delta_entropy`, exact k-NN by
  faiss ``IndexFlatL2`` in equal blocks with the BLAS threshold lowered;
* ``approx flat, old blocks``: the same search in blocks of 8192 with faiss' own threshold
  (what the code did before issue 16), for the ratio;
* ``approx hnsw`` (``--hnsw-min-n`` and up): ``approx_index='hnsw'``, graph build included,
  and its bias against the exact k-NN sum (mean and max of dH_hnsw - dH_flat, nats, and the
  share of queries that differ).
* ``approx ivf`` (``approx_index='ivf'``, default ``nlist``, ``nprobe`` from ``--ivf-nprobe``):
  the time includes k-means training and adding the reference (printed apart as ``build``),
  and its bias against the exact k-NN sum as for HNSW. A negative difference (a few 1e-6
  nats) is faiss' flat float32 search missing a near-tie that the IVF scan, which
  subtracts before squaring, finds.

``--skip old hnsw`` leaves those lines out (they take as long as a flat search / a graph build).

Each line prints the wall time (the fastest of ``--rounds`` interleaved rounds), the ratio
exact f32 / this, and the gap to the exact sum.
Run: ``.venv/bin/python benchmarks/approx_dh.py [--sizes 100000 1000000] [--queries 10000]
[--ivf-nprobe 4 16] [--skip old hnsw] [--data copper] [--rounds 2]``.
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


def copper(n, m, seed=0):
    """QUESTS descriptors (cutoff 5 A, k = 32: d = 63) of fcc Cu supercells (864 atoms),
    each strained by 0.95-1.08 and rattled by 0.02-0.35 A (a random draw per cell): the
    reference is the first ``n`` atoms of such cells, the queries ``m`` atoms of other
    cells drawn the same way (rattle up to 0.45 A, a little outside the reference)."""
    from ase.build import bulk

    from atomscore.quests.descriptor import QUESTSDescriptor

    rng = np.random.default_rng(seed)
    base = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((6, 6, 6))

    def cells(count, top):
        out = []
        for _ in range(count):
            a = base.copy()
            a.set_cell(a.cell * rng.uniform(0.95, 1.08), scale_atoms=True)
            a.rattle(stdev=rng.uniform(0.02, top), seed=int(rng.integers(2**31)))
            out.append(a)
        return np.concatenate(QUESTSDescriptor(cutoff=5.0, k=32).compute_batch(out))

    x = cells(-(-n // len(base)), 0.35)[:n]
    y = cells(-(-m // len(base)), 0.45)[:m]
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
    parser.add_argument("--ivf-nprobe", type=int, nargs="*", default=[16],
                        help="nprobe values of approx_index='ivf' (none: no IVF lines)")
    parser.add_argument("--skip", nargs="*", default=[], choices=["old", "hnsw"])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the fastest time is kept")
    parser.add_argument("--data", choices=["clusters", "copper"], default="clusters",
                        help="synthetic Gaussian clusters (default) or QUESTS descriptors of rattled Cu")
    args = parser.parse_args(argv)

    from atomscore.quests.kernels import gaussian as G
    from atomscore import index as NB

    print(f"approx dH vs exact float32 dH: {args.queries} queries, dim {args.dim}, k = {args.k}, "
          f"data {args.data}")
    print(f"{'N':>9} {'method':<26}{'time s':>9}{'exact/this':>11}  gap")
    for n in args.sizes:
        if args.data == "copper":
            x, y = copper(n, args.queries, seed=n)
        else:
            x, y = synthetic(n, args.queries, args.dim, seed=n)
        sub = x[:: max(1, n // 20000)][:20000]
        d2, _ = __import__("atomscore.index", fromlist=["x"]).knn_squared_distances(sub[:2000], sub, 2)
        h = float(np.median(np.sqrt(d2[:, 1])))
        x32 = np.ascontiguousarray(x - x.mean(axis=0), dtype=np.float32)
        ivf_opts = [NB.ivf_options(n, {"nprobe": p}) for p in args.ivf_nprobe]
        runs = {"exact": lambda: G.delta_entropy(y, x, h, precision="float32"),
                "flat": lambda: G.approx_delta_entropy(y, x, h, args.k)}
        if "old" not in args.skip:
            runs["old"] = lambda: old_block_search(y, x, args.k)
        for opts in ivf_opts:
            label = f"ivf {opts['nprobe']}/{opts['nlist']}"
            runs[label] = (lambda o=opts: G.approx_delta_entropy(y, x, h, args.k, approx_index="ivf",
                                                                 approx_options=o))
            runs["build " + label] = lambda o=opts: NB.build_index(x32, "IndexIVFFlat", o)
        if n >= args.hnsw_min_n and "hnsw" not in args.skip:
            runs["hnsw"] = lambda: G.approx_delta_entropy(y, x, h, args.k, approx_index="hnsw")
        best, out = {}, {}
        for _ in range(args.rounds):  # interleaved rounds, the fastest of each kept (a loaded machine)
            for name, fn in runs.items():
                out[name], t = timed(fn)
                best[name] = min(t, best.get(name, np.inf))
        exact, flat, t_exact = out["exact"], out["flat"], best["exact"]
        print(f"{n:>9} {'exact f32':<26}{t_exact:9.2f}{1.0:10.2f}x  (h = {h:.3g})", flush=True)
        print(f"{n:>9} {'approx flat':<26}{best['flat']:9.2f}{t_exact / best['flat']:10.2f}x  "
              f"dH_k - dH_exact: median {np.median(flat - exact):.3g}, max {np.max(flat - exact):.3g} nats",
              flush=True)
        if "old" in runs:
            print(f"{n:>9} {'faiss search, old blocks':<26}{best['old']:9.2f}{t_exact / best['old']:10.2f}x  "
                  f"(search only; approx flat / this = {best['flat'] / best['old']:.2f})", flush=True)
        for opts in ivf_opts:
            label = f"ivf {opts['nprobe']}/{opts['nlist']}"
            bias, t_ivf = out[label] - flat, best[label]
            print(f"{n:>9} {'approx ' + label:<26}{t_ivf:9.2f}{t_exact / t_ivf:10.2f}x  "
                  f"(build {best['build ' + label]:.2f} s) dH_ivf - dH_flat: mean {bias.mean():.3g}, "
                  f"max {bias.max():.3g}, min {bias.min():.3g} nats; "
                  f"{np.mean(bias > 1e-9) * 100:.2f}% of queries higher (a missed neighbour), "
                  f"{np.mean(bias < -1e-9) * 100:.2f}% lower (flat float32 near-ties)", flush=True)
        if "hnsw" in runs:
            bias = out["hnsw"] - flat
            print(f"{n:>9} {'approx hnsw (build incl.)':<26}{best['hnsw']:9.2f}{t_exact / best['hnsw']:10.2f}x  "
                  f"dH_hnsw - dH_flat: mean {bias.mean():.3g}, max {bias.max():.3g} nats, "
                  f"{np.mean(bias > 1e-9) * 100:.2f}% of queries differ", flush=True)
        del x32, out
        del x, y


if __name__ == "__main__":
    main()
