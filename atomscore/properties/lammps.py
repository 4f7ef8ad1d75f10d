"""LAMMPS backend of the elastic-constant target property.

LAMMPS (the ``lmp`` executable, built with its KIM package) computes the equilibrium
lattice constant, the cohesive energy and the relaxed 6x6 elastic matrix of a cubic
crystal described by an OpenKIM model. Perturbed model parameters are set inside the
input deck with ``kim param set``: no model is ever written, compiled or installed per
perturbation. Every run happens in its own temporary folder, removed afterwards.

The input deck is generated from numbers only (model id, species, lattice, strain,
parameter values); no user text is interpolated into it unchecked.
"""

from __future__ import annotations

import functools
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from atomscore.errors import InputError, PotentialError
from atomscore.properties.common import HEXAGONAL, bulk_cell, double_parameters
from atomscore.validation import check_executable_allowed

#: LAMMPS ``lattice`` style of each supported lattice type
LAMMPS_LATTICES = {"diamond": "diamond", "fcc": "fcc", "bcc": "bcc", "sc": "sc"}

#: 1 bar in GPa (LAMMPS ``metal`` units report pressure in bar)
BAR_TO_GPA = 1.0e-4

#: Voigt order of strains and stresses: xx, yy, zz, yz, xz, xy
VOIGT = ("xx", "yy", "zz", "yz", "xz", "xy")

_KIM_ID = re.compile(r"^[A-Za-z0-9_\-.]+$")
_SPECIES = re.compile(r"^[A-Z][a-z]?$")
_PARAM = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")
_DEBIAN = ["lammps", "libkim-api-dev", "openkim-models"]
_LOG_TAIL_LINES = 40


@functools.lru_cache(maxsize=8)
def _check_executable(path: str) -> str:
    resolved = shutil.which(path) if os.sep not in path else (path if os.access(path, os.X_OK) else None)
    if resolved is None or not Path(resolved).is_file():
        raise InputError(
            f"simulator_path: expected a LAMMPS executable built with the KIM package, "
            f"got {path!r}, which is not an executable file (Debian: apt-get install {' '.join(_DEBIAN)})")
    try:
        out = subprocess.run([resolved, "-h"], capture_output=True, text=True, timeout=60,
                             stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise InputError(f"simulator_path: cannot run {resolved!r} -h: {exc}") from None
    text = out.stdout + out.stderr
    match = re.search(r"Installed packages:\s*\n(.*?)\n\s*\n\s*\n?List of", text, re.S)
    packages = set((match.group(1) if match else text).split())
    if "Large-scale Atomic/Molecular Massively Parallel Simulator" not in text and "LAMMPS" not in text:
        raise InputError(f"simulator_path: {resolved!r} does not look like LAMMPS ('-h' does not name it)")
    if "KIM" not in packages:
        raise InputError(
            f"simulator_path: {resolved!r} is LAMMPS without the KIM package (installed packages: "
            f"{' '.join(sorted(packages)) or 'none listed'}); rebuild it with -D PKG_KIM=on "
            f"or use the Debian package: apt-get install {' '.join(_DEBIAN)}")
    return resolved


def check_lammps(simulator_path) -> str:
    """Return the resolved path of a LAMMPS executable that has the KIM package.

    Parameters
    ----------
    simulator_path : str or os.PathLike
        ``lmp`` executable (a name on ``PATH`` or a path).

    Raises
    ------
    InputError
        If it is missing, not executable, not LAMMPS, or LAMMPS without the KIM package.
    """
    if not isinstance(simulator_path, (str, os.PathLike)) or not str(simulator_path).strip():
        raise InputError(f"simulator_path: expected the path of the LAMMPS executable, got {simulator_path!r}")
    check_executable_allowed(simulator_path, "simulator_path")  # before running it, even with -h
    return _check_executable(str(simulator_path))


def _fmt(x) -> str:
    """A float in full precision for the deck (``repr`` round-trips exactly)."""
    x = float(x)
    if not math.isfinite(x):
        raise InputError(f"expected a finite number for the LAMMPS deck, got {x!r}")
    return repr(x)


def _param_lines(parameters) -> list[str]:
    lines = []
    for name, values in (parameters or {}).items():
        if not _PARAM.match(str(name)):
            raise InputError(f"parameters: {name!r} is not a KIM parameter name")
        vals = np.atleast_1d(np.asarray(values, dtype=float)).ravel()
        if vals.size == 0:
            continue
        index = "1" if vals.size == 1 else f"1:{vals.size}"
        lines.append(f"kim param set {name} {index} " + " ".join(_fmt(v) for v in vals))
    return lines


def _setup(kim_id, species, mass, params):
    """Deck lines before and after the box is made; ``species``/``mass`` one or a list of each."""
    species = [species] if isinstance(species, str) else list(species)
    masses = np.atleast_1d(mass)
    return [
        f"kim init {kim_id} metal",
        "boundary p p p",
        "atom_modify map array",
    ], [
        *[f"mass {i + 1} {_fmt(m)}" for i, m in enumerate(masses)],
        f"kim interactions {' '.join(species)}",
        *params,
    ]


def build_deck(kim_id, species, lattice_type, lattice_param, deformation_mag, parameters=None,
               etol=0.0, ftol=1e-12):
    """Write the LAMMPS input deck (a string) that computes the elastic constants.

    The deck (1) relaxes the cubic cell isotropically and the atoms, prints the lattice
    constant and the energy per atom and writes the relaxed cell; (2) for each of the six
    Voigt strains, applied as +/- ``deformation_mag`` (engineering shear strain for
    yz/xz/xy) to the relaxed cell, relaxes the atoms at fixed cell and prints the pressure
    tensor; (3) prints the energy of one isolated atom.

    Parameters
    ----------
    kim_id : str
        OpenKIM model id.
    species : str
        Chemical symbol of the (single) species.
    lattice_type : str
        One of :data:`LAMMPS_LATTICES`.
    lattice_param : float
        Starting lattice constant, Å.
    deformation_mag : float
        Strain magnitude of the finite differences (dimensionless).
    parameters : dict, optional
        ``{name: values}`` set with ``kim param set`` after ``kim interactions``.
    """
    from ase.data import atomic_masses, atomic_numbers

    if not _KIM_ID.match(str(kim_id)):
        raise InputError(f"kim_id: {kim_id!r} is not an OpenKIM model id")
    if not _SPECIES.match(str(species)) or species not in atomic_numbers:
        raise InputError(f"elements: {species!r} is not a chemical symbol")
    mass = float(atomic_masses[atomic_numbers[species]])
    params = _param_lines(parameters)
    head, tail = _setup(kim_id, species, mass, params)
    minimize = f"minimize {_fmt(etol)} {_fmt(ftol)} 100000 1000000"
    thermo = ["thermo_style custom step pe press pxx pyy pzz pyz pxz pxy lx",
              "thermo_modify format float %.17g"]
    d = float(deformation_mag)
    lines = [
        "# atomscore: elastic constants with kim param set (generated)",
        *head,
        f"lattice {LAMMPS_LATTICES[lattice_type]} {_fmt(lattice_param)}",
        "region cell prism 0 1 0 1 0 1 0 0 0 units lattice",
        "create_box 1 cell",
        "create_atoms 1 box",
        *tail,
        *thermo,
        "min_modify line quadratic",
        "fix relax all box/relax iso 0.0 vmax 0.001",
        minimize,
        "unfix relax",
        minimize,
        "run 0",
        'print "ATOMSCORE_EQ $(lx:%.17g) $(pe/atoms:%.17g) $(press:%.17g) $(atoms)"',
        "write_data relaxed.data",
    ]
    length = {"xx": "lx", "yy": "ly", "zz": "lz", "yz": "lz", "xz": "lz", "xy": "ly"}
    for j, comp in enumerate(VOIGT):
        for sign in (1, -1):
            strain = _fmt(sign * d)
            if comp[0] == comp[1]:
                change = f"change_box all {comp[0]} delta 0 $({strain}*{length[comp]}) remap units box"
            else:
                change = f"change_box all {comp} delta $({strain}*{length[comp]}) remap units box"
            lines += [
                "clear",
                *head,
                "read_data relaxed.data",
                *tail,
                change,
                *thermo,
                "min_modify line quadratic",
                minimize,
                "run 0",
                f'print "ATOMSCORE_STRAIN {j} {sign} $(pxx:%.17g) $(pyy:%.17g) $(pzz:%.17g) '
                f'$(pyz:%.17g) $(pxz:%.17g) $(pxy:%.17g)"',
            ]
    lines += [
        "clear",
        *head,
        "region big block -20 20 -20 20 -20 20 units box",
        "create_box 1 big",
        "create_atoms 1 single 0.0 0.0 0.0 units box",
        *tail,
        *thermo,
        "run 0",
        'print "ATOMSCORE_ATOM $(pe:%.17g)"',
    ]
    return "\n".join(lines) + "\n"


def run_lammps(lmp, deck, workdir, timeout=None) -> str:
    """Run ``lmp`` on ``deck`` inside ``workdir``; return the log text.

    Raises
    ------
    PotentialError
        If LAMMPS exits with an error or times out; the message carries the tail of its log.
    """
    workdir = Path(workdir)
    (workdir / "in.elastic").write_text(deck)
    # An MPI build of lmp started without mpirun is an Open MPI "singleton", which by
    # default launches a helper daemon; that launch fails now and then on a busy machine.
    # Isolated singletons need no daemon. A failed MPI start is retried (nothing ran yet).
    env = dict(os.environ)
    env.setdefault("OMPI_MCA_ess_singleton_isolated", "1")
    for attempt in range(3):
        try:
            proc = subprocess.run([lmp, "-in", "in.elastic", "-log", "log.lammps", "-screen", "none",
                                   "-nocite"], cwd=workdir, capture_output=True, text=True,
                                  timeout=timeout, stdin=subprocess.DEVNULL, env=env)
            code = proc.returncode
            extra = (proc.stdout + proc.stderr).strip()
        except subprocess.TimeoutExpired:
            code, extra = "timeout", f"LAMMPS did not finish within {timeout} s"
        if code == 0 or not re.search(r"MPI_INIT|MPI_Init", extra):
            break
    log = workdir / "log.lammps"
    text = log.read_text(errors="replace") if log.exists() else ""
    failed = code != 0 or re.search(r"^ERROR", text, re.M)
    if failed:
        tail = "\n".join((text.strip().splitlines() + extra.splitlines())[-_LOG_TAIL_LINES:])
        raise PotentialError(f"LAMMPS ({lmp}) failed (exit {code}) in {workdir}; log tail:\n{tail}")
    return text


#: one number as LAMMPS prints it with ``%.17g`` (sign, digits, exponent; nan/inf refused later)
_NUMBER = r"([-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)\w*)"


def _float(text, what):
    """``text`` as a finite float, or a PotentialError naming ``what``."""
    try:
        value = float(text)
    except ValueError:
        raise PotentialError(f"LAMMPS printed {text!r} for {what}; expected a number") from None
    if not math.isfinite(value):
        raise PotentialError(f"LAMMPS printed {text!r} for {what}; expected a finite number")
    return value


def parse_log(text, deformation_mag):
    """Read the ``ATOMSCORE_*`` lines of a log; return (a0, energy_per_atom, e_atom, C in GPa)."""
    num = _NUMBER
    eq = re.findall(rf"^ATOMSCORE_EQ {num} {num} {num} {num}\s*$", text, re.M | re.I)
    atom = re.findall(rf"^ATOMSCORE_ATOM {num}\s*$", text, re.M | re.I)
    strains = re.findall(rf"^ATOMSCORE_STRAIN (\d) (-?1) " + " ".join([num] * 6) + r"\s*$", text, re.M | re.I)
    if len(eq) != 1 or len(atom) != 1 or len(strains) != 12:
        tail = "\n".join(text.strip().splitlines()[-_LOG_TAIL_LINES:])
        raise PotentialError(f"LAMMPS log is missing results ({len(strains)} of 12 strains); log tail:\n{tail}")
    a0 = _float(eq[0][0], "the lattice constant")
    e_per_atom = _float(eq[0][1], "the energy per atom")
    press = np.zeros((6, 2, 6))
    for j, sign, *vals in strains:
        press[int(j), 0 if sign == "1" else 1] = [_float(v, f"the pressure of strain {j}") for v in vals]
    # stress = -pressure; C[:, j] = d sigma / d strain_j (central difference), bar -> GPa
    c = -(press[:, 0, :] - press[:, 1, :]).T / (2.0 * deformation_mag) * BAR_TO_GPA
    # findall with one group gives strings: the whole number, not its first character
    e_atom = _float(atom[0], "the isolated-atom energy")
    return a0, e_per_atom, e_atom, c


def lammps_elastic(lmp, kim_id, species, lattice_type, lattice_param, deformation_mag,
                   parameters=None, timeout=None):
    """Elastic constants of a cubic crystal through LAMMPS and ``kim param set``.

    Parameters
    ----------
    lmp : str
        LAMMPS executable (checked with :func:`check_lammps`).
    kim_id : str
        OpenKIM model id, installed where LAMMPS's KIM API finds it.
    species : str
        Chemical symbol.
    lattice_type : {'diamond', 'fcc', 'bcc', 'sc'}
        Crystal structure.
    lattice_param : float
        Starting lattice constant, Å.
    deformation_mag : float
        Strain of the central finite differences.
    parameters : dict, optional
        Model parameter values ``{name: list of values}`` set with ``kim param set``.
    timeout : float, optional
        Seconds before the run is killed.

    Returns
    -------
    dict
        ``lattice_constant`` (Å), ``energy_per_atom`` (eV), ``isolated_atom_energy`` (eV),
        ``elastic_constants`` (6x6, GPa, unsymmetrised).
    """
    lmp = check_lammps(lmp)
    deck = build_deck(kim_id, species, lattice_type, lattice_param, deformation_mag, parameters)
    with tempfile.TemporaryDirectory(prefix="atomscore-lammps-") as tmp:
        text = run_lammps(lmp, deck, tmp, timeout=timeout)
    a0, e, e_atom, c = parse_log(text, deformation_mag)
    return {"lattice_constant": a0, "energy_per_atom": e, "isolated_atom_energy": e_atom,
            "elastic_constants": c}


# ---------------------------------------------------------------------- any structure
#: how each structure of :func:`lammps_runs` is relaxed: not at all, atoms at fixed box, or
#: atoms and box to zero pressure (isotropic or per axis)
RELAX_MODES = ("none", "positions", "iso", "aniso")


def lammps_runs(lmp, kim_id, species, structures, parameters=None, timeout=None, ftol=1e-10):
    """Energies and cells of ASE structures relaxed by LAMMPS ``minimize`` with a KIM model.

    Parameters
    ----------
    lmp, kim_id : str
        LAMMPS executable and OpenKIM model id.
    species : list of str
        Chemical symbols, in LAMMPS type order.
    structures : list of (ase.Atoms, str, list of int)
        Each structure, its relax mode (see :data:`RELAX_MODES`) and the indices of atoms
        held fixed (``fix setforce 0 0 0``).
    parameters : dict, optional
        Model parameters set with ``kim param set``.
    ftol : float
        ``minimize`` force tolerance, eV/Å.

    Returns
    -------
    list of dict
        Per structure: ``energy`` (eV), ``volume`` (Å³), ``lx``, ``ly``, ``lz`` (Å),
        ``pressure`` (GPa), ``atoms`` (count).
    """
    from ase.data import atomic_masses, atomic_numbers
    from ase.io import write

    lmp = check_lammps(lmp)
    if not _KIM_ID.match(str(kim_id)):
        raise InputError(f"kim_id: {kim_id!r} is not an OpenKIM model id")
    for sp in species:
        if not _SPECIES.match(str(sp)) or sp not in atomic_numbers:
            raise InputError(f"elements: {sp!r} is not a chemical symbol")
    masses = [float(atomic_masses[atomic_numbers[sp]]) for sp in species]
    head, tail = _setup(kim_id, species, masses, _param_lines(parameters))
    minimize = f"minimize 0.0 {_fmt(ftol)} 100000 1000000"
    lines = ["# atomscore: relaxations with kim param set (generated)"]
    with tempfile.TemporaryDirectory(prefix="atomscore-lammps-") as tmp:
        for i, (atoms, mode, fixed) in enumerate(structures):
            if mode not in RELAX_MODES:
                raise InputError(f"relax mode {mode!r}; expected one of {RELAX_MODES}")
            skew = bool(np.any(np.abs(atoms.cell.cellpar()[3:] - 90.0) > 1e-9))
            # reduce_cell: the same lattice with tilts LAMMPS accepts (at most half a box length)
            write(Path(tmp) / f"s{i}.data", atoms, format="lammps-data", specorder=list(species),
                  force_skew=skew, reduce_cell=skew)
            lines += ["clear", *head, f"read_data s{i}.data", *tail,
                      "thermo_style custom step pe press vol lx ly lz", "thermo_modify format float %.17g"]
            if fixed:
                lines += [f"group held id {' '.join(str(int(k) + 1) for k in fixed)}",
                          "fix hold held setforce 0.0 0.0 0.0"]
            if mode in ("iso", "aniso"):
                lines += ["min_modify line quadratic", f"fix relax all box/relax {mode} 0.0 vmax 0.001",
                          minimize, "unfix relax"]
            if mode != "none":
                lines += ["min_modify line quadratic", minimize]
            lines += ["run 0", f'print "ATOMSCORE_RUN {i} $(pe:%.17g) $(vol:%.17g) $(lx:%.17g) $(ly:%.17g) '
                               f'$(lz:%.17g) $(press:%.17g) $(atoms)"']
        text = run_lammps(lmp, "\n".join(lines) + "\n", tmp, timeout=timeout)
    num = _NUMBER
    rows = re.findall(rf"^ATOMSCORE_RUN (\d+) " + " ".join([num] * 6) + r" (\d+)\s*$", text, re.M | re.I)
    if len(rows) != len(structures):
        tail_text = "\n".join(text.strip().splitlines()[-_LOG_TAIL_LINES:])
        raise PotentialError(f"LAMMPS log has {len(rows)} of {len(structures)} results; log tail:\n{tail_text}")
    out = []
    for row in rows:
        e, v, lx, ly, lz, p = (_float(x, "a result") for x in row[1:7])
        out.append({"energy": e, "volume": v, "lx": lx, "ly": ly, "lz": lz, "pressure": p * BAR_TO_GPA,
                    "atoms": int(row[7])})
    return out


def _runs(prop, pot, structures):
    return lammps_runs(prop.simulator_path, pot.kim_id, prop.elements, structures,
                       parameters=double_parameters(pot), timeout=prop.timeout)


def lammps_bulk(prop, pot):
    """Zero-pressure crystal of a target property through LAMMPS (its conventional cell).

    Returns ``a``, ``c`` (Å, None unless hexagonal), ``energy_per_atom`` (eV) and
    ``isolated_atom_energy`` (eV, mean over the crystal's atoms).
    """
    from ase import Atoms

    hexagonal = prop.lattice_type in HEXAGONAL
    c0 = None
    if hexagonal:
        c0 = prop.lattice_param * (prop.c_over_a or np.sqrt(8.0 / 3.0))
    conv = bulk_cell(prop.elements, prop.lattice_type, prop.lattice_param, c0, cubic=True)
    singles = [Atoms(el, positions=[[0.0, 0.0, 0.0]], cell=[40.0] * 3, pbc=True) for el in prop.elements]
    res = _runs(prop, pot, [(conv, "aniso" if hexagonal else "iso", [])] + [(s, "none", []) for s in singles])
    cell0 = conv.cell.lengths()
    a = res[0]["lx"] / cell0[0] * prop.lattice_param
    c = res[0]["lz"] / cell0[2] * c0 if hexagonal else None
    iso = {el: r["energy"] for el, r in zip(prop.elements, res[1:])}
    symbols = conv.get_chemical_symbols()
    return {"a": a, "c": c, "energy_per_atom": res[0]["energy"] / res[0]["atoms"],
            "isolated_atom_energy": float(np.mean([iso[s] for s in symbols]))}


def lammps_vacancy(prop, pot):
    """Vacancy formation energies through LAMMPS; the relaxation volume from a box relaxation.

    ``relaxation_volume`` = V(vacancy cell relaxed to zero pressure) − V(perfect cell), box
    relaxed isotropically (per axis for hexagonal crystals).
    """
    bulk = lammps_bulk(prop, pot)
    perfect = bulk_cell(prop.elements, prop.lattice_type, bulk["a"], bulk["c"], cubic=True).repeat(prop.supercell)
    vac = perfect.copy()
    del vac[0]
    box = "aniso" if prop.lattice_type in HEXAGONAL else "iso"
    r_perf, r_unrel, r_rel, r_box = _runs(prop, pot, [(perfect, "positions", []), (vac, "none", []),
                                                      (vac, "positions", []), (vac, box, [])])
    n = r_perf["atoms"]
    ref = (n - 1) / n * r_perf["energy"]
    omega = r_box["volume"] - r_perf["volume"]
    return {"unrelaxed_formation_energy": r_unrel["energy"] - ref, "relaxed_formation_energy": r_rel["energy"] - ref,
            "relaxation_volume": omega, "relaxation_volume_per_atom_volume": omega / (r_perf["volume"] / n),
            "n_atoms": n}


def lammps_surface(prop, pot):
    """Surface energies (eV/Å²) of a target property's slab through LAMMPS."""
    bulk = lammps_bulk(prop, pot)
    slab = prop.slab(bulk["a"], bulk["c"])
    r_unrel, r_rel = _runs(prop, pot, [(slab, "none", []), (slab, "positions", [])])
    area = prop.area(slab)
    ref = len(slab) * bulk["energy_per_atom"]
    return {"surface_energy": (r_rel["energy"] - ref) / (2 * area),
            "unrelaxed_surface_energy": (r_unrel["energy"] - ref) / (2 * area), "area": area, "n_atoms": len(slab)}
