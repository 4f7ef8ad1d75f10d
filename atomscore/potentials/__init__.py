"""atomscore.potentials."""
