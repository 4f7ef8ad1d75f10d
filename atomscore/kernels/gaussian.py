"""Old import path of the Gaussian kernel sums: :mod:`atomscore.quests.kernels.gaussian`."""

import sys

from atomscore.quests.kernels import gaussian

sys.modules[__name__] = gaussian
