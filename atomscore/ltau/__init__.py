"""LTAU: force uncertainty from per-training-atom error distributions.

``score`` (LTAUForcesUQScore), ``estimator`` (bins, PDFs and their store, the k-NN lookup),
``md`` (an ASE calculator adding the uncertainty during molecular dynamics).
"""

from atomscore.ltau.score import LTAUForcesUQScore

__all__ = ["LTAUForcesUQScore"]
