"""LTAU inputs from a NequIP training run (nequip 0.19, Lightning): error logs and node features.

:class:`ErrorLogger` is a Lightning callback for the ``trainer.callbacks`` list of a NequIP
config. At the end of every training epoch (after the epoch's last optimizer step) it
evaluates the model being trained on every training frame in the training datasets' own
order (no shuffling, the datamodule's transforms and collate function) and rewrites
``out_file`` (``.npy``, ``(epochs, atoms, 3)`` force errors ``F_model - F_reference`` in
the dataset's units, eV/Å for ASE data) and a ``.json`` record of the atom order and the
epochs logged::

    trainer:
      callbacks:
        - _target_: atomscore.ltau.nequip.ErrorLogger
          out_file: ${hydra:runtime.output_dir}/error_logs.npy

:func:`node_features` gives the per-atom invariant features (``node_features``, the
``0e`` channels) of a trained checkpoint. NequIP (e3nn 0.6) and MACE (e3nn 0.4.4) cannot
share one environment: install ``atomscore[nequip]`` in its own (``torch==2.13.0`` first).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from atomscore.errors import InputError, import_extra


def _lightning_callback_base():
    import_extra("nequip", "the NequIP error logger", "nequip")
    from lightning.pytorch.callbacks import Callback

    return Callback


def _training_datasets(trainer):
    module = getattr(trainer, "datamodule", None)
    datasets = getattr(module, "train_dataset", None)
    if datasets is None:
        raise InputError("ErrorLogger: the trainer has no NequIP datamodule with a train_dataset")
    import torch

    # one dataset, or NequIP's list of them (a list or an omegaconf ListConfig)
    return [datasets] if isinstance(datasets, torch.utils.data.Dataset) else list(datasets)


def _collate():
    from nequip.data import AtomicDataDict

    return AtomicDataDict.batched_from_list


def evaluate_forces(model, datasets, batch_size=16):
    """Predicted and reference forces of every frame of ``datasets``, in order: two ``(atoms, 3)`` arrays.

    ``model`` maps a NequIP batch (``AtomicDataDict``) to a dict holding ``forces``
    (a ``NequIPLightningModule`` or a NequIP model).
    """
    import torch
    from nequip.data import AtomicDataDict

    predicted, reference = [], []
    for dataset in datasets:
        loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=_collate())
        for batch in loader:
            batch = AtomicDataDict.to_(batch, next(model.parameters()).device)
            out = model(batch.copy())
            predicted.append(out[AtomicDataDict.FORCE_KEY].detach().cpu().numpy().astype(np.float64))
            reference.append(batch[AtomicDataDict.FORCE_KEY].detach().cpu().numpy().astype(np.float64))
    return np.concatenate(predicted), np.concatenate(reference)


def _frame_order(datasets):
    """Atoms per frame, and each frame's index in the file it came from (NequIP's random split is a Subset)."""
    from nequip.data import AtomicDataDict

    sizes, sources = [], []
    for d, dataset in enumerate(datasets):
        indices = getattr(dataset, "indices", None)
        for i in range(len(dataset)):
            sizes.append(int(AtomicDataDict.num_nodes(dataset[i])))
            sources.append([d, int(indices[i]) if indices is not None else i])
    return sizes, sources


class _ErrorLoggerMixin:
    """The logging; the Lightning base class is added when the callback is made (lazy import)."""

    def __init__(self, out_file, every_n_epochs=1, batch_size=16):
        if not isinstance(out_file, (str, os.PathLike)):
            raise InputError(f"out_file: expected a path ending in .npy, got {type(out_file).__name__}")
        path = Path(out_file)
        if path.suffix != ".npy":
            raise InputError(f"out_file: expected a path ending in .npy, got {str(path)!r}")
        if path.exists() or path.with_suffix(".json").exists():
            raise InputError(f"out_file: {str(path)!r} (or its .json record) exists; give a new name")
        if not path.parent.is_dir() and path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        from atomscore.validation import check_int

        self.out_file = path
        self.every_n_epochs = check_int(every_n_epochs, "every_n_epochs", minimum=1)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.logs = []      # one (atoms, 3) array per logged epoch
        self.epochs = []    # their epoch numbers (Lightning's current_epoch, from 0)
        self._order = None

    def on_train_epoch_end(self, trainer, pl_module):
        """Evaluate the training frames with the weights at the end of this epoch; rewrite the files."""
        import torch

        epoch = int(trainer.current_epoch)
        if epoch % self.every_n_epochs or getattr(trainer, "global_rank", 0) != 0:
            return
        datasets = _training_datasets(trainer)
        was_training = pl_module.training
        pl_module.eval()
        try:
            with torch.enable_grad():  # forces are gradients of the energy
                predicted, reference = evaluate_forces(pl_module, datasets, self.batch_size)
        finally:
            pl_module.train(was_training)
        self.logs.append(predicted - reference)
        self.epochs.append(epoch)
        self._write(datasets)

    def _write(self, datasets):
        from atomscore.io import write_json_atomic, write_npy_atomic

        logs = np.stack(self.logs)
        if self._order is None:
            self._order = _frame_order(datasets)
        sizes, sources = self._order
        write_npy_atomic(self.out_file, logs)
        write_json_atomic(self.out_file.with_suffix(".json"), {
            "error_logs": self.out_file.name, "shape": list(logs.shape),
            "values": "F_model - F_reference (x, y, z), the dataset's units (eV/Å for ASE data)",
            "atom_order": "training datasets in order, frame by frame (no shuffling), atom by atom",
            "n_atoms_per_frame": sizes, "frames": sources,
            "frames_are": "[training dataset, index of the frame in that dataset's source (before the split)]",
            "epochs": list(self.epochs),
            "when": "end of each logged training epoch (after its last optimizer step)"})


def ErrorLogger(out_file, every_n_epochs=1, batch_size=16):
    """A Lightning callback writing LTAU error logs of every training atom at each epoch's end.

    Parameters
    ----------
    out_file : str or os.PathLike
        A new ``.npy`` file, rewritten after each logged epoch with ``(epochs, atoms, 3)``
        errors ``F_model - F_reference``; ``<out_file>.json`` records the atom order and epochs.
    every_n_epochs : int
        Log epochs ``0, n, 2n, ...``.
    batch_size : int
        Frames per model call.

    Returns
    -------
    lightning.pytorch.callbacks.Callback
    """
    base = _lightning_callback_base()
    cls = type("ErrorLogger", (_ErrorLoggerMixin, base), {"__doc__": ErrorLogger.__doc__,
                                                           "__module__": __name__})
    return cls(out_file, every_n_epochs=every_n_epochs, batch_size=batch_size)


def node_features(checkpoint_path, configs, chemical_species_to_atom_type_map=None, batch_size=16):
    """Invariant per-atom NequIP features of a trained model, one ``(atoms, features)`` array per configuration.

    The ``0e`` channels of ``node_features`` (the last interaction's output, before the energy
    readout), computed in batches with the model's own cutoff and type names (NequIP's
    ``load_saved_model`` and ``basic_transforms``, as its ASE calculator builds them).

    Parameters
    ----------
    checkpoint_path : str or os.PathLike
        A NequIP checkpoint (``.ckpt``) or package (``.nequip.zip``).
    configs : list of ase.Atoms
    chemical_species_to_atom_type_map : dict, optional
        As NequIP's calculator; default: species named as the model's type names.
    batch_size : int

    Returns
    -------
    list of numpy.ndarray
        ``(n_atoms, number of 0e channels)`` each, float64.
    """
    import_extra("nequip", "NequIP node features", "nequip")
    import torch
    from nequip.data import AtomicDataDict, from_ase
    from nequip.integrations.utils import basic_transforms, handle_chemical_species_map
    from nequip.model.saved_models.load_utils import load_saved_model
    from nequip.nn import graph_model

    from atomscore.validation import check_finite_configs, check_int

    path = Path(checkpoint_path)
    if not path.is_file():
        raise InputError(f"checkpoint_path: file not found: {str(path)!r}")
    configs = check_finite_configs(configs, "configs")
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    model = load_saved_model(str(path))
    model.eval()
    r_max = float(model.metadata[graph_model.R_MAX_KEY])
    type_names = model.metadata[graph_model.TYPE_NAMES_KEY].split(" ")
    species = handle_chemical_species_map(chemical_species_to_atom_type_map, type_names)
    for i, atoms in enumerate(configs):
        unknown = sorted(set(atoms.get_chemical_symbols()) - set(species))
        if unknown:
            raise InputError(f"configuration {i}: species {unknown} are not among the model's {sorted(species)}")
    transforms = basic_transforms(model.metadata, r_max, type_names, species)
    irreps = model.irreps_out[AtomicDataDict.NODE_FEATURES_KEY]
    keep = [s for s, (_, ir) in zip(irreps.slices(), irreps) if ir.l == 0 and ir.p == 1]
    if not keep:
        raise InputError(f"the model's node_features ({irreps}) hold no invariant (0e) channel")
    out = []
    for start in range(0, len(configs), batch_size):
        chunk = configs[start:start + batch_size]
        frames = []
        for atoms in chunk:
            data = from_ase(atoms)
            for t in transforms:
                data = t(data)
            frames.append(data)
        with torch.enable_grad():
            result = model(AtomicDataDict.batched_from_list(frames))
        feats = result[AtomicDataDict.NODE_FEATURES_KEY].detach()
        feats = torch.cat([feats[:, s] for s in keep], dim=1).cpu().numpy().astype(np.float64)
        out.extend(np.split(feats, np.cumsum([len(a) for a in chunk])[:-1]))
    return out
