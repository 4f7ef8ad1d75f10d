"""QUESTS descriptors of molecular dynamics of several phases (LAMMPS): real environments for the
tests and benchmarks of the sampled dH (tests/test_dh_estimate.py, benchmarks/dh_estimate.py).

Six phases, equal parts, each a LAMMPS NPT/NVT run with a potential that ships with LAMMPS
(``/usr/share/lammps/potentials``): fcc Cu at 300 K and at 1000 K, liquid Cu at 1800 K
(melted at 2500 K first), a Cu slab with two free (001) surfaces at 700 K (EAM ``Cu_u3``),
bcc Fe at 600 K (EAM ``Fe_mm``) and diamond Si at 900 K (Stillinger-Weber). After
``equilibrate`` steps (default 2,000; the liquid is melted for 1.5x as many first) a frame is
kept every 50 steps (2 fs steps: 0.1 ps apart).
Descriptors: :class:`atomscore.QUESTSDescriptor` (cutoff 5 A, k = 32: d = 63).

``phases(n, seed)`` returns ``n`` environments (rows shuffled); the reference and the queries
of a benchmark are two runs with different seeds (the queries ``hotter`` by 10 %, a little
outside the reference). The benchmarks cache the result as ``.npy`` under
``$ATOMSCORE_BENCH_CACHE`` (default ``~/.cache/atomscore-bench``; ``cache=False``: none, as
the tests do): ~1 min of LAMMPS and ~0.1 ms of descriptors per environment for 2e5 rows.

Run alone to fill the benchmark's cache: ``python tests/md_phases.py 200000 10000``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

POTENTIALS = Path("/usr/share/lammps/potentials")

_CU = ("lattice fcc 3.615\n{region}\ncreate_box 1 box\ncreate_atoms 1 box\nmass 1 63.546\n"
       f"pair_style eam\npair_coeff * * {POTENTIALS}/Cu_u3.eam\n")
# name: (setup, temperature K, thermostat, melt first)
PHASES = {
    "fcc Cu 300 K": (_CU.format(region="region box block 0 5 0 5 0 5"), 300.0, "npt", False),
    "fcc Cu 1000 K": (_CU.format(region="region box block 0 5 0 5 0 5"), 1000.0, "npt", False),
    "liquid Cu 1800 K": (_CU.format(region="region box block 0 5 0 5 0 5"), 1800.0, "npt", True),
    "Cu (001) slab 700 K": (_CU.format(region="region box block 0 5 0 5 0 9\nregion slab block 0 5 0 5 0 5")
                            .replace("create_atoms 1 box", "create_atoms 1 region slab"), 700.0, "nvt", False),
    "bcc Fe 600 K": ("lattice bcc 2.855\nregion box block 0 6 0 6 0 6\ncreate_box 1 box\ncreate_atoms 1 box\n"
                     f"mass 1 55.845\npair_style eam/fs\npair_coeff * * {POTENTIALS}/Fe_mm.eam.fs Fe\n",
                     600.0, "npt", False),
    "diamond Si 900 K": ("lattice diamond 5.431\nregion box block 0 4 0 4 0 4\ncreate_box 1 box\n"
                         f"create_atoms 1 box\nmass 1 28.0855\npair_style sw\npair_coeff * * {POTENTIALS}/Si.sw Si\n",
                         900.0, "npt", False),
}


def _lammps_frames(setup, temp, thermo, melt, frames, seed, workdir, equilibrate):
    """Run LAMMPS; return the kept frames as ASE Atoms (periodic as the box)."""
    from ase.io import read

    baro = "iso 0.0 0.0 1.0" if thermo == "npt" else ""
    hot = (f"fix 1 all {thermo} temp 2500 2500 0.1 {baro}\nrun {3 * equilibrate // 2}\nunfix 1\n" if melt else "")
    script = (f"units metal\natom_style atomic\nboundary p p p\n{setup}"
              f"velocity all create {temp * (2.5 if melt else 2.0)} {seed} mom yes rot yes dist gaussian\n"
              f"timestep 0.002\nthermo 1000\n{hot}"
              f"fix 1 all {thermo} temp {temp} {temp} 0.1 {baro}\nrun {equilibrate}\n"
              f"dump 1 all custom 50 frames.dump id type x y z\ndump_modify 1 sort id\n"
              f"run {50 * frames}\n")
    (workdir / "in.lmp").write_text(script)
    subprocess.run([shutil.which("lmp") or "lmp", "-in", "in.lmp", "-log", "none", "-screen", "none"],
                   cwd=workdir, check=True)
    atoms = read(workdir / "frames.dump", index="1:", format="lammps-dump-text")  # frame 0: the start
    return atoms[:frames]


def phases(n, seed=0, hotter=1.0, cache=None, equilibrate=2000, names=None):
    """``n`` QUESTS descriptors (float64 (n, 63)) of the phases ``names`` (default all six) in
    equal parts, shuffled."""
    names = list(PHASES) if names is None else list(names)
    path = None
    if cache is not False:
        cache = Path(cache or os.environ.get("ATOMSCORE_BENCH_CACHE", Path.home() / ".cache" / "atomscore-bench"))
        tag = "" if (equilibrate, names) == (2000, list(PHASES)) else (f"_{equilibrate}_"
                                                                       + "".join(str(list(PHASES).index(v)) for v in names))
        path = cache / f"md_phases_{n}_{seed}_{hotter:g}{tag}.npy"
        if path.exists():
            return np.load(path)
    from atomscore import QUESTSDescriptor

    desc = QUESTSDescriptor(cutoff=5.0, k=32)
    per = -(-n // len(names))
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for p, name in enumerate(names):
            setup, temp, thermo, melt = PHASES[name]
            work = Path(tmp) / str(p)
            work.mkdir()
            atoms_per_frame = {"bcc Fe 600 K": 432, "diamond Si 900 K": 512}.get(name, 500)
            frames = -(-per // atoms_per_frame)
            run = _lammps_frames(setup, temp * hotter, thermo, melt, frames, 1000 * seed + p + 1, work, equilibrate)
            parts.append(np.concatenate(desc.compute_batch(run))[:per])
    x = np.concatenate(parts)
    x = x[np.random.default_rng(seed).permutation(len(x))][:n]
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, x)
    return x


def reference_and_queries(n, m, seed=0, **options):
    """The benchmark's pair: ``n`` reference rows (run ``seed``) and ``m`` queries from runs
    ``seed + 1`` at temperatures 10 % higher (``options``: as :func:`phases`)."""
    return phases(n, seed, **options), phases(m, seed + 1, hotter=1.1, **options)


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:]] or [200_000, 10_000]
    x, y = reference_and_queries(*args)
    print(x.shape, y.shape)
