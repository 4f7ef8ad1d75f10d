"""Fisher-information modules of the information-matching method.

``FIMTrainingSetScore`` (FIM of each configuration), ``FIMPropertyScore`` (FIM of target
properties) and ``FIMMatchingScore`` (optimal training weights), imported on first use;
:func:`refit` closes the loop (the parameters fitted to the chosen, weighted configurations).
"""

from atomscore.catalog import load_public
# bound here, so that ``atomscore.fim.refit`` is the function, not its (light) module
from atomscore.fim.refit import property_covariance, property_prediction, refit

__all__ = ["FIMTrainingSetScore", "FIMPropertyScore", "FIMMatchingScore", "refit", "property_covariance",
           "property_prediction"]


def __getattr__(name):
    if name in __all__:
        return load_public(name)
    raise AttributeError(f"module 'atomscore.fim' has no attribute {name!r}")
