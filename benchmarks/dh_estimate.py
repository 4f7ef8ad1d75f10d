"""Approximate dH with an error bar (issue 27 item 2) vs the exact float32 dH, in one run.

QUESTS descriptors of strained, rattled fcc Cu (``approx_dh.copper``: the reference rattled
up to 0.35 A, the queries up to 0.45 A), h = 0.015. For N reference and M query
environments it times, in interleaved rounds (medians):

* ``exact f32``: :func:`delta_entropy` with ``precision='float32'`` (the anchor);
* ``knn ivf k=3``: today's ``approx=True, approx_index='ivf'`` (k nearest only);
* ``sampled``: :func:`estimate_delta_entropy` (nearest ``n_probe`` of ``sqrt(N)`` k-means cells
  exact, the rest from a uniform sample of ``max(2000, N/16)`` rows), for each ``--probes``;

and prints the ratio anchor / each, the error against the exact float64 dH (median, 99th
percentile and largest |error|, share of queries within 0.05 nats) and, for the sampled
estimate, the coverage of its error bars (share of queries with |error| < 1.96 / 2.58
standard errors; nominal 95 % / 99 %).

Usage::

    python benchmarks/dh_estimate.py [--reference 200000] [--queries 10000] [--probes 16 32] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

H = 0.015


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--probes", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from approx_dh import copper

    from atomscore.quests.kernels import gaussian

    x, y = copper(args.reference, args.queries)
    exact = gaussian.delta_entropy(y, x, H)  # float64 truth
    runs = {"exact f32": lambda: gaussian.delta_entropy(y, x, H, precision="float32"),
            "knn ivf k=3": lambda: gaussian.approx_delta_entropy(y, x, H, 3, approx_index="ivf")}
    for probe in args.probes:
        runs[f"sampled probe={probe}"] = lambda probe=probe: gaussian.estimate_delta_entropy(y, x, H, n_probe=probe)
    times = {name: [] for name in runs}
    results = {}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    anchor = statistics.median(times["exact f32"])
    print(f"N = {len(x)}, M = {len(y)}, h = {H}")
    print(f"{'method':<20} {'time s':>8} {'ratio':>6} {'|err| med':>9} {'p99':>8} {'max':>8} {'<0.05':>6} "
          f"{'cover 1.96':>10} {'cover 2.58':>10}")
    for name, res in results.items():
        value, se = (res.value, res.standard_error) if hasattr(res, "standard_error") else (res, None)
        err = np.abs(value - exact)
        t = statistics.median(times[name])
        line = (f"{name:<20} {t:>8.2f} {anchor / t:>6.2f} {np.median(err):>9.2e} {np.quantile(err, 0.99):>8.3f} "
                f"{err.max():>8.3f} {np.mean(err < 0.05):>6.3f}")
        if se is not None:
            with np.errstate(divide="ignore"):
                z = err / se
            line += f" {np.mean(z < 1.96):>10.3f} {np.mean(z < 2.58):>10.3f}"
        print(line, flush=True)


if __name__ == "__main__":
    main()
