"""Sampled QUESTS entropy estimates: error vs sample_size at N = 10^5, time at N = 10^6.

Data: QUESTS descriptors (k=32, cutoff 5 Å, via the quests package) of rattled and
strained Si diamond, Cu fcc and C60 (as benchmarks/quests_kernels.py), bandwidth 0.015.

1. N = 10^5: the exact entropy and diversity from one float64 pass (timed), which also
   gives every row's ``log p_i``. For each sample size, ``--seeds`` estimates are formed from
   the rows ``estimate_entropy`` draws for those seeds (the sampled rows' sums equal those
   rows of the full pass to 1e-12, tests/test_quests_estimates.py); one real
   ``estimate_entropy`` call per size (seed 0) is timed and checked to give the same value.
   Printed: mean standard error, RMS error, mean z-score and its spread, the fraction of
   estimates within 1 and 2 standard errors.
2. N = 10^6 (the 10^5 descriptors and 9 copies jittered by 0.2 h, so the timing is that of
   real-looking data; building 10^6 real descriptors takes ~6 min here): the time of one
   ``estimate_entropy(sample_size=1000)`` in float64 and float32, against the exact pass
   extrapolated from the measured N = 10^5 rate (pairs per second).

Usage: ``python benchmarks/quests_estimates.py [--n 100000] [--n-large 1000000] [--seeds 50]
[--threads 2]``
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--n-large", type=int, default=1_000_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 300, 1000, 3000, 10000])
    parser.add_argument("--seeds", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--bandwidth", type=float, default=0.015)
    args = parser.parse_args(argv)

    from quests_kernels import descriptors

    from atomscore.quests.kernels import gaussian as G

    h, threads, n = args.bandwidth, args.threads, args.n
    t0 = time.perf_counter()
    x = descriptors(n, (0.01, 0.1), seed=n)
    print(f"descriptors: {x.shape} in {time.perf_counter() - t0:.0f} s; bandwidth {h}; {threads} threads; "
          f"machine shared with other jobs (load {os.getloadavg()[0]:.1f})", flush=True)

    t0 = time.perf_counter()
    logp = G.log_kernel_sums(x, None, h, n_threads=threads)
    t_exact = time.perf_counter() - t0
    exact_h = math.log(n) - logp.mean()
    exact_d = float(np.log(np.exp(-logp - (-logp).max()).sum()) + (-logp).max())
    pairs_exact = n * (n + 1) / 2
    print(f"exact f64 pass N={n}: {t_exact:.1f} s ({pairs_exact / 1e9:.2f}e9 pairs, "
          f"{t_exact / pairs_exact * 1e9 * threads:.1f} core-s per 1e9 pairs); H = {exact_h:.6f} nats, "
          f"D = {exact_d:.6f} nats", flush=True)

    print(f"\nentropy estimate vs sample_size ({args.seeds} seeds each; z = (estimate - exact) / se)")
    header = (f"{'n':>7} {'mean se':>10} {'rms error':>10} {'rms/se':>7} {'mean z':>7} {'std z':>6} "
              f"{'|z|<1':>6} {'|z|<2':>6} {'time s':>7} {'exact/est':>9}  check")
    print(header)
    print("-" * len(header))
    for size in args.sizes:
        values, errors = [], []
        for seed in range(args.seeds):
            rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
            sample = logp[rows]
            values.append(math.log(n) - sample.mean())
            errors.append(sample.std(ddof=1) * math.sqrt((1 - size / n) / size))
        values, errors = np.array(values), np.array(errors)
        z = (values - exact_h) / errors
        t0 = time.perf_counter()
        est = G.estimate_entropy(x, h, size, 0, n_threads=threads)
        t_est = time.perf_counter() - t0
        same = abs(est.value - values[0]) <= 1e-12 * abs(values[0]) and \
            abs(est.standard_error - errors[0]) <= 1e-9 * errors[0]
        rms = math.sqrt(np.mean((values - exact_h) ** 2))
        print(f"{size:>7} {errors.mean():10.2e} {rms:10.2e} {rms / errors.mean():7.2f} {z.mean():7.2f} "
              f"{z.std():6.2f} {np.mean(np.abs(z) < 1):6.2f} {np.mean(np.abs(z) < 2):6.2f} {t_est:7.2f} "
              f"{t_exact / t_est:8.0f}x  {'same as the call' if same else 'MISMATCH'}", flush=True)

    # diversity at one size, same seeds
    size = 1000
    dv, de = [], []
    for seed in range(args.seeds):
        rows = np.sort(np.random.default_rng(seed).choice(n, size=size, replace=False))
        w = -logp[rows]
        top = w.max()
        s = np.exp(w - top)
        dv.append(math.log(n) + top + math.log(s.mean()))
        de.append(s.std(ddof=1) * math.sqrt((1 - size / n) / size) / s.mean())
    zd = (np.array(dv) - exact_d) / np.array(de)
    print(f"\ndiversity estimate, n={size}: mean se {np.mean(de):.2e} nats, rms error "
          f"{math.sqrt(np.mean((np.array(dv) - exact_d) ** 2)):.2e}, mean z {zd.mean():.2f}, std z {zd.std():.2f}, "
          f"|z|<2: {np.mean(np.abs(zd) < 2):.2f}")

    if args.n_large:
        copies = math.ceil(args.n_large / n)
        rng = np.random.default_rng(1)
        big = np.vstack([x] + [x + rng.normal(scale=0.2 * h, size=x.shape) for _ in range(copies - 1)])[:args.n_large]
        del logp
        print(f"\nN = {len(big)} ({n} descriptors + jittered copies): estimate_entropy(sample_size=1000)")
        pair_rate = pairs_exact / t_exact
        for precision in ("float64", "float32"):
            t0 = time.perf_counter()
            est = G.estimate_entropy(big, h, 1000, 0, precision=precision, n_threads=threads)
            t_est = time.perf_counter() - t0
            projected = len(big) * (len(big) + 1) / 2 / pair_rate
            print(f"  {precision}: {t_est:.1f} s, H = {est.value:.4f} +- {est.standard_error:.4f} nats; "
                  f"exact f64 pass projected from the N={n} rate: {projected / 60:.0f} min "
                  f"({projected / t_est:.0f}x)", flush=True)


if __name__ == "__main__":
    main()
