"""FIMTrainingSetScore with nprocs=2 vs nprocs=1 (issue 16, item 2).

Rattled diamond Si configurations, SW Si (OpenKIM), parameters A, B, sigma, gamma, lambda,
forces FIM (default central differences): 200 configurations of 64 atoms and 20 of 4,096
atoms. Each round runs nprocs=1 then nprocs=2 in a fresh state (the pool is made per call,
as a user's call does); rounds interleave. Printed: the best and the median wall time of
each, their ratios t(1) / t(2), and the CPU seconds spent in all (parent + worker processes,
from ``os.times``), whose ratio cpu(2) / cpu(1) is the pool's overhead: on two free cores
the speed-up is about 2 / that. Acceptance: >= 1.6 on 2 cores. On a shared machine the
wall ratios depend on what else runs (the load average is printed); the best round and
the CPU ratio are the steadier numbers.

Run: ``.venv/bin/python benchmarks/fim_pool.py [--repeats 3]``
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
PARAMS = ["A", "B", "sigma", "gamma", "lambda"]


def configurations(n, repeat, seed=0):
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
        a.positions += rng.normal(scale=0.1, size=a.positions.shape)
        out.append(a)
    return out


def run(configs, nprocs):
    from atomscore.fim.training_set import FIMTrainingSetScore

    return FIMTrainingSetScore().compute_batch(
        configs, "SENSITIVITY", potential={"potential_type": "KIM", "potential_args": {"kim_id": SW}},
        parameters_optimize={p: [["default"]] for p in PARAMS}, nprocs=nprocs)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"FIMTrainingSetScore nprocs=1 vs 2, median of {args.repeats} interleaved rounds, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'configs':>8}{'atoms':>7}{'best 1 s':>10}{'best 2 s':>10}{'ratio':>7}{'med 1 s':>9}{'med 2 s':>9}"
          f"{'ratio':>7}{'cpu 1 s':>9}{'cpu 2 s':>9}{'cpu2/cpu1':>10}  max|FIM1-FIM2|/max|FIM|")
    for n, repeat in ((200, 2), (20, 8)):
        configs = configurations(n, repeat)
        run(configs[:2], 1)  # the model's shared library loaded outside the timings
        times = {1: [], 2: []}
        cpu = {1: [], 2: []}
        out = {}
        for _ in range(args.repeats):
            for nprocs in (1, 2):
                c0 = os.times()
                t0 = time.perf_counter()
                out[nprocs] = run(configs, nprocs)
                times[nprocs].append(time.perf_counter() - t0)
                c1 = os.times()
                cpu[nprocs].append(sum(c1[:4]) - sum(c0[:4]))  # user + system, self + reaped children
        b1, b2 = min(times[1]), min(times[2])
        m1, m2 = statistics.median(times[1]), statistics.median(times[2])
        c1, c2 = statistics.median(cpu[1]), statistics.median(cpu[2])
        err = max(np.max(np.abs(a - b)) for a, b in zip(out[1], out[2])) / max(np.max(np.abs(a)) for a in out[1])
        print(f"{n:>8}{len(configs[0]):>7}{b1:10.2f}{b2:10.2f}{b1 / b2:6.2f}x{m1:9.2f}{m2:9.2f}{m1 / m2:6.2f}x"
              f"{c1:9.2f}{c2:9.2f}{c2 / c1:9.2f}x  {err:.1e}   (load {os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
