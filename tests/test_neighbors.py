"""k-NN search of approx delta entropy (issue 16): equal blocks, faiss' BLAS threshold, HNSW, IVF.

Independent reference: a brute-force numpy k-NN (full float64 distance matrix, sorted) and
the k-term log-sum-exp written out here.
"""

import numpy as np
import pytest

from atomscore import InputError
from atomscore import index as neighbors
from atomscore.quests.kernels import gaussian
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
        score.compute(atoms, reference_set=x, approx=True, approx_index="annoy")


def test_threads_give_the_same_neighbours_and_leave_faiss_threads_alone():
    import faiss

    before = faiss.omp_get_max_threads()
    y, x = data(m=300)
    one = neighbors.knn_squared_distances(y, x, 4, n_threads=1)
    two = neighbors.knn_squared_distances(y, x, 4, n_threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert faiss.omp_get_max_threads() == before


# --------------------------------------------------------------------------- IVF
@pytest.mark.parametrize("nlist", [1, 7, 15])
def test_ivf_scanning_every_cell_equals_brute_force_knn_sum(nlist):
    """nprobe = nlist visits every reference point: the neighbours (and so the k-term sum)
    are exact; reference: brute-force numpy k-NN."""
    y, x = data()
    for k in (1, 3, 7):
        got = gaussian.approx_delta_entropy(y, x, 0.05, k, approx_index="ivf",
                                            approx_options={"nlist": nlist, "nprobe": nlist})
        np.testing.assert_allclose(got, brute_force_dh(y, x, 0.05, k), rtol=1e-12, atol=1e-12)


def test_ivf_defaults_are_an_upper_bound_and_repeat():
    """Few cells probed: a missed neighbour only raises dH; the fixed k-means seed makes two
    runs identical."""
    y, x = data(n=2000, d=6)
    options = {"nprobe": 2}
    exact = brute_force_dh(y, x, 0.05, 3)
    one = gaussian.approx_delta_entropy(y, x, 0.05, 3, approx_index="ivf", approx_options=options)
    two = gaussian.approx_delta_entropy(y, x, 0.05, 3, approx_index="ivf", approx_options=options)
    assert options == {"nprobe": 2}  # the caller's dict is untouched
    np.testing.assert_array_equal(one, two)
    assert np.all(one >= exact - 1e-12)
    assert np.mean(np.isclose(one, exact, rtol=1e-12, atol=1e-12)) > 0.5


def test_ivf_default_settings():
    assert neighbors.ivf_options(10**6) == {"nlist": 1000, "nprobe": 16}
    assert neighbors.ivf_options(10**5) == {"nlist": 316, "nprobe": 16}
    assert neighbors.ivf_options(2000) == {"nlist": 45, "nprobe": 16}  # 39+ training points per cell
    assert neighbors.ivf_options(600) == {"nlist": 15, "nprobe": 15}  # nprobe clipped to nlist
    assert neighbors.ivf_options(50) == {"nlist": 1, "nprobe": 1}
    assert neighbors.ivf_options(10**6, {"nprobe": 64}) == {"nlist": 1000, "nprobe": 64}
    assert neighbors.index_settings("flat", 100) == {}


@pytest.mark.parametrize("index, options, match", [
    ("ivf", [("nlist", 4)], "expected a dict"),
    ("ivf", {"nlists": 4}, "unknown key"),
    ("ivf", {"nlist": 0}, "nlist"),
    ("ivf", {"nprobe": True}, "nprobe"),
    ("ivf", {"nprobe": 2.0}, "nprobe"),
    ("ivf", {"nlist": 4, "nprobe": 5}, "nprobe <= nlist"),
    ("ivf", {"nlist": 601}, "nlist <= the 600"),
    ("ivf", {"nprobe": 16}, r"nprobe <= nlist \(15"),  # default nlist for 600 points is 15
    ("flat", {"nprobe": 4}, "takes no options"),
    ("hnsw", {"nlist": 4}, "takes no options"),
])
def test_bad_ivf_options_refused_before_anything_runs(monkeypatch, index, options, match):
    def no_index(*args, **kwargs):
        raise AssertionError("an index was built")

    monkeypatch.setattr(neighbors, "build_index", no_index)
    y, x = data()
    with pytest.raises(InputError, match=match):
        gaussian.approx_delta_entropy(y, x, 0.05, 3, approx_index=index, approx_options=options)
    from ase import Atoms

    atoms = Atoms("H20", positions=np.zeros((20, 3)))
    atoms.arrays["descriptors"] = y[:20]
    args = {"reference_set": x, "approx": True, "approx_index": index, "approx_options": options}
    score = QUESTSDeltaEntropyScore()
    with pytest.raises(InputError, match=match):  # what a run checks before writing any folder
        score.check_compute_args([atoms], "DELTA_ENTROPY", args)
    with pytest.raises(InputError, match=match):
        score.compute(atoms, **args)


def test_score_records_ivf_index_and_its_settings():
    from ase import Atoms

    y, x = data(m=20)
    atoms = Atoms("H20", positions=np.zeros((20, 3)))
    atoms.arrays["descriptors"] = y
    score = QUESTSDeltaEntropyScore()
    options = {"nlist": 15, "nprobe": 15}
    got = score.compute(atoms, reference_set=x, bandwidth=0.05, approx=True, approx_index="ivf",
                        approx_options=options)
    np.testing.assert_allclose(got, brute_force_dh(y, x, 0.05, 3), rtol=1e-12, atol=1e-12)
    meta = score.metadata_of(got)
    assert meta["approx_index"] == "ivf"
    assert meta["approx_options"] == options
    assert meta["approx_settings"] == {"nlist": 15, "nprobe": 15}
    got = score.compute(atoms, reference_set=x, bandwidth=0.05, approx=True, approx_index="ivf")
    meta = score.metadata_of(got)
    assert meta["approx_options"] == {} and meta["approx_settings"] == {"nlist": 15, "nprobe": 15}
    got = score.compute(atoms, reference_set=x, bandwidth=0.05)
    assert "approx_settings" not in score.metadata_of(got)


def test_ivf_threads_give_the_same_result_and_leave_faiss_threads_alone():
    import faiss

    before = faiss.omp_get_max_threads()
    y, x = data(n=2000, d=6)
    options = {"nlist": 20, "nprobe": 3}
    one = neighbors.knn_squared_distances(y, x, 4, index="ivf", n_threads=1, options=options)
    two = neighbors.knn_squared_distances(y, x, 4, index="ivf", n_threads=2, options=options)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert faiss.omp_get_max_threads() == before


def test_ivf_options_travel_through_a_local_run_and_bad_ones_stop_it(tmp_path):
    """approx_options go into the job file and back: the job's numbers equal the in-memory
    call; a bad option stops run() before any job folder is written."""
    from ase import Atoms

    from atomscore.jobs.workflow import LocalWorkflow

    y, x = data(m=40)
    configs = []
    for part in (y[:20], y[20:]):
        atoms = Atoms("H20", positions=np.zeros((20, 3)))
        atoms.arrays["descriptors"] = part
        configs.append(atoms)
    args = {"score_quantity": "DELTA_ENTROPY", "reference_set": x, "bandwidth": 0.05, "approx": True,
            "approx_index": "ivf", "approx_options": {"nlist": 15, "nprobe": 15}}
    score = QUESTSDeltaEntropyScore()
    bad = dict(args, approx_options={"nlist": 15, "nprobe": 30})
    with pytest.raises(InputError, match="nprobe <= nlist"):
        score.run("bad", configs, bad, workflow=LocalWorkflow(str(tmp_path / "bad"), nprocs=1))
    assert not any((tmp_path / "bad").rglob("*.json"))
    wf = LocalWorkflow(str(tmp_path / "jobs"), nprocs=1)
    ids = score.run("dh", configs, args, workflow=wf, batch_size=1)
    wf.block_until_completed(ids)
    got = score.data_from_calc_ids(ids, workflow=wf)
    for atoms, part in zip(got, (y[:20], y[20:])):
        np.testing.assert_allclose(atoms.arrays["quests_delta_entropy_score"], brute_force_dh(part, x, 0.05, 3),
                                   rtol=1e-12, atol=1e-12)
