"""atomscore.jobs."""
