"""Old import path of the selection: :mod:`atomscore.quests.selection` and :mod:`atomscore.quests.curve`."""

from atomscore.quests.curve import CURVE_FIELDS, learning_curve, plot_curve  # noqa: F401
from atomscore.quests.selection import *  # noqa: F401,F403
from atomscore.quests.selection import METHODS, REDUCTIONS, Selection, select  # noqa: F401
