"""LTAU from a real MACE run: logging cost vs training cost, descriptor rate, calibration vs QUESTS dH.

Trains the tiny MACE of issue 25 (16 channels, L = 0, 2 interactions, r_max 4 Å) with MACE's
own trainer on 50 SW-labelled 16-atom silicon cells, then measures in the same run:

- training CPU time per epoch: the CPU time of MACE's trainer run for N epochs minus that of a
  run of 2 epochs (start-up, data loading and final evaluation cancel), over N - 2; one thread.
  CPU time, not wall time: the development machine is shared, and its load changes between
  phases (wall times are printed too);
- logging CPU time per epoch: ``atomscore.ltau.mace.error_logs`` over every checkpoint (in the
  model's float64, and in float32), over the number of epochs (goal: <= 20 % of an epoch's
  training);
- descriptor rate: ``atomscore.ltau.mace.descriptors`` (batched) against
  ``MACECalculator.get_descriptors`` one configuration at a time, atoms per second;
- on 20 held-out cells (rattled up to 0.25 Å): the calibration report of LTAU for k = 1, 3, 5,
  10, 20 neighbours, next to QUESTS dH's ranking of the same errors.

Usage: python benchmarks/ltau_training.py [--epochs 20] [--threads 1]
"""

import argparse
import re
import resource
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def epoch_seconds(log_text):
    """Seconds between MACE's consecutive 'Epoch N:' log lines (each: one epoch's training and validation)."""
    stamps = [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f")
              for m in re.finditer(r"^(\S+ \S+) INFO: Epoch \d+:", log_text, re.M)]
    return np.diff([s.timestamp() for s in stamps])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from mace.calculators import MACECalculator
    from si_training import TINY_MACE, si_configs

    from atomscore import LTAUForcesUQScore
    from atomscore.io import write_data
    from atomscore.ltau import calibration, mace
    from atomscore.quests import QUESTSDeltaEntropyScore
    from atomscore.quests.descriptor import QUESTSDescriptor

    folder = Path(tempfile.mkdtemp(prefix="ltau_training_"))
    train, held = si_configs(50, seed=0), si_configs(20, seed=1, rattle=(0.02, 0.25))
    write_data(folder / "train.xyz", train)
    def children_cpu():
        usage = resource.getrusage(resource.RUSAGE_CHILDREN)
        return usage.ru_utime + usage.ru_stime

    cpu = {}
    for epochs, name in ((2, "short"), (args.epochs, "tiny")):
        before, start = children_cpu(), time.perf_counter()
        model, checkpoints = mace.train(folder / "train.xyz", folder / name, name=name, epochs=epochs,
                                        threads=args.threads, **TINY_MACE)
        cpu[epochs] = children_cpu() - before
        wall = time.perf_counter() - start
    train_epoch = (cpu[args.epochs] - cpu[2]) / (args.epochs - 2)
    spacing = float(np.median(epoch_seconds((folder / "tiny" / "atomscore_train.log").read_text())))

    def logged(dtype):
        start, wall_start = time.process_time(), time.perf_counter()
        logs = mace.error_logs(model, checkpoints, train, forces_key="REF_forces", dtype=dtype)
        return logs, (time.process_time() - start) / len(checkpoints), (time.perf_counter() - wall_start) / len(checkpoints)

    logs, log_epoch, log_wall = logged(None)
    logs32, log_epoch32, _ = logged("float32")
    print(f"training: {cpu[args.epochs]:.1f} s CPU for {args.epochs} epochs ({wall:.1f} s wall), {cpu[2]:.1f} s CPU "
          f"for 2; one epoch {train_epoch:.3f} s CPU (wall: {spacing:.2f} s between MACE's epoch lines)")
    print(f"logging one epoch (45 training cells + 5 validation = 800 atoms, batched, float64): {log_epoch:.3f} s CPU "
          f"({log_wall:.2f} s wall) = {100 * log_epoch / train_epoch:.1f} % of an epoch's training (goal <= 20 %)")
    print(f"logging one epoch in float32 (dtype='float32'): {log_epoch32:.3f} s CPU = "
          f"{100 * log_epoch32 / train_epoch:.1f} %; largest change of an error {np.abs(logs32 - logs).max():.2g} eV/Å")

    start = time.process_time()
    train_x = mace.descriptors(model, train)
    batched = time.process_time() - start
    calc = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float64")
    start = time.process_time()
    for atoms in train:
        calc.get_descriptors(atoms)
    single = time.process_time() - start
    n_atoms = sum(len(a) for a in train)
    print(f"descriptors: {n_atoms / batched:.0f} atoms per CPU second batched (model load included), "
          f"{n_atoms / single:.0f} by get_descriptors one configuration at a time; ratio {single / batched:.2f}")

    queries = mace.attach(model, held)
    predicted = np.concatenate(mace.forces(model, queries))
    true = np.linalg.norm(predicted - np.concatenate([a.arrays["REF_forces"] for a in held]), axis=1)
    errors = np.split(true, len(held))
    score = LTAUForcesUQScore(np.concatenate(train_x), logs, from_error_logs=True, error_logs_norm=True)
    print(f"held-out: {len(held)} cells, {true.size} atoms, mean true error {true.mean():.4f} eV/Å")
    print(f"{'k':>3} {'Spearman/atom':>13} {'Spearman/config':>15} {'miscal. area':>12} {'within 0.5':>10} "
          f"{'within 0.9':>10} {'mean UQ':>8}")
    for k in (1, 3, 5, 10, 20):
        r, _, _ = calibration.ltau_calibration(score, queries, errors, num_nearest_neighbors=k)
        print(f"{k:>3} {r['spearman_atoms']:>13.3f} {r['spearman_configurations']:>15.3f} "
              f"{r['miscalibration_area']:>12.3f} {r['within_quantile'][0.5]:>10.3f} {r['within_quantile'][0.9]:>10.3f} "
              f"{r['mean_uncertainty']:>8.4f}")
    for label, epochs in (("last half of the epochs", slice(len(checkpoints) // 2, None)),
                          ("every 2nd epoch", slice(None, None, 2))):
        part = LTAUForcesUQScore(np.concatenate(train_x), logs[epochs], from_error_logs=True, error_logs_norm=True)
        r, _, _ = calibration.ltau_calibration(part, queries, errors, num_nearest_neighbors=5)
        print(f"  k=5, {label}: Spearman/atom {r['spearman_atoms']:.3f}, miscalibration area "
              f"{r['miscalibration_area']:.3f}, within 0.9 {r['within_quantile'][0.9]:.3f}")
    describe = QUESTSDescriptor()
    reference = np.concatenate([a.arrays["descriptors"] for a in describe.attach(train, progress=False)])
    dh = QUESTSDeltaEntropyScore().compute_batch(describe.attach(held, progress=False), "DELTA_ENTROPY",
                                                 reference_set=reference)
    r = calibration.calibration_report(dh, errors)
    print(f"QUESTS dH: Spearman/atom {r['spearman_atoms']:.3f}, Spearman/config {r['spearman_configurations']:.3f} "
          "(no predicted distribution: no miscalibration area)")


if __name__ == "__main__":
    main()
