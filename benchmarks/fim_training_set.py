"""FIMTrainingSetScore against the straightforward loop and against the bare model cost.

20 rattled 64-atom diamond Si configurations, SW Si (OpenKIM), parameters A, B, sigma, gamma,
lambda, forces FIM. Measured side by side in one run (medians of a few repeats):

- ours: ``FIMTrainingSetScore.compute_batch`` (default central differences, 10 % steps);
- loop: what the reference does -- ASE's KIM calculator, ``calc.set_parameters`` then
  ``atoms.get_forces()`` for every evaluation requested by ``numdifftools.Jacobian`` with the
  same method and steps;
- bare: (number of model evaluations we make) x (one kimpy force evaluation of the configuration,
  padding and neighbour list already built), summed over configurations.

Acceptance (issue 5): loop / ours >= 3 and ours / bare <= 1.3.

Then the process pool (issue 27, item 4): ``nprocs=2`` against ``nprocs=1`` on the same 20
configurations of 64 atoms and on 20 of 512 atoms, in turns (medians). Goal: nprocs=2 at
least 1.6x faster (wall). CPU time counts both processes (this one and the worker, which is
forked by the first call and kept for the next ones: the warm-up call pays its fork).
The machine's load average is printed: on 2 cores shared with other work, a second process
only helps when a core is free (with ``sched_autogroup``, one session's processes share one
session's part of the machine); so is the speedup on two free cores, from CPU times (nprocs=1's
over the busier of the two processes').

Run: ``.venv/bin/python benchmarks/fim_training_set.py [--repeats 7] [--parallel-repeats 5]``
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time

import numpy as np

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
PARAMS = ["A", "B", "sigma", "gamma", "lambda"]


def configurations(n=20, seed=0):
    from ase.build import bulk

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
        a.positions += rng.normal(scale=0.1, size=a.positions.shape)
        out.append(a)
    return out


def ours(configs, nprocs=1):
    from atomscore.fim.training_set import FIMTrainingSetScore

    score = FIMTrainingSetScore()
    return score.compute_batch(
        configs, "SENSITIVITY",
        potential={"potential_type": "KIM", "potential_args": {"kim_id": SW}},
        parameters_optimize={p: [["default"]] for p in PARAMS}, nprocs=nprocs)


def loop(configs):
    """The reference's way: ASE KIM calculator, set_parameters + get_forces per evaluation."""
    import numdifftools as nd
    from ase.calculators.kim import KIM

    calc = KIM(SW)
    x0 = np.array([calc.get_parameters(**{p: [0]})[p][1][0] for p in PARAMS])
    fims = []
    for atoms in configs:
        a = atoms.copy()
        a.calc = calc

        def forces(x):
            calc.set_parameters(**{p: [[0], [float(v)]] for p, v in zip(PARAMS, x)})
            return a.get_forces().ravel()

        jac = nd.Jacobian(forces, method="central", step=0.1 * np.abs(x0))(x0)
        calc.set_parameters(**{p: [[0], [float(v)]] for p, v in zip(PARAMS, x0)})
        fims.append(jac.T @ jac)
    return fims


def bare_runner(configs, n_evals):
    """A function doing n_evals bare kimpy force evaluations per configuration (setups prebuilt)."""
    from atomscore.potentials.kim import KIMPotential

    pot = KIMPotential(SW)
    setups = []
    for atoms in configs:
        s = pot._setup(atoms)
        pot._point(s, False, True, False)
        setups.append(s)
    compute = pot._model.compute

    def bare(_configs):
        for s in setups:
            for _ in range(n_evals):
                compute(s.args)

    return bare


def interleaved(fns, configs, repeats, clock):
    """Median seconds of each function, run in turns so machine load hits all alike."""
    times = {name: [] for name in fns}
    results = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t = clock()
            results[name] = fn(configs)
            times[name].append(clock() - t)
    return {name: float(np.median(v)) for name, v in times.items()}, results


def cpu_clock():
    """CPU seconds of this process, of its reaped children (workers forked for one call are
    reaped by threads named ``reap-*``: joined first) and of the workers kept between calls
    (as they report it)."""
    from atomscore.fim.workers import _KEPT

    for t in threading.enumerate():
        if t.name.startswith("reap-"):
            t.join()
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    kept = sum(worker.cpu for worker in _KEPT)  # as each reported at the end of its last group
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime + kept


def parallel(repeats, n_configs):
    """nprocs=2 against nprocs=1, 64- and 512-atom configurations, wall and CPU, in turns."""
    for repeat in (1, 2):
        configs = [a.repeat(repeat) for a in configurations(n_configs, seed=1)]
        n_atoms = len(configs[0])
        ours(configs[:2], nprocs=2)  # warm up
        fns = {1: lambda c: ours(c, 1), 2: lambda c: ours(c, 2)}
        wall, _ = interleaved(fns, configs, repeats, time.perf_counter)
        cpu, res = interleaved(fns, configs, repeats, cpu_clock)
        own, _ = interleaved({2: fns[2]}, configs, repeats, time.process_time)  # this process alone
        diff = max(float(np.max(np.abs(a - b)) / np.max(np.abs(a))) for a, b in zip(res[1], res[2]))
        busiest = max(own[2], cpu[2] - own[2])  # the process with more CPU: the wall time on free cores
        print(f"[{n_configs} x {n_atoms} atoms] nprocs=1 wall {wall[1] * 1e3:7.1f} ms, cpu {cpu[1] * 1e3:7.1f} ms | "
              f"nprocs=2 wall {wall[2] * 1e3:7.1f} ms, cpu (both processes) {cpu[2] * 1e3:7.1f} ms, of which "
              f"this process {own[2] * 1e3:7.1f} ms")
        print(f"[{n_configs} x {n_atoms} atoms] speedup nprocs=2 / nprocs=1 (wall) = {wall[1] / wall[2]:4.2f} "
              f"(goal >= 1.6);  cpu nprocs=2 / nprocs=1 = {cpu[2] / cpu[1]:4.2f};  on two free cores (cpu of "
              f"nprocs=1 / cpu of the busier process) {cpu[1] / busiest:4.2f};  max relative difference {diff:.1e}")


def load():
    return "load average " + ", ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} cores"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--configs", type=int, default=20)
    parser.add_argument("--parallel-repeats", type=int, default=5)
    args = parser.parse_args(argv)
    print(load())
    configs = configurations(args.configs)
    ours(configs[:1])  # warm up imports and the model library
    loop(configs[:1])

    n_evals = 2 * len(PARAMS)  # central differences, one step: 2P evaluations per configuration
    n_evals_nd = n_evals + 1  # numdifftools also evaluates the centre
    fns = {"ours": ours, "loop": loop, "bare": bare_runner(configs, n_evals)}
    print(f"{len(configs)} configurations x 64 atoms, P = {len(PARAMS)} ({', '.join(PARAMS)}), forces FIM, "
          f"medians of {args.repeats} interleaved runs")
    # wall time, and process CPU time (robust on a machine shared with other jobs)
    for label, clock in (("wall", time.perf_counter), ("cpu", time.process_time)):
        med, res = interleaved(fns, configs, args.repeats, clock)
        t_ours, t_loop, t_bare = med["ours"], med["loop"], med["bare"]
        bare_one = t_bare / n_evals
        print(f"[{label}] ours {t_ours * 1e3:7.1f} ms | loop (ASE KIM + numdifftools) {t_loop * 1e3:7.1f} ms | "
              f"bare ({n_evals} x one kimpy force eval per config) {t_bare * 1e3:7.1f} ms")
        print(f"[{label}] loop / ours = {t_loop / t_ours:5.2f} (acceptance >= 3);  ours / bare = "
              f"{t_ours / t_bare:5.2f} (acceptance <= 1.3);  ours / ({n_evals_nd} x bare, numdifftools' "
              f"count) = {t_ours / (n_evals_nd * bare_one):5.2f}")
    diff = max(float(np.max(np.abs(a - b)) / np.max(np.abs(b))) for a, b in zip(res["ours"], res["loop"]))
    print(f"max relative FIM difference ours vs loop: {diff:.2e}")
    print(load())
    if args.parallel_repeats:
        parallel(args.parallel_repeats, args.configs)
        print(load())


if __name__ == "__main__":
    main()
