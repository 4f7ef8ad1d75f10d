"""The QUESTS descriptor of atomic environments, computed by the ``quests`` package.

QUESTS (Schwalbe-Koda et al., "Model-free quantification of completeness, uncertainties
and outliers in atomistic machine learning using information theory") describes the
environment of each atom by its ``k`` nearest neighbours: the sorted, cutoff-weighted
inverse distances to them (``k`` numbers) and the sorted weighted inverse distances
between those neighbours (``k - 1`` numbers), ``2k - 1`` in all. We call
``quests.descriptor.get_descriptors`` for the numbers (a well-kept reference
implementation, numba-parallel) and add what a workflow needs around it: checked input,
one array per configuration, new Atoms with the descriptors attached, a progress bar.

Species
-------
As in ``quests.descriptor.get_descriptors``, every atom is treated alike: the descriptor
sees positions only, not chemical species, so a Cu and a Si atom in identical geometric
surroundings get identical descriptors. (``quests`` has an experimental multicomponent
variant, ``get_descriptors_multicomponent``; it is not used here.)

Periodicity
-----------
Periodic cells (any of ``atoms.pbc`` true) are handled through periodic images, as
``quests`` does, also for cells smaller than the cutoff; non-periodic structures
(molecules, clusters such as C60) use their atoms only. An environment with fewer than
``k`` neighbours inside the cutoff is padded with zeros by ``quests``.
"""

from __future__ import annotations

import numpy as np

from atomscore.errors import InputError
from atomscore.io import copy_with_labels
from atomscore.quests.defaults import DEFAULT_CUTOFF, DEFAULT_K
from atomscore.validation import (DESCRIPTOR_SETTINGS_SUFFIX, check_configs, check_finite_positions, check_int,
                                  check_positive)

# Configurations are sent to quests in chunks of about this many atoms, so the progress
# bar moves while each chunk still fills quests' parallel loop.
_CHUNK_ATOMS = 4096


class QUESTSDescriptor:
    """QUESTS descriptors, ``(n_atoms, 2k - 1)`` per configuration.

    Parameters
    ----------
    cutoff : float
        Cutoff radius of the smooth weight function, in Å (default 5.0).
    k : int
        Number of nearest neighbours per environment (default 32), giving ``2k - 1``
        columns.
    key : str
        ``atoms.arrays`` key that :meth:`attach` writes (default ``'descriptors'``, the key
        the QUESTS scores read by default).

    Examples
    --------
    >>> from ase.build import bulk
    >>> desc = QUESTSDescriptor(cutoff=5.0, k=32)
    >>> desc.compute(bulk("Si", "diamond", 5.43, cubic=True)).shape
    (8, 63)
    """

    def __init__(self, cutoff=DEFAULT_CUTOFF, k=DEFAULT_K, key="descriptors"):
        self.cutoff = float(check_positive(cutoff, "cutoff", allow_array=False))
        self.k = check_int(k, "k", minimum=1)
        if not isinstance(key, str) or not key:
            raise InputError(f"key: expected a non-empty string, got {key!r}")
        self.key = key

    @property
    def settings(self) -> dict:
        """What defines the numbers: ``{'name': 'QUESTS', 'cutoff' (Å), 'k', 'quests_version'}``.

        :meth:`attach` writes it to ``atoms.info[key + '_settings']``; the scores compare it
        between queries and references.
        """
        from importlib.metadata import PackageNotFoundError, version

        try:
            quests_version = version("quests")
        except PackageNotFoundError:  # an unpackaged checkout of quests
            quests_version = "unknown"
        return {"name": "QUESTS", "cutoff": self.cutoff, "k": self.k, "quests_version": quests_version}

    @property
    def n_features(self) -> int:
        """Number of descriptor columns, ``2k - 1``."""
        return 2 * self.k - 1

    def __repr__(self):
        return f"QUESTSDescriptor(cutoff={self.cutoff}, k={self.k}, key={self.key!r})"

    def compute(self, atoms) -> np.ndarray:
        """Descriptors of one configuration.

        Parameters
        ----------
        atoms : ase.Atoms
            Periodic or not; never modified.

        Returns
        -------
        numpy.ndarray, shape (n_atoms, 2k - 1), float64
        """
        return self.compute_batch([atoms], progress=False)[0]

    def compute_batch(self, list_of_atoms, progress=None):
        """Descriptors of each configuration: a list of ``(n_atoms_i, 2k - 1)`` arrays.

        Parameters
        ----------
        list_of_atoms : list of ase.Atoms
            Never modified.
        progress : bool or None
            Show a tqdm progress bar (``None``: only when writing to a terminal).
        """
        configs = check_configs(list_of_atoms, "list_of_atoms", allow_empty=True)
        for i, atoms in enumerate(configs):
            check_finite_positions(atoms, f"list_of_atoms: configuration {i}", allow_empty=True)
            if any(atoms.pbc) and atoms.cell.rank < 3 and len(atoms):
                raise InputError(f"list_of_atoms: configuration {i}: periodic (pbc={atoms.pbc.tolist()}) but "
                                 f"its cell has rank {atoms.cell.rank}; expected a 3-D cell")
        from quests.descriptor import get_descriptors
        from tqdm.auto import tqdm

        out = [None] * len(configs)
        disable = None if progress is None else not progress
        with tqdm(total=len(configs), desc="QUESTS descriptors", unit="config", disable=disable) as bar:
            for chunk in _chunks(configs):
                # copies: quests is given its own Atoms, so the caller's are never touched
                nonempty = [i for i in chunk if len(configs[i])]
                if nonempty:
                    x = get_descriptors([configs[i].copy() for i in nonempty], k=self.k, cutoff=self.cutoff)
                    x = np.asarray(x, dtype=np.float64)
                    start = 0
                    for i in nonempty:
                        n = len(configs[i])
                        out[i] = x[start:start + n].copy()
                        start += n
                for i in chunk:
                    if out[i] is None:
                        out[i] = np.zeros((0, self.n_features))
                bar.update(len(chunk))
        return out

    def attach(self, list_of_atoms, progress=None):
        """New configurations with the descriptors in ``arrays[key]``; the inputs are untouched.

        Parameters
        ----------
        list_of_atoms : list of ase.Atoms
        progress : bool or None
            Progress bar, as in :meth:`compute_batch`.

        Returns
        -------
        list of ase.Atoms
            Copies (with their calculator results kept as a single-point calculator) whose
            ``arrays[key]`` holds the ``(n_atoms, 2k - 1)`` descriptors and
            ``info[key + '_settings']`` their :attr:`settings`.
        """
        configs = check_configs(list_of_atoms, "list_of_atoms", allow_empty=True)
        descriptors = self.compute_batch(configs, progress=progress)
        settings = self.settings
        out = []
        for atoms, x in zip(configs, descriptors):
            new = copy_with_labels(atoms)
            if self.key in new.arrays:
                del new.arrays[self.key]  # replaced, possibly with another width
            new.new_array(self.key, x)
            new.info[f"{self.key}{DESCRIPTOR_SETTINGS_SUFFIX}"] = dict(settings)
            out.append(new)
        return out


def _chunks(configs):
    """Index chunks of about ``_CHUNK_ATOMS`` atoms (at least one configuration each)."""
    chunk, atoms_in_chunk = [], 0
    for i, atoms in enumerate(configs):
        chunk.append(i)
        atoms_in_chunk += len(atoms)
        if atoms_in_chunk >= _CHUNK_ATOMS:
            yield chunk
            chunk, atoms_in_chunk = [], 0
    if chunk:
        yield chunk


def warm_up():
    """Compile quests' numba kernels once (periodic and not), so that the first real call is fast.

    numba caches the compiled code next to the quests package (``cache=True``), so this
    runs at install time (``make``) and takes about half a minute only the first time.
    """
    from ase.build import bulk, molecule

    QUESTSDescriptor(k=4).compute_batch([bulk("Si", "diamond", 5.43, cubic=True), molecule("H2O")], progress=False)
