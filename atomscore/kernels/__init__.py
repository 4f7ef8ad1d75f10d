"""Old home of the kernels; they live in :mod:`atomscore.quests.kernels`."""
