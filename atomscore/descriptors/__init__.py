"""Old home of the QUESTS descriptor; it lives in :mod:`atomscore.quests.descriptor`."""
