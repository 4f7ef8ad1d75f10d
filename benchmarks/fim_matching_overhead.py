"""FIMMatchingScore.compute_batch vs the bare CLARABEL solve of the same problem (issue 27 item 4).

Problems as benchmarks/fim_matching.py (random rank-3 FIMs over P = 4 parameters, a
feasible target). For each M, in interleaved rounds (medians of wall and CPU time):

- ``whole``: ``FIMMatchingScore().compute_batch`` on the Atoms (input checks, provenance
  check, preconditioning, problem set-up, solve, the match checks, selection, metadata);
- ``bare`` (the anchor, goal whole / bare <= 1.3): ``cvxpy.Problem.solve(solver='CLARABEL')``
  of the very problem ``compute_batch`` solves (``MatchingProblem(...).problem``, built
  beforehand from the checked FIMs, the build not timed). It includes cvxpy's compilation
  to conic form, CLARABEL's set-up and solve, and cvxpy's unpacking of the solution --
  everything a user writing the problem in cvxpy themselves would pay;
- ``bare_IM``: the same for the problem as ``information_matching.ConvexOpt`` writes it
  from the same preconditioned FIMs (the previous anchor; its build not timed either);
- ``clarabel``: CLARABEL's own solve time inside ``bare`` (``problem.solver_stats``), for
  information: the part no cvxpy formulation can remove.

Also printed: the medians of the parts of ``compute_batch`` (checks / build / solve /
select, wall ms) and the load average before and after (the machine is shared).

Usage::

    python benchmarks/fim_matching_overhead.py [--sizes 100 1000 10000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time


def timed(fn):
    """``(result, wall s, CPU s)`` of ``fn()`` (CPU: this process, all threads)."""
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fim_matching import configs, problem
    from information_matching import ConvexOpt

    from atomscore.fim.matching import FIMMatchingScore, candidate_fims
    from atomscore.fim.matching_problem import MatchingProblem

    def convexopt_problem(mp):
        """The same preconditioned problem, written by information_matching.ConvexOpt."""
        opt = ConvexOpt({"fim": mp.fim_qoi_vec.reshape(mp.constraints[1].args[0].shape), "fim_scale": 1.0},
                        {k: {"fim": row.reshape(mp.constraints[1].args[0].shape), "fim_scale": 1.0}
                         for k, row in enumerate(mp.fim_configs_vec)})
        return opt.problem

    warm_fims, warm_target = problem(50, seed=1)  # imports and first-call set-up, outside the timings
    FIMMatchingScore().compute_batch(configs(warm_fims), warm_target)
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())}  "
          f"({os.cpu_count()} CPUs, {args.rounds} interleaved rounds, medians)")
    print(f"{'':>6} {'wall s':^42} {'CPU s':^33} {'whole / ...  (wall; CPU)':^34}")
    print(f"{'M':>6} {'whole':>10} {'bare':>10} {'bare_IM':>10} {'clarabel':>10} {'whole':>10} {'bare':>10} "
          f"{'bare_IM':>10} {'bare':>11} {'bare_IM':>11} {'clarabel':>9}   parts ms: checks/build/solve/select")
    for m in args.sizes:
        fims, target = problem(m)
        cfgs = configs(fims)
        rows, parts = [], []
        for _ in range(args.rounds):
            _, w_whole, c_whole = timed(lambda: FIMMatchingScore().compute_batch(cfgs, target))

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

            fresh = MatchingProblem(target, checked).problem  # the same problem, built again, solved bare
            _, w_bare, c_bare = timed(lambda: fresh.solve(solver="CLARABEL"))
            clarabel = fresh.solver_stats.solve_time
            other = convexopt_problem(mp)
            _, w_im, c_im = timed(lambda: other.solve(solver="CLARABEL"))
            rows.append((w_whole, w_bare, w_im, clarabel, c_whole, c_bare, c_im))
        med = [statistics.median(x) for x in zip(*rows)]
        w_whole, w_bare, w_im, clarabel, c_whole, c_bare, c_im = med
        p = [1e3 * statistics.median(x) for x in zip(*parts)]
        print(f"{m:>6} {w_whole:>10.4f} {w_bare:>10.4f} {w_im:>10.4f} {clarabel:>10.4f} {c_whole:>10.4f} "
              f"{c_bare:>10.4f} {c_im:>10.4f} {w_whole / w_bare:>5.2f};{c_whole / c_bare:>5.2f} "
              f"{w_whole / w_im:>5.2f};{c_whole / c_im:>5.2f} {w_whole / clarabel:>9.2f}   "
              f"{p[0]:.1f}/{p[1]:.1f}/{p[2]:.1f}/{p[3]:.2f}", flush=True)
    print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print("goal: whole / bare <= 1.3 at M = 1,000 and 10,000 (bare: cvxpy compile + CLARABEL of the same problem)")


if __name__ == "__main__":
    main()
