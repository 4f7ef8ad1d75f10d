"""FIMPropertyScore: the property FIM of SW Si parameters A and B, embedded vs LAMMPS.

Elastic constants of diamond Si (8-atom cell, strain 1e-4, fully relaxed), central
differences (h = 0.1), cov = I (36 x 36). Timed side by side in one run (medians of
``--repeats``):

- ``embedded``: ``FIMPropertyScore.compute`` with the in-process kimpy backend and no
  workflow: the 4 perturbed calculations in this process, one model (issue 16);
- ``embedded jobs``: the same with an explicit LOCAL workflow, the 4 calculations as LOCAL
  jobs (parallel subprocesses; what the embedded default did before issue 16);
- ``lammps``: the same with ``simulator_path`` = ``lmp`` (``kim param set`` in the deck);
- ``one``: a single ``ElasticConstants.calculate_property`` per backend, in process (the
  floor of one perturbation); ``overhead = FIM / (4 x one) - 1`` is what the machinery
  costs beyond the calculations (acceptance for the embedded default: <= 20 %).

Also printed: a LOCAL job's start-up, ``python -m atomscore.job --help`` (interpreter and
the runner's imports) against ``python -c pass``.

Also printed: the two FIMs' largest relative difference. The reference instead writes,
compiles and installs a KIM model for every perturbation (not run here: no compiler step).

Run: ``.venv/bin/python benchmarks/fim_property.py [--repeats 3] [--nprocs 2]``
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

import numpy as np

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
POTENTIAL = {"potential_type": "KIM", "potential_args": {"kim_id": SW}}


def target(simulator_path, root, nprocs):
    args = {"lattice_param": 5.43, "lattice_type": "diamond", "deformation_mag": 1e-4, "elements": ["Si"]}
    if simulator_path:
        args["simulator_path"] = simulator_path
    out = {"init_args": {"target_property_type": "ElasticConstants", "target_property_args": args}}
    if root is not None:
        out["calculate_property_args"] = {"workflow": {"workflow_type": "LOCAL", "workflow_args": {
            "root_directory": root, "nprocs": nprocs}}}
    return out


def start_up(repeats):
    """Median seconds of ``python -c pass`` and ``python -m atomscore.job --help``."""
    import subprocess
    import sys

    def run(args):
        return timed(lambda: subprocess.run([sys.executable, *args], check=True, capture_output=True,
                                            timeout=60), repeats)[0]

    return run(["-c", "pass"]), run(["-m", "atomscore.job", "--help"])


def timed(func, repeats):
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--nprocs", type=int, default=2)
    opts = ap.parse_args()
    from atomscore.fim import FIMPropertyScore
    from atomscore.potentials.kim import KIMPotential
    from atomscore.properties import ElasticConstants

    lmp = shutil.which("lmp")
    if lmp is None:
        raise SystemExit("lmp (Debian package lammps) is needed for this benchmark")
    rows, fims = [], {}
    with tempfile.TemporaryDirectory() as root:
        for name, path, jobs in (("embedded", None, False), ("embedded jobs", None, True), ("lammps", lmp, False)):
            one, _ = timed(lambda: ElasticConstants(5.43, "diamond", 1e-4, path, ["Si"]).calculate_property(
                KIMPotential(SW)), opts.repeats)

            def fim():
                return FIMPropertyScore().compute(
                    [target(path, root if jobs else None, opts.nprocs)], "SENSITIVITY", cov=np.eye(36),
                    potential=POTENTIAL, parameters_optimize={"A": [["default"]], "B": [["default"]]},
                    derivative_kwargs={"h": 0.1, "method": "CD"})

            t, fims[name] = timed(fim, opts.repeats)
            rows.append((name, t, one))
    print(f"property FIM of A, B (CD, 4 perturbed elastic-constant calculations), "
          f"median of {opts.repeats}, LOCAL nprocs={opts.nprocs}")
    print(f"{'backend':14s} {'FIM [s]':>9s} {'one calc [s]':>13s} {'overhead':>9s}")
    for name, t, one in rows:
        print(f"{name:14s} {t:9.2f} {one:13.3f} {100 * (t / (4 * one) - 1):8.0f}%")
    print(f"embedded jobs / embedded (FIM): {rows[1][1] / rows[0][1]:.2f}; "
          f"lammps / embedded (one calc): {rows[2][2] / rows[0][2]:.2f}")
    bare, job = start_up(opts.repeats)
    print(f"LOCAL job start-up: python -m atomscore.job --help {job:.3f} s, python -c pass {bare:.3f} s")
    assert np.array_equal(fims["embedded"], fims["embedded jobs"])
    rel = np.max(np.abs(fims["lammps"] - fims["embedded"]) / np.abs(fims["embedded"]))
    print(f"FIM embedded:\n{fims['embedded']}\nmax relative difference lammps vs embedded: {rel:.2e}")


if __name__ == "__main__":
    main()
