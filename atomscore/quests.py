"""QUESTS dataset-information scores: efficiency, diversity and per-atom delta entropy.

QUESTS (Schwalbe-Koda et al.; the ``quests`` package) estimates the information in a set
of atomic environments from a Gaussian kernel density of their descriptors. With
``p_i = sum_j exp(-|x_i - x_j|^2 / (2 h^2))`` over the N environments of the dataset:

* :class:`QUESTSEfficiencyScore`  ``H / log N`` with ``H = -(1/N) sum_i log(p_i / N)``:
  1 when no two environments overlap, small when the dataset repeats itself.
* :class:`QUESTSDiversityScore`   ``log sum_i 1 / p_i`` (nats): the log of the effective
  number of distinct environments.
* :class:`QUESTSDeltaEntropyScore` ``dH(y | X) = -log sum_j K(y, x_j)`` per atom against a
  reference set ``X`` (nats): large for environments the reference lacks, so the
  configurations that would add most information.

The numbers are those of ``quests.entropy`` (``entropy/log N``, ``diversity``,
``delta_entropy``) computed by our tiled kernel :mod:`atomscore.kernels.gaussian`, which
is several times faster, takes memory bounded by the tile size, and gives a finite
``dH`` by log-sum-exp where quests' kernel sum underflows and it returns ``+inf``
(queries farther than about ``38 h`` from every reference point). Dataset scores pool
all atoms of all configurations of the dataset.

Selection mask: with ``apply_mask=True`` only atoms whose boolean
``atoms.arrays['selection_mask']`` is true are used (dataset scores) or scored
(delta entropy: unselected atoms get NaN).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from atomscore.errors import InputError
from atomscore.kernels import gaussian, neighbors
from atomscore.quantity import ScoreQuantity
from atomscore.score import AtomCenteredScore, DatasetScore, records_metadata
from atomscore.validation import (array_digest, check_choice, check_configs, check_int, check_keys, check_positive,
                                  check_same_descriptor_settings, descriptor_settings, is_array_file, load_array,
                                  per_atom_array)

__all__ = ["QUESTSEfficiencyScore", "QUESTSDiversityScore", "QUESTSDeltaEntropyScore", "SELECTION_MASK_KEY"]

DEFAULT_BANDWIDTH = 0.015
#: per-atom boolean array read when ``apply_mask=True``
SELECTION_MASK_KEY = "selection_mask"


# ----------------------------------------------------------------------------- inputs

def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise InputError(f"{name}: expected True or False, got {value!r}")
    return bool(value)


def _selection_mask(atoms, index):
    where = f"configuration {index}"
    if SELECTION_MASK_KEY not in atoms.arrays:
        raise InputError(f"apply_mask=True: {where} has no atoms.arrays[{SELECTION_MASK_KEY!r}] "
                         f"(a boolean per atom); set it or use apply_mask=False")
    mask = np.asarray(atoms.arrays[SELECTION_MASK_KEY])
    if mask.ndim == 2 and mask.shape[1] == 1:
        mask = mask[:, 0]
    if mask.shape != (len(atoms),) or mask.dtype.kind not in "biu" or \
            (mask.dtype.kind != "b" and not np.isin(mask, (0, 1)).all()):
        raise InputError(f"arrays[{SELECTION_MASK_KEY!r}] ({where}): expected {len(atoms)} booleans, "
                         f"got {mask.dtype} of shape {mask.shape}")
    return mask.astype(bool)


def _gather(configs, descriptors_key, apply_mask, dim=None, name="dataset"):
    """Checked descriptors of the configurations: (all selected rows, per-config masks)."""
    configs = check_configs(configs, name)
    if not isinstance(descriptors_key, str) or not descriptors_key:
        raise InputError(f"descriptors_key: expected a non-empty string (an atoms.arrays key), got {descriptors_key!r}")
    apply_mask = _check_bool(apply_mask, "apply_mask")
    blocks, masks = [], []
    for i, atoms in enumerate(configs):
        x = per_atom_array(atoms, descriptors_key, index=i)
        if dim is None:
            dim = x.shape[1]
        elif x.shape[1] != dim:
            raise InputError(f"arrays[{descriptors_key!r}] (configuration {i}): expected descriptors of dimension "
                             f"{dim} (as the {'reference_set' if name != 'dataset' else 'first configuration'}), "
                             f"got {x.shape[1]}")
        mask = _selection_mask(atoms, i) if apply_mask else np.ones(len(atoms), dtype=bool)
        blocks.append(x[mask])
        masks.append(mask)
    rows = np.concatenate(blocks, axis=0) if blocks else np.zeros((0, dim or 0))
    return rows, masks


def _bandwidth(bandwidth):
    return check_positive(bandwidth, "bandwidth", allow_array=True)


def _precision(precision):
    return check_choice(precision, "precision", gaussian.PRECISIONS)


def _metadata_value(value):
    arr = np.asarray(value)
    return arr.tolist() if arr.ndim else float(arr)


def _is_configurations(value):
    from ase import Atoms

    return isinstance(value, (list, tuple)) and len(value) > 0 and all(isinstance(a, Atoms) for a in value)


def _reference(reference_set, descriptors_key, reference_settings=None):
    """The reference descriptors ``(n, dim)`` and their recorded settings (or None).

    ``reference_set`` is an array or ``.npy``/``.txt`` path, a list of Atoms carrying
    ``arrays[descriptors_key]``, or a path ASE reads holding such configurations.
    """
    if reference_set is None:
        raise InputError("reference_set: expected the (n_reference, n_features) reference descriptors "
                         "(array or .npy path), or configurations carrying them, got None")
    if isinstance(reference_set, (str, os.PathLike)) and not is_array_file(reference_set):
        path = Path(reference_set)
        if not path.is_file():
            raise InputError(f"reference_set: file not found: {str(path)!r}")
        import ase.io

        try:
            reference_set = ase.io.read(path, index=":")
        except Exception as exc:  # unreadable file: one clear message
            raise InputError(f"reference_set: cannot read {str(path)!r} as configurations (ASE): {exc}") from None
        if not reference_set:
            raise InputError(f"reference_set: {str(path)!r} holds no configurations")
    if _is_configurations(reference_set):
        blocks = [per_atom_array(a, descriptors_key, index=i, name="reference_set descriptors_key")
                  for i, a in enumerate(reference_set)]
        dims = {b.shape[1] for b in blocks}
        if len(dims) > 1:
            raise InputError(f"reference_set: configurations carry descriptors of different dimensions {sorted(dims)}")
        settings = descriptor_settings(reference_set, descriptors_key, "reference_set")
        if settings is not None and reference_settings is not None:
            check_same_descriptor_settings(settings, "reference_set's configurations",
                                           reference_settings, "reference_settings")
        return np.concatenate(blocks, axis=0), settings if settings is not None else reference_settings
    if reference_settings is not None and not isinstance(reference_settings, dict):
        raise InputError(f"reference_settings: expected a dict of descriptor settings, got {reference_settings!r}")
    return load_array(reference_set, "reference_set", ndim=2), reference_settings


def _provenance(ref, settings, given):
    """Metadata of a reference set: shape, digest, settings when known, and its file if any."""
    out = array_digest(ref)
    if settings is not None:
        out["settings"] = settings
    if isinstance(given, (str, os.PathLike)):
        out["path"] = str(given)
    return out


# ----------------------------------------------------------------------------- dataset scores

class _QUESTSDatasetScore(DatasetScore):
    """Shared argument handling of the two dataset scores."""

    _ARGS = ("descriptors_key", "bandwidth", "apply_mask", "precision")
    _MIN_ENVIRONMENTS = 1

    def __init__(self):
        super().__init__()

    def _rows(self, dataset, descriptors_key, bandwidth, apply_mask, precision):
        rows, _ = _gather(dataset, descriptors_key, apply_mask)
        self.note_metadata(descriptor_settings=descriptor_settings(dataset, descriptors_key, "dataset"))
        h = _bandwidth(bandwidth)
        _precision(precision)
        if len(rows) < self._MIN_ENVIRONMENTS:
            what = "selected environments (apply_mask=True)" if apply_mask else "environments"
            raise InputError(f"dataset: {type(self).__name__} needs at least {self._MIN_ENVIRONMENTS} {what}, "
                             f"got {len(rows)}")
        return rows, h

    def check_compute_args(self, configs, score_quantity, compute_args):
        """Quantity, argument names, descriptors, mask and bandwidth: checked before a run writes."""
        self.parse_quantity(score_quantity)
        check_keys(compute_args, self._ARGS, f"{type(self).__name__} compute_args", ignore=("score_quantity",))
        self._rows(configs, compute_args.get("descriptors_key", "descriptors"),
                   compute_args.get("bandwidth", DEFAULT_BANDWIDTH), compute_args.get("apply_mask", False),
                   compute_args.get("precision", "float64"))

    def get_metadata(self, score_quantity, **compute_args):
        """The bandwidth (and precision) that define the number."""
        return {"bandwidth": _metadata_value(compute_args.get("bandwidth", DEFAULT_BANDWIDTH)),
                "precision": compute_args.get("precision", "float64")}


class QUESTSEfficiencyScore(_QUESTSDatasetScore):
    """Dataset efficiency ``H / log N`` of the QUESTS entropy (dimensionless, at most 1).

    ``H = -(1/N) sum_i log(p_i / N)``, ``p_i = sum_j exp(-|x_i - x_j|^2 / (2 h^2))`` over
    all N (selected) atoms of the dataset; values near 1 mean little redundancy.

    Examples
    --------
    >>> efficiency = QUESTSEfficiencyScore().compute(
    ...     dataset, ScoreQuantity.EFFICIENCY, descriptors_key='descriptors', bandwidth=0.1)  # doctest: +SKIP
    """

    OUTPUT_KEY = "quests_efficiency"
    supported_score_quantities = (ScoreQuantity.EFFICIENCY,)
    _MIN_ENVIRONMENTS = 2

    @records_metadata
    def compute(self, dataset, score_quantity=ScoreQuantity.EFFICIENCY, descriptors_key="descriptors",
                bandwidth=DEFAULT_BANDWIDTH, apply_mask=False, precision="float64"):
        """Efficiency of the whole dataset.

        Parameters
        ----------
        dataset : list of ase.Atoms
            Each with per-atom descriptors in ``arrays[descriptors_key]``; never modified.
        score_quantity : ScoreQuantity or str
            ``EFFICIENCY``.
        descriptors_key : str
        bandwidth : float or array_like of float
            Kernel bandwidth ``h`` (descriptor units); an array gives one value per bandwidth.
        apply_mask : bool
            Use only atoms with ``arrays['selection_mask']`` true.
        precision : {'float64', 'float32'}
            Kernel arithmetic (float32: about 3x faster, 1e-5 relative).

        Returns
        -------
        float or numpy.ndarray
            Dimensionless efficiency (one per bandwidth for an array).
        """
        self.parse_quantity(score_quantity)
        rows, h = self._rows(dataset, descriptors_key, bandwidth, apply_mask, precision)
        return gaussian.efficiency(rows, h, precision=precision)


class QUESTSDiversityScore(_QUESTSDatasetScore):
    """Dataset diversity ``log sum_i 1 / p_i`` (nats), the log effective number of distinct environments.

    Examples
    --------
    >>> diversity = QUESTSDiversityScore().compute(dataset, 'DIVERSITY', bandwidth=0.015)  # doctest: +SKIP
    """

    OUTPUT_KEY = "quests_diversity"
    supported_score_quantities = (ScoreQuantity.DIVERSITY,)

    @records_metadata
    def compute(self, dataset, score_quantity=ScoreQuantity.DIVERSITY, descriptors_key="descriptors",
                bandwidth=DEFAULT_BANDWIDTH, apply_mask=False, precision="float64"):
        """Diversity of the whole dataset, in nats.

        Parameters are those of :meth:`QUESTSEfficiencyScore.compute` (quantity ``DIVERSITY``).

        Returns
        -------
        float or numpy.ndarray
            Nats (one per bandwidth for an array).
        """
        self.parse_quantity(score_quantity)
        rows, h = self._rows(dataset, descriptors_key, bandwidth, apply_mask, precision)
        return gaussian.diversity(rows, h, precision=precision)


# ----------------------------------------------------------------------------- delta entropy

class QUESTSDeltaEntropyScore(AtomCenteredScore):
    """Per-atom entropy gain ``dH(y | X) = -log sum_j exp(-|y - x_j|^2 / (2 h^2))`` (nats).

    ``X`` is the ``reference_set`` (e.g. the training set's descriptors). Large values
    mark environments the reference lacks. Where quests returns ``+inf`` (its kernel sum
    underflows) the value here is the exact finite one, computed by log-sum-exp.

    Examples
    --------
    >>> dH = QUESTSDeltaEntropyScore().compute_batch(
    ...     dataset, ScoreQuantity.DELTA_ENTROPY, reference_set=descriptors,
    ...     bandwidth=0.1, descriptors_key='descriptors')  # doctest: +SKIP
    """

    OUTPUT_KEY = "quests_delta_entropy"
    supported_score_quantities = (ScoreQuantity.DELTA_ENTROPY,)
    _ARGS = ("reference_set", "descriptors_key", "bandwidth", "apply_mask", "approx", "num_nearest_neighbors",
             "graph_neighbors", "precision", "reference_settings", "approx_index", "approx_options")

    def __init__(self):
        super().__init__()

    def _checked(self, configs, reference_set, descriptors_key, bandwidth, apply_mask, approx,
                 num_nearest_neighbors, graph_neighbors, precision, name, reference_settings=None,
                 approx_index="flat", approx_options=None):
        ref, ref_settings = _reference(reference_set, descriptors_key, reference_settings)
        if ref.shape[0] == 0:
            raise InputError(f"reference_set: expected at least one reference descriptor, got shape {ref.shape}")
        rows, masks = _gather(configs, descriptors_key, apply_mask, dim=ref.shape[1], name=name)
        query_settings = descriptor_settings(configs, descriptors_key, name)
        check_same_descriptor_settings(query_settings, f"the {name} descriptors (arrays[{descriptors_key!r}])",
                                       ref_settings, "the reference_set descriptors")
        self.note_metadata(reference_set=_provenance(ref, ref_settings, reference_set),
                           descriptor_settings=query_settings)
        h = _bandwidth(bandwidth)
        approx = _check_bool(approx, "approx")
        k = check_int(num_nearest_neighbors, "num_nearest_neighbors", minimum=1)
        check_int(graph_neighbors, "graph_neighbors", minimum=1)
        _precision(precision)
        neighbors.check_index_options(approx_index, approx_options)
        if approx and k > len(ref):
            raise InputError(f"num_nearest_neighbors: expected at most the {len(ref)} reference descriptors, got {k}")
        if approx:  # the settings the index runs with (IVF: nlist/nprobe resolved for this reference)
            self.note_metadata(approx_settings=neighbors.index_settings(approx_index, len(ref), approx_options))
        return ref, rows, masks, h, approx, k

    def check_compute_args(self, configs, score_quantity, compute_args):
        """Everything :meth:`compute_batch` checks, before a run writes any folder."""
        self.parse_quantity(score_quantity)
        check_keys(compute_args, self._ARGS, f"{type(self).__name__} compute_args", ignore=("score_quantity",))
        args = {"reference_set": None, "descriptors_key": "descriptors", "bandwidth": DEFAULT_BANDWIDTH,
                "apply_mask": False, "approx": False, "num_nearest_neighbors": 3, "graph_neighbors": 10,
                "precision": "float64", "reference_settings": None, "approx_index": "flat",
                "approx_options": None}
        args.update({k: v for k, v in compute_args.items() if k != "score_quantity"})
        self._checked(configs, name="configs", **args)

    def prepare_compute_args(self, compute_args):
        """A new dict a job file can hold: a reference given as configurations becomes its
        descriptor array plus ``reference_settings``; a file path is made absolute."""
        args = dict(compute_args)
        ref = args.get("reference_set")
        key = args.get("descriptors_key", "descriptors")
        if _is_configurations(ref) or (isinstance(ref, (str, os.PathLike)) and not is_array_file(ref)):
            arr, settings = _reference(ref, key, args.get("reference_settings"))
            args["reference_set"] = arr
            if settings is not None:
                args["reference_settings"] = settings
        elif isinstance(ref, (str, os.PathLike)):
            args["reference_set"] = str(Path(ref).resolve())
        return args

    @records_metadata
    def compute(self, atoms, score_quantity=ScoreQuantity.DELTA_ENTROPY, reference_set=None,
                descriptors_key="descriptors", bandwidth=DEFAULT_BANDWIDTH, apply_mask=False, approx=False,
                num_nearest_neighbors=3, graph_neighbors=10, precision="float64", reference_settings=None,
                approx_index="flat", approx_options=None):
        """Delta entropy of every atom of one configuration against ``reference_set``.

        Parameters
        ----------
        atoms : ase.Atoms
            Per-atom descriptors in ``arrays[descriptors_key]``; never modified.
        score_quantity : ScoreQuantity or str
            ``DELTA_ENTROPY``.
        reference_set : array_like, str, or list of ase.Atoms
            Reference descriptors ``(n_reference, n_features)`` or a ``.npy``/``.txt`` path;
            or configurations carrying them in ``arrays[descriptors_key]`` (a list of Atoms,
            or a file ASE reads, e.g. ``.xyz``), whose recorded descriptor settings are
            compared with the queries'.
        descriptors_key : str
        bandwidth : float or array_like of float
            Kernel bandwidth ``h`` (descriptor units); an array gives one column per bandwidth.
        apply_mask : bool
            Score only atoms with ``arrays['selection_mask']`` true; the others get NaN.
        approx : bool
            Sum over the ``num_nearest_neighbors`` nearest reference points only (exact
            k-NN through faiss; quests uses an approximate pynndescent graph here).
        num_nearest_neighbors : int
            ``k`` of ``approx=True``.
        graph_neighbors : int
            Accepted for compatibility (quests' pynndescent graph degree); unused, since
            our neighbour search is exact.
        precision : {'float64', 'float32'}
            Kernel arithmetic of the exact sum (underflowed rows are repaired in float64).
        reference_settings : dict, optional
            Descriptor settings of an array ``reference_set`` (as ``QUESTSDescriptor.settings``),
            compared with those the queries record.
        approx_index : {'flat', 'hnsw'}
            Neighbour search of ``approx=True``: exact (``'flat'``) or an HNSW graph for
            references of 10^6 - 10^7 points (faster searches, dH biased upwards where it
            misses a neighbour; measured in docs/quests.md), or ``'ivf'``, an inverted file
            (faiss ``IndexIVFFlat``): 2-3.7x faster than the exact float32
            sum at 10^6 reference points, a few hundredths of a nat of bias at most (docs/quests.md).
        approx_options : dict, optional
            ``approx_index='ivf'`` only: ``{'nlist': int, 'nprobe': int}`` (cells, cells
            scanned per query; defaults ``round(sqrt(N))`` and 16). The settings used are
            recorded in the metadata as ``approx_settings``.

        Returns
        -------
        numpy.ndarray, shape (n_atoms,) (or (n_atoms, n_bandwidths)), nats
        """
        self.parse_quantity(score_quantity)
        return self._delta_entropy([atoms], "atoms", reference_set, descriptors_key, bandwidth, apply_mask,
                                   approx, num_nearest_neighbors, graph_neighbors, precision, reference_settings,
                                   approx_index, approx_options)[0]

    @records_metadata
    def compute_batch(self, list_of_atoms, score_quantity=ScoreQuantity.DELTA_ENTROPY, reference_set=None,
                      descriptors_key="descriptors", bandwidth=DEFAULT_BANDWIDTH, apply_mask=False, approx=False,
                      num_nearest_neighbors=3, graph_neighbors=10, precision="float64", reference_settings=None,
                      approx_index="flat", approx_options=None):
        """:meth:`compute` for every configuration, in one kernel pass over all their atoms.

        Returns
        -------
        list of numpy.ndarray
            One ``(n_atoms,)`` array (nats) per configuration.
        """
        self.parse_quantity(score_quantity)
        return self._delta_entropy(list_of_atoms, "list_of_atoms", reference_set, descriptors_key, bandwidth,
                                   apply_mask, approx, num_nearest_neighbors, graph_neighbors, precision,
                                   reference_settings, approx_index, approx_options)

    def _delta_entropy(self, configs, name, reference_set, descriptors_key, bandwidth, apply_mask, approx,
                       num_nearest_neighbors, graph_neighbors, precision, reference_settings=None,
                       approx_index="flat", approx_options=None):
        if name == "atoms":
            from ase import Atoms

            if not isinstance(configs[0], Atoms):
                raise InputError(f"atoms: expected ase.Atoms, got {type(configs[0]).__name__}")
        ref, rows, masks, h, approx, k = self._checked(
            configs, reference_set, descriptors_key, bandwidth, apply_mask, approx, num_nearest_neighbors,
            graph_neighbors, precision, name, reference_settings, approx_index, approx_options)
        n_h = np.size(h) if np.ndim(h) else None
        if len(rows) == 0:
            values = np.zeros((0,) if n_h is None else (0, n_h))
        elif approx:
            values = gaussian.approx_delta_entropy(rows, ref, h, k, approx_index=approx_index,
                                                   approx_options=approx_options)
        else:
            values = gaussian.delta_entropy(rows, ref, h, precision=precision)
        out, start = [], 0
        for mask in masks:
            full = np.full((len(mask),) if n_h is None else (len(mask), n_h), np.nan)
            n = int(mask.sum())
            full[mask] = values[start:start + n]
            start += n
            out.append(full)
        return out

    def get_metadata(self, score_quantity, **compute_args):
        """Bandwidth, approx, k and graph neighbours, as the reference writes them (plus precision)."""
        return {"bandwidth": _metadata_value(compute_args.get("bandwidth", DEFAULT_BANDWIDTH)),
                "approx": bool(compute_args.get("approx", False)),
                "num_nearest_neighbors": int(compute_args.get("num_nearest_neighbors", 3)),
                "graph_neighbors": int(compute_args.get("graph_neighbors", 10)),
                "precision": compute_args.get("precision", "float64"),
                "approx_index": compute_args.get("approx_index", "flat"),
                "approx_options": neighbors.check_index_options(compute_args.get("approx_index", "flat"),
                                                                compute_args.get("approx_options"))}
