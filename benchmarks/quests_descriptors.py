"""QUESTS descriptors: ours (atomscore.quests.descriptor.compute_descriptors) vs the quests package.

Issue 27 item 3. Same structures, same run, interleaved rounds (ours, quests, ours, ...),
medians: rattled Si diamond (64 atoms), Cu fcc supercells (500 .. 10^5 atoms) and a
non-periodic C60 cluster. For each it prints the median wall time of both, the ratio
quests/ours, the median CPU time (all threads: the work, less sensitive to a loaded
machine) and its ratio, and the largest absolute difference of the descriptors (must be
~1e-15). quests' numba kernels are compiled (cached) before the first round.

Then end to end from structures (``--end-to-end``, default on): entropy of 20 strained,
rattled Cu cells of 500 atoms (10,000 environments) and dH of 4 more strongly rattled cells
against them -- ours (``compute_descriptors`` + ``gaussian.entropy`` / ``delta_entropy``,
float64) vs quests (``get_descriptors`` + ``quests.entropy.entropy`` / ``delta_entropy``),
h = 0.015, medians of interleaved rounds, ratio quests / ours.

Usage::

    python benchmarks/quests_descriptors.py [--repeats 5] [--max-atoms 100000] [--threads N] [--no-end-to-end]
"""

from __future__ import annotations

import argparse
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


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    value = fn()
    return value, time.perf_counter() - w0, time.process_time() - c0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--max-atoms", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-end-to-end", action="store_true")
    args = parser.parse_args(argv)

    from quests.descriptor import get_descriptors

    from atomscore.quests.descriptor import compute_descriptors

    cases = structures(args.max_atoms)
    growth = {"q": [], "o": [], "n": []}
    get_descriptors([cases[0][1]])  # compile / load quests' numba cache
    compute_descriptors(cases[0][1])
    print(f"{'structure':<12} {'atoms':>7} {'quests s':>9} {'ours s':>8} {'ratio':>6} "
          f"{'quests cpu':>10} {'ours cpu':>9} {'cpu ratio':>9} {'max |diff|':>10}")
    for name, atoms in cases:
        walls, cpus, err = {"q": [], "o": []}, {"q": [], "o": []}, 0.0
        for _ in range(args.repeats):
            ours, w, c = timed(lambda: compute_descriptors(atoms, n_threads=args.threads))
            walls["o"].append(w)
            cpus["o"].append(c)
            ref, w, c = timed(lambda: get_descriptors([atoms]))
            walls["q"].append(w)
            cpus["q"].append(c)
            err = max(err, float(np.abs(ours - ref).max()))
        wq, wo = statistics.median(walls["q"]), statistics.median(walls["o"])
        cq, co = statistics.median(cpus["q"]), statistics.median(cpus["o"])
        if name == "Cu fcc":
            growth["n"].append(len(atoms))
            growth["q"].append(cq)
            growth["o"].append(co)
        print(f"{name:<12} {len(atoms):>7} {wq:>9.4f} {wo:>8.4f} {wq / wo:>6.2f} {cq:>10.4f} {co:>9.4f} "
              f"{cq / co:>9.2f} {err:>10.1e}", flush=True)
    if len(growth["n"]) > 1:
        fit = {key: np.polyfit(np.log(growth["n"]), np.log(growth[key]), 1)[0] for key in ("q", "o")}
        print(f"growth of the CPU time with atoms (Cu fcc, time ~ n^a): quests a = {fit['q']:.2f}, "
              f"ours a = {fit['o']:.2f}")
    if not args.no_end_to_end:
        end_to_end(args.repeats)


def end_to_end(repeats, h=0.015):
    import quests.entropy as qe
    from ase.build import bulk
    from quests.descriptor import get_descriptors

    from atomscore.quests.descriptor import compute_descriptors
    from atomscore.quests.kernels import gaussian

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

    def ours_entropy():
        return gaussian.entropy(np.concatenate([compute_descriptors(a) for a in train]), h)

    def quests_entropy():
        return qe.entropy(get_descriptors(train), h=h)

    def ours_dh():
        x = np.concatenate([compute_descriptors(a) for a in train])
        return gaussian.delta_entropy(np.concatenate([compute_descriptors(a) for a in test]), x, h)

    def quests_dh():
        return qe.delta_entropy(get_descriptors(test), get_descriptors(train), h=h)

    print(f"\nend to end from structures (10,000 reference environments, 2,000 queries, h = {h}):")
    print(f"{'task':<8} {'quests s':>9} {'ours s':>8} {'ratio':>6} {'max |diff|':>10}")
    for name, ours_fn, ref_fn in (("entropy", ours_entropy, quests_entropy), ("dH", ours_dh, quests_dh)):
        t = {"o": [], "q": []}
        for _ in range(repeats):
            o, w, _ = timed(ours_fn)
            t["o"].append(w)
            q, w, _ = timed(ref_fn)
            t["q"].append(w)
        diff = float(np.max(np.abs(np.asarray(o) - np.asarray(q))))
        wq, wo = statistics.median(t["q"]), statistics.median(t["o"])
        print(f"{name:<8} {wq:>9.3f} {wo:>8.3f} {wq / wo:>6.2f} {diff:>10.1e}", flush=True)


if __name__ == "__main__":
    main()
