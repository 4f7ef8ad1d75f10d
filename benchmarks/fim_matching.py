"""FIMMatchingScore at M candidates: CLARABEL (the default) vs SDPA (issue 16, item 3).

Candidates: random rank-3 FIMs J^T J over P = 4 parameters (scales within 10^+-1), target a
rank-2 FIM times 20 -- feasible, as in tests/test_fim_matching.py. For each M, in one run,
``FIMMatchingScore.compute_batch`` (validation, preconditioning, solve, checks) with the
default solver and with ``solver_kwargs={'solver': 'SDPA'}`` (up to ``--sdpa-max-m``: SDPA
scales as M^2.4, minutes and ~1 GB at M = 10,000). Printed: wall time, peak extra memory,
the ratio SDPA / CLARABEL, the objective (sum of weights) of each, and whether SDPA needed
the fallback. Then the SDPA false-infeasible case (10 candidates, target 1e-3 I).

Run: ``.venv/bin/python benchmarks/fim_matching.py [--sizes 100 1000 10000] [--sdpa-max-m 2000]``
"""

from __future__ import annotations

import argparse
import os
import threading
import time

import numpy as np


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measured(fn):
    base = peak = rss()
    stop = threading.Event()

    def sample():
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss())
            time.sleep(0.01)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    t0 = time.perf_counter()
    try:
        out = fn()
    finally:
        stop.set()
        t.join()
    return out, time.perf_counter() - t0, (peak - base) / 2**20


def problem(m, p=4, rank=3, seed=0):
    rng = np.random.default_rng(seed)
    scales = 10 ** rng.uniform(-1, 1, size=p)
    jac = rng.normal(size=(m, rank, p)) * scales
    fims = np.einsum("mri,mrj->mij", jac, jac)
    t = rng.normal(size=(2, p)) * scales
    return fims, 20 * t.T @ t


def configs(fims):
    from ase import Atoms

    out = []
    for fim in fims:
        a = Atoms("Si", positions=[[0, 0, 0]])
        a.info["fim_training_set_score"] = fim
        out.append(a)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--sdpa-max-m", type=int, default=2000)
    args = parser.parse_args(argv)
    from atomscore.fim.matching import FIMMatchingScore, installed_solvers

    have_sdpa = "SDPA" in installed_solvers()
    print(f"FIMMatchingScore, P = 4 (load average {os.getloadavg()[0]:.1f})")
    print(f"{'M':>7} {'solver':<18}{'time s':>9}{'peak MB':>9}{'SDPA/CLAR':>10}  objective, selected")
    for m in args.sizes:
        fims, target = problem(m)
        cfgs = configs(fims)
        runs = [("CLARABEL (default)", None)]
        if have_sdpa and m <= args.sdpa_max_m:
            runs.append(("SDPA", {"solver": "SDPA"}))
        base = None
        for name, kw in runs:
            score = FIMMatchingScore()
            w, t, mb = measured(lambda: score.compute_batch(cfgs, target, solver_kwargs=kw))
            meta = score.metadata_of(w)
            base = t if base is None else base
            note = f" (fallback from {meta['fallback']['from_status']})" if "fallback" in meta else ""
            print(f"{m:>7} {name:<18}{t:9.2f}{mb:9.0f}{t / base:9.1f}x  {sum(w):.6g}, "
                  f"{meta['n_selected']}{note}", flush=True)
        if have_sdpa and m > args.sdpa_max_m:
            print(f"{m:>7} SDPA               skipped (M > --sdpa-max-m {args.sdpa_max_m})")

    rng = np.random.default_rng(5)
    scales = 10 ** rng.uniform(-2, 2, size=4)
    fims = [(lambda j: j.T @ j)(rng.normal(size=(3, 4)) * scales) for _ in range(10)]
    print("\nSDPA false-infeasible case (10 candidates, target 1e-3 I):")
    for name, kw in (("default", None), ("SDPA", {"solver": "SDPA"})):
        if kw and not have_sdpa:
            continue
        score = FIMMatchingScore()
        w = score.compute_batch(configs(fims), 1e-3 * np.eye(4), solver_kwargs=kw)
        meta = score.metadata_of(w)
        print(f"  {name:<8} status {meta['status']}, solver {meta['solver']}, objective {sum(w):.6g}, "
              f"fallback {meta.get('fallback')}")


if __name__ == "__main__":
    main()
