"""Tests of LTAUForcesUQScore (atomscore.ltau) with real faiss indexes and real job folders.

References: the estimator's straightforward gather-then-sum (the reference's method),
numpy histograms per training atom with geometric midpoints computed here by hand, and
in-memory ``compute_batch`` for the job-folder path. The conformance data (reference
outputs) are checked in tests/conformance.
"""

import numpy as np
import pytest
from ase import Atoms

from atomscore import LTAUForcesUQScore, ScoreQuantity
from atomscore.errors import InputError
from atomscore.ltau.estimator import INDEX_TYPES

N, DIM, EPOCHS = 600, 6, 30


@pytest.fixture(scope="module")
def train():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(N, DIM))
    logs = rng.lognormal(-2.5, 0.8, size=(EPOCHS, N))
    return x, logs


def make_configs(sizes, dim=DIM, seed=5, key="descriptors"):
    rng = np.random.default_rng(seed)
    configs = []
    for n in sizes:
        atoms = Atoms("Si" * n, positions=rng.uniform(0, 5, size=(n, 3)), cell=[5, 5, 5], pbc=True)
        atoms.arrays[key] = rng.normal(size=(n, dim))
        configs.append(atoms)
    return configs


def hand_expected_errors(logs, nbins=100):
    """Independent: log bins from min/max, np.histogram per atom, geometric midpoints."""
    bins = np.logspace(np.log10(logs.min()), np.log10(logs.max()), nbins + 1)
    mid = np.sqrt(bins[1:] * bins[:-1])
    counts = np.array([np.histogram(logs[:, i], bins=bins)[0] for i in range(logs.shape[1])])
    return (counts / logs.shape[0]) @ mid


def test_compute_batch_matches_hand_computation(train):
    """Flat index, k=1 and k=3: each atom gets the mean hand-computed expected error of its
    exact nearest training atoms (neighbours by numpy brute force)."""
    x, logs = train
    score = LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=100)
    configs = make_configs([7, 1, 12])
    expected = hand_expected_errors(logs)
    for k in (1, 3):
        results = score.compute_batch(configs, ScoreQuantity.UNCERTAINTY, num_nearest_neighbors=k)
        assert [r.shape for r in results] == [(7,), (1,), (12,)]
        for atoms, res in zip(configs, results):
            d = np.linalg.norm(atoms.arrays["descriptors"][:, None] - x[None], axis=-1)
            nearest = np.argsort(d, axis=1)[:, :k]
            np.testing.assert_allclose(res, expected[nearest].mean(axis=1), rtol=1e-10)
    single = score.compute(configs[2], "uncertainty", num_nearest_neighbors=3)
    np.testing.assert_array_equal(single, results[2])


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_every_index_type_equals_gather_then_sum(train, index_type):
    """Every index type: scores equal the gather-then-sum on the same neighbours (1e-12)."""
    x, logs = train
    args = {"nlist": 8, "M": 3, "nbits": 4} if index_type == "HNSW+IVFPQ" else None
    score = LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=50, index_type=index_type, index_args=args)
    configs = make_configs([20, 9])
    out = np.concatenate(score.compute_batch(configs, "UNCERTAINTY", num_nearest_neighbors=4))
    est = score.estimator
    _, idx = est.search(np.concatenate([c.arrays["descriptors"] for c in configs]), 4)
    ref = (est.pdfs[idx].mean(axis=1) * est.widths * est.midpoints).sum(axis=1)
    np.testing.assert_allclose(out, ref, rtol=1e-12, atol=0)


def test_pdfs_given_directly_and_npy_paths(train, tmp_path):
    """PDFs + bins given directly (and as .npy paths) give the same scores as from logs."""
    x, logs = train
    from_logs = LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=40, bin_spacing="linear")
    est = from_logs.estimator
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "pdfs.npy", est.pdfs)
    np.save(tmp_path / "bins.npy", est.bins)
    np.save(tmp_path / "logs.npy", logs)
    direct = LTAUForcesUQScore(str(tmp_path / "x.npy"), str(tmp_path / "pdfs.npy"), bins=str(tmp_path / "bins.npy"),
                               bin_spacing="linear")
    via_path = LTAUForcesUQScore(str(tmp_path / "x.npy"), str(tmp_path / "logs.npy"), from_error_logs=True,
                                 nbins=40, bin_spacing="linear")
    configs = make_configs([5, 6])
    a = from_logs.compute_batch(configs, "UNCERTAINTY", num_nearest_neighbors=2)
    for other in (direct, via_path):
        for r1, r2 in zip(a, other.compute_batch(configs, "UNCERTAINTY", num_nearest_neighbors=2)):
            np.testing.assert_allclose(r2, r1, rtol=1e-14)
    assert direct._init_args["bins"] == str(tmp_path / "bins.npy")


def test_ensemble_and_error_vectors(train):
    """A list of logs (ensemble) and (epochs, N, 3) vectors with error_logs_norm are accepted."""
    x, logs = train
    vec = np.zeros(logs.shape + (3,))
    vec[..., 2] = logs
    a = LTAUForcesUQScore(x, vec, from_error_logs=True, error_logs_norm=True, nbins=30)
    b = LTAUForcesUQScore(x, [logs, logs], from_error_logs=True, nbins=30)
    c = LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=30)
    configs = make_configs([8])
    ref = c.compute(configs[0], "UNCERTAINTY")
    np.testing.assert_allclose(a.compute(configs[0], "UNCERTAINTY"), ref, rtol=1e-12)
    np.testing.assert_allclose(b.compute(configs[0], "UNCERTAINTY"), ref, rtol=1e-12)
    with pytest.raises(InputError, match="error_logs_norm=True expects"):
        LTAUForcesUQScore(x, logs[..., None], from_error_logs=True, error_logs_norm=True)


def test_metadata_flat_like_the_reference(train, tmp_path):
    """save_results writes the score per atom and the reference's flat metadata keys on
    every configuration (bins, index_type, index_args, num_nearest_neighbors)."""
    from ase.io import read

    x, logs = train
    score = LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=100)
    configs = make_configs([4, 3])
    results = score.compute_batch(configs, ScoreQuantity.UNCERTAINTY, num_nearest_neighbors=2)
    path = score.save_results(results, tmp_path, configs)
    back = read(path, ":")
    for atoms, res in zip(back, results):
        np.testing.assert_allclose(atoms.arrays["ltau_forces_uq_score"], res, rtol=1e-12)
        np.testing.assert_allclose(atoms.info["ltau_forces_uq_bins"], score.estimator.bins, rtol=1e-15)
        assert len(atoms.info["ltau_forces_uq_bins"]) == 101
        assert atoms.info["ltau_forces_uq_index_type"] == "IndexFlatL2"
        assert str(atoms.info["ltau_forces_uq_index_args"]) == "None"
        assert atoms.info["ltau_forces_uq_num_nearest_neighbors"] == 2
    hnsw = LTAUForcesUQScore(x, logs, from_error_logs=True, index_type="IndexHNSWFlat", index_args={"efSearch": 32})
    hnsw.compute_batch(configs, "UNCERTAINTY")
    assert hnsw._last_metadata["index_args"] == {"M": 32, "efConstruction": 40, "efSearch": 32}


def test_run_through_job_folders_equals_in_memory(train, tmp_path):
    """score.run with LocalWorkflow (real subprocess jobs, arrays as .npy) == compute_batch."""
    from atomscore.jobs.workflow import LocalWorkflow

    x, logs = train
    score = LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=100, index_type="IndexHNSWFlat",
                              index_args={"efSearch": 200})
    configs = make_configs([5, 4, 6])
    workflow = LocalWorkflow(root_directory=str(tmp_path), nprocs=2)
    ids = score.run("ltau_test", configs, {"score_quantity": "UNCERTAINTY", "num_nearest_neighbors": 2},
                    workflow=workflow, batch_size=2)
    assert len(ids) == 2
    workflow.block_until_completed(ids, timeout=120)
    back = score.data_from_calc_ids(ids, workflow=workflow)
    expected = score.compute_batch(configs, "UNCERTAINTY", num_nearest_neighbors=2)
    for atoms, res in zip(back, expected):
        np.testing.assert_allclose(atoms.arrays["ltau_forces_uq_score"], res, rtol=1e-12)
        assert atoms.info["ltau_forces_uq_num_nearest_neighbors"] == 2


def test_bad_input(train):
    x, logs = train
    score = LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=20)
    good = make_configs([3, 3])
    wrong_dim = good + make_configs([2], dim=DIM + 1)
    with pytest.raises(InputError, match=rf"configuration 2.*dimension {DIM}.*got {DIM + 1}"):
        score.compute_batch(wrong_dim, "UNCERTAINTY")
    missing = good + make_configs([2], key="soap")
    with pytest.raises(InputError, match=r"configuration 2 has no atoms.arrays\['descriptors'\].*soap"):
        score.compute_batch(missing, "UNCERTAINTY")
    with pytest.raises(InputError, match="configuration 2 has no"):
        score.check_compute_args(missing, "UNCERTAINTY", {"descriptors_key": "descriptors"})
    with pytest.raises(InputError, match="UNCERTAINTY"):
        score.compute_batch(good, "DIVERSITY")
    with pytest.raises(InputError, match=f"at most the {N}"):
        score.compute_batch(good, "UNCERTAINTY", num_nearest_neighbors=N + 1)
    nan = make_configs([3])
    nan[0].arrays["descriptors"][1, 2] = np.inf
    with pytest.raises(InputError, match="finite"):
        score.compute(nan[0], "UNCERTAINTY")
    with pytest.raises(InputError, match="'IndexFlatL2', 'IndexHNSWFlat', 'HNSW\\+IVFPQ'"):
        LTAUForcesUQScore(x, logs, from_error_logs=True, index_type="IVFFlat")
    with pytest.raises(InputError, match=f"one row per training point.*\\({N}\\), got 10"):
        LTAUForcesUQScore(x[:10], logs, from_error_logs=True)
    negative = logs.copy()
    negative[0, 0] = -1.0
    with pytest.raises(InputError, match=">= 0"):
        LTAUForcesUQScore(x, negative, from_error_logs=True)
    with pytest.raises(InputError, match="bins: expected the"):
        LTAUForcesUQScore(x, np.ones((N, 10)))
    with pytest.raises(InputError, match="strictly increasing"):
        LTAUForcesUQScore(x, np.ones((N, 2)), bins=[0.1, 0.3, 0.2])
    with pytest.raises(InputError, match="log bins must start"):
        LTAUForcesUQScore(x, np.ones((N, 2)), bins=[0.0, 0.5, 1.0])
    with pytest.raises(InputError, match="range_limits"):
        LTAUForcesUQScore(x, np.where(logs < np.median(logs), 0.0, logs), from_error_logs=True)


def test_inputs_not_modified(train):
    x, logs = train
    x0, logs0 = x.copy(), logs.copy()
    configs = make_configs([4, 2])
    before = [(c.copy(), dict(c.info), {k: v.copy() for k, v in c.arrays.items()}) for c in configs]
    score = LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=20)
    results = score.compute_batch(configs, "UNCERTAINTY", num_nearest_neighbors=2)
    score.parse_for_storage(results, configs)
    np.testing.assert_array_equal(x, x0)
    np.testing.assert_array_equal(logs, logs0)
    for c, (_, info, arrays) in zip(configs, before):
        assert c.info == info and set(c.arrays) == set(arrays)
        for k, v in arrays.items():
            np.testing.assert_array_equal(c.arrays[k], v)
