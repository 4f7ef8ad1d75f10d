"""Which potential parameters a FIM is taken with respect to, and in which parameterisation.

The spec's ``parameters_optimize`` format: one key per parameter name, one inner list per
extent (leading extents; the extents not listed keep the model's values and are not
differentiated)::

    {'A': [[15.2848479197914]],      # free, starting at this value
     'B': [['default']],             # free, at the model's current value
     'lambda': [[0.0, 'fix']],       # set to 0.0 and held fixed (not differentiated)
     'sigma': [[2.0951, 1.5, 2.5]]}  # free, with bounds [value, lower, upper] (checked)

The free parameters, in the order of the dict and then of the extents, make the parameter
vector θ. A transform from :mod:`information_matching.transform` (identity by default) maps it
to the vector φ = transform(θ) the derivatives are taken in; the FIM is P×P in φ.
``fim_index_to_parameter`` maps FIM row/column ``i`` to ``{'parameter': name, 'extent': e}``.
"""

from __future__ import annotations

import hashlib
import numbers

import numpy as np

from atomscore.errors import InputError, import_extra

#: default finite-difference step: this fraction of |φ| ...
RELATIVE_STEP = 0.1
#: ... but never less than this (in φ units), so a zero parameter never gets a zero step
MIN_STEP = 1e-4
#: a parameter with more entries than this (a tabulated EAM function: 2000) is described in
#: metadata by its count, range and digest, not by its values (which would fill every result file)
METADATA_MAX_ENTRIES = 16


# ---------------------------------------------------------------------------- transforms
class IdentityTransform:
    """φ = θ (the default transform)."""

    def transform(self, x):
        return np.asarray(x, dtype=float).copy()

    def inverse_transform(self, x):
        return np.asarray(x, dtype=float).copy()

    def __call__(self, x):
        return self.transform(x)


def _listify(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_listify(v) for v in value]
    if isinstance(value, dict):
        return {k: _listify(v) for k, v in value.items()}
    return value


def _arrayify(args):
    """JSON lists back to arrays (information_matching's transforms take floats or ndarrays)."""
    out = {}
    for key, value in args.items():
        if key == "transform_list":
            out[key] = [_prepare_spec(item, f"transform_list[{i}]") for i, item in enumerate(value)]
        elif key == "param_idx":
            out[key] = value
        elif isinstance(value, (list, tuple)):
            out[key] = np.asarray(value, dtype=float)
        else:
            out[key] = value
    return out


def _prepare_spec(spec, where):
    if not isinstance(spec, dict) or "transform_type" not in spec:
        raise InputError(f"{where}: expected {{'transform_type': ..., 'transform_args': {{...}}}}, got {spec!r}")
    args = spec.get("transform_args") or {}
    if not isinstance(args, dict):
        raise InputError(f"{where}['transform_args']: expected a dict, got {args!r}")
    return {"transform_type": spec["transform_type"], "transform_args": _arrayify(args)}


def make_transform(transform):
    """Return a transform object from ``None`` (identity), an object or a dict.

    Parameters
    ----------
    transform : None, object or dict
        An object with ``transform`` and ``inverse_transform`` methods (e.g. from
        :mod:`information_matching.transform`), or
        ``{'transform_type': 'AffineTransform', 'transform_args': {'a': 1.0, ...}}``.

    Raises
    ------
    InputError
        Unknown ``transform_type`` (the message lists the available ones) or bad arguments.
    """
    if transform is None:
        return IdentityTransform()
    if hasattr(transform, "transform") and hasattr(transform, "inverse_transform") and not isinstance(transform, dict):
        return transform
    if not isinstance(transform, dict):
        raise InputError(f"transform: expected None, a transform object or a dict "
                         f"{{'transform_type', 'transform_args'}}, got {type(transform).__name__}")
    _transform = import_extra("information_matching.transform", "parameter transforms", "fim")
    avail_transform, transform_builder = _transform.avail_transform, _transform.transform_builder

    ttype = transform.get("transform_type")
    if ttype in (None, "Identity", "IdentityTransform"):
        return IdentityTransform()
    if ttype not in avail_transform:
        raise InputError(f"transform['transform_type']: unknown {ttype!r}; expected one of: "
                         f"{', '.join(['IdentityTransform', *avail_transform])}")
    spec = _prepare_spec(transform, "transform")

    def build(s):
        args = dict(s["transform_args"])
        if "transform_list" in args:  # nested specs: build the inner objects ourselves
            args["transform_list"] = [build(item) for item in args["transform_list"]]
            cls = avail_transform[s["transform_type"]]
            return cls(**args)
        return transform_builder(s["transform_type"], args)

    try:
        return build(spec)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(f"transform: cannot build {ttype} from {transform.get('transform_args')!r}: {exc}") from None


def transform_to_dict(transform):
    """Return the JSON form ``{'transform_type', 'transform_args'}`` of a transform object.

    Raises
    ------
    InputError
        The object's arguments cannot be written as JSON (give the transform as a dict).
    """
    if transform is None or isinstance(transform, IdentityTransform):
        return {"transform_type": "IdentityTransform", "transform_args": {}}
    if isinstance(transform, dict):
        return {"transform_type": transform.get("transform_type"),
                "transform_args": _listify(dict(transform.get("transform_args") or {}))}
    name = type(transform).__name__
    kwargs = getattr(transform, "jsonable_kwargs", None)
    if kwargs is None:
        raise InputError(f"transform: a {name} cannot be written to a job file; give it as "
                         "{'transform_type': ..., 'transform_args': {...}}")
    kwargs = _listify(dict(kwargs))
    if name == "AffineTransform":  # information_matching leaves x0 out of its kwargs
        kwargs["x0"] = _listify(getattr(transform, "x0", 0.0))
    return {"transform_type": name, "transform_args": kwargs}


# ---------------------------------------------------------------------------- parameters
def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


class ParameterMap:
    """The free and fixed parameters of a ``parameters_optimize`` dict, for one potential.

    Parameters
    ----------
    potential : KIMPotential
        The model whose parameters are named (read for ``'default'`` values and extents;
        not modified here).
    parameters_optimize : dict
        The spec's format (see the module docstring).
    transform : None, object or dict
        See :func:`make_transform`.

    Attributes
    ----------
    free : list of (str, int)
        (name, extent) of each free parameter, in FIM order.
    fixed : list of (str, int, float)
        (name, extent, value) of each fixed parameter.
    theta0 : numpy.ndarray
        Free parameter values in the model's parameterisation, shape (P,).
    lower, upper : numpy.ndarray
        Bounds of θ (``-inf``/``inf`` where none), shape (P,).
    transform : object
        θ → φ.
    fim_index_to_parameter : dict
        ``{i: {'parameter': name, 'extent': e}}``.
    """

    def __init__(self, potential, parameters_optimize, transform=None):
        if not isinstance(parameters_optimize, dict) or not parameters_optimize:
            raise InputError("parameters_optimize: expected a non-empty dict {name: [[value], ...]}, "
                             f"got {parameters_optimize!r}")
        info = potential.parameter_info()
        self.free, self.fixed = [], []
        theta, lower, upper = [], [], []
        for name, entries in parameters_optimize.items():
            where = f"parameters_optimize[{name!r}]"
            if name not in info:
                raise InputError(f"{where}: unknown parameter {name!r} of {potential.kim_id}; "
                                 f"its parameters are: {', '.join(info)}")
            extent = info[name]["extent"]
            if not isinstance(entries, (list, tuple)) or not entries or \
                    not all(isinstance(e, (list, tuple)) for e in entries):
                raise InputError(f"{where}: expected one inner list per extent, e.g. [[15.28]], "
                                 f"[['default']] or [[0.0, 'fix']], got {entries!r}")
            if len(entries) > extent:
                raise InputError(f"{where}: {len(entries)} inner lists but {name!r} has extent {extent}; "
                                 f"extent {extent} out of range (valid extents 0..{extent - 1})")
            current = potential.get_parameter(name)
            for e, entry in enumerate(entries):
                value, lo, hi, fix = self._parse_entry(entry, f"{where}[{e}]", current[e])
                if info[name]["dtype"] != "Double" and not fix:
                    raise InputError(f"{where}[{e}]: {name!r} is an integer parameter; it can only be fixed")
                if fix:
                    self.fixed.append((name, e, value))
                else:
                    self.free.append((name, e))
                    theta.append(value)
                    lower.append(lo)
                    upper.append(hi)
        if not self.free:
            raise InputError("parameters_optimize: every parameter is fixed; at least one must be free")
        self.theta0 = np.array(theta, dtype=float)
        self.lower = np.array(lower, dtype=float)
        self.upper = np.array(upper, dtype=float)
        self.transform = make_transform(transform)
        try:
            phi0 = np.asarray(self.transform.transform(self.theta0.copy()), dtype=float)
        except Exception as exc:  # a user's transform may raise anything: said as it said it
            raise InputError(f"transform: cannot transform the {len(self.theta0)} free parameter values "
                             f"({type(exc).__name__}: {exc})") from None
        if phi0.ndim != 1 or phi0.size == 0 or not np.all(np.isfinite(phi0)):
            raise InputError(f"transform: expected a 1-D vector of finite transformed values φ from "
                             f"transform(θ) (θ: the {len(self.theta0)} free parameter values), got "
                             f"{np.array2string(phi0, threshold=8)} (shape {phi0.shape})")
        self.phi0 = phi0
        theta = self.to_theta(phi0, where="φ0 = transform(θ0)")
        scale = np.maximum(np.abs(self.theta0), np.finfo(float).tiny)
        worst = float(np.max(np.abs(theta - self.theta0) / scale))
        if worst > 1e-6:
            import warnings

            warnings.warn(f"transform: inverse_transform(transform(θ0)) differs from θ0 (largest relative "
                          f"difference {worst:.3g}); the FIM is taken at inverse_transform(φ0)", RuntimeWarning,
                          stacklevel=3)

    @staticmethod
    def _parse_entry(entry, where, current):
        items = list(entry)
        fix = False
        if items and isinstance(items[-1], str) and items[-1].lower() == "fix":
            fix = True
            items = items[:-1]
        if len(items) not in (1, 3):
            raise InputError(f"{where}: expected [value], [value, 'fix'] or [value, lower, upper], got {list(entry)!r}")
        raw = items[0]
        if isinstance(raw, str) and raw.lower() == "default":
            value = float(current)
        elif _is_number(raw) and np.isfinite(raw):
            value = float(raw)
        else:
            raise InputError(f"{where}: expected a finite number or 'default', got non-numeric value {raw!r}")
        lo, hi = -np.inf, np.inf
        if len(items) == 3:
            bounds = []
            for label, b in (("lower", items[1]), ("upper", items[2])):
                if b is None:
                    bounds.append(-np.inf if label == "lower" else np.inf)
                elif _is_number(b) and not np.isnan(b):
                    bounds.append(float(b))
                else:
                    raise InputError(f"{where}: {label} bound must be a number or None, got {b!r}")
            lo, hi = bounds
            if not lo <= value <= hi:
                raise InputError(f"{where}: value {value} is outside its bounds [{lo}, {hi}]")
        return value, lo, hi, fix

    # -------------------------------------------------------------- mapping
    @property
    def n_params(self):
        """P, the number of transformed parameters φ: the FIM is P×P."""
        return len(self.phi0)

    @property
    def n_theta(self):
        """The number of free entries θ of ``parameters_optimize`` (P when the transform keeps sizes)."""
        return len(self.free)

    @property
    def fim_index_to_parameter(self):
        """``{i: {'parameter': name, 'extent': e}}`` for each FIM row/column ``i``.

        When the transform changes the number of parameters, row ``i`` is φ[i]: named by the
        transform's ``parameter_names`` when it has them, else ``{'parameter': 'phi', 'extent': i}``.
        """
        if self.n_params == self.n_theta:
            return {i: {"parameter": name, "extent": e} for i, (name, e) in enumerate(self.free)}
        names = getattr(self.transform, "parameter_names", None)
        if isinstance(names, (list, tuple)) and len(names) == self.n_params and all(isinstance(n, str) for n in names):
            return {i: {"parameter": n, "extent": 0} for i, n in enumerate(names)}
        return {i: {"parameter": "phi", "extent": i} for i in range(self.n_params)}

    def to_theta(self, phi, where="parameters"):
        """θ = inverse_transform(φ), checked: ``n_theta`` finite values within their bounds.

        Raises
        ------
        InputError
            The transform gave another number of values, NaN/inf, or a value out of bounds
            (``where`` names the point, e.g. a finite-difference step).
        """
        try:
            theta = np.asarray(self.transform.inverse_transform(np.array(phi, dtype=float)), dtype=float).reshape(-1)
        except Exception as exc:  # a user's transform may raise anything: said as it said it
            raise InputError(f"transform.inverse_transform at {where}: {type(exc).__name__}: {exc}") from None
        if theta.size != self.n_theta or not np.all(np.isfinite(theta)):
            raise InputError(f"transform.inverse_transform at {where}: expected {self.n_theta} finite values "
                             f"(one per free entry of parameters_optimize), got {theta.size} values"
                             f"{'' if theta.size != self.n_theta else ' with NaN/inf'}")
        self.check_bounds(theta, where)
        return theta

    def vector_to_dict(self, theta):
        """Free-parameter vector θ → ``{name: [[value], ...]}`` (the ``parameters_optimize`` form).

        Fixed parameters are included with ``'fix'``.
        """
        theta = np.asarray(theta, dtype=float).reshape(-1)
        if theta.size != self.n_theta:
            raise InputError(f"parameter vector: expected {self.n_theta} values, got {theta.size}")
        out = {}
        for (name, e), v in zip(self.free, theta):
            out.setdefault(name, {})[e] = [float(v)]
        for name, e, v in self.fixed:
            out.setdefault(name, {})[e] = [float(v), "fix"]
        return {name: [by_ext[e] for e in sorted(by_ext)] for name, by_ext in out.items()}

    def dict_to_vector(self, parameters):
        """``{name: values over extents}`` (arrays or the nested form) → free vector θ."""
        theta = np.empty(self.n_theta)
        for i, (name, e) in enumerate(self.free):
            if name not in parameters:
                raise InputError(f"parameters: missing {name!r}")
            vals = parameters[name]
            v = vals[e]
            if isinstance(v, (list, tuple)):
                v = v[0]
            theta[i] = float(v)
        return theta

    def apply(self, potential, theta=None):
        """Set the fixed values and the free values θ (default θ0) in ``potential``, in place."""
        theta = self.theta0 if theta is None else np.asarray(theta, dtype=float)
        for name, e, v in self.fixed:
            potential.set_parameter(name, [v], extents=[e])
        for (name, e), v in zip(self.free, theta):
            potential.set_parameter(name, [v], extents=[e])

    def default_step(self, phi=None):
        """Default finite-difference steps in φ: ``max(0.1 |φ|, 1e-4)`` per parameter."""
        phi = self.phi0 if phi is None else np.asarray(phi, dtype=float)
        return np.maximum(RELATIVE_STEP * np.abs(phi), MIN_STEP)

    def check_bounds(self, theta, where="parameters"):
        """Raise InputError if θ leaves its bounds."""
        bad = np.flatnonzero((theta < self.lower) | (theta > self.upper))
        if bad.size:
            i = int(bad[0])
            name, e = self.free[i]
            raise InputError(f"{where}: {name}[{e}] = {theta[i]} is outside its bounds "
                             f"[{self.lower[i]}, {self.upper[i]}]")

    def metadata(self):
        """JSON-able description: parameters (optimize form), transform, both sizes,
        fim_index_to_parameter."""
        optimize = {}
        for name, entries in self.vector_to_dict(self.theta0).items():
            if len(entries) <= METADATA_MAX_ENTRIES:
                optimize[name] = entries
                continue
            values = np.array([e[0] for e in entries], dtype=float)
            fixed = bytes(len(e) > 1 for e in entries)
            optimize[name] = {"entries": len(entries), "fixed": int(sum(fixed)), "min": float(values.min()),
                              "max": float(values.max()),
                              "sha256": hashlib.sha256(values.tobytes() + fixed).hexdigest()}
        return {
            "parameters_optimize": optimize,
            "transform": describe_transform(self.transform),
            "n_parameters": self.n_theta,
            "n_transformed_parameters": self.n_params,
            "fim_index_to_parameter": {str(k): v for k, v in self.fim_index_to_parameter.items()},
        }


def describe_transform(transform):
    """The transform for metadata: its JSON form, or, for an object whose arguments are not
    JSON (a user's class without ``jsonable_kwargs``), its class and module with ``None`` args."""
    try:
        return transform_to_dict(transform)
    except InputError:
        cls = type(transform)
        return {"transform_type": cls.__name__, "transform_args": None, "module": cls.__module__}


def job_transform(transform, potential=None, parameters_optimize=None):
    """The JSON form of a transform for a job file, refused unless it rebuilds the same transform.

    A job re-creates the transform from ``{'transform_type', 'transform_args'}`` (its
    ``jsonable_kwargs``). A user's class that is not registered in
    ``information_matching.transform.avail_transform``, or whose kwargs do not hold its
    state, would be rebuilt wrong or not at all: with ``potential`` and
    ``parameters_optimize`` given, the rebuilt transform must give the same φ0 and θ at φ0.

    Raises
    ------
    InputError
        Before any job folder is written; the message says to compute in this process.
    """
    if transform is None or isinstance(transform, dict):
        return transform
    name = type(transform).__name__
    advice = ("compute in this process instead (compute_batch, with nprocs for parallel workers, "
              "which get the object itself)")
    spec = transform_to_dict(transform)
    try:
        rebuilt = make_transform(spec)
    except InputError as exc:
        raise InputError(f"transform: a job cannot rebuild this {name} from its jsonable_kwargs ({exc}); "
                         f"{advice}") from None
    if potential is not None and parameters_optimize is not None:
        from atomscore.potentials.kim import check_spec, pooled_potential

        with pooled_potential(check_spec(potential)) as pot:
            pmap = ParameterMap(pot, parameters_optimize, transform)
        try:
            phi = np.asarray(rebuilt.transform(pmap.theta0.copy()), dtype=float)
            theta = np.asarray(rebuilt.inverse_transform(pmap.phi0.copy()), dtype=float)
            same = (phi.shape == pmap.phi0.shape and np.allclose(phi, pmap.phi0, rtol=1e-12, atol=0)
                    and np.allclose(theta, pmap.to_theta(pmap.phi0), rtol=1e-12, atol=0))
        except Exception:  # a rebuilt transform that cannot even run is not the same transform
            same = False
        if not same:
            raise InputError(f"transform: this {name}, rebuilt from its jsonable_kwargs "
                             f"{_listify(getattr(transform, 'jsonable_kwargs', None))!r:.200}, gives other values "
                             f"than the object (its kwargs do not hold its state), so a job would compute "
                             f"another FIM; {advice}")
    return spec
