"""Tests of the LTAU estimator (atomscore.ltau.estimator) on real faiss indexes.

Independent references: numpy's ``np.histogram(density=True)`` (counts the top edge),
the straightforward gather-then-sum of the reference estimator (``pdfs[I].mean(1)``
summed against widths and midpoints), brute-force numpy distances, and hand-computable
distributions (uniform PDF: mean 0.5 on [0, 1]).
"""

import numpy as np
import pytest

from atomscore.errors import InputError
from atomscore.ltau.estimator import (INDEX_TYPES, LTAUEstimator, bin_midpoints, histogram_pdfs,
                                    index_defaults, make_bins, pdfs_from_error_logs)

N, DIM, EPOCHS = 1200, 8, 40


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(N, DIM))
    logs = rng.lognormal(mean=-3.0, sigma=1.0, size=(EPOCHS, N)) * (1 + x[:, 0] ** 2)
    queries = rng.normal(size=(300, DIM))
    return x, logs, queries


@pytest.fixture(scope="module")
def estimators(data):
    x, logs, _ = data
    return {t: LTAUEstimator.from_error_logs(x, logs, nbins=100, index_type=t) for t in INDEX_TYPES}


def gather_then_sum(est, queries, k):
    """The reference's way: gather (n, k, nbins) PDFs, average, sum against widths * midpoints."""
    _, idx = est.search(queries, k)
    mean_pdf = est.pdfs[idx].mean(axis=1)
    return (mean_pdf * est.widths * est.midpoints).sum(axis=1), mean_pdf


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_predict_equals_gather_then_sum_on_log_bins(estimators, data, index_type):
    """Precomputed expected errors == gather-then-sum (<= 1e-12 relative), every index type."""
    est = estimators[index_type]
    queries = data[2]
    ours = est.predict(queries, k=5)
    ref, ref_pdf = gather_then_sum(est, queries, 5)
    assert ours.shape == (len(queries),)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=0)
    full = est.predict_full(queries, k=5, pdfs=True)
    np.testing.assert_allclose(full.pdfs, ref_pdf, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(full.errors, ours)


def test_uniform_pdf_on_linear_bins_gives_half():
    """Uniform density on linear bins over [0, 1]: expected error exactly 0.5 (arithmetic
    midpoints; the reference's geometric midpoints would give less, and cannot use edge 0)."""
    bins = np.linspace(0.0, 1.0, 11)
    x = np.arange(6, dtype=float)[:, None]
    est = LTAUEstimator(x, np.ones((6, 10)), bins, bin_spacing="linear")
    np.testing.assert_allclose(est.predict(x, k=3), 0.5, rtol=1e-14)
    np.testing.assert_allclose(est.predict_full(x, k=2, atol=0.25).cdf, 0.25, rtol=1e-14)


def test_midpoints_by_spacing():
    """Geometric midpoints for log bins, arithmetic for linear bins (hand values)."""
    np.testing.assert_allclose(bin_midpoints([1.0, 4.0, 16.0], "log"), [2.0, 8.0])
    np.testing.assert_allclose(bin_midpoints([1.0, 4.0, 16.0], "linear"), [2.5, 10.0])


def test_histogram_counts_top_edge_like_numpy(data):
    """Per-point histograms equal np.histogram(density=True), which counts the top edge."""
    _, logs, _ = data
    bins = make_bins(logs, 50)
    assert logs.max() == bins[-1]  # the maximum sample sits on the top edge
    pdfs = histogram_pdfs(logs, bins)
    for i in range(0, N, 97):
        ref, _ = np.histogram(logs[:, i], bins=bins, density=True)
        np.testing.assert_allclose(pdfs[i], ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pdfs @ np.diff(bins), 1.0, rtol=1e-12)
    top = int(np.argmax(logs.max(axis=0)))
    assert pdfs[top, -1] > 0


def test_log_bins_from_min_max_like_the_reference(data):
    """Bins from error logs: nbins + 1 log-spaced edges from min to max of all errors."""
    _, logs, _ = data
    _, bins = pdfs_from_error_logs(logs, nbins=100)
    np.testing.assert_allclose(bins, np.logspace(np.log10(logs.min()), np.log10(logs.max()), 101), rtol=1e-14)
    _, lin = pdfs_from_error_logs(logs, nbins=10, spacing="linear", range_limits=(0.0, 1.0))
    np.testing.assert_allclose(lin, np.linspace(0, 1, 11))


def test_zero_errors_on_log_bins_refused_or_handled_with_range_limits(data):
    """Zero errors cannot define a log axis: refused naming range_limits; with range_limits
    they are counted in the first bin."""
    x, logs, _ = data
    zeroed = logs.copy()
    zeroed[0, :5] = 0.0
    with pytest.raises(InputError, match="range_limits"):
        pdfs_from_error_logs(zeroed, nbins=20)
    pdfs, bins = pdfs_from_error_logs(zeroed, nbins=20, range_limits=(1e-6, zeroed.max()))
    assert bins[0] == pytest.approx(1e-6)
    np.testing.assert_allclose(pdfs @ np.diff(bins), 1.0, rtol=1e-12)
    ref, _ = np.histogram(np.clip(zeroed[:, 0], 1e-6, None), bins=bins, density=True)
    np.testing.assert_allclose(pdfs[0], ref, rtol=1e-12)


def test_negative_errors_refused(data):
    x, logs, _ = data
    bad = logs.copy()
    bad[3, 7] = -0.1
    with pytest.raises(InputError, match=r">= 0.*index \(3, 7\)"):
        LTAUEstimator.from_error_logs(x, bad, nbins=10)


def test_error_vectors_and_ensemble(data):
    """(epochs, N, 3) vectors with norm == their magnitudes; an ensemble averages member PDFs."""
    x, logs, _ = data
    rng = np.random.default_rng(3)
    direction = rng.normal(size=logs.shape + (3,))
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    vectors = logs[..., None] * direction
    p_norm, b_norm = pdfs_from_error_logs(vectors, nbins=30, norm=True)
    p_mag, b_mag = pdfs_from_error_logs(logs, nbins=30)
    np.testing.assert_allclose(b_norm, b_mag, rtol=1e-12)
    np.testing.assert_allclose(p_norm, p_mag, rtol=1e-9, atol=1e-9 * p_mag.max())
    other = logs[: EPOCHS // 2] * 1.5  # a member with fewer epochs weighs the same
    p_ens, bins = pdfs_from_error_logs([logs, other], nbins=30)
    ref = 0.5 * (histogram_pdfs(logs, bins) + histogram_pdfs(other, bins))
    np.testing.assert_allclose(p_ens, ref, rtol=1e-12)
    with pytest.raises(InputError, match="same N"):
        pdfs_from_error_logs([logs, logs[:, :10]], nbins=30)


def test_cdf_in_unit_interval_and_exact_at_edges(estimators, data):
    """CDF at atol: within [0, 1], non-decreasing in atol, 0 / 1 outside the bins, and equal
    to the empirical fraction of logged samples <= atol when atol is a bin edge."""
    x, logs, queries = data
    est = estimators["IndexFlatL2"]
    previous = np.zeros(len(queries))
    for atol in [0.0, est.bins[0] / 2, *est.bins[::10], est.bins[-1] * 3]:
        cdf = est.predict_full(queries, k=5, atol=atol).cdf
        assert np.all(cdf >= 0) and np.all(cdf <= 1)
        assert np.all(cdf >= previous - 1e-15)
        previous = cdf
    assert np.all(est.predict_full(queries, atol=0.0).cdf == 0)
    np.testing.assert_allclose(est.predict_full(queries, atol=est.bins[-1]).cdf, 1.0)
    edge = est.bins[40]
    _, idx = est.search(queries, 3)
    empirical = (logs <= edge * (1 - 1e-12)).mean(axis=0)  # strictly below: the bin edge starts the next bin
    np.testing.assert_allclose(est.predict_full(queries, k=3, atol=edge).cdf, empirical[idx].mean(axis=1),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(InputError, match="atol"):
        est.predict_full(queries, atol=-1.0)


def test_distance_is_true_l2(estimators, data):
    """Mean k-NN distance is the Euclidean distance (faiss gives squared L2), checked by numpy."""
    x, _, queries = data
    est = estimators["IndexFlatL2"]
    full = est.predict_full(queries, k=4, distance=True)
    d = np.linalg.norm(queries[:, None, :] - x[None, :, :], axis=-1)
    ref = np.sort(d, axis=1)[:, :4].mean(axis=1)
    np.testing.assert_allclose(full.distance, ref, rtol=1e-4)  # faiss works in float32
    hnsw = estimators["IndexHNSWFlat"].predict_full(queries, k=4, distance=True)
    assert np.all(hnsw.distance >= ref * (1 - 1e-4))  # approximate search: never closer than exact
    np.testing.assert_allclose(np.median(hnsw.distance / ref), 1.0, atol=0.05)


@pytest.mark.parametrize("index_type", INDEX_TYPES)
def test_save_load_roundtrip(estimators, data, tmp_path, index_type):
    """save()/load() and save_index()/load_index() reproduce predictions exactly."""
    est = estimators[index_type]
    queries = data[2]
    before = est.predict_full(queries, k=5, distance=True)
    est.save(tmp_path / "est")
    loaded = LTAUEstimator.load(tmp_path / "est")
    after = loaded.predict_full(queries, k=5, distance=True)
    np.testing.assert_array_equal(after.errors, before.errors)
    np.testing.assert_array_equal(after.distance, before.distance)
    assert loaded.index_args == est.index_args and loaded.bin_spacing == est.bin_spacing
    est.save_index(tmp_path / "index.faiss")
    x, logs, _ = data
    other = LTAUEstimator(x, est.pdfs, est.bins, index_type=index_type, index_args=est.index_args)
    other.load_index(tmp_path / "index.faiss")
    np.testing.assert_array_equal(other.predict(queries, 5), before.errors)
    small = LTAUEstimator(x[:10], est.pdfs[:10], est.bins)
    with pytest.raises(InputError, match="expected 10 vectors" if index_type == "IndexFlatL2" else "expected a faiss"):
        small.load_index(tmp_path / "index.faiss")


def test_index_args_applied_and_defaults(data):
    """Given tuning keys reach faiss; missing keys get the documented defaults."""
    import faiss

    x, logs, queries = data
    est = LTAUEstimator.from_error_logs(x, logs, nbins=20, index_type="IndexHNSWFlat",
                                        index_args={"M": 8, "efSearch": 64})
    assert est.index_args == {"M": 8, "efConstruction": 40, "efSearch": 64}
    assert est.index.hnsw.efSearch == 64 and est.index.hnsw.efConstruction == 40
    ivf_args = {"nlist": 16, "M": 4, "nbits": 4, "nprobe": 16, "hnsw_m": 8}
    est = LTAUEstimator.from_error_logs(x, logs, nbins=20, index_type="HNSW+IVFPQ", index_args=ivf_args)
    ivf = faiss.downcast_index(faiss.extract_index_ivf(est.index))
    assert (ivf.nlist, ivf.nprobe, ivf.pq.M, ivf.pq.nbits) == (16, 16, 4, 4)
    assert faiss.downcast_index(ivf.quantizer).hnsw.efSearch == 16
    d = index_defaults("HNSW+IVFPQ", 100_000, 64)
    assert d == {"nlist": 1265, "M": 16, "nbits": 8, "hnsw_m": 32, "efConstruction": 40, "efSearch": 16, "nprobe": 8}
    assert index_defaults("HNSW+IVFPQ", 1000, 10)["M"] == 10


def test_bad_input_messages(data, estimators):
    x, logs, queries = data
    est = estimators["IndexFlatL2"]
    pdfs, bins = est.pdfs, est.bins
    with pytest.raises(InputError, match="IndexFlatL2.*IndexHNSWFlat.*HNSW\\+IVFPQ"):
        LTAUEstimator(x, pdfs, bins, index_type="IndexIVFFlat")
    with pytest.raises(InputError, match="unknown key.*efsearch"):
        LTAUEstimator(x, pdfs, bins, index_type="IndexHNSWFlat", index_args={"efsearch": 10})
    with pytest.raises(InputError, match="must divide the descriptor dimension 8"):
        LTAUEstimator(x, pdfs, bins, index_type="HNSW+IVFPQ", index_args={"M": 3})
    with pytest.raises(InputError, match="strictly increasing"):
        LTAUEstimator(x, pdfs, bins[::-1])
    zero_start = np.linspace(0, 1, bins.size)
    with pytest.raises(InputError, match="log bins must start at an edge > 0"):
        LTAUEstimator(x, pdfs, zero_start, bin_spacing="log")
    with pytest.raises(InputError, match=f"one row per training point.*\\({N}\\), got 10 rows"):
        LTAUEstimator(x[:10], pdfs, bins)
    with pytest.raises(InputError, match="integrates to"):
        LTAUEstimator(x, pdfs * 2, bins)
    with pytest.raises(InputError, match="dimension 8.*got 5"):
        est.predict(queries[:, :5])
    nan = queries.copy()
    nan[2, 1] = np.nan
    with pytest.raises(InputError, match="finite"):
        est.predict(nan)
    with pytest.raises(InputError, match=f"at most the {N}"):
        est.predict(queries, k=N + 1)
    with pytest.raises(InputError, match="bin_spacing"):
        make_bins(logs, 10, spacing="cubic")


def test_inputs_not_modified(data):
    x, logs, queries = data
    copies = [a.copy() for a in (x, logs, queries)]
    est = LTAUEstimator.from_error_logs(x, logs, nbins=10)
    est.predict_full(queries, k=2, pdfs=True, atol=0.1, distance=True)
    for a, b in zip((x, logs, queries), copies):
        np.testing.assert_array_equal(a, b)
