"""Cost of UncertaintyCalculator per MD step, against the bare force call it wraps.

Issue 15, item 4. Stillinger-Weber silicon through KIM (ASE's ``KIM`` calculator, or
``--calculator atomscore`` for ``KIMPotential.get_calculator()``), diamond supercells of
512 and 4096 atoms thermalised at 300 K. The training set is ``--train-frames`` frames of a
300 K run of the 512-atom cell (QUESTS descriptors; an exact ``IndexFlatL2`` and an
``IndexHNSWFlat`` with the default tuning); the error logs are synthetic (the numbers do
not matter here, the cost does).

Per size, medians over the steps of ``--repeats`` rounds in which the two take turns (so a
change of load on a shared machine hits both alike):

* ``bare``: one ``VelocityVerlet`` step with the KIM calculator;
* ``wrapped``: the same with ``UncertaintyCalculator(KIM, score, QUESTSDescriptor)``;
* the parts of the overhead on one frame: QUESTS descriptors, and the faiss search with
  the k-mean (``LTAUEstimator.predict_full``).

Run (one thread per part, as docs/md.md reports it):
``OMP_NUM_THREADS=1 NUMBA_NUM_THREADS=1 .venv/bin/python benchmarks/md_overhead.py --steps 8
--repeats 6 [--cutoff 4.0 --k-descriptor 8]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
from ase import units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet

from atomscore import LTAUForcesUQScore, QUESTSDescriptor, UncertaintyCalculator

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"


def calculator(kind):
    if kind == "ase":
        from ase.calculators.kim import KIM

        return KIM(SW)
    from atomscore import KIMPotential

    return KIMPotential(SW).get_calculator()


def cell(n_atoms, seed):
    reps = round((n_atoms / 8) ** (1 / 3))
    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(reps)
    assert len(atoms) == n_atoms, f"{n_atoms} is not 8 * m**3"
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(seed))
    return atoms


def training_descriptors(desc, kind, frames):
    atoms = cell(512, seed=0)
    atoms.calc = calculator(kind)
    dyn = VelocityVerlet(atoms, 2 * units.fs)
    configs = []
    for _ in range(frames):
        dyn.run(10)
        configs.append(atoms.copy())
    x = np.concatenate(desc.compute_batch(configs, progress=False))
    logs = np.random.default_rng(1).lognormal(-3.0, 0.5, size=(20, len(x)))
    return x, logs


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(n_atoms, score, desc, kind, k, steps, repeats):
    start = cell(n_atoms, seed=2)

    def md(make_calc):
        """Wall time of each of ``steps`` MD steps (an observer takes the time)."""
        atoms = start.copy()
        atoms.calc = make_calc()
        atoms.get_forces()  # set-up (neighbour list, first descriptors) outside the timing
        dyn = VelocityVerlet(atoms, 2 * units.fs)
        stamps = []
        dyn.attach(lambda: stamps.append(time.perf_counter()))
        dyn.run(steps)
        return list(np.diff(stamps))

    bare_calc = lambda: calculator(kind)  # noqa: E731
    wrapped_calc = lambda: UncertaintyCalculator(calculator(kind), score, descriptor=desc,  # noqa: E731
                                                  num_nearest_neighbors=k)
    md(wrapped_calc)  # warm-up: numba, threads, pages
    bare, wrapped = [], []
    for _ in range(repeats):
        bare += md(bare_calc)
        wrapped += md(wrapped_calc)
    x = desc.compute(start)
    t_desc = median_time(lambda: desc.compute(start), repeats)
    t_search = median_time(lambda: score.estimator.predict_full(x, k=k, distance=True), repeats)
    return statistics.median(bare), statistics.median(wrapped), t_desc, t_search


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[512, 4096])
    parser.add_argument("--steps", type=int, default=5, help="MD steps per timed run")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--train-frames", type=int, default=20, help="512-atom frames in the training set")
    parser.add_argument("--cutoff", type=float, default=5.0)
    parser.add_argument("--k-descriptor", type=int, default=32, help="QUESTS neighbours (2k - 1 columns)")
    parser.add_argument("--k", type=int, default=5, help="LTAU nearest neighbours")
    parser.add_argument("--calculator", choices=("ase", "atomscore"), default="ase")
    parser.add_argument("--index-types", nargs="+", default=["IndexFlatL2", "IndexHNSWFlat"])
    args = parser.parse_args(argv)

    desc = QUESTSDescriptor(cutoff=args.cutoff, k=args.k_descriptor)
    x, logs = training_descriptors(desc, args.calculator, args.train_frames)
    print(f"SW Si via KIM ({args.calculator} calculator); QUESTS cutoff {args.cutoff} Å, k {args.k_descriptor} "
          f"({desc.n_features} columns); {len(x)} training atoms; LTAU k={args.k}; "
          f"medians over {args.repeats} x {args.steps} VelocityVerlet steps")
    print(f"{'index':>13} {'atoms':>6} {'bare ms/step':>13} {'wrapped ms/step':>16} {'ratio':>6} "
          f"{'overhead ms':>12} {'descriptors ms':>15} {'search ms':>10}")
    for index_type in args.index_types:
        score = LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=100, index_type=index_type)
        for n in args.sizes:
            bare, wrapped, t_desc, t_search = bench(n, score, desc, args.calculator, args.k, args.steps,
                                                    args.repeats)
            print(f"{index_type:>13} {n:>6} {bare * 1e3:>13.1f} {wrapped * 1e3:>16.1f} {wrapped / bare:>6.2f} "
                  f"{(wrapped - bare) * 1e3:>12.1f} {t_desc * 1e3:>15.1f} {t_search * 1e3:>10.1f}")


if __name__ == "__main__":
    main()
