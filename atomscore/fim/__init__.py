"""Fisher-information modules of the information-matching method.

``FIMTrainingSetScore`` (FIM of each configuration), ``FIMPropertyScore`` (FIM of target
properties) and ``FIMMatchingScore`` (optimal training weights), imported on first use.
"""

from atomscore.catalog import load_public

__all__ = ["FIMTrainingSetScore", "FIMPropertyScore", "FIMMatchingScore"]


def __getattr__(name):
    if name in __all__:
        return load_public(name)
    raise AttributeError(f"module 'atomscore.fim' has no attribute {name!r}")
