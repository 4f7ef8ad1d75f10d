"""atomscore.kernels."""
