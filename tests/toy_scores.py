"""Small score classes used by the foundation tests (importable by job runners)."""

import os
import signal
import time

import numpy as np

from atomscore.errors import InputError
from atomscore.jobs.calls import job_call
from atomscore.quantity import ScoreQuantity
from atomscore.score import AtomCenteredScore, ConfigurationScore, DatasetScore, records_metadata
from atomscore.validation import load_array, per_atom_array


class WeightedDistanceScore(AtomCenteredScore):
    """Per-atom score: weights . |position - centre| + offset (arrays from memory or .npy)."""

    OUTPUT_KEY = "toy_distance"
    supported_score_quantities = (ScoreQuantity.UNCERTAINTY, ScoreQuantity.IMPORTANCE)

    def __init__(self, weights, offset=0.0):
        super().__init__(weights=weights, offset=offset)
        self.weights = load_array(weights, "weights", shape=(3,))
        self.offset = float(offset)

    @records_metadata
    def compute(self, atoms, score_quantity, centre=(0.0, 0.0, 0.0), scale=None, action=None):
        self.parse_quantity(score_quantity)
        centre = load_array(centre, "centre", shape=(3,))
        scale = 1.0 if scale is None else load_array(scale, "scale", ndim=0)
        if action == "raise":
            raise RuntimeError("toy failure requested")
        if action == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "sleep":
            time.sleep(60)
        return scale * np.abs(atoms.positions - centre) @ self.weights + self.offset


class CellVolumeScore(ConfigurationScore):
    """Per-configuration score: the cell volume times a factor (a 2x2 array if asked)."""

    OUTPUT_KEY = "toy_volume"
    supported_score_quantities = (ScoreQuantity.SENSITIVITY,)

    @records_metadata
    def compute(self, atoms, score_quantity, factor=1.0, as_matrix=False):
        self.parse_quantity(score_quantity)
        value = factor * atoms.get_volume()
        return value * np.eye(2) if as_matrix else value


class MeanDescriptorScore(DatasetScore):
    """Dataset score: the mean of arrays[key] over every atom of the dataset."""

    OUTPUT_KEY = "toy_mean"
    supported_score_quantities = (ScoreQuantity.DIVERSITY,)

    @records_metadata
    def compute(self, dataset, score_quantity, descriptors_key="descriptors"):
        self.parse_quantity(score_quantity)
        return float(np.mean(np.concatenate([per_atom_array(a, descriptors_key, i) for i, a in enumerate(dataset)])))


class PerConfigFactorScore(ConfigurationScore):
    """Configuration score with one argument entry per configuration (``factors``)."""

    OUTPUT_KEY = "toy_factor"
    supported_score_quantities = (ScoreQuantity.IMPORTANCE,)

    @records_metadata
    def compute_batch(self, list_of_atoms, score_quantity, factors=None):
        self.parse_quantity(score_quantity)
        if len(factors) != len(list_of_atoms):
            raise InputError(f"factors: expected {len(list_of_atoms)} entries, got {len(factors)}")
        return [f * len(atoms) for f, atoms in zip(factors, list_of_atoms)]

    def slice_compute_args(self, compute_args, start, stop):
        return {**compute_args, "factors": list(compute_args["factors"][start:stop])}


class JobRootScore(ConfigurationScore):
    """Configuration score that records where its nested jobs would go (``job_root``)."""

    OUTPUT_KEY = "toy_root"
    supported_score_quantities = (ScoreQuantity.IMPORTANCE,)

    @records_metadata
    def compute(self, atoms, score_quantity):
        self.parse_quantity(score_quantity)
        self.note_metadata(job_root=None if self.job_root is None else str(self.job_root))
        return float(len(atoms))


@job_call
def toy_double(x):
    """A registered job call: twice ``x``."""
    return 2 * x
