"""The reference set of the QUESTS delta entropy: loaded, checked and digested once, then passed down."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from atomscore.errors import InputError
from atomscore.validation import (array_digest, check_same_descriptor_settings, descriptor_settings, is_array_file,
                                  load_array, per_atom_array)


def _is_configurations(value):
    from ase import Atoms

    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(a, Atoms) for a in value)


class ReferenceSet:
    """Reference descriptors ``(n_reference, n_features)``, checked, with their settings and digest.

    Build one with :meth:`load`; ``QUESTSDeltaEntropyScore`` accepts it as ``reference_set``
    (as it accepts the array, a ``.npy`` path or configurations), so a caller scoring many
    batches loads and hashes the reference once.

    Attributes
    ----------
    descriptors : numpy.ndarray
        Read-only, float64, finite, at least one row.
    settings : dict or None
        The descriptor settings recorded with the reference (compared with the queries').
    path : str or None
        The file it was read from (as given), if any.
    """

    def __init__(self, descriptors, settings=None, path=None):
        arr = load_array(descriptors, "reference_set", ndim=2)
        if arr.shape[0] == 0:
            raise InputError(f"reference_set: expected at least one reference descriptor, got shape {arr.shape}")
        if settings is not None and not isinstance(settings, dict):
            raise InputError(f"reference_settings: expected a dict of descriptor settings, got {settings!r}")
        arr = arr.view()
        arr.flags.writeable = False
        self.descriptors, self.settings, self.path = arr, settings, path

    @classmethod
    def load(cls, reference_set, descriptors_key="descriptors", reference_settings=None) -> "ReferenceSet":
        """The checked reference of ``reference_set`` (returned as it is when already one).

        Parameters
        ----------
        reference_set : ReferenceSet, array_like, str or list of ase.Atoms
            An array or ``.npy``/``.txt`` path; configurations carrying ``arrays[descriptors_key]``
            (a list of Atoms, or a file ASE reads).
        descriptors_key : str
        reference_settings : dict, optional
            Descriptor settings of an array reference; compared with those configurations record.

        Raises
        ------
        InputError
            None, a missing or unreadable file, configurations without descriptors or with
            two dimensions, settings that disagree, an empty or non-finite array.
        """
        if isinstance(reference_set, ReferenceSet):
            check_same_descriptor_settings(reference_set.settings, "reference_set", reference_settings,
                                           "reference_settings")
            return reference_set
        if reference_set is None:
            raise InputError("reference_set: expected the (n_reference, n_features) reference descriptors "
                             "(array or .npy path), or configurations carrying them, got None")
        path = str(reference_set) if isinstance(reference_set, (str, os.PathLike)) else None
        if path is not None and not is_array_file(reference_set):
            if not Path(path).is_file():
                raise InputError(f"reference_set: file not found: {path!r}")
            import ase.io

            try:
                reference_set = ase.io.read(path, index=":")
            except Exception as exc:  # unreadable file: one clear message
                raise InputError(f"reference_set: cannot read {path!r} as configurations (ASE): {exc}") from None
            if not reference_set:
                raise InputError(f"reference_set: {path!r} holds no configurations")
        if not _is_configurations(reference_set):
            return cls(reference_set, reference_settings, path)
        blocks = [per_atom_array(a, descriptors_key, index=i, name="reference_set descriptors_key")
                  for i, a in enumerate(reference_set)]
        dims = {b.shape[1] for b in blocks}
        if len(dims) > 1:
            raise InputError(f"reference_set: configurations carry descriptors of different dimensions {sorted(dims)}")
        settings = descriptor_settings(reference_set, descriptors_key, "reference_set")
        if settings is not None and reference_settings is not None:
            check_same_descriptor_settings(settings, "reference_set's configurations",
                                           reference_settings, "reference_settings")
        return cls(np.concatenate(blocks, axis=0), settings if settings is not None else reference_settings, path)

    def __len__(self):
        return len(self.descriptors)

    @property
    def shape(self):
        return self.descriptors.shape

    @functools.cached_property
    def digest(self) -> dict:
        """``{'shape', 'sha256'}`` of the descriptors, computed once."""
        return array_digest(self.descriptors)

    def provenance(self) -> dict:
        """Metadata of the reference: shape, digest, settings when known, and its file if any."""
        out = dict(self.digest)
        if self.settings is not None:
            out["settings"] = self.settings
        if self.path is not None:
            out["path"] = self.path
        return out

    def job_arguments(self) -> dict:
        """``reference_set`` (and ``reference_settings``) as a job folder holds them: the
        absolute ``.npy``/``.txt`` path it was read from, else the array."""
        ref = str(Path(self.path).resolve()) if self.path and is_array_file(self.path) else self.descriptors
        out = {"reference_set": ref}
        if self.settings is not None:
            out["reference_settings"] = self.settings
        return out
