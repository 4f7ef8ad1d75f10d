"""LTAU estimator memory layout (issue 16): only the expected errors in memory by default,
the PDFs in a memory-mapped temporary file (or float64/float32 in memory on request).

Independent reference: the estimator as it was before the change, written out here -- PDFs
from ``np.histogram(density=True)`` per training point, ``weights = pdfs * widths`` held
whole, expected errors ``weights @ midpoints``, the CDF ``weights[:, :b].sum + pdf_b (atol -
e_b)`` over all training points, gathered by the neighbours of a brute-force numpy k-NN.
"""

import numpy as np
import pytest

import atomscore.ltau.estimator as L
from atomscore.errors import InputError
from atomscore.ltau.estimator import LTAUEstimator, pdfs_from_error_logs

N, DIM, EPOCHS, K = 900, 6, 30, 4


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(N, DIM))
    logs = rng.lognormal(mean=-3.0, sigma=1.0, size=(EPOCHS, N)) * (1 + x[:, 0] ** 2)
    queries = rng.normal(size=(200, DIM))
    return x, logs, queries


def old_estimator(x, logs, queries, nbins, atol):
    """The pre-issue-16 numbers: every array held whole, CDF over all training points."""
    low, high = logs.min(), logs.max()
    bins = np.logspace(np.log10(low), np.log10(high), nbins + 1)
    bins[0], bins[-1] = low, high
    pdfs = np.stack([np.histogram(np.clip(logs[:, i], low, high), bins=bins, density=True)[0]
                     for i in range(logs.shape[1])])
    widths = np.diff(bins)
    mid = np.sqrt(bins[:-1] * bins[1:])
    weights = pdfs * widths
    expected = weights @ mid
    b = int(np.searchsorted(bins, atol, side="right")) - 1
    cdf_train = np.clip(weights[:, :b].sum(axis=1) + pdfs[:, b] * (atol - bins[b]), 0, 1)
    d2 = ((queries[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    idx = np.argsort(d2, axis=1, kind="stable")[:, :K]
    return expected[idx].mean(axis=1), pdfs[idx].mean(axis=1), cdf_train[idx].mean(axis=1), cdf_train, pdfs


@pytest.mark.parametrize("storage", ["disk", "float64"])
def test_predictions_pdfs_cdfs_unchanged(data, storage, monkeypatch):
    """Several build blocks (block size forced small): same numbers as before, to 1e-12."""
    monkeypatch.setattr(L, "_CHUNK_BYTES", 8 * 100 * 64)  # 64 rows per block
    x, logs, queries = data
    atol = float(np.median(logs))
    ref_err, ref_pdf, ref_cdf, ref_cdf_train, ref_pdfs = old_estimator(x, logs, queries, 100, atol)
    est = LTAUEstimator.from_error_logs(x, logs, nbins=100, pdf_storage=storage)
    np.testing.assert_allclose(est.predict(queries, K), ref_err, rtol=1e-12, atol=0)
    full = est.predict_full(queries, K, pdfs=True, atol=atol)
    np.testing.assert_allclose(full.errors, ref_err, rtol=1e-12, atol=0)
    np.testing.assert_allclose(full.pdfs, ref_pdf, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(full.cdf, ref_cdf, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(est.cdf_train(atol), ref_cdf_train, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.asarray(est.pdfs), ref_pdfs, rtol=1e-12, atol=1e-12)
    # the same from PDFs given directly
    pdfs, bins = pdfs_from_error_logs(logs, nbins=100)
    direct = LTAUEstimator(x, pdfs, bins, pdf_storage=storage)
    np.testing.assert_allclose(direct.predict_full(queries, K, pdfs=True, atol=atol).cdf, ref_cdf,
                               rtol=1e-12, atol=1e-12)


def test_float32_pdfs_keep_exact_predictions(data):
    x, logs, queries = data
    atol = float(np.median(logs))
    ref_err, ref_pdf, ref_cdf, _, _ = old_estimator(x, logs, queries, 100, atol)
    est = LTAUEstimator.from_error_logs(x, logs, nbins=100, pdf_storage="float32")
    full = est.predict_full(queries, K, pdfs=True, atol=atol)
    np.testing.assert_allclose(full.errors, ref_err, rtol=1e-12, atol=0)
    np.testing.assert_allclose(full.pdfs, ref_pdf, rtol=1e-6, atol=1e-6 * ref_pdf.max())
    np.testing.assert_allclose(full.cdf, ref_cdf, rtol=1e-6, atol=1e-7)
    assert est.pdfs.dtype == np.float32


def test_default_holds_at_most_16_bytes_per_point_and_leaves_no_file(data, tmp_path, monkeypatch):
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    x, logs, queries = data
    est = LTAUEstimator.from_error_logs(x, logs, nbins=100)
    assert est.pdf_storage == "disk"
    assert isinstance(est.pdfs, np.memmap)
    assert est.memory_bytes <= 16 * N + 8 * 3 * 101
    assert list(tmp_path.iterdir()) == []  # the temporary file has no name in the folder
    assert est.predict(queries, 2).shape == (200,)
    with pytest.raises(InputError, match="pdf_storage"):
        LTAUEstimator.from_error_logs(x, logs, nbins=100, pdf_storage="ram")


def test_save_load_keeps_pdfs(data, tmp_path):
    x, logs, queries = data
    est = LTAUEstimator.from_error_logs(x, logs, nbins=50)
    est.save(tmp_path / "est")
    back = LTAUEstimator.load(tmp_path / "est")
    np.testing.assert_array_equal(np.asarray(back.pdfs), np.asarray(est.pdfs))
    np.testing.assert_array_equal(back.predict(queries, 3), est.predict(queries, 3))


def test_ivfpq_is_built_without_polysemous_training(data):
    import faiss

    x, logs, _ = data
    est = LTAUEstimator.from_error_logs(x, logs, nbins=20, index_type="HNSW+IVFPQ")
    ivf = faiss.downcast_index(faiss.extract_index_ivf(est.index))
    assert isinstance(ivf, faiss.IndexIVFPQ)
    assert not ivf.do_polysemous_training
