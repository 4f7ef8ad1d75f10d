"""LTAU from a real NequIP training run: atomscore.ltau.nequip.ErrorLogger in ``trainer.callbacks``.

NequIP 0.19 (e3nn 0.6) cannot share the project environment with MACE (e3nn 0.4.4), so this
test builds its own: a fresh virtual environment with the CPU ``torch==2.13.0`` first, then
``pip install '.[nequip]'`` of this checkout (a few minutes; set ATOMSCORE_NEQUIP_PYTHON to
the python of an existing such environment to reuse it). ``nequip-train`` then trains a tiny
NequIP (2 layers, 8 features, l_max 1, r_max 4 Å; 3 epochs) on 40 SW-labelled 16-atom
silicon cells with the logger and a checkpoint per epoch in its config. References: NequIP's
own ASE calculator on each epoch's checkpoint, one frame at a time (the logs, to 1e-6);
rotation invariance and batch independence (the node features); the numpy LTAU of
tests/si_training.py (LTAU and its calibration on held-out cells).
"""

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import numpy as np
import pytest

from atomscore import LTAUForcesUQScore
from atomscore.io import write_data
from atomscore.ltau import calibration

sys.path.insert(0, str(Path(__file__).parent))
from si_training import direct_ltau, si_configs  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3

CONFIG = textwrap.dedent("""
    run: [train]
    cutoff_radius: 4.0
    chemical_symbols: [Si]
    model_type_names: ${chemical_symbols}
    data:
      _target_: nequip.data.datamodule.ASEDataModule
      seed: 1
      split_dataset: {file_path: train.xyz, train: 40, val: 10}
      key_mapping: {REF_energy: total_energy, REF_forces: forces}
      transforms:
        - _target_: nequip.data.transforms.ChemicalSpeciesToAtomTypeMapper
          model_type_names: ${model_type_names}
          chemical_species_to_atom_type_map: {Si: Si}
        - _target_: nequip.data.transforms.NeighborListTransform
          r_max: ${cutoff_radius}
      train_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 5, shuffle: true}
      val_dataloader: {_target_: torch.utils.data.DataLoader, batch_size: 10}
      stats_manager: {_target_: nequip.data.CommonDataStatisticsManager, type_names: "${model_type_names}"}
    trainer:
      _target_: lightning.Trainer
      accelerator: cpu
      max_epochs: %d
      logger: false
      enable_progress_bar: false
      callbacks:
        - _target_: atomscore.ltau.nequip.ErrorLogger
          out_file: ${hydra:runtime.output_dir}/error_logs.npy
        - _target_: lightning.pytorch.callbacks.ModelCheckpoint
          dirpath: ${hydra:runtime.output_dir}
          filename: "{epoch}"
          save_top_k: -1
          every_n_epochs: 1
    training_module:
      _target_: nequip.train.NequIPLightningModule
      loss: {_target_: nequip.train.EnergyForceLoss, per_atom_energy: true, coeffs: {total_energy: 1.0, forces: 1.0}}
      val_metrics: {_target_: nequip.train.EnergyForceMetrics, coeffs: {total_energy_mae: 1.0, forces_mae: 1.0}}
      optimizer: {_target_: torch.optim.Adam, lr: 0.01}
      model:
        _target_: nequip.model.NequIPGNNModel
        seed: 1
        model_dtype: float64
        type_names: ${model_type_names}
        r_max: ${cutoff_radius}
        num_bessels: 8
        num_layers: 2
        l_max: 1
        parity: false
        num_features: 8
        radial_mlp_depth: 1
        radial_mlp_width: 16
        avg_num_neighbors: ${training_data_stats:num_neighbors_mean}
        per_type_energy_scales: ${training_data_stats:per_type_forces_rms}
        per_type_energy_shifts: ${training_data_stats:per_atom_energy_mean}
    global_options: {allow_tf32: false}
""") % EPOCHS

# runs in the NequIP environment: the direct evaluation, node features, held-out forces. NequIP 0.19
# builds its ASE calculator from a checkpoint only through _from_saved_model (the public
# from_compiled_model needs an nequip-compile step first), so that is the reference used.
CHECK = textwrap.dedent("""
    import json, sys, warnings
    import numpy as np
    from ase.io import read
    from nequip.ase import NequIPCalculator
    from atomscore.ltau.nequip import node_features
    warnings.simplefilter("ignore")
    out = sys.argv[1]
    record = json.load(open(f"{out}/error_logs.json"))
    logs = np.load(f"{out}/error_logs.npy")
    train = read("train.xyz", ":")
    held = read("held_out.xyz", ":")
    frames = [train[j] for _, j in record["frames"]]
    worst = []
    for e in record["epochs"]:
        calc = NequIPCalculator._from_saved_model(f"{out}/epoch={e}.ckpt", chemical_species_to_atom_type_map=True)
        errors = []
        for atoms in frames:
            copy = atoms.copy(); copy.calc = calc
            errors.append(copy.get_forces() - atoms.arrays["REF_forces"])
        worst.append(float(np.abs(np.concatenate(errors) - logs[e]).max()))
    last = f"{out}/epoch={record['epochs'][-1]}.ckpt"
    x = node_features(last, frames, chemical_species_to_atom_type_map=True)
    turned = frames[1].copy(); turned.rotate(37, "z", rotate_cell=True); turned.rotate(21, "x", rotate_cell=True)
    one = node_features(last, [turned], chemical_species_to_atom_type_map=True)[0]
    np.save("train_features.npy", np.concatenate(x))
    held_x = node_features(last, held, chemical_species_to_atom_type_map=True)
    np.save("held_features.npy", np.concatenate(held_x))
    calc = NequIPCalculator._from_saved_model(last, chemical_species_to_atom_type_map=True)
    forces = []
    for atoms in held:
        copy = atoms.copy(); copy.calc = calc; forces.append(copy.get_forces())
    np.save("held_forces.npy", np.concatenate(forces))
    print(json.dumps({"worst": worst, "width": x[0].shape[1], "rotated": float(np.abs(one - x[1]).max())}))
""")


def nequip_python(tmp_path):
    """The python of an environment with this checkout and its [nequip] extra (built here unless given)."""
    given = os.environ.get("ATOMSCORE_NEQUIP_PYTHON")
    if given:
        return Path(given)
    env_dir = tmp_path / "nequip-venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    for args in (["torch==2.13.0"], [f"{ROOT}[nequip]"]):  # the CPU torch first, or pip pulls the CUDA build
        proc = subprocess.run([str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True,
                              timeout=1200, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr[-3000:]
    return python


@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_error_logger_in_a_nequip_config_logs_what_the_model_gives_at_each_epoch_end(tmp_path):
    python = nequip_python(tmp_path)
    train, held_out = si_configs(50, seed=0), si_configs(10, seed=1, rattle=(0.02, 0.25))
    write_data(tmp_path / "train.xyz", train)
    write_data(tmp_path / "held_out.xyz", held_out)
    (tmp_path / "tiny.yaml").write_text(CONFIG)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env.update(OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))  # this checkout's code, also with a given environment
    proc = subprocess.run([str(python.parent / "nequip-train"), "-cp", str(tmp_path), "-cn", "tiny",
                           f"hydra.run.dir={tmp_path / 'out'}"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=1800)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    record = json.loads((tmp_path / "out" / "error_logs.json").read_text())
    logs = np.load(tmp_path / "out" / "error_logs.npy")
    assert record["epochs"] == list(range(EPOCHS)) and logs.shape == (EPOCHS, 40 * 16, 3)
    assert sorted(j for _, j in record["frames"]) == sorted(set(j for _, j in record["frames"]))  # 40 distinct
    check = subprocess.run([str(python), "-c", CHECK, str(tmp_path / "out")], capture_output=True, text=True,
                           cwd=tmp_path, env=env, timeout=1200)
    assert check.returncode == 0, check.stderr[-4000:]
    got = json.loads(check.stdout.strip().splitlines()[-1])
    assert max(got["worst"]) < 1e-6, got["worst"]   # the logs are the model at each epoch's end
    assert got["width"] == 8                          # the 8 scalar channels of node_features
    assert got["rotated"] < 1e-9                      # invariant features

    # LTAU from the callback's logs and the node features, on held-out cells, checked against numpy
    train_x = np.load(tmp_path / "train_features.npy")
    held_x = np.load(tmp_path / "held_features.npy")
    reference = np.concatenate([a.arrays["REF_forces"] for a in held_out])
    true = np.linalg.norm(np.load(tmp_path / "held_forces.npy") - reference, axis=1)
    configs = [a.copy() for a in held_out]
    for atoms, x in zip(configs, np.split(held_x, 10)):
        atoms.new_array("descriptors", x)
    score = LTAUForcesUQScore(train_x, logs, from_error_logs=True, error_logs_norm=True, nbins=30)
    report, uq, pit = calibration.ltau_calibration(score, configs, np.split(true, 10), num_nearest_neighbors=3)
    ref_uq, ref_pit = direct_ltau(train_x, logs, held_x, true, 3, score.estimator.bins)
    np.testing.assert_allclose(np.concatenate(uq), ref_uq, rtol=1e-9)
    np.testing.assert_allclose(np.concatenate(pit), ref_pit, atol=1e-9)
    assert report["within_quantile"][0.9] == pytest.approx(np.mean(ref_pit <= 0.9), abs=1e-12)
