"""Independent references computed with ASE's KIM calculator (``ase.calculators.kim``)."""

import numpy as np


def ase_lattice_constant(calc, symbol, lattice_type, bracket):
    """Zero-pressure cubic lattice constant (Å): brentq on the pressure of ASE's calculator."""
    from ase.build import bulk
    from scipy.optimize import brentq

    def pressure(a):
        atoms = bulk(symbol, lattice_type, a=a, cubic=True)
        atoms.calc = calc
        return -np.mean(atoms.get_stress()[:3])

    return brentq(pressure, *bracket, xtol=1e-13)
