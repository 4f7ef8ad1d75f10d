"""Bulk-crystal target properties: lattice constant, cohesive energy, bulk modulus and the
elastic constants of any ``ase.build.bulk`` structure (cubic, hcp, wurtzite ...).

Every value is taken at the zero-stress crystal (:func:`~atomscore.properties.base.relax_bulk`),
atoms relaxed. Elastic constants are relaxed-ion (internal coordinates relaxed in each
strained cell), by central differences of the stress at ±``deformation_mag``; their spread
over ``spread_strains`` is reported as the numerical uncertainty (tabulated potentials: the
curvature changes on the scale of the table spacing, see docs/properties.md).
"""

from __future__ import annotations

import numpy as np

from atomscore.errors import InputError
from atomscore.properties.base import TargetProperty
from atomscore.properties.common import HEXAGONAL, energy, isolated_atom_energy, reuss_bulk_modulus, strain_stress
from atomscore.validation import check_positive

_VOIGT_NAMES = [f"c{i + 1}{j + 1}" for i in range(6) for j in range(i, 6)]
#: independent elastic constants per crystal family (the default property vector)
INDEPENDENT = {"cubic": ("c11", "c12", "c44"), "hexagonal": ("c11", "c12", "c13", "c33", "c44")}


def _strain_args(deformation_mag, spread_strains):
    d = check_positive(deformation_mag, "deformation_mag", allow_array=False)
    if d > 0.05:
        raise InputError(f"deformation_mag: expected a small strain (<= 0.05), got {deformation_mag}")
    if spread_strains is None:
        spread_strains = ()
    if isinstance(spread_strains, (int, float)):
        spread_strains = (spread_strains,)
    out = []
    for s in spread_strains:
        s = check_positive(s, "spread_strains", allow_array=False)
        if s > 0.05:
            raise InputError(f"spread_strains: expected small strains (<= 0.05), got {s}")
        out.append(float(s))
    return float(d), tuple(out)


def _modulus_units(units):
    from atomscore.properties.elastic import _check_units

    return "eV/A^3" if units is None else _check_units(units)


def _per_ev_a3(units):
    """Factor from eV/Å³ to ``units``."""
    from ase.units import GPa

    return 1.0 / GPa if units == "GPa" else 1.0


class LatticeConstant(TargetProperty):
    """Zero-stress lattice constant(s) of a crystal.

    Parameters are those of :class:`~atomscore.properties.base.TargetProperty`.
    ``calculate_property`` returns ``lattice_constant`` (a, Å), and for hexagonal structures
    ``c`` (Å) and ``c_over_a``. The property vector holds a (and c when hexagonal) unless
    ``fim_quantities`` says otherwise.
    """

    target_property_type = "LatticeConstant"
    quantity_units = {"lattice_constant": "A", "c": "A", "c_over_a": "1"}
    has_lammps = True

    def __init__(self, lattice_param, lattice_type, elements, c_over_a=None, simulator_path=None,
                 timeout=None, fim_quantities=None):
        if fim_quantities is None:
            fim_quantities = ("lattice_constant", "c") if str(lattice_type).lower() in HEXAGONAL \
                else ("lattice_constant",)
        super().__init__(lattice_param, lattice_type, elements, c_over_a, simulator_path, timeout, fim_quantities)
        if self.lattice_type not in HEXAGONAL and set(self.fim_quantities) & {"c", "c_over_a"}:
            raise InputError(f"fim_quantities: a {self.lattice_type} crystal has no c axis; use 'lattice_constant'")
        self._init_args["fim_quantities"] = list(self.fim_quantities)

    def _evaluate(self, pot, for_vector=False):
        a, c, atoms = self.relaxed_bulk(pot)
        values = {"lattice_constant": a}
        if c is not None:
            values.update(c=c, c_over_a=c / a)
        return values, [("bulk", atoms, energy(pot, atoms))]

    def _evaluate_lammps(self, pot):
        from atomscore.properties.lammps import lammps_bulk

        res = lammps_bulk(self, pot)
        values = {"lattice_constant": res["a"]}
        if res["c"] is not None:
            values.update(c=res["c"], c_over_a=res["c"] / res["a"])
        return values


class CohesiveEnergy(TargetProperty):
    """Cohesive energy of a crystal at zero stress.

    ``calculate_property`` returns ``cohesive_energy`` (eV/atom, positive when bound: the
    mean isolated-atom energy minus the crystal's energy per atom), ``energy_per_atom`` (eV)
    and ``lattice_constant`` (Å). The property vector holds the cohesive energy.
    """

    target_property_type = "CohesiveEnergy"
    quantity_units = {"cohesive_energy": "eV/atom", "energy_per_atom": "eV/atom", "lattice_constant": "A"}
    default_fim_quantities = ("cohesive_energy",)
    has_lammps = True

    def _isolated(self, pot, atoms):
        e = {el: isolated_atom_energy(pot, el) for el in set(atoms.get_chemical_symbols())}
        return float(np.mean([e[s] for s in atoms.get_chemical_symbols()]))

    def _evaluate(self, pot, for_vector=False):
        a, c, atoms = self.relaxed_bulk(pot)
        e = energy(pot, atoms)
        per_atom = e / len(atoms)
        values = {"cohesive_energy": self._isolated(pot, atoms) - per_atom, "energy_per_atom": per_atom,
                  "lattice_constant": a}
        return values, [("bulk", atoms, e)]

    def _evaluate_lammps(self, pot):
        from atomscore.properties.lammps import lammps_bulk

        res = lammps_bulk(self, pot)
        return {"cohesive_energy": res["isolated_atom_energy"] - res["energy_per_atom"],
                "energy_per_atom": res["energy_per_atom"], "lattice_constant": res["a"]}


class _Modulus(TargetProperty):
    """Shared arguments of the properties from stress-strain differences."""

    def __init__(self, lattice_param, lattice_type, elements, deformation_mag=1e-4, spread_strains=(1e-3,),
                 units=None, c_over_a=None, timeout=None, fim_quantities=None):
        self.modulus_units = _modulus_units(units)
        self.deformation_mag, self.spread_strains = _strain_args(deformation_mag, spread_strains)
        super().__init__(lattice_param, lattice_type, elements, c_over_a, None, timeout, fim_quantities)
        self._init_args.update(deformation_mag=deformation_mag, units=units,
                               spread_strains=list(self.spread_strains),
                               fim_quantities=list(self.fim_quantities))

    @property
    def units(self):
        return self.modulus_units

    def all_units(self):
        return {k: self.modulus_units for k in self.quantity_units}


class BulkModulus(_Modulus):
    """Bulk modulus under uniform pressure (relaxed-ion, relaxed cell shape).

    ``B = 1 / Σ_{i,j<3} S_ij`` from the normal block of the relaxed-ion elastic constants
    (for cubic crystals ``(C11 + 2 C12)/3``), by central stress differences at strain
    ±``deformation_mag`` (default 1e-4).

    Parameters
    ----------
    deformation_mag : float
        Strain of the central differences.
    spread_strains : sequence of float
        Other strains whose values give ``bulk_modulus_spread`` (the largest difference from
        the value at ``deformation_mag``), the numerical uncertainty. Default (1e-3,).
    units : {'GPa', 'eV/A^3'}, optional
        Units of the values and of the property vector; default eV/Å³.

    ``calculate_property`` returns ``bulk_modulus``, ``bulk_modulus_spread``.
    """

    target_property_type = "BulkModulus"
    quantity_units = {"bulk_modulus": None, "bulk_modulus_spread": None}
    default_fim_quantities = ("bulk_modulus",)

    def _evaluate(self, pot, for_vector=False):
        _, _, atoms = self.relaxed_bulk(pot)
        states = [("bulk", atoms, energy(pot, atoms))]
        f = _per_ev_a3(self.modulus_units)
        b = reuss_bulk_modulus(strain_stress(pot, atoms, self.deformation_mag, range(3), states)) * f
        values = {"bulk_modulus": b}
        if not for_vector:
            others = [reuss_bulk_modulus(strain_stress(pot, atoms, s, range(3))) * f for s in self.spread_strains]
            values["bulk_modulus_spread"] = max([abs(o - b) for o in others], default=0.0)
        return values, states


class CrystalElasticConstants(_Modulus):
    """Relaxed-ion elastic constants of any ``ase.build.bulk`` crystal (cubic, hcp, ...).

    The cell is relaxed to zero stress (a and c for hexagonal structures), then each Voigt
    strain is applied as ±``deformation_mag`` with atoms relaxed at fixed cell.

    Parameters
    ----------
    deformation_mag, spread_strains, units
        As for :class:`BulkModulus`.
    fim_quantities : sequence of str, optional
        Voigt constants ``'c11'`` ... ``'c66'`` for the property vector; default the
        independent ones (cubic c11, c12, c44; hexagonal c11, c12, c13, c33, c44).

    ``calculate_property`` returns ``elastic_constants`` (6x6, symmetrised),
    ``elastic_constants_spread`` (6x6), ``lattice_constant`` (Å), ``c`` (Å, hexagonal) and
    each ``cij``.
    """

    target_property_type = "CrystalElasticConstants"
    quantity_units = {name: None for name in _VOIGT_NAMES}

    def __init__(self, lattice_param, lattice_type, elements, deformation_mag=1e-4, spread_strains=(1e-3,),
                 units=None, c_over_a=None, timeout=None, fim_quantities=None):
        if fim_quantities is None:
            family = "hexagonal" if str(lattice_type).lower() in HEXAGONAL else "cubic"
            fim_quantities = INDEPENDENT[family]
        super().__init__(lattice_param, lattice_type, elements, deformation_mag, spread_strains, units,
                         c_over_a, timeout, fim_quantities)

    def all_units(self):
        units = {k: self.modulus_units for k in _VOIGT_NAMES}
        units.update(elastic_constants=self.modulus_units, elastic_constants_spread=self.modulus_units,
                     lattice_constant="A", c="A")
        return units

    def _evaluate(self, pot, for_vector=False):
        a, c, atoms = self.relaxed_bulk(pot)
        states = [("bulk", atoms, energy(pot, atoms))]
        f = _per_ev_a3(self.modulus_units)
        mat = strain_stress(pot, atoms, self.deformation_mag, states=states) * f
        mat = 0.5 * (mat + mat.T)
        values = {"elastic_constants": mat, "lattice_constant": a}
        if c is not None:
            values["c"] = c
        for name in _VOIGT_NAMES:
            values[name] = float(mat[int(name[1]) - 1, int(name[2]) - 1])
        if not for_vector:
            spread = np.zeros((6, 6))
            for s in self.spread_strains:
                other = strain_stress(pot, atoms, s) * f
                spread = np.maximum(spread, np.abs(0.5 * (other + other.T) - mat))
            values["elastic_constants_spread"] = spread
        return values, states


def eos_fit(pot, elements, lattice_type, a0, span, points=9):
    """Lattice constant (Å) and bulk modulus (GPa) of a cubic crystal from ``ase.eos``.

    A Birch-Murnaghan fit of E(V) with a in ``a0·(1 ± span)`` (``points`` cells, atoms at
    their lattice sites): the energy route, independent of :class:`BulkModulus`'s stresses.
    Tabulated models need a narrow span (see docs/properties.md).
    """
    from ase.eos import EquationOfState
    from ase.units import GPa

    from atomscore.properties.common import bulk_cell

    vols, ens = [], []
    for a in np.linspace(1 - span, 1 + span, points) * a0:
        atoms = bulk_cell(elements, lattice_type, a)
        vols.append(atoms.get_volume())
        ens.append(pot.compute(atoms)["energy"])
    v0, _, b = EquationOfState(vols, ens, eos="birchmurnaghan").fit()
    return float((v0 / bulk_cell(elements, lattice_type, 1.0).get_volume()) ** (1 / 3)), float(b / GPa)
