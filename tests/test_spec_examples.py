"""The seed specification's LTAU and QUESTS examples, run as written.

The code inside each ``exec`` is the spec's text with only the import path changed
(``orchestrator.computer.score`` -> ``atomscore``). The numbers are checked against
independent references: the ``quests`` package for QUESTS, and a brute-force numpy
nearest neighbour over per-point histograms for LTAU.
"""

import textwrap

import numpy as np
import quests.entropy as qe
from ase.build import bulk

from atomscore.quests.descriptor import QUESTSDescriptor


def dataset_with_descriptors():
    configs = []
    for i, a in enumerate((5.35, 5.43, 5.5)):
        atoms = bulk("Si", "diamond", a, cubic=True).repeat(2)
        atoms.rattle(0.05 + 0.05 * i, seed=i)
        configs.append(atoms)
    return QUESTSDescriptor(cutoff=5.0, k=32).attach(configs)


def test_spec_quests_examples_as_written():
    dataset = dataset_with_descriptors()
    descriptors = np.concatenate([a.arrays["descriptors"] for a in dataset[:1]])
    scope = {"dataset": dataset, "descriptors": descriptors}
    exec(textwrap.dedent("""
        from atomscore import QUESTSEfficiencyScore, QUESTSDeltaEntropyScore, ScoreQuantity
        # Dataset efficiency
        efficiency_score = QUESTSEfficiencyScore()
        efficiency = efficiency_score.compute(
        dataset=dataset, # list of ASE Atoms
        score_quantity=ScoreQuantity.EFFICIENCY,
        descriptors_key='descriptors',
        bandwidth=0.1
        )
        # Per-atom delta entropy
        delta_entropy_score = QUESTSDeltaEntropyScore()
        delta_entropies = delta_entropy_score.compute_batch(
        dataset, # list of ASE Atoms
        ScoreQuantity.DELTA_ENTROPY,
        reference_set=descriptors, # (num_atoms, num_dimensions)
        bandwidth=0.1,
        descriptors_key='descriptors',
        )
    """), scope)
    x = np.concatenate([a.arrays["descriptors"] for a in dataset])
    expected_eff = qe.entropy(x, h=0.1) / np.log(len(x))
    np.testing.assert_allclose(np.squeeze(scope["efficiency"]), expected_eff, rtol=1e-10)
    assert len(scope["delta_entropies"]) == len(dataset)
    for atoms, dh in zip(dataset, scope["delta_entropies"]):
        np.testing.assert_allclose(dh, qe.delta_entropy(atoms.arrays["descriptors"], descriptors, h=0.1), atol=1e-8)


def test_spec_ltau_example_as_written():
    rng = np.random.default_rng(0)
    dataset = dataset_with_descriptors()
    descriptors = np.concatenate([a.arrays["descriptors"] for a in dataset[:2]])
    error_logs = np.exp(rng.normal(-3.0, 1.0, size=(40, len(descriptors))))  # (num_epochs, num_atoms)
    scope = {"dataset": dataset, "descriptors": descriptors, "error_logs": error_logs}
    exec(textwrap.dedent("""
        from atomscore import LTAUForcesUQScore, ScoreQuantity
        ltau_score = LTAUForcesUQScore(
        train_descriptors=descriptors, # (num_atoms, num_dimensions)
        error_pdfs=error_logs, # (num_epochs, num_atoms)
        index_type='IndexFlatL2',
        from_error_logs=True,
        nbins=100,
        )
        uncertainties = ltau_score.compute_batch(
        dataset, # list of ASE Atoms
        ScoreQuantity.UNCERTAINTY,
        descriptors_key='descriptors',
        num_nearest_neighbors=5
        )
    """), scope)
    bins = np.logspace(np.log10(error_logs.min()), np.log10(error_logs.max()), 101)
    mid = np.sqrt(bins[1:] * bins[:-1])
    # 10**log10(min) can round above the smallest error: it still belongs in the first bin
    clipped = np.clip(error_logs, bins[0], bins[-1])
    expected_per_point = np.array([np.histogram(col, bins=bins)[0] @ mid for col in clipped.T]) / len(error_logs)
    for atoms, unc in zip(dataset, scope["uncertainties"]):
        d = np.linalg.norm(atoms.arrays["descriptors"][:, None] - descriptors[None], axis=-1)
        nearest = np.argsort(d, axis=1)[:, :5]
        np.testing.assert_allclose(unc, expected_per_point[nearest].mean(axis=1), rtol=1e-6)
