"""Pruned kernel sums (issue 27 item 1): entropy with ``prune=True`` vs the dense float32 pass.

Data with structure: QUESTS descriptors (k = 32, cutoff 5 A, our own descriptors) of several
phases, in equal parts -- fcc, bcc and hcp metals, diamond Si, a strongly rattled
(liquid-like) fcc, each strained by 0.96-1.06 and rattled by 0.02-0.12 A (0.35-0.5 A for the
liquid) -- and uniform noise of the same dimension and spread (every descriptor column drawn
uniformly over the range it spans in the structured data: its points are far apart, most
pairs negligible) and ``dense-noise`` (uniform in a cube with typical pair distance ~8 h:
every pair matters, pruning cannot help).
Bandwidth 0.015 (the default).

For each size N (interleaved rounds, medians) it prints the time of the dense float32 pass
(the anchor), the dense float64 pass, the pruned float64 and float32 passes, the ratio
anchor / pruned, the share of pairs the pruning computes, the largest difference of
``log p`` pruned f64 vs dense f64 (= the relative difference of a kernel sum), the relative
difference of the entropies (both must stay below 1e-10) and the reported skipped-mass bound; then the
growth exponent of each column fitted over the sizes (time ~ N^a) and the projected time at
N = 10^6.

Usage::

    python benchmarks/quests_pruning.py [--sizes 10000 20000 50000 100000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

H = 0.015


def phases(n, seed=0):
    """``n`` descriptors of five phases in equal parts (atoms of cells of ~100-250 atoms)."""
    from ase.build import bulk

    from atomscore.quests.descriptor import compute_descriptors

    rng = np.random.default_rng(seed)
    makers = [
        (lambda: bulk("Cu", "fcc", 3.61, cubic=True).repeat((4, 4, 4)), (0.02, 0.12)),
        (lambda: bulk("Fe", "bcc", 2.87, cubic=True).repeat((5, 5, 5)), (0.02, 0.12)),
        (lambda: bulk("Mg", "hcp", 3.21, 5.21).repeat((5, 5, 4)), (0.02, 0.12)),
        (lambda: bulk("Si", "diamond", 5.43, cubic=True).repeat((3, 3, 3)), (0.02, 0.12)),
        (lambda: bulk("Cu", "fcc", 3.61, cubic=True).repeat((4, 4, 4)), (0.35, 0.5)),
    ]
    per = -(-n // len(makers))
    out = []
    for make, (lo, hi) in makers:
        rows = []
        while sum(len(r) for r in rows) < per:
            atoms = make()
            atoms.set_cell(atoms.cell * rng.uniform(0.96, 1.06), scale_atoms=True)
            atoms.rattle(rng.uniform(lo, hi), seed=int(rng.integers(2**31)))
            rows.append(compute_descriptors(atoms))
        out.append(np.concatenate(rows)[:per])
    x = np.concatenate(out)[:n]
    return x[rng.permutation(len(x))]


def noise_like(x, seed=1):
    rng = np.random.default_rng(seed)
    lo, hi = x.min(axis=0), x.max(axis=0)
    return lo + (hi - lo) * rng.random(x.shape)


def dense_noise(x, seed=2):
    """Uniform noise in a cube whose side puts the typical pair distance at ~0.12 (8 h): every
    pair matters, nothing can be pruned (the case that only pays the k-means)."""
    rng = np.random.default_rng(seed)
    side = 0.12 / np.sqrt(x.shape[1] / 6.0)  # mean squared distance of U[0, a]^d is d a^2 / 6
    return side * rng.random(x.shape)


def fit_exponent(sizes, times):
    a, b = np.polyfit(np.log(sizes), np.log(times), 1)
    return a, float(np.exp(b + a * np.log(1e6)))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 50_000, 100_000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--data", nargs="+", default=["phases", "noise"], choices=["phases", "noise", "dense-noise"])
    args = parser.parse_args(argv)

    from atomscore.quests.kernels import cells, gaussian

    full = phases(max(args.sizes))
    for kind in args.data:
        data = {"phases": full, "noise": noise_like(full), "dense-noise": dense_noise(full)}[kind]
        print(f"\n{kind}: entropy, h = {H}")
        print(f"{'N':>8} {'dense f32 s':>11} {'dense f64 s':>11} {'pruned f64 s':>12} {'pruned f32 s':>12} "
              f"{'f32/pr64':>8} {'f32/pr32':>8} {'pairs kept':>10} {'max dlog p':>10} {'H rel diff':>10} {'skip bound':>10}")
        cols = {"d32": [], "d64": [], "p64": [], "p32": []}
        for n in args.sizes:
            x = data[:n]
            t = {key: [] for key in cols}
            for _ in range(args.repeats):  # interleaved rounds
                for key, fn in (("d32", lambda: gaussian.log_kernel_sums(x, None, H, precision="float32")),
                                ("d64", lambda: gaussian.log_kernel_sums(x, None, H)),
                                ("p64", lambda: gaussian.pruned_log_kernel_sums(x, None, H)),
                                ("p32", lambda: gaussian.pruned_log_kernel_sums(x, None, H, precision="float32"))):
                    t0 = time.perf_counter()
                    res = fn()
                    t[key].append(time.perf_counter() - t0)
                    if key == "d64":
                        dense = res
                    elif key == "p64":
                        pruned, bound = res
            med = {key: statistics.median(v) for key, v in t.items()}
            for key in cols:
                cols[key].append(med[key])
            xc = x - x.mean(axis=0)
            part = cells.partition(xc)
            keep = cells.cell_pairs(part, part, np.array([1.0 / (2 * H * H)]), True).keep
            sizes = part.sizes.astype(float)
            kept = float((np.outer(sizes, sizes) * keep).sum() / n ** 2)
            dlogp = float(np.max(np.abs(pruned - dense)))  # = the largest relative difference of a kernel sum
            h_rel = abs(float(np.mean(pruned - dense)) / (np.log(n) - float(np.mean(dense))))
            print(f"{n:>8} {med['d32']:>11.3f} {med['d64']:>11.3f} {med['p64']:>12.3f} {med['p32']:>12.3f} "
                  f"{med['d32'] / med['p64']:>8.2f} {med['d32'] / med['p32']:>8.2f} {kept:>10.3f} {dlogp:>10.1e} {h_rel:>10.1e} "
                  f"{float(bound.max()):>10.1e}", flush=True)
        if len(args.sizes) > 1:
            print("growth exponent (time ~ N^a) and projected time at N = 10^6:")
            for key, label in (("d32", "dense f32"), ("d64", "dense f64"), ("p64", "pruned f64"), ("p32", "pruned f32")):
                a, t6 = fit_exponent(args.sizes, cols[key])
                print(f"  {label:<11} a = {a:.2f}   10^6: {t6 / 60:.1f} min")


if __name__ == "__main__":
    main()
