"""LTAU from a real MACE training run (atomscore.ltau.mace, atomscore.ltau.calibration, the commands).

A tiny MACE (16 channels, L = 0, 2 interactions, r_max 4 Å) is trained once per module by
MACE's own trainer (``atomscore.ltau.mace.train``, 8 epochs on 50 16-atom silicon cells
labelled by SW through ASE's KIM calculator; about a minute on one core). References:
``MACECalculator`` itself, one configuration at a time, with each checkpoint's weights loaded
into it (error logs), ``MACECalculator.get_descriptors`` (descriptors), and a direct numpy
computation of LTAU and its calibration figures from the true errors (brute-force
neighbours, ``np.histogram`` PDFs, ranks by ``argsort``, the miscalibration area on a dense grid).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mace", reason="needs atomscore[mace] (make installs it)")

import torch  # noqa: E402

from atomscore import LTAUForcesUQScore  # noqa: E402
from atomscore.errors import InputError  # noqa: E402
from atomscore.io import write_data  # noqa: E402
from atomscore.ltau import calibration, mace  # noqa: E402
from atomscore.ltau.md import UncertaintyCalculator  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))
from si_training import TINY_MACE, direct_ltau, ranks, si_configs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 8
K = 5


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mace")
    train, held_out = si_configs(50, seed=0), si_configs(12, seed=1, rattle=(0.02, 0.25))
    write_data(folder / "train.xyz", train)  # every digit, so the commands read the same configurations
    write_data(folder / "held_out.xyz", held_out)
    model, checkpoints = mace.train(folder / "train.xyz", folder / "run", name="tiny", epochs=EPOCHS, threads=1,
                                    **TINY_MACE)
    logs = mace.error_logs(model, checkpoints, train, forces_key="REF_forces")
    return dict(folder=folder, train=train, held_out=held_out, model=model, checkpoints=checkpoints, logs=logs)


def calculator_of(model, checkpoint=None):
    from mace.calculators import MACECalculator

    calc = MACECalculator(model_paths=str(model), device="cpu", default_dtype="float64")
    if checkpoint is not None:
        calc.models[0].load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)["model"])
    return calc


def test_every_epoch_is_kept_and_logged_in_the_training_atom_order(run):
    epochs = [mace.checkpoint_epoch(p) for p in run["checkpoints"]]
    assert epochs == list(range(EPOCHS))
    assert run["logs"].shape == (EPOCHS, 50 * 16, 3)
    # reference: MACECalculator, one configuration at a time, with the checkpoint's weights
    for e in (0, EPOCHS // 2, EPOCHS - 1):
        calc = calculator_of(run["model"], run["checkpoints"][e])
        for i in (0, 17, 49):
            atoms = run["train"][i].copy()
            atoms.calc = calc
            expected = atoms.get_forces() - run["train"][i].arrays["REF_forces"]
            np.testing.assert_allclose(run["logs"][e, 16 * i:16 * (i + 1)], expected, atol=1e-10)
    # training moved the errors: the last epoch's are smaller than the first's
    norms = np.linalg.norm(run["logs"], axis=2).mean(axis=1)
    assert norms[-1] < norms[0]
    # the order is the configurations': reversed configurations give reversed blocks
    few = run["train"][:3]
    back = mace.error_logs(run["model"], run["checkpoints"][-1:], few[::-1], forces_key="REF_forces")
    np.testing.assert_allclose(back[0, :16], run["logs"][-1, 32:48], atol=1e-10)


def test_float32_logging_is_the_float64_logs_to_force_precision(run):
    # reference: the float64 logs of the same checkpoints (forces of a few eV/Å in float32: ~1e-6 relative)
    cheap = mace.error_logs(run["model"], run["checkpoints"][-2:], run["train"], forces_key="REF_forces",
                            dtype="float32")
    assert 0 < np.abs(cheap - run["logs"][-2:]).max() < 1e-3
    with pytest.raises(InputError, match="dtype"):
        mace.error_logs(run["model"], run["checkpoints"][-1:], run["train"][:1], forces_key="REF_forces",
                        dtype="half")


def test_descriptors_are_those_of_get_descriptors_and_of_the_forward_pass(run):
    x = mace.descriptors(run["model"], run["held_out"])
    assert [d.shape for d in x] == [(16, 32)] * 12  # 16 invariant channels x 2 layers
    calc = calculator_of(run["model"])
    for i in (0, 5, 11):
        np.testing.assert_allclose(x[i], calc.get_descriptors(run["held_out"][i]), atol=1e-12)
    # the calculator's results come from the forward pass that gives the forces
    own = mace.calculator(run["model"])
    atoms = run["held_out"][5].copy()
    atoms.calc = own
    forces = atoms.get_forces()
    assert own.model_calls == 1
    np.testing.assert_allclose(own.results["descriptors"], x[5], atol=1e-12)
    ref = run["held_out"][5].copy()
    ref.calc = calc
    np.testing.assert_allclose(forces, ref.get_forces(), atol=1e-12)
    # and the batched forces of the held-out cells are MACECalculator's too
    np.testing.assert_allclose(mace.forces(run["model"], run["held_out"])[5], ref.get_forces(), atol=1e-12)


def test_ltau_on_held_out_configurations_and_its_calibration(run):
    train_x = np.concatenate(mace.descriptors(run["model"], run["train"]))
    held = mace.attach(run["model"], run["held_out"])
    assert "descriptors" not in run["held_out"][0].arrays  # the caller's configurations are untouched
    predicted = np.concatenate(mace.forces(run["model"], held))
    true = np.linalg.norm(predicted - np.concatenate([a.arrays["REF_forces"] for a in held]), axis=1)
    errors = np.split(true, 12)
    score = LTAUForcesUQScore(train_x, run["logs"], from_error_logs=True, error_logs_norm=True, nbins=50)
    report, uq, pit = calibration.ltau_calibration(score, held, errors, num_nearest_neighbors=K)

    ref_uq, ref_pit = direct_ltau(train_x, run["logs"], np.concatenate([a.arrays["descriptors"] for a in held]),
                                  true, K, score.estimator.bins)
    np.testing.assert_allclose(np.concatenate(uq), ref_uq, rtol=1e-9)
    np.testing.assert_allclose(np.concatenate(pit), ref_pit, atol=1e-9)
    # Spearman = Pearson of mean ranks; atoms sharing their neighbours tie, so the ranks are taken of the
    # values just checked equal (a rounding apart, near-ties could swap)
    ours = np.concatenate(uq)
    assert report["spearman_atoms"] == pytest.approx(np.corrcoef(ranks(ours), ranks(true))[0, 1], abs=1e-12)
    means = ours.reshape(12, 16).mean(axis=1), true.reshape(12, 16).mean(axis=1)
    assert report["spearman_configurations"] == pytest.approx(np.corrcoef(ranks(means[0]), ranks(means[1]))[0, 1],
                                                              abs=1e-12)
    # coverage of the predicted quantiles and the area between the curve and the diagonal (dense grid)
    for q, fraction in report["within_quantile"].items():
        assert fraction == pytest.approx(np.mean(ref_pit <= q), abs=1e-12)
    grid = np.linspace(0, 1, 200001)
    curve = np.searchsorted(np.sort(ref_pit), grid, side="right") / ref_pit.size
    assert report["miscalibration_area"] == pytest.approx(np.trapezoid(np.abs(curve - grid), grid), abs=1e-4)
    # the held-out atoms farther from training get the larger uncertainty: a real ranking
    assert report["spearman_atoms"] > 0.3
    assert 0 <= report["miscalibration_area"] <= 0.5


def test_uncertainty_calculator_wraps_the_mace_calculator_with_one_model_call_per_step(run):
    from ase import units
    from ase.md.verlet import VelocityVerlet

    train_x = np.concatenate(mace.descriptors(run["model"], run["train"]))
    score = LTAUForcesUQScore(train_x, run["logs"], from_error_logs=True, error_logs_norm=True, nbins=50)
    own = mace.calculator(run["model"])
    calc = UncertaintyCalculator(own, score, num_nearest_neighbors=K)
    atoms = run["held_out"][0].copy()
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, 1 * units.fs)
    dyn.run(3)
    assert own.model_calls == 4  # the starting frame and 3 steps: descriptors came with the forces
    # reference: the score on the same frame's descriptors from get_descriptors
    frame = atoms.copy()
    frame.arrays["descriptors"] = calculator_of(run["model"]).get_descriptors(frame)
    np.testing.assert_allclose(calc.get_uncertainty(), score.compute(frame, num_nearest_neighbors=K), rtol=1e-9)


def cli(*args, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "atomscore.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=600)


def test_the_commands_from_training_files_to_a_calibration_report(run):
    folder = run["folder"]
    proc = cli("ltau-logs", "train.xyz", "--mace", str(run["model"]), "--checkpoints", str(run["model"].parent /
               "checkpoints"), "--forces-key", "REF_forces", "-o", "errors.npy", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(np.load(folder / "errors.npy"), run["logs"], atol=1e-12)
    record = json.loads((folder / "errors.json").read_text())
    assert record["epochs"] == list(range(EPOCHS)) and record["n_atoms_per_configuration"] == [16] * 50
    again = cli("ltau-logs", "train.xyz", "--mace", str(run["model"]), "--checkpoints", str(run["model"].parent /
                "checkpoints"), "--forces-key", "REF_forces", "-o", "errors.npy", cwd=folder)
    assert again.returncode == 2 and "exists" in again.stderr  # never overwritten
    proc = cli("descriptors", "train.xyz", "--mace", str(run["model"]), "-o", "train_descriptors.xyz", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    proc = cli("uq", "held_out.xyz", "--mace", str(run["model"]), "--train-descriptors", "train_descriptors.xyz",
               "--error-logs", "errors.npy", "--reference-forces", "REF_forces", "--dh-reference", "train.xyz",
               "--calibration-plot", "calibration.png", "-o", "uq.xyz", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert (folder / "calibration.png").stat().st_size > 1000
    # the printed figures are the function's on the same inputs
    train_x = np.concatenate(mace.descriptors(run["model"], run["train"]))
    held = mace.attach(run["model"], run["held_out"])
    true = np.linalg.norm(np.concatenate(mace.forces(run["model"], held))
                          - np.concatenate([a.arrays["REF_forces"] for a in held]), axis=1)
    score = LTAUForcesUQScore(train_x, run["logs"], from_error_logs=True, error_logs_norm=True)
    report, _, _ = calibration.ltau_calibration(score, held, np.split(true, 12))
    line = next(x for x in proc.stdout.splitlines() if x.strip().startswith("LTAU"))
    assert line.split()[1:] == [f"{report['spearman_atoms']:.3f}", f"{report['spearman_configurations']:.3f}",
                                f"{report['miscalibration_area']:.3f}"]
    assert any(x.strip().startswith("QUESTS dH") for x in proc.stdout.splitlines())


def test_hostile_inputs_are_refused_with_one_clear_message(run, tmp_path):
    with pytest.raises(InputError, match="REF_nothing"):
        mace.error_logs(run["model"], run["checkpoints"][:1], run["train"][:2], forces_key="REF_nothing")
    with pytest.raises(InputError, match="non-empty list"):
        mace.error_logs(run["model"], [], run["train"][:2], forces_key="REF_forces")
    bad = tmp_path / "other_epoch-0.pt"
    torch.save({"model": {"w": torch.zeros(2)}}, bad)
    with pytest.raises(InputError, match="does not hold weights"):
        mace.error_logs(run["model"], [bad], run["train"][:2], forces_key="REF_forces")
    nan = run["train"][0].copy()
    nan.positions[3, 1] = np.nan
    with pytest.raises(InputError, match="finite positions"):
        mace.descriptors(run["model"], [nan])
    copper = run["train"][0].copy()
    copper.numbers[:] = 29
    with pytest.raises(InputError, match="atomic numbers"):
        mace.descriptors(run["model"], [copper])
    with pytest.raises(InputError, match="not empty"):
        mace.train(run["folder"] / "train.xyz", run["model"].parent, epochs=1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no per-epoch"):
        mace.checkpoints(tmp_path / "empty")
    torch.save({}, tmp_path / "second_epoch-1.pt")  # two runs' checkpoints in one folder
    with pytest.raises(InputError, match="several runs"):
        mace.checkpoints(tmp_path)
