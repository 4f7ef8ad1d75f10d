"""Selection: our greedy ``entropy`` selection vs ``quests.compression.DatasetCompressor`` (msc, fps).

Measured side by side in one run on the same pool: a redundant mixture of phases (Si
diamond, Cu fcc, Fe bcc, Al fcc cells and C60 molecules), each phase many times, rattled
(0.005-0.05 Å) and strained (up to ±2 %). Both sides start from the Atoms, so descriptor
time is included on both: ours computes QUESTS descriptors (``QUESTSDescriptor``, default
k=32, cutoff 5 Å) and runs ``select(pool, max_size, method='entropy')``; quests builds
``DatasetCompressor(pool)`` (its descriptors and per-configuration entropies) and runs
``get_indices(method, max_size)``. Every method here is greedy, so the first ``n`` of one
run of ``max_size`` are the selection of size ``n``; their entropies (nats, bandwidth
0.015) are all evaluated by the same function (``atomscore.quests.kernels.gaussian.entropy``,
equal to ``quests.entropy.entropy`` to 1e-10). A tiny warm-up run first compiles quests'
numba kernels, so compile time counts on neither side.

Usage::

    python benchmarks/selection.py [--configs 400] [--sizes 10 20 50 100 200] [--threads N] [--repeats 3]

Times are the least of ``--repeats`` interleaved runs of each side.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np


def make_pool(n_configs, seed=0):
    from ase.build import bulk
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    phases = [bulk("Si", "diamond", 5.43, cubic=True) * (2, 1, 1),
              bulk("Cu", "fcc", 3.61, cubic=True) * (2, 2, 2),
              bulk("Fe", "bcc", 2.87, cubic=True) * (3, 3, 2),
              bulk("Al", "fcc", 4.05, cubic=True) * (2, 2, 1),
              molecule("C60")]
    pool = []
    for i in range(n_configs):
        atoms = phases[rng.integers(len(phases))].copy()
        if atoms.pbc.any():
            eps = np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))
            atoms.set_cell(atoms.cell @ ((eps + eps.T) / 2), scale_atoms=True)
        atoms.rattle(float(rng.choice([0.005, 0.01, 0.02, 0.05])), seed=int(rng.integers(1 << 30)))
        pool.append(atoms)
    return pool


def ours(pool, size, threads):
    from atomscore.quests.descriptor import QUESTSDescriptor
    from atomscore.quests.selection import select

    t = time.perf_counter()
    blocks = QUESTSDescriptor().compute_batch(pool, progress=False)
    configs = []
    for atoms, x in zip(pool, blocks):
        a = atoms.copy()
        a.new_array("descriptors", x)
        configs.append(a)
    sel = select(configs, size, method="entropy", descriptor=None, pool_summary=False, progress=False,
                 n_threads=threads)
    return sel.indices, time.perf_counter() - t, blocks


def ours_given(configs, size, threads):
    """Selection only: descriptors already attached."""
    from atomscore.quests.selection import select

    t = time.perf_counter()
    select(configs, size, method="entropy", descriptor=None, pool_summary=False, progress=False, n_threads=threads)
    return time.perf_counter() - t


def theirs(pool, size, method, blocks=None):
    from quests.compression import DatasetCompressor

    t = time.perf_counter()
    if blocks is None:
        dc = DatasetCompressor(pool)
    else:  # descriptors given: quests still computes its per-configuration entropies
        lookup = {id(a): x for a, x in zip(pool, blocks)}
        dc = DatasetCompressor(pool, descriptor_fn=lambda a: lookup[id(a)])
    indices = [int(i) for i in dc.get_indices(method, size)]
    return indices, time.perf_counter() - t


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=400)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 50, 100, 200])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats; the least time is shown")
    args = parser.parse_args()
    from atomscore.quests.kernels import gaussian

    threads = args.threads or gaussian.default_threads()
    size = max(args.sizes)
    pool = make_pool(args.configs)
    n_envs = sum(len(a) for a in pool)
    print(f"pool: {len(pool)} configurations, {n_envs} environments; sizes {args.sizes}; "
          f"{threads} threads, {os.cpu_count()} CPUs (shared machine: times are indicative)")

    warm = make_pool(8, seed=1)  # compile quests' numba kernels (and warm ours) outside the timings
    ours(warm, 3, threads)
    theirs(warm, 3, "msc")
    theirs(warm, 3, "fps")

    # interleaved repeats; the least time of each (the machine is shared: the least is the least disturbed)
    t_ours = t_msc = t_fps = s_ours = s_msc = s_fps = float("inf")
    for _ in range(args.repeats):
        idx_ours, t, blocks = ours(pool, size, threads)
        t_ours = min(t_ours, t)
        idx_msc, t = theirs(pool, size, "msc")
        t_msc = min(t_msc, t)
        idx_fps, t = theirs(pool, size, "fps")
        t_fps = min(t_fps, t)
        configs = []
        for atoms, x in zip(pool, blocks):
            a = atoms.copy()
            a.new_array("descriptors", x)
            configs.append(a)
        s_ours = min(s_ours, ours_given(configs, size, threads))
        s_msc = min(s_msc, theirs(pool, size, "msc", blocks)[1])
        s_fps = min(s_fps, theirs(pool, size, "fps", blocks)[1])

    def entropy(indices, n):
        return gaussian.entropy(np.concatenate([blocks[i] for i in indices[:n]]), 0.015, n_threads=threads)

    print()
    print(f"{'size':>5} {'H ours':>9} {'H msc':>9} {'H fps':>9} {'ours-best':>10}   (nats, h = 0.015)")
    ok = True
    for n in args.sizes:
        h_o, h_m, h_f = entropy(idx_ours, n), entropy(idx_msc, n), entropy(idx_fps, n)
        margin = h_o - max(h_m, h_f)
        ok &= margin >= -1e-12
        print(f"{n:>5} {h_o:>9.4f} {h_m:>9.4f} {h_f:>9.4f} {margin:>+10.4f}")
    print()
    print(f"wall time to select {size} (descriptors included): ours {t_ours:.1f} s, quests msc {t_msc:.1f} s "
          f"({t_msc / t_ours:.1f}x), quests fps {t_fps:.1f} s ({t_fps / t_ours:.1f}x)")
    print(f"selection only (descriptors given): ours {s_ours:.1f} s, quests msc {s_msc:.1f} s "
          f"({s_msc / s_ours:.1f}x), quests fps {s_fps:.1f} s ({s_fps / s_ours:.1f}x)")
    print("entropy of ours >= best of msc and fps at every size:", "yes" if ok else "NO")


if __name__ == "__main__":
    main()
