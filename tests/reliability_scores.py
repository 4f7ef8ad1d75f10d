"""Scores the reliability suite runs in real job processes (importable by the runner)."""

import time
from pathlib import Path

import numpy as np

from atomscore.quantity import ScoreQuantity
from atomscore.score import ConfigurationScore


class NapScore(ConfigurationScore):
    """The cell volume (Å³) of each configuration, after optional faults:

    ``seconds``: sleep first; ``fail_unless``: raise unless that file exists; ``width``: return a
    (width,) array of the volume instead (big results files).
    """

    OUTPUT_KEY = "nap_volume"
    supported_score_quantities = (ScoreQuantity.SENSITIVITY,)

    def compute(self, atoms, score_quantity, seconds=0.0, fail_unless=None, width=0):
        self.parse_quantity(score_quantity)
        time.sleep(float(seconds))
        if fail_unless is not None and not Path(fail_unless).exists():
            raise RuntimeError(f"fault requested: {fail_unless} is missing")
        volume = float(atoms.get_volume())
        return np.full(int(width), volume) if width else volume
