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
``delta_entropy``) computed by our tiled kernel :mod:`atomscore.quests.kernels.gaussian`, which
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
from typing import NamedTuple

import numpy as np

from atomscore.errors import InputError
from atomscore.io import to_jsonable
from atomscore import index
from atomscore.quests.defaults import DEFAULT_BANDWIDTH
from atomscore.quests.kernels import gaussian
from atomscore.quantity import ScoreQuantity
from atomscore.score import AtomCenteredScore, DatasetScore, records_metadata
from atomscore.quests.reference import ReferenceSet
from atomscore.validation import (array_digest, check_choice, check_configs, check_int, check_positive, is_array_file,
                                  check_same_descriptor_settings, descriptor_settings, load_array, per_atom_array)

__all__ = ["QUESTSEfficiencyScore", "QUESTSDiversityScore", "QUESTSDeltaEntropyScore", "ReferenceSet",
           "SELECTION_MASK_KEY"]

#: per-atom boolean array read when ``apply_mask=True``
SELECTION_MASK_KEY = "selection_mask"


def _per_configuration(values, masks, n_h):
    """Rows of the masked atoms back into one array per configuration (NaN where masked out)."""
    out, start = [], 0
    for mask in masks:
        full = np.full((len(mask),) if n_h is None else (len(mask), n_h), np.nan)
        n = int(mask.sum())
        full[mask] = values[start:start + n]
        start += n
        out.append(full)
    return out


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
        x = per_atom_array(atoms, descriptors_key, index=i, ncols=dim,
                           like="the reference_set" if name != "dataset" else "the first configuration")
        dim = x.shape[1]
        mask = _selection_mask(atoms, i) if apply_mask else np.ones(len(atoms), dtype=bool)
        blocks.append(x[mask])
        masks.append(mask)
    rows = np.concatenate(blocks, axis=0) if blocks else np.zeros((0, dim or 0))
    return rows, masks


def check_bandwidth(bandwidth, name="bandwidth"):
    """The kernel bandwidth ``h`` (descriptor units) as every QUESTS score (and command) checks it:
    a positive number or a 1-D array of them; returns it as a float or array."""
    return check_positive(bandwidth, name, allow_array=True)


def _precision(precision):
    return check_choice(precision, "precision", gaussian.PRECISIONS)


def _metadata_value(value):
    arr = np.asarray(value)
    return arr.tolist() if arr.ndim else float(arr)


def _kernel_options(backend, device, sample_size=None, seed=None):
    """Check ``backend`` and ``device`` (and ``sample_size``, ``seed`` where given); return them."""
    backend = check_choice(backend, "backend", gaussian.BACKENDS)
    gaussian._engine(backend, device)  # refuses a device numpy lacks, a missing torch, an absent GPU
    out = {"backend": backend, "device": device}
    if sample_size is not None:
        out["sample_size"] = check_int(sample_size, "sample_size", minimum=2)
        out["seed"] = None if seed is None else check_int(seed, "seed", minimum=0)
    return out


def _kernel_metadata(args):
    """The backend (and device), and for a sampled estimate its sample size and seed
    (``args``: every compute argument, defaults filled in)."""
    meta = {"backend": args["backend"]}
    if meta["backend"] != "numpy":
        meta["device"] = args["device"] or "cpu"
    if args.get("sample_size") is not None:
        meta["sample_size"] = int(args["sample_size"])
        meta["seed"] = args["seed"]
    return meta


def check_prune(prune, prune_tolerance, precision, backend="numpy", exact_only=None):
    """The pruning tolerance a QUESTS score (or command) uses: a float, ``None`` for the dense
    sums. Checked as the kernel checks it (``prune_tolerance`` without ``prune`` refused), and
    refused where only the dense numpy pass runs: another ``backend``, or ``exact_only`` (the
    name of the argument that asks for an estimate, e.g. ``'sample_size'``)."""
    tol = gaussian.prune_option(prune, prune_tolerance, _precision(precision))
    if tol is not None and backend != "numpy":
        raise InputError(f"prune: the pruned kernel sums run on the numpy backend only, got backend={backend!r} "
                         "(use backend='numpy' or drop prune)")
    if tol is not None and exact_only is not None:
        raise InputError(f"prune: prunes the exact kernel sums, not an estimate ({exact_only}: drop one of them)")
    return tol


def _prune_metadata(args):
    """``{'prune_tolerance': tol}`` of a pruned call (the tolerance resolved by precision), else nothing."""
    tol = gaussian.prune_option(args.get("prune", False), args.get("prune_tolerance"), args["precision"])
    return {} if tol is None else {"prune_tolerance": tol}


def _pruned_log_sums(queries, reference, h, precision, tol):
    """``log p`` (rows, H) of the pruned pass and each bandwidth's largest skipped-mass bound
    (relative to a row's sum; every ``log p`` is low by at most it, nats)."""
    logp, bound = gaussian.pruned_log_kernel_sums(queries, reference, np.atleast_1d(h), precision=precision,
                                                  prune_tolerance=tol)
    return logp, bound.max(axis=0) if len(bound) else np.zeros(logp.shape[1])


#: metadata key of the pruned sums' bound: the largest skipped kernel mass relative to a row's sum
PRUNE_BOUND_KEY = "prune_skipped_bound"


# ----------------------------------------------------------------------------- row-block jobs

#: compute arguments a row-block job gets besides the user's (never accepted from a user)
_ROWS_ARG, _BLOCK_ARG = "_dataset_rows", "_row_block"


class _RowBlock(NamedTuple):
    """What one row-block job computes: ``log p_i`` of rows ``start:stop`` against all N."""

    index: int
    count: int
    start: int
    stop: int
    n_environments: int
    scalar: bool
    log_sums: np.ndarray  # (stop - start, H)
    dataset: str = None  # sha256 of the dataset's rows: blocks of two datasets never mix
    skipped_bound: list = None  # pruned: each bandwidth's largest skipped-mass bound over the block's rows

    def as_dict(self):
        out = {"index": self.index, "count": self.count, "rows": [self.start, self.stop],
               "n_environments": self.n_environments, "scalar_bandwidth": self.scalar,
               "dataset": self.dataset, "log_kernel_sums": self.log_sums.tolist()}
        if self.skipped_bound is not None:
            out[PRUNE_BOUND_KEY] = self.skipped_bound
        return out


def _configs_digest(configs, key) -> str:
    """sha256 of the positions, numbers and ``arrays[key]`` of configurations: what a column
    block's queries are, so that blocks of other queries are never combined."""
    import hashlib

    digest = hashlib.sha256()
    for atoms in configs:
        for arr in (atoms.numbers, atoms.positions, atoms.arrays.get(key)):
            if arr is not None:
                digest.update(np.ascontiguousarray(arr, dtype=np.float64).tobytes())
                digest.update(str(np.shape(arr)).encode())
    return digest.hexdigest()


def _row_blocks(configs, masks, batch_size):
    """``(config start, config stop, row start, row stop)`` of blocks of ``batch_size`` configurations."""
    counts = np.concatenate([[0], np.cumsum([int(m.sum()) for m in masks])])
    return [(a, min(a + batch_size, len(configs)), int(counts[a]), int(counts[min(a + batch_size, len(configs))]))
            for a in range(0, len(configs), batch_size)]


# ----------------------------------------------------------------------------- dataset scores

class _QUESTSDatasetScore(DatasetScore):
    """Shared argument handling of the two dataset scores."""

    _MIN_ENVIRONMENTS = 1
    #: the measure of :class:`~atomscore.quests.kernels.gaussian.DatasetInformation` this score gives
    _MEASURE = None

    def __init__(self):
        super().__init__()

    def _rows(self, dataset, descriptors_key, bandwidth, apply_mask, precision):
        rows, _ = _gather(dataset, descriptors_key, apply_mask)
        self.note_metadata(descriptor_settings=descriptor_settings(dataset, descriptors_key, "dataset"))
        h = check_bandwidth(bandwidth)
        _precision(precision)
        if len(rows) < self._MIN_ENVIRONMENTS:
            what = "selected environments (apply_mask=True)" if apply_mask else "environments"
            raise InputError(f"dataset: {type(self).__name__} needs at least {self._MIN_ENVIRONMENTS} {what}, "
                             f"got {len(rows)}")
        return rows, h

    def check_compute_args(self, configs, score_quantity, compute_args):
        """Quantity, descriptors, mask, bandwidth and kernel options: checked before a run writes."""
        self.parse_quantity(score_quantity)
        args = self._with_defaults(compute_args)
        self._rows(configs, args["descriptors_key"], args["bandwidth"], args["apply_mask"], args["precision"])
        _kernel_options(args["backend"], args["device"], args["sample_size"], args["seed"])
        check_prune(args["prune"], args["prune_tolerance"], args["precision"], args["backend"],
                         "sample_size" if args["sample_size"] is not None else None)

    def get_metadata(self, score_quantity, **compute_args):
        """The bandwidth (and precision, kernel backend, sample) that define the number."""
        args = self._with_defaults(compute_args)
        return {"bandwidth": _metadata_value(args["bandwidth"]), "precision": args["precision"],
                **_kernel_metadata(args), **_prune_metadata(args)}

    def _measures(self, dataset, descriptors_key, bandwidth, apply_mask, precision, sample_size, seed, backend,
                  device, prune, prune_tolerance):
        """Checked inputs, then entropy, diversity and efficiency from one kernel pass: the
        exact values (pruned with ``prune``, the bound noted), or with ``sample_size`` their
        sampled ``Estimate`` s."""
        rows, h = self._rows(dataset, descriptors_key, bandwidth, apply_mask, precision)
        options = _kernel_options(backend, device, sample_size, seed)
        tol = check_prune(prune, prune_tolerance, precision, backend,
                               "sample_size" if sample_size is not None else None)
        kernel = dict(precision=precision, backend=backend, device=device)
        if tol is not None:
            logp, bound = _pruned_log_sums(rows, None, h, precision, tol)
            self.note_metadata(**{PRUNE_BOUND_KEY: _metadata_value(bound[0] if np.ndim(h) == 0 else bound)})
            return gaussian.information_from_log_sums(logp, np.ndim(h) == 0)._asdict()
        if sample_size is None:
            return gaussian.dataset_information(rows, h, **kernel)._asdict()
        if len(rows) < 2:
            raise InputError(f"dataset: a sampled estimate needs at least 2 environments, got {len(rows)}")
        return gaussian.estimate_information(rows, h, options["sample_size"], options["seed"], **kernel)

    @records_metadata
    def compute(self, dataset, score_quantity=None, descriptors_key="descriptors",
                bandwidth=DEFAULT_BANDWIDTH, apply_mask=False, precision="float64", sample_size=None, seed=0,
                backend="numpy", device=None, prune=False, prune_tolerance=None):
        """The score's value for the whole dataset: efficiency (dimensionless) or diversity (nats).

        Parameters
        ----------
        dataset : list of ase.Atoms
            Each with per-atom descriptors in ``arrays[descriptors_key]``; never modified.
        score_quantity : ScoreQuantity or str, optional
            ``EFFICIENCY`` or ``DIVERSITY``, the one the score supports (the default).
        descriptors_key : str
        bandwidth : float or array_like of float
            Kernel bandwidth ``h`` (descriptor units); an array gives one value per bandwidth.
        apply_mask : bool
            Use only atoms with ``arrays['selection_mask']`` true.
        precision : {'float64', 'float32'}
            Kernel arithmetic (float32: about 3x faster, 1e-5 relative).
        sample_size : int, optional
            Estimate from the kernel sums of this many environments (drawn without
            replacement by ``seed``) against all N: cost ``sample_size x N`` instead of
            ``N^2 / 2`` (:func:`~atomscore.quests.kernels.gaussian.estimate_information`).
        seed : int
            Seed of the sample.
        backend : {'numpy', 'torch'}
            Kernel backend (``'torch'`` needs ``atomscore[gpu]``).
        device : str, optional
            torch device, ``'cpu'`` or ``'cuda'``.
        prune : bool
            Skip the kernel terms that cannot matter: each environment's skipped terms sum to
            at most ``prune_tolerance`` of its kernel sum (numpy backend, exact values only;
            :func:`~atomscore.quests.kernels.gaussian.log_kernel_sums`). The tolerance used
            is recorded in the metadata as ``prune_tolerance``, and the largest bound met as
            ``prune_skipped_bound``: every ``log p`` is low by at most it (nats), so entropy and
            diversity are high by at most it.
        prune_tolerance : float, optional
            With ``prune``: the relative bound (default 1e-10 in float64, 1e-7 in float32).

        Returns
        -------
        ScoreFloat or ScoreArray or Estimate
            One value (one per bandwidth for an array), carrying its metadata; with
            ``sample_size`` an ``Estimate(value, standard_error)``.
        """
        return self._value(dataset, score_quantity, descriptors_key=descriptors_key, bandwidth=bandwidth,
                           apply_mask=apply_mask, precision=precision, sample_size=sample_size, seed=seed,
                           backend=backend, device=device, prune=prune, prune_tolerance=prune_tolerance)

    def _value(self, dataset, score_quantity, **compute_args):
        """The score's measure, or with ``sample_size`` its sampled ``Estimate`` (the standard
        error also noted in the metadata)."""
        self.parse_quantity(self.supported_score_quantities[0] if score_quantity is None else score_quantity)
        value = self._measures(dataset, **compute_args)[self._MEASURE]
        if isinstance(value, gaussian.Estimate):
            self.note_metadata(standard_error=_metadata_value(value.standard_error))
        return value

    @records_metadata
    def information(self, dataset, **compute_args):
        """Entropy (nats), diversity (nats) and efficiency of ``dataset`` from one kernel pass.

        The numbers of :class:`QUESTSEfficiencyScore` and :class:`QUESTSDiversityScore` (and
        the entropy ``H`` behind the efficiency), with the arguments of :meth:`compute`.

        Returns
        -------
        dict
            ``{'entropy', 'diversity', 'efficiency'}`` (floats, arrays per bandwidth, or
            ``Estimate`` s with ``sample_size``), carrying the metadata ``compute`` records.
        """
        self._check_argument_names(compute_args, f"{type(self).__name__}.information")
        measures = self._measures(dataset, **self._with_defaults(compute_args))
        return {name: measures[name] for name in ("entropy", "diversity", "efficiency")}

    def parse_for_storage(self, compute_results, list_of_configs=None, metadata=None):
        """``{KEY_score: value, '_metadata': ...}``; a sampled estimate adds ``KEY_standard_error``
        (also in the metadata, as ``standard_error``); a row-block job writes its
        ``KEY_row_block`` (its rows' log kernel sums) instead of a value."""
        if isinstance(compute_results, _RowBlock):
            return {f"{self.OUTPUT_KEY}_row_block": compute_results.as_dict(),
                    "_metadata": to_jsonable(self._metadata_or(metadata, compute_results))}
        if not isinstance(compute_results, gaussian.Estimate):
            return super().parse_for_storage(compute_results, list_of_configs, metadata)
        meta = self._metadata_or(metadata, compute_results)
        error = _metadata_value(compute_results.standard_error)
        meta.setdefault("standard_error", error)
        return {self.result_key: to_jsonable(compute_results.value), f"{self.OUTPUT_KEY}_standard_error": error,
                "_metadata": to_jsonable(meta)}


    # -- row-block jobs: run(..., batch_size=B) with 1 < B < number of configurations
    def plan_jobs(self, configs, compute_args, batch_size):
        """Row blocks of ``batch_size`` configurations, each job summing its rows against all.

        ``batch_size=1`` (the default of ``run``) or one covering the dataset gives one job.
        Every block gets the dataset's (selected) descriptors as the same array, which the
        run writes once and hard-links into each folder.
        """
        if batch_size <= 1 or batch_size >= len(configs):
            return [(list(configs), dict(compute_args))]
        if compute_args.get("sample_size") is not None:
            raise InputError(f"{type(self).__name__}.run: sample_size (a sampled estimate) runs as one job; "
                             f"got batch_size={batch_size} (use batch_size=1, or drop sample_size for the exact "
                             "value in row blocks)")
        args = self._with_defaults(compute_args)
        rows, masks = _gather(configs, args["descriptors_key"], args["apply_mask"])
        blocks = _row_blocks(configs, masks, batch_size)
        dataset = array_digest(rows)["sha256"]
        return [(configs[a:b], {**compute_args, _ROWS_ARG: rows,
                                _BLOCK_ARG: {"index": k, "count": len(blocks), "rows": [r0, r1], "dataset": dataset}})
                for k, (a, b, r0, r1) in enumerate(blocks)]

    def run_batch(self, configs, score_quantity, compute_args):
        """A job's work: the dataset's value, or for a row block its rows' log kernel sums."""
        if _ROWS_ARG not in compute_args:
            return super().run_batch(configs, score_quantity, compute_args)
        return self._row_block(configs, score_quantity, **compute_args)

    @records_metadata
    def _row_block(self, configs, score_quantity, **compute_args):
        """One row block: ``log p_i`` of its rows against all the dataset's rows."""
        args = dict(compute_args)
        rows = load_array(args.pop(_ROWS_ARG), _ROWS_ARG, ndim=2)
        block = args.pop(_BLOCK_ARG)
        self.parse_quantity(score_quantity)
        self._check_argument_names(args, f"{type(self).__name__} compute_args")
        args = self._with_defaults(args)
        self.note_metadata(descriptor_settings=descriptor_settings(configs, args["descriptors_key"], "dataset"))
        h = check_bandwidth(args["bandwidth"])
        precision = _precision(args["precision"])
        options = _kernel_options(args["backend"], args["device"])
        tol = check_prune(args["prune"], args["prune_tolerance"], precision, options["backend"])
        start, stop = block["rows"]
        dataset = array_digest(rows)["sha256"]
        if block.get("dataset") != dataset:
            raise InputError(f"{_ROWS_ARG}: the dataset's rows (sha256 {dataset[:12]}...) are not those the run "
                             f"planned (sha256 {str(block.get('dataset'))[:12]}...)")
        if tol is None:
            logp, bound = gaussian.log_kernel_sums(rows[start:stop], rows, np.atleast_1d(h), precision=precision,
                                                   backend=options["backend"], device=options["device"]), None
        else:  # the block's bound travels with its sums (not the metadata, which all blocks share)
            logp, bound = _pruned_log_sums(rows[start:stop], rows, h, precision, tol)
            bound = bound.tolist()
        return _RowBlock(block["index"], block["count"], start, stop, len(rows), np.ndim(h) == 0, logp, dataset,
                         bound)

    @classmethod
    def reduce_job_results(cls, results):
        """Put row blocks back together: their log kernel sums in row order give exactly
        the value of :meth:`compute` (one result dict); other results pass unchanged."""
        key = f"{cls.OUTPUT_KEY}_row_block"
        blocks = [r for r in results if isinstance(r, dict) and key in r]
        if not blocks:
            return results
        if len(blocks) != len(results):
            raise InputError(f"{cls.__name__}.data_from_calc_ids: calc ids mix row blocks and whole-dataset jobs")
        count = blocks[0][key]["count"]
        indices = sorted(b[key]["index"] for b in blocks)
        if indices != list(range(count)) or any(b[key]["count"] != count for b in blocks):
            raise InputError(f"{cls.__name__}.data_from_calc_ids: expected the {count} row blocks of one run "
                             f"(indices 0..{count - 1}), got indices {indices}; pass every calc id run() returned")
        ordered = sorted(blocks, key=lambda b: b[key]["index"])
        datasets = [b[key].get("dataset") for b in ordered]
        if None in datasets or len(set(datasets)) != 1:
            raise InputError(f"{cls.__name__}.data_from_calc_ids: row blocks of different datasets (sha256 of "
                             f"the rows by block index: {[str(d)[:12] for d in datasets]}); results of different "
                             "runs never mix: pass the calc ids of one run")
        meta = ordered[0]["_metadata"]
        for b in ordered:
            if b["_metadata"] != meta:  # name what differs: e.g. a pruned and a dense block never mix
                other = b["_metadata"]
                keys = sorted(k for k in set(meta) | set(other) if meta.get(k) != other.get(k))
                differ = ", ".join(f"{k}: {other.get(k)!r} vs {meta.get(k)!r}" for k in keys)
                raise InputError(f"{cls.__name__}.data_from_calc_ids: row block {b[key]['index']} was computed with "
                                 f"other settings than block 0 ({differ}); results of different runs never mix")
        bounds = [b[key].get(PRUNE_BOUND_KEY) for b in ordered]
        if len({b is None for b in bounds}) > 1:
            raise InputError(f"{cls.__name__}.data_from_calc_ids: row blocks mix pruned and dense kernel sums")
        if bounds[0] is not None:  # the whole dataset's bound: the largest of its blocks'
            bound = np.max(np.asarray(bounds, dtype=np.float64), axis=0)
            scalar = ordered[0][key]["scalar_bandwidth"]
            meta = {**meta, PRUNE_BOUND_KEY: _metadata_value(bound[0] if scalar else bound)}
        logp = np.concatenate([np.asarray(b[key]["log_kernel_sums"], dtype=np.float64).reshape(
            b[key]["rows"][1] - b[key]["rows"][0], -1) for b in ordered])
        if len(logp) != ordered[0][key]["n_environments"]:
            raise InputError(f"{cls.__name__}.data_from_calc_ids: the blocks hold {len(logp)} rows, "
                             f"the dataset {ordered[0][key]['n_environments']}")
        info = gaussian.information_from_log_sums(logp, ordered[0][key]["scalar_bandwidth"])
        value = getattr(info, cls._MEASURE)
        return [{cls.OUTPUT_KEY + "_score": _metadata_value(value), "_metadata": meta}]


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
    _MEASURE = "efficiency"


class QUESTSDiversityScore(_QUESTSDatasetScore):
    """Dataset diversity ``log sum_i 1 / p_i`` (nats), the log effective number of distinct environments.

    Examples
    --------
    >>> diversity = QUESTSDiversityScore().compute(dataset, 'DIVERSITY', bandwidth=0.015)  # doctest: +SKIP
    """

    OUTPUT_KEY = "quests_diversity"
    supported_score_quantities = (ScoreQuantity.DIVERSITY,)
    _MEASURE = "diversity"


# ----------------------------------------------------------------------------- delta entropy

def _combine_columns(blocks):
    """``dH`` over the union of reference blocks from each block's ``dH_b``: ``-log sum_b exp(-dH_b)``
    (NaN, for unscored atoms, stays NaN)."""
    neg = -np.stack(blocks)
    top = np.max(neg, axis=0)
    with np.errstate(invalid="ignore"):
        return -(top + np.log(np.exp(neg - top).sum(axis=0)))


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
    #: compute argument a column-block job gets besides the user's
    _COLUMN_ARG = "_reference_block"

    def __init__(self):
        super().__init__()

    def _checked(self, configs, name, reference_set, descriptors_key, bandwidth, apply_mask, approx,
                 num_nearest_neighbors, graph_neighbors, precision, reference_settings, approx_index, approx_options,
                 backend, device, reference_block_size, prune, prune_tolerance):
        """Every argument checked, the reference loaded once (or taken as the ReferenceSet it is)."""
        ref = ReferenceSet.load(reference_set, descriptors_key, reference_settings)
        rows, masks = _gather(configs, descriptors_key, apply_mask, dim=ref.shape[1], name=name)
        query_settings = descriptor_settings(configs, descriptors_key, name)
        check_same_descriptor_settings(query_settings, f"the {name} descriptors (arrays[{descriptors_key!r}])",
                                       ref.settings, "the reference_set descriptors")
        if self._metadata_call is not None:  # digested only for a result's metadata
            self.note_metadata(reference_set=ref.provenance(), descriptor_settings=query_settings)
        h = check_bandwidth(bandwidth)
        approx = approx if isinstance(approx, str) and approx == "sampled" else _check_bool(approx, "approx")
        k = check_int(num_nearest_neighbors, "num_nearest_neighbors", minimum=1)
        check_int(graph_neighbors, "graph_neighbors", minimum=1)
        _precision(precision)
        index.check_index_options(approx_index, approx_options)
        if approx and k > len(ref):
            raise InputError(f"num_nearest_neighbors: expected at most the {len(ref)} reference descriptors, got {k}")
        if approx == "sampled":  # what defines the estimate (gaussian.estimate_delta_entropy's defaults)
            if np.ndim(h):
                raise InputError("approx='sampled': takes one bandwidth, got an array of bandwidths")
            self.note_metadata(approx_settings={"mode": "sampled", "n_cells": index.ivf_options(len(ref))["nlist"],
                                                "n_probe": 32, "sample_size": gaussian.default_sample_size(len(ref)),
                                                "exact_above": gaussian.EXACT_ABOVE, "seed": 0, "precision": "float32"})
        elif approx:  # the settings the index runs with (IVF: nlist/nprobe resolved for this reference)
            self.note_metadata(approx_settings=index.index_settings(approx_index, len(ref), approx_options))
        _kernel_options(backend, device)
        if approx and backend != "numpy":
            raise InputError(f"backend={backend!r}: applies to the exact sum; approx=True searches with faiss "
                             "(use backend='numpy')")
        if reference_block_size is not None:
            check_int(reference_block_size, "reference_block_size", minimum=1)
            if approx:
                raise InputError("reference_block_size: applies to the exact sum; approx=True needs the nearest "
                                 "neighbours over the whole reference set (drop one of them)")
        tol = check_prune(prune, prune_tolerance, precision, backend,
                               "approx" if approx else None)
        return ref.descriptors, rows, masks, h, approx, k, tol

    def check_compute_args(self, configs, score_quantity, compute_args):
        """Everything :meth:`compute_batch` checks, before a run writes any folder."""
        self.parse_quantity(score_quantity)
        self._checked(configs, "configs", **self._with_defaults(compute_args))

    def prepare_compute_args(self, compute_args):
        """A new dict whose ``reference_set`` is the checked :class:`ReferenceSet` (loaded once
        for the whole run; a ``.npy``/``.txt`` path made absolute first)."""
        args = self._with_defaults(compute_args)
        given = args["reference_set"]
        if isinstance(given, (str, os.PathLike)) and is_array_file(given):
            given = str(Path(given).resolve())
        out = {k: v for k, v in compute_args.items() if k != "reference_settings"}
        out["reference_set"] = ReferenceSet.load(given, args["descriptors_key"], args["reference_settings"])
        return out

    @records_metadata
    def compute(self, atoms, score_quantity=ScoreQuantity.DELTA_ENTROPY, reference_set=None,
                descriptors_key="descriptors", bandwidth=DEFAULT_BANDWIDTH, apply_mask=False, approx=False,
                num_nearest_neighbors=3, graph_neighbors=10, precision="float64", reference_settings=None,
                approx_index="flat", approx_options=None, backend="numpy", device=None, reference_block_size=None,
                prune=False, prune_tolerance=None):
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
        approx : bool or 'sampled'
            ``True``: sum over the ``num_nearest_neighbors`` nearest reference points only
            (exact k-NN through faiss; quests uses an approximate pynndescent graph here), an
            upper bound of dH. ``'sampled'``: the nearest k-means cells exactly and the rest
            from a sample (:func:`atomscore.quests.kernels.gaussian.estimate_delta_entropy`),
            with a standard error per query in the metadata as
            ``delta_entropy_standard_error`` (one list per configuration, nats); which to
            use when: docs/quests.md.
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
        backend : {'numpy', 'torch'}
            Backend of the exact sum (``'torch'`` needs ``atomscore[gpu]``).
        device : str, optional
            torch device, ``'cpu'`` or ``'cuda'``.
        reference_block_size : int, optional
            Sum over blocks of this many reference rows, combined by log-sum-exp (the same
            value to rounding); in :meth:`run` each block is a job of its own, so a reference
            set larger than one job fits.
        prune : bool
            Skip the kernel terms that cannot matter in the exact sum: each atom's skipped
            terms sum to at most ``prune_tolerance`` of its kernel sum (of each reference
            block's), numpy backend only (:func:`~atomscore.quests.kernels.gaussian.log_kernel_sums`).
            The tolerance used is recorded in the metadata as ``prune_tolerance`` and the
            largest bound met as ``prune_skipped_bound``: every dH is high by at most it (nats).
        prune_tolerance : float, optional
            With ``prune``: the relative bound (default 1e-10 in float64, 1e-7 in float32).

        Returns
        -------
        numpy.ndarray, shape (n_atoms,) (or (n_atoms, n_bandwidths)), nats
        """
        self.parse_quantity(score_quantity)
        from ase import Atoms

        if not isinstance(atoms, Atoms):
            raise InputError(f"atoms: expected ase.Atoms, got {type(atoms).__name__}")
        return self._delta_entropy(
            [atoms], "atoms", reference_set=reference_set, descriptors_key=descriptors_key, bandwidth=bandwidth,
            apply_mask=apply_mask, approx=approx, num_nearest_neighbors=num_nearest_neighbors,
            graph_neighbors=graph_neighbors, precision=precision, reference_settings=reference_settings,
            approx_index=approx_index, approx_options=approx_options, backend=backend, device=device,
            reference_block_size=reference_block_size, prune=prune, prune_tolerance=prune_tolerance)[0]

    @records_metadata
    def compute_batch(self, list_of_atoms, score_quantity=ScoreQuantity.DELTA_ENTROPY, **compute_args):
        """:meth:`compute` for every configuration, in one kernel pass over all their atoms.

        Takes the arguments of :meth:`compute` (the defaults are those of its signature).

        Returns
        -------
        list of numpy.ndarray
            One ``(n_atoms,)`` array (nats) per configuration.
        """
        self.parse_quantity(score_quantity)
        self._check_argument_names(compute_args, f"{type(self).__name__}.compute_batch")
        return self._delta_entropy(list_of_atoms, "list_of_atoms", **self._with_defaults(compute_args))

    def _delta_entropy(self, configs, name, **args):
        ref, rows, masks, h, approx, k, tol = self._checked(configs, name, **args)
        precision, backend, device = args["precision"], args["backend"], args["device"]
        n_h = np.size(h) if np.ndim(h) else None
        if len(rows) == 0:
            values = np.zeros((0,) if n_h is None else (0, n_h))
        elif approx == "sampled":
            values, errors = gaussian.estimate_delta_entropy(rows, ref, h)
            self.note_metadata(delta_entropy_standard_error=[[None if np.isnan(v) else float(v) for v in e]
                                                             for e in _per_configuration(errors, masks, None)])
        elif approx:
            values = gaussian.approx_delta_entropy(rows, ref, h, k, approx_index=args["approx_index"],
                                                   approx_options=args["approx_options"])
        elif tol is not None:  # pruned per reference block; the union skips at most the largest share
            step = args["reference_block_size"] or len(ref)
            sums = [_pruned_log_sums(rows, ref[c:c + step], h, precision, tol) for c in range(0, len(ref), step)]
            blocks = [-(logp[:, 0] if n_h is None else logp) for logp, _ in sums]
            values = blocks[0] if len(blocks) == 1 else _combine_columns(blocks)
            bound = np.max([b for _, b in sums], axis=0)
            self.note_metadata(**{PRUNE_BOUND_KEY: _metadata_value(bound[0] if n_h is None else bound)})
        else:
            step = args["reference_block_size"] or len(ref)
            blocks = [-gaussian.log_kernel_sums(rows, ref[c:c + step], h, precision=precision, backend=backend,
                                                device=device) for c in range(0, len(ref), step)]
            values = blocks[0] if len(blocks) == 1 else _combine_columns(blocks)
        return _per_configuration(values, masks, n_h)

    # -- column-block jobs: reference_block_size smaller than the reference set
    def plan_jobs(self, configs, compute_args, batch_size):
        """Batches of ``batch_size`` configurations; with ``reference_block_size`` each batch
        once per block of that many reference rows (the folder holds only its block)."""
        args = self._with_defaults(compute_args)
        ref = ReferenceSet.load(args["reference_set"], args["descriptors_key"], args["reference_settings"])
        batches = [(batch, {**batch_args, **ref.job_arguments()})
                   for batch, batch_args in super().plan_jobs(configs, compute_args, batch_size)]
        size = args["reference_block_size"]
        if size is None or size >= len(ref):
            return batches
        whole = ref.provenance()
        columns = [(c, min(c + size, len(ref))) for c in range(0, len(ref), size)]
        slices = [ref.descriptors[c0:c1] for c0, c1 in columns]  # one object per block: linked across batches
        key = compute_args.get("descriptors_key", "descriptors")
        queries = [_configs_digest(batch, key) for batch, _ in batches]
        return [(batch, {**args, "reference_set": slices[j], "reference_block_size": None,
                         self._COLUMN_ARG: {"row_batch": k, "index": j, "count": len(columns), "rows": [c0, c1],
                                            "reference_set": whole, "queries": queries[k]}})
                for k, (batch, args) in enumerate(batches) for j, (c0, c1) in enumerate(columns)]

    def run_batch(self, configs, score_quantity, compute_args):
        """A job's work; a column-block job records its block in the metadata."""
        args = dict(compute_args)
        block = args.pop(self._COLUMN_ARG, None)
        results = super().run_batch(configs, score_quantity, args)
        if block is not None:
            results.metadata["reference_block"] = block
        return results

    @classmethod
    def reduce_job_results(cls, results):
        """Combine the column blocks of each batch by log-sum-exp, ``dH = -log sum_b exp(-dH_b)``:
        the values and metadata of one run over the whole reference set."""
        def block_of(atoms):
            meta = atoms.info.get("_metadata", {})
            return meta.get(cls.OUTPUT_KEY, {}).get("reference_block") if isinstance(meta, dict) else None

        blocks = [block_of(a) for a in results]
        if all(b is None for b in blocks):
            return results
        if any(b is None for b in blocks):
            raise InputError(f"{cls.__name__}.data_from_calc_ids: calc ids mix reference column blocks and whole jobs")
        def settings(atoms):  # the metadata that defines dH, without the block's own place
            meta = dict(atoms.info["_metadata"][cls.OUTPUT_KEY])
            meta.pop("reference_block", None)
            meta.pop("reference_set", None)  # the block's slice; the whole set is compared below
            meta.pop(PRUNE_BOUND_KEY, None)  # each block's own; combined below (prune_tolerance stays compared)
            return meta

        where = f"{cls.__name__}.data_from_calc_ids"
        first = settings(results[0])
        for i, (atoms, block) in enumerate(zip(results, blocks)):
            if block.get("reference_set") != blocks[0].get("reference_set"):
                raise InputError(f"{where}: result {i} is a block of another reference set ({block.get('reference_set')}"
                                 f" vs {blocks[0].get('reference_set')}); results of different runs never mix")
            if settings(atoms) != first:
                raise InputError(f"{where}: result {i} was computed with other settings ({settings(atoms)} vs "
                                 f"{first}); results of different runs never mix")
        groups: dict = {}
        for atoms, block in zip(results, blocks):
            groups.setdefault(block["row_batch"], {}).setdefault(block["index"], []).append(atoms)
        for batch, columns in groups.items():
            queries = {b.get("queries") for b in blocks if b["row_batch"] == batch}
            if len(queries) != 1 or None in queries:
                raise InputError(f"{where}: batch {batch} holds reference blocks of different configurations; "
                                 "results of different runs never mix")
        key, count, out = f"{cls.OUTPUT_KEY}_score", blocks[0]["count"], []
        for batch in sorted(groups):
            columns = groups[batch]
            if sorted(columns) != list(range(count)) or len({len(v) for v in columns.values()}) != 1:
                raise InputError(f"{cls.__name__}.data_from_calc_ids: batch {batch} has reference blocks "
                                 f"{sorted(columns)} of {count}; pass every calc id run() returned")
            values = [_combine_columns([np.asarray(columns[j][i].arrays[key]) for j in range(count)])
                      for i in range(len(columns[0]))]
            meta = {k: v for k, v in columns[0][0].info["_metadata"][cls.OUTPUT_KEY].items() if k != "reference_block"}
            meta["reference_set"] = blocks[0]["reference_set"]
            if PRUNE_BOUND_KEY in meta:  # the union of the blocks skips at most the largest share of any
                meta[PRUNE_BOUND_KEY] = _metadata_value(np.max(
                    [np.asarray(columns[j][0].info["_metadata"][cls.OUTPUT_KEY][PRUNE_BOUND_KEY], dtype=np.float64)
                     for j in range(count)], axis=0))
            configs = []
            for atoms in columns[0]:
                new = atoms.copy()
                for name in [n for n in new.info if n.startswith(f"{cls.OUTPUT_KEY}_")]:
                    del new.info[name]
                new.info["_metadata"] = {k: v for k, v in new.info["_metadata"].items() if k != cls.OUTPUT_KEY}
                if not new.info["_metadata"]:
                    del new.info["_metadata"]
                del new.arrays[key]
                configs.append(new)
            out.extend(cls().parse_for_storage(values, configs, metadata=meta))
        return out

    def get_metadata(self, score_quantity, **compute_args):
        """Bandwidth, approx, k and graph neighbours, as the reference writes them (plus precision)."""
        args = self._with_defaults(compute_args)
        return {"bandwidth": _metadata_value(args["bandwidth"]), "approx": bool(args["approx"]),
                "num_nearest_neighbors": int(args["num_nearest_neighbors"]),
                "graph_neighbors": int(args["graph_neighbors"]), "precision": args["precision"],
                "approx_index": args["approx_index"],
                "approx_options": index.check_index_options(args["approx_index"], args["approx_options"]),
                **_kernel_metadata(args), **_prune_metadata(args)}
