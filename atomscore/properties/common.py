"""The lowest module of the target properties: the crystal, the relaxations, strains and
stresses, and the spec form every target property shares.

It imports no other module of :mod:`atomscore.properties`; the LAMMPS backend
(:mod:`~atomscore.properties.lammps`) sits above it and the property classes above both.
"""

from __future__ import annotations

import numpy as np

from atomscore.errors import InputError, PotentialError

#: ``ase.build.bulk`` crystal structures we relax, and how many species each holds
LATTICE_SPECIES = {"sc": 1, "fcc": 1, "bcc": 1, "diamond": 1, "hcp": 1, "rocksalt": 2,
                   "zincblende": 2, "cesiumchloride": 2, "fluorite": 2, "wurtzite": 2}
#: structures with an independent c axis (a and c are relaxed; the rest have one length)
HEXAGONAL = ("hcp", "wurtzite")


def check_elements(elements, lattice_type):
    """``elements`` as a list of chemical symbols of the length the structure needs."""
    need = LATTICE_SPECIES[lattice_type]
    if isinstance(elements, str):
        elements = [elements]
    if not isinstance(elements, (list, tuple)) or len(elements) != need or \
            not all(isinstance(e, str) for e in elements):
        raise InputError(f"elements: a {lattice_type} crystal holds {need} species; expected a list of "
                         f"{need} chemical symbol(s), e.g. {['W'] if need == 1 else ['Na', 'Cl']}, got {elements!r}")
    from ase.data import atomic_numbers

    for e in elements:
        if e not in atomic_numbers:
            raise InputError(f"elements: {e!r} is not a chemical symbol")
    return list(elements)


def bulk_cell(elements, lattice_type, a, c=None, cubic=False, orthorhombic=False):
    """The crystal from ``ase.build.bulk`` (primitive, or its cubic/orthorhombic cell)."""
    from ase.build import bulk

    name = "".join(elements)
    kw = {"a": a}
    if lattice_type in HEXAGONAL:
        kw["c"] = c
        if lattice_type == "wurtzite":
            kw["u"] = 0.375
        kw["orthorhombic"] = orthorhombic or cubic
    elif lattice_type != "sc":
        kw["cubic"] = cubic or orthorhombic
    return bulk(name, lattice_type, **kw)


def cubic_cell(element, lattice_type, a):
    """The conventional cubic cell of a one-species crystal (``ase.build.bulk``; sc: its one atom)."""
    from ase.build import bulk

    if lattice_type == "sc":
        return bulk(element, "sc", a=a)
    return bulk(element, lattice_type, a=a, cubic=True)


#: max force component (eV/Å) of a relaxation: cells of a few atoms reach 1e-10, but in cells
#: of hundreds of atoms the energy's round-off (1e-13 eV) stalls line searches near 1e-6;
#: 1e-5 leaves an energy error ~f²/k below 1e-10 eV
RELAX_FMAX = 1e-5
#: what :func:`relax_lattice` relaxes to (and at most how many L-BFGS steps): the
#: elastic constants' original settings, kept by every lattice relaxation
LATTICE_FMAX = 1e-6
LATTICE_MAXITER = 2000


def relax_positions(pot, atoms, gtol=1e-10, maxiter=5000, fmax_tol=None):
    """Relax the atoms at fixed cell (L-BFGS on the energy, scipy) to a max force component
    of ``fmax_tol`` eV/Å (default :data:`RELAX_FMAX`, read at call time); return a relaxed copy."""
    if fmax_tol is None:
        fmax_tol = RELAX_FMAX
    from scipy.optimize import minimize

    atoms = atoms.copy()
    x0 = atoms.get_positions().ravel()
    first = pot.compute(atoms, energy=True, forces=True)
    if np.max(np.abs(first["forces"])) < gtol:
        return atoms

    def fun(x):
        atoms.set_positions(x.reshape(-1, 3))
        r = pot.compute(atoms, energy=True, forces=True)
        return r["energy"], -r["forces"].ravel()

    # L-BFGS from scipy: a well-kept optimiser with analytic gradients (no ASE optimiser
    # reaches forces of 1e-10 eV/Å as reliably on a few atoms)
    for _ in range(4):  # a restart (fresh curvature memory) gets past a line search stalled by
        # the energy's round-off in cells of a few hundred atoms
        res = minimize(fun, x0, jac=True, method="L-BFGS-B",
                       options={"gtol": gtol, "ftol": 0.0, "maxiter": maxiter, "maxcor": 30})
        atoms.set_positions(res.x.reshape(-1, 3))
        fmax = np.max(np.abs(pot.compute(atoms, energy=False, forces=True)["forces"]))
        if fmax <= fmax_tol:
            break
        x0 = res.x
    if fmax > fmax_tol:
        # a line search needs forces that are the energy's exact gradient; some tabulated
        # models' are not to ~1e-3 eV/Å, so the last stretch goes by forces only (ASE's FIRE)
        from ase.optimize import FIRE

        atoms.calc = fixed_parameter_calculator(pot)
        FIRE(atoms, logfile=None, maxstep=0.01).run(fmax=fmax_tol, steps=20 * maxiter)
        atoms.calc = None
        fmax = np.max(np.abs(pot.compute(atoms, energy=False, forces=True)["forces"]))
    if fmax > fmax_tol:
        raise PotentialError(f"internal relaxation did not converge: max force {fmax:.3g} eV/Å "
                             f"({res.message})")
    return atoms


def pressure(pot, atoms):
    """Pressure (eV/Å³), minus the mean normal stress."""
    return -float(np.mean(stress(pot, atoms)[:3]))


def stress(pot, atoms):
    # forces are requested with the stress: some KIM models (EAM) give the virial only
    # from the force pass, and a stress-only request returns zeros
    return pot.compute(atoms, energy=False, forces=True, stress=True)["stress"]


def relax_lattice(pot, element, lattice_type, a_guess, make=None):
    """Equilibrium lattice constant (Å) at zero pressure, with relaxed atoms.

    ``make(a)`` builds the crystal at lattice constant ``a`` (default: the conventional
    cubic cell of ``element``).
    """
    from scipy.optimize import brentq

    if make is None:
        def make(a):
            return cubic_cell(element, lattice_type, a)

    def press(a):
        atoms = relax_positions(pot, make(a), maxiter=LATTICE_MAXITER, fmax_tol=LATTICE_FMAX)
        return pressure(pot, atoms)

    lo, hi = a_guess * 0.98, a_guess * 1.02
    plo, phi = press(lo), press(hi)
    for _ in range(20):  # widen until the pressure changes sign
        if plo > 0 > phi:
            break
        if plo <= 0:
            lo, hi, phi = lo * 0.95, lo, plo
            plo = press(lo)
        else:
            lo, hi, plo = hi, hi * 1.05, phi
            phi = press(hi)
    else:
        raise PotentialError(f"no zero-pressure {lattice_type} lattice found near a = {a_guess} Å")
    # brentq (scipy): bracketed root of p(a), to machine precision
    return brentq(press, lo, hi, xtol=1e-13, rtol=4 * np.finfo(float).eps)


def strain_stress(pot, atoms, deformation_mag, columns=range(6), states=None):
    """Relaxed-ion elastic constants ``C[:, j]`` (eV/Å³) for the Voigt strains ``columns``.

    Each strain is applied as ±``deformation_mag`` (engineering shear for yz, xz, xy), the
    atoms are relaxed at fixed cell, and ``C[:, j] = (σ(+) − σ(−)) / (2 deformation_mag)``.
    The relaxed strained cells are appended to ``states`` (a list) when one is given.
    """
    pairs = [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]
    c = np.zeros((6, 6))
    for j in columns:
        k, l = pairs[j]
        sig = []
        for sign in (1.0, -1.0):
            eps = np.zeros((3, 3))
            if k == l:
                eps[k, k] = sign * deformation_mag
            else:  # engineering shear strain gamma = 2 eps_kl
                eps[k, l] = eps[l, k] = 0.5 * sign * deformation_mag
            strained = atoms.copy()
            strained.set_cell(atoms.get_cell() @ (np.eye(3) + eps).T, scale_atoms=True)
            strained = relax_positions(pot, strained)
            sig.append(stress(pot, strained))
            if states is not None:
                states.append((f"strain {j} {sign:+.0f}", strained, energy(pot, strained)))
        c[:, j] = (sig[0] - sig[1]) / (2.0 * deformation_mag)
    return c


def reuss_bulk_modulus(c):
    """Bulk modulus under uniform pressure, ``1 / Σ_{i,j<3} S_ij`` (S = C⁻¹ of the normal block)."""
    return float(1.0 / np.sum(np.linalg.inv(np.asarray(c)[:3, :3])))


def isolated_atom_energy(pot, element):
    """Energy (eV) of one atom alone in a 40 Å box."""
    from ase import Atoms

    atom = Atoms(element, positions=[[0.0, 0.0, 0.0]], cell=[40.0] * 3, pbc=False)
    return float(pot.compute(atom, energy=True)["energy"])


def energy(pot, atoms):
    return float(pot.compute(atoms, energy=True)["energy"])


def fixed_parameter_calculator(pot):
    """An ASE calculator on ``pot`` for a run during which its parameters do not change.

    :meth:`KIMPotential.get_calculator` compares every parameter value at every call (to
    notice changes made in place), which costs ~0.15 s per call for a tabulated EAM model
    (6000 values); a NEB's thousands of calls at fixed parameters do not need that.
    """
    from ase.calculators.calculator import Calculator, all_changes

    class _Fixed(Calculator):
        implemented_properties = ["energy", "free_energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            res = pot.compute(self.atoms, energy=True, forces=True)
            self.results = {"energy": res["energy"], "free_energy": res["energy"], "forces": res["forces"]}

    return _Fixed()


def double_parameters(pot):
    """Every floating-point parameter of ``pot`` at its live value (for ``kim param set``)."""
    info = pot.parameter_info()
    return {name: pot.get_parameter(name).tolist() for name, meta in info.items() if meta["dtype"] == "Double"}


def build_from_spec(cls, spec, extra_args=None):
    """``cls(**target_property_args)`` from ``{'target_property_type': ..., 'target_property_args':
    {...}}`` (or the FIM module's ``{'init_args': {...}, ...}``, or an instance, returned as is);
    ``extra_args`` join the arguments. Every refusal is an InputError naming what came."""
    if isinstance(spec, cls):
        return spec
    if isinstance(spec, dict) and "init_args" in spec:
        spec = spec["init_args"]
    if not isinstance(spec, dict):
        raise InputError(f"target property: expected a dict with 'target_property_type' and "
                         f"'target_property_args', got {type(spec).__name__}")
    ptype = spec.get("target_property_type")
    if ptype != cls.target_property_type:
        raise InputError(f"target_property_type: unknown target property {ptype!r}; expected one of: "
                         f"{cls.target_property_type!r}")
    args = spec.get("target_property_args")
    if not isinstance(args, dict):
        raise InputError(f"target_property_args: expected a dict, got {type(args).__name__}")
    try:
        return cls(**{**args, **(extra_args or {})})
    except TypeError as exc:
        raise InputError(f"target_property_args: {exc}") from None


def spec_of(prop):
    """The JSON-able spec that re-creates ``prop`` (its ``_init_args`` that are not None)."""
    args = {k: v for k, v in prop._init_args.items() if v is not None}
    return {"target_property_type": prop.target_property_type, "target_property_args": args}


class SpecForm:
    """The spec form every target property shares: built from ``target_property_args``,
    re-created from :meth:`to_spec`; ``simulator_path`` selects the LAMMPS backend."""

    target_property_type = None
    simulator_path = None

    @classmethod
    def from_spec(cls, spec):
        """Build from ``{'target_property_type': ..., 'target_property_args': {...}}`` (or the
        FIM module's list entry ``{'init_args': {...}}``, or an instance, returned as is)."""
        return build_from_spec(cls, spec)

    def to_spec(self):
        """The JSON-able dict that re-creates this target property."""
        return spec_of(self)

    @property
    def backend(self):
        """``'lammps'`` when a ``simulator_path`` was given, else ``'embedded'``."""
        return "lammps" if self.simulator_path else "embedded"
