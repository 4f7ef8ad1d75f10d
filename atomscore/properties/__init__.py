"""atomscore.properties."""
