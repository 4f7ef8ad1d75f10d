"""LTAU: force uncertainty from per-training-atom error distributions.

``score`` (LTAUForcesUQScore), ``estimator`` (bins, PDFs and their store, the k-NN lookup),
``md`` (an ASE calculator adding the uncertainty during molecular dynamics), ``calibration``
(how well an uncertainty ranks and sizes true errors), and the inputs from a training run:
``mace`` (extra ``[mace]``) and ``nequip`` (extra ``[nequip]``), imported only when used.
"""

from atomscore.ltau.score import LTAUForcesUQScore

__all__ = ["LTAUForcesUQScore"]
