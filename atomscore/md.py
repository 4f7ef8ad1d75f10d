"""Old import path of the MD uncertainty calculator: :mod:`atomscore.ltau.md`."""

import sys

from atomscore.ltau import md

sys.modules[__name__] = md
