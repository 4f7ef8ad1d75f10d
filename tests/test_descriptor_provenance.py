"""Descriptor provenance: settings recorded with descriptors, digests of references in metadata.

Before the fix ``QUESTSDescriptor.attach`` recorded nothing about how descriptors were made,
a reference computed with another cutoff was compared silently, and the metadata of QUESTS
and LTAU did not say which reference/training descriptors defined the numbers.
References: ``quests.entropy.delta_entropy`` for the numbers, ``hashlib.sha256`` of the
float64 array for the digest, ``importlib.metadata`` for the quests version.
"""

import hashlib
import subprocess
import sys
from importlib.metadata import version

import numpy as np
import pytest
import quests.entropy as qe
from ase.build import bulk

from atomscore import InputError, LTAUForcesUQScore, QUESTSDeltaEntropyScore, QUESTSDescriptor, QUESTSEfficiencyScore
from atomscore.io import read_extxyz, write_extxyz


def _configs(n=3):
    out = []
    for i in range(n):
        atoms = bulk("Si", "diamond", 5.43, cubic=True)
        atoms.rattle(0.05 + 0.02 * i, seed=i)
        out.append(atoms)
    return out


def _sha(arr):
    return hashlib.sha256(np.ascontiguousarray(arr, dtype=np.float64).tobytes()).hexdigest()


def test_attach_records_the_settings():
    out = QUESTSDescriptor(cutoff=4.5, k=8).attach(_configs(2))
    assert out[0].info["descriptors_settings"] == {"name": "QUESTS", "cutoff": 4.5, "k": 8,
                                                   "quests_version": version("quests")}


def test_cli_records_the_settings(tmp_path):
    src, dst = tmp_path / "in.xyz", tmp_path / "out.xyz"
    write_extxyz(src, _configs(2))
    proc = subprocess.run([sys.executable, "-m", "atomscore.cli", "descriptors", str(src), "-o", str(dst),
                           "--cutoff", "4.0", "-k", "6", "--no-progress"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert read_extxyz(dst)[1].info["descriptors_settings"]["cutoff"] == 4.0


@pytest.mark.parametrize("form", ["atoms", "file"])
def test_reference_as_configurations(tmp_path, form):
    d = QUESTSDescriptor(cutoff=5.0, k=8)
    queries, reference = d.attach(_configs(2)), d.attach(_configs(3)[2:])
    ref = np.concatenate([a.arrays["descriptors"] for a in reference])
    if form == "file":
        write_extxyz(tmp_path / "ref.xyz", reference)
        given = str(tmp_path / "ref.xyz")
    else:
        given = reference
    score = QUESTSDeltaEntropyScore()
    out = score.compute_batch(queries, "DELTA_ENTROPY", reference_set=given, bandwidth=0.1)
    np.testing.assert_allclose(out[0], qe.delta_entropy(queries[0].arrays["descriptors"], ref, h=0.1), atol=1e-8)
    meta = out.metadata
    assert meta["reference_set"]["shape"] == list(ref.shape)
    assert meta["reference_set"]["sha256"] == _sha(ref)
    assert meta["reference_set"]["settings"] == d.settings == meta["descriptor_settings"]


def test_different_settings_refused_naming_both():
    queries = QUESTSDescriptor(cutoff=5.0, k=8).attach(_configs(2))
    reference = QUESTSDescriptor(cutoff=4.0, k=8).attach(_configs(1))  # same width, other cutoff
    with pytest.raises(InputError, match=r"(?s)settings differ.*\"cutoff\": 5\.0.*\"cutoff\": 4\.0"):
        QUESTSDeltaEntropyScore().compute_batch(queries, "DELTA_ENTROPY", reference_set=reference, bandwidth=0.1)
    ref = reference[0].arrays["descriptors"]
    with pytest.raises(InputError, match="settings differ"):
        QUESTSDeltaEntropyScore().compute_batch(queries, "DELTA_ENTROPY", reference_set=ref, bandwidth=0.1,
                                                reference_settings=reference[0].info["descriptors_settings"])
    # an array without settings cannot be compared: accepted, and its digest recorded
    out = QUESTSDeltaEntropyScore().compute_batch(queries, "DELTA_ENTROPY", reference_set=ref, bandwidth=0.1)
    assert out.metadata["reference_set"] == {"shape": list(ref.shape), "sha256": _sha(ref)}


def test_mixed_settings_in_one_dataset_refused():
    mixed = QUESTSDescriptor(cutoff=5.0, k=8).attach(_configs(1)) + QUESTSDescriptor(cutoff=4.0, k=8).attach(_configs(1))
    with pytest.raises(InputError, match="configuration 1 records descriptor settings"):
        QUESTSEfficiencyScore().compute(mixed, "EFFICIENCY", bandwidth=0.1)


def test_ltau_metadata_records_training_descriptors(tmp_path):
    rng = np.random.default_rng(0)
    train = rng.random((20, 15))
    np.save(tmp_path / "train.npy", train)
    score = LTAUForcesUQScore(train_descriptors=str(tmp_path / "train.npy"), error_pdfs=rng.random((6, 20)) + 0.1,
                              from_error_logs=True, nbins=5)
    queries = QUESTSDescriptor(cutoff=5.0, k=8).attach(_configs(1))
    out = score.compute_batch(queries, "UNCERTAINTY")
    assert out.metadata["train_descriptors"] == {"shape": [20, 15], "sha256": _sha(train),
                                                 "path": str(tmp_path / "train.npy")}
    assert out.metadata["descriptor_settings"]["cutoff"] == 5.0


def test_run_with_reference_configurations(tmp_path):
    from atomscore.jobs.workflow import LocalWorkflow

    d = QUESTSDescriptor(cutoff=5.0, k=8)
    queries, reference = d.attach(_configs(2)), d.attach(_configs(1))
    score = QUESTSDeltaEntropyScore()
    expected = score.compute_batch(queries, "DELTA_ENTROPY", reference_set=reference, bandwidth=0.1)
    workflow = LocalWorkflow(tmp_path / "jobs")
    ids = score.run("dh", queries, {"score_quantity": "DELTA_ENTROPY", "reference_set": reference, "bandwidth": 0.1},
                    workflow=workflow)
    workflow.block_until_completed(ids, timeout=300)
    out = score.data_from_calc_ids(ids, workflow)
    np.testing.assert_allclose(out[0].arrays["quests_delta_entropy_score"], expected[0], rtol=1e-12)
    other = QUESTSDescriptor(cutoff=4.0, k=8).attach(_configs(1))
    with pytest.raises(InputError, match="settings differ"):
        score.run("dh2", queries, {"score_quantity": "DELTA_ENTROPY", "reference_set": other}, workflow=workflow)


def test_ltau_compares_query_and_training_settings():
    rng = np.random.default_rng(2)
    d5, d4 = QUESTSDescriptor(cutoff=5.0, k=8), QUESTSDescriptor(cutoff=4.0, k=8)
    train = d5.attach(_configs(2))
    x = np.concatenate([a.arrays["descriptors"] for a in train])
    score = LTAUForcesUQScore(train_descriptors=x, error_pdfs=rng.random((6, len(x))) + 0.1, from_error_logs=True,
                              nbins=5, train_settings=d5.settings)
    out = score.compute_batch(d5.attach(_configs(1)), "UNCERTAINTY")
    assert out.metadata["train_descriptors"]["settings"] == d5.settings
    with pytest.raises(InputError, match=r"(?s)settings differ.*query.*\"cutoff\": 4\.0.*train_descriptors.*\"cutoff\": 5\.0"):
        score.compute_batch(d4.attach(_configs(1)), "UNCERTAINTY")
    with pytest.raises(InputError, match="train_settings"):
        LTAUForcesUQScore(train_descriptors=x, error_pdfs=rng.random((6, len(x))) + 0.1, from_error_logs=True,
                          train_settings="QUESTS")
