"""Gaussian kernel sums of QUESTS (``gaussian``), on numpy tiles or torch (``torch_backend``)."""
