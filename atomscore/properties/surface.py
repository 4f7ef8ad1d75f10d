"""Surface energy of a crystal facet, given its Miller indices.

A periodic slab is cut from the zero-stress crystal with ``ase.build.surface`` (Miller
indices of the conventional cubic cell, or of the hexagonal cell for hcp/wurtzite),
``layers`` repeats of the surface unit thick, with ``vacuum`` Å of vacuum on each side.
``γ = (E_slab − N · e_bulk) / (2 A)`` with A the slab's in-plane area; the relaxed value
relaxes the atoms at fixed cell to 1e-5 eV/Å. The relaxation starts from the bulk-truncated
surface and keeps its symmetry: reconstructions (Si(100) dimers) are not searched for.
"""

from __future__ import annotations

import numpy as np

from atomscore.errors import InputError
from atomscore.properties.base import TargetProperty
from atomscore.properties.common import HEXAGONAL, bulk_cell, energy, relax_positions
from atomscore.validation import check_positive


def _miller(value):
    if not isinstance(value, (list, tuple)) or len(value) != 3 or \
            not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value) or \
            not any(value):
        raise InputError(f"miller: expected three integers, not all zero, e.g. [1, 1, 0], got {value!r}")
    return tuple(int(v) for v in value)


class SurfaceEnergy(TargetProperty):
    """Energy per area of a bulk-truncated surface, relaxed and unrelaxed.

    Parameters
    ----------
    lattice_param, lattice_type, elements, c_over_a, simulator_path, timeout
        See :class:`~atomscore.properties.base.TargetProperty`.
    miller : 3 ints
        Miller indices of the facet (default (1, 0, 0)).
    layers : int
        Repeats of the surface unit along the normal (default 8; see docs/properties.md for
        what each facet needs).
    vacuum : float
        Vacuum on each side, Å (default 10; beyond the cutoff of every installed model we test).
    fim_quantities : sequence of str, optional
        Default ``('surface_energy',)``.

    ``calculate_property`` returns ``surface_energy`` (relaxed) and
    ``unrelaxed_surface_energy`` (eV/Å²; × 16.0218 for J/m²), ``area`` (Å²), ``n_atoms``.
    """

    target_property_type = "SurfaceEnergy"
    quantity_units = {"surface_energy": "eV/A^2", "unrelaxed_surface_energy": "eV/A^2", "area": "A^2",
                      "n_atoms": "1"}
    default_fim_quantities = ("surface_energy",)
    has_lammps = True

    def __init__(self, lattice_param, lattice_type, elements, miller=(1, 0, 0), layers=8, vacuum=10.0,
                 c_over_a=None, simulator_path=None, timeout=None, fim_quantities=None):
        super().__init__(lattice_param, lattice_type, elements, c_over_a, simulator_path, timeout, fim_quantities)
        self.miller = _miller(miller)
        if not isinstance(layers, (int, np.integer)) or isinstance(layers, bool) or layers < 2:
            raise InputError(f"layers: expected an integer >= 2, got {layers!r}")
        self.layers = int(layers)
        self.vacuum = check_positive(vacuum, "vacuum", allow_array=False)
        self._init_args.update(miller=list(self.miller), layers=self.layers, vacuum=vacuum)

    def slab(self, a, c):
        """The unrelaxed slab cut from the crystal with lattice constants ``a``, ``c`` (Å)."""
        from ase.build import surface

        cell = bulk_cell(self.elements, self.lattice_type, a, c, cubic=self.lattice_type not in HEXAGONAL)
        slab = surface(cell, self.miller, self.layers, vacuum=self.vacuum, periodic=True)
        return slab

    @staticmethod
    def area(slab):
        return float(np.linalg.norm(np.cross(slab.cell[0], slab.cell[1])))

    def _evaluate(self, pot, for_vector=False):
        a, c, prim = self.relaxed_bulk(pot)
        e_bulk = energy(pot, prim)
        slab = self.slab(a, c)
        area, n = self.area(slab), len(slab)
        reference = n * e_bulk / len(prim)
        unrelaxed = energy(pot, slab)
        relaxed = relax_positions(pot, slab)
        e_relaxed = energy(pot, relaxed)
        values = {"surface_energy": (e_relaxed - reference) / (2 * area),
                  "unrelaxed_surface_energy": (unrelaxed - reference) / (2 * area), "area": area, "n_atoms": n}
        return values, [("bulk", prim, e_bulk), ("slab", relaxed, e_relaxed)]

    def _evaluate_lammps(self, pot):
        from atomscore.properties.lammps import lammps_surface

        return lammps_surface(self, pot)
