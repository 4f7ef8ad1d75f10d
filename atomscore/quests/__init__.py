"""QUESTS: information measures of datasets from per-atom descriptors.

``score`` (the three dataset/atom scores), ``kernels`` (Gaussian kernel sums, numpy and torch),
``descriptor`` (the QUESTS descriptor), ``selection`` and ``curve`` (choosing configurations).
"""

from atomscore.quests.defaults import DEFAULT_BANDWIDTH, DEFAULT_CUTOFF, DEFAULT_K
from atomscore.quests.reference import ReferenceSet
from atomscore.quests.score import (SELECTION_MASK_KEY, QUESTSDeltaEntropyScore, QUESTSDiversityScore,
                                    QUESTSEfficiencyScore)

__all__ = ["QUESTSEfficiencyScore", "QUESTSDiversityScore", "QUESTSDeltaEntropyScore", "ReferenceSet",
           "SELECTION_MASK_KEY",
           "DEFAULT_BANDWIDTH", "DEFAULT_CUTOFF", "DEFAULT_K"]
