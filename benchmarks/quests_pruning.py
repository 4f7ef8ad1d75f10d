"""Pruned kernel sums (issue 27 item 1): entropy with ``prune=True`` vs the dense float32 pass.

Data with structure: QUESTS descriptors (k = 32, cutoff 5 A, our own descriptors) of several
phases, in equal parts -- fcc, bcc and hcp metals, diamond Si, a strongly rattled
(liquid-like) fcc, each strained by 0.96-1.06 and rattled by 0.02-0.12 A (0.35-0.5 A for the
liquid) -- and uniform noise of the same dimension and spread (every descriptor column drawn
uniformly over the range it spans in the structured data: its points are far apart, most
pairs negligible) and ``dense-noise`` (uniform in a cube with typical pair distance ~8 h:
every pair matters, pruning cannot help).
Bandwidth 0.015 (the default).

For each size N (interleaved rounds, medians of CPU time -- the machine is shared, so CPU
seconds of this process, all its threads, are steadier than wall time; the load average is
printed) it prints the dense float32 pass (the anchor), the dense float64 pass, the pruned
float64 (tolerance 1e-10) and float32 (tolerance 1e-7) passes, the ratio anchor / pruned, the
share of pairs each pruned pass computes, the largest ``|log p|`` difference of each pass from
dense float64 (nats, = the relative difference of a kernel sum; dense float32's own for
comparison), the largest reported skipped-mass bound, and the share of pairs that *any* exact
pruning must keep at the tolerance (``ideal``: per row, the smallest set of terms whose
complement sums to at most 1e-10 of the row's sum, on a sample of rows) -- the ceiling of what
pruning can save on these data. Then the growth exponent of each column fitted over the sizes
(time ~ N^a) and the projected time at N = 10^6.

Usage::

    python benchmarks/quests_pruning.py [--sizes 10000 20000 40000 80000 160000] [--repeats 2]
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


def ideal_share(x, h, tolerance, n_rows=300, seed=3):
    """Share of pairs an exact pruning must compute: per sampled row, all terms but the
    smallest ones summing to at most ``tolerance`` of the row's sum."""
    from scipy.spatial.distance import cdist

    rows = np.random.default_rng(seed).choice(len(x), min(n_rows, len(x)), replace=False)
    shares = []
    for r in rows:
        t = np.sort(np.exp(-cdist(x[r:r + 1], x, "sqeuclidean")[0] / (2 * h * h)))
        skip = np.searchsorted(np.cumsum(t), tolerance * t.sum(), side="right")
        shares.append(1.0 - skip / len(x))
    return float(np.mean(shares))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000, 40_000, 80_000, 160_000])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data", nargs="+", default=["phases", "noise"], choices=["phases", "noise", "dense-noise"])
    args = parser.parse_args(argv)

    import os

    from atomscore.quests.kernels import cells, gaussian

    full = phases(max(args.sizes))
    gaussian.entropy(full[:2000], H, prune=True)  # imports and first calls out of the timings
    print(f"load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}; "
          f"threads {gaussian.resolve_threads(None)}; times: CPU seconds of this process")
    for kind in args.data:
        data = {"phases": full, "noise": noise_like(full), "dense-noise": dense_noise(full)}[kind]
        print(f"\n{kind}: entropy, h = {H}; pruned f64 at tolerance {cells.TOLERANCE['float64']:g}, "
              f"f32 at {cells.TOLERANCE['float32']:g}")
        print(f"{'N':>7} {'dense f32':>9} {'dense f64':>9} {'pr f64':>7} {'pr f32':>7} {'f32/pr64':>8} "
              f"{'f32/pr32':>8} {'kept64':>6} {'kept32':>6} {'ideal':>6} {'err d32':>8} {'err p64':>8} "
              f"{'err p32':>8} {'dH rel':>8} {'bound64':>8} {'bound32':>8}")
        cols = {"d32": [], "d64": [], "p64": [], "p32": []}
        for n in args.sizes:
            x = data[:n]
            t = {key: [] for key in cols}
            out = {}
            for _ in range(args.repeats):  # interleaved rounds
                for key, prec, prune in (("d32", "float32", False), ("d64", "float64", False),
                                         ("p64", "float64", True), ("p32", "float32", True)):
                    report = {}
                    t0 = time.process_time()
                    logp = gaussian._log_sums(x, x, True, np.array([H]), prec, gaussian.DEFAULT_TILE,
                                              gaussian.resolve_threads(None),
                                              prune=cells.TOLERANCE[prec] if prune else None, report=report)
                    t[key].append(time.process_time() - t0)
                    out[key] = (logp[:, 0], report)
            med = {key: statistics.median(v) for key, v in t.items()}
            for key in cols:
                cols[key].append(med[key])
            dense = out["d64"][0]
            err = {key: float(np.max(np.abs(out[key][0] - dense))) for key in ("d32", "p64", "p32")}
            h_rel = abs(float(np.mean(out["p64"][0] - dense)) / (np.log(n) - float(np.mean(dense))))
            ideal = ideal_share(x, H, cells.TOLERANCE["float64"])
            print(f"{n:>7} {med['d32']:>9.2f} {med['d64']:>9.2f} {med['p64']:>7.2f} {med['p32']:>7.2f} "
                  f"{med['d32'] / med['p64']:>8.2f} {med['d32'] / med['p32']:>8.2f} "
                  f"{out['p64'][1]['pairs_kept']:>6.3f} {out['p32'][1]['pairs_kept']:>6.3f} {ideal:>6.3f} "
                  f"{err['d32']:>8.1e} {err['p64']:>8.1e} {err['p32']:>8.1e} {h_rel:>8.1e} "
                  f"{float(out['p64'][1]['skipped_bound'].max()):>8.1e} "
                  f"{float(out['p32'][1]['skipped_bound'].max()):>8.1e}", flush=True)
        if len(args.sizes) > 1:
            print("growth exponent (time ~ N^a) and projected CPU time at N = 10^6:")
            proj = {}
            for key, label in (("d32", "dense f32"), ("d64", "dense f64"), ("p64", "pruned f64"), ("p32", "pruned f32")):
                a, proj[key] = fit_exponent(args.sizes, cols[key])
                print(f"  {label:<11} a = {a:.2f}   10^6: {proj[key] / 60:.1f} min")
            print(f"  projected ratio dense f32 / pruned at 10^6: f64 {proj['d32'] / proj['p64']:.1f}x, "
                  f"f32 {proj['d32'] / proj['p32']:.1f}x")
    print(f"load average at end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
