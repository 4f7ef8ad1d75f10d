"""LTAU inputs from a MACE training run: per-epoch force-error logs and per-atom descriptors.

MACE's trainer has no per-epoch callback, so the logs come from the per-epoch checkpoints
that ``mace_run_train --save_all_checkpoints --keep_checkpoints`` writes (:func:`train`
runs MACE's own trainer so). :func:`error_logs` loads each checkpoint's weights into the
trained model and evaluates the training configurations through MACE's own batched data
loader (``mace.data.AtomicData`` + ``mace.tools.torch_geometric.DataLoader``, as
``mace_eval_configs`` does). :func:`descriptors` gives the invariant node features that
``MACECalculator.get_descriptors`` gives, batched the same way. :func:`calculator` is a
``MACECalculator`` whose ``results['descriptors']`` come from the forward pass that gives
the forces, so :class:`atomscore.ltau.md.UncertaintyCalculator` costs no extra model call.

Needs the extra ``atomscore[mace]`` (``mace-torch``; install ``torch==2.13.0`` first for
the CPU build). See docs/ltau.md for the whole path from labelled data to uncertainties.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

from atomscore.errors import AtomscoreError, InputError, import_extra
from atomscore.validation import check_finite_configs, check_int, reference_forces

#: a per-epoch checkpoint of MACE's CheckpointHandler: ``<tag>_epoch-<N>.pt`` (``_swa`` for stage two)
CHECKPOINT_NAME = re.compile(r"^(?P<tag>.+)_epoch-(?P<epoch>\d+)(?P<swa>_swa)?\.pt$")


def _torch():
    return import_extra("torch", "MACE error logs and descriptors", "mace")


def _mace():
    import_extra("mace", "MACE error logs and descriptors", "mace")
    from mace import data
    from mace.tools import torch_geometric, utils

    return data, torch_geometric, utils


def _check_path(path, what):
    if not isinstance(path, (str, os.PathLike)):
        raise InputError(f"{what}: expected a path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what}: file not found: {str(path)!r}")
    return path


def load_model(model_path):
    """The trained MACE model of ``model_path`` (``.model`` from ``mace_run_train``), on the CPU, in eval mode.

    The file is a pickled ``torch.nn.Module`` (MACE's format): load only models you trained or trust.
    """
    torch = _torch()
    _mace()
    path = _check_path(model_path, "model_path")
    try:
        model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # a corrupt or foreign file: one clear line, not torch's unpickling trace
        raise InputError(f"model_path: {str(path)!r} is not a MACE model file ({type(exc).__name__}: {exc})") from None
    if not isinstance(model, torch.nn.Module) or not hasattr(model, "r_max") or not hasattr(model, "atomic_numbers"):
        raise InputError(f"model_path: {str(path)!r} holds a {type(model).__name__}, not a MACE model "
                         "(torch.nn.Module with r_max and atomic_numbers)")
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def checkpoints(folder, tag=None):
    """The per-epoch checkpoints of a MACE run, ordered by epoch.

    Parameters
    ----------
    folder : str or os.PathLike
        MACE's ``checkpoints`` folder (``--checkpoints_dir``, default ``<work_dir>/checkpoints``).
    tag : str, optional
        The run's tag (``<name>_run-<seed>``); needed when the folder holds several runs.

    Returns
    -------
    list of pathlib.Path
        Stage-one checkpoints by increasing epoch, then stage-two (``_swa``) ones.
    """
    if not isinstance(folder, (str, os.PathLike)) or not Path(folder).is_dir():
        raise InputError(f"folder: expected MACE's checkpoints folder, got {folder!r} (not a folder)")
    found = []
    for path in Path(folder).iterdir():
        match = CHECKPOINT_NAME.match(path.name)
        if match and (tag is None or match["tag"] == tag):
            found.append((bool(match["swa"]), int(match["epoch"]), match["tag"], path))
    tags = sorted({t for _, _, t, _ in found})
    if len(tags) > 1:
        raise InputError(f"folder {str(folder)!r} holds checkpoints of several runs {tags}; pass tag=")
    if not found:
        raise InputError(f"folder {str(folder)!r} holds no per-epoch MACE checkpoint (<tag>_epoch-<N>.pt"
                         f"{'' if tag is None else f' with tag {tag!r}'}); train with --save_all_checkpoints "
                         "--keep_checkpoints (atomscore.ltau.mace.train does)")
    return [path for _, _, _, path in sorted(found)]


def checkpoint_epoch(path):
    """The epoch number in a checkpoint's file name (``..._epoch-12.pt`` -> 12)."""
    match = CHECKPOINT_NAME.match(Path(path).name)
    if not match:
        raise InputError(f"checkpoint {str(path)!r}: expected a MACE file name <tag>_epoch-<N>.pt")
    return int(match["epoch"])


@contextlib.contextmanager
def _default_dtype(torch, dtype):
    """MACE's data classes build tensors in torch's default dtype: the model's, restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _loader(model, configs, batch_size):
    """MACE's batched data loader over ``configs`` (positions, cell, species only), in their order."""
    data, torch_geometric, utils = _mace()
    known = {int(z) for z in model.atomic_numbers}
    for i, atoms in enumerate(configs):
        unknown = sorted(set(int(z) for z in atoms.numbers) - known)
        if unknown:
            raise InputError(f"configuration {i}: atomic numbers {unknown} are not among the model's {sorted(known)}")
    z_table = utils.AtomicNumberTable(sorted(known))
    heads = getattr(model, "heads", None)
    head = heads[0] if heads else "Default"
    dataset = []
    for atoms in configs:
        bare = atoms.copy()  # no labels: the model's predictions are compared with ours afterwards
        bare.calc = None
        config = data.config_from_atoms(bare, key_specification=data.KeySpecification(), head_name=head)
        dataset.append(data.AtomicData.from_config(config, z_table=z_table, cutoff=float(model.r_max), heads=heads))
    return torch_geometric.dataloader.DataLoader(dataset=dataset, batch_size=batch_size, shuffle=False, drop_last=False)


def _checked_inputs(configs, batch_size):
    return check_finite_configs(configs, "configs"), check_int(batch_size, "batch_size", minimum=1)


def predict_forces(model, batches):
    """Forces (eV/Å) of ``model`` on every atom of the ``batches`` (:func:`_batches`), ``(atoms, 3)`` in order."""
    torch = _torch()
    out = []
    with _default_dtype(torch, next(model.parameters()).dtype):
        for batch in batches:
            result = model(batch.to_dict(), training=False, compute_force=True, compute_stress=False)
            out.append(result["forces"].detach().cpu().numpy().astype(np.float64))
    return np.concatenate(out, axis=0)


def _batches(model, configs, batch_size):
    """The batches of :func:`_loader`, built once (neighbour lists included) for several model calls."""
    torch = _torch()
    with _default_dtype(torch, next(model.parameters()).dtype):
        return list(_loader(model, configs, batch_size))


def forces(model_path, configs, batch_size=32):
    """The model's forces (eV/Å) on ``configs``, one ``(n_atoms, 3)`` array per configuration; batched.

    For the true errors of held-out configurations (:mod:`atomscore.ltau.calibration`).
    """
    configs, batch_size = _checked_inputs(configs, batch_size)
    model = load_model(model_path)
    values = predict_forces(model, _batches(model, configs, batch_size))
    return np.split(values, np.cumsum([len(a) for a in configs])[:-1])


def error_logs(model_path, checkpoints, configs, forces_key="forces", batch_size=32, dtype=None):
    """Force errors of every atom of ``configs`` at every checkpoint: the LTAU error logs.

    Parameters
    ----------
    model_path : str or os.PathLike
        The trained model (``<name>.model``): gives the architecture the checkpoints' weights fill.
    checkpoints : list of str or os.PathLike
        Per-epoch checkpoints (``<tag>_epoch-<N>.pt``; :func:`checkpoints` lists a run's), in the
        order of the logs' first axis.
    configs : list of ase.Atoms
        The training configurations, with reference forces.
    forces_key : str
        ``atoms.arrays[forces_key]`` (eV/Å); ``'forces'`` also reads the forces of an attached
        (single-point) calculator, as ASE's extxyz reader stores them.
    batch_size : int
        Configurations per model call.
    dtype : {None, 'float32', 'float64'}
        Evaluate in the model's own precision (None), or in this one: ``'float32'`` of a float64
        model is about 4x faster on a CPU and moves the errors by ~1e-5 eV/Å
        (``benchmarks/ltau_training.py``).

    Returns
    -------
    numpy.ndarray, (epochs, atoms, 3)
        ``F_model - F_reference`` in eV/Å; atoms configuration by configuration, atom by atom.
        ``LTAUForcesUQScore(..., error_pdfs=logs, from_error_logs=True, error_logs_norm=True)``
        takes it as it is.
    """
    torch = _torch()
    configs, batch_size = _checked_inputs(configs, batch_size)
    reference = np.concatenate([reference_forces(atoms, forces_key, i) for i, atoms in enumerate(configs)])
    if isinstance(checkpoints, (str, os.PathLike)) or not isinstance(checkpoints, (list, tuple)) or not checkpoints:
        raise InputError(f"checkpoints: expected a non-empty list of checkpoint files, got {checkpoints!r}")
    paths = [_check_path(c, f"checkpoints[{i}]") for i, c in enumerate(checkpoints)]
    model = load_model(model_path)
    if dtype is not None:
        from atomscore.validation import check_choice

        check_choice(dtype, "dtype", ("float32", "float64"))
        model = model.to(getattr(torch, dtype))
    logs = np.empty((len(paths), len(reference), 3))
    batches = _batches(model, configs, batch_size)
    for e, path in enumerate(paths):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)["model"]
            model.load_state_dict(state)
        except Exception as exc:
            raise InputError(f"checkpoints[{e}]: {str(path)!r} does not hold weights of the model {str(model_path)!r} "
                             f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
        logs[e] = predict_forces(model, batches) - reference
    return logs


def _invariant_slicer(model, num_layers=-1):
    """``node_feats -> invariant features`` as ``MACECalculator.get_descriptors(invariants_only=True)``."""
    from e3nn import o3
    from mace.modules.utils import extract_invariant

    n_interactions = int(model.num_interactions)
    num_layers = check_int(num_layers, "num_layers", minimum=-1)
    if num_layers == 0 or num_layers > n_interactions:
        raise InputError(f"num_layers: expected -1 (all) or 1..{n_interactions}, got {num_layers}")
    if num_layers == -1:
        num_layers = n_interactions
    irreps = o3.Irreps(str(model.products[0].linear.irreps_out))
    l_max = irreps.lmax
    n_invariant = irreps.dim // (l_max + 1) ** 2
    width = n_invariant * num_layers  # invariant block of each layer kept

    def invariants(node_feats):
        x = extract_invariant(node_feats, num_layers=num_layers, num_features=n_invariant, l_max=l_max)
        return x[:, :width].detach().cpu().numpy().astype(np.float64)

    return invariants


def descriptors(model_path, configs, num_layers=-1, batch_size=32):
    """Invariant per-atom MACE descriptors, one ``(atoms, features)`` array per configuration.

    The values of ``MACECalculator.get_descriptors(atoms, invariants_only=True,
    num_layers=num_layers)``, computed in batches (no forces).

    Parameters
    ----------
    model_path : str or os.PathLike
    configs : list of ase.Atoms
    num_layers : int
        Interaction layers whose invariant features are kept (-1: all).
    batch_size : int

    Returns
    -------
    list of numpy.ndarray
        ``(n_atoms, num_channels * layers)`` each, float64 (descriptor unit: the model's features).
    """
    torch = _torch()
    configs, batch_size = _checked_inputs(configs, batch_size)
    model = load_model(model_path)
    invariants = _invariant_slicer(model, num_layers)
    out = []
    with _default_dtype(torch, next(model.parameters()).dtype):
        for batch in _batches(model, configs, batch_size):
            feats = invariants(model(batch.to_dict(), training=False, compute_force=False)["node_feats"])
            ptr = batch.ptr.cpu().numpy()
            out.extend(feats[ptr[i]:ptr[i + 1]] for i in range(len(ptr) - 1))
    return out


def model_settings(model_path, num_layers=-1):
    """The descriptor settings of MACE descriptors (recorded in ``info['<key>_settings']``, compared by LTAU)."""
    import hashlib

    path = _check_path(model_path, "model_path")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    return {"descriptor": "mace", "model": path.name, "model_sha256": digest, "num_layers": int(num_layers),
            "invariants_only": True}


def attach(model_path, configs, key="descriptors", num_layers=-1, batch_size=32):
    """Copies of ``configs`` with the :func:`descriptors` in ``arrays[key]`` and their settings.

    ``info[key + '_settings']`` holds :func:`model_settings`, so that the LTAU score refuses
    queries described by another model. The caller's configurations are not modified.
    """
    from atomscore.validation import DESCRIPTOR_SETTINGS_SUFFIX

    if not isinstance(key, str) or not key:
        raise InputError(f"key: expected an atoms.arrays key (string), got {key!r}")
    values = descriptors(model_path, configs, num_layers=num_layers, batch_size=batch_size)
    settings = model_settings(model_path, num_layers)
    out = []
    for atoms, x in zip(configs, values):
        new = atoms.copy()
        if atoms.calc is not None:  # keep the labels a single-point calculator holds (extxyz forces)
            from ase.calculators.singlepoint import SinglePointCalculator

            new.calc = SinglePointCalculator(new, **{k: v for k, v in atoms.calc.results.items()})
        if key in new.arrays:
            del new.arrays[key]
        new.new_array(key, x)
        new.info[f"{key}{DESCRIPTOR_SETTINGS_SUFFIX}"] = dict(settings)
        out.append(new)
    return out


def calculator(model_path, descriptors_key="descriptors", num_layers=-1, **kwargs):
    """A ``MACECalculator`` that also returns the invariant descriptors of its forward pass.

    ``results[descriptors_key]`` (``(n_atoms, features)``) come from the model call that gives
    energy and forces, so ``UncertaintyCalculator(calculator(model), score)`` reads them
    without a second call. Other keyword arguments go to ``MACECalculator``.
    """
    import_extra("mace", "the MACE calculator", "mace")
    from mace.calculators import MACECalculator

    if not isinstance(descriptors_key, str) or not descriptors_key:
        raise InputError(f"descriptors_key: expected a results key (string), got {descriptors_key!r}")
    _check_path(model_path, "model_path")
    kwargs.setdefault("device", "cpu")
    kwargs.setdefault("default_dtype", "float64")

    class DescriptorMACECalculator(MACECalculator):
        """MACECalculator with ``results[descriptors_key]`` from the same forward pass."""

        def __init__(self):
            super().__init__(model_paths=str(model_path), **kwargs)
            if len(self.models) != 1:
                raise InputError("calculator: one model expected (descriptors of an ensemble are not averaged)")
            self.descriptors_key = descriptors_key
            self._invariants = _invariant_slicer(self.models[0], num_layers)
            self._node_feats = None
            self.model_calls = 0  # forward passes, counted by the hook
            self.models[0].register_forward_hook(self._keep)
            self.implemented_properties = list(self.implemented_properties) + [descriptors_key]

        def _keep(self, module, args, output):
            self.model_calls += 1
            self._node_feats = output.get("node_feats") if isinstance(output, dict) else None

        def calculate(self, atoms=None, properties=None, system_changes=None):
            from ase.calculators.calculator import all_changes

            super().calculate(atoms, properties, all_changes if system_changes is None else system_changes)
            if self._node_feats is None:
                raise InputError("calculator: the MACE model returned no node_feats")
            self.results[self.descriptors_key] = self._invariants(self._node_feats[: len(self.atoms)])
            self._node_feats = None

    return DescriptorMACECalculator()


def train(train_file, work_dir, name="model", epochs=20, seed=0, threads=None, **mace_args):
    """Train a MACE model with MACE's own trainer, keeping a checkpoint of every epoch.

    Runs ``python -m mace.cli.run_train`` with ``--save_all_checkpoints --keep_checkpoints``
    (so :func:`error_logs` has every epoch) and the given arguments.

    Parameters
    ----------
    train_file : str or os.PathLike
        extxyz of labelled configurations (MACE's keys: ``REF_energy``, ``REF_forces`` unless
        ``energy_key``/``forces_key`` are given).
    work_dir : str or os.PathLike
        A new or empty folder for MACE's outputs.
    name : str
    epochs : int
        ``--max_num_epochs``.
    seed : int
    threads : int, optional
        ``OMP_NUM_THREADS`` of the training process.
    **mace_args
        Other ``mace_run_train`` options by name, e.g. ``num_channels=16, max_L=0, r_max=4.0``
        (``True`` gives a bare flag).

    Returns
    -------
    (pathlib.Path, list of pathlib.Path)
        The trained model and its per-epoch checkpoints (by epoch).
    """
    import_extra("mace", "MACE training", "mace")
    train_file = _check_path(train_file, "train_file").resolve()
    work_dir = Path(work_dir).resolve()
    if work_dir.exists() and any(work_dir.iterdir()):
        raise InputError(f"work_dir: {str(work_dir)!r} is not empty; give a new folder (nothing is overwritten)")
    if not isinstance(name, str) or not re.fullmatch(r"[\w.-]+", name):
        raise InputError(f"name: expected a plain name (letters, digits, _ . -), got {name!r}")
    epochs = check_int(epochs, "epochs", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    settings = {"model": "MACE", "E0s": "average", "device": "cpu", "default_dtype": "float64", **mace_args}
    command = [sys.executable, "-m", "mace.cli.run_train", "--name", name, "--train_file", str(train_file),
               "--work_dir", str(work_dir), "--max_num_epochs", str(epochs), "--seed", str(seed),
               "--save_all_checkpoints", "--keep_checkpoints"]
    for key, value in settings.items():
        if value is True:
            command.append(f"--{key}")
        elif value is not False and value is not None:
            command += [f"--{key}", str(value)]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(check_int(threads, "threads", minimum=1))
    work_dir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=work_dir)
    (work_dir / "atomscore_train.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-5:])
        raise AtomscoreError(f"MACE training failed (exit {proc.returncode}); see {work_dir / 'atomscore_train.log'}:\n"
                         f"{tail}")
    model = work_dir / f"{name}.model"
    return model, checkpoints(work_dir / "checkpoints", tag=f"{name}_run-{seed}")
