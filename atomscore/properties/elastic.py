"""Elastic constants of a cubic crystal: a target property of the FIM modules.

Two backends compute the same thing:

* **embedded** (default): in process, with :class:`~atomscore.potentials.kim.KIMPotential`
  (kimpy). The lattice constant is relaxed first (zero pressure), then each of the six Voigt
  strains is applied as +/- ``deformation_mag`` to the relaxed cell, the atoms are relaxed
  at fixed cell (so C44 is the relaxed, Kleinman-corrected value) and the stress is read;
  ``C[:, j] = (sigma(+) - sigma(-)) / (2 * deformation_mag)``.
* **LAMMPS** (when ``simulator_path`` is given): the same procedure in an ``lmp`` input deck,
  with perturbed parameters set by ``kim param set`` (see :mod:`atomscore.properties.lammps`).

Shear strains are engineering strains (Voigt), so ``C44`` is ``d sigma_yz / d gamma_yz``.
The returned 6x6 matrix is symmetrised, ``(C + C.T) / 2``.
"""

from __future__ import annotations

import copy

import numpy as np

from atomscore.errors import InputError
from atomscore.properties.common import (LATTICE_FMAX, LATTICE_MAXITER, SpecForm, cubic_cell, double_parameters,
                                         isolated_atom_energy, relax_lattice, relax_positions, strain_stress)
from atomscore.properties.lammps import check_lammps, lammps_elastic
from atomscore.validation import check_positive

#: lattice types and their ``ase.build.bulk`` crystal structure (conventional cubic cell)
LATTICE_TYPES = ("diamond", "fcc", "bcc", "sc")

#: units of the elastic constants
UNITS = ("GPa", "eV/A^3")

#: units of the flattened constants used as the FIM property vector unless ``units`` is given
FIM_UNITS = "eV/A^3"
#: the values a FIM property vector can hold (see ElasticConstants.property_vector)
FIM_QUANTITIES = ("elastic_constants", "lattice_constant", "cohesive_energy", "c11", "c12", "c44")


def _gpa_per(units):
    from ase.units import GPa

    return 1.0 if units == "GPa" else GPa  # GPa -> eV/Å^3 factor (ase.units.GPa = eV/Å^3 per GPa)


def _check_units(units, name="units"):
    if isinstance(units, str):
        norm = units.replace("Å", "A").replace("**", "^").replace(" ", "")
        for u in UNITS:
            if norm.lower() == u.lower() or norm.lower() == u.lower().replace("^", ""):
                return u
    raise InputError(f"{name}: unknown units {units!r}; expected one of: {', '.join(map(repr, UNITS))}")


def _resolve_potential(potential):
    from atomscore.potentials.kim import KIMPotential

    return KIMPotential.from_spec(potential)


class ElasticConstants(SpecForm):
    """Elastic constants, lattice constant and cohesive energy of a cubic crystal.

    Parameters
    ----------
    lattice_param : float
        Starting lattice constant, Å (the equilibrium one is found by relaxation).
    lattice_type : {'diamond', 'fcc', 'bcc', 'sc'}
        Crystal structure (conventional cubic cell of 8, 4, 2 or 1 atoms).
    deformation_mag : float
        Strain magnitude of the central finite differences (dimensionless), default 1e-4.
    simulator_path : str, optional
        LAMMPS executable with the KIM package (e.g. ``/usr/bin/lmp``): selects the LAMMPS
        backend. Default: the embedded backend.
    elements : list of str
        The crystal's species (one, for these lattices).
    units : {'GPa', 'eV/A^3'}, optional
        Units of the returned elastic constants (default GPa). When given, the FIM
        property vector uses them too; otherwise it is in eV/Å³ (see :meth:`property_vector`).
    timeout : float, optional
        Seconds a LAMMPS run may take.
    fim_quantities : sequence of str, optional
        What the FIM property vector holds, in this order: ``'elastic_constants'`` (all
        36, row-major; the default, as the reference), ``'c11'``, ``'c12'``, ``'c44'`` (the
        independent cubic constants), ``'lattice_constant'`` (Å), ``'cohesive_energy'`` (eV/atom).

    Examples
    --------
    >>> ec = ElasticConstants(lattice_param=5.43, lattice_type='diamond', elements=['Si'])
    >>> ec.calculate_property({'potential_type': 'KIM', 'potential_args': {
    ...     'kim_id': 'SW_StillingerWeber_1985_Si__MO_405512056662_005'}})  # doctest: +SKIP
    """

    target_property_type = "ElasticConstants"

    def __init__(self, lattice_param, lattice_type="diamond", deformation_mag=1e-4, simulator_path=None,
                 elements=None, units=None, timeout=None, fim_quantities=None):
        self._init_args = {"lattice_param": lattice_param, "lattice_type": lattice_type,
                           "deformation_mag": deformation_mag, "simulator_path": simulator_path,
                           "elements": copy.deepcopy(elements), "units": units, "timeout": timeout,
                           "fim_quantities": copy.deepcopy(fim_quantities)}
        if fim_quantities is None:
            fim_quantities = ("elastic_constants",)
        if isinstance(fim_quantities, str) or not isinstance(fim_quantities, (list, tuple)) or not fim_quantities:
            raise InputError(f"fim_quantities: expected a non-empty list of names from {list(FIM_QUANTITIES)}, "
                             f"got {fim_quantities!r}")
        for q in fim_quantities:
            if q not in FIM_QUANTITIES:
                raise InputError(f"fim_quantities: unknown quantity {q!r}; expected some of: "
                                 f"{', '.join(map(repr, FIM_QUANTITIES))}")
        self.fim_quantities = tuple(fim_quantities)
        self.lattice_param = check_positive(lattice_param, "lattice_param", allow_array=False)
        if not isinstance(lattice_type, str) or lattice_type.lower() not in LATTICE_TYPES:
            raise InputError(f"lattice_type: unknown lattice type {lattice_type!r}; "
                             f"expected one of: {', '.join(map(repr, LATTICE_TYPES))}")
        self.lattice_type = lattice_type.lower()
        self.deformation_mag = check_positive(deformation_mag, "deformation_mag", allow_array=False)
        if self.deformation_mag > 0.05:
            raise InputError(f"deformation_mag: expected a small strain (<= 0.05), got {deformation_mag}")
        if elements is None:
            raise InputError("elements: expected a list with the crystal's chemical symbol, e.g. ['Si'], got None")
        if isinstance(elements, str):
            elements = [elements]
        if not isinstance(elements, (list, tuple)) or len(elements) != 1 or not isinstance(elements[0], str):
            raise InputError(f"elements: a {self.lattice_type} crystal holds one species; expected a list "
                             f"of one chemical symbol, e.g. ['Si'], got {elements!r}")
        from ase.data import atomic_numbers

        if elements[0] not in atomic_numbers:
            raise InputError(f"elements: {elements[0]!r} is not a chemical symbol")
        self.elements = list(elements)
        self.units = None if units is None else _check_units(units)
        self.simulator_path = None
        if simulator_path is not None:
            self.simulator_path = check_lammps(simulator_path)
        self.timeout = None if timeout is None else check_positive(timeout, "timeout", allow_array=False)

    # ------------------------------------------------------------------ computation
    def check_potential(self, potential):
        """Return ``potential`` as a KIMPotential, checking it supports the crystal's element."""
        pot = _resolve_potential(potential)
        element = self.elements[0]
        if element not in pot.species:
            raise InputError(f"elements: model {pot.kim_id} does not support {element!r}; "
                             f"it supports {list(pot.species)}")
        return pot

    def calculate_property(self, potential, units=None):
        """Compute the property with ``potential`` at its current parameters.

        Parameters
        ----------
        potential : KIMPotential or dict
            The model, or its spec dict ``{'potential_type': 'KIM', 'potential_args': {...}}``
            (default parameters). A KIMPotential's live parameters are used as they are.
        units : {'GPa', 'eV/A^3'}, optional
            Units of ``elastic_constants``; default the constructor's ``units`` or GPa.

        Returns
        -------
        dict
            ``lattice_constant`` (Å), ``cohesive_energy`` (eV/atom, positive for a bound crystal:
            isolated-atom energy minus crystal energy per atom), ``energy_per_atom`` (eV),
            ``elastic_constants`` (6x6 array, symmetrised), ``units`` (dict of the units),
            ``backend``.
        """
        units = _check_units(units) if units is not None else (self.units or "GPa")
        pot = self.check_potential(potential)
        if self.backend == "lammps":
            raw = lammps_elastic(self.simulator_path, pot.kim_id, self.elements[0], self.lattice_type,
                                 self.lattice_param, self.deformation_mag,
                                 parameters=double_parameters(pot), timeout=self.timeout)
        else:
            raw = embedded_elastic(pot, self.elements[0], self.lattice_type, self.lattice_param,
                                   self.deformation_mag)
        c = np.asarray(raw["elastic_constants"], dtype=float)
        c = 0.5 * (c + c.T) * _gpa_per(units)
        return {
            "lattice_constant": float(raw["lattice_constant"]),
            "cohesive_energy": float(raw["isolated_atom_energy"] - raw["energy_per_atom"]),
            "energy_per_atom": float(raw["energy_per_atom"]),
            "elastic_constants": c,
            "units": {"lattice_constant": "A", "cohesive_energy": "eV/atom", "energy_per_atom": "eV",
                      "elastic_constants": units},
            "backend": self.backend,
        }

    @property
    def property_size(self) -> int:
        """Length of :meth:`property_vector` (36 per ``'elastic_constants'``, 1 per other quantity)."""
        return sum(36 if q == "elastic_constants" else 1 for q in self.fim_quantities)

    def property_vector(self, potential):
        """The FIM property vector: by default the 36 elastic constants, row-major.

        ``fim_quantities`` chooses other values (lattice constant in Å, cohesive energy in
        eV/atom, the cubic C11, C12, C44). Elastic constants are in the constructor's
        ``units`` when given, else in eV/Å³ (the model's energy/length³, the units the
        reference's FIM uses), so a target covariance is in those units squared.
        """
        res = self.calculate_property(potential, units=self.units or FIM_UNITS)
        c = res["elastic_constants"]
        parts = {"elastic_constants": c.ravel(), "lattice_constant": [res["lattice_constant"]],
                 "cohesive_energy": [res["cohesive_energy"]], "c11": [c[0, 0]], "c12": [c[0, 1]], "c44": [c[3, 3]]}
        return np.concatenate([np.asarray(parts[q], dtype=float) for q in self.fim_quantities])


# ---------------------------------------------------------------------- embedded backend
def embedded_elastic(pot, element, lattice_type, lattice_param, deformation_mag):
    """Elastic constants in process (see the module docstring).

    Returns
    -------
    dict
        ``lattice_constant`` (Å), ``energy_per_atom`` (eV), ``isolated_atom_energy`` (eV),
        ``elastic_constants`` (6x6, GPa, unsymmetrised).
    """
    from ase.units import GPa

    a0 = relax_lattice(pot, element, lattice_type, lattice_param)
    ref = relax_positions(pot, cubic_cell(element, lattice_type, a0), maxiter=LATTICE_MAXITER,
                          fmax_tol=LATTICE_FMAX)
    energy = pot.compute(ref, energy=True)["energy"] / len(ref)
    c = strain_stress(pot, ref, deformation_mag) / GPa
    return {"lattice_constant": a0, "energy_per_atom": energy,
            "isolated_atom_energy": isolated_atom_energy(pot, element), "elastic_constants": c}
