"""The base of the built-in target properties: the zero-stress crystal, the value/vector
contract and the check that a finite difference does not straddle a change of relaxation path
(the crystal cells, relaxations and the spec form are in :mod:`atomscore.properties.common`).

A target property is built from ``target_property_args`` (``lattice_type``,
``lattice_param``, ``elements`` plus its own arguments), computes a dict of named values
with their units (:meth:`TargetProperty.calculate_property`) and the FIM's vector
(:meth:`TargetProperty.property_vector`). Subclasses implement ``_evaluate(pot)``, which
returns the values and the *states* it relaxed: ``(label, atoms, energy)`` triples, or
``(label, atoms, energy, residual_force)`` for a state stationary only to a tolerance. The
states make the path check of :meth:`TargetProperty.property_vectors` possible: a relaxed
(or saddle) energy is stationary in the atomic coordinates, so its change between two
parameter sets θa, θb must equal, to second order in the displacement, the change of the
energy at fixed coordinates (Hellmann-Feynman). A relaxation that lands in another minimum
at one of the points breaks that, and the derivative is refused (see docs/properties.md).
"""

from __future__ import annotations

import copy

import numpy as np

from atomscore.errors import InputError, PotentialError
from atomscore.properties.common import (HEXAGONAL, LATTICE_SPECIES, SpecForm, bulk_cell, check_elements, energy,
                                         relax_lattice, relax_positions, stress)
from atomscore.properties.lammps import check_lammps
from atomscore.validation import check_positive

#: the path check's tolerances (see TargetProperty.property_vectors)
PATH_RTOL = 0.1
PATH_ATOL = 1e-6  # eV: well above the energy error of a relaxation (RELAX_FMAX)


class PathChangeError(PotentialError):
    """A relaxation changed path between two finite-difference points (not differentiable)."""


def relax_bulk(pot, elements, lattice_type, a_guess, c_guess=None):
    """Zero-stress primitive crystal, atoms relaxed: ``(a, c, atoms)`` (c None if cubic).

    Cubic structures: the root of the pressure in a (bracketed, ``brentq`` to 1e-13 Å).
    Hexagonal ones: the root of (σxx + σyy)/2 and σzz in (a, c) (``scipy.optimize.root``,
    ``xtol`` 1e-13), from c = a·sqrt(8/3) unless ``c_guess`` is given.
    """
    if lattice_type not in HEXAGONAL:
        a = relax_lattice(pot, elements, lattice_type, a_guess,
                          make=lambda a_: bulk_cell(elements, lattice_type, a_))
        return a, None, relax_positions(pot, bulk_cell(elements, lattice_type, a))
    from scipy.optimize import root

    c0 = a_guess * np.sqrt(8.0 / 3.0) if c_guess is None else c_guess
    scale = np.array([a_guess, c0])

    def residual(x):
        a, c = x * scale
        s = stress(pot, relax_positions(pot, bulk_cell(elements, lattice_type, a, c)))
        return np.array([0.5 * (s[0] + s[1]), s[2]]) * 100.0  # eV/Å³ * 100 ~ 16 GPa

    # Powell's hybrid method (scipy): a well-kept 2-D root finder with its own Jacobian
    sol = root(residual, np.ones(2), method="hybr", options={"xtol": 1e-13})
    a, c = sol.x * scale
    if not np.all(np.abs(residual(sol.x)) < 1e-9):
        raise PotentialError(f"no zero-stress {lattice_type} cell found near a = {a_guess} Å ({sol.message})")
    return float(a), float(c), relax_positions(pot, bulk_cell(elements, lattice_type, a, c))


class TargetProperty(SpecForm):
    """Base of the built-in target properties of a crystal (see the module docstring).

    Parameters
    ----------
    lattice_param : float
        Starting lattice constant a, Å (the zero-stress one is found by relaxation).
    lattice_type : str
        ``ase.build.bulk`` crystal structure: sc, fcc, bcc, diamond, hcp (one species) or
        rocksalt, zincblende, cesiumchloride, fluorite, wurtzite (two).
    elements : list of str
        The species, in ``ase.build.bulk``'s order.
    c_over_a : float, optional
        Starting c/a of a hexagonal structure (default the ideal sqrt(8/3)).
    simulator_path : str, optional
        LAMMPS executable with the KIM package, for the properties that have a LAMMPS backend.
    timeout : float, optional
        Seconds a LAMMPS run may take.
    """

    #: units of each value of the property vector, in :attr:`fim_quantities` order
    quantity_units: dict = {}
    #: what the property vector holds by default
    default_fim_quantities: tuple = ()
    has_lammps = False

    def __init__(self, lattice_param, lattice_type, elements, c_over_a=None, simulator_path=None,
                 timeout=None, fim_quantities=None):
        self._init_args = {"lattice_param": lattice_param, "lattice_type": lattice_type,
                           "elements": copy.deepcopy(elements), "c_over_a": c_over_a,
                           "simulator_path": simulator_path, "timeout": timeout,
                           "fim_quantities": copy.deepcopy(fim_quantities)}
        self.lattice_param = check_positive(lattice_param, "lattice_param", allow_array=False)
        if not isinstance(lattice_type, str) or lattice_type.lower() not in LATTICE_SPECIES:
            raise InputError(f"lattice_type: unknown crystal structure {lattice_type!r}; expected one of: "
                             f"{', '.join(map(repr, LATTICE_SPECIES))}")
        self.lattice_type = lattice_type.lower()
        self.elements = check_elements(elements, self.lattice_type)
        self.c_over_a = None
        if c_over_a is not None:
            if self.lattice_type not in HEXAGONAL:
                raise InputError(f"c_over_a: only hexagonal structures ({', '.join(HEXAGONAL)}) have one; "
                                 f"lattice_type is {self.lattice_type!r}")
            self.c_over_a = check_positive(c_over_a, "c_over_a", allow_array=False)
        self.simulator_path = None
        if simulator_path is not None:
            if not self.has_lammps:
                raise InputError(f"simulator_path: {self.target_property_type} has no LAMMPS backend; "
                                 "leave simulator_path out (the embedded backend is used)")
            self.simulator_path = check_lammps(simulator_path)
        self.timeout = None if timeout is None else check_positive(timeout, "timeout", allow_array=False)
        if fim_quantities is None:
            fim_quantities = self.default_fim_quantities
        if isinstance(fim_quantities, str) or not isinstance(fim_quantities, (list, tuple)) or not fim_quantities:
            raise InputError(f"fim_quantities: expected a non-empty list of names from "
                             f"{list(self.quantity_units)}, got {fim_quantities!r}")
        for q in fim_quantities:
            if q not in self.quantity_units:
                raise InputError(f"fim_quantities: {self.target_property_type} has no quantity {q!r}; "
                                 f"expected some of: {', '.join(map(repr, self.quantity_units))}")
        self.fim_quantities = tuple(fim_quantities)
        self.last_path_check = []

    @property
    def units(self):
        """Units of the property vector's values (one string per quantity, joined by ', ')."""
        return ", ".join(self.quantity_units[q] for q in self.fim_quantities)

    @property
    def property_size(self) -> int:
        """Length of :meth:`property_vector`."""
        return len(self.fim_quantities)

    # ------------------------------------------------------------------ computation
    def check_potential(self, potential):
        """Return ``potential`` as a KIMPotential, checking it covers the crystal's species."""
        from atomscore.potentials.kim import KIMPotential

        pot = KIMPotential.from_spec(potential)
        missing = [e for e in self.elements if e not in pot.species]
        if missing:
            raise InputError(f"elements: model {pot.kim_id} does not support {missing}; "
                             f"it supports {list(pot.species)}")
        return pot

    def relaxed_bulk(self, pot):
        """``(a, c, atoms)`` of the zero-stress primitive crystal (see :func:`relax_bulk`)."""
        c_guess = None if self.c_over_a is None else self.c_over_a * self.lattice_param
        return relax_bulk(pot, self.elements, self.lattice_type, self.lattice_param, c_guess)

    def _evaluate(self, pot, for_vector=False):  # pragma: no cover - every subclass implements it
        """``(values, states)``; ``for_vector``: only what the property vector needs."""
        raise NotImplementedError

    def _evaluate_lammps(self, pot):  # pragma: no cover - only where has_lammps
        raise NotImplementedError

    def _values(self, pot, for_vector=False):
        """``(values, states)``: the named values and the relaxed states (none from LAMMPS)."""
        if self.backend == "lammps":
            return self._evaluate_lammps(pot), []
        return self._evaluate(pot, for_vector=for_vector)

    def calculate_property(self, potential):
        """Compute the property with ``potential`` at its current (live) parameters.

        Returns
        -------
        dict
            The named values (see the class), ``units`` (a dict naming each value's units)
            and ``backend``.
        """
        return self._calculate(potential)

    def _calculate(self, potential, for_vector=False):
        pot = self.check_potential(potential)
        values, _ = self._values(pot, for_vector=for_vector)
        return self._result(values)

    def _result(self, values):
        out = dict(values)
        out["units"] = {k: u for k, u in self.all_units().items() if k in values}
        out["backend"] = self.backend
        return out

    def all_units(self):
        """Units of every value :meth:`calculate_property` returns."""
        return dict(self.quantity_units)

    def property_vector(self, potential):
        """The FIM property vector: the values named by ``fim_quantities``, in their units."""
        return self._vector(self._calculate(potential, for_vector=True))

    def _vector(self, values):
        return np.array([float(values[q]) for q in self.fim_quantities])

    def property_vectors(self, potential, parameter_sets, rtol=PATH_RTOL, atol=PATH_ATOL):
        """Property vectors at several parameter sets, checked for changes of relaxation path.

        Parameters
        ----------
        potential : KIMPotential
            Its parameters are set in place to each set in turn (left at the last one).
        parameter_sets : list of dict
            ``{name: values}`` per point (all extents, as :meth:`KIMPotential.set_parameters`).
        rtol, atol : float
            Path check: for two points a, b that differ in one parameter entry, each relaxed
            (stationary) state's energy change ``E_b(x_b) − E_a(x_a)`` equals, up to terms
            second order in the displacement x_b − x_a, the change at fixed fractional
            coordinates (``E_b(x_a) − E_a(x_a)`` with x_a in b's cell, and ``E_b(x_b) −
            E_a(x_b)`` with x_b in a's cell; Hellmann-Feynman). A
            mismatch above ``rtol·|fixed-coordinate change| + atol`` (eV) means a relaxation
            ended elsewhere: :class:`PathChangeError`. The comparisons are kept in
            :attr:`last_path_check`.

        Returns
        -------
        list of numpy.ndarray
        """
        pot = self.check_potential(potential)
        vectors, states, sets = [], [], []
        for values in parameter_sets:
            theta = {k: np.asarray(v, dtype=float) for k, v in values.items()}
            # only what changed: setting a tabulated model's 6000 values costs ~0.07 s
            pot.set_parameters(_changed(sets[-1], theta) if sets else theta)
            vals, st = self._values(pot, for_vector=True)
            vectors.append(self._vector(self._result(vals)))
            states.append(st)
            sets.append(theta)
        self.last_path_check = _check_paths(pot, sets, states, rtol, atol, self.target_property_type)
        return vectors


def _neighbour_pairs(sets):
    """Index pairs of parameter sets that differ in exactly one entry, adjacent along it."""
    if len(sets) < 2:
        return []
    names = sorted(sets[0])
    mat = np.array([np.concatenate([np.ravel(s[n]) for n in names]) for s in sets])
    varying = np.flatnonzero(np.any(mat != mat[0], axis=0))
    sub = mat[:, varying]
    pairs = []
    for j in range(sub.shape[1]):
        others = np.delete(sub, j, axis=1)
        groups = {}
        for i, row in enumerate(others):
            groups.setdefault(row.tobytes(), []).append(i)
        for members in groups.values():
            members = sorted(members, key=lambda i: sub[i, j])
            pairs += [(a, b) for a, b in zip(members, members[1:]) if sub[a, j] != sub[b, j]]
    return pairs


def _changed(old, new):
    """The entries of ``new`` whose values differ from ``old``'s."""
    return {k: v for k, v in new.items() if k not in old or not np.array_equal(old[k], v)}


def _check_paths(pot, sets, states, rtol, atol, what):
    """Compare each relaxed state's energy change with its fixed-coordinate predictions."""
    report = []
    current = len(sets) - 1  # the potential holds the last point's parameters
    for a, b in _neighbour_pairs(sets):
        for state_a, state_b in zip(states[a], states[b]):
            (label, xa, ea), (label_b, xb, eb) = state_a[:3], state_b[:3]
            if label != label_b:  # pragma: no cover - every evaluation relaxes the same states
                raise PotentialError(f"{what}: states {label!r} and {label_b!r} do not pair")
            # each configuration in the other's cell (fractional coordinates kept): the cell
            # follows the crystal's lattice constant, and the energy is not stationary in it
            xa_in_b, xb_in_a = xa.copy(), xb.copy()
            xa_in_b.set_cell(xb.cell, scale_atoms=True)
            xb_in_a.set_cell(xa.cell, scale_atoms=True)
            pot.set_parameters(_changed(sets[current], sets[b]))
            e_b_at_a = energy(pot, xa_in_b)
            pot.set_parameters(_changed(sets[b], sets[a]))
            current = a
            e_a_at_b = energy(pot, xb_in_a)
            change = eb - ea
            from_a, from_b = e_b_at_a - ea, eb - e_a_at_b  # fixed-coordinate (first-order) changes
            mismatch = change - 0.5 * (from_a + from_b)
            allowed = rtol * max(abs(from_a), abs(from_b)) + atol
            # a state stationary only to a residual force f (eV/Å, e.g. a NEB's fmax) adds up to
            # f · Σ|x_b − x_a| to each side's first-order term
            residual = (state_a[3] if len(state_a) > 3 else 0.0) + (state_b[3] if len(state_b) > 3 else 0.0)
            if residual:
                allowed += residual * float(np.sum(np.linalg.norm(xb.positions - xa_in_b.positions, axis=1)))
            report.append({"points": (a, b), "state": label, "change": change, "predicted": 0.5 * (from_a + from_b),
                           "mismatch": mismatch})
            if abs(mismatch) > allowed:
                raise PathChangeError(
                    f"{what}: the relaxation of {label!r} changed path between finite-difference points "
                    f"{a} and {b}: its energy changed by {change:.6g} eV, while at fixed coordinates it "
                    f"changes by {from_a:.6g} eV (point {a}'s) and {from_b:.6g} eV (point {b}'s); "
                    f"{abs(mismatch):.3g} eV apart, allowed {allowed:.3g}. The property is not "
                    "differentiable there; use a smaller step h or another starting structure.")
    if sets:
        pot.set_parameters(_changed(sets[current], sets[-1]))
    return report
