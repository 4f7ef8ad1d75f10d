"""LTAU forces uncertainty: expected force-error magnitude of each atom.

Every training atom carries the distribution of its force-error magnitude over the epochs
of training (LTAU). A query atom gets the averaged distribution of its ``k`` nearest
training atoms in descriptor space (faiss), and its score is the expected error of that
distribution. The numbers come from :class:`atomscore.ltau.estimator.LTAUEstimator`; see
its module for the conventions and for where they differ from the reference (top-edge
samples counted, arithmetic midpoints for linear bins, CDF within [0, 1], true-L2
distances, working ``HNSW+IVFPQ``). On log bins -- the default and the reference's
setting -- the scores equal the reference's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from atomscore.errors import InputError
from atomscore.ltau.estimator import BIN_SPACINGS, INDEX_TYPES, LTAUEstimator, read_index
from atomscore.quantity import ScoreQuantity
from atomscore.score import AtomCenteredScore, records_metadata
from atomscore.validation import (array_digest, check_choice, check_configs, check_finite_output, check_int,
                                  check_same_descriptor_settings, descriptor_settings, load_array, per_atom_array)


#: training atoms averaged per query atom by default: on the tiny-MACE silicon run of docs/ltau.md the
#: Spearman rank correlation with the true errors rose from k=1 to k=5 and stayed flat to k=20
DEFAULT_NEIGHBORS = 5


class LTAUForcesUQScore(AtomCenteredScore):
    """Per-atom force uncertainty from training-error distributions (LTAU).

    Parameters
    ----------
    train_descriptors : array_like, str or None, (N, dim)
        Descriptors of the N training atoms, or a ``.npy``/``.txt`` path. May be ``None``
        with ``index_path`` (the index holds them).
    error_pdfs : array_like, str or list
        With ``from_error_logs=False``: ``(N, nbins)`` error densities over ``bins``
        (``sum(pdf * widths) == 1`` per row; unit 1/(eV/Angstrom)).
        With ``from_error_logs=True``: the force-error magnitudes logged during training,
        ``(epochs, N)`` in eV/Angstrom; or a list of such arrays, one per ensemble member
        (their PDFs are averaged); or ``(epochs, N, 3)`` error vectors with
        ``error_logs_norm=True``. Arrays or ``.npy`` paths.
    bins : array_like or str, optional
        ``(nbins + 1,)`` increasing bin edges in eV/Angstrom. Required when the PDFs are
        given directly; with error logs, default: ``nbins`` bins spanning the logged
        errors (or ``range_limits``).
    from_error_logs : bool
        Build the PDFs from error logs (histograms per training atom).
    error_logs_norm : bool
        The logs hold error vectors; take their norms.
    nbins : int, optional
        Number of bins built from the error logs (default 100).
    range_limits : (float, float), optional
        ``(low, high)`` of the built bins, eV/Angstrom; errors outside are counted in the
        first / last bin. Needed with log bins when some logged error is exactly 0.
    bin_spacing : {'log', 'linear'}
        Spacing of built bins and choice of midpoints: geometric (log) or arithmetic (linear).
    index_type : {'IndexFlatL2', 'IndexHNSWFlat', 'HNSW+IVFPQ'}
        faiss index over the training descriptors.
    index_args : dict, optional
        Tuning of the index: ``IndexHNSWFlat``: ``M`` (32), ``efConstruction`` (40),
        ``efSearch`` (16); ``HNSW+IVFPQ``: ``nlist``, ``M``, ``nbits``, ``hnsw_m`` (32),
        ``efConstruction`` (40), ``efSearch`` (16), ``nprobe`` -- defaults chosen from the
        data as documented in :func:`atomscore.ltau.estimator.index_defaults`.
    train_settings : dict, optional
        Descriptor settings of ``train_descriptors`` (e.g. ``QUESTSDescriptor.settings``):
        recorded in the metadata and compared with the settings the queries record.
    index_path : str or os.PathLike, optional
        A saved faiss index (a file from :meth:`save_index`, or the folder written by
        ``LTAUEstimator.save``), loaded instead of building one -- for jobs and MD. It must
        be of ``index_type``, hold N vectors of dimension ``dim`` and, for flat/HNSW
        indexes with ``train_descriptors`` given, those very descriptors.

    Examples
    --------
    >>> score = LTAUForcesUQScore(train_descriptors=descriptors, error_pdfs=error_logs,
    ...                           from_error_logs=True, nbins=100)          # doctest: +SKIP
    >>> uq = score.compute_batch(dataset, ScoreQuantity.UNCERTAINTY,
    ...                          descriptors_key='descriptors', num_nearest_neighbors=5)  # doctest: +SKIP
    """

    OUTPUT_KEY = "ltau_forces_uq"
    supported_score_quantities = (ScoreQuantity.UNCERTAINTY,)

    def __init__(self, train_descriptors, error_pdfs, bins=None, from_error_logs=False,
                 error_logs_norm=False, nbins=None, range_limits=None, bin_spacing="log",
                 index_type="IndexFlatL2", index_args=None, index_path=None, train_settings=None):
        super().__init__(train_descriptors=train_descriptors, error_pdfs=error_pdfs, bins=bins,
                         from_error_logs=from_error_logs, error_logs_norm=error_logs_norm, nbins=nbins,
                         range_limits=range_limits, bin_spacing=bin_spacing, index_type=index_type,
                         index_args=index_args, index_path=index_path, train_settings=train_settings)
        if train_settings is not None and not isinstance(train_settings, dict):
            raise InputError(f"train_settings: expected a dict of descriptor settings (as QUESTSDescriptor.settings) "
                             f"or None, got {type(train_settings).__name__}")
        self._train_settings = train_settings
        check_choice(index_type, "index_type", INDEX_TYPES)
        check_choice(bin_spacing, "bin_spacing", BIN_SPACINGS)
        for flag, value in (("from_error_logs", from_error_logs), ("error_logs_norm", error_logs_norm)):
            if not isinstance(value, (bool, np.bool_)):
                raise InputError(f"{flag}: expected True or False, got {value!r}")
        if index_args is not None and not isinstance(index_args, dict):
            raise InputError(f"index_args: expected a dict or None, got {type(index_args).__name__}")
        index = None
        if index_path is not None:
            if not isinstance(index_path, (str, os.PathLike)):
                raise InputError(f"index_path: expected a path, got {type(index_path).__name__}")
            index = read_index(index_path)
        elif train_descriptors is None:
            raise InputError("train_descriptors: expected the (N, dim) training descriptors (or index_path, a "
                             "saved index), got None")
        # loaded once here: the estimator gets the array, the metadata its digest
        train = None if train_descriptors is None else load_array(train_descriptors, "train_descriptors", ndim=2)
        if train is not None:
            self._train_provenance = array_digest(train)
            if isinstance(train_descriptors, (str, os.PathLike)):
                self._train_provenance["path"] = str(train_descriptors)
        else:  # the saved index holds them
            self._train_provenance = {"shape": [int(index.ntotal), int(index.d)], "index_path": str(index_path)}
        if train_settings is not None:
            self._train_provenance["settings"] = dict(train_settings)
        if from_error_logs:
            self.estimator = LTAUEstimator.from_error_logs(
                train, error_pdfs, nbins=nbins,
                bins=None if bins is None else load_array(bins, "bins", ndim=1),
                range_limits=range_limits, bin_spacing=bin_spacing, error_logs_norm=bool(error_logs_norm),
                index_type=index_type, index_args=index_args, index=index)
        else:
            if bins is None:
                raise InputError("bins: expected the (nbins + 1,) bin edges of error_pdfs when from_error_logs=False, "
                                 "got None")
            if error_logs_norm:
                raise InputError("error_logs_norm=True needs from_error_logs=True (it applies to error logs)")
            if range_limits is not None:
                raise InputError("range_limits: only used to build bins from error logs (from_error_logs=True); "
                                 "with PDFs given directly, give their bins")
            if isinstance(error_pdfs, (list, tuple)) and error_pdfs and not np.isscalar(error_pdfs[0]) \
                    and np.ndim(error_pdfs[0]) != 1:
                raise InputError("error_pdfs: a list of arrays (ensemble) needs from_error_logs=True")
            bins_arr = load_array(bins, "bins", ndim=1)
            if nbins is not None and check_int(nbins, "nbins", minimum=1) != bins_arr.size - 1:
                raise InputError(f"nbins: expected {bins_arr.size - 1} to match the {bins_arr.size} edges of bins, got {nbins}")
            self.estimator = LTAUEstimator(train, load_array(error_pdfs, "error_pdfs", ndim=2),
                                           bins_arr, bin_spacing, index_type, index_args, index=index)

    def save_index(self, path):
        """Write the faiss index to a new file ``path`` (for ``index_path=``); never overwrites."""
        path = Path(path)
        if path.exists():
            raise InputError(f"save_index: {str(path)!r} exists; give a new file name")
        if not path.parent.is_dir():
            raise InputError(f"save_index: folder {str(path.parent)!r} not found")
        from atomscore.io import publish, temporary_name

        tmp = temporary_name(path)  # faiss writes by name: a whole file, then linked without clobbering
        try:
            self.estimator.save_index(tmp)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return publish(tmp, path, overwrite=False)

    # ------------------------------------------------------------------ inputs
    def _descriptors(self, configs, descriptors_key, num_nearest_neighbors):
        """Checked per-configuration descriptors (list of (n_atoms, dim) arrays) and k."""
        if not isinstance(descriptors_key, str):
            raise InputError(f"descriptors_key: expected a string (an atoms.arrays key), got {descriptors_key!r}")
        k = check_int(num_nearest_neighbors, "num_nearest_neighbors", minimum=1)
        if k > self.estimator.n_train:
            raise InputError(f"num_nearest_neighbors: expected at most the {self.estimator.n_train} training "
                             f"descriptors, got {k}")
        dim = self.estimator.dim
        out = []
        for i, atoms in enumerate(configs):
            if descriptors_key not in atoms.arrays:
                have = sorted(key for key in atoms.arrays if key not in ("numbers", "positions"))
                raise InputError(f"descriptors_key={descriptors_key!r}: configuration {i} has no "
                                 f"atoms.arrays[{descriptors_key!r}]; it has: {have or 'none'}")
            x = per_atom_array(atoms, descriptors_key, index=i)
            if x.shape[1] != dim:
                raise InputError(f"arrays[{descriptors_key!r}] (configuration {i}): expected descriptors of "
                                 f"dimension {dim} (as train_descriptors), got {x.shape[1]}")
            out.append(x)
        query_settings = descriptor_settings(configs, descriptors_key, "configurations")
        check_same_descriptor_settings(query_settings, f"the query descriptors (arrays[{descriptors_key!r}])",
                                       self._train_settings, "train_descriptors (train_settings)")
        self.note_metadata(descriptor_settings=query_settings)
        return out, k

    def check_compute_args(self, configs, score_quantity, compute_args):
        """Check quantity, descriptors (key, dimension, finite) and k before a run writes anything."""
        self.parse_quantity(score_quantity)
        args = self._with_defaults(compute_args)
        self._descriptors(check_configs(configs), args["descriptors_key"], args["num_nearest_neighbors"])

    # ------------------------------------------------------------------ compute
    @records_metadata
    def compute(self, atoms, score_quantity=ScoreQuantity.UNCERTAINTY, descriptors_key="descriptors",
                num_nearest_neighbors=DEFAULT_NEIGHBORS):
        """Expected force-error magnitude of every atom of one configuration.

        Parameters
        ----------
        atoms : ase.Atoms
            Holds per-atom descriptors in ``atoms.arrays[descriptors_key]``.
        score_quantity : ScoreQuantity or str
            Only ``UNCERTAINTY``.
        descriptors_key : str
        num_nearest_neighbors : int
            Training atoms averaged per query atom (default 5, measured: docs/ltau.md).

        Returns
        -------
        numpy.ndarray, (n_atoms,)
            eV/Angstrom (the unit of the error logs / bins).
        """
        self.parse_quantity(score_quantity)
        configs = check_configs([atoms], "atoms")
        return self._predict(configs, descriptors_key, num_nearest_neighbors)[0]

    @records_metadata
    def compute_batch(self, list_of_atoms, score_quantity=ScoreQuantity.UNCERTAINTY, **compute_args):
        """:meth:`compute` for every configuration, with one faiss search for all atoms.

        Takes the arguments of :meth:`compute` (the defaults are those of its signature).

        Returns
        -------
        list of numpy.ndarray
            One ``(n_atoms,)`` array per configuration, eV/Angstrom.
        """
        self.parse_quantity(score_quantity)
        configs = check_configs(list_of_atoms, "list_of_atoms")
        args = self._with_defaults(compute_args)
        return self._predict(configs, args["descriptors_key"], args["num_nearest_neighbors"])

    def _predict(self, configs, descriptors_key, num_nearest_neighbors):
        blocks, k = self._descriptors(configs, descriptors_key, num_nearest_neighbors)
        sizes = [b.shape[0] for b in blocks]
        if sum(sizes) == 0:
            return [np.zeros(0) for _ in blocks]
        # one float32 buffer for one faiss search over every atom (blocks are checked above)
        queries = np.empty((sum(sizes), self.estimator.dim), dtype=np.float32)
        ends = np.cumsum(sizes)
        for i, (block, end, size) in enumerate(zip(blocks, ends, sizes)):
            with np.errstate(over="ignore"):
                queries[end - size:end] = block
            if not np.all(np.isfinite(queries[end - size:end])):  # finite float64, too large for faiss' float32
                raise InputError(f"arrays[{descriptors_key!r}] (configuration {i}): descriptor values up to "
                                 f"{float(np.max(np.abs(block))):.3g} do not fit float32 (faiss); check the descriptors")
        values = self.estimator.predict_checked(queries, k)
        check_finite_output(values, "LTAU uncertainties", "the configurations' descriptors")
        return np.split(values, ends[:-1])

    def get_metadata(self, score_quantity, **compute_args):
        """Bins, index type and arguments, and k -- flat keys as the reference writes them."""
        est = self.estimator
        resolved = est.index_args if est.index_args else None
        args = self._with_defaults(compute_args)
        return {
            "bins": est.bins.tolist(),
            "bin_spacing": est.bin_spacing,
            "index_type": est.index_type,
            "index_args": resolved,
            "num_nearest_neighbors": int(args["num_nearest_neighbors"]),
            "train_descriptors": dict(self._train_provenance),
        }
