"""Dataset scores in row-block jobs, delta entropy in reference column blocks.

The reference is ``compute()`` / ``compute_batch()`` of the same score in this process (whose
values equal ``quests.entropy``, tests/test_quests_scores.py): the blocks, run as real job
processes through LocalWorkflow and through the real local SLURM (scripts/slurm-local, the
``slurm`` fixture of tests/test_slurm.py), must reduce to it within 1e-12 relative.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from atomscore.errors import InputError, JobFailedError
from atomscore.jobs.folder import read_status
from atomscore.jobs.workflow import LocalWorkflow
from atomscore.quests import QUESTSDeltaEntropyScore, QUESTSDiversityScore, QUESTSEfficiencyScore
from test_slurm import slurm, slurm_workflow  # noqa: F401 - the cluster fixture of tests/test_slurm.py

H = 0.3


def _dataset(n=13, seed=0):
    """Configurations of 6 to 14 atoms with 5-dimensional descriptors in a few clusters, and
    some far from the rest (rows whose sums need the log-sum-exp repair against small blocks)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        k = 6 + (i * 5) % 9
        atoms = Atoms(f"Si{k}", positions=rng.random((k, 3)) * 5, cell=[5, 5, 5], pbc=True)
        atoms.arrays["descriptors"] = rng.normal(size=(k, 5)) * 0.4 + (i % 3)
        atoms.arrays["selection_mask"] = rng.random(k) < 0.7
        out.append(atoms)
    return out


def _rel(a, b):
    """Largest difference relative to the value, or to 1 nat where dH crosses 0."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(b), 1.0)))


def _blocks_vs_compute(score, quantity, configs, args, workflow, batch_size):
    ids = score.run("blocks", configs, {"score_quantity": quantity, **args}, workflow=workflow, batch_size=batch_size)
    assert set(workflow.block_until_completed(ids, timeout=300).values()) == {"done"}
    (result,) = score.data_from_calc_ids(ids, workflow=workflow)
    return ids, result, score.compute(configs, quantity, **args)


@pytest.mark.parametrize("score_class,quantity,args", [
    (QUESTSEfficiencyScore, "EFFICIENCY", {"bandwidth": H}),
    (QUESTSDiversityScore, "DIVERSITY", {"bandwidth": [0.1, H], "apply_mask": True}),
    (QUESTSEfficiencyScore, "EFFICIENCY", {"bandwidth": [0.1, H], "apply_mask": True, "precision": "float32"}),
])
def test_row_blocks_reduce_to_compute(tmp_path, score_class, quantity, args):
    """13 configurations in blocks of 4 (4 jobs): one result equal to compute() to 1e-12
    relative (float32: within its documented 1e-5), same metadata; the dataset's descriptors are one file hard-linked into every folder."""
    configs = _dataset()
    score = score_class()
    wf = LocalWorkflow(tmp_path, nprocs=2)
    ids, result, expected = _blocks_vs_compute(score, quantity, configs, args, wf, batch_size=4)
    assert len(ids) == 4
    # float32: the blocks' tiles are not the single pass's (rows x all, not the upper triangle)
    tol = 1e-12 if args.get("precision", "float64") == "float64" else 1e-5
    assert _rel(result[score.result_key], expected) < tol
    assert result["_metadata"] == score.parse_for_storage(expected)["_metadata"]
    shared = [next((Path(i) / "args").glob("*dataset_rows*.npy")) for i in ids]
    assert len({os.stat(p).st_ino for p in shared}) == 1 and os.stat(shared[0]).st_nlink == 4


def test_one_job_by_default(tmp_path):
    """batch_size=1 (run()'s default) or one covering the dataset: one job, the plain result."""
    configs = _dataset(5)
    score = QUESTSEfficiencyScore()
    wf = LocalWorkflow(tmp_path, nprocs=1)
    for batch_size in (1, 5, 50):
        ids, result, expected = _blocks_vs_compute(score, "EFFICIENCY", configs, {"bandwidth": H}, wf, batch_size)
        assert len(ids) == 1 and result[score.result_key] == expected


def test_cancelled_block_reruns_alone(tmp_path):
    """One job at a time; the last block is cancelled while pending. Gathering refuses; the
    block rerun alone (``atomscore jobs rerun FOLDER``) completes the run: the finished blocks' results are the same files
    (inode and mtime), and the reduction equals compute()."""
    configs = _dataset()
    score = QUESTSEfficiencyScore()
    wf = LocalWorkflow(tmp_path, nprocs=1)
    ids = score.run("cancel", configs, {"score_quantity": "EFFICIENCY", "bandwidth": H}, workflow=wf, batch_size=3)
    assert len(ids) == 5
    wf.cancel(ids[-1:])
    states = wf.block_until_completed(ids, timeout=300, raise_on_failure=False)
    assert states[ids[-1]] == "cancelled" and all(states[i] == "done" for i in ids[:-1])
    with pytest.raises(JobFailedError):
        score.data_from_calc_ids(ids, workflow=wf)
    before = {i: os.stat(Path(i) / "score_results.json") for i in ids[:-1]}
    rerun = subprocess.run([sys.executable, "-m", "atomscore.cli", "jobs", "rerun", ids[-1]], capture_output=True,
                           text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert read_status(ids[-1])["state"] == "done"
    for i in ids[:-1]:
        after = os.stat(Path(i) / "score_results.json")
        assert (after.st_ino, after.st_mtime_ns) == (before[i].st_ino, before[i].st_mtime_ns)
        assert read_status(i)["state"] == "done"
    (result,) = QUESTSEfficiencyScore.data_from_calc_ids(ids)  # from the class: the folders hold everything
    assert _rel(result[score.result_key], score.compute(configs, "EFFICIENCY", bandwidth=H)) < 1e-12


def test_missing_or_foreign_blocks_refused(tmp_path):
    configs = _dataset()
    score = QUESTSDiversityScore()
    wf = LocalWorkflow(tmp_path, nprocs=2)
    ids = score.run("some", configs, {"score_quantity": "DIVERSITY", "bandwidth": H}, workflow=wf, batch_size=5)
    other = score.run("other", configs, {"score_quantity": "DIVERSITY", "bandwidth": H}, workflow=wf, batch_size=4)
    wf.block_until_completed(ids + other, timeout=300)
    with pytest.raises(InputError, match="row blocks"):
        score.data_from_calc_ids(ids[:-1], workflow=wf)
    with pytest.raises(InputError, match="do not belong to one run"):  # names the folders of each run (issue 21)
        score.data_from_calc_ids(ids + other[:1], workflow=wf)


def test_sample_size_with_blocks_refused_before_any_folder(tmp_path):
    with pytest.raises(InputError, match="sample_size"):
        QUESTSEfficiencyScore().run("x", _dataset(), {"score_quantity": "EFFICIENCY", "sample_size": 10},
                                    workflow=LocalWorkflow(tmp_path / "root"), batch_size=4)
    assert not (tmp_path / "root").exists() or not any((tmp_path / "root").rglob("job.json"))
    with pytest.raises(InputError, match="_dataset_rows"):
        QUESTSEfficiencyScore().run("x", _dataset(), {"score_quantity": "EFFICIENCY", "_dataset_rows": np.zeros((2, 5))},
                                    workflow=LocalWorkflow(tmp_path / "root"), batch_size=4)


def _reference(n=50, seed=3):
    rng = np.random.default_rng(seed)
    return np.vstack([rng.normal(size=(n, 5)) * 0.4, rng.normal(size=(n // 2, 5)) * 0.4 + 1.5])


def test_delta_entropy_column_blocks_reduce_to_compute_batch(tmp_path):
    """batch_size 5 x reference blocks of 20 rows (3 x 4 = 12 jobs, each folder holding only
    its block): per-atom dH equal to compute_batch over the whole reference (1e-12 relative,
    to 1 nat near 0; masked atoms NaN in both), and the reduced metadata that of an unblocked run."""
    configs, ref = _dataset(), _reference()
    score = QUESTSDeltaEntropyScore()
    args = {"reference_set": ref, "bandwidth": H, "apply_mask": True}
    wf = LocalWorkflow(tmp_path, nprocs=2)
    ids = score.run("columns", configs, {"score_quantity": "DELTA_ENTROPY", **args, "reference_block_size": 20},
                    workflow=wf, batch_size=5)
    assert len(ids) == 12
    assert sorted(np.load(next((Path(i) / "args").glob("*reference_set*.npy"))).shape[0] for i in ids[:4]) == [15, 20, 20, 20]
    assert set(wf.block_until_completed(ids, timeout=300).values()) == {"done"}
    results = score.data_from_calc_ids(ids, workflow=wf)
    expected = score.compute_batch(configs, "DELTA_ENTROPY", **args)
    assert len(results) == len(configs)
    for atoms, exp in zip(results, expected):
        got = atoms.arrays[score.result_key]
        assert np.array_equal(np.isnan(got), np.isnan(exp))
        ok = ~np.isnan(exp)
        assert _rel(got[ok], exp[ok]) < 1e-12
        assert "reference_block" not in atoms.info["_metadata"][score.OUTPUT_KEY]
    plain = score.parse_for_storage(expected, configs)[0].info["_metadata"]
    assert results[0].info["_metadata"] == plain


def test_reference_block_size_in_process_equals_whole(tmp_path):
    configs, ref = _dataset(), _reference()
    score = QUESTSDeltaEntropyScore()
    whole = np.concatenate(score.compute_batch(configs, reference_set=ref, bandwidth=H))
    blocked = np.concatenate(score.compute_batch(configs, reference_set=ref, bandwidth=H, reference_block_size=7))
    assert _rel(blocked, whole) < 1e-12
    with pytest.raises(InputError, match="reference_block_size"):
        score.compute_batch(configs, reference_set=ref, approx=True, reference_block_size=7)
    with pytest.raises(InputError, match="reference_block_size"):
        score.compute_batch(configs, reference_set=ref, reference_block_size=0)


@pytest.mark.slurm
def test_blocks_through_slurm(slurm, tmp_path):
    """The real local SLURM: efficiency and diversity in row blocks and a column-blocked dH
    reduce to compute() / compute_batch() (1e-12 relative)."""
    configs, ref = _dataset(), _reference()
    wf = slurm_workflow(tmp_path)
    for score, quantity in ((QUESTSEfficiencyScore(), "EFFICIENCY"), (QUESTSDiversityScore(), "DIVERSITY")):
        ids, result, expected = _blocks_vs_compute(score, quantity, configs, {"bandwidth": H}, wf, batch_size=5)
        assert len(ids) == 3 and _rel(result[score.result_key], expected) < 1e-12
    score = QUESTSDeltaEntropyScore()
    ids = score.run("columns", configs, {"score_quantity": "DELTA_ENTROPY", "reference_set": ref, "bandwidth": H,
                                         "reference_block_size": 40}, workflow=wf, batch_size=7)
    assert len(ids) == 4
    assert set(wf.block_until_completed(ids, timeout=300).values()) == {"done"}
    got = np.concatenate([a.arrays[score.result_key] for a in score.data_from_calc_ids(ids, workflow=wf)])
    assert _rel(got, np.concatenate(score.compute_batch(configs, reference_set=ref, bandwidth=H))) < 1e-12
