"""Convergence study and cross-checks of the built-in target properties (docs/properties.md).

Prints markdown tables for ZJW EAM W and SW Si:

1. elastic constants and bulk modulus against the strain of the differences, and the bulk
   modulus of ``ase.eos`` fits against their strain span (tabulated W vs analytic SW);
2. vacancy formation energies and relaxation volume against the supercell, with LAMMPS's
   box relaxation for the relaxation volume;
3. surface energies against the slab thickness;
4. W's vacancy migration energy against the supercell, the number of images and ``fmax``;
5. relaxed vacancy formation energy against the relaxation tolerance.

Run: ``.venv/bin/python benchmarks/properties_convergence.py [--quick]`` (``--quick``: fewer sizes)
"""

from __future__ import annotations

import argparse
import shutil
import time

import numpy as np

W = "EAM_Dynamo_ZhouJohnsonWadley_2004_W__MO_524392058194_005"
SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
W_BCC = {"lattice_param": 3.16, "lattice_type": "bcc", "elements": ["W"]}
SI = {"lattice_param": 5.43, "lattice_type": "diamond", "elements": ["Si"]}


def table(header, rows):
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row) + " |", flush=True)
    print()


def strains(pots):
    from atomscore.properties import BulkModulus, CrystalElasticConstants
    from atomscore.properties.crystal import eos_fit

    print("### Elastic constants and bulk modulus against the strain (GPa)\n")
    rows = []
    for name, args, pot in (("W", W_BCC, pots["W"]), ("Si", SI, pots["Si"])):
        for eps in (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3):
            r = CrystalElasticConstants(units="GPa", deformation_mag=eps, spread_strains=(), **args).calculate_property(pot)
            b = BulkModulus(units="GPa", deformation_mag=eps, spread_strains=(), **args).calculate_property(pot)
            rows.append([name, f"{eps:g}", f"{r['c11']:.2f}", f"{r['c12']:.2f}", f"{r['c44']:.2f}",
                         f"{b['bulk_modulus']:.2f}"])
    table(["crystal", "strain", "C11", "C12", "C44", "B"], rows)
    print("### Bulk modulus of ase.eos (Birch-Murnaghan) fits against their span in a (GPa)\n")
    rows = []
    for name, args, pot in (("W", W_BCC, pots["W"]), ("Si", SI, pots["Si"])):
        from atomscore.properties import LatticeConstant

        a0 = LatticeConstant(**args).calculate_property(pot)["lattice_constant"]
        for span in (2e-4, 5e-4, 1e-3, 2e-3, 6e-3):
            _, b = eos_fit(pot, args["elements"], args["lattice_type"], a0, span)
            rows.append([name, f"±{span:g}", f"{b:.2f}"])
    table(["crystal", "span of a", "B (ase.eos)"], rows)


def vacancy(pots, quick, lmp):
    from atomscore.properties import VacancyFormationEnergy

    print("### Vacancy formation against the supercell\n")
    rows = []
    for name, args, pot, sizes in (("W", W_BCC, pots["W"], (2, 3, 4) if quick else (2, 3, 4, 5, 6)),
                                   ("Si", SI, pots["Si"], (2, 3) if quick else (2, 3, 4))):
        for n in sizes:
            t = time.perf_counter()
            r = VacancyFormationEnergy(supercell=n, **args).calculate_property(pot)
            dt = time.perf_counter() - t
            box = "-"
            if lmp:
                box = f"{VacancyFormationEnergy(supercell=n, simulator_path=lmp, **args).calculate_property(pot)['relaxation_volume']:.4f}"
            rows.append([name, str(n), str(r["n_atoms"]), f"{r['unrelaxed_formation_energy']:.5f}",
                         f"{r['relaxed_formation_energy']:.5f}", f"{r['relaxation_volume']:.4f}",
                         f"{r['relaxation_volume_per_atom_volume']:.4f}", box, f"{dt:.2f}"])
    table(["crystal", "supercell", "atoms", "E_f unrelaxed (eV)", "E_f relaxed (eV)", "Ω_rel (Å³)", "Ω_rel/Ω₀",
           "Ω_rel LAMMPS box (Å³)", "time (s)"], rows)


def surface(pots, quick):
    from atomscore.properties import SurfaceEnergy

    print("### Surface energy (relaxed, eV/Å²) against the slab thickness (layers = repeats of the surface cell)\n")
    rows = []
    for name, args, pot, facets in (("W", W_BCC, pots["W"], ([1, 0, 0], [1, 1, 0], [1, 1, 1])),
                                    ("Si", SI, pots["Si"], ([1, 0, 0], [1, 1, 1]))):
        for miller in facets:
            cells = []
            for layers in ((4, 8) if quick else (4, 6, 8, 12, 16)):
                r = SurfaceEnergy(miller=miller, layers=layers, **args).calculate_property(pot)
                cells.append(f"{r['surface_energy']:.6f} ({r['n_atoms']})")
            rows.append([name, str(tuple(miller)), *cells])
    layers = (4, 8) if quick else (4, 6, 8, 12, 16)
    table(["crystal", "miller", *[f"{n} layers (atoms)" for n in layers]], rows)


def migration(pots, quick):
    from atomscore.properties import VacancyMigrationEnergy

    print("### W vacancy migration energy (eV)\n")
    rows = []
    settings = [(3, 5, 1e-3), (4, 5, 1e-3)] + ([] if quick else [(5, 5, 1e-3), (4, 3, 1e-3), (4, 7, 1e-3),
                                                                 (4, 5, 1e-2), (4, 5, 1e-4)])
    for n, images, fmax in settings:
        t = time.perf_counter()
        r = VacancyMigrationEnergy(supercell=n, n_images=images, fmax=fmax, **W_BCC).calculate_property(pots["W"])
        mid = r["path_energies"][len(r["path_energies"]) // 2]
        rows.append([str(n), str(r["n_atoms"]), str(images), f"{fmax:g}", f"{r['migration_energy']:.5f}",
                     f"{mid:.5f}", f"{time.perf_counter() - t:.1f}"])
    table(["supercell", "atoms", "images", "fmax (eV/Å)", "E_m (eV)", "path middle (eV)", "time (s)"], rows)


def tolerance(pots):
    import atomscore.properties.common as common
    from atomscore.properties import VacancyFormationEnergy

    print("### Relaxed vacancy formation energy of W (4x4x4) against the relaxation tolerance\n")
    rows = []
    saved = common.RELAX_FMAX
    try:
        for fmax in (1e-3, 1e-4, 1e-5):
            common.RELAX_FMAX = fmax
            r = VacancyFormationEnergy(supercell=4, **W_BCC).calculate_property(pots["W"])
            rows.append([f"{fmax:g}", f"{r['relaxed_formation_energy']:.8f}", f"{r['relaxation_volume']:.6f}"])
    finally:
        common.RELAX_FMAX = saved
    table(["max force (eV/Å)", "E_f relaxed (eV)", "Ω_rel (Å³)"], rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", nargs="*", default=None,
                        help="some of: strains vacancy surface migration tolerance")
    opts = parser.parse_args()
    from atomscore.potentials.kim import KIMPotential

    pots = {"W": KIMPotential(W), "Si": KIMPotential(SW)}
    lmp = shutil.which("lmp")
    parts = {"strains": lambda: strains(pots), "vacancy": lambda: vacancy(pots, opts.quick, lmp),
             "surface": lambda: surface(pots, opts.quick), "migration": lambda: migration(pots, opts.quick),
             "tolerance": lambda: tolerance(pots)}
    for name in (opts.only or parts):
        parts[name]()


if __name__ == "__main__":
    main()
