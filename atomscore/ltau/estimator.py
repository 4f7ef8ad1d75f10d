"""LTAU estimator: per-training-atom error distributions (bins, PDFs, their store) looked up
by nearest neighbours; a query costs one k-NN search, the expected errors being precomputed.
Conventions and where they differ from ltau-ff: docs/internals.md ("LTAU estimator").
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from atomscore.errors import InputError
from atomscore.index import (INDEX_TYPES, as_float32, build_index, check_index_vectors, index_defaults,  # noqa: F401
                             read_index, set_search_args)
from atomscore.validation import check_choice, check_finite_output, check_int, load_array

#: the bin spacings: 'log' (geometric midpoints) and 'linear' (arithmetic midpoints)
BIN_SPACINGS = ("log", "linear")

# tolerance on sum(pdf * widths) == 1 for PDFs given directly
_PDF_NORM_RTOL = 1e-4


# --------------------------------------------------------------------------- binning

def make_bins(errors, nbins, range_limits=None, spacing="log"):
    """Bin edges for error magnitudes.

    Parameters
    ----------
    errors : array_like
        Error magnitudes (any shape; eV/Angstrom for forces). Used only when
        ``range_limits`` is ``None``: the edges then run from ``errors.min()`` to
        ``errors.max()``, as the reference does.
    nbins : int
        Number of bins (``nbins + 1`` edges).
    range_limits : (float, float), optional
        ``(low, high)`` of the edges, same unit as the errors.
    spacing : {'log', 'linear'}
        Log: edges equally spaced in ``log10`` (needs ``low > 0``); linear: equally spaced.

    Returns
    -------
    numpy.ndarray
        ``(nbins + 1,)`` increasing edges.

    Raises
    ------
    InputError
        Log spacing with a lower limit <= 0 (e.g. some errors are exactly 0 and no
        ``range_limits`` were given), a degenerate range, ``nbins < 1``.
    """
    nbins = check_int(nbins, "nbins", minimum=1)
    check_choice(spacing, "bin_spacing", BIN_SPACINGS)
    if range_limits is None:
        errors = np.asarray(errors, dtype=float)
        if errors.size == 0:
            raise InputError("errors: expected at least one error value to build bins from, got none")
        low, high = float(errors.min()), float(errors.max())
        source = "min/max of the errors"
    else:
        lim = load_array(range_limits, "range_limits", shape=(2,))
        low, high = float(lim[0]), float(lim[1])
        source = "range_limits"
    if not high > low:
        raise InputError(f"range_limits: expected low < high for the bins, got ({low!r}, {high!r}) from {source}")
    if spacing == "log":
        if low <= 0:
            raise InputError(
                f"bin_spacing='log': the lowest bin edge must be > 0, got {low!r} from {source}; "
                "errors of exactly 0 cannot sit on a log axis -- give range_limits=(low, high) with low > 0 "
                "(smaller errors are counted in the first bin) or use bin_spacing='linear'")
        edges = np.logspace(math.log10(low), math.log10(high), nbins + 1)
    else:
        edges = np.linspace(low, high, nbins + 1)
    edges[0], edges[-1] = low, high  # exact ends: 10**log10(x) may round away from x
    return edges


def check_bins(bins, spacing="log", name="bins"):
    """Check bin edges: 1-D, at least 2, finite, strictly increasing, > 0 for log spacing."""
    check_choice(spacing, "bin_spacing", BIN_SPACINGS)
    bins = load_array(bins, name, ndim=1)
    if bins.size < 2:
        raise InputError(f"{name}: expected at least 2 bin edges, got {bins.size}")
    steps = np.diff(bins)
    if np.any(steps <= 0):
        i = int(np.argmax(steps <= 0))
        raise InputError(f"{name}: expected strictly increasing edges, got {bins[i]!r} then {bins[i + 1]!r} at index {i}")
    if spacing == "log" and bins[0] <= 0:
        raise InputError(f"{name}: log bins must start at an edge > 0, got {bins[0]!r}; "
                         "use bin_spacing='linear' for edges starting at 0")
    return bins


def bin_midpoints(bins, spacing="log"):
    """Representative error of each bin: geometric mean of the edges for log bins,
    arithmetic mean for linear bins. Same unit as ``bins``."""
    bins = check_bins(bins, spacing)
    if spacing == "log":
        return np.sqrt(bins[:-1] * bins[1:])
    return 0.5 * (bins[:-1] + bins[1:])


def histogram_pdfs(error_logs, bins):
    """Per-training-point histogram densities of error samples.

    Parameters
    ----------
    error_logs : array_like, (n_samples, n_points)
        Error magnitudes, one column per training point (e.g. one row per epoch).
    bins : array_like, (nbins + 1,)
        Increasing bin edges.

    Returns
    -------
    numpy.ndarray, (n_points, nbins)
        Densities with ``sum(pdf * widths) == 1`` per point (unit: 1/error unit). A
        sample equal to the top edge is counted in the last bin; samples below the first /
        above the last edge are counted in the first / last bin.
    """
    logs = np.asarray(error_logs, dtype=float)
    bins = np.asarray(bins, dtype=float)
    nbins = bins.size - 1
    n_samples, n_points = logs.shape
    # one searchsorted over all samples instead of n_points calls to np.histogram
    which = np.searchsorted(bins, logs, side="right") - 1
    np.clip(which, 0, nbins - 1, out=which)
    flat = which + nbins * np.arange(n_points)[None, :]
    counts = np.bincount(flat.ravel(), minlength=n_points * nbins).reshape(n_points, nbins)
    return counts / (n_samples * np.diff(bins))[None, :]


def pdfs_from_error_logs(error_logs, nbins=None, bins=None, range_limits=None, spacing="log",
                         norm=False, name="error_pdfs"):
    """PDFs and bins from error logs of one model or of an ensemble.

    Parameters
    ----------
    error_logs : array_like or list of array_like
        One ``(epochs, N)`` array of error magnitudes, or ``(epochs, N, 3)`` error vectors
        with ``norm=True``; or a list of such arrays, one per ensemble member (their
        per-member PDFs are averaged, each member weighing the same). Arrays or ``.npy``
        paths.
    nbins : int, optional
        Number of bins when ``bins`` is not given (default 100).
    bins : array_like, optional
        Bin edges; default: :func:`make_bins` over all members' errors.
    range_limits, spacing
        As in :func:`make_bins`.
    norm : bool
        Take the Euclidean norm over the last axis (error vectors -> magnitudes).

    Returns
    -------
    pdfs : numpy.ndarray, (N, nbins)
    bins : numpy.ndarray, (nbins + 1,)
    """
    logs, bins = checked_error_logs(error_logs, nbins, bins, range_limits, spacing, norm, name)
    return member_mean_pdfs(logs, bins, 0, logs[0].shape[1]), bins


def member_mean_pdfs(logs, bins, start, stop):
    """The PDFs of training points ``start:stop``, averaged over the ensemble members."""
    pdfs = histogram_pdfs(logs[0][:, start:stop], bins)
    for arr in logs[1:]:
        pdfs += histogram_pdfs(arr[:, start:stop], bins)
    pdfs /= len(logs)
    return pdfs


def checked_error_logs(error_logs, nbins=None, bins=None, range_limits=None, spacing="log", norm=False,
                       name="error_pdfs"):
    """The checked ``(epochs, N)`` magnitude arrays of every member, and the bin edges
    (see :func:`pdfs_from_error_logs`)."""
    members = list(error_logs) if isinstance(error_logs, (list, tuple)) else [error_logs]
    if not members:
        raise InputError(f"{name}: expected an error log array or a non-empty list of them, got an empty list")
    logs = []
    for m, member in enumerate(members):
        label = name if len(members) == 1 else f"{name}[{m}]"
        arr = load_array(member, label, ndim=(3,) if norm else (2,))
        if norm:
            if arr.shape[-1] != 3:
                raise InputError(f"{label}: error_logs_norm=True expects (epochs, N, 3) error vectors, got shape {arr.shape}")
            arr = np.linalg.norm(arr, axis=-1)
        if arr.shape[0] < 1 or arr.shape[1] < 1:
            raise InputError(f"{label}: expected (epochs, N) with epochs, N >= 1, got shape {arr.shape}")
        if np.any(arr < 0):
            bad = tuple(int(i) for i in np.argwhere(arr < 0)[0])
            raise InputError(f"{label}: error magnitudes must be >= 0, got {arr[bad]!r} at index {bad}"
                             + ("" if norm else "; pass error vectors with error_logs_norm=True"))
        if logs and arr.shape[1] != logs[0].shape[1]:
            raise InputError(f"{label}: every ensemble member must log the same N training points; "
                             f"expected {logs[0].shape[1]} columns, got {arr.shape[1]}")
        logs.append(arr)
    if bins is None:
        nbins = 100 if nbins is None else nbins
        low = min(float(a.min()) for a in logs)
        high = max(float(a.max()) for a in logs)
        if range_limits is None:
            bins = make_bins(np.array([low, high]), nbins, None, spacing)
        else:
            bins = make_bins(None, nbins, range_limits, spacing)
    else:
        bins = check_bins(bins, spacing)
        if nbins is not None and check_int(nbins, "nbins", minimum=1) != bins.size - 1:
            raise InputError(f"nbins: expected {bins.size - 1} to match the {bins.size} edges given in bins, got {nbins}")
    return logs, bins


def check_pdfs(pdfs, bins, name="error_pdfs"):
    """Check densities ``(N, nbins)``: finite, >= 0, each integrating to 1 over the bins."""
    pdfs = load_array(pdfs, name, ndim=2)
    if pdfs.shape[1] != bins.size - 1:
        raise InputError(f"{name}: expected {bins.size - 1} columns (one per bin of the {bins.size} edges), got shape {pdfs.shape}")
    if pdfs.shape[0] < 1:
        raise InputError(f"{name}: expected at least one training point, got shape {pdfs.shape}")
    if np.any(pdfs < 0):
        i = int(np.argwhere(pdfs < 0)[0][0])
        raise InputError(f"{name}: densities must be >= 0, got a negative value for training point {i}")
    total = pdfs @ np.diff(bins)
    bad = np.abs(total - 1.0) > _PDF_NORM_RTOL
    if np.any(bad):
        i = int(np.argmax(bad))
        raise InputError(f"{name}: each row must be a density with sum(pdf * bin widths) == 1; training point {i} "
                         f"integrates to {total[i]!r} (for probabilities per bin, divide by the bin widths)")
    return pdfs


# --------------------------------------------------------------------------- estimator

#: where :class:`LTAUEstimator` keeps the training PDFs (see :class:`PDFStore`)
PDF_STORAGES = ("disk", "float64", "float32")

#: rows of PDFs handled at once while building (about 64 MB of float64)
_CHUNK_BYTES = 1 << 26


class PDFStore:
    """The ``(N, nbins)`` training PDFs, written once in row chunks and read back by rows.

    Prediction needs only the expected error of each training point (8 bytes, kept by the
    estimator); the PDFs serve :meth:`LTAUEstimator.predict_full` with ``pdfs=True`` or
    ``atol``, and only the rows of the neighbours found. ``storage``:

    * ``'disk'`` (default): float64, exact, in an anonymous temporary file (removed from the
      directory at once -- ``TMPDIR`` or the system's temporary folder -- and freed with the
      estimator), memory-mapped read-only: the process holds only the pages of rows read.
      ``N * nbins * 8`` bytes of disk (0.8 GB for 10^6 points and 100 bins).
    * ``'float64'``: the same numbers in memory (``N * nbins * 8`` bytes).
    * ``'float32'``: in memory, rounded to float32 (``N * nbins * 4`` bytes; PDFs and CDFs
      then carry a relative error of 6e-8, predictions none: they come from float64).
    """

    def __init__(self, n_rows, n_cols, storage="disk"):
        self.storage = check_choice(storage, "pdf_storage", PDF_STORAGES)
        self.shape = (int(n_rows), int(n_cols))
        self._rows_written = 0
        self._file = None
        if self.storage == "disk":
            self._file = tempfile.TemporaryFile(prefix="atomscore-ltau-pdfs-")
            self.array = None
        else:
            self.array = np.empty(self.shape, dtype=np.float32 if self.storage == "float32" else np.float64)

    def write(self, rows):
        """Append the next block of rows (float64)."""
        start = self._rows_written
        if self._file is not None:
            self._file.write(np.ascontiguousarray(rows, dtype=np.float64).tobytes())
        else:
            self.array[start:start + len(rows)] = rows
        self._rows_written += len(rows)

    def finish(self):
        if self._rows_written != self.shape[0]:
            raise RuntimeError(f"PDFStore: {self._rows_written} rows written, {self.shape[0]} expected")
        if self._file is not None:
            self._file.flush()
            self.array = np.memmap(self._file, dtype=np.float64, mode="r", shape=self.shape)
        return self

    def rows(self, index):
        """``array[index]`` as a plain float64 ndarray (any integer index array)."""
        return np.asarray(self.array[index], dtype=np.float64)

    def chunks(self):
        """``(start, stop, rows)`` over all rows, about 64 MB at a time."""
        step = max(1, _CHUNK_BYTES // (8 * max(1, self.shape[1])))
        for start in range(0, self.shape[0], step):
            stop = min(self.shape[0], start + step)
            yield start, stop, np.asarray(self.array[start:stop], dtype=np.float64)

    @property
    def memory_bytes(self):
        """Bytes held in the process' own memory (0 for ``'disk'``: the page cache holds it)."""
        return 0 if self.storage == "disk" else int(self.array.nbytes)


class _ChunkedPDFs:
    """PDFs made block by block (from error logs), never held whole."""

    def __init__(self, n_rows, n_cols, make):
        self.shape, self.make = (n_rows, n_cols), make


@dataclass
class LTAUPrediction:
    """What :meth:`LTAUEstimator.predict_full` returns (``None`` where not asked for).

    Attributes
    ----------
    errors : numpy.ndarray, (n,)
        Expected error magnitude per query (unit of the bins, e.g. eV/Angstrom).
    pdfs : numpy.ndarray, (n, nbins) or None
        Averaged error densities of the ``k`` neighbours.
    cdf : numpy.ndarray, (n,) or None
        Probability that the error is <= ``atol``; within [0, 1].
    distance : numpy.ndarray, (n,) or None
        Mean true-L2 descriptor distance to the ``k`` neighbours (descriptor unit).
    neighbors : numpy.ndarray, (n, k)
        Training indices of the neighbours (-1 where faiss found fewer than ``k``).
    """

    errors: np.ndarray
    neighbors: np.ndarray
    pdfs: np.ndarray | None = None
    cdf: np.ndarray | None = None
    distance: np.ndarray | None = None


class LTAUEstimator:
    """Error distributions of training points, looked up by k-nearest neighbours.

    Parameters
    ----------
    train_descriptors : array_like, (N, dim)
        Descriptor of every training point (atom).
    pdfs : array_like, (N, nbins)
        Error density of every training point over ``bins`` (``sum(pdf * widths) == 1``;
        unit 1/error unit). Build them from error logs with :meth:`from_error_logs`.
    bins : array_like, (nbins + 1,)
        Increasing bin edges (error unit, e.g. eV/Angstrom).
    bin_spacing : {'log', 'linear'}
        Decides the bin midpoints: geometric for log bins, arithmetic for linear bins.
    index_type : {'IndexFlatL2', 'IndexHNSWFlat', 'HNSW+IVFPQ'}
        faiss index (see :func:`index_defaults` for the tuning keys and defaults).
    index_args : dict, optional
        Tuning keys of the index.
    index : faiss.Index, optional
        A ready index over the same training descriptors (e.g. from :meth:`load` or
        :func:`read_index`); it must hold ``N`` vectors of dimension ``dim``, and the
        training descriptors themselves when they are given with a flat or HNSW index.
        With an index, ``train_descriptors`` may be ``None`` (``N`` from the PDFs,
        ``dim`` from the index).
    pdf_storage : {'disk', 'float64', 'float32'}
        Where the PDFs are kept (see :class:`PDFStore`): by default in a memory-mapped
        temporary file, so that the estimator holds 8 bytes per training point beyond the
        faiss index (the expected errors); PDFs and CDFs are read back for the neighbours
        found, exactly.

    Notes
    -----
    ``expected_errors[i] = sum_b pdfs[i, b] * widths[b] * midpoints[b]`` is computed once;
    ``predict`` returns the mean of it over the ``k`` nearest training points, which equals
    the expected error of the averaged PDF (what the reference computes by gathering
    ``(n, k, nbins)`` PDFs).
    """

    def __init__(self, train_descriptors, pdfs, bins, bin_spacing="log", index_type="IndexFlatL2",
                 index_args=None, index=None, pdf_storage="disk"):
        check_choice(index_type, "index_type", INDEX_TYPES)
        check_choice(pdf_storage, "pdf_storage", PDF_STORAGES)
        self.bin_spacing = check_choice(bin_spacing, "bin_spacing", BIN_SPACINGS)
        self.bins = check_bins(bins, bin_spacing)
        if not isinstance(pdfs, _ChunkedPDFs):
            pdfs = check_pdfs(pdfs, self.bins)
        given = train_descriptors is not None or index is None
        if given:
            # float32, what faiss takes: no float64 copy of N x dim (0.5 GB at 10^6 x 64)
            x = load_array(train_descriptors, "train_descriptors", ndim=2, dtype=np.float32)
        else:  # shape only: the index holds the descriptors
            x = np.broadcast_to(np.zeros(1, dtype=np.float32), (pdfs.shape[0], index.d))
        if x.shape[0] != pdfs.shape[0]:
            raise InputError(f"train_descriptors: expected one row per training point of the PDFs/error logs "
                             f"({pdfs.shape[0]}), got {x.shape[0]} rows")
        if x.shape[1] < 1:
            raise InputError(f"train_descriptors: expected at least one descriptor column, got shape {x.shape}")
        self.n_train, self.dim = x.shape
        self.index_type = index_type
        self.widths = np.diff(self.bins)
        self.midpoints = bin_midpoints(self.bins, bin_spacing)
        self._store, self.expected_errors = self._stored(pdfs, pdf_storage)
        check_finite_output(self.expected_errors, "LTAU expected error of each training point", "the error "
                            "logs / PDFs", hint=f"bins up to {float(self.bins[-1]):.3g}: errors this large overflow "
                            "float64; give the errors in a smaller unit")
        if index is None:
            self.index, self.index_args = build_index(x, index_type, index_args)
        else:
            self.index_args = index_defaults(index_type, self.n_train, self.dim, index_args)
            self._adopt_index(index, x if given else None)

    # -- construction helpers
    @classmethod
    def from_error_logs(cls, train_descriptors, error_logs, nbins=None, bins=None, range_limits=None,
                        bin_spacing="log", error_logs_norm=False, index_type="IndexFlatL2", index_args=None,
                        index=None, pdf_storage="disk"):
        """Build the estimator from error logs; see :func:`pdfs_from_error_logs`. The PDFs
        are made and stored block by block, never held whole."""
        logs, bins = checked_error_logs(error_logs, nbins=nbins, bins=bins, range_limits=range_limits,
                                        spacing=bin_spacing, norm=error_logs_norm)
        n = logs[0].shape[1]
        pdfs = _ChunkedPDFs(n, bins.size - 1, lambda start, stop: member_mean_pdfs(logs, bins, start, stop))
        return cls(train_descriptors, pdfs, bins, bin_spacing, index_type, index_args, index=index,
                   pdf_storage=pdf_storage)

    def _stored(self, pdfs, storage):
        """The PDFs written to a :class:`PDFStore` in blocks, and the expected errors (float64)."""
        n, nbins = pdfs.shape
        store = PDFStore(n, nbins, storage)
        expected = np.empty(n)
        step = max(1, _CHUNK_BYTES // (8 * nbins))
        for start in range(0, n, step):
            stop = min(n, start + step)
            block = pdfs.make(start, stop) if isinstance(pdfs, _ChunkedPDFs) else pdfs[start:stop]
            expected[start:stop] = (block * self.widths) @ self.midpoints
            store.write(block)
        return store.finish(), expected

    @property
    def pdfs(self):
        """The ``(N, nbins)`` training PDFs (read-only; a memory map with ``pdf_storage='disk'``)."""
        return self._store.array

    @property
    def pdf_storage(self):
        return self._store.storage

    @property
    def memory_bytes(self):
        """Bytes the estimator holds in memory beyond the faiss index: the expected errors,
        bins, and the PDFs unless they are on disk."""
        return int(self.expected_errors.nbytes + self.bins.nbytes * 3 + self._store.memory_bytes)

    def _adopt_index(self, index, train_descriptors=None):
        import faiss

        kind = type(faiss.downcast_index(index)).__name__
        expected = {"IndexFlatL2": ("IndexFlatL2", "IndexFlat"), "IndexHNSWFlat": ("IndexHNSWFlat",),
                    "HNSW+IVFPQ": ("IndexIVFPQ",)}[self.index_type]
        if kind not in expected:
            raise InputError(f"index: expected a faiss {' or '.join(expected)} for index_type={self.index_type!r}, "
                             f"got {kind}")
        if index.ntotal != self.n_train or index.d != self.dim:
            raise InputError(f"index: expected {self.n_train} vectors of dimension {self.dim} "
                             f"(the training descriptors), got {index.ntotal} of dimension {index.d}")
        if train_descriptors is not None and self.index_type != "HNSW+IVFPQ":
            check_index_vectors(index, train_descriptors)
        set_search_args(index, self.index_type, self.index_args)
        self.index = index

    # -- persistence
    def save_index(self, path):
        """Write the faiss index to ``path`` (faiss' own format)."""
        import faiss

        faiss.write_index(self.index, os.fspath(path))

    def load_index(self, path):
        """Replace the index by the one in ``path``; it must match the training set."""
        import faiss

        path = Path(path)
        if not path.is_file():
            raise InputError(f"index path: file not found: {str(path)!r}")
        self._adopt_index(faiss.read_index(os.fspath(path)))

    def save(self, directory):
        """Write the estimator to ``directory``: ``index.faiss`` and ``ltau.npz``.

        The training descriptors are not stored again: the index holds them (exactly
        for flat/HNSW indexes).
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.save_index(directory / "index.faiss")
        np.savez(directory / "ltau.npz", pdfs=np.asarray(self.pdfs), bins=self.bins,
                 bin_spacing=np.array(self.bin_spacing), index_type=np.array(self.index_type),
                 index_args_keys=np.array(list(self.index_args), dtype=str),
                 index_args_values=np.array(list(self.index_args.values()), dtype=np.int64),
                 dim=np.array(self.dim))

    @classmethod
    def load(cls, directory, pdf_storage="disk"):
        """Read an estimator written by :meth:`save` (PDFs kept as ``pdf_storage`` says)."""
        import faiss

        directory = Path(directory)
        for name in ("index.faiss", "ltau.npz"):
            if not (directory / name).is_file():
                raise InputError(f"LTAUEstimator.load: {str(directory / name)!r} not found")
        with np.load(directory / "ltau.npz", allow_pickle=False) as data:
            pdfs, bins = data["pdfs"], data["bins"]
            spacing, index_type = str(data["bin_spacing"]), str(data["index_type"])
            args = {str(k): int(v) for k, v in zip(data["index_args_keys"], data["index_args_values"])}
            dim = int(data["dim"])
        index = faiss.read_index(os.fspath(directory / "index.faiss"))
        if index.d != dim:
            raise InputError(f"LTAUEstimator.load: index.faiss has dimension {index.d}, ltau.npz says {dim}")
        # the index holds the descriptors
        return cls(None, pdfs, bins, spacing, index_type, args, index=index, pdf_storage=pdf_storage)

    # -- queries
    def _check_queries(self, x, k, name="descriptors"):
        x = load_array(x, name, ndim=(1, 2))
        if x.ndim == 1:
            x = x[None, :]
        if x.shape[1] != self.dim:
            raise InputError(f"{name}: expected descriptors of dimension {self.dim} (as the training descriptors), "
                             f"got {x.shape[1]}")
        k = check_int(k, "num_nearest_neighbors", minimum=1)
        if k > self.n_train:
            raise InputError(f"num_nearest_neighbors: expected at most the {self.n_train} training points, got {k}")
        return x, k

    def search(self, descriptors, k=1):
        """faiss k-NN search. Returns ``(squared_distances, indices)``, each ``(n, k)``."""
        x, k = self._check_queries(descriptors, k)
        return self.index.search(as_float32(x), k)

    def _mean_over_neighbors(self, values, idx):
        """Mean of ``values[idx]`` over axis 1, skipping -1 (missing) neighbours."""
        missing = idx < 0
        if not missing.any():
            return values[idx].mean(axis=1)
        found = (~missing).sum(axis=1)
        if np.any(found == 0):
            raise InputError(f"the {self.index_type} index found no neighbour for {int(np.sum(found == 0))} "
                             "queries; raise index_args 'nprobe' / 'efSearch'")
        gathered = values[np.where(missing, 0, idx)]
        mask = (~missing).reshape(missing.shape + (1,) * (gathered.ndim - 2))
        return (gathered * mask).sum(axis=1) / found.reshape((-1,) + (1,) * (gathered.ndim - 2))

    def predict(self, descriptors, k=1):
        """Expected error magnitude per query (error unit, e.g. eV/Angstrom).

        One faiss search plus the mean of ``k`` precomputed expected errors per query.

        Parameters
        ----------
        descriptors : array_like, (n, dim)
        k : int
            Number of nearest training points averaged (1 <= k <= N).

        Returns
        -------
        numpy.ndarray, (n,)
        """
        x, k = self._check_queries(descriptors, k)
        return self.predict_checked(as_float32(x), k)

    def predict_checked(self, descriptors32, k):
        """:meth:`predict` without validation, for callers that checked their input.

        ``descriptors32`` must be a C-contiguous float32 ``(n, dim)`` array of finite
        values and ``1 <= k <= N`` (the score checks each configuration, then fills one
        float32 buffer, so the queries are read once).
        """
        _, idx = self.index.search(descriptors32, k)
        return self._mean_over_neighbors(self.expected_errors, idx)

    def cdf_train(self, atol):
        """Per-training-point ``P(error <= atol)``, ``(N,)``, within [0, 1].

        Linear interpolation inside the bin that holds ``atol`` (the density is constant
        there); 0 below the first edge, 1 from the last edge on.
        """
        atol = self._check_atol(atol)
        out = np.empty(self.n_train)
        for start, stop, rows in self._store.chunks():
            out[start:stop] = self._cdf_of(rows, atol)
        return out

    @staticmethod
    def _check_atol(atol):
        atol = float(atol)
        if not math.isfinite(atol) or atol < 0:
            raise InputError(f"atol: expected a finite error tolerance >= 0, got {atol!r}")
        return atol

    def _cdf_of(self, pdf_rows, atol):
        """``P(error <= atol)`` of the given PDF rows (see :meth:`cdf_train`)."""
        b = int(np.searchsorted(self.bins, atol, side="right")) - 1
        if b < 0:
            return np.zeros(len(pdf_rows))
        if b >= self.widths.size:
            return np.ones(len(pdf_rows))
        below = (pdf_rows[:, :b] * self.widths[:b]).sum(axis=1)
        cdf = below + pdf_rows[:, b] * (atol - self.bins[b])
        return np.clip(cdf, 0.0, 1.0)

    def cdf_at(self, descriptors, errors, k=1):
        """``P(error <= errors[i])`` under query ``i``'s averaged PDF, ``(n,)`` within [0, 1].

        The probability integral transform of observed errors (eV/Å): for a calibrated
        uncertainty it is uniform on [0, 1]. Linear inside a bin, as :meth:`cdf_train`.
        """
        x, k = self._check_queries(descriptors, k)
        errors = load_array(errors, "errors", shape=(x.shape[0],))
        if np.any(errors < 0):
            raise InputError(f"errors: expected error magnitudes >= 0, got {errors.min()!r}")
        _, idx = self.index.search(as_float32(x), k)
        rows = np.unique(idx[idx >= 0])
        found = self._store.rows(rows)                                   # (rows, nbins) densities
        mass = np.concatenate([np.zeros((len(rows), 1)), np.cumsum(found * self.widths, axis=1)], axis=1)
        local = np.searchsorted(rows, np.where(idx >= 0, idx, rows[0]))  # (n, k) rows of ``found``
        b = np.searchsorted(self.bins, errors, side="right") - 1         # bin of each error
        inside = np.clip(b, 0, self.widths.size - 1)[:, None]
        cdf = mass[local, inside] + found[local, inside] * (errors - self.bins[inside[:, 0]])[:, None]
        cdf = np.where((b < 0)[:, None], 0.0, np.where((b >= self.widths.size)[:, None], 1.0, cdf))
        cdf = np.clip(cdf, 0.0, 1.0)
        present = idx >= 0
        return np.clip((cdf * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1), 0.0, 1.0)

    def predict_full(self, descriptors, k=1, pdfs=False, atol=None, distance=False):
        """Expected errors and, on request, PDFs, CDF at ``atol`` and mean k-NN distance.

        Parameters
        ----------
        descriptors : array_like, (n, dim)
        k : int
        pdfs : bool
            Return the averaged ``(n, nbins)`` densities (memory ``n * nbins * 8`` bytes).
        atol : float, optional
            Error tolerance (error unit); return ``P(error <= atol)`` per query.
        distance : bool
            Return the mean true-L2 distance to the ``k`` neighbours (faiss gives squared
            L2; approximate for ``HNSW+IVFPQ``).

        Returns
        -------
        LTAUPrediction
        """
        if atol is not None:
            atol = self._check_atol(atol)
        sq, idx = self.search(descriptors, k)
        out = LTAUPrediction(errors=self._mean_over_neighbors(self.expected_errors, idx), neighbors=idx)
        if pdfs or atol is not None:
            # only the rows of the neighbours found are read from the store, once each
            rows = np.unique(idx[idx >= 0])
            local = np.searchsorted(rows, np.where(idx >= 0, idx, rows[0]))
            local = np.where(idx >= 0, local, -1)
            found = self._store.rows(rows)
            if pdfs:
                out.pdfs = self._mean_over_neighbors(found, local)
            if atol is not None:
                out.cdf = np.clip(self._mean_over_neighbors(self._cdf_of(found, atol), local), 0.0, 1.0)
        if distance:
            d = np.sqrt(np.maximum(sq.astype(np.float64), 0.0))
            missing = idx < 0
            if missing.any():
                d = np.where(missing, 0.0, d).sum(axis=1) / np.maximum((~missing).sum(axis=1), 1)
            else:
                d = d.mean(axis=1)
            out.distance = d
        return out
