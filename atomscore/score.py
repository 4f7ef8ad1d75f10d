"""The Score contract: ``ScoreBase``, its four kinds, and results that carry their metadata.

A score author writes ``compute`` (decorated with :func:`records_metadata`; to vectorise,
also ``compute_batch``), names its ``OUTPUT_KEY`` and ``supported_score_quantities``, and
passes its constructor arguments to ``super().__init__`` so that ``self._init_args``
re-creates it. The signature of ``compute`` is the one source of the compute arguments and
their defaults (:meth:`ScoreBase.compute_defaults`). Everything else (saving results, job
folders, running through a workflow, gathering results) comes from here, the same for every
score, as ASE calculators share one ``calculate`` contract. The kinds and where each stores
its results: :class:`~atomscore.jobs.paths.ScoreKind`, and docs/jobs.md.
"""

from __future__ import annotations

import copy
import functools
import inspect
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from atomscore.errors import InputError
from atomscore.io import copy_with_labels, to_jsonable  # to_jsonable: also importable from here, as before
from atomscore.jobs.paths import ScoreKind
from atomscore.quantity import ScoreQuantity
from atomscore.validation import check_configs, check_finite_configs, check_int, check_keys

log = logging.getLogger(__name__)

class _class_or_instance_method:
    """A method that works from the class (``Score.data_from_calc_ids(ids)``) and from an
    instance alike; the first argument is whichever it was called on."""

    def __init__(self, func):
        self.func = func
        functools.update_wrapper(self, func)

    def __get__(self, obj, cls=None):
        import types

        return types.MethodType(self.func, obj if obj is not None else cls)


#: the default of a compute argument that has none (``compute_defaults`` lists it as required)
REQUIRED = inspect.Parameter.empty


class ScoreResults(list):
    """The results of one ``compute_batch`` call, carrying the metadata that defines them.

    A plain list in every other respect; ``save_results`` stores ``.metadata`` with it, so
    saving an earlier result never stores a later call's settings. A slice or a copy is a
    plain list again (it may no longer be the whole call's result).
    """

    def __init__(self, results=(), metadata=None):
        super().__init__(results)
        self.metadata = copy.deepcopy(metadata) if metadata is not None else {}


class ScoreArray(np.ndarray):
    """An array result (a per-atom score, a FIM) carrying the metadata of the call that computed it.

    Behaves as the ``numpy.ndarray`` it holds. Views, slices, reshapes and copies keep
    ``.metadata`` (they hold the computed numbers); ``numpy.asarray(result)`` and views of it
    still lead back to it; arithmetic and reductions give plain arrays (new numbers).
    """

    def __new__(cls, values, metadata=None):
        values = np.asarray(values)
        obj = np.ndarray.__new__(cls, values.shape, values.dtype)  # owns its data: views lead back here
        obj[...] = values
        obj.metadata = metadata
        return obj

    def __array_finalize__(self, obj):
        self.metadata = getattr(obj, "metadata", None)

    def __array_wrap__(self, array, context=None, return_scalar=False):
        plain = np.asarray(array).view(np.ndarray)
        return plain[()] if return_scalar else plain

    def __reduce__(self):
        return _restore, (np.asarray(self).copy(), self.metadata)


class ScoreFloat(np.float64):
    """A scalar result (a dataset's value) carrying the metadata of the call that computed it.

    A ``numpy.float64`` (so also a ``float``); arithmetic gives plain numbers.
    """

    def __new__(cls, value, metadata=None):
        obj = super().__new__(cls, value)
        obj.metadata = metadata
        return obj

    def __reduce__(self):
        return _restore, (float(self), self.metadata)

    def __repr__(self):
        return repr(float(self))  # as the Python float users had before


_CARRIER_TYPES: dict = {}


def _carrier_type(base):
    """A subclass of ``base`` (a tuple such as ``Estimate``, a dict) whose instances carry ``.metadata``."""
    if base not in _CARRIER_TYPES:
        def __reduce__(self):
            return _restore, (base(*self) if issubclass(base, tuple) else base(self), self.metadata)

        _CARRIER_TYPES[base] = type(base.__name__, (base,), {"__module__": base.__module__, "metadata": None,
                                                            "__reduce__": __reduce__, "__doc__": base.__doc__})
    return _CARRIER_TYPES[base]


def with_metadata(result, metadata):
    """``result`` as a value carrying ``metadata`` (a copy of it; the same numbers, the same behaviour).

    A list becomes a :class:`ScoreResults`, an array a :class:`ScoreArray`, a number a
    :class:`ScoreFloat`, a named tuple (``Estimate``) or dict an instance of a subclass with
    ``.metadata``; a plain tuple (several results of one call) carries it in each item.
    Other values (None, bool) are returned as they are.
    """
    if isinstance(result, list):
        return ScoreResults(result, metadata)
    if isinstance(result, np.ndarray):
        return ScoreArray(result, metadata)
    if isinstance(result, (float, np.floating)):
        return ScoreFloat(result, metadata)
    if isinstance(result, (bool, np.bool_)) or not isinstance(result, (int, np.integer, dict, tuple)):
        return result
    if isinstance(result, tuple) and not hasattr(result, "_fields"):  # several results, e.g. (fim, jacobians)
        return tuple(with_metadata(item, metadata) for item in result)
    carrier = _carrier_type(type(result))
    out = carrier(*result) if isinstance(result, tuple) else carrier(result)
    out.metadata = metadata
    return out


def _restore(value, metadata):
    return with_metadata(value, metadata)


def carried_metadata(result):
    """The metadata ``result`` carries (also through numpy views of an array result), or None."""
    value = result
    while value is not None:
        meta = getattr(value, "metadata", None)
        if isinstance(meta, dict) and isinstance(value, (ScoreResults, ScoreArray, ScoreFloat,
                                                         *_CARRIER_TYPES.values())):
            return meta
        value = value.base if isinstance(value, np.ndarray) else None
    return None


def _call_arguments(score, signature, args, kwargs):
    """``(score_quantity, {name: value})`` of one call of a compute method, defaults filled in
    (private ``_name`` arguments left out)."""
    params = list(signature.parameters)
    bound = signature.bind(score, *args, **kwargs)
    bound.apply_defaults()
    arguments = dict(bound.arguments)
    arguments.pop(params[0])  # self
    if len(params) > 1:
        arguments.pop(params[1], None)  # the data: atoms, dataset, list of properties
    extra = {}
    for name, param in signature.parameters.items():
        if param.kind is inspect.Parameter.VAR_KEYWORD:
            extra = arguments.pop(name, {}) or {}
        elif param.kind is inspect.Parameter.VAR_POSITIONAL:
            arguments.pop(name, None)
    arguments.update(extra)
    quantity = arguments.pop("score_quantity", None)
    # names starting with '_' are the run plan's (a row block's rows), not settings of the number
    return quantity, {k: v for k, v in arguments.items() if not k.startswith("_")}


def records_metadata(method):
    """Decorate a score's ``compute``/``compute_batch`` so that its result carries its metadata.

    After the call, ``score.get_metadata(score_quantity, **arguments)`` (every argument,
    defaults from the signatures filled in) plus the fields the call noted with
    :meth:`ScoreBase.note_metadata` form the call's metadata, recorded once per call (a
    ``compute_batch`` that calls ``compute`` per configuration records once). The result
    comes back as a value that carries it (:func:`with_metadata`): a :class:`ScoreResults`,
    :class:`ScoreArray` or :class:`ScoreFloat`.
    """
    signature = inspect.signature(method)

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        if getattr(self, "_metadata_call", None) is not None:
            return method(self, *args, **kwargs)  # inside a call that records: nothing to do
        noted = {}
        self._metadata_call = noted
        try:
            result = method(self, *args, **kwargs)
        finally:
            self._metadata_call = None
        quantity, arguments = _call_arguments(self, signature, args, kwargs)
        return self._with_metadata(result, self._call_metadata(quantity, arguments, noted))

    wrapper._records_metadata = True
    return wrapper


#: compute_defaults by (class, compute, compute_batch)
_COMPUTE_DEFAULTS: dict = {}


def _same_default(a, b):
    try:
        return a is b or (type(a) is type(b) and bool(a == b))
    except (TypeError, ValueError):
        return False


class ScoreBase:
    """Base of every score.

    Subclasses set ``OUTPUT_KEY`` and ``supported_score_quantities`` and implement
    :meth:`compute`. Constructor arguments are passed on to ``ScoreBase.__init__`` so that
    ``type(score)(**score._init_args)`` re-creates the score; array-like arguments may be
    arrays or paths to ``.npy``/``.txt`` files.

    Attributes
    ----------
    OUTPUT_KEY : str
        Results are stored under ``<OUTPUT_KEY>_score``.
    supported_score_quantities : tuple of ScoreQuantity
    kind : ScoreKind
        ``ATOM``, ``CONFIGURATION``, ``DATASET`` or ``MODEL`` (a ``str`` enum).
    single_job : bool
        If true, :meth:`run` writes one job holding every configuration.
    job_root : pathlib.Path or None
        Inside a job, the workflow root it was written under (set by the job runner): where
        a score that starts jobs of its own puts them. None outside a job.
    """

    OUTPUT_KEY: str = ""
    supported_score_quantities: tuple = ()
    kind: ScoreKind | None = None
    #: all configurations go into one job, whatever ``batch_size`` says (the score needs
    #: them together: a dataset value, weights over every candidate)
    single_job: bool = False
    job_root: Path | None = None

    def __init__(self, **init_args):
        self._init_args = dict(init_args)
        #: metadata of the last recorded call, for reading only (results carry their own)
        self._last_metadata = {}
        self._metadata_call = None
        self._run_folders: list[Path] = []

    # ------------------------------------------------------------------ contract
    @property
    def result_key(self) -> str:
        """The key results are stored under: ``<OUTPUT_KEY>_score``."""
        return f"{self.OUTPUT_KEY}_score"

    def parse_quantity(self, score_quantity) -> ScoreQuantity:
        """Return ``score_quantity`` as a member this score supports, or raise InputError."""
        return ScoreQuantity.parse(score_quantity, self.supported_score_quantities,
                                   where=f"{type(self).__name__} score_quantity")

    def compute(self, atoms, score_quantity, **compute_args):
        """Compute the score of one item (configuration, dataset or property list).

        Implementations are decorated with :func:`records_metadata`.
        """
        raise NotImplementedError(f"{type(self).__name__} does not implement compute")

    @records_metadata
    def compute_batch(self, list_of_atoms, score_quantity, **compute_args):
        """Compute the score of every configuration; a :class:`ScoreResults` with one result each."""
        return [self.compute(atoms, score_quantity, **compute_args) for atoms in list_of_atoms]

    # ------------------------------------------------------------------ metadata
    def note_metadata(self, **fields):
        """Add ``fields`` to the metadata of the call in progress (called from inside ``compute``).

        For what only the computation knows (the parameter map, the solver's status);
        outside a recorded call it does nothing.
        """
        call = getattr(self, "_metadata_call", None)
        if call is not None:
            call.update(copy.deepcopy(fields))

    def _call_metadata(self, quantity, arguments, noted=None) -> dict:
        """The metadata of a call with ``arguments`` (defaults filled in here) and the fields it noted."""
        if quantity is None and len(self.supported_score_quantities) == 1:
            quantity = self.supported_score_quantities[0]
        meta = dict(self.get_metadata(self.parse_quantity(quantity), **self._with_defaults(arguments)))
        meta.update(noted or {})
        return to_jsonable(meta)

    def _with_metadata(self, result, metadata):
        """``result`` carrying ``metadata`` (:func:`with_metadata`)."""
        self._last_metadata = metadata
        return with_metadata(result, metadata)

    @classmethod
    def compute_defaults(cls) -> dict:
        """``{name: default}`` of every compute argument, read from the signatures of
        ``compute`` and ``compute_batch`` (as scikit-learn reads ``__init__``).

        The one source of the arguments a score accepts and of their defaults: :meth:`run`
        checks names against it, the metadata fills in from it, the command line reads its
        defaults here. An argument without a default maps to :data:`REQUIRED`.

        Raises
        ------
        TypeError
            If ``compute`` and ``compute_batch`` give one argument two defaults.
        """
        # read once per class and pair of methods (inspect.signature costs ~15 us a method,
        # paid by every recorded call); a copy is given out
        key = (cls, cls.compute, cls.compute_batch)
        kept = _COMPUTE_DEFAULTS.get(key)
        if kept is None:
            kept = _COMPUTE_DEFAULTS[key] = cls._read_compute_defaults()
        return dict(kept)

    @classmethod
    def _read_compute_defaults(cls) -> dict:
        out = {}
        for method in ("compute", "compute_batch"):
            owner = next(k for k in cls.__mro__ if method in k.__dict__)
            if owner.__module__ == __name__:  # the contract's own: (data, score_quantity, **compute_args)
                continue
            for i, param in enumerate(inspect.signature(getattr(cls, method)).parameters.values()):
                if i < 2 or param.name == "score_quantity" or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    continue  # self, the data
                if param.name in out and not _same_default(out[param.name], param.default):
                    raise TypeError(f"{cls.__name__}: compute and compute_batch give {param.name!r} the defaults "
                                    f"{out[param.name]!r} and {param.default!r}; a default is written once")
                out.setdefault(param.name, param.default)
        return out

    def _with_defaults(self, compute_args) -> dict:
        """``compute_args`` (names checked) completed with the signature's defaults (required ones left out)."""
        defaults = self.compute_defaults()
        if defaults:
            check_keys(compute_args, defaults, f"{type(self).__name__} compute_args", ignore=("score_quantity",))
        given = {k: v for k, v in compute_args.items() if k != "score_quantity"}
        return {**{k: v for k, v in defaults.items() if v is not REQUIRED}, **given}

    def _check_argument_names(self, compute_args, where):
        """Unknown names and missing required arguments, against :meth:`compute_defaults` (a
        score whose ``compute``/``compute_batch`` name no argument accepts any)."""
        defaults = self.compute_defaults()
        if defaults:
            check_keys(compute_args, defaults, where, ignore=("score_quantity",))
        missing = [k for k, v in defaults.items() if v is REQUIRED and k not in compute_args]
        if missing:
            raise InputError(f"{where}: missing required argument(s) {missing}")

    def metadata_of(self, compute_results):
        """The metadata a result returned by ``compute``/``compute_batch`` carries.

        Raises
        ------
        InputError
            If the result carries none (a list built by hand, a slice of a list, a number
            computed from a result, a result of a compute not decorated with
            :func:`records_metadata`).
        """
        meta = carried_metadata(compute_results)
        if meta is not None:
            return copy.deepcopy(meta)
        raise InputError(
            f"{type(self).__name__}.save_results: cannot tell which call computed these results "
            f"(got a {type(compute_results).__name__} that carries no metadata, e.g. a list "
            "built by hand, a slice or a number computed from a result); pass the object compute/compute_batch "
            "returned, or give metadata=... explicitly (e.g. metadata=score.metadata_of(original_result)); a "
            "score's own compute/compute_batch records its metadata when decorated with @records_metadata")

    def check_compute_args(self, configs, score_quantity, compute_args):
        """Check compute arguments before :meth:`run` writes anything (override to add checks).

        Raise :class:`~atomscore.errors.InputError` for bad input.
        """

    def prepare_compute_args(self, compute_args: dict) -> dict:
        """Return a new dict of compute arguments a job file can hold (override for objects)."""
        return dict(compute_args)

    def slice_compute_args(self, compute_args: dict, start: int, stop: int) -> dict:
        """The compute arguments of configurations ``start:stop`` when :meth:`run` batches.

        Override when an argument holds one entry per configuration (a list of masks, say);
        the default gives every batch the same arguments.
        """
        return dict(compute_args)

    def get_metadata(self, score_quantity, **compute_args) -> dict:
        """The arguments that define the numbers, stored with every result.

        The default keeps the quantity and every scalar, string, boolean or None argument,
        of the constructor (``_init_args``) and of the call (defaults from the signature
        filled in); override for what is not a scalar (an index, a reference's digest).
        """
        meta = {"score_quantity": ScoreQuantity.parse(score_quantity).name}
        for name, value in {**self._init_args, **self._with_defaults(compute_args)}.items():
            if value is None or isinstance(value, (bool, int, float, str, np.generic)):
                meta[name] = to_jsonable(value)
        return meta

    # ------------------------------------------------------------------ storage
    def parse_for_storage(self, compute_results, list_of_configs=None, metadata=None):
        """Attach results to copies of the configurations (or build the results dict).

        Parameters
        ----------
        compute_results : list or value
            What :meth:`compute_batch` (or, for dataset and model scores, :meth:`compute`)
            returned.
        list_of_configs : list of ase.Atoms, optional
            Required for atom-centred and configuration scores; never modified.
        metadata : dict, optional
            Defaults to the metadata of the call that returned ``compute_results``
            (:meth:`metadata_of`).

        Returns
        -------
        list of ase.Atoms or dict
        """
        raise NotImplementedError

    def save_results(self, compute_results, save_dir=".", list_of_configs=None, metadata=None, filename=None,
                     overwrite=False):
        """Write results to ``save_dir/filename`` (default ``score_results.xyz`` or ``.json``).

        The format follows the suffix of ``filename`` (see :mod:`atomscore.io`): ``.xyz``,
        ``.traj``, ``.db`` or ``.json`` for configurations, ``.json`` for dataset and model
        scores. The metadata stored is the one of the call that returned ``compute_results``
        (or ``metadata`` when given); a result no call can be found for is refused. The file
        is written under a temporary name and renamed, so an interrupted save never leaves
        half a file. An existing file is refused unless ``overwrite=True`` (also one another
        process created while this one computed). Returns the path written.
        """
        from atomscore.io import CONFIG_SUFFIXES, RESULT_SUFFIXES, output_format

        name = self.kind.results_file if filename is None else str(filename)
        output_format(name, f"{type(self).__name__}.save_results filename",
                      CONFIG_SUFFIXES if self.kind.on_configurations else RESULT_SUFFIXES)
        data = self.parse_for_storage(compute_results, list_of_configs, metadata=metadata)
        save_dir = Path(save_dir)
        save_dir.mkdir(parents=True, exist_ok=True)
        return self.write_data(save_dir / name, data, overwrite=overwrite)

    @staticmethod
    def write_data(path, data, overwrite=False):
        """Write results atomically to ``path`` in the format of its suffix (:func:`atomscore.io.write_data`):
        ``.xyz``/``.extxyz``, ``.traj``, ``.db`` or ``.json`` for a list of Atoms, ``.json``
        for a dict or a list of them; an existing file only with ``overwrite=True``."""
        from atomscore.io import write_data

        if not isinstance(data, list) or not data or not hasattr(data[0], "positions"):
            data = to_jsonable(data)
        return write_data(path, data, overwrite=overwrite)

    @staticmethod
    def read_data(path):
        """Read results written by :meth:`write_data` (list of Atoms or dict)."""
        from atomscore.io import read_data

        return read_data(path)

    # ------------------------------------------------------------------ jobs
    def run(self, path_type, configs, compute_args, workflow=None, job_details=None,
            batch_size=1, verbose=False):
        """Write one job folder per batch and submit them to ``workflow``.

        Parameters
        ----------
        path_type : str
            Name of this kind of run; each call writes a run folder of its own,
            ``root/<ScoreClass>/<path_type>/<run>/<NNNNN>/``, so two runs never mix.
        configs : list of ase.Atoms (or list of target-property dicts for model scores)
        compute_args : dict
            Arguments of :meth:`compute_batch`, ``score_quantity`` included. Never modified.
        workflow : Workflow or dict, optional
            A workflow or its dict form; default a :class:`~atomscore.jobs.workflow.LocalWorkflow`.
        job_details : dict, optional
            Passed to the workflow (walltime, queue, env, ...); checked before anything is written.
        batch_size : int
            Configurations per job (a dataset score always runs as one job).
        verbose : bool
            Log the folders written at INFO level (else DEBUG).

        Returns
        -------
        list of str
            One calc id (the job folder's absolute path) per job.

        Raises
        ------
        InputError
            Bad input, before any folder is written.
        JobWriteError
            The folders could not be written (disk full); the partial run folder is removed.
        SubmissionError
            A batch could not be submitted; the run's other jobs are cancelled or marked
            ``not submitted`` (none left pending); ``calc_ids`` names every folder.
        """
        from atomscore.jobs import make_workflow

        if self.kind is not ScoreKind.MODEL:  # NaN/inf or empty configurations never reach a job
            check_finite_configs(configs, "configs")
        jobs = prepare_score_jobs(self, path_type, configs, compute_args, batch_size)
        workflow = make_workflow(workflow)
        workflow.check_job_details(job_details)
        folders = jobs.write(workflow.root)
        self._run_folders.extend(folders)
        for folder in folders:
            log.log(logging.INFO if verbose else logging.DEBUG, "wrote job %s", folder)
        return workflow.submit_run(folders, job_details)

    @_class_or_instance_method
    def data_from_calc_ids(self_or_cls, calc_ids, workflow=None, cleanup=True):
        """Gather the results of finished jobs, in the order of ``calc_ids``.

        Works from the class as from an instance (``LTAUForcesUQScore.data_from_calc_ids(ids)``):
        the folders hold everything. Returns a list of Atoms (atom-centred and configuration
        scores) or a list of result dicts, one per job (dataset and model scores). Failed or
        unfinished jobs raise :class:`~atomscore.errors.JobFailedError`. ``cleanup`` removes
        temporary files a killed writer may have left; the argument files stay, so that a
        folder stays runnable (``atomscore jobs clean`` removes them).
        """
        from atomscore.errors import JobFailedError
        from atomscore.jobs.folder import check_one_run, job_folder, remove_temporary_files
        from atomscore.jobs.workflow import check_finished

        folders = [job_folder(calc_id, workflow) for calc_id in calc_ids]
        check_finished(folders, calc_ids)
        check_one_run(folders, f"{getattr(self_or_cls, '__name__', type(self_or_cls).__name__)}.data_from_calc_ids")
        name = self_or_cls.kind.results_file
        out = []
        for folder in folders:
            if not (folder / name).is_file():
                raise JobFailedError(f"{folder}: done, but it holds no {name} (a {self_or_cls.kind} score's "
                                     "results); was it written by another score class?")
            data = self_or_cls.read_data(folder / name)
            out.extend(data) if isinstance(data, list) else out.append(data)
        if cleanup:
            for folder in folders:
                remove_temporary_files(folder)
        return self_or_cls.reduce_job_results(out)

    @classmethod
    def reduce_job_results(cls, results):
        """Turn the gathered results of a run's jobs into the run's results (default: as they are).

        Override with :meth:`plan_jobs` when jobs hold parts of one result (row blocks of
        a dataset score); called by :meth:`data_from_calc_ids`.
        """
        return results

    def cleanup(self):
        """Clean the job folders of this object's runs: argument files removed, folders marked
        so that they refuse to run again; results, logs and status stay."""
        from atomscore.jobs.folder import clean_folder

        for folder in self._run_folders:
            if folder.is_dir():
                clean_folder(folder)
        self._run_folders = []

    def plan_jobs(self, configs, compute_args, batch_size):
        """The jobs of a run: one ``(configurations, compute_args)`` pair per job folder.

        Default: batches of ``batch_size`` configurations (one job for ``single_job``),
        arguments cut by :meth:`slice_compute_args`. Override for another split (row
        blocks of a dataset score), with :meth:`reduce_job_results` to put the parts
        together. An array that is the same object in every job is written once per run
        and hard-linked into the other folders.
        """
        if self.single_job:
            if 1 < batch_size < len(configs) and self.kind is not ScoreKind.DATASET:
                import warnings

                warnings.warn(f"{type(self).__name__}.run: batch_size={batch_size} ignored; {type(self).__name__} "
                              f"needs all {len(configs)} configurations in one job", stacklevel=4)
            return [(configs, compute_args)]
        bounds = [(i, min(i + batch_size, len(configs))) for i in range(0, len(configs), batch_size)]
        if len(bounds) == 1:
            return [(configs, compute_args)]
        return [(configs[a:b], self.slice_compute_args(compute_args, a, b)) for a, b in bounds]

    def run_batch(self, configs, score_quantity, compute_args):
        """What a job does with its configurations (used by the job runner): ``compute_batch``.

        The results carry the metadata of the call; a ``compute_batch`` not decorated with
        :func:`records_metadata` gets ``get_metadata`` of the job's arguments here.
        """
        return self._carrying(self.compute_batch(configs, score_quantity=score_quantity, **compute_args),
                              score_quantity, compute_args)

    def _carrying(self, result, score_quantity, compute_args):
        return result if carried_metadata(result) is not None else \
            self._with_metadata(result, self._call_metadata(score_quantity, dict(compute_args)))

    # ------------------------------------------------------------------ helpers
    def _metadata_or(self, metadata, compute_results):
        if metadata is not None:
            if not isinstance(metadata, dict):
                raise InputError(f"metadata: expected a dict, got {type(metadata).__name__}")
            return copy.deepcopy(metadata)
        return self.metadata_of(compute_results)

    def __repr__(self):
        args = ", ".join(f"{k}={_short(v)}" for k, v in self._init_args.items())
        return f"{type(self).__name__}({args})"


def _short(value):
    if isinstance(value, np.ndarray):
        return f"<array {value.shape} {value.dtype}>"
    text = repr(value)
    return text if len(text) < 60 else text[:57] + "..."


def _flat_value(value):
    """A metadata value as a flat extxyz info entry (None kept readable as 'None')."""
    if value is None:
        return "None"
    if isinstance(value, dict):
        return json.dumps(to_jsonable(value))
    return to_jsonable(value)


class _ConfigsScore(ScoreBase):
    """Shared storage of the two kinds whose results live on the configurations."""

    def _attach(self, atoms, result):
        raise NotImplementedError

    def parse_for_storage(self, compute_results, list_of_configs=None, metadata=None):
        if list_of_configs is None:
            raise InputError(f"{type(self).__name__}.save_results: list_of_configs is required "
                             "(the configurations the results belong to)")
        configs = check_configs(list_of_configs, "list_of_configs")
        results = list(compute_results)
        if len(results) != len(configs):
            raise InputError(f"{type(self).__name__}.save_results: {len(results)} results for "
                             f"{len(configs)} configurations")
        meta = self._metadata_or(metadata, compute_results)
        out = []
        for i, (atoms, result) in enumerate(zip(configs, results)):
            new = copy_with_labels(atoms)
            self._attach(new, result, i)
            all_meta = copy.deepcopy(new.info.get("_metadata", {}))
            if not isinstance(all_meta, dict):
                all_meta = {}
            all_meta[self.OUTPUT_KEY] = to_jsonable(meta)
            new.info["_metadata"] = all_meta
            for name, value in meta.items():
                new.info[f"{self.OUTPUT_KEY}_{name}"] = _flat_value(value)
            out.append(new)
        return out


class AtomCenteredScore(_ConfigsScore):
    """A score per atom: ``compute`` returns an ``(n_atoms, ...)`` array per configuration."""

    kind = ScoreKind.ATOM

    def _attach(self, atoms, result, index):
        arr = np.asarray(result)
        if arr.ndim == 0 or arr.shape[0] != len(atoms):
            raise InputError(f"{type(self).__name__}.save_results: configuration {index} has "
                             f"{len(atoms)} atoms but its result has shape {arr.shape}")
        atoms.arrays[self.result_key] = arr


class ConfigurationScore(_ConfigsScore):
    """A score per configuration: ``compute`` returns an array (e.g. a P x P FIM) or a scalar."""

    kind = ScoreKind.CONFIGURATION

    def _attach(self, atoms, result, index):
        atoms.info[self.result_key] = result.item() if np.ndim(result) == 0 and hasattr(result, "item") else result


class _WholeScore(ScoreBase):
    """Shared storage of the kinds whose result is one value (dataset, model)."""

    def parse_for_storage(self, compute_results, list_of_configs=None, metadata=None):
        return {self.result_key: to_jsonable(compute_results),
                "_metadata": to_jsonable(self._metadata_or(metadata, compute_results))}

    def run_batch(self, configs, score_quantity, compute_args):
        """A job computes the one value of all its items (the dataset, the properties)."""
        return self._carrying(self.compute(configs, score_quantity=score_quantity, **compute_args),
                              score_quantity, compute_args)


class DatasetScore(_WholeScore):
    """One value for a whole dataset: ``compute(dataset, score_quantity, ...)``.

    ``compute_batch(dataset, ...)`` returns ``[compute(dataset, ...)]``; :meth:`run`
    always writes a single job holding the whole dataset.
    """

    kind = ScoreKind.DATASET
    single_job = True

    @records_metadata
    def compute_batch(self, list_of_atoms, score_quantity, **compute_args):
        """The dataset's value, as a one-element list."""
        return [self.compute(list_of_atoms, score_quantity, **compute_args)]


class ModelScore(_WholeScore):
    """A score of a model, e.g. the FIM of target properties: ``compute(items, ...)``.

    The items (e.g. target-property dicts) are stored as ``input.json`` in job folders.
    """

    kind = ScoreKind.MODEL


# --------------------------------------------------------------------------- the run plan
@dataclass
class PreparedJob:
    """One validated, serialised job: its input file and its (batch-specific) compute args."""

    input_name: str
    input_text: str
    compute_args: dict
    compute_arrays: dict
    shared_arrays: dict = field(default_factory=dict)  # hard-linked to the run's first copy


@dataclass
class PreparedJobs:
    """Validated, serialised jobs of one run, ready to be written (see :func:`prepare_score_jobs`)."""

    score_name: str
    path_type: str
    header: dict
    init_arrays: dict
    jobs: list = field(default_factory=list)

    def write(self, root) -> list[Path]:
        """Write the run folder and every job folder under ``root``; return the job folders.

        Raises
        ------
        JobWriteError
            When the disk refuses (full, read-only): the partial run folder is removed.
        """
        from atomscore.jobs.folder import JobFiles, write_run

        jobs = [JobFiles({**self.header, "compute_args": job.compute_args, "input": job.input_name},
                         arrays=job.compute_arrays, linked={**self.init_arrays, **job.shared_arrays},
                         input=(job.input_name, job.input_text)) for job in self.jobs]
        return write_run(Path(root) / self.score_name / self.path_type, jobs,
                         {"score": self.header["score"], "path_type": self.path_type})


def _same_array(first, value) -> bool:
    """The same array object, or a copy of the same file (:class:`~atomscore.jobs.folder.FileCopy`)."""
    return first is value or (not isinstance(value, np.ndarray) and first == value)


def prepare_score_jobs(score, path_type, configs, compute_args, batch_size) -> PreparedJobs:
    """Validate a run and serialise its jobs in memory; nothing is written here.

    Raises
    ------
    InputError
        For empty or malformed configurations, ``batch_size < 1``, a bad ``path_type``,
        an unknown or unsupported quantity, arguments a job file cannot hold, or a score
        class that another process cannot import.
    """
    import socket
    import sys

    from atomscore.jobs.folder import FORMAT_VERSION, check_path_type, class_reference, encode_args, serialize_inputs

    name = type(score).__name__
    check_path_type(path_type)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if score.kind is ScoreKind.MODEL:
        if not isinstance(configs, (list, tuple)) or not configs:
            raise InputError(f"{name}.run: configs: expected a non-empty list of items, got {configs!r:.80}")
        configs = list(configs)
    else:
        configs = check_configs(configs, f"{name}.run: configs")
    if not isinstance(compute_args, dict):
        raise InputError(f"{name}.run: compute_args: expected a dict, got {type(compute_args).__name__}")
    args = dict(compute_args)
    quantity = args.pop("score_quantity", None)
    if quantity is None:
        if len(score.supported_score_quantities) != 1:
            raise InputError(f"{name}.run: compute_args needs 'score_quantity'; expected one of: "
                             + ", ".join(q.name for q in score.supported_score_quantities))
        quantity = score.supported_score_quantities[0]
    quantity = score.parse_quantity(quantity)
    args = score.prepare_compute_args(args)
    score.check_compute_args(configs, quantity, args)
    score._check_argument_names(args, f"{name} compute_args")  # also for a score that checks nothing itself

    reference = class_reference(type(score))
    init_data, init_arrays = encode_args(score._init_args, "init", f"{name} init args")
    jobs, first_arrays = [], {}
    for batch_configs, batch_args in score.plan_jobs(configs, args, batch_size):
        compute_data, compute_arrays = encode_args(batch_args, "compute", f"{name}.run compute_args")
        # the same array object in every job (a reference set, a dataset's descriptors): written once, linked
        shared = {k: a for k, a in compute_arrays.items() if _same_array(first_arrays.setdefault(k, a), a)}
        own = {k: a for k, a in compute_arrays.items() if k not in shared}
        jobs.append(PreparedJob(*serialize_inputs(score.kind, batch_configs), compute_data, own, shared))
    header = {
        "format_version": FORMAT_VERSION,
        "kind": "score",
        "score": reference,
        "score_kind": score.kind.value,
        "init_args": init_data,
        "score_quantity": ScoreQuantity(quantity).name,
        "cwd": os.getcwd(),
        "submitted_from": socket.gethostname(),
        "python": sys.executable,
    }
    return PreparedJobs(name, path_type, header, init_arrays, jobs)
