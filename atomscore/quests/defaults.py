"""The physical defaults of QUESTS, each written once (the scores, kernels and CLI import them)."""

#: kernel bandwidth h (Å^-1, the units of the descriptors), as the quests package
DEFAULT_BANDWIDTH = 0.015
#: descriptor cutoff radius (Å)
DEFAULT_CUTOFF = 5.0
#: neighbours per environment in the descriptor
DEFAULT_K = 32
