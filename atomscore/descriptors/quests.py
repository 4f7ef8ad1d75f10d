"""Old import path of the QUESTS descriptor: :mod:`atomscore.quests.descriptor`."""

import sys

from atomscore.quests import descriptor

sys.modules[__name__] = descriptor
