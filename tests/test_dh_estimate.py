"""Approximate dH with an error bar (issue 27 item 2): nearest cells exact, the rest sampled.

References: the exact float64 :func:`delta_entropy` (itself equal to
``quests.entropy.delta_entropy``, tests/test_quests_kernels.py); the coverage of the error bars
is checked over many seeds, as tests/test_quests_estimates.py does for the sampled entropy, on
smooth synthetic data and on real environments (LAMMPS MD of three phases, tests/md_phases.py);
the bounds behind the bars against brute-force distances.
"""

import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from atomscore import InputError
from atomscore.quests.kernels import gaussian


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(3000, 4)), rng.normal(size=(30, 4))


def test_whole_sample_is_exact_with_zero_error():
    x, y = _data()
    est = gaussian.estimate_delta_entropy(y, x, 0.3, sample_size=len(x), n_cells=32, n_probe=3, precision="float64")
    np.testing.assert_allclose(est.value, gaussian.delta_entropy(y, x, 0.3), rtol=1e-10)
    assert np.all(est.standard_error < 1e-12)  # no sampling error; the float64 rounding term only


def test_every_cell_probed_is_exact():
    x, y = _data(1)
    est = gaussian.estimate_delta_entropy(y, x, 0.3, sample_size=100, n_cells=16, n_probe=16, precision="float64")
    np.testing.assert_allclose(est.value, gaussian.delta_entropy(y, x, 0.3), rtol=1e-10)
    assert np.all(est.standard_error < 1e-12)  # no sampling error; the float64 rounding term only


def test_far_queries_are_exact_and_finite():
    # the float32 tiles cannot hold these: exact float64 log-sum-exp, error 0
    x, y = _data(2)
    far = y + 40.0
    est = gaussian.estimate_delta_entropy(far, x, 0.3, sample_size=200, n_cells=16, n_probe=2)
    np.testing.assert_allclose(est.value, gaussian.delta_entropy(far, x, 0.3), rtol=1e-10)
    assert np.all(np.isfinite(est.value)) and np.all(est.standard_error == 0.0)  # exact rows: no error


def test_error_bars_cover_the_true_error_over_seeds():
    """z = (estimate - exact) / standard error over 50 samples x 30 queries, where the sampled
    remainder is many similar terms (smooth data, wide kernel): |z| < 2.58 for at least 98 %
    (measured 99.3 %, 96.4 % within 1.96, 74.7 % within 1; nominal 99 / 95 / 68 %; with the
    bound alone in the bar, not its variance cap^2 (N/n - 1), 97.0 %, 93.2 %, 67.5 %; with no
    bound 94.5 %, 90.1 %, 65 %), and the mean error is small next to the typical error bar (the
    estimate of p is unbiased)."""
    x, y = _data(3)
    exact = gaussian.delta_entropy(y, x, 0.6)
    z, err, se = [], [], []
    for seed in range(50):
        est = gaussian.estimate_delta_entropy(y, x, 0.6, sample_size=300, seed=seed, n_cells=64, n_probe=4,
                                              precision="float64", n_threads=1)
        z.append((est.value - exact) / est.standard_error)
        err.append(est.value - exact)
        se.append(est.standard_error)
    z, err, se = np.array(z), np.array(err), np.array(se)
    assert np.mean(np.abs(z) < 2.58) >= 0.98
    assert np.mean(np.abs(z) < 1.96) >= 0.93
    assert abs(err.mean()) < 0.25 * np.median(se)
    # and the bars are not uselessly wide: the true error is often larger than half a bar
    assert np.mean(np.abs(z) > 0.5) > 0.4


def _coverage(y, x, h, exact, seeds, **options):
    """|error| / standard error and |error| over ``seeds`` samples, shape (seeds, M) each."""
    z, err = [], []
    for seed in range(seeds):
        est = gaussian.estimate_delta_entropy(y, x, h, seed=seed, n_threads=1, **options)
        err.append(np.abs(est.value - exact))
        z.append(err[-1] / est.standard_error)
    return np.array(z), np.array(err), est.standard_error


@pytest.fixture(scope="module")
def md_environments():
    """6,000 reference and 300 query environments (QUESTS, d = 63) of LAMMPS MD: fcc Cu at
    1000 K, liquid Cu, diamond Si at 900 K; the queries from other runs 10 % hotter."""
    from md_phases import reference_and_queries

    return reference_and_queries(6000, 300, cache=False, equilibrate=300,
                                 names=["fcc Cu 1000 K", "liquid Cu 1800 K", "diamond Si 900 K"])


needs_lmp = pytest.mark.skipif(shutil.which("lmp") is None, reason="LAMMPS (Debian package lammps) not installed")


@needs_lmp
@pytest.mark.parametrize("exact_above", [1e-3, None])
def test_error_bars_cover_on_md_of_several_phases(md_environments, exact_above):
    """Real environments at h = 0.015, 2 of 77 cells exact: the terms beyond them are a few large
    ones that a sample of N/16 rows often misses, so the sample's own standard error is too short
    (before: 2.58 of them covered 76 % here, 77 % on the benchmark). The bar now also holds the
    variance one unsampled term of the largest possible size would add, cap^2 (N/n - 1) (cap: a
    bound on the largest term no exact sum holds), and the rows that could exceed ``exact_above``
    of the exact part are summed: over 20 seeds x 300 queries it covers at least at the normal
    rates, with the default 1e-2 too (measured 99.7 % / 99.1 % / 92 % at 2.58 / 2 / 1 standard
    errors; with cap alone, without the factor, 98.4 % / 96.9 % / 89 %, and 99.8 % only with
    1e-3, 1.5x slower)."""
    x, y = md_environments
    exact = gaussian.delta_entropy(y, x, 0.015)
    options = {} if exact_above is None else {"exact_above": exact_above}
    z, err, se = _coverage(y, x, 0.015, exact, 20, n_probe=2, sample_size=len(x) // 16, precision="float64",
                           **options)
    assert np.mean(z < 2.58) >= 0.99
    assert np.mean(z < 2.0) >= 0.95
    assert np.mean(z < 1.0) >= 0.68  # conservative at one standard error, not short
    assert np.mean(err < 0.05) >= 0.98
    assert np.median(se) < 10 * (exact_above or gaussian.EXACT_ABOVE)  # the bars stay useful


def test_largest_term_left_bounds_every_row_outside_the_exact_prefixes():
    """The bound behind the bar, against brute-force distances: every row that no exact prefix
    holds has exp(-gamma |y - x|^2) <= the reported largest term, and every row outside the
    prefix rows_within returns has it <= exp(-gamma reach^2)."""
    rng = np.random.default_rng(5)
    x = rng.normal(size=(600, 5)) * rng.uniform(0.3, 2.0, size=(600, 1))
    y = rng.normal(size=(40, 5))
    gamma = 0.7
    import faiss

    q = faiss.IndexFlatL2(5)
    km = faiss.Kmeans(5, 12, niter=5, seed=1)
    km.train(x.astype(np.float32))
    q.add(km.centroids)
    cell_of = q.search(x.astype(np.float32), 1)[1][:, 0]
    cells = gaussian._Cells.build(x, cell_of, km.centroids.astype(np.float64), gamma, np.float64)
    dist = cells.centre_distances(y)
    true = np.sqrt(((y[:, None, :] - cells.centres[None]) ** 2).sum(-1))
    assert np.all(dist <= true) and np.allclose(dist, true, atol=1e-2)  # rounded down: bounds stay bounds
    probed = np.argsort(dist, axis=1)[:, :2]
    reach = rng.uniform(0.2, 1.5, size=len(y))
    qi, ci, k = gaussian._Cells.rows_within(cells, dist, reach, probed)
    q_at = np.concatenate([np.repeat(np.arange(len(y)), 2), qi])
    c_at = np.concatenate([probed.ravel(), ci])
    k_at = np.concatenate([cells.sizes[probed.ravel()], k])
    held = np.zeros(dist.shape, dtype=np.int64)
    held[q_at, c_at] = k_at
    rank = np.arange(len(x)) - cells.starts[cells.cell]
    d2 = ((y[:, None, :] - x[cells.order][None]) ** 2).sum(-1)
    left = rank[None] >= held[:, cells.cell]  # rows no exact prefix holds
    log_cap = cells.log_largest_left(dist, q_at, c_at, k_at, gamma)
    for i in range(len(y)):
        if left[i].any():
            assert (-gamma * d2[i, left[i]]).max() <= log_cap[i] + 1e-12
            assert (d2[i, left[i]]).min() >= reach[i] ** 2 - 1e-12
        else:
            assert log_cap[i] == -np.inf


def test_tiny_exact_above_sums_everything():
    # every row's bound exceeds 1e-200 of the exact part: all summed, error 0 but rounding
    x, y = _data(4)
    est = gaussian.estimate_delta_entropy(y, x, 0.3, sample_size=100, n_cells=16, n_probe=1, exact_above=1e-200,
                                          precision="float64")
    np.testing.assert_allclose(est.value, gaussian.delta_entropy(y, x, 0.3), rtol=1e-10)
    assert np.all(est.standard_error < 1e-12)


def test_checks():
    x, y = _data()
    with pytest.raises(InputError, match="dimension"):
        gaussian.estimate_delta_entropy(y[:, :3], x, 0.3)
    with pytest.raises(InputError, match="bandwidth"):
        gaussian.estimate_delta_entropy(y, x, -1.0)
    with pytest.raises(InputError, match="sample_size"):
        gaussian.estimate_delta_entropy(y, x, 0.3, sample_size=1)
    with pytest.raises(InputError, match="exact_above"):
        gaussian.estimate_delta_entropy(y, x, 0.3, exact_above=-1e-3)


def test_score_reports_the_error_per_query():
    """QUESTSDeltaEntropyScore(approx='sampled'): values near the exact dH, one standard
    error per atom in the metadata, NaN-free lists per configuration."""
    from ase.build import bulk

    from atomscore import QUESTSDeltaEntropyScore

    rng = np.random.default_rng(7)
    ref = rng.normal(size=(5000, 6))
    configs = []
    for i, n in enumerate((4, 3)):
        atoms = bulk("Cu", "fcc", 3.61, cubic=True).repeat((n, 1, 1))
        atoms.new_array("descriptors", rng.normal(size=(len(atoms), 6)))
        configs.append(atoms)
    out = QUESTSDeltaEntropyScore().compute_batch(configs, "DELTA_ENTROPY", reference_set=ref, bandwidth=0.8,
                                                  approx="sampled")
    errors = out.metadata["delta_entropy_standard_error"]
    assert [len(e) for e in errors] == [len(a) for a in configs]
    settings = out.metadata["approx_settings"]
    assert settings["mode"] == "sampled" and settings["exact_above"] == gaussian.EXACT_ABOVE
    assert settings["sample_size"] == 2000  # max(2000, N // 32), at most N
    for atoms, got, se in zip(configs, out, errors):
        exact = gaussian.delta_entropy(atoms.arrays["descriptors"], ref, 0.8)
        assert np.all(np.abs(got - exact) < 6 * np.asarray(se) + 1e-4)
