"""Monovacancy target properties: formation energy (unrelaxed, relaxed), relaxation volume,
and migration energy (nudged elastic band, ``ase.mep.NEB``).

The supercell is the conventional cubic cell (orthorhombic for hcp) of the zero-stress
crystal, repeated ``supercell`` times; the vacancy replaces atom 0. Energies are at constant
volume (the perfect crystal's cell); atoms are relaxed to a max force of 1e-5 eV/Å. The
relaxation volume comes from the residual stress σ of the relaxed vacancy cell and the
crystal's compliance S = C⁻¹: ``Ω_rel = V · tr(−S σ)`` (the strain that brings the cell to
zero stress, linear elasticity; the LAMMPS backend instead relaxes the box). Supercell sizes,
tolerances and their convergence are in docs/properties.md.
"""

from __future__ import annotations

import numpy as np

from atomscore.errors import InputError, PotentialError
from atomscore.properties.base import TargetProperty
from atomscore.properties.common import (LATTICE_SPECIES, bulk_cell, energy, fixed_parameter_calculator,
                                         relax_positions, strain_stress, stress)
from atomscore.validation import check_positive

#: strain of the compliance used for the relaxation volume
COMPLIANCE_STRAIN = 1e-4
#: default amplitude (Å) and seed of the displacements that break the symmetry of a vacancy
#: before it is relaxed (a symmetric start can stay on a symmetric saddle: SW Si)
RATTLE = 0.02
RATTLE_SEED = 20231
#: an image this far (eV) below both end states means the end states are not minima of the hop
LOWER_STATE_TOL = 1e-3


def _supercell(value):
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (int(value),) * 3
    if not isinstance(value, (list, tuple)) or len(value) != 3 or \
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in value):
        raise InputError(f"supercell: expected a positive integer or three (repeats of the conventional "
                         f"cell), got {value!r}")
    return tuple(int(v) for v in value)


class _VacancyBase(TargetProperty):
    def __init__(self, lattice_param, lattice_type, elements, supercell, c_over_a=None, simulator_path=None,
                 timeout=None, fim_quantities=None, rattle=RATTLE):
        super().__init__(lattice_param, lattice_type, elements, c_over_a, simulator_path, timeout, fim_quantities)
        self.rattle = 0.0 if rattle in (None, 0, 0.0) else check_positive(rattle, "rattle", allow_array=False)
        if self.rattle > 0.2:
            raise InputError(f"rattle: expected a small displacement (<= 0.2 Å), got {rattle}")
        self._init_args["rattle"] = self.rattle
        if LATTICE_SPECIES[self.lattice_type] != 1:
            raise InputError(f"lattice_type: vacancy properties need one species (its chemical potential is "
                             f"the crystal's energy per atom); {self.lattice_type!r} holds two")
        self.supercell = _supercell(supercell)
        self._init_args["supercell"] = list(self.supercell)

    def shaken(self, atoms):
        """A copy of ``atoms`` with every atom moved by up to ``rattle`` Å (fixed seed)."""
        out = atoms.copy()
        rng = np.random.default_rng(RATTLE_SEED)
        out.positions += rng.uniform(-self.rattle, self.rattle, size=out.positions.shape)
        return out

    def perfect_supercell(self, pot):
        """``(a, c, prim, perfect)``: relaxed crystal and the perfect supercell built from it."""
        a, c, prim = self.relaxed_bulk(pot)
        conv = relax_positions(pot, bulk_cell(self.elements, self.lattice_type, a, c, cubic=True))
        return a, c, prim, conv.repeat(self.supercell)


class VacancyFormationEnergy(_VacancyBase):
    """Monovacancy formation energy and relaxation volume.

    Parameters
    ----------
    lattice_param, lattice_type, elements, c_over_a, simulator_path, timeout
        See :class:`~atomscore.properties.base.TargetProperty` (one species).
    supercell : int or 3 ints
        Repeats of the conventional cell (default 4: 128 atoms bcc, 256 fcc, 512 diamond).
    fim_quantities : sequence of str, optional
        Default ``('unrelaxed_formation_energy', 'relaxed_formation_energy', 'relaxation_volume')``.

    ``calculate_property`` returns ``unrelaxed_formation_energy`` and
    ``relaxed_formation_energy`` (eV, constant volume, ``E_vac − (N−1)/N · E_perfect``),
    ``relaxation_volume`` (Å³, negative when the crystal contracts),
    ``relaxation_volume_per_atom_volume`` (Ω_rel/Ω₀), ``n_atoms`` of the perfect supercell.
    """

    target_property_type = "VacancyFormationEnergy"
    quantity_units = {"unrelaxed_formation_energy": "eV", "relaxed_formation_energy": "eV",
                      "relaxation_volume": "A^3", "relaxation_volume_per_atom_volume": "1", "n_atoms": "1"}
    default_fim_quantities = ("unrelaxed_formation_energy", "relaxed_formation_energy", "relaxation_volume")
    has_lammps = True

    def __init__(self, lattice_param, lattice_type, elements, supercell=4, c_over_a=None, simulator_path=None,
                 timeout=None, fim_quantities=None, rattle=RATTLE):
        super().__init__(lattice_param, lattice_type, elements, supercell, c_over_a, simulator_path, timeout,
                         fim_quantities, rattle)

    def _evaluate(self, pot, for_vector=False):
        _, _, prim, perfect = self.perfect_supercell(pot)
        n = len(perfect)
        e_perfect = energy(pot, perfect)
        vac = perfect.copy()
        del vac[0]
        e_unrelaxed = energy(pot, vac)
        relaxed = relax_positions(pot, self.shaken(vac))
        e_relaxed = energy(pot, relaxed)
        sigma = stress(pot, relaxed) - stress(pot, perfect)  # the perfect cell's is ~0 (round-off)
        compliance = np.linalg.inv(strain_stress(pot, prim, COMPLIANCE_STRAIN))
        volume = perfect.get_volume()
        omega = float(volume * -np.sum((compliance @ sigma)[:3]))
        values = {"unrelaxed_formation_energy": e_unrelaxed - (n - 1) / n * e_perfect,
                  "relaxed_formation_energy": e_relaxed - (n - 1) / n * e_perfect,
                  "relaxation_volume": omega, "relaxation_volume_per_atom_volume": omega / (volume / n),
                  "n_atoms": n}
        return values, [("bulk", prim, energy(pot, prim)), ("vacancy", relaxed, e_relaxed)]

    def _evaluate_lammps(self, pot):
        from atomscore.properties.lammps import lammps_vacancy

        return lammps_vacancy(self, pot)


class VacancyMigrationEnergy(_VacancyBase):
    """Monovacancy migration energy by a climbing-image nudged elastic band (``ase.mep.NEB``).

    The vacancy sits at atom 0 of the supercell; the nearest neighbour with the lowest index
    jumps into it. Both end states are relaxed (max force 1e-5 eV/Å), the path is linearly
    interpolated through ``n_images`` images and relaxed by ASE's ODE NEB optimizer to ``fmax``.

    Parameters
    ----------
    lattice_param, lattice_type, elements, c_over_a, timeout
        See :class:`~atomscore.properties.base.TargetProperty` (one species).
    supercell : int or 3 ints
        Repeats of the conventional cell (default 4).
    n_images : int
        Intermediate images (default 5, odd so that a symmetric path has an image on its middle).
    fmax : float
        NEB convergence, max force perpendicular to the path (climbing image: total), eV/Å
        (default 1e-3).
    spring : float
        Spring constant, eV/Å² (default 1.0).
    max_steps : int
        Optimizer steps before the NEB is declared unconverged (default 3000).

    ``calculate_property`` returns ``migration_energy`` (eV, saddle minus initial state),
    ``reaction_energy`` (eV, final minus initial: 0 by symmetry in elemental crystals),
    ``path_energies`` (eV, each image minus the initial state), ``n_atoms``.
    """

    target_property_type = "VacancyMigrationEnergy"
    quantity_units = {"migration_energy": "eV", "reaction_energy": "eV", "path_energies": "eV", "n_atoms": "1"}
    default_fim_quantities = ("migration_energy",)

    def __init__(self, lattice_param, lattice_type, elements, supercell=4, n_images=5, fmax=1e-3, spring=1.0,
                 max_steps=3000, c_over_a=None, timeout=None, fim_quantities=None, rattle=RATTLE):
        super().__init__(lattice_param, lattice_type, elements, supercell, c_over_a, None, timeout, fim_quantities,
                         rattle)
        if not isinstance(n_images, (int, np.integer)) or isinstance(n_images, bool) or n_images < 1:
            raise InputError(f"n_images: expected a positive integer, got {n_images!r}")
        if not isinstance(max_steps, (int, np.integer)) or isinstance(max_steps, bool) or max_steps < 1:
            raise InputError(f"max_steps: expected a positive integer, got {max_steps!r}")
        self.n_images = int(n_images)
        self.max_steps = int(max_steps)
        self.fmax = check_positive(fmax, "fmax", allow_array=False)
        self.spring = check_positive(spring, "spring", allow_array=False)
        self._init_args.update(n_images=self.n_images, fmax=fmax, spring=spring, max_steps=self.max_steps)

    def end_states(self, pot):
        """``(initial, final)`` unrelaxed: the vacancy at site 0, and after the jump."""
        _, _, _, perfect = self.perfect_supercell(pot)
        d = perfect.get_distances(0, range(1, len(perfect)), mic=True)
        jumper = 1 + int(np.flatnonzero(d < d.min() * (1 + 1e-6))[0])
        site = perfect.positions[0].copy()
        initial = perfect.copy()
        del initial[0]
        final = initial.copy()
        final.positions[jumper - 1] = site
        return initial, final

    def _evaluate(self, pot, for_vector=False):
        from ase.mep import NEB
        from ase.mep.neb import NEBOptimizer

        initial, final = (relax_positions(pot, self.shaken(x)) for x in self.end_states(pot))
        images = [initial] + [initial.copy() for _ in range(self.n_images)] + [final]
        calc = fixed_parameter_calculator(pot)
        for image in images:
            image.calc = calc
        # ASE's NEB: improved tangents, a climbing image; one calculator shared, as images are
        # evaluated one after the other in this process
        neb = NEB(images, k=self.spring, climb=True, method="improvedtangent", allow_shared_calculator=True)
        neb.interpolate(mic=True)
        # ASE's ODE integrator for NEBs (Makri et al. 2019): FIRE diverges here below ~1e-2 eV/Å
        opt = NEBOptimizer(neb, method="ode", logfile=None)
        converged = opt.run(fmax=self.fmax, steps=self.max_steps)
        energies = np.array([energy(pot, im) for im in images])
        top = int(np.argmax(energies))
        low = float(np.min(energies[1:-1]) - max(energies[0], energies[-1]))
        if low < -LOWER_STATE_TOL:
            raise PotentialError(
                f"VacancyMigrationEnergy: the path passes a state {-low:.4g} eV below its end states: the "
                "relaxed lattice-site vacancy is not this model's ground state (e.g. SW silicon's split "
                "vacancy), so the hop is not one barrier between equivalent minima")
        if not converged:
            raise PotentialError(f"VacancyMigrationEnergy: the NEB did not reach fmax {self.fmax} eV/Å in "
                                 f"{self.max_steps} steps; raise max_steps or fmax")
        if top in (0, len(images) - 1):
            raise PotentialError("VacancyMigrationEnergy: the highest image is an end state; the path "
                                 "has no barrier (check the crystal and the supercell)")
        saddle = images[top].copy()
        saddle.calc = None
        values = {"migration_energy": float(energies[top] - energies[0]),
                  "reaction_energy": float(energies[-1] - energies[0]),
                  "path_energies": (energies - energies[0]).tolist(), "n_atoms": len(initial) + 1}
        states = [("initial", initial, float(energies[0])), ("saddle", saddle, float(energies[top]), self.fmax)]
        for image in images:
            image.calc = None
        return values, states
