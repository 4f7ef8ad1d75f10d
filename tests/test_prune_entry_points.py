"""``prune=True`` where users ask for it: the QUESTS scores, their block jobs and the commands.

Data: QUESTS descriptors (``QUESTSDescriptor``) of two phases, rattled diamond Si and fcc Cu,
so the kernel has far-apart groups of environments for the pruning to skip. Reference: the
same score or command without pruning (the dense sums, equal to the ``quests`` package in
tests/test_quests_scores.py and tests/test_score_commands.py): pruned values must lie within
the tolerance (nats for ``log p``, dH, H and D; relative for the efficiency) of them, and the
tolerance used (1e-10 in float64, 1e-7 in float32 by default) must be in the result's metadata.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from atomscore.errors import InputError
from atomscore.io import read_configs, write_data
from atomscore.jobs.workflow import LocalWorkflow
from atomscore.quests import QUESTSDeltaEntropyScore, QUESTSDiversityScore, QUESTSEfficiencyScore
from atomscore.quests.descriptor import QUESTSDescriptor

ROOT = Path(__file__).resolve().parents[1]
H = 0.015  # small next to the distance between the phases' environments: much to skip
TOL64, TOL32 = 1e-10, 1e-7  # the kernel's default tolerances (gaussian.prune_option)


def _two_phases(n=2, seed=0):
    out = []
    phases = (bulk("Si", "diamond", a=5.43, cubic=True) * (2, 2, 2), bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3))
    for i in range(n):
        for phase in phases:
            atoms = phase.copy()
            atoms.rattle(0.05, seed=seed + i)
            out.append(atoms)
    return out


@pytest.fixture(scope="module")
def configs():
    return QUESTSDescriptor().attach(_two_phases())


@pytest.mark.parametrize("score_class", [QUESTSEfficiencyScore, QUESTSDiversityScore])
def test_dataset_scores_pruned_equal_dense_and_record_the_tolerance(configs, score_class):
    score = score_class()
    dense = score.compute(configs, bandwidth=H)
    pruned = score.compute(configs, bandwidth=H, prune=True)
    assert abs(float(pruned) - float(dense)) <= TOL64 * max(1.0, abs(float(dense)))
    meta = score.metadata_of(pruned)
    assert meta["prune_tolerance"] == TOL64
    # 0 < bound: the pruned pass skipped something (the dense fallback reports 0); <= the tolerance
    assert 0 < meta["prune_skipped_bound"] <= TOL64
    assert "prune_tolerance" not in score.metadata_of(dense)  # dense results keep their metadata
    # float32: its own default tolerance, per bandwidth; within float32's 1e-5 of the float64 value
    both = score.compute(configs, bandwidth=[H, 0.05], prune=True, precision="float32")
    meta32 = score.metadata_of(both)
    assert meta32["prune_tolerance"] == TOL32 and len(meta32["prune_skipped_bound"]) == 2
    assert max(meta32["prune_skipped_bound"]) <= TOL32
    assert np.allclose(both, score.compute(configs, bandwidth=[H, 0.05]), rtol=1e-5, atol=0)
    # information(): all three measures, the stated tolerance and the given one
    info = score.information(configs, bandwidth=H, prune=True, prune_tolerance=1e-6)
    exact = score.information(configs, bandwidth=H)
    for name in ("entropy", "diversity", "efficiency"):
        assert abs(info[name] - exact[name]) <= 1e-6 * max(1.0, abs(exact[name]))
    assert score.metadata_of(info)["prune_tolerance"] == 1e-6


def test_delta_entropy_pruned_equals_dense_with_reference_blocks(configs):
    score = QUESTSDeltaEntropyScore()
    reference, queries = configs[:2], configs[2:]
    dense = score.compute_batch(queries, reference_set=reference, bandwidth=H)
    for extra in ({}, {"reference_block_size": 100}):
        pruned = score.compute_batch(queries, reference_set=reference, bandwidth=H, prune=True, **extra)
        for a, b in zip(pruned, dense):
            assert np.max(np.abs(a - b)) <= TOL64 * np.max(np.maximum(1.0, np.abs(b)))
        meta = score.metadata_of(pruned)
        assert meta["prune_tolerance"] == TOL64 and 0 <= meta["prune_skipped_bound"] <= TOL64
    one = score.compute(queries[0], reference_set=reference, bandwidth=H, prune=True, precision="float32")
    assert score.metadata_of(one)["prune_tolerance"] == TOL32
    # float32: pruning adds nothing next to float32's own rounding (dense float32 against float64)
    rounding = np.max(np.abs(score.compute(queries[0], reference_set=reference, bandwidth=H, precision="float32")
                             - dense[0]))
    assert np.max(np.abs(one - dense[0])) <= 2 * rounding + TOL32


def test_refusals_name_the_argument(configs, tmp_path):
    eff, dh = QUESTSEfficiencyScore(), QUESTSDeltaEntropyScore()
    for score, args in ((eff, {"score_quantity": "EFFICIENCY"}),
                        (dh, {"score_quantity": "DELTA_ENTROPY", "reference_set": configs, "approx": True})):
        bad = {**args, "prune": True} if "approx" in args else {**args, "prune_tolerance": 1e-6}
        with pytest.raises(InputError, match="^prune"):  # run(): refused before any job folder
            score.run("x", configs, bad, workflow=LocalWorkflow(tmp_path / "root"), batch_size=2)
    assert not any((tmp_path / "root").rglob("job.json"))
    with pytest.raises(InputError, match="^prune_tolerance: applies with prune=True only"):
        eff.compute(configs, bandwidth=H, prune_tolerance=1e-6)
    with pytest.raises(InputError, match="^prune_tolerance: applies with prune=True only"):
        dh.compute_batch(configs, reference_set=configs, prune_tolerance=1e-6)
    with pytest.raises(InputError, match="prune_tolerance: expected a relative bound below 1"):
        eff.compute(configs, prune=True, prune_tolerance=2.0)
    with pytest.raises(InputError, match="^prune: .*not an estimate .sample_size"):
        eff.information(configs, prune=True, sample_size=10)
    with pytest.raises(InputError, match="^prune: .*not an estimate .approx"):
        dh.compute_batch(configs, reference_set=configs, prune=True, approx=True)
    with pytest.raises(InputError, match="^prune: .*not an estimate .approx"):
        dh.compute_batch(configs, reference_set=configs, prune=True, approx="sampled")
    pytest.importorskip("torch")
    with pytest.raises(InputError, match="^prune: .*numpy backend only, got backend='torch'"):
        eff.compute(configs, prune=True, backend="torch")
    with pytest.raises(InputError, match="^prune: .*numpy backend only, got backend='torch'"):
        dh.compute_batch(configs, reference_set=configs, prune=True, backend="torch")


def _row_block_results(score, configs, args, batch_size=2):
    """The stored results of a row-block run's jobs, computed in this process (run_batch, as a job does)."""
    return [score.parse_for_storage(score.run_batch(batch, "EFFICIENCY", job_args))
            for batch, job_args in score.plan_jobs(configs, args, batch_size)]


def test_row_blocks_carry_the_pruning_and_never_mix_with_dense(configs):
    score = QUESTSEfficiencyScore()
    pruned = _row_block_results(score, configs, {"bandwidth": H, "prune": True})
    dense = _row_block_results(score, configs, {"bandwidth": H})
    assert len(pruned) == 2
    (result,) = QUESTSEfficiencyScore.reduce_job_results(pruned)
    expected = score.compute(configs, bandwidth=H)
    assert abs(result[score.result_key] - float(expected)) <= TOL64
    assert result["_metadata"]["prune_tolerance"] == TOL64 and 0 <= result["_metadata"]["prune_skipped_bound"] <= TOL64
    with pytest.raises(InputError, match="row block 1 was computed with other settings.*prune_tolerance"):
        QUESTSEfficiencyScore.reduce_job_results([pruned[0], dense[1]])
    tighter = _row_block_results(score, configs, {"bandwidth": H, "prune": True, "prune_tolerance": 1e-12})
    with pytest.raises(InputError, match="prune_tolerance: 1e-12 vs 1e-10"):
        QUESTSEfficiencyScore.reduce_job_results([pruned[0], tighter[1]])


def test_column_block_jobs_pruned_reduce_to_dense(tmp_path, configs):
    """Real job processes (LocalWorkflow): 2 batches x 2 reference blocks, pruned; the reduced
    dH equals the dense in-process compute_batch to the tolerance and records it."""
    score = QUESTSDeltaEntropyScore()
    reference = np.concatenate([a.arrays["descriptors"] for a in configs[:2]])
    args = {"reference_set": reference, "bandwidth": H, "reference_settings": QUESTSDescriptor().settings}
    wf = LocalWorkflow(tmp_path, nprocs=2)
    ids = score.run("pruned", configs[2:], {"score_quantity": "DELTA_ENTROPY", **args, "prune": True,
                                           "reference_block_size": 100}, workflow=wf, batch_size=1)
    assert len(ids) == 4
    assert set(wf.block_until_completed(ids, timeout=300).values()) == {"done"}
    results = score.data_from_calc_ids(ids, workflow=wf)
    expected = score.compute_batch(configs[2:], **args)
    for atoms, exp in zip(results, expected):
        assert np.max(np.abs(atoms.arrays[score.result_key] - exp)) <= TOL64 * np.max(np.maximum(1.0, np.abs(exp)))
        meta = atoms.info["_metadata"][score.OUTPUT_KEY]
        assert meta["prune_tolerance"] == TOL64 and 0 <= meta["prune_skipped_bound"] <= TOL64


# ----------------------------------------------------------------------------- the commands

def atomscore(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "atomscore.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("prune_cli")
    structures = _two_phases()
    write_data(path / "pool.xyz", structures)
    write_data(path / "test.xyz", _two_phases(1, seed=7))
    return path


def test_entropy_prune_gives_the_dense_numbers_and_states_the_tolerance(folder):
    runs = {}
    for name, extra in (("dense", []), ("pruned", ["--prune"])):
        proc = atomscore("entropy", "pool.xyz", "-b", H, "--json", *extra, cwd=folder)
        assert proc.returncode == 0, proc.stderr
        runs[name] = json.loads(proc.stdout)
    for key in ("entropy", "diversity", "efficiency"):
        assert abs(runs["pruned"][key] - runs["dense"][key]) <= TOL64 * max(1.0, abs(runs["dense"][key]))
    assert runs["pruned"]["prune_tolerance"] == TOL64 and runs["dense"]["prune_tolerance"] is None
    printed = atomscore("entropy", "pool.xyz", "-b", H, "--prune", "--prune-tolerance", "1e-8", cwd=folder)
    assert printed.returncode == 0 and "tolerance of 1e-08" in printed.stdout


def test_dh_and_select_prune_give_the_dense_numbers(folder):
    key = "quests_delta_entropy_score"
    for name, extra in (("dense", []), ("pruned", ["--prune"])):
        proc = atomscore("dh", "test.xyz", "--reference", "pool.xyz", "-b", H, "-o", f"dh_{name}.xyz", *extra,
                         cwd=folder)
        assert proc.returncode == 0, proc.stderr
    dense, pruned = read_configs(folder / "dh_dense.xyz"), read_configs(folder / "dh_pruned.xyz")
    for a, b in zip(pruned, dense):
        assert np.max(np.abs(a.arrays[key] - b.arrays[key])) <= TOL64 * np.max(np.maximum(1.0, np.abs(b.arrays[key])))
    assert "tolerance of 1e-10" in proc.stdout
    summaries = {}
    for name, extra in (("dense", []), ("pruned", ["--prune"])):
        proc = atomscore("select", "pool.xyz", "-n", 2, "-b", H, "-o", f"sel_{name}.xyz", "--summary",
                         f"sel_{name}.json", *extra, cwd=folder)
        assert proc.returncode == 0, proc.stderr
        summaries[name] = json.loads((folder / f"sel_{name}.json").read_text())
    assert summaries["pruned"]["indices"] == summaries["dense"]["indices"]
    assert summaries["pruned"]["prune_tolerance"] == TOL64 and summaries["dense"]["prune_tolerance"] is None
    assert abs(summaries["pruned"]["pool"]["entropy"] - summaries["dense"]["pool"]["entropy"]) <= TOL64 * 10


@pytest.mark.parametrize("args,message", [
    (["entropy", "pool.xyz", "--prune-tolerance", "1e-8"], "--prune-tolerance: applies with prune=True only"),
    (["entropy", "pool.xyz", "--prune", "--sample", "10"], "--prune: prunes the exact kernel sums, not an estimate "
                                                            "(--sample: drop one of them)"),
    (["select", "pool.xyz", "-n", "1", "-o", "x.xyz", "--prune-tolerance", "1e-8"], "--prune-tolerance: applies"),
])
def test_prune_refusals_are_one_line_before_any_work(folder, args, message):
    proc = atomscore(*args, cwd=folder)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1
    assert not (folder / "x.xyz").exists()
