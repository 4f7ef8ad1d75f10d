"""atomscore.descriptors."""
