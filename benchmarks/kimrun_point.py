"""Time of one KIMRun point (private model install + test run) vs the in-process property.

Issue 24, item 1 closing note. At one parameter point of SW Si (``sigma`` changed, so the
point is written as a parameterized model and installed into a private collection), in one
run, the fastest of ``--rounds`` rounds:

* ``KIMRun``: the lattice-constant test of ``--test-dirs`` (default: our synthetic pair in
  tests/data/kimrun, a Python driver using ASE's KIM calculator) — ``install`` (write +
  cmake/g++ build of the model) and ``run`` (the test's runner) printed apart;
* ``in-process``: :class:`~atomscore.properties.elastic.ElasticConstants` (the lattice
  constant and the elastic constants, kimpy in this process).

It prints both lattice constants and their difference: with a user's own OpenKIM test
folders (``--test-dirs``, ``--test`` its id, ``--prop``/``--key``/``--units`` what it
reports) this is the documented check that their test and the built-in property agree.

Run: ``.venv/bin/python benchmarks/kimrun_point.py [--rounds 3] [--test-dirs DIR
--test TE_ID --prop structure-cubic-crystal-npt --key a --units angstrom --python PY]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
HERE = Path(__file__).resolve().parents[1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--test-dirs", nargs="+", default=[str(HERE / "tests" / "data" / "kimrun")])
    ap.add_argument("--test", default="AtomscoreLatticeConstantCubic_diamond_Si__TE_000000000001_000")
    ap.add_argument("--prop", default="structure-cubic-crystal-npt")
    ap.add_argument("--key", default="a")
    ap.add_argument("--units", default="angstrom")
    ap.add_argument("--python", default=sys.executable, help="python_executable for the tests' runners")
    args = ap.parse_args()

    import tempfile

    from atomscore.potentials.kim import KIMPotential
    from atomscore.properties.elastic import ElasticConstants
    from atomscore.properties.kimrun import KIMRun

    pick = [{"test": [args.test], "prop": [args.prop], "keys": [args.key], "units": [args.units]}]
    builtin = ElasticConstants(lattice_param=5.43, lattice_type="diamond", elements=["Si"])
    best = {"install": 1e9, "run": 1e9, "kimrun": 1e9, "inproc": 1e9}
    for r in range(args.rounds):
        pot = KIMPotential(SW)
        pot.set_parameter("sigma", [2.0951 * (1.0 + 0.001 * (r + 1))])  # a new point each round
        with tempfile.TemporaryDirectory() as work:
            run = KIMRun(args.test_dirs, python_executable=args.python, get_test_result_args=pick, work_dir=work)
            t = time.perf_counter()
            res = run.calculate_property(pot)
            best["kimrun"] = min(best["kimrun"], time.perf_counter() - t)
        best["install"] = min(best["install"], res["timings"]["install"])
        best["run"] = min(best["run"], res["timings"]["run"])
        t = time.perf_counter()
        ref = builtin.calculate_property(pot)
        best["inproc"] = min(best["inproc"], time.perf_counter() - t)
        a_kim = res["property_value"][0][0][0]
    print(f"model {res['model_name']} (private: a parameter point of {SW})")
    print(f"KIMRun point      {best['kimrun']:8.3f} s  (install {best['install']:.3f} s + run {best['run']:.3f} s)")
    print(f"in-process        {best['inproc']:8.3f} s  (lattice constant + elastic constants)")
    print(f"ratio KIMRun / in-process: {best['kimrun'] / best['inproc']:.1f}")
    print(f"lattice constant: KIMRun {a_kim!r} {args.units}, built-in {ref['lattice_constant']!r} A, "
          f"difference {a_kim - ref['lattice_constant']:.3g} (units as asked: convert if not angstrom)")


if __name__ == "__main__":
    main()
