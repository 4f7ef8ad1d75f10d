"""LTAU predict: precomputed expected errors vs gather-then-sum vs the bare faiss search.

Issue 4, item 4: 100,000 training descriptors and 100,000 queries of dimension 64, k = 5,
100 log bins. For IndexFlatL2 and IndexHNSWFlat (M 32, efConstruction 40, efSearch 16),
on the same index, three timings (medians of ``--repeats`` interleaved rounds):

* ``search``: the bare faiss ``index.search`` on a ready float32 array -- the floor;
* ``ours``:  ``LTAUForcesUQScore.compute_batch`` -- Atoms in (float64 descriptors in
  ``atoms.arrays``), one (n_atoms,) array per configuration out; validation included;
* ``gather``: the straightforward method of the reference: the same search, then gather
  the (queries x k x bins) PDFs, average over k and sum against widths x midpoints.

An exact flat search of 100k x 100k at dim 64 is slow on a small machine; the flat case
uses ``--flat-queries`` queries (default 10,000; printed). Run:
``.venv/bin/python benchmarks/ltau.py [--queries 100000] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from ase import Atoms

from atomscore.ltau import LTAUForcesUQScore


def interleaved_medians(fns, repeats):
    """Median wall time of each function; the functions take turns in every round, so a
    change of load on a shared machine hits all of them alike."""
    times = [[] for _ in fns]
    outs = [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t0 = time.perf_counter()
            outs[i] = fn()
            times[i].append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times], outs


def make_configs(queries, atoms_per_config):
    configs = []
    for start in range(0, len(queries), atoms_per_config):
        block = queries[start:start + atoms_per_config]
        atoms = Atoms(numbers=np.full(len(block), 14), positions=np.zeros((len(block), 3)))
        atoms.arrays["descriptors"] = block
        configs.append(atoms)
    return configs


def bench(score, queries, k, repeats, atoms_per_config):
    est = score.estimator
    index = est.index
    q32 = np.ascontiguousarray(queries, dtype=np.float32)
    configs = make_configs(queries, atoms_per_config)
    scale = est.widths * est.midpoints

    def search():
        return index.search(q32, k)

    def ours():
        return score.compute_batch(configs, "UNCERTAINTY", num_nearest_neighbors=k)

    def gather():
        _, idx = index.search(q32, k)
        return (est.pdfs[idx].mean(axis=1) * scale).sum(axis=1)

    search()  # warm-up (threads, page-in)
    (t_search, t_ours, t_gather), (_, res_ours, res_gather) = interleaved_medians([search, ours, gather], repeats)
    ours_flat = np.concatenate(res_ours)
    rel = float(np.max(np.abs(ours_flat - res_gather) / np.abs(res_gather)))
    return t_search, t_ours, t_gather, rel


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--flat-queries", type=int, default=10_000,
                        help="queries for the exact IndexFlatL2 case (slow on few cores)")
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--nbins", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--atoms-per-config", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None,
                        help="faiss OpenMP threads (default: faiss' own); 1 is steadier on a shared machine")
    args = parser.parse_args(argv)

    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)

    rng = np.random.default_rng(0)
    train = rng.normal(size=(args.train, args.dim))
    logs = rng.lognormal(-3.0, 1.0, size=(args.epochs, args.train))
    queries = rng.normal(size=(args.queries, args.dim))
    print(f"LTAU predict benchmark: {args.train} training x {args.queries} queries, dim {args.dim}, "
          f"k={args.k}, {args.nbins} log bins, {args.epochs} epochs; faiss {faiss.__version__}, "
          f"{faiss.omp_get_max_threads()} thread(s); medians of {args.repeats} interleaved rounds; "
          f"{args.atoms_per_config} atoms per configuration")
    cases = [
        ("IndexFlatL2", None, args.flat_queries),
        ("IndexHNSWFlat", {"M": 32, "efConstruction": 40, "efSearch": 16}, args.queries),
    ]
    print(f"{'index':<15}{'queries':>9}{'build s':>9}{'search s':>10}{'ours s':>9}{'gather s':>10}"
          f"{'search/ours':>13}{'gather/ours':>13}{'max rel diff':>14}")
    for index_type, index_args, nq in cases:
        t0 = time.perf_counter()
        score = LTAUForcesUQScore(train, logs, from_error_logs=True, nbins=args.nbins, bin_spacing="log",
                                  index_type=index_type, index_args=index_args)
        build = time.perf_counter() - t0
        t_search, t_ours, t_gather, rel = bench(score, queries[:nq], args.k, args.repeats, args.atoms_per_config)
        print(f"{index_type:<15}{nq:>9}{build:>9.2f}{t_search:>10.3f}{t_ours:>9.3f}{t_gather:>10.3f}"
              f"{t_search / t_ours:>13.2f}{t_gather / t_ours:>13.2f}{rel:>14.1e}")
        if nq < args.queries:
            print(f"  ({index_type}: {nq} of {args.queries} queries -- exact search of all of them is slow on "
                  f"{faiss.omp_get_max_threads()} thread(s); ratios are per-query-independent)")
    print("search/ours: speed of ours relative to the bare faiss search (target >= 0.9); "
          "gather/ours: speed-up over gather-then-sum.")


if __name__ == "__main__":
    main()
