"""FIMMatchingScore.compute_batch vs the bare CLARABEL solve of the same problem (issue 27 item 4).

Problems as benchmarks/fim_matching.py (random rank-3 FIMs over P = 4 parameters, a
feasible target). For each M, in interleaved rounds (medians): the whole ``compute_batch``
(checks, preconditioning, problem set-up, solve, selection and its checks) and the anchor,
``cvxpy.Problem.solve(solver='CLARABEL')`` of the problem ``information_matching.ConvexOpt``
builds from the same preconditioned FIMs (its build excluded: cvxpy's compilation and
CLARABEL included). Also printed: the parts of ``compute_batch`` (input checks, problem
build, solve, selection), and the ratio to the anchor (goal <= 1.3).

Usage::

    python benchmarks/fim_matching_overhead.py [--sizes 1000 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fim_matching import configs, problem

    from atomscore.fim.matching import FIMMatchingScore, candidate_fims
    from atomscore.fim.matching_problem import MatchingProblem

    warm_fims, warm_target = problem(50, seed=1)  # imports and first-call set-up, outside the timings
    FIMMatchingScore().compute_batch(configs(warm_fims), warm_target)
    print(f"{'M':>6} {'compute_batch s':>15} {'bare CLARABEL s':>15} {'ratio':>6}   parts: checks / build / solve / select")
    for m in args.sizes:
        fims, target = problem(m)
        cfgs = configs(fims)
        whole, bare, parts = [], [], []
        for _ in range(args.rounds):
            t0 = time.perf_counter()
            FIMMatchingScore().compute_batch(cfgs, target)
            whole.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            checked = candidate_fims(cfgs)
            t1 = time.perf_counter()
            mp = MatchingProblem(target, checked)
            t2 = time.perf_counter()
            mp.solve()
            t3 = time.perf_counter()
            mp.select()
            t4 = time.perf_counter()
            parts.append((t1 - t0, t2 - t1, t3 - t2, t4 - t3))
            fresh = MatchingProblem(target, checked)  # the same problem, built again, solved bare
            t0 = time.perf_counter()
            fresh.problem.solve(solver="CLARABEL")
            bare.append(time.perf_counter() - t0)
        w, b = statistics.median(whole), statistics.median(bare)
        p = [statistics.median(x) for x in zip(*parts)]
        print(f"{m:>6} {w:>15.3f} {b:>15.3f} {w / b:>6.2f}   {p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f} / {p[3]:.3f}",
              flush=True)


if __name__ == "__main__":
    main()
