"""k-NN search of approx delta entropy (issue 16): equal blocks, faiss' BLAS threshold, HNSW.

Independent reference: a brute-force numpy k-NN (full float64 distance matrix, sorted) and
the k-term log-sum-exp written out here.
"""

import numpy as np
import pytest

from atomscore import InputError
from atomscore.kernels import gaussian, neighbors
from atomscore.quests import QUESTSDeltaEntropyScore


def brute_force_dh(y, x, h, k):
    d2 = ((y[:, None, :] - x[None, :, :]) ** 2).sum(axis=2)
    nearest = np.sort(d2, axis=1)[:, :k]
    e = -nearest / (2 * h * h)
    m = e.max(axis=1)
    return -(m + np.log(np.exp(e - m[:, None]).sum(axis=1)))


def data(m=250, n=600, d=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) * 0.1
    y = x[rng.integers(0, n, m)] + rng.normal(scale=0.02, size=(m, d))
    return y, x


def test_query_blocks_are_equal_and_cover():
    for n, block in ((10000, 8192), (8192, 8192), (8193, 8192), (250, 100), (5, 100)):
        blocks = neighbors.query_blocks(n, block)
        sizes = [b - a for a, b in blocks]
        assert blocks[0][0] == 0 and blocks[-1][1] == n
        assert all(b0[1] == b1[0] for b0, b1 in zip(blocks, blocks[1:]))
        assert max(sizes) <= block and max(sizes) - min(sizes) <= 1
    assert neighbors.query_blocks(10000) == [(0, 5000), (5000, 10000)]
    assert neighbors.query_blocks(0) == []


@pytest.mark.parametrize("block", [100, 8192])
def test_approx_dh_equals_brute_force_knn_sum(monkeypatch, block):
    """Several blocks (250 queries in blocks of at most 100) or one: same as the brute force."""
    monkeypatch.setattr(neighbors, "QUERY_BLOCK", block)
    y, x = data()
    for k in (1, 3, 7):
        got = gaussian.approx_delta_entropy(y, x, 0.05, k)
        np.testing.assert_allclose(got, brute_force_dh(y, x, 0.05, k), rtol=1e-12, atol=1e-12)


def test_blas_threshold_restored_also_after_an_error():
    import faiss

    before = faiss.cvar.distance_compute_blas_threshold
    with neighbors.blas_threshold(100):
        assert faiss.cvar.distance_compute_blas_threshold == min(before, 100)
    assert faiss.cvar.distance_compute_blas_threshold == before
    with pytest.raises(RuntimeError):
        with neighbors.blas_threshold(50):
            raise RuntimeError("boom")
    assert faiss.cvar.distance_compute_blas_threshold == before
    with neighbors.blas_threshold(5):  # a handful of queries keeps faiss' own choice
        assert faiss.cvar.distance_compute_blas_threshold == before


def test_hnsw_is_an_upper_bound_and_nearly_exact():
    """A missed neighbour is replaced by a farther one: dH(hnsw) >= dH(exact); on 600 points
    with efSearch 64 the graph finds (nearly) all of them."""
    y, x = data()
    exact = gaussian.approx_delta_entropy(y, x, 0.05, 3)
    hnsw = gaussian.approx_delta_entropy(y, x, 0.05, 3, approx_index="hnsw")
    assert np.all(hnsw >= exact - 1e-12)
    assert np.mean(np.isclose(hnsw, exact, rtol=1e-12, atol=1e-12)) > 0.95


def test_score_passes_approx_index_and_records_it():
    from ase import Atoms

    y, x = data(m=20)
    atoms = Atoms("H20", positions=np.zeros((20, 3)))
    atoms.arrays["descriptors"] = y
    score = QUESTSDeltaEntropyScore()
    got = score.compute(atoms, reference_set=x, bandwidth=0.05, approx=True, approx_index="hnsw")
    assert np.all(got >= brute_force_dh(y, x, 0.05, 3) - 1e-12)
    assert score.metadata_of(got)["approx_index"] == "hnsw"
    with pytest.raises(InputError, match="approx_index"):
        score.compute(atoms, reference_set=x, approx=True, approx_index="ivf")


def test_threads_give_the_same_neighbours_and_leave_faiss_threads_alone():
    import faiss

    before = faiss.omp_get_max_threads()
    y, x = data(m=300)
    one = neighbors.knn_squared_distances(y, x, 4, n_threads=1)
    two = neighbors.knn_squared_distances(y, x, 4, n_threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert faiss.omp_get_max_threads() == before
