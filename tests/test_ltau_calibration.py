"""atomscore.ltau.calibration and LTAUEstimator.cdf_at without a trained model (fast).

References: closed forms of the miscalibration area (evenly spread PIT values: 1/(4n); all 0
or all 1: 1/2), the area on a dense grid, a brute-force numpy CDF of the averaged neighbour
PDFs, ``scipy.stats.spearmanr``, and the scalar-tolerance CDF of ``predict_full(atol=)``.
The MACE and NequIP end-to-end checks are in tests/test_ltau_mace.py and test_ltau_nequip.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from scipy.stats import spearmanr

from atomscore import LTAUForcesUQScore
from atomscore.errors import InputError
from atomscore.io import write_data
from atomscore.ltau import calibration

ROOT = Path(__file__).resolve().parents[1]


def test_miscalibration_area_closed_forms_and_a_dense_grid():
    n = 40
    assert calibration.miscalibration_area((np.arange(n) + 0.5) / n) == pytest.approx(1 / (4 * n), abs=1e-15)
    assert calibration.miscalibration_area(np.zeros(7)) == pytest.approx(0.5, abs=1e-15)
    assert calibration.miscalibration_area(np.ones(7)) == pytest.approx(0.5, abs=1e-15)
    pit = np.random.default_rng(0).beta(0.5, 2.0, size=300)
    grid = np.linspace(0, 1, 400001)
    curve = np.searchsorted(np.sort(pit), grid, side="right") / pit.size
    assert calibration.miscalibration_area(pit) == pytest.approx(np.trapezoid(np.abs(curve - grid), grid), abs=1e-5)
    with pytest.raises(InputError, match=r"within \[0, 1\]"):
        calibration.miscalibration_area([0.2, 1.5])


def toy_score(seed=0, n_train=60, dim=4):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_train, dim))
    logs = np.abs(rng.normal(0.1, 0.05, size=(30, n_train))) * (1 + np.abs(x[:, 0]))
    return LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=25), x, logs


def test_cdf_at_is_the_cdf_of_the_averaged_neighbour_pdfs():
    score, x, _ = toy_score()
    est = score.estimator
    rng = np.random.default_rng(1)
    q = rng.normal(size=(50, 4))
    errors = np.abs(rng.normal(0.15, 0.1, size=50))
    errors[:3] = [0.0, est.bins[-1] * 2, est.bins[5]]  # below, above and on an edge
    got = est.cdf_at(q, errors, k=3)
    # brute force: exact k-NN in numpy, the store's PDFs, the CDF of their mean interpolated in the bin
    pdfs = np.asarray(est._store.rows(np.arange(len(x))))
    nn = np.argsort(((q[:, None] - x[None]) ** 2).sum(axis=2), axis=1)[:, :3]
    for i in range(50):
        cum = np.concatenate([[0], np.cumsum(pdfs[nn[i]].mean(axis=0) * est.widths)])
        assert got[i] == pytest.approx(np.clip(np.interp(errors[i], est.bins, cum), 0, 1), abs=1e-12)
    # the scalar tolerance of predict_full is the same thing for one error for all
    same = np.full(50, 0.12)
    np.testing.assert_allclose(est.cdf_at(q, same, k=3), est.predict_full(q, k=3, atol=0.12).cdf, atol=1e-12)
    with pytest.raises(InputError, match="errors"):
        est.cdf_at(q, -errors, k=3)
    with pytest.raises(InputError, match="shape"):
        est.cdf_at(q, errors[:5], k=3)


def test_report_figures_against_scipy_and_refusals():
    rng = np.random.default_rng(2)
    uq = [rng.random(8) for _ in range(6)]
    errors = [u * 2 + 0.3 * rng.random(8) for u in uq]
    report = calibration.calibration_report(uq, errors)
    assert report["spearman_atoms"] == pytest.approx(spearmanr(np.concatenate(uq), np.concatenate(errors))[0],
                                                     abs=1e-12)
    means = [np.mean(u) for u in uq], [np.mean(e) for e in errors]
    assert report["spearman_configurations"] == pytest.approx(spearmanr(*means)[0], abs=1e-12)
    assert "miscalibration_area" not in report  # no predicted distribution, no calibration
    assert calibration.calibration_report([np.ones(5)], [np.arange(5.0)])["spearman_atoms"] is None
    with pytest.raises(InputError, match="expected configurations of"):
        calibration.calibration_report(uq, errors[:-1] + [np.ones(3)])
    with pytest.raises(InputError, match=">= 0"):
        calibration.calibration_report(uq, [-e for e in errors])
    with pytest.raises(InputError, match="finite"):
        calibration.calibration_report([np.array([np.nan, 1.0])], [np.ones(2)])
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    atoms.arrays["REF_forces"] = np.zeros((8, 3))
    with pytest.raises(InputError, match="two keys"):
        calibration.force_errors([atoms], "REF_forces", "REF_forces")
    with pytest.raises(InputError, match="no atoms.arrays\\['DFT'\\]"):
        calibration.force_errors([atoms], "REF_forces", "DFT")


def test_uq_command_reports_the_calibration_of_forces_in_the_file(tmp_path):
    score, x, logs = toy_score(seed=3)
    rng = np.random.default_rng(4)
    configs = []
    for i in range(4):
        atoms = bulk("Si", "diamond", 5.43, cubic=True)
        atoms.new_array("descriptors", rng.normal(size=(8, 4)) * (1 + i))
        atoms.new_array("REF_forces", rng.normal(size=(8, 3)))
        atoms.new_array("model_forces", atoms.arrays["REF_forces"] + rng.normal(scale=0.1 * (1 + i), size=(8, 3)))
        configs.append(atoms)
    write_data(tmp_path / "held.xyz", configs)
    np.save(tmp_path / "train.npy", x)
    np.save(tmp_path / "logs.npy", logs)
    env = dict(os.environ, PYTHONPATH=str(ROOT), MPLBACKEND="Agg")
    args = [sys.executable, "-m", "atomscore.cli", "uq", "held.xyz", "--train-descriptors", "train.npy",
            "--error-logs", "logs.npy", "--nbins", "25", "--reference-forces", "REF_forces",
            "--predicted-forces", "model_forces", "--calibration-plot", "cal.png", "-o", "uq.xyz"]
    proc = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    errors = [np.linalg.norm(a.arrays["model_forces"] - a.arrays["REF_forces"], axis=1) for a in configs]
    report, _, _ = calibration.ltau_calibration(score, configs, errors)
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("LTAU"))
    assert line.split()[1:] == [f"{report['spearman_atoms']:.3f}", f"{report['spearman_configurations']:.3f}",
                                f"{report['miscalibration_area']:.3f}"]
    assert (tmp_path / "cal.png").stat().st_size > 1000
    # an existing plot is refused before anything is written
    os.remove(tmp_path / "uq.xyz")
    again = subprocess.run(args, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert again.returncode == 2 and "cal.png" in again.stderr and not (tmp_path / "uq.xyz").exists()


def test_import_atomscore_imports_neither_trainer():
    code = ("import sys, atomscore, atomscore.ltau, atomscore.ltau.calibration, atomscore.cli; "
            "atomscore.cli.build_parser(); "
            "print(sorted(m for m in ('mace', 'nequip', 'e3nn', 'lightning') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
