"""Writing and reading configurations by suffix (atomscore.io) against ASE's own extxyz writer.

The anchor is ``ase.io.write(..., format='extxyz')`` on the same images (it keeps 8 decimals
of each float column; ours keeps 17 significant digits). Prints seconds (best of 3) and
ratios measured side by side in this run::

    .venv/bin/python benchmarks/io_formats.py [--configs 300]
"""

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from ase.build import bulk
import ase.io

from atomscore.io import read_data, write_data, write_extxyz


def images(n):
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(2)  # 64 atoms
        atoms.rattle(0.01, seed=i)
        atoms.arrays["descriptors"] = rng.random((64, 63))
        atoms.info["quests_delta_entropy_bandwidth"] = 0.015
        out.append(atoms)
    return out


def best(func, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        func()
        times.append(time.perf_counter() - start)
    return min(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", type=int, default=300)
    args = parser.parse_args()
    data = images(args.configs)
    anchor = best(lambda: ase.io.write(io.StringIO(), data, format="extxyz"))
    ours = best(lambda: write_extxyz(io.StringIO(), data))
    print(f"{args.configs} configurations x 64 atoms, 66 float columns")
    print(f"extxyz write: ASE {anchor:.3f} s, atomscore (exact) {ours:.3f} s, atomscore/ASE {ours / anchor:.2f}")
    with tempfile.TemporaryDirectory() as folder:
        for suffix in (".xyz", ".traj", ".db", ".json"):
            path = Path(folder) / f"out{suffix}"
            write = best(lambda: write_data(path, data), 1)
            read = best(lambda: read_data(path), 1)
            print(f"{suffix:>6}: write {write:.3f} s ({write / anchor:.2f} x ASE extxyz write), read {read:.3f} s, "
                  f"{path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
