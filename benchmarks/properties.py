"""Built-in target properties: each one's evaluation time, and the property FIM's time
against the number of model evaluations it needs.

For ZJW EAM W (bcc) and SW Si (diamond), at the documented default settings unless
``--small`` (the CI-sized cells of the tests):

- ``one [s]``: one ``property_vector`` (what the FIM evaluates at each point) in process (median of ``--repeats``), with the
  number of model evaluations (``KIMPotential.compute`` calls) it makes;
- ``FIM [s]``: ``FIMPropertyScore.compute`` with central differences in one free parameter
  (2 property evaluations) and its model evaluations;
- ``ratio = FIM / (2 x one)``: what the FIM costs beyond its two property evaluations (the
  path check's extra energies, parameter copies); the anchor is 1.0;
- ``LAMMPS [s]``: the same property through LAMMPS (``kim param set``) where it has that
  backend, and ``LAMMPS / one``.

Run: ``.venv/bin/python benchmarks/properties.py [--repeats 1] [--small]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import time

import numpy as np

W = "EAM_Dynamo_ZhouJohnsonWadley_2004_W__MO_524392058194_005"
SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
W_BCC = {"lattice_param": 3.16, "lattice_type": "bcc", "elements": ["W"]}
SI = {"lattice_param": 5.43, "lattice_type": "diamond", "elements": ["Si"]}
#: (model, free parameter, step) per crystal: deltaRho's step stays inside a table cell
FREE = {"W": (W, "deltaRho", 2e-6), "Si": (SW, "A", 1e-5)}


def cases(small):
    sc = 2 if small else None
    out = []
    for crystal, args in (("W", W_BCC), ("Si", SI)):
        out += [(crystal, "LatticeConstant", args), (crystal, "CohesiveEnergy", args),
                (crystal, "BulkModulus", args), (crystal, "CrystalElasticConstants", args),
                (crystal, "VacancyFormationEnergy", {**args, **({"supercell": sc} if sc else {})}),
                (crystal, "SurfaceEnergy", {**args, "miller": [1, 1, 0] if crystal == "W" else [1, 1, 1],
                                            **({"layers": 4} if small else {})})]
    out.append(("W", "VacancyMigrationEnergy", {**W_BCC, **({"supercell": sc} if sc else {})}))
    return out


class Counter:
    """Counts KIMPotential.compute calls (model evaluations)."""

    def __enter__(self):
        from atomscore.potentials.kim import KIMPotential

        self.n = 0
        self._orig = KIMPotential.compute
        counter = self

        def compute(pot, *a, **kw):
            counter.n += 1
            return counter._orig(pot, *a, **kw)

        KIMPotential.compute = compute
        return self

    def __exit__(self, *exc):
        from atomscore.potentials.kim import KIMPotential

        KIMPotential.compute = self._orig


def timed(func, repeats):
    times, result = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        result = func()
        times.append(time.perf_counter() - t)
    return statistics.median(times), result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--small", action="store_true", help="the tests' small cells")
    opts = parser.parse_args()

    from atomscore.fim.property import FIMPropertyScore
    from atomscore.potentials.kim import KIMPotential
    import atomscore.properties as properties

    lmp = shutil.which("lmp")
    # warm-up: imports and first-use set-up (scipy, information_matching) are not timed
    warm = getattr(properties, "CohesiveEnergy")(**W_BCC)
    FIMPropertyScore().compute([{"init_args": warm.to_spec()}], "SENSITIVITY", np.eye(1),
                               {"potential_type": "KIM", "potential_args": {"kim_id": W}}, {"deltaRho": [["default"]]},
                               derivative_kwargs={"h": 2e-6, "method": "CD"})
    print("| crystal | property | one [s] | model evals | FIM [s] | model evals | FIM / (2 x one) "
          "| LAMMPS [s] | LAMMPS / one |")
    print("|---|---|---|---|---|---|---|---|---|")
    for crystal, name, args in cases(opts.small):
        kim_id, free, h = FREE[crystal]
        cls = getattr(properties, name)
        prop = cls(**args)
        pot = KIMPotential(kim_id)
        with Counter() as c1:
            one, _ = timed(lambda: prop.property_vector(pot), opts.repeats)
        n_one = c1.n // opts.repeats
        with Counter() as c2:
            fim_t, _ = timed(lambda: FIMPropertyScore().compute(
                [{"init_args": prop.to_spec()}], "SENSITIVITY", np.eye(prop.property_size),
                {"potential_type": "KIM", "potential_args": {"kim_id": kim_id}}, {free: [["default"]]},
                derivative_kwargs={"h": h, "method": "CD"}), opts.repeats)
        n_fim = c2.n // opts.repeats
        lmp_cell = "-", "-"
        if lmp and cls.has_lammps:
            lprop = cls(simulator_path=lmp, **args)
            lt, _ = timed(lambda: lprop.calculate_property(pot), opts.repeats)
            lmp_cell = f"{lt:.2f}", f"{lt / one:.1f}"
        print(f"| {crystal} | {name} | {one:.3f} | {n_one} | {fim_t:.3f} | {n_fim} | {fim_t / (2 * one):.2f} "
              f"| {lmp_cell[0]} | {lmp_cell[1]} |", flush=True)


if __name__ == "__main__":
    main()
