"""A 200-configuration run through SLURM against the same run through LocalWorkflow.

200 rattled 8-atom diamond Si configurations with 5-dimensional per-atom descriptors,
``QUESTSDeltaEntropyScore`` (DELTA_ENTROPY against a 400-point reference set, bandwidth 0.3),
``batch_size=20`` -> 10 job folders per run. Timed side by side in one run (medians of
``--repeats``), each from ``score.run`` to the gathered results (``block_until_completed`` +
``data_from_calc_ids``):

- ``slurm``: :class:`~atomscore.jobs.scheduler.SlurmWorkflow` on the single-node cluster of
  ``scripts/slurm-local`` (started here if it is not running, and then stopped again);
- ``local``: :class:`~atomscore.jobs.workflow.LocalWorkflow` with as many processes as SLURM
  has CPUs.

Also checked: both give identical numbers. The difference is what the scheduler costs
(``sbatch``, queueing, ``squeue`` polling every ``--poll`` seconds) on top of the same jobs.

Run (as root, with slurmctld slurmd slurm-client munge installed):
``.venv/bin/python benchmarks/slurm_vs_local.py [--repeats 3] [--poll 1.0]``
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk

REPO = Path(__file__).resolve().parents[1]
SLURM_LOCAL = REPO / "scripts" / "slurm-local"


def make_configs(n, seed=0):
    rng = np.random.default_rng(seed)
    configs = []
    for i in range(n):
        atoms = bulk("Si", "diamond", 5.43, cubic=True)
        atoms.rattle(0.05, seed=seed + i)
        atoms.arrays["descriptors"] = rng.random((len(atoms), 5))
        configs.append(atoms)
    return configs


def timed_run(score, configs, args, workflow, batch_size):
    start = time.perf_counter()
    ids = score.run("bench", configs, args, workflow=workflow, batch_size=batch_size)
    workflow.block_until_completed(ids)
    results = score.data_from_calc_ids(ids)
    return time.perf_counter() - start, len(ids), results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--poll", type=float, default=1.0, help="SlurmWorkflow poll_interval (s)")
    opts = parser.parse_args()

    from atomscore.jobs.scheduler import SlurmWorkflow
    from atomscore.jobs.workflow import LocalWorkflow
    from atomscore.quests import QUESTSDeltaEntropyScore

    started_here = subprocess.run([str(SLURM_LOCAL), "status"], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL, timeout=60).returncode != 0
    if started_here:
        subprocess.run([str(SLURM_LOCAL), "start"], check=True, timeout=180)
    cpus = int(subprocess.run(["sinfo", "-h", "-o", "%c"], stdout=subprocess.PIPE, text=True, timeout=30,
                              check=True).stdout.split()[0])
    configs = make_configs(opts.configs)
    args = {"score_quantity": "DELTA_ENTROPY", "reference_set": np.random.default_rng(1).random((400, 5)),
            "bandwidth": 0.3, "descriptors_key": "descriptors"}
    score = QUESTSDeltaEntropyScore()
    times = {"slurm": [], "local": []}
    results = {}
    tmp = Path(tempfile.mkdtemp(prefix="atomscore-bench-slurm-"))
    try:
        for repeat in range(opts.repeats):
            for name in ("slurm", "local"):  # interleaved, so both see the same machine load
                root = tmp / f"{name}{repeat}"
                if name == "slurm":
                    workflow = SlurmWorkflow(root_directory=root, walltime=600, poll_interval=opts.poll)
                else:
                    workflow = LocalWorkflow(root_directory=root, nprocs=cpus)
                seconds, n_jobs, results[name] = timed_run(score, configs, args, workflow, opts.batch_size)
                times[name].append(seconds)
                print(f"  {name:5s} repeat {repeat}: {seconds:6.2f} s ({n_jobs} jobs)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if started_here:
            subprocess.run([str(SLURM_LOCAL), "stop"], timeout=180)
    key = "quests_delta_entropy_score"
    same = all(np.array_equal(a.arrays[key], b.arrays[key]) for a, b in zip(results["slurm"], results["local"]))
    slurm, local = statistics.median(times["slurm"]), statistics.median(times["local"])
    print(f"{opts.configs} configurations, batch_size {opts.batch_size}, {cpus} CPUs, "
          f"median of {opts.repeats} (os.cpu_count()={os.cpu_count()}):")
    print(f"  SlurmWorkflow  {slurm:7.2f} s")
    print(f"  LocalWorkflow  {local:7.2f} s")
    print(f"  ratio slurm/local {slurm / local:5.2f}; results identical: {same}")
    if not same or len(results["slurm"]) != opts.configs:
        raise SystemExit("SLURM and LocalWorkflow results differ")


if __name__ == "__main__":
    main()
