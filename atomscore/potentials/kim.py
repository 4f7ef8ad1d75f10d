"""OpenKIM portable models through kimpy, with parameters changed in place.

:class:`KIMPotential` opens an installed KIM portable model once and keeps it: parameters are
read and written in the live model (``KIM::Model::SetParameter`` then ``ClearThenRefresh``),
never by writing, compiling and installing a new model. For every configuration the padding
(ghost) atoms of a periodic cell and the kimpy neighbour list are built once and reused while
only parameters change; a change of the model's influence distance or cutoffs (a ``cutoff``
parameter) forces a rebuild. Only the quantities asked for are computed (the others get a
null pointer), so stress is never requested from a non-periodic cluster.

We do not use ASE's ``ase.calculators.kim`` calculator for the numbers: its ``set_parameters``
re-creates the neighbour list on every call, which is the cost this module removes. ASE's
calculator is the independent reference in the tests.

Units: energy eV, length Å, forces eV/Å, stress eV/Å³ (ASE's sign and Voigt order
``xx, yy, zz, yz, xz, xy``).
"""

from __future__ import annotations

import copy
import difflib
import os
import weakref
from collections import OrderedDict
from contextlib import contextmanager

import numpy as np

from atomscore.errors import InputError, PotentialError, UnknownModelError
from atomscore.potentials.portable import import_kimpy as _import_kimpy
from atomscore.validation import check_finite_positions

#: how many configurations keep their padding and neighbour list (least recently used dropped)
NEIGHBOR_CACHE_SIZE = 8

#: most parameter entries a :class:`ParameterPath` keeps (beyond: vectors written whole)
PATH_MAX_CHANGES = 1 << 18

#: model families whose driver crashes (segfault) when asked for the energy with a null
#: forces pointer (DUNN__MD_292677547454_000, KIM API 2.3): they always get a forces buffer
FORCES_ALWAYS = ("DUNN_",)

_DEFAULT_KIM_API = "kim-api-collections-management"

#: keys of the reference's potential spec that have no meaning here: accepted, kept in to_spec
REFERENCE_ONLY_ARGS = ("kim_item_type", "model_name_prefix", "training_files", "potential_files",
                       "checkpoint_file", "checkpoint_name")
#: every key ``potential_args`` may hold
ACCEPTED_ARGS = ("kim_id", "species", "kim_api", "parameters", "model_driver", "param_files",
                 "param_files_digest") + REFERENCE_ONLY_ARGS


def _private_model(model_driver, param_files, digest, kim_api):
    """The private model of ``model_driver`` + ``param_files`` (built once per digest), or None."""
    if param_files is None:
        if digest is not None:
            raise InputError("potential_args: 'param_files_digest' given without 'param_files'")
        return None
    if model_driver is None:
        raise InputError("potential_args: 'param_files' need 'model_driver' (the KIM model driver that "
                         "reads them, e.g. 'EAM_Dynamo__MD_120291908751_005'), got none")
    from atomscore.potentials.portable import install_from_files

    return install_from_files(model_driver, param_files, kim_api=kim_api, expect_digest=digest)


def _on_path(private):
    from contextlib import nullcontext

    if private is None:
        return nullcontext()
    from atomscore.potentials.portable import models_on_path

    return models_on_path(private.collection)


def installed_models():
    """Return the names of the KIM portable models installed in any KIM API collection.

    Returns
    -------
    list of str
        Sorted model ids (e.g. ``SW_StillingerWeber_1985_Si__MO_405512056662_005``).
    """
    kimpy = _import_kimpy()
    col = kimpy.collections.create()
    n = col.cache_list_of_item_names_by_type(kimpy.collection_item_type.portableModel)
    return sorted(col.get_item_name_by_type(i) for i in range(n))


def _unknown_model_error(kim_id, kim_api):
    try:
        names = installed_models()
    except Exception:  # listing is a courtesy; the main message stands without it
        names = []
    close = difflib.get_close_matches(kim_id, names, n=5, cutoff=0.5)
    if not close:
        # ids share the long tail (__MO_...); also match on the human-readable head
        head = kim_id.split("__")[0]
        close = difflib.get_close_matches(head, [n.split("__")[0] for n in names], n=5, cutoff=0.5)
        close = [n for n in names if n.split("__")[0] in close][:5]
    msg = f"KIM model {kim_id!r} is not installed (or could not be opened)."
    if close:
        msg += " Installed models with similar names: " + ", ".join(close) + "."
    else:
        msg += f" {len(names)} portable models are installed; none has a similar name."
    msg += f" Install it with: {kim_api or _DEFAULT_KIM_API} install user {kim_id}"
    return UnknownModelError(msg)


def check_spec(potential, where="potential"):
    """The one parser of a potential spec: check its form without opening the model.

    Parameters
    ----------
    potential : dict or KIMPotential
        ``{'potential_type': 'KIM', 'potential_args': {'kim_id': ..., ...}}`` (the spec's
        form), or a :class:`KIMPotential` (its :meth:`~KIMPotential.to_spec`, live parameters
        included).
    where : str
        How the argument is named in error messages.

    Returns
    -------
    dict
        A new, JSON-able spec (the caller's dict is never modified or shared).

    Raises
    ------
    InputError
        Not a dict of that form, a ``potential_type`` other than ``'KIM'`` or no ``kim_id``.
    """
    if isinstance(potential, KIMPotential):
        return potential.to_spec()
    if not isinstance(potential, dict):
        raise InputError(f"{where}: expected a KIMPotential or a dict {{'potential_type': 'KIM', "
                         f"'potential_args': {{'kim_id': ...}}}}, got {type(potential).__name__}")
    ptype = potential.get("potential_type")
    if not isinstance(ptype, str) or ptype.upper() != "KIM":
        raise InputError(f"{where}['potential_type']: only 'KIM' is supported here, got {ptype!r}")
    args = potential.get("potential_args")
    if not isinstance(args, dict) or not isinstance(args.get("kim_id"), str) or not args["kim_id"]:
        raise InputError(f"{where}['potential_args']: expected a dict with 'kim_id' (a KIM model id), got {args!r}")
    return copy.deepcopy({**potential, "potential_type": "KIM"})


class _Setup:
    """Padding atoms, neighbour list and KIM compute arguments of one configuration."""

    __slots__ = ("n", "coords", "species", "contributing", "images", "nl", "cutoffs",
                 "influence", "cutoff_list", "args", "n_particles", "energy", "forces", "virial",
                 "pointers", "volume", "fold", "__weakref__")


#: compute arguments kept for reuse per potential, at most
FREE_ARGS = 64


def _give_back(free, args):
    """Keep the compute arguments of a setup gone for the next setup (see KIMPotential._build)."""
    if len(free) < FREE_ARGS:
        free.append(args)


class KIMPotential:
    """An installed OpenKIM portable model, evaluated in process through kimpy.

    Parameters
    ----------
    kim_id : str
        KIM id of an installed portable model, e.g.
        ``"SW_StillingerWeber_1985_Si__MO_405512056662_005"``.
    species : list of str, optional
        Chemical symbols this potential is used for; default: every species the model supports.
    kim_api : str
        The ``kim-api-collections-management`` executable (named in the install hint).
    parameters : dict, optional
        ``{name: values}`` set right after the model is opened (as written by :meth:`to_spec`
        for parameters changed in place).
    model_driver : str, optional
        The KIM model driver of ``param_files`` (e.g. ``"EAM_Dynamo__MD_120291908751_005"``).
    param_files : list of str, optional
        Parameter files (in the driver's order): the model opened is built from
        ``model_driver`` and these files into a private collection (cached by their digest,
        see :mod:`atomscore.potentials.portable`), not the installed ``kim_id``, which then
        only names the potential.
    param_files_digest : str, optional
        The digest :meth:`to_spec` records: re-creating a potential from files that changed
        since is refused.
    **reference_args
        Arguments of the reference's potential spec that have no meaning here
        (:data:`REFERENCE_ONLY_ARGS`); accepted and kept in :meth:`to_spec`. Any other key
        is refused with the list of accepted ones.

    Raises
    ------
    PotentialError
        The model is not installed; the message lists installed models with similar names and
        the command that installs it.
    InputError
        A requested species is not supported by the model.
    """

    def __init__(self, kim_id, species=None, kim_api=_DEFAULT_KIM_API, parameters=None, model_driver=None,
                 param_files=None, param_files_digest=None, **reference_args):
        if not isinstance(kim_id, str) or not kim_id:
            raise InputError(f"kim_id: expected a KIM model id string, got {kim_id!r}")
        unknown = [k for k in reference_args if k not in REFERENCE_ONLY_ARGS]
        if unknown:
            raise InputError(f"potential_args: unknown key {unknown[0]!r}; accepted keys: "
                             f"{', '.join(ACCEPTED_ARGS)}")
        kimpy = _import_kimpy()
        self.kim_id = kim_id
        self.kim_api = kim_api
        self._extra_args = dict(reference_args)
        if model_driver is not None:
            self._extra_args["model_driver"] = model_driver
        #: the private model built from ``model_driver`` + ``param_files`` (None: the installed ``kim_id``)
        self.private_model = _private_model(model_driver, param_files, param_files_digest, kim_api)
        if self.private_model is not None:
            self._extra_args["param_files"] = [str(p) for p in
                                               ([param_files] if isinstance(param_files, (str, os.PathLike)) else param_files)]
            self._extra_args["param_files_digest"] = self.private_model.digest
        self._open_name = kim_id if self.private_model is None else self.private_model.name
        try:
            with _on_path(self.private_model):
                accepted, model = kimpy.model.create(
                    kimpy.numbering.zeroBased, kimpy.length_unit.A, kimpy.energy_unit.eV,
                    kimpy.charge_unit.e, kimpy.temperature_unit.K, kimpy.time_unit.ps, self._open_name)
        except RuntimeError:
            if self.private_model is not None:
                raise PotentialError(f"the private model {self._open_name} (driver {model_driver}, files "
                                     f"{list(self.private_model.files)}) was built but the KIM API cannot open it; "
                                     f"does the driver accept these files?") from None
            raise _unknown_model_error(kim_id, kim_api) from None
        if not accepted:
            raise PotentialError(f"KIM model {kim_id!r} does not accept the units eV, Å, e, K, ps")
        self._model = model
        self._all_codes = None  # every supported species, listed on first need (139 queries)
        from ase.data import chemical_symbols

        self._code_by_number = np.full(len(chemical_symbols), -1, dtype=np.intc)
        if species is None:
            self._species = None
        else:
            if isinstance(species, str):
                species = [species]
            species = list(species)
            bad = [sym for sym in species if self._species_code(sym) is None]
            if bad:
                raise InputError(f"species: model {kim_id} does not support {bad}; it supports "
                                 f"{sorted(self._supported_codes())}")
            self._species = species
            for sym in species:
                self._code_by_number[chemical_symbols.index(sym)] = self._species_code(sym)
        self._params = OrderedDict()
        for i in range(model.get_number_of_parameters()):
            dtype, extent, name, description = model.get_parameter_metadata(i)
            self._params[name] = {"index": i, "extent": int(extent),
                                  "dtype": "Double" if dtype == kimpy.data_type.Double else "Integer",
                                  "description": description}
        self._dirty = False
        self._refresh_cutoffs()
        self._cache = OrderedDict()
        self._last_cell = None  # see _cell_of
        self._free_args = []  # compute arguments of setups gone, for the next ones (see _build)
        self._defaults = self.get_parameters()
        if parameters is not None:
            self.set_parameters(parameters)

    # ------------------------------------------------------------------ species
    def _species_code(self, symbol):
        """KIM species code of ``symbol``, or None if the model does not support it."""
        kimpy = _import_kimpy()
        sname = getattr(kimpy.species_name, symbol, None)
        if sname is None:
            return None
        supported, code = self._model.get_species_support_and_code(sname)
        return int(code) if supported else None

    def _supported_codes(self):
        if self._all_codes is None:
            kimpy = _import_kimpy()
            codes = {}
            for i in range(kimpy.species_name.get_number_of_species_names()):
                sname = kimpy.species_name.get_species_name(i)
                supported, code = self._model.get_species_support_and_code(sname)
                if supported:
                    codes[str(sname)] = int(code)
            self._all_codes = codes
        return self._all_codes

    @property
    def species(self):
        """Chemical symbols this potential covers (given, or every species the model supports)."""
        if self._species is None:
            return sorted(self._supported_codes())
        return list(self._species)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_spec(cls, spec):
        """Build a potential from the spec's dict form, or return a :class:`KIMPotential` as is.

        Parameters
        ----------
        spec : dict or KIMPotential
            ``{'potential_type': 'KIM', 'potential_args': {'kim_id': ..., 'kim_api': ..., ...}}``.

        Raises
        ------
        InputError
            Not a dict of that form (see :func:`check_spec`).
        """
        if isinstance(spec, cls):
            return spec
        return cls(**check_spec(spec)["potential_args"])

    def copy(self):
        """A new, independent :class:`KIMPotential` of the same model with this one's live parameters."""
        return KIMPotential.from_spec(self.to_spec())

    def to_spec(self):
        """Return the JSON-able dict that re-creates this potential, live parameters included.

        Parameters changed in place since the model was opened are written as
        ``potential_args['parameters']``, so a job re-creates exactly this model.
        """
        args = dict(self._extra_args)
        args.update(kim_id=self.kim_id, kim_api=self.kim_api)
        if self._species is not None:
            args["species"] = list(self._species)
        changed = {name: values.tolist() for name, values in self.get_parameters().items()
                   if not np.array_equal(values, self._defaults[name])}
        if changed:
            args["parameters"] = changed
        return {"potential_type": "KIM", "potential_args": args}

    def __repr__(self):
        return f"KIMPotential({self.kim_id!r}, species={self.species!r})"

    def __reduce__(self):
        # A kimpy model cannot be pickled: re-open it from its spec (live parameters included).
        return (KIMPotential.from_spec, (self.to_spec(),))

    # ------------------------------------------------------------------ parameters
    def parameter_info(self):
        """Return ``{name: {'index', 'extent', 'dtype', 'description'}}`` of the model's parameters.

        ``dtype`` is ``'Double'`` or ``'Integer'``; ``extent`` is the number of values.
        """
        return {name: dict(info) for name, info in self._params.items()}

    @property
    def parameter_names(self):
        """Names of the model's parameters, in the model's order."""
        return list(self._params)

    def _info(self, name, where="parameter"):
        if name not in self._params:
            raise InputError(f"{where}: unknown parameter {name!r} of {self.kim_id}; "
                             f"its parameters are: {', '.join(self._params)}")
        return self._params[name]

    def get_parameter(self, name):
        """Return all extents of parameter ``name`` as a 1-D array (float64 or int)."""
        info = self._info(name)
        get = self._model.get_parameter_double if info["dtype"] == "Double" else self._model.get_parameter_int
        values = [get(info["index"], e) for e in range(info["extent"])]
        return np.array(values, dtype=float if info["dtype"] == "Double" else int)

    def _check_values(self, name, values, extents):
        info = self._info(name)
        try:
            vals = np.atleast_1d(np.asarray(values, dtype=float))
        except (TypeError, ValueError):
            raise InputError(f"parameter {name!r}: expected numeric values, got {values!r}") from None
        if vals.ndim != 1:
            raise InputError(f"parameter {name!r}: expected a scalar or 1-D values, got shape {vals.shape}")
        if extents is None:
            if vals.size != info["extent"]:
                raise InputError(f"parameter {name!r}: expected {info['extent']} values (its extent), got {vals.size}")
            ext = np.arange(info["extent"])
        else:
            ext = np.atleast_1d(np.asarray(extents))
            if ext.dtype.kind not in "iu" or ext.ndim != 1:
                raise InputError(f"parameter {name!r}: extents must be integers, got {extents!r}")
            if ext.size != vals.size:
                raise InputError(f"parameter {name!r}: {ext.size} extents but {vals.size} values")
            bad = ext[(ext < 0) | (ext >= info["extent"])]
            if bad.size:
                raise InputError(f"parameter {name!r}: extent {int(bad[0])} out of range; "
                                 f"it has extents 0..{info['extent'] - 1}")
        if not np.all(np.isfinite(vals)):
            raise InputError(f"parameter {name!r}: expected finite values, got {values!r}")
        if info["dtype"] == "Integer" and np.any(vals != np.round(vals)):
            raise InputError(f"parameter {name!r} is an integer parameter, got {values!r}")
        return info, vals, ext

    def set_parameter(self, name, values, extents=None):
        """Set parameter ``name`` in the live model (no re-creation).

        Parameters
        ----------
        name : str
            Parameter name (see :meth:`parameter_info`).
        values : float or array_like
            New values, in the model's units.
        extents : int or list of int, optional
            Which extents ``values`` are for; default all of them, in order.
        """
        info, vals, ext = self._check_values(name, values, extents)
        self._set_raw(info, vals, ext)

    def _set_raw(self, info, vals, ext):
        idx = info["index"]
        setp = self._model.set_parameter
        if info["dtype"] == "Double":
            for e, v in zip(ext.tolist(), vals.tolist()):
                setp(idx, e, float(v))
        else:
            for e, v in zip(ext.tolist(), vals.tolist()):
                setp(idx, e, int(round(v)))
        self._dirty = True

    def get_parameters(self):
        """Return ``{name: array of all extents}`` for every parameter of the model."""
        return {name: self.get_parameter(name) for name in self._params}

    def set_parameters(self, parameters):
        """Set several parameters: ``{name: values}`` (all extents) or ``{name: (extents, values)}``."""
        if not isinstance(parameters, dict):
            raise InputError(f"parameters: expected a dict name -> values, got {type(parameters).__name__}")
        checked = []
        for name, values in parameters.items():
            if isinstance(values, tuple) and len(values) == 2:
                checked.append(self._check_values(name, values[1], values[0]))
            else:
                checked.append(self._check_values(name, values, None))
        for info, vals, ext in checked:  # all checked before any is set
            self._set_raw(info, vals, ext)

    def _entry_indices(self, entries):
        """``[(index, extent)]`` of ``(name, extent)`` entries, checked (Double parameters only)."""
        where = []
        for name, e in entries:
            info = self._info(name)
            if info["dtype"] != "Double":
                raise InputError(f"parameter {name!r} is an integer parameter; it cannot be differentiated")
            if not 0 <= int(e) < info["extent"]:
                raise InputError(f"parameter {name!r}: extent {e} out of range; it has extents 0..{info['extent'] - 1}")
            where.append((info["index"], int(e)))
        return where

    def parameter_writer(self, entries):
        """Return ``write(values)``, a fast setter of many parameter entries (finite differences).

        Parameters
        ----------
        entries : list of (str, int)
            ``(name, extent)`` of each entry of ``values`` (Double parameters only).

        Returns
        -------
        callable
            ``write(values)`` sets the entries to ``values`` (array of ``len(entries)`` floats,
            model units) in the live model, writing only those that differ from the last
            values written (the first call compares with the model's current values).

        Raises
        ------
        InputError
            An unknown name, an extent out of range, an integer parameter; and, from
            ``write``, values of the wrong length or not finite.
        """
        where = self._entry_indices(entries)
        get, setp = self._model.get_parameter_double, self._model.set_parameter
        last = [get(i, e) for i, e in where]
        n = len(where)

        def write(values):
            vals = np.asarray(values, dtype=float).reshape(-1)
            if vals.size != n or not np.all(np.isfinite(vals)):
                raise InputError(f"{self.kim_id}: expected {n} finite parameter values, got "
                                 f"{vals.size} values{'' if vals.size != n else ' with NaN/inf'}")
            changed = False
            for k, v in enumerate(vals.tolist()):
                if v != last[k]:
                    setp(where[k][0], where[k][1], v)
                    last[k] = v
                    changed = True
            if changed:
                self._dirty = True

        return write

    def parameter_path(self, entries, points, limit=None):
        """Prepare a fixed sequence of parameter vectors, visited in turn for every configuration
        (the points of a finite difference): each point is kept as the few entries it changes.

        Parameters
        ----------
        entries : list of (str, int)
            ``(name, extent)`` of each value (Double parameters only).
        points : iterable of array_like
            The parameter vectors (``len(entries)`` finite floats each, model units), in the
            order they will be visited; the model's current values are the start and the end.
        limit : int, optional
            Give up (return None) when the changes to keep exceed this many entries (a dense
            transform over thousands of parameters: write whole vectors instead); default
            :data:`PATH_MAX_CHANGES`.

        Returns
        -------
        ParameterPath or None
        """
        limit = PATH_MAX_CHANGES if limit is None else limit
        where = self._entry_indices(entries)
        get = self._model.get_parameter_double
        base = [get(i, e) for i, e in where]
        steps, last, touched, kept = [], list(base), set(), 0
        for point in points:
            vals = np.asarray(point, dtype=float).reshape(-1)
            if vals.size != len(where) or not np.all(np.isfinite(vals)):
                raise InputError(f"{self.kim_id}: expected {len(where)} finite parameter values, got "
                                 f"{vals.size} values{'' if vals.size != len(where) else ' with NaN/inf'}")
            changes = []
            for k, v in enumerate(vals.tolist()):
                if v != last[k]:
                    changes.append((where[k][0], where[k][1], v))
                    last[k] = v
                    touched.add(k)
            kept += len(changes)
            if kept > limit:
                return None
            steps.append(tuple(changes))
        back = tuple((where[k][0], where[k][1], base[k]) for k in sorted(touched))
        # from the last point, only the entries it leaves off their start values
        back_last = tuple((where[k][0], where[k][1], base[k]) for k in sorted(touched) if last[k] != base[k])
        return ParameterPath(self, steps, back, back_last)

    def check_species(self, atoms, where="configuration"):
        """Raise InputError unless this potential covers every species of ``atoms``."""
        try:
            self._species_codes(atoms)
        except InputError as exc:
            raise InputError(f"{where}: {exc}") from None

    def predictions(self, atoms, quantity):
        """The predictions of one configuration, for repeated evaluation as parameters change.

        Parameters
        ----------
        atoms : ase.Atoms
            The configuration (not modified).
        quantity : {'energy', 'forces', 'stress'}
            What is predicted: the energy (1 value, eV), the forces (3N values, eV/Å,
            row-major) or the stress (6 values, eV/Å³, Voigt).

        Returns
        -------
        Predictions
            ``p()`` gives the prediction vector at the live parameters; ``p.raw()`` and
            ``p.fold()`` split it for finite-difference loops (see :class:`Predictions`).

        Raises
        ------
        InputError
            Stress of a non-periodic configuration, a species not covered, bad positions.
        """
        return Predictions(self, atoms, quantity)

    # ------------------------------------------------------------------ evaluation
    def _refresh_cutoffs(self):
        if self._dirty or not hasattr(self, "_influence"):
            self._clear_then_refresh()
        self._dirty = False
        self._influence = self._model.get_influence_distance()
        cutoffs, hints = self._model.get_neighbor_list_cutoffs_and_hints()
        cutoff_list = cutoffs.tolist()
        if cutoff_list != getattr(self, "_cutoff_list", None):
            self._cutoff_list = cutoff_list
            self._cutoffs = np.array(cutoffs, dtype=np.double)
        self._padding_needs_neighbors = not all(h == 1 for h in hints.tolist())

    def _clear_then_refresh(self):
        """The refresh the KIM API asks for after parameters were written."""
        try:
            self._model.clear_then_refresh()
        except RuntimeError as exc:
            raise PotentialError(f"{self.kim_id}: the model refused the new parameters ({exc})") from None

    def _species_codes(self, atoms):
        numbers = atoms.numbers
        table = self._code_by_number
        if len(numbers) and 0 <= numbers.min() and numbers.max() < len(table):
            codes = table[numbers]  # the usual case, species known: one lookup, one test
            if codes.min() >= 0:
                return codes
        if numbers.min() < 0 or numbers.max() >= len(self._code_by_number):
            raise InputError(f"configuration has atomic numbers outside 0..{len(self._code_by_number) - 1}")
        codes = self._code_by_number[numbers]
        if self._species is None and np.any(codes < 0):
            from ase.data import chemical_symbols

            for z in np.unique(numbers[codes < 0]):  # learn the codes of new species on first sight
                code = self._species_code(chemical_symbols[z])
                if code is not None:
                    self._code_by_number[z] = code
            codes = self._code_by_number[numbers]
        if np.any(codes < 0):
            bad = sorted({s for s, c in zip(atoms.get_chemical_symbols(), codes) if c < 0})
            raise InputError(f"configuration has species {bad} that this potential ({self.kim_id}, "
                             f"species {self.species}) does not cover")
        return codes.astype(np.intc)

    def _key(self, atoms):
        return (atoms.positions.tobytes(), np.asarray(atoms.cell).tobytes(),
                bytes(np.asarray(atoms.pbc, dtype=bool)), atoms.numbers.tobytes())

    def _setup(self, atoms):
        """Return the cached setup of ``atoms`` (built if new or if the cutoffs changed)."""
        if self._dirty:
            self._refresh_cutoffs()
        key = self._key(atoms)
        setup = self._cache.get(key)
        if setup is not None:
            self._cache.move_to_end(key)
            if setup.influence == self._influence and setup.cutoff_list == self._cutoff_list:
                return setup
        setup = self._build(atoms)
        self._cache[key] = setup
        while len(self._cache) > NEIGHBOR_CACHE_SIZE:
            self._cache.popitem(last=False)
        return setup

    def _raw_evaluator(self, atoms, energy=False, forces=False, stress=False, setup=None):
        """Return ``evaluate() -> (setup, raw)``: one model evaluation with the live parameters.

        ``raw`` is a new array: the energy ``(1,)``, the forces on the padded atoms
        ``(n_padded, 3)`` (fold with :meth:`_fold` and the returned setup) or the virial ``(6,)``
        from the forces (divide by ``setup.volume`` for the stress; see :meth:`_virial`).
        The setup is rebuilt only if a parameter
        change moved the model's cutoffs. Used by finite-difference loops, where the cost of
        everything but the model's compute matters.
        """
        want = (bool(energy), bool(forces), bool(stress))
        pointers = self._pointers(*want)
        state = [self._setup(atoms) if setup is None else setup]

        def evaluate():
            s = state[0]
            if self._dirty:
                self._refresh_cutoffs()
                if s.influence != self._influence or s.cutoff_list != self._cutoff_list:
                    s = state[0] = self._setup(atoms)
            if s.pointers != pointers:
                self._point(s, *want)
            self._run(s)
            if want[1]:
                return s, s.forces.copy()
            if want[0]:
                return s, s.energy.copy()
            return s, self._virial(s)

        return evaluate

    def _build(self, atoms):
        kimpy = _import_kimpy()
        n = len(atoms)
        # NaN/inf coordinates crash some drivers (a segfault, not an error): refused here (the
        # message names the formula, which costs more than the test: only made for a bad one)
        if n == 0 or not (np.isfinite(atoms.positions).all() and np.isfinite(atoms.cell.array).all()):
            check_finite_positions(atoms, f"configuration {atoms.get_chemical_formula() or '(empty)'}")
        codes = self._species_codes(atoms)
        pbc = np.array(atoms.pbc, dtype=bool)
        cell = np.array(atoms.cell.array, dtype=np.double)
        s = _Setup()
        s.n = n
        periodic = bool(pbc.any())
        if periodic:
            volume, inverse = self._cell_of(cell)
        s.volume = volume if periodic else 0.0
        pos = np.array(atoms.positions, dtype=np.double)
        if periodic:
            if s.volume <= 0.0:
                raise InputError(f"configuration is periodic ({pbc.tolist()}) but its cell has no volume")
            # kimpy's padding expects atoms inside the cell along periodic directions
            frac = pos @ inverse
            fp = frac[:, pbc]
            if fp.min() < 0.0 or fp.max() >= 1.0:
                fp %= 1.0
                fp[fp >= 1.0] = 0.0  # -1e-17 % 1.0 rounds to 1.0
                frac[:, pbc] = fp
                pos = frac @ cell
            pad_pos, pad_codes, images = kimpy.neighlist.create_paddings(
                self._influence, cell, pbc.astype(np.intc), np.ascontiguousarray(pos), codes)
            pad_pos = np.asarray(pad_pos, dtype=np.double).reshape(-1, 3)
            images = np.asarray(images, dtype=np.intp)
        else:
            pad_pos = np.zeros((0, 3))
            pad_codes = np.zeros(0, dtype=np.intc)
            images = np.zeros(0, dtype=np.intp)
        n_tot = n + len(pad_pos)
        s.coords = np.ascontiguousarray(np.concatenate([pos, pad_pos]), dtype=np.double)
        s.species = np.ascontiguousarray(np.concatenate([codes, np.asarray(pad_codes, dtype=np.intc)]), dtype=np.intc)
        s.contributing = np.zeros(n_tot, dtype=np.intc)
        s.contributing[:n] = 1
        s.images = images
        need = np.ones(n_tot, dtype=np.intc)
        if not self._padding_needs_neighbors:
            need[n:] = 0
        s.influence = self._influence
        s.cutoffs = self._cutoffs  # replaced, never changed in place, by _refresh_cutoffs
        s.cutoff_list = self._cutoff_list
        s.nl = kimpy.neighlist.create()
        try:
            s.nl.build(s.coords, s.influence, s.cutoffs, need)
        except RuntimeError as exc:
            raise PotentialError(f"{self.kim_id}: building the neighbour list failed ({exc})") from None
        s.n_particles = np.array([n_tot], dtype=np.intc)
        s.energy = np.zeros(1, dtype=np.double)
        s.forces = np.zeros((n_tot, 3), dtype=np.double)
        s.virial = np.zeros(6, dtype=np.double)
        # compute arguments of setups gone are reused (creating and destroying one costs ~14 us,
        # a tenth of a 64-atom build): every pointer is set again, the outputs at the first _point
        free = self._free_args
        args = free.pop() if free else self._model.compute_arguments_create()
        weakref.finalize(s, _give_back, free, args).atexit = False
        A = kimpy.compute_argument_name
        args.set_argument_pointer(A.numberOfParticles, s.n_particles)
        args.set_argument_pointer(A.particleSpeciesCodes, s.species)
        args.set_argument_pointer(A.particleContributing, s.contributing)
        args.set_argument_pointer(A.coordinates, s.coords)
        args.set_callback_pointer(kimpy.compute_callback_name.GetNeighborList,
                                  kimpy.neighlist.get_neigh_kim(), s.nl)
        s.args = args
        s.pointers = None  # outputs not pointed at yet (a reused args points at a dead setup's)
        if len(images):
            # padding forces fold back onto their atoms: sorted by atom, summed with reduceat
            order = np.argsort(images, kind="stable")
            sorted_images = images[order]
            new_owner = np.empty(len(sorted_images), dtype=bool)
            new_owner[0] = True
            np.not_equal(sorted_images[1:], sorted_images[:-1], out=new_owner[1:])
            starts = np.flatnonzero(new_owner)
            s.fold = (n + order, sorted_images[starts], starts)
        else:
            s.fold = None
        return s

    def _cell_of(self, cell):
        """``(volume, inverse)`` of a cell (Å³, 1/Å), kept for the last cell seen: the
        configurations of a training set often share one."""
        key = cell.tobytes()
        kept = self._last_cell
        if kept is None or kept[0] != key:
            volume = abs(float(np.linalg.det(cell)))
            kept = self._last_cell = (key, volume, np.linalg.inv(cell) if volume > 0.0 else None)
        return kept[1], kept[2]

    def _pointers(self, energy, forces, stress):
        """The KIM outputs to point at for a request. The driver's ``partialVirial`` is never
        asked for: the stress comes from the forces on every particle (see :meth:`_virial`).
        Drivers in :data:`FORCES_ALWAYS` always get a forces buffer."""
        always = self.kim_id.startswith(FORCES_ALWAYS) or self._open_name.startswith(FORCES_ALWAYS)
        return (bool(energy), bool(forces) or bool(stress) or always, False)

    @staticmethod
    def _virial(s):
        """Virial ``dE/dε`` (eV, Voigt xx, yy, zz, yz, xz, xy) from the forces on every particle.

        The energy is a function of the coordinates of the atoms *and* of their padding
        images; a homogeneous strain moves all of them, so ``dE/dε_ij = -Σ_a F_ai r_aj``
        over all particles, exactly (translation invariance makes it origin-free). We do not
        use the driver's ``partialVirial``: some drivers get it wrong (MEAM_LAMMPS: the
        stress of Si off by 0.2 eV/Å³, C44 of Cu by 1 %), and this sum costs O(particles).
        """
        w = -(s.coords.T @ s.forces)  # (3, 3): w[i, j] = -Σ r_i F_j
        w = 0.5 * (w + w.T)
        return np.array([w[0, 0], w[1, 1], w[2, 2], w[1, 2], w[0, 2], w[0, 1]])

    def _point(self, s, energy, forces, stress):
        """Give KIM pointers for the requested outputs and null pointers for the others."""
        want = self._pointers(energy, forces, stress)
        if want == s.pointers:
            return
        A = _import_kimpy().compute_argument_name
        for flag, name, buf in zip(want, (A.partialEnergy, A.partialForces, A.partialVirial),
                                   (s.energy, s.forces, s.virial)):
            if flag:
                s.args.set_argument_pointer(name, buf)
            else:
                s.args.set_argument_null_pointer(name)
        s.pointers = want

    def _run(self, s):
        try:
            self._model.compute(s.args)
        except RuntimeError as exc:
            raise PotentialError(f"{self.kim_id}: KIM compute failed ({exc})") from None

    @staticmethod
    def _fold(s, padded):
        """Sum the rows of padding atoms onto their atoms: ``(n_total, k)`` -> ``(n, k)``."""
        out = padded[: s.n].copy()
        if s.fold is not None:
            rows, owners, starts = s.fold
            out[owners] += np.add.reduceat(padded[rows], starts, axis=0)
        return out

    def _forces(self, s):
        return self._fold(s, s.forces)

    def compute(self, atoms, energy=True, forces=False, stress=False):
        """Evaluate the model on one configuration, computing only what is asked.

        Parameters
        ----------
        atoms : ase.Atoms
            Periodic, partly periodic or non-periodic configuration (not modified).
        energy, forces, stress : bool
            Which quantities to compute. Stress needs a periodic cell.

        Returns
        -------
        dict
            ``'energy'`` (eV, float), ``'forces'`` (eV/Å, ``(n_atoms, 3)``), ``'stress'``
            (eV/Å³, Voigt ``xx, yy, zz, yz, xz, xy``, ASE sign convention); only the keys asked.
        """
        s = self._setup(atoms)
        if stress and s.volume <= 0.0:
            raise InputError("stress: the configuration is not periodic (no cell volume); "
                             "ask for energy or forces only")
        self._point(s, energy, forces, stress)
        self._run(s)
        out = {}
        if energy:
            out["energy"] = float(s.energy[0])
        if forces:
            out["forces"] = self._forces(s)
        if stress:
            out["stress"] = self._virial(s) / s.volume
        return out

    def get_calculator(self):
        """Return an ASE calculator that evaluates this potential with its live parameters.

        Changing parameters of this :class:`KIMPotential` changes the calculator's results
        (its cached results are dropped at the next call, as positions, cell or parameters
        are checked every time).
        """
        return KIMCalculator(self)


class ParameterPath:
    """A fixed sequence of parameter vectors of a :class:`KIMPotential` (see
    :meth:`KIMPotential.parameter_path`), each kept as the entries it changes from the one before.

    ``visit(k)`` moves the live model from point ``k - 1`` (the start for ``k = 0``) to point
    ``k``; ``restore()`` gives back the start from any point. Nothing is checked or converted
    per visit: the points were checked when the path was made.
    """

    __slots__ = ("potential", "steps", "back", "back_last", "same_cutoffs")

    def __init__(self, potential, steps, back, back_last=None):
        self.potential = potential
        self.steps = steps
        self.back = back
        #: the writes that restore the start from the last point (default: ``back``)
        self.back_last = back if back_last is None else back_last
        #: the points where the model's cutoffs were seen equal to the start's
        self.same_cutoffs = set()

    def __len__(self):
        return len(self.steps)

    def _write(self, changes):
        if changes:
            setp = self.potential._model.set_parameter
            for index, extent, value in changes:
                setp(index, extent, value)
            self.potential._dirty = True

    def visit(self, k):
        """Move the live model from point ``k - 1`` to point ``k``."""
        self._write(self.steps[k])

    def restore(self, from_last=False):
        """Give the live model back the values it had when the path was made (from any point;
        ``from_last``: the live model is at the last point, fewer entries to write)."""
        self._write(self.back_last if from_last else self.back)


class Predictions:
    """The predictions of one configuration by a :class:`KIMPotential` (see
    :meth:`KIMPotential.predictions`), evaluated with the live parameters.

    The padding atoms and neighbour list are built once and reused; they are rebuilt only
    when a parameter change moves the model's cutoffs. For finite differences, :meth:`raw`
    gives the forces still on the padded atoms, so differences of raw arrays are folded
    onto the atoms once (:meth:`fold`) rather than at every evaluation.
    """

    def __init__(self, potential, atoms, quantity):
        if quantity not in ("energy", "forces", "stress"):
            raise InputError(f"quantity: expected 'energy', 'forces' or 'stress', got {quantity!r}")
        self.potential = potential
        self.quantity = quantity
        self._base = potential._setup(atoms)
        if quantity == "stress" and self._base.volume <= 0.0:
            raise InputError("stress: the configuration is not periodic (no cell volume); "
                             "ask for energy or forces only")
        self._want = (quantity == "energy", quantity == "forces", quantity == "stress")
        self._pointers = potential._pointers(*self._want)
        self._evaluate = potential._raw_evaluator(atoms, *self._want, setup=self._base)
        #: number of predicted values: 1, 3N or 6
        self.n_values = {"energy": 1, "forces": 3 * self._base.n, "stress": 6}[quantity]

    def raw(self):
        """One evaluation in a linear form: the energy ``(1,)``, the stress ``(6,)``, or the
        forces on the padded atoms ``(n_padded, 3)`` (give linear combinations to :meth:`fold`)."""
        return self._finish(*self._evaluate())

    def _finish(self, s, raw):
        if self.quantity == "stress":
            return raw / s.volume
        if self.quantity == "forces" and s is not self._base:  # a cutoff moved: new padding
            out = np.zeros((len(self._base.coords), 3))
            out[: self._base.n] = KIMPotential._fold(s, raw)
            return out
        return raw

    def fold(self, raw):
        """Raw array(s) ``(n_raw, ..., *extra)`` -> prediction rows ``(n_values, *extra)``."""
        raw = np.asarray(raw)
        if self.quantity != "forces":
            return raw
        extra = raw.shape[2:]
        folded = KIMPotential._fold(self._base, raw.reshape(raw.shape[0], -1))
        return folded.reshape((self.n_values,) + extra)

    def central_differences(self, path, steps):
        """``(p(2i) - p(2i+1)) / (2 steps[i])`` for each ``i``, with ``p(k)`` the predictions at
        point ``k`` of ``path`` (a :class:`ParameterPath` of ``2 len(steps)`` points): the
        ``(n_values, len(steps))`` derivative of a central difference. Differences are taken on
        the raw predictions and folded once; the model gets its start values back, also on error.

        A point whose cutoffs were seen equal to the start's (for an earlier configuration:
        the model's cutoffs are a function of its parameters) is evaluated on this
        configuration's neighbour list without asking the model for its cutoffs again.
        """
        steps = np.asarray(steps, dtype=float)
        n_points = 2 * len(steps)
        pot, s, want = self.potential, self._base, self._want
        same = path.same_cutoffs
        raw = None
        done = False
        try:
            for k in range(n_points):
                if k in same:  # cutoffs known equal to the start's: straight to compute
                    path.visit(k)
                    if s.pointers != self._pointers:
                        pot._point(s, *want)
                    if pot._dirty:  # left set: the potential's own record of the cutoffs is not updated here
                        pot._clear_then_refresh()
                    pot._run(s)
                    out = s.forces if want[1] else s.energy if want[0] else pot._virial(s) / s.volume
                else:
                    out = self._at(path, k)
                if raw is None:
                    raw = np.empty((n_points,) + out.shape)
                raw[k] = out
            done = True
        finally:
            path.restore(from_last=done)
        denominators = (2.0 * steps).reshape((-1,) + (1,) * (raw.ndim - 1))
        # the first axis moved last (np.moveaxis's view, without its argument checks)
        jac = ((raw[0::2] - raw[1::2]) / denominators).transpose(tuple(range(1, raw.ndim)) + (0,))
        return self.fold(jac).reshape(self.n_values, len(steps))

    def _at(self, path, k):
        """The raw predictions at point ``k`` of ``path``, whose cutoffs are not known yet
        (points whose cutoffs are known are evaluated in :meth:`central_differences`)."""
        path.visit(k)
        s = self._base
        used, raw = self._evaluate()  # refreshes, checks the cutoffs, points the outputs
        if used.influence == s.influence and used.cutoff_list == s.cutoff_list:
            path.same_cutoffs.add(k)  # the cutoffs at point k are those at the start
        return self._finish(used, raw)

    def __call__(self):
        """The prediction vector ``(n_values,)`` at the live parameters."""
        return self.fold(self.raw()).reshape(-1)


#: idle potentials of this process, by spec: opening a model costs milliseconds
_POOL: dict = {}
_POOL_SIZE = 4


@contextmanager
def pooled_potential(spec):
    """Lend a :class:`KIMPotential` for ``spec`` (dict form), reused across calls in this process.

    A lent potential starts with the model's installed parameter values and keeps its
    neighbour-list cache; it is not shared while lent. A :class:`KIMPotential` given instead
    of a dict is lent as is.
    """
    if isinstance(spec, KIMPotential):
        yield spec
        return
    import json

    key = json.dumps(spec, sort_keys=True, default=str)
    idle = _POOL.setdefault(key, [])
    if idle:
        pot = idle.pop()
        pot.set_parameters(pot._installed)
    else:
        pot = KIMPotential.from_spec(spec)
        pot._installed = pot.get_parameters()
    try:
        yield pot
    finally:
        if len(idle) < _POOL_SIZE:
            idle.append(pot)


def _calculator_class():
    from ase.calculators.calculator import Calculator, all_changes

    class _KIMCalculator(Calculator):
        """ASE calculator view on a :class:`KIMPotential` (energy eV, forces eV/Å, stress eV/Å³)."""

        implemented_properties = ["energy", "free_energy", "forces", "stress"]

        def __init__(self, potential, **kwargs):
            super().__init__(**kwargs)
            self.potential = potential
            self._param_state = None

        def check_state(self, atoms, tol=1e-15):
            changes = super().check_state(atoms, tol=tol)
            state = _param_fingerprint(self.potential)
            if state != self._param_state:
                changes = list(changes) + ["parameters"]
            return changes

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            want_stress = "stress" in properties
            res = self.potential.compute(self.atoms, energy=True,
                                         forces="forces" in properties, stress=want_stress)
            self.results["energy"] = res["energy"]
            self.results["free_energy"] = res["energy"]
            if "forces" in res:
                self.results["forces"] = res["forces"]
            if "stress" in res:
                self.results["stress"] = res["stress"]
            self._param_state = _param_fingerprint(self.potential)

    return _KIMCalculator


def _param_fingerprint(potential):
    return tuple((name, potential.get_parameter(name).tobytes()) for name in potential._params)


def KIMCalculator(potential, **kwargs):
    """Return an ASE calculator evaluating ``potential`` (see :meth:`KIMPotential.get_calculator`)."""
    global _CALC_CLASS
    if _CALC_CLASS is None:
        _CALC_CLASS = _calculator_class()
    return _CALC_CLASS(potential, **kwargs)


_CALC_CLASS = None
