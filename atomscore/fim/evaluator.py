"""The FIM of one configuration, and the checks of the arguments that define it.

:class:`_FIMEvaluator` holds one KIM model (kept for many configurations, parameters changed
in place) with one :class:`~atomscore.fim.parameters.ParameterMap`; its ``fim`` is ``Jᵀ J`` with
``J = ∂f/∂φ`` of the configuration's energy, forces or stress (rows excluded by its mask
dropped). The finite-difference points are the same for every configuration: transformed,
checked and turned into the few parameter writes each needs once
(:class:`~atomscore.potentials.kim.ParameterPath`). With the default derivative (central
differences with one step per parameter) the 2P model evaluations are done here directly
(the same numbers numdifftools gives for these settings, see ``tests/test_fim_training_set.py``)
because numdifftools' per-element best-estimate search costs more than the evaluations of a
64-atom configuration; any other ``derivative_kwargs`` go to :class:`numdifftools.Jacobian`
as given. :func:`_fims` computes the FIMs of many configurations, neighbour lists built by
blocks (:data:`BLOCK_CONFIGS`). Used by :mod:`atomscore.fim.training_set` and, in each worker
process, by :mod:`atomscore.fim.workers`.
"""

from __future__ import annotations

import numbers

import numpy as np

from atomscore.errors import InputError, import_extra
from atomscore.fim.parameters import ParameterMap
from atomscore.validation import is_array_file, load_array

EVALUATE_KEYS = ("compute_energy", "compute_forces", "compute_stress")
_QUANTITY_OF_KEY = {"compute_energy": "energy", "compute_forces": "forces", "compute_stress": "stress"}
_COMPLEX_METHODS = ("complex", "multicomplex")


# ---------------------------------------------------------------------------- argument checks
def _flags(evaluate_kwargs, n_configs):
    """Return the quantity ('energy'/'forces'/'stress') of each configuration."""
    if evaluate_kwargs is None or (isinstance(evaluate_kwargs, dict) and not evaluate_kwargs):
        return ["forces"] * n_configs
    if not isinstance(evaluate_kwargs, dict):
        raise InputError(f"evaluate_kwargs: expected a dict with keys {', '.join(EVALUATE_KEYS)}, "
                         f"got {type(evaluate_kwargs).__name__}")
    unknown = [k for k in evaluate_kwargs if k not in EVALUATE_KEYS]
    if unknown:
        raise InputError(f"evaluate_kwargs: unknown keys {unknown}; expected some of: {', '.join(EVALUATE_KEYS)}")
    table = {}
    for key in EVALUATE_KEYS:
        value = evaluate_kwargs.get(key, False)
        if isinstance(value, (bool, np.bool_)):
            table[key] = [bool(value)] * n_configs
            continue
        if isinstance(value, np.ndarray):
            value = value.tolist()
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, (bool, np.bool_)) for v in value):
            raise InputError(f"evaluate_kwargs[{key!r}]: expected a bool or a list of bools (one per "
                             f"configuration), got {value!r:.80}")
        if len(value) == 1 and n_configs > 1:
            value = list(value) * n_configs
        if len(value) != n_configs:
            raise InputError(f"evaluate_kwargs[{key!r}]: expected {n_configs} values (one per configuration), "
                             f"got {len(value)}")
        table[key] = [bool(v) for v in value]
    out = []
    for i in range(n_configs):
        chosen = [_QUANTITY_OF_KEY[k] for k in EVALUATE_KEYS if table[k][i]]
        if len(chosen) != 1:
            raise InputError(f"evaluate_kwargs: configuration {i} asks for {chosen or 'nothing'}; each "
                             "configuration evaluates exactly one of energy, forces, stress (duplicate a "
                             "configuration to use several)")
        out.append(chosen[0])
    return out


def _n_values(atoms, quantity):
    return {"energy": 1, "forces": 3 * len(atoms), "stress": 6}[quantity]


def _masks(list_of_mask, configs, quantities):
    """Return one boolean row selection (or None) per configuration."""
    n = len(configs)
    if list_of_mask is None:
        return [None] * n
    if isinstance(list_of_mask, np.ndarray) or is_array_file(list_of_mask):
        if n != 1:
            raise InputError(f"list_of_mask: expected a list with one mask per configuration ({n}), "
                             "got a single mask")
        list_of_mask = [list_of_mask]
    if not isinstance(list_of_mask, (list, tuple)):
        raise InputError(f"list_of_mask: expected a list (one mask per configuration: list, array, "
                         f".npy/.txt path or None), got {type(list_of_mask).__name__}")
    if len(list_of_mask) == 1 and n > 1:
        list_of_mask = list(list_of_mask) * n  # one mask for every configuration
    if len(list_of_mask) != n:
        raise InputError(f"list_of_mask: expected {n} masks (one per configuration), got {len(list_of_mask)}")
    out = []
    for i, (mask, atoms, quantity) in enumerate(zip(list_of_mask, configs, quantities)):
        where = f"configuration {i}"
        if mask is None:
            out.append(None)
            continue
        arr = load_array(mask, "list_of_mask", dtype=float, where=where)
        expected = _n_values(atoms, quantity)
        if quantity == "forces" and arr.shape == (len(atoms), 3):
            arr = arr.reshape(-1)
        if arr.ndim != 1 or arr.size != expected:
            what = {"forces": f"3N = {expected} values (forces of {len(atoms)} atoms)",
                    "energy": "1 value (the energy)", "stress": "6 values (the stress, Voigt)"}[quantity]
            raise InputError(f"list_of_mask ({where}): expected {what}, got shape {arr.shape}")
        if not np.all((arr == 0) | (arr == 1)):
            raise InputError(f"list_of_mask ({where}): expected a binary mask of 0/1 values, "
                             f"got values {np.unique(arr)[:5].tolist()}")
        out.append(arr.astype(bool))
    return out


def _derivative_settings(derivative_kwargs, pmap):
    """Merge the user's numdifftools.Jacobian kwargs onto the default (central, 10% step)."""
    if derivative_kwargs is None:
        derivative_kwargs = {}
    if not isinstance(derivative_kwargs, dict):
        raise InputError(f"derivative_kwargs: expected a dict of numdifftools.Jacobian arguments, "
                         f"got {type(derivative_kwargs).__name__}")
    settings = {"method": "central", "step": pmap.default_step()}
    settings.update(derivative_kwargs)
    method = settings.get("method")
    if method in _COMPLEX_METHODS:
        raise InputError(f"derivative_kwargs['method']={method!r}: a KIM model cannot be evaluated at complex "
                         "parameters; use 'central', 'forward' or 'backward'")
    if method not in ("central", "forward", "backward"):
        raise InputError(f"derivative_kwargs['method']: unknown {method!r}; expected 'central', 'forward' or 'backward'")
    step = settings.get("step")
    if step is not None and not hasattr(step, "__call__"):
        try:
            arr = np.asarray(step, dtype=float)
        except (TypeError, ValueError):
            raise InputError(f"derivative_kwargs['step']: expected a non-zero number or one per parameter, got {step!r}") from None
        # a negative step is a step (numdifftools takes it as given); zero is no difference
        if arr.ndim > 1 or (arr.ndim == 1 and arr.size != pmap.n_params) or not np.all(np.isfinite(arr)) \
                or np.any(arr == 0):
            raise InputError(f"derivative_kwargs['step']: expected a non-zero finite number or {pmap.n_params} "
                             f"of them (one per free parameter), got {step!r}")
        settings["step"] = arr
    if not _is_plain_central(settings):
        _probe_numdifftools(settings, pmap.phi0, derivative_kwargs)
    return settings


def _probe_numdifftools(settings, phi0, given):
    """Let numdifftools judge the settings on a linear function of the parameters (microseconds),
    so an unknown or ill-typed key fails here, with numdifftools' own message, not in a job."""
    import numdifftools as nd

    try:
        jac = nd.Jacobian(lambda x: 2.0 * np.asarray(x, dtype=float), **settings)(np.array(phi0, dtype=float))
        np.asarray(jac, dtype=float)
    except Exception as exc:  # whatever numdifftools raises for these settings, said as it says it
        raise InputError(f"derivative_kwargs: numdifftools.Jacobian refuses {given!r}: "
                         f"{type(exc).__name__}: {exc}") from None


def _is_plain_central(settings):
    """True when numdifftools would take one central difference per parameter (no extrapolation)."""
    return (settings.get("method") == "central" and settings.get("order", 2) == 2
            and set(settings) <= {"method", "step", "order"} and isinstance(settings.get("step"), np.ndarray))


def _jsonable_settings(settings):
    out = {}
    for k, v in settings.items():
        if isinstance(v, np.ndarray):
            out[k] = v.tolist()
        elif v is None or isinstance(v, (bool, str, numbers.Number)):
            out[k] = v
        else:
            out[k] = repr(v)
    return out


# ---------------------------------------------------------------------------- the numbers
class _FIMEvaluator:
    """One potential (kept for many configurations) with one ParameterMap."""

    def __init__(self, potential, parameters_optimize, transform, derivative_kwargs):
        from atomscore.potentials.kim import KIMPotential

        self.potential = KIMPotential.from_spec(potential)
        self.pmap = ParameterMap(self.potential, parameters_optimize, transform)
        self.settings = _derivative_settings(derivative_kwargs, self.pmap)
        #: the step of each φ, the same for every configuration (np.broadcast_to costs ~8 us a call)
        self._step_array = np.broadcast_to(self.settings["step"], self.pmap.phi0.shape)
        self._saved = self.potential.get_parameters()
        self.pmap.apply(self.potential)
        self._write = self.potential.parameter_writer(self.pmap.free)
        #: the 2P points of the default central difference, the same for every configuration:
        #: transformed, checked and turned into parameter writes once (None: other settings)
        self._path = self._central_path() if _is_plain_central(self.settings) else None

    def fim(self, atoms, quantity, mask, where="configuration", pred=None):
        """The P×P FIM of one configuration (P = the number of transformed parameters φ);
        ``pred``: its :meth:`predictions`, if made already."""
        jac = self._jacobian(self.predictions(atoms, quantity, where) if pred is None else pred, where)
        if mask is not None:
            jac = jac[mask]
        fim = jac.T @ jac
        return 0.5 * (fim + fim.T)

    def restore(self):
        """Give the potential back the parameters it had before this evaluator set any."""
        self.potential.set_parameters(self._saved)

    def predictions(self, atoms, quantity, where="configuration"):
        """The configuration's :class:`~atomscore.potentials.kim.Predictions` (padding and
        neighbour list built)."""
        try:
            return self.potential.predictions(atoms, quantity)
        except InputError as exc:
            raise InputError(f"evaluate_kwargs: {where} asks for {quantity}: {exc}") from None

    def _jacobian(self, pred, where):
        pmap = self.pmap
        if self._path is not None:
            return pred.central_differences(self._path, self._steps())
        write = self._write
        try:
            if _is_plain_central(self.settings):
                return self._central(pred, where)

            def predict(phi):
                write(pmap.to_theta(phi, where=f"{where}, finite-difference point (numdifftools)"))
                return pred.fold(pred.raw()).reshape(-1)

            return self._numdifftools(predict)
        finally:
            write(pmap.theta0)

    def _steps(self):
        return self._step_array

    def _central_points(self, where=""):
        """θ at φ0 + h_i and φ0 - h_i for each i, in that order (checked: finite, in bounds)."""
        phi0 = self.pmap.phi0
        for i, h in enumerate(self._steps()):
            for label in ("+", "-"):
                phi = phi0.copy()
                phi[i] = phi0[i] + h if label == "+" else phi0[i] - h
                yield self.pmap.to_theta(phi, where=f"{where}finite-difference point phi[{i}] {label} {h:g}")

    def _central_path(self):
        """The central difference's points as a :class:`~atomscore.potentials.kim.ParameterPath`
        (None when they change too many entries to keep: a dense transform of a large θ)."""
        return self.potential.parameter_path(self.pmap.free, self._central_points())

    def _central(self, pred, where):
        """One central difference per parameter (what numdifftools does for these settings),
        the points written whole (see :meth:`_central_path`), on the raw predictions (forces on
        the padded atoms), folded once per configuration."""
        steps = self._steps()
        points = self._central_points(f"{where}, ")
        cols = []
        for h in steps:
            self._write(next(points))
            plus = pred.raw()
            self._write(next(points))
            cols.append((plus - pred.raw()) / (2.0 * h))
        return pred.fold(np.stack(cols, axis=-1)).reshape(pred.n_values, len(steps))

    def _numdifftools(self, predict):
        phi0 = self.pmap.phi0
        nd = import_extra("numdifftools", "FIMTrainingSetScore (derivative_kwargs)", "fim")

        jac = nd.Jacobian(predict, **self.settings)(phi0.copy())
        return np.asarray(jac, dtype=float).reshape(-1, len(phi0))


# ---------------------------------------------------------------------------- many configurations
def _named(exc, i):
    """Add a note naming configuration ``i`` to an error whose message does not."""
    if f"configuration {i}" not in str(exc):
        exc.add_note(f"(while computing the FIM of configuration {i})")


def _fim_of(ev, i, configs, quantities, masks, pred=None):
    """The FIM of configuration ``i`` (``pred``: its predictions, if made); an error names it."""
    try:
        return ev.fim(configs[i], quantities[i], masks[i], f"configuration {i}", pred)
    except Exception as exc:
        _named(exc, i)
        raise


#: configurations whose neighbour lists are built in a row before their FIMs, at most this
#: many and this many atoms: a build between model evaluations runs ~2x slower than in a row
#: (code and data out of cache), which cost 10-20 % of the evaluations at 64 atoms
BLOCK_CONFIGS = 32
BLOCK_ATOMS = 4096


def _blocks(indices, configs):
    block, atoms = [], 0
    for i in indices:
        if block and (len(block) >= BLOCK_CONFIGS or atoms + len(configs[i]) > BLOCK_ATOMS):
            yield block
            block, atoms = [], 0
        block.append(i)
        atoms += len(configs[i])
    if block:
        yield block


def _fims(ev, indices, configs, quantities, masks, at=None):
    """``(i, FIM)`` for each configuration index, in order, built by blocks (see
    :data:`BLOCK_CONFIGS`); an error names its configuration (``at[0]``: the last one begun)."""
    at = [None] if at is None else at
    for block in _blocks(indices, configs):
        preds = []
        for i in block:
            at[0] = i
            try:
                preds.append(ev.predictions(configs[i], quantities[i], f"configuration {i}"))
            except Exception as exc:
                _named(exc, i)
                raise
        for i, pred in zip(block, preds):
            at[0] = i
            yield i, _fim_of(ev, i, configs, quantities, masks, pred)
