"""Exact QUESTS efficiency of N environments as one job vs row-block jobs, through the local SLURM.

Data: QUESTS descriptors (k=32, cutoff 5 Å) of the rattled/strained Si, Cu and C60
structures of benchmarks/quests_kernels.py, attached to the configurations, bandwidth 0.015.
``QUESTSEfficiencyScore.run`` through :class:`~atomscore.jobs.scheduler.SlurmWorkflow` on
the single-node cluster of ``scripts/slurm-local`` (started here if it is not running, and
stopped again), once with ``batch_size=1`` (one job: the symmetric pass, N²/2 pairs) and
once with ``--blocks`` row blocks (each block's rows against all N: N² pairs in total).
Printed: the time to write the folders, to the gathered result, the pairs computed, and the
relative difference of the two values (the reduction is exact: ~1e-15).

Usage (as root): ``python benchmarks/quests_block_jobs.py [--n 200000] [--blocks 8]``.
The issue's figure is N = 2·10⁵; on a loaded 2-core machine use ``--n 100000``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
REPO = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO / "scripts" / "slurm-local"


def dataset(n_env, h):
    from quests_kernels import structures

    from atomscore.quests.descriptor import QUESTSDescriptor

    configs = QUESTSDescriptor(cutoff=5.0, k=32).attach(structures(n_env, (0.01, 0.1), seed=n_env))
    return configs, sum(len(a) for a in configs)


def timed_run(score, configs, args, workflow, batch_size):
    t0 = time.perf_counter()
    ids = score.run("bench", configs, args, workflow=workflow, batch_size=batch_size)
    written = time.perf_counter() - t0
    workflow.block_until_completed(ids, timeout=7200)
    (result,) = score.data_from_calc_ids(ids, workflow=workflow)
    return written, time.perf_counter() - t0, len(ids), result[score.result_key]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="environments (about; whole structures)")
    parser.add_argument("--blocks", type=int, default=8)
    parser.add_argument("--bandwidth", type=float, default=0.015)
    parser.add_argument("--poll", type=float, default=1.0)
    opts = parser.parse_args(argv)

    from atomscore.jobs.scheduler import SlurmWorkflow
    from atomscore.quests import QUESTSEfficiencyScore

    t0 = time.perf_counter()
    configs, n = dataset(opts.n, opts.bandwidth)
    print(f"{len(configs)} configurations, {n} environments, descriptors in {time.perf_counter() - t0:.0f} s; "
          f"bandwidth {opts.bandwidth}; load {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs (shared machine)",
          flush=True)
    started_here = subprocess.run([str(SLURM_LOCAL), "status"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=60).returncode != 0
    if started_here:
        subprocess.run([str(SLURM_LOCAL), "start"], check=True, timeout=180)
    tmp = Path(tempfile.mkdtemp(prefix="atomscore-bench-blocks-"))
    score = QUESTSEfficiencyScore()
    args = {"score_quantity": "EFFICIENCY", "bandwidth": opts.bandwidth}
    batch = -(-len(configs) // opts.blocks)
    rows = {}
    try:
        for label, batch_size in (("one job", 1), (f"{opts.blocks} blocks", batch)):
            wf = SlurmWorkflow(root_directory=tmp / label.replace(" ", "_"), walltime=7200, poll_interval=opts.poll)
            written, total, jobs, value = timed_run(score, configs, args, wf, batch_size)
            pairs = n * (n + 1) / 2 if jobs == 1 else float(n) * n
            rows[label] = (written, total, jobs, value, pairs)
            print(f"  {label:>10}: {jobs} job(s), folders written in {written:5.1f} s, result after {total:7.1f} s, "
                  f"{pairs / 1e9:6.1f}e9 pairs, efficiency {value!r}", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if started_here:
            subprocess.run([str(SLURM_LOCAL), "stop"], timeout=180)
    (w1, t1, _, v1, _), (wb, tb, _, vb, _) = rows.values()
    print(f"blocks / one job: time {tb / t1:.2f}x; relative difference of the values {abs(vb - v1) / abs(v1):.1e}")
    if abs(vb - v1) > 1e-12 * abs(v1):
        raise SystemExit("block jobs and the single job differ by more than 1e-12")


if __name__ == "__main__":
    main()
