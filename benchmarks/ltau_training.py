"""LTAU from a real MACE run: logging cost vs training cost, descriptor rate, calibration vs QUESTS dH.

Trains the tiny MACE of issue 25 (16 channels, L = 0, 2 interactions, r_max 4 Å) with MACE's
own trainer on 50 SW-labelled 16-atom silicon cells, then measures in the same run:

- training time per epoch: the spacing of MACE's own per-epoch log lines (one epoch's
  optimizer steps plus its validation), median over the epochs after the first;
- logging time per epoch: ``atomscore.ltau.mace.error_logs`` over every checkpoint, divided by
  the number of epochs (goal: <= 20 % of an epoch's training);
- descriptor rate: ``atomscore.ltau.mace.descriptors`` (batched) against
  ``MACECalculator.get_descriptors`` one configuration at a time, atoms per second;
- on 20 held-out cells (rattled up to 0.25 Å): the calibration report of LTAU for k = 1, 3, 5,
  10, 20 neighbours, next to QUESTS dH's ranking of the same errors.

Usage: python benchmarks/ltau_training.py [--epochs 20] [--threads 1]
"""

import argparse
import re
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
    start = time.perf_counter()
    model, checkpoints = mace.train(folder / "train.xyz", folder / "run", name="tiny", epochs=args.epochs,
                                    threads=args.threads, **TINY_MACE)
    wall = time.perf_counter() - start
    per_epoch = epoch_seconds((folder / "run" / "atomscore_train.log").read_text())
    train_epoch = float(np.median(per_epoch[1:] if per_epoch.size > 2 else per_epoch))

    start = time.perf_counter()
    logs = mace.error_logs(model, checkpoints, train, forces_key="REF_forces")
    log_epoch = (time.perf_counter() - start) / len(checkpoints)
    start = time.perf_counter()
    logs32 = mace.error_logs(model, checkpoints, train, forces_key="REF_forces", dtype="float32")
    log_epoch32 = (time.perf_counter() - start) / len(checkpoints)
    print(f"training: {wall:.1f} s for {args.epochs} epochs in all (with start-up); one epoch {train_epoch:.3f} s "
          f"(median of MACE's epoch spacing)")
    print(f"logging one epoch (45 training cells + 5 validation = 800 atoms, batched): {log_epoch:.3f} s "
          f"= {100 * log_epoch / train_epoch:.1f} % of an epoch's training (goal <= 20 %)")
    print(f"logging one epoch in float32 (dtype='float32'): {log_epoch32:.3f} s = "
          f"{100 * log_epoch32 / train_epoch:.1f} %; largest change of an error {np.abs(logs32 - logs).max():.2g} eV/Å")

    start = time.perf_counter()
    train_x = mace.descriptors(model, train)
    batched = time.perf_counter() - start
    calc = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float64")
    start = time.perf_counter()
    for atoms in train:
        calc.get_descriptors(atoms)
    single = time.perf_counter() - start
    n_atoms = sum(len(a) for a in train)
    print(f"descriptors: {n_atoms / batched:.0f} atoms/s batched (model load included), "
          f"{n_atoms / single:.0f} atoms/s by get_descriptors one configuration at a time; ratio {single / batched:.2f}")

    queries = mace.attach(model, held)
    loaded = mace.load_model(model)
    predicted = mace.predict_forces(loaded, mace._batches(loaded, queries, 32))
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
