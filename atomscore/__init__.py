"""atomscore: scores of atomistic data for machine-learned interatomic potentials.

LTAU force uncertainty, QUESTS dataset-information measures and the Fisher-information
modules of the information-matching method, behind one Score contract (see ``score.py``)
and one job system (``atomscore.jobs``). Public names are imported on first use, so
``import atomscore`` never fails for a missing optional extra (kimpy, LAMMPS, SLURM).
"""

from atomscore.catalog import PUBLIC_NAMES, load_public

__version__ = "0.1.0"
__all__ = sorted(PUBLIC_NAMES)


def __getattr__(name):
    if name in PUBLIC_NAMES:
        value = load_public(name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'atomscore' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(PUBLIC_NAMES))
