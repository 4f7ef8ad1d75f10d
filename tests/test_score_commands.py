"""The command line as a user meets it: entropy/dh/uq from structures, refusals, exit codes, logging.

References: the ``quests`` package (``quests.descriptor.get_descriptors`` and
``quests.entropy``) on the same structures for ``entropy`` and ``dh``; the in-memory
``LTAUForcesUQScore`` for ``uq``; the bytes of every input before and after a refused
command (sha256).
"""

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

from atomscore.io import read_configs, write_data

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).parent
H = 0.05
K = 8


def atomscore(*args, cwd):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "atomscore.cli", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, env=env, timeout=300)


def digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir()) if p.is_file()}


@pytest.fixture
def data(tmp_path):
    train = [bulk("Si", "diamond", 5.43, cubic=True) for _ in range(3)]
    for i, atoms in enumerate(train):
        atoms.rattle(0.05, seed=i)
    test = [bulk("Si", "diamond", 5.50, cubic=True), bulk("Si", "diamond", 5.35, cubic=True).repeat((1, 1, 2))]
    for i, atoms in enumerate(test):
        atoms.rattle(0.1, seed=10 + i)
    write_data(tmp_path / "train.traj", train)
    write_data(tmp_path / "test.xyz", test)
    n_train = sum(len(a) for a in train)
    np.save(tmp_path / "errors.npy", np.abs(np.random.default_rng(0).normal(size=(30, n_train))) * 0.1)
    return tmp_path, train, test


def quests_descriptors(configs):
    from quests.descriptor import get_descriptors

    return np.asarray(get_descriptors([a.copy() for a in configs], k=K, cutoff=5.0))


def test_entropy_equals_the_quests_package(data):
    from quests.entropy import diversity, entropy

    folder, train, _ = data
    proc = atomscore("entropy", "train.traj", "-b", H, "-k", K, "--json", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    x = quests_descriptors(train)
    assert result["entropy"] == pytest.approx(entropy(x, H), rel=1e-10)
    assert result["diversity"] == pytest.approx(diversity(x, H), rel=1e-10)
    assert result["efficiency"] == pytest.approx(entropy(x, H) / math.log(len(x)), rel=1e-10)
    assert result["descriptors"] == {"source": "computed by quests", "cutoff": 5.0, "k": K}
    assert result["bandwidth"] == H and result["n_environments"] == len(x)

    text = atomscore("entropy", "train.traj", "-b", H, "-k", K, cwd=folder)
    lines = text.stdout.splitlines()
    # issue 26: each value with what it means (exp(D): effective number of distinct environments)
    assert lines[0].startswith("entropy") and " nats " in lines[0]
    assert lines[1].startswith("diversity") and " nats " in lines[1] and "distinct environments" in lines[1]
    assert lines[2].startswith("efficiency") and "H / log N" in lines[2]
    assert float(lines[0].split()[1]) == pytest.approx(entropy(x, H), rel=1e-5)


def test_entropy_sample_prints_the_estimate_with_its_standard_error(data):
    """``--sample`` equals gaussian.estimate_* on the same descriptors and seed; the exact value
    (quests package) lies within a few standard errors; a sample of every row is exact."""
    from quests.entropy import entropy

    from atomscore.quests.kernels.gaussian import estimate_diversity, estimate_entropy

    folder, train, _ = data
    x = quests_descriptors(train)
    proc = atomscore("entropy", "train.traj", "-b", H, "-k", K, "--sample", 10, "--seed", 3, "--json", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    want = estimate_entropy(x, H, sample_size=10, seed=3)
    assert result["entropy"] == pytest.approx(want.value, rel=1e-12)
    assert result["standard_error"]["entropy"] == pytest.approx(want.standard_error, rel=1e-12)
    assert result["diversity"] == pytest.approx(estimate_diversity(x, H, sample_size=10, seed=3).value, rel=1e-12)
    assert result["sample_size"] == 10 and result["seed"] == 3
    assert abs(result["entropy"] - entropy(x, H)) < 5 * result["standard_error"]["entropy"]

    text = atomscore("entropy", "train.traj", "-b", H, "-k", K, "--sample", 10, cwd=folder).stdout.splitlines()
    assert "±" in text[0] and text[0].startswith("entropy")
    assert any("standard error" in line and "10 sampled" in line for line in text)

    every = json.loads(atomscore("entropy", "train.traj", "-b", H, "-k", K, "--sample", len(x), "--json",
                                 cwd=folder).stdout)
    assert every["entropy"] == pytest.approx(entropy(x, H), rel=1e-10)
    assert every["standard_error"]["entropy"] == 0.0

    bad = atomscore("entropy", "train.traj", "--sample", 1, cwd=folder)
    assert bad.returncode == 2 and "integer >= 2" in bad.stderr


def test_dh_equals_the_quests_package_and_records_its_settings(data):
    from quests.entropy import delta_entropy

    folder, train, test = data
    proc = atomscore("dh", "test.xyz", "--reference", "train.traj", "-b", H, "-k", K, "-o", "dh.db", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    out = read_configs(folder / "dh.db")
    expected = delta_entropy(quests_descriptors(test), quests_descriptors(train), H)
    got = np.concatenate([a.arrays["quests_delta_entropy_score"] for a in out])
    np.testing.assert_allclose(got, expected, rtol=1e-10)
    meta = out[0].info["_metadata"]["quests_delta_entropy"]
    assert meta["bandwidth"] == H and meta["descriptors"]["k"] == K and meta["reference"].endswith("train.traj")
    summary = proc.stdout.splitlines()
    assert "mean dH" in summary[0] and summary[1].split()[:2] == ["0", str(len(test[0]))]
    assert float(summary[2].split()[2]) == pytest.approx(np.mean(out[1].arrays["quests_delta_entropy_score"]),
                                                         rel=1e-3)


def test_dh_takes_reference_descriptors_from_a_npy_or_a_file_that_holds_them(data):
    folder, train, test = data
    assert atomscore("descriptors", "train.traj", "-k", K, "-o", "train_d.xyz", cwd=folder).returncode == 0
    np.save(folder / "ref.npy", quests_descriptors(train))
    a = atomscore("dh", "test.xyz", "--reference", "ref.npy", "-b", H, "-k", K, "-o", "a.xyz", cwd=folder)
    b = atomscore("dh", "test.xyz", "--reference", "train_d.xyz", "-b", H, "-k", K, "-o", "b.traj", cwd=folder)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    for x, y in zip(read_configs(folder / "a.xyz"), read_configs(folder / "b.traj")):
        np.testing.assert_allclose(x.arrays["quests_delta_entropy_score"], y.arrays["quests_delta_entropy_score"],
                                   rtol=1e-12)


def test_uq_equals_the_in_memory_score(data):
    from atomscore import LTAUForcesUQScore
    from atomscore.quests.descriptor import QUESTSDescriptor

    folder, train, test = data
    proc = atomscore("uq", "test.xyz", "--train-descriptors", "train.traj", "--error-logs", "errors.npy",
                     "-k", K, "--neighbors", 3, "-o", "uq.xyz", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    score = LTAUForcesUQScore(train_descriptors=quests_descriptors(train), error_pdfs=str(folder / "errors.npy"),
                              from_error_logs=True, nbins=100)
    expected = score.compute_batch(QUESTSDescriptor(k=K).attach(test, progress=False), "UNCERTAINTY",
                                   num_nearest_neighbors=3)
    for atoms, ref in zip(read_configs(folder / "uq.xyz"), expected):
        np.testing.assert_allclose(atoms.arrays["ltau_forces_uq_score"], ref, rtol=1e-6)
    assert "eV/Å" in proc.stdout


@pytest.mark.parametrize("args, message", [
    (["dh", "test.xyz", "--reference", "train.traj", "-o", "test.xyz", "--overwrite"], "also an input"),
    (["dh", "test.xyz", "--reference", "train.traj", "-o", "train.traj"], "also an input"),
    (["dh", "test.xyz", "--reference", "train.traj", "-o", "errors.npy"], "unknown suffix '.npy'"),
    (["dh", "test.xyz", "--reference", "train.traj", "-o", "missing/dh.xyz"], "does not exist"),
    (["dh", "test.xyz", "--reference", "nothere.xyz", "-o", "dh.xyz"], "file not found"),
    (["uq", "test.xyz", "--train-descriptors", "train.traj", "--error-logs", "errors.npy", "-o", "errors.npy",
      "--overwrite"], "also an input"),
    (["descriptors", "test.xyz", "-o", "test.xyz", "--overwrite"], "also an input"),
    (["entropy", "errors.npy"], "cannot read"),
    (["entropy", "train.traj", "-b", "0"], "expected a positive number"),
    (["dh", "test.xyz"], "the following arguments are required: --reference"),
    (["nosuchcommand"], "invalid choice"),
])
def test_refusals_are_one_line_exit_2_and_leave_inputs_untouched(data, args, message):
    folder, _, _ = data
    before = digest(folder)
    proc = atomscore(*args, cwd=folder)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert digest(folder) == before  # inputs byte-identical, nothing written


def test_an_existing_output_needs_overwrite(data):
    folder, _, _ = data
    (folder / "dh.xyz").write_text("my precious results\n")
    proc = atomscore("dh", "test.xyz", "--reference", "train.traj", "-o", "dh.xyz", cwd=folder)
    assert proc.returncode == 2 and "exists; results never overwrite" in proc.stderr
    assert (folder / "dh.xyz").read_text() == "my precious results\n"
    proc = atomscore("dh", "test.xyz", "--reference", "train.traj", "-o", "dh.xyz", "--overwrite", cwd=folder)
    assert proc.returncode == 0 and len(read_configs(folder / "dh.xyz")) == 2


def test_traceback_only_with_T_and_version(data):
    folder, _, _ = data
    proc = atomscore("entropy", "missing.xyz", "-T", cwd=folder)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "InputError" in proc.stderr
    from atomscore import __version__

    version = atomscore("--version", cwd=folder)
    assert version.returncode == 0 and version.stdout.strip() == f"atomscore {__version__}"


@pytest.fixture
def spec_dir(tmp_path):
    configs = [bulk("Si", "diamond", 5.3 + 0.05 * i, cubic=True) for i in range(3)]
    for atoms in configs:
        atoms.new_array("descriptors", atoms.positions.copy())
    write_data(tmp_path / "configs.db", configs)
    np.save(tmp_path / "weights.npy", np.array([1.0, 0.5, 0.25]))
    spec = {"batch_size": 1, "score": {"path_type": "t", "score_type": "toy_scores:WeightedDistanceScore",
                                       "query_configs_path": "configs.db", "score_args": {"weights": "weights.npy"},
                                       "compute_args": {"score_quantity": "UNCERTAINTY"}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    dataset = {"score": {"path_type": "d", "score_type": "toy_scores:MeanDescriptorScore",
                         "dataset_path": "configs.db", "score_args": {},
                         "compute_args": {"score_quantity": "DIVERSITY"}}}
    (tmp_path / "dataset.json").write_text(json.dumps(dataset))
    return tmp_path, configs


@pytest.mark.parametrize("output, message", [
    ("configs.db", "also an input"), ("spec.json", "also an input"), ("weights.npy", "also an input"),
    ("results.txt", "unknown suffix"), ("nodir/out.xyz", "does not exist")])
def test_run_refuses_a_bad_output_before_any_job_folder(spec_dir, output, message):
    folder, _ = spec_dir
    before = digest(folder)
    proc = atomscore("run", "spec.json", "--root", "jobs", "-o", output, "--overwrite", cwd=folder)
    assert proc.returncode == 2 and message in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr
    assert digest(folder) == before and not (folder / "jobs").exists()


def test_run_reads_a_database_writes_by_suffix_logs_each_job_and_prints_dataset_values(spec_dir):
    from toy_scores import MeanDescriptorScore, WeightedDistanceScore

    folder, configs = spec_dir
    proc = atomscore("run", "spec.json", "--root", "jobs", "-o", "out.traj", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count(" done (") == 3  # not a terminal: one log line per finished job
    expected = WeightedDistanceScore(np.array([1.0, 0.5, 0.25])).compute_batch(configs, "UNCERTAINTY")
    for atoms, ref in zip(read_configs(folder / "out.traj"), expected):
        np.testing.assert_array_equal(atoms.arrays["toy_distance_score"], ref)
    quiet = atomscore("run", "spec.json", "--root", "jobs", "-o", "out.traj", "-q", "--overwrite", cwd=folder)
    assert quiet.returncode == 0 and quiet.stderr == ""

    proc = atomscore("run", "dataset.json", "--root", "jobs", "-o", "mean.json", cwd=folder)
    assert proc.returncode == 0, proc.stderr
    value = MeanDescriptorScore().compute(configs, "DIVERSITY")
    line = [x for x in proc.stdout.splitlines() if x.startswith("toy_mean_score = ")]
    assert line and float(line[0].split("=")[1]) == pytest.approx(value, rel=1e-12)
    refused = atomscore("run", "dataset.json", "--root", "jobs", "-o", "mean.xyz", cwd=folder)
    assert refused.returncode == 2 and "expected one of .json" in refused.stderr


def test_a_failed_job_is_exit_1_in_one_line(spec_dir):
    folder, _ = spec_dir
    spec = json.loads((folder / "spec.json").read_text())
    spec["score"]["compute_args"]["action"] = "raise"
    (folder / "bad.json").write_text(json.dumps(spec))
    proc = atomscore("run", "bad.json", "--root", "jobs", "-q", cwd=folder)
    assert proc.returncode == 1 and "3 job(s) failed" in proc.stderr and "toy failure requested" in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr


def test_every_command_has_examples_in_its_help(tmp_path):
    from atomscore.cli import build_parser

    parser = build_parser()
    commands = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"][0].choices
    for name in commands:
        proc = atomscore(name, "--help", cwd=tmp_path)
        assert proc.returncode == 0 and "examples:" in proc.stdout and "atomscore " + name in proc.stdout, name
