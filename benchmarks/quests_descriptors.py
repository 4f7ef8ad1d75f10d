"""QUESTS descriptors: ours (atomscore.quests.descriptor.compute_descriptors) vs the quests package.

Issue 27 item 3. Same structures, same run, interleaved rounds (ours, quests, ours, ...),
medians: rattled Si diamond (64 atoms), a non-periodic C60 cluster (60 atoms) and Cu fcc
supercells (500 .. 10^5 atoms). For each it prints the median wall time of both, the ratio
quests/ours (below 1,000 atoms each sample is 10 calls in a row, per call), the median CPU
time (all threads: the work, less sensitive to a loaded machine) and its ratio, and the
largest absolute difference of the descriptors (must be ~1e-15). quests' numba kernels are
compiled (cached) before the first round. quests' OpenMP threads keep spinning for ~10 ms
after each call (measured: 8 ms of CPU during a sleep), which would be charged to whatever
runs next, so every timed sample follows a 50 ms pause.
``--baseline FILE`` times another ``descriptor.py`` (e.g. main's, before a change) in the
same rounds: the before/after table.

Then end to end from structures (``--no-end-to-end`` to skip): entropy of 20 strained,
rattled Cu cells of 500 atoms (10,000 environments) and dH of 4 more strongly rattled cells
against them -- ours (``compute_descriptors`` + ``gaussian.entropy`` / ``delta_entropy``,
float64) vs quests (``get_descriptors`` + ``quests.entropy.entropy`` / ``delta_entropy``),
h = 0.015; and selection of 50 of a pool of 200 small configurations of several phases
(benchmarks/selection.py's pool) -- ours (``QUESTSDescriptor`` + ``select(method='entropy')``)
vs quests (``DatasetCompressor(pool).get_indices('msc', 50)``). Medians of interleaved
rounds, wall and CPU, ratio quests / ours. The load average (1 min) is printed at the start
and the end: the machine may be shared.

Usage::

    python benchmarks/quests_descriptors.py [--repeats 5] [--max-atoms 100000] [--threads N]
        [--baseline path/to/descriptor.py] [--no-end-to-end]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def structures(max_atoms):
    from ase.build import bulk, molecule

    out = []
    si = bulk("Si", "diamond", 5.43, cubic=True).repeat((2, 2, 2))
    si.rattle(0.05, seed=1)
    out.append(("Si diamond", si))
    c60 = molecule("C60")
    c60.rattle(0.02, seed=2)
    out.append(("C60 (open)", c60))
    for n in (5, 11, 18, 29):  # 500, 5,324, 23,328, 97,556 atoms
        cu = bulk("Cu", "fcc", 3.61, cubic=True).repeat((n, n, n))
        if len(cu) > max_atoms:
            continue
        cu.rattle(0.05, seed=n)
        out.append(("Cu fcc", cu))
    return out


def timed(fn, pause=0.05):
    time.sleep(pause)  # quests' OpenMP threads spin for ~10 ms after a call: let them settle
    w0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - w0, time.process_time() - c0


def load_baseline(path):
    """``compute_descriptors`` of another descriptor.py (e.g. main's), imported as a module of its own."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline_descriptor", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compute_descriptors


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-atoms", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--baseline", default=None, help="another descriptor.py, timed in the same rounds")
    parser.add_argument("--no-end-to-end", action="store_true")
    args = parser.parse_args(argv)

    from quests.descriptor import get_descriptors

    from atomscore.quests.descriptor import compute_descriptors

    print(f"load average at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    sides = {"o": lambda a: compute_descriptors(a, n_threads=args.threads), "q": lambda a: get_descriptors([a])}
    if args.baseline:
        before = load_baseline(args.baseline)
        sides["b"] = lambda a: before(a, n_threads=args.threads)
    cases = structures(args.max_atoms)
    growth = {"q": [], "o": [], "n": []}
    for fn in sides.values():  # compile / load quests' numba cache, warm ours
        fn(cases[0][1])
    head = f"{'structure':<12} {'atoms':>7} {'quests s':>9} {'ours s':>8} {'ratio':>6} "
    head += f"{'quests cpu':>10} {'ours cpu':>9} {'cpu ratio':>9} {'max |diff|':>10}"
    if args.baseline:
        head += f" {'before s':>9} {'before cpu':>10} {'q/before':>8}"
    print(head)
    for name, atoms in cases:
        walls, cpus, out = {s: [] for s in sides}, {s: [] for s in sides}, {}
        repeats = args.repeats * 2 if len(atoms) < 1000 else args.repeats if len(atoms) < 50_000 else (
            max(3, args.repeats // 2))
        inner = 10 if len(atoms) < 1000 else 1  # small structures: each sample times 10 calls in a row
        for _ in range(repeats):
            for side, fn in sides.items():
                outs, w, c = timed(lambda: [fn(atoms) for _ in range(inner)])
                out[side] = outs[0]
                walls[side].append(w / inner)
                cpus[side].append(c / inner)
        err = float(np.abs(out["o"] - out["q"]).max())
        wall = {s: statistics.median(v) for s, v in walls.items()}
        cpu = {s: statistics.median(v) for s, v in cpus.items()}
        if name == "Cu fcc":
            growth["n"].append(len(atoms))
            growth["q"].append(cpu["q"])
            growth["o"].append(cpu["o"])
        line = (f"{name:<12} {len(atoms):>7} {wall['q']:>9.4f} {wall['o']:>8.4f} {wall['q'] / wall['o']:>6.2f} "
                f"{cpu['q']:>10.4f} {cpu['o']:>9.4f} {cpu['q'] / cpu['o']:>9.2f} {err:>10.1e}")
        if args.baseline:
            line += f" {wall['b']:>9.4f} {cpu['b']:>10.4f} {wall['q'] / wall['b']:>8.2f}"
        print(line, flush=True)
    if len(growth["n"]) > 1:
        fit = {key: np.polyfit(np.log(growth["n"]), np.log(growth[key]), 1)[0] for key in ("q", "o")}
        print(f"growth of the CPU time with atoms (Cu fcc, time ~ n^a): quests a = {fit['q']:.2f}, "
              f"ours a = {fit['o']:.2f}")
    if not args.no_end_to_end:
        end_to_end(args.repeats, args.threads)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


def end_to_end(repeats, threads, h=0.015, pool_size=200, select_size=50):
    import quests.entropy as qe
    from ase.build import bulk
    from quests.compression import DatasetCompressor
    from quests.descriptor import get_descriptors
    from selection import make_pool  # benchmarks/selection.py: this script's folder is on sys.path

    from atomscore.quests.descriptor import QUESTSDescriptor, compute_descriptors
    from atomscore.quests.kernels import gaussian
    from atomscore.quests.selection import select

    rng = np.random.default_rng(3)

    def cells(count, top):
        out = []
        for _ in range(count):
            a = bulk("Cu", "fcc", 3.61, cubic=True).repeat((5, 5, 5))
            a.set_cell(a.cell * rng.uniform(0.97, 1.04), scale_atoms=True)
            a.rattle(rng.uniform(0.02, top), seed=int(rng.integers(2**31)))
            out.append(a)
        return out

    train, test = cells(20, 0.2), cells(4, 0.35)
    pool = make_pool(pool_size)

    def ours_entropy():
        return gaussian.entropy(np.concatenate([compute_descriptors(a, n_threads=threads) for a in train]), h)

    def quests_entropy():
        return qe.entropy(get_descriptors(train), h=h)

    def ours_dh():
        x = np.concatenate([compute_descriptors(a, n_threads=threads) for a in train])
        return gaussian.delta_entropy(np.concatenate([compute_descriptors(a, n_threads=threads) for a in test]), x, h)

    def quests_dh():
        return qe.delta_entropy(get_descriptors(test), get_descriptors(train), h=h)

    def ours_select():
        configs = QUESTSDescriptor().attach(pool, progress=False)
        return select(configs, select_size, method="entropy", descriptor=None, pool_summary=False, progress=False,
                      n_threads=threads).indices

    def quests_select():
        return DatasetCompressor(pool).get_indices("msc", select_size)

    DatasetCompressor(make_pool(8, seed=1)).get_indices("msc", 3)  # compile quests' kernels
    print(f"\nend to end from structures (entropy: 10,000 environments; dH: 2,000 queries against them; "
          f"h = {h}; select: {select_size} of {pool_size} configurations, {sum(len(a) for a in pool)} atoms):")
    print(f"{'task':<8} {'quests s':>9} {'ours s':>8} {'ratio':>6} {'quests cpu':>10} {'ours cpu':>9} "
          f"{'cpu ratio':>9} {'max |diff|':>10}")
    for name, ours_fn, ref_fn in (("entropy", ours_entropy, quests_entropy), ("dH", ours_dh, quests_dh),
                                  ("select", ours_select, quests_select)):
        t, c = {"o": [], "q": []}, {"o": [], "q": []}
        for _ in range(repeats):
            o, w, cpu = timed(ours_fn)
            t["o"].append(w)
            c["o"].append(cpu)
            q, w, cpu = timed(ref_fn)
            t["q"].append(w)
            c["q"].append(cpu)
        # selection: different methods (greedy entropy vs quests' msc) choose different configurations
        diff = "-" if name == "select" else f"{float(np.max(np.abs(np.asarray(o) - np.asarray(q)))):.1e}"
        wq, wo = statistics.median(t["q"]), statistics.median(t["o"])
        cq, co = statistics.median(c["q"]), statistics.median(c["o"])
        print(f"{name:<8} {wq:>9.3f} {wo:>8.3f} {wq / wo:>6.2f} {cq:>10.3f} {co:>9.3f} {cq / co:>9.2f} {diff:>10}",
              flush=True)


if __name__ == "__main__":
    main()
