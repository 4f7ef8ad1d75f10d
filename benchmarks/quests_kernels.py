"""QUESTS kernel sums: ours (atomscore.quests.kernels.gaussian, float64 and float32) vs the quests package.

Measured side by side in one run, on the same descriptors: QUESTS descriptors (k=32,
cutoff 5 Å, via the quests package) of generated structures -- rattled and strained Si
diamond, Cu fcc and C60 molecules -- for N = 2,000 / 10,000 / 30,000 environments.

For each N and each task
  * entropy: H of the N environments (``quests.entropy.entropy``),
  * dH: delta entropy of N/4 query environments (more strongly rattled structures)
    against the N (``quests.entropy.delta_entropy``),
it prints the median wall time of the repeats, the ratio quests/ours, the peak extra
resident memory during the call (RSS sampled every 2 ms, minus the RSS before it), and
the largest error against quests (relative for H, absolute for dH over the entries
quests gives finite with a normal (not subnormal) kernel sum, i.e. dH < 708 nats -- above
that quests' sum has lost digits, ours is exact by log-sum-exp; "inf rows" counts queries
where quests gives +inf and we do not).

Usage::

    python benchmarks/quests_kernels.py [--sizes 2000 10000 30000] [--repeats 3]
        [--quests-max-n 30000] [--threads N]

At N = 30,000 quests needs about 7 GB and tens of seconds, so it runs once there (or is
skipped with a note above ``--quests-max-n``).
"""

from __future__ import annotations

import argparse
import os
import statistics
import threading
import time

import numpy as np


SUBNORMAL_DH = -np.log(np.finfo(np.float64).tiny)  # 708.4 nats


def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakRSS:
    """Peak resident memory above the level at entry, sampled by a background thread."""

    def __enter__(self):
        self.base = rss_bytes()
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())
        self.extra = self.peak - self.base


def measure(fn, repeats):
    """(result, median seconds, max peak extra bytes) over ``repeats`` calls."""
    times, extras, result = [], [], None
    for _ in range(repeats):
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
        extras.append(mem.extra)
    return result, statistics.median(times), max(extras)


def structures(n_env, rattle, seed):
    """Rattled, strained Si diamond / Cu fcc cells and C60 molecules, about ``n_env`` atoms."""
    from ase.build import bulk, molecule

    rng = np.random.default_rng(seed)
    bases = [bulk("Si", "diamond", 5.43, cubic=True).repeat((3, 3, 3)),
             bulk("Cu", "fcc", 3.61, cubic=True).repeat((4, 4, 4)),
             molecule("C60")]
    out, total, i = [], 0, 0
    while total < n_env:
        atoms = bases[i % 3].copy()
        if atoms.pbc.any():
            strain = np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))
            atoms.set_cell(atoms.cell @ (strain + strain.T) / 2, scale_atoms=True)
        atoms.rattle(rng.uniform(*rattle), seed=int(rng.integers(2**31)))
        out.append(atoms)
        total += len(atoms)
        i += 1
    return out


def descriptors(n_env, rattle, seed):
    from atomscore.quests.descriptor import QUESTSDescriptor

    x = np.vstack(QUESTSDescriptor(cutoff=5.0, k=32).compute_batch(structures(n_env, rattle, seed), progress=False))
    return np.ascontiguousarray(x[:n_env])


def fmt_mb(nbytes):
    return f"{nbytes / 2**20:8.0f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2000, 10000, 30000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quests-max-n", type=int, default=30000,
                        help="run quests only up to this N (it needs ~7 GB at 30k)")
    parser.add_argument("--bandwidth", type=float, default=0.015)
    parser.add_argument("--threads", type=int, default=None, help="threads for both (default: available CPUs)")
    args = parser.parse_args(argv)

    from quests import entropy as Q

    from atomscore.quests.kernels import gaussian as G

    threads = args.threads or G.default_threads()
    try:
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    except ImportError:
        pass
    h = args.bandwidth
    warm = np.random.default_rng(0).random((300, 63))
    Q.entropy(warm, h), Q.delta_entropy(warm[:10], warm, h)  # numba compilation outside the timings

    print(f"QUESTS kernel sums, bandwidth {h}, {threads} threads (quests: numba; ours: tiles), "
          f"median of {args.repeats} repeats")
    header = (f"{'task':<8}{'N':>7}{'M':>7} {'impl':<10}{'time s':>9}{'quests/ours':>12}"
              f"{'peak MB':>9}  max error vs quests")
    print(header)
    print("-" * len(header))
    for n in args.sizes:
        x = descriptors(n, (0.01, 0.1), seed=n)
        y = descriptors(n // 4, (0.1, 0.3), seed=n + 1)
        run_quests = n <= args.quests_max_n
        q_repeats = args.repeats if n <= 10000 else 1
        for task in ("entropy", "dH"):
            if task == "entropy":
                calls = {
                    "quests": lambda: Q.entropy(x, h),
                    "ours f64": lambda: G.entropy(x, h, n_threads=threads),
                    "ours f32": lambda: G.entropy(x, h, precision="float32", n_threads=threads),
                }
                m = n
            else:
                calls = {
                    "quests": lambda: Q.delta_entropy(y, x, h),
                    "ours f64": lambda: G.delta_entropy(y, x, h, n_threads=threads),
                    "ours f32": lambda: G.delta_entropy(y, x, h, precision="float32", n_threads=threads),
                }
                m = len(y)
            results = {}
            for name in ("ours f64", "ours f32", "quests"):
                if name == "quests" and not run_quests:
                    continue
                with np.errstate(divide="ignore"):
                    results[name] = measure(calls[name], q_repeats if name == "quests" else args.repeats)
            tq = results["quests"][1] if run_quests else None
            for name, (value, t, extra) in results.items():
                ratio = f"{tq / t:11.1f}x" if tq is not None else f"{'n/a':>12}"
                err = ""
                if run_quests and name != "quests":
                    ref = results["quests"][0]
                    if task == "entropy":
                        err = f"{abs(value - ref) / abs(ref):.2e} relative"
                    else:
                        # quests' sum is subnormal above ~708 nats: its own value loses digits there
                        normal = np.isfinite(ref) & (ref < SUBNORMAL_DH)
                        sub = int((np.isfinite(ref) & ~normal).sum())
                        err = (f"{np.max(np.abs(value[normal] - ref[normal])):.2e} absolute "
                               f"({int((~np.isfinite(ref)).sum())} inf rows in quests, "
                               f"{int((~np.isfinite(value)).sum())} in ours; {sub} subnormal rows excluded)")
                print(f"{task:<8}{n:>7}{m:>7} {name:<10}{t:9.3f}{ratio}{fmt_mb(extra)}  {err}", flush=True)
            if not run_quests:
                print(f"{'':<8}{n:>7}{m:>7} quests     skipped (N > --quests-max-n {args.quests_max_n}; ~7 GB at 30k)")
        del x, y


if __name__ == "__main__":
    main()
