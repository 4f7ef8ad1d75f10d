"""FIMTrainingSetScore: the Fisher information matrix of each training configuration.

For a configuration with predictions f(φ) (its energy, its forces or its stress, computed by an
OpenKIM model with parameters θ = transform⁻¹(φ)), the FIM is ``Jᵀ J`` with ``J = ∂f/∂φ``
(rows of ``J`` excluded by the configuration's mask are dropped). It is P×P, symmetric and
positive semi-definite; ``fim_index_to_parameter`` says which parameter each row is.

This module holds the score (arguments, metadata, jobs); the numbers are computed by
:mod:`atomscore.fim.evaluator` (one KIM model per process, finite-difference points prepared
once per call), over worker processes with ``nprocs > 1`` by :mod:`atomscore.fim.workers`
(whose public :class:`WorkerTraceback` and :func:`close_workers` are re-exported here).
"""

from __future__ import annotations

import os

import numpy as np

from atomscore.errors import InputError
from atomscore.fim.evaluator import _FIMEvaluator, _fims, _flags, _jsonable_settings, _masks
from atomscore.fim.parameters import job_transform
from atomscore.fim.workers import (WorkerTraceback, _parallel, _pool_context, _pool_init_args, _pooled,
                                   close_workers)
from atomscore.potentials.kim import check_spec
from atomscore.quantity import ScoreQuantity
from atomscore.score import ConfigurationScore, records_metadata
from atomscore.validation import check_finite_configs, check_int

__all__ = ["FIMTrainingSetScore", "WorkerTraceback", "close_workers"]


class FIMTrainingSetScore(ConfigurationScore):
    """Fisher information matrix of each configuration's energy, forces or stress.

    The FIM of a configuration is ``Jᵀ J`` (P×P, symmetric positive semi-definite), with
    ``J`` the derivative of its predictions (energy in eV, forces in eV/Å, or stress in eV/Å³)
    with respect to the (transformed) potential parameters; rows excluded by the
    configuration's mask are left out. Saved as ``atoms.info['fim_training_set_score']``.

    Examples
    --------
    >>> score = FIMTrainingSetScore()
    >>> fims = score.compute_batch(list_of_atoms, 'SENSITIVITY',
    ...     potential={'potential_type': 'KIM', 'potential_args': {'kim_id': KIM_ID}},
    ...     parameters_optimize={'A': [[15.28]], 'B': [['default']], 'lambda': [[0.0, 'fix']]})
    >>> score.save_results(fims, list_of_configs=list_of_atoms)   # doctest: +SKIP
    """

    OUTPUT_KEY = "fim_training_set"
    supported_score_quantities = (ScoreQuantity.SENSITIVITY,)

    def __init__(self):
        super().__init__()
        self.fim_index_to_parameter = {}
        self.transform = None

    @property
    def list_of_jac(self):
        """Not kept (the Orchestrator keeps every configuration's 3N × P Jacobian after
        ``compute_batch``): raises AttributeError saying so."""
        raise AttributeError("FIMTrainingSetScore.list_of_jac: the Jacobians are not kept (3N x P per "
                             "configuration, only J^T J is returned); for a configuration's Jacobian use "
                             "KIMPotential.predictions and finite differences, see docs/orchestrator.md")

    # -------------------------------------------------------------- compute
    @records_metadata
    def compute(self, atoms, score_quantity="SENSITIVITY", potential=None, parameters_optimize=None,
                transform=None, evaluate_kwargs=None, derivative_kwargs=None, mask=None, **kwargs):
        """FIM of one configuration (see :meth:`compute_batch`; ``mask`` is its mask).

        Returns
        -------
        numpy.ndarray
            ``(P, P)``.
        """
        if "list_of_mask" in kwargs:
            lom = kwargs.pop("list_of_mask")
            if mask is None and lom is not None:
                mask = lom[0] if isinstance(lom, (list, tuple)) and len(lom) == 1 else lom
        nprocs = kwargs.pop("nprocs", 1)
        if kwargs:
            raise InputError(f"FIMTrainingSetScore.compute: unknown arguments {sorted(kwargs)}")
        evaluate_kwargs = None if evaluate_kwargs is None else {
            k: (v[0] if isinstance(v, (list, tuple)) and len(v) == 1 else v) for k, v in evaluate_kwargs.items()}
        return self._compute_all([atoms], score_quantity, potential, parameters_optimize, transform,
                                 evaluate_kwargs, derivative_kwargs, [mask], nprocs)[0]

    @records_metadata
    def compute_batch(self, list_of_atoms, score_quantity="SENSITIVITY", potential=None,
                      parameters_optimize=None, transform=None, evaluate_kwargs=None,
                      derivative_kwargs=None, list_of_mask=None, nprocs=1):
        """FIM of each configuration.

        Parameters
        ----------
        list_of_atoms : list of ase.Atoms
            Configurations (periodic or not); never modified.
        score_quantity : ScoreQuantity or str
            ``SENSITIVITY``.
        potential : KIMPotential or dict
            ``{'potential_type': 'KIM', 'potential_args': {'kim_id': ..., 'kim_api': ...}}``.
            A KIMPotential's parameters are restored after the computation.
        parameters_optimize : dict
            ``{name: [[value], ['default'], [value, 'fix'], [value, lower, upper]], ...}``
            (see :mod:`atomscore.fim.parameters`).
        transform : object or dict, optional
            From :mod:`information_matching.transform`, or
            ``{'transform_type': ..., 'transform_args': {...}}``; default identity.
        evaluate_kwargs : dict, optional
            ``compute_energy``, ``compute_forces``, ``compute_stress``: a bool or a list of
            bools per configuration; exactly one true per configuration. Default: forces.
        derivative_kwargs : dict, optional
            Arguments of :class:`numdifftools.Jacobian`, on top of the default
            ``{'method': 'central', 'step': max(0.1 |φ|, 1e-4)}`` (φ: the transformed parameters).
        list_of_mask : list, optional
            Per configuration: a binary array (list, array, ``.npy`` or ``.txt`` path) over
            the predictions (3N for forces, row-major ``(N, 3)``; 1 for energy; 6 for stress),
            or None for all rows. A one-element list applies to every configuration.
        nprocs : int
            Worker processes (one model each) over the configurations.

        Returns
        -------
        list of numpy.ndarray
            One ``(P, P)`` FIM per configuration, rows/columns as ``fim_index_to_parameter``.
        """
        return self._compute_all(list_of_atoms, score_quantity, potential, parameters_optimize, transform,
                                 evaluate_kwargs, derivative_kwargs, list_of_mask, nprocs)

    def _compute_all(self, configs, score_quantity, potential, parameters_optimize, transform,
                     evaluate_kwargs, derivative_kwargs, list_of_mask, nprocs):
        self.parse_quantity(score_quantity)
        configs = check_finite_configs(configs, "list_of_atoms")
        nprocs = check_int(nprocs, "nprocs", minimum=1)
        if potential is None:
            raise InputError("potential: required, e.g. {'potential_type': 'KIM', 'potential_args': {'kim_id': ...}}")
        if parameters_optimize is None:
            raise InputError("parameters_optimize: required, e.g. {'A': [[15.28]], 'B': [['default']]}")
        check_spec(potential)
        quantities = _flags(evaluate_kwargs, len(configs))
        masks = _masks(list_of_mask, configs, quantities)
        from atomscore.potentials.kim import pooled_potential

        with pooled_potential(potential) as pot:
            return self._compute_with(pot, configs, quantities, masks, parameters_optimize, transform,
                                      derivative_kwargs, list_of_mask, nprocs)

    def _compute_with(self, potential, configs, quantities, masks, parameters_optimize, transform,
                      derivative_kwargs, list_of_mask, nprocs):
        ev = _FIMEvaluator(potential, parameters_optimize, transform, derivative_kwargs)
        for i, (atoms, q) in enumerate(zip(configs, quantities)):
            if q == "stress" and not np.any(atoms.pbc):
                raise InputError(f"evaluate_kwargs: configuration {i} asks for stress but is not periodic")
        self.note_metadata(**self._details(ev, quantities, list_of_mask))
        #: FIM row/column -> {'parameter': name, 'extent': e}, as the spec shows
        self.fim_index_to_parameter = ev.pmap.fim_index_to_parameter
        #: the transform object used (the Orchestrator's attribute)
        self.transform = ev.pmap.transform

        from tqdm.auto import tqdm

        results = [None] * len(configs)
        if nprocs == 1 or len(configs) == 1:
            try:
                fims = _fims(ev, range(len(configs)), configs, quantities, masks)
                for i, fim in tqdm(fims, total=len(configs), desc="FIM training set", disable=None, leave=False):
                    results[i] = fim
            finally:
                ev.restore()
            return results
        try:  # the potential gets its parameters back whatever happens
            init = _pool_init_args(ev, parameters_optimize, derivative_kwargs)
            if _pool_context().get_start_method() == "fork":
                return _parallel(ev, init, configs, quantities, masks, nprocs)
        finally:
            ev.restore()
        return _pooled(init, configs, quantities, masks, nprocs)

    def _details(self, ev, quantities, list_of_mask):
        masks = list_of_mask if isinstance(list_of_mask, (list, tuple)) else [list_of_mask]
        described = []
        for m in masks:
            if m is None or isinstance(m, (str, os.PathLike)):
                described.append(None if m is None else str(m))
            else:
                arr = np.asarray(m)
                described.append(f"array of {arr.size} values, {int(np.count_nonzero(arr))} selected")
        meta = {
            "potential": ev.potential.to_spec(),
            "kim_id": ev.potential.kim_id,
            "derivative_kwargs": _jsonable_settings(ev.settings),
            "evaluated_quantity": sorted(set(quantities)) if len(set(quantities)) > 1 else quantities[0],
            "list_of_mask": None if list_of_mask is None else described,
        }
        meta.update(ev.pmap.metadata())
        return meta

    # -------------------------------------------------------------- jobs and metadata
    def prepare_compute_args(self, compute_args):
        """Turn a KIMPotential, a transform object and arrays of ``evaluate_kwargs`` flags into
        their JSON forms (a new dict)."""
        args = dict(compute_args)
        evk = args.get("evaluate_kwargs")
        if isinstance(evk, dict):
            args["evaluate_kwargs"] = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in evk.items()}
        if args.get("transform") is not None and not isinstance(args["transform"], dict):
            args["transform"] = job_transform(args["transform"], args.get("potential"), args.get("parameters_optimize"))
        if args.get("potential") is not None:
            args["potential"] = check_spec(args["potential"])  # live parameters included
        return args

    def check_compute_args(self, configs, score_quantity, compute_args):
        """Validate everything before a job folder is written (opens the model once)."""
        args = dict(compute_args)
        potential = args.get("potential")
        if potential is None or args.get("parameters_optimize") is None:
            raise InputError("FIMTrainingSetScore.run: compute_args needs 'potential' and 'parameters_optimize'")
        allowed = {"potential", "parameters_optimize", "transform", "evaluate_kwargs", "derivative_kwargs",
                   "list_of_mask", "nprocs"}
        unknown = sorted(set(args) - allowed)
        if unknown:
            raise InputError(f"FIMTrainingSetScore.run: unknown compute_args {unknown}; expected some of {sorted(allowed)}")
        configs = check_finite_configs(configs, "configs")
        quantities = _flags(args.get("evaluate_kwargs"), len(configs))
        _masks(args.get("list_of_mask"), configs, quantities)
        check_int(args.get("nprocs", 1), "nprocs", minimum=1)
        ev = _FIMEvaluator(potential, args["parameters_optimize"], args.get("transform"), args.get("derivative_kwargs"))
        ev.restore()
        for i, (atoms, q) in enumerate(zip(configs, quantities)):
            ev.potential.check_species(atoms, f"configuration {i}")
            if q == "stress" and not np.any(atoms.pbc):
                raise InputError(f"evaluate_kwargs: configuration {i} asks for stress but is not periodic")

    def get_metadata(self, score_quantity, **compute_args):
        """The quantity; the computation notes the rest (potential id and spec, parameters,
        transform, derivative settings, ``fim_index_to_parameter``, evaluated quantity, masks)."""
        return {"score_quantity": ScoreQuantity.parse(score_quantity).name}

    def slice_compute_args(self, compute_args, start, stop):
        """The compute arguments of configurations ``start:stop`` (per-configuration lists cut).

        For job runners that split a run into batches: ``list_of_mask`` and the lists of
        ``evaluate_kwargs`` hold one entry per configuration.
        """
        args = dict(compute_args)
        lom = args.get("list_of_mask")
        if isinstance(lom, (list, tuple)) and len(lom) > 1:
            args["list_of_mask"] = list(lom[start:stop])
        evk = args.get("evaluate_kwargs")
        if isinstance(evk, dict):
            args["evaluate_kwargs"] = {
                k: (list(np.asarray(v).tolist()[start:stop]) if isinstance(v, (list, tuple, np.ndarray))
                    and np.ndim(v) == 1 and len(v) > 1 else v)
                for k, v in evk.items()}
        return args
