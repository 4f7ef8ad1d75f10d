"""Pruned kernel sums (issue 27 item 1): equal to the dense pass, with the skipped mass bounded.

References: the dense tile pass of the same module (``prune=False``, itself checked against
``quests.entropy`` in tests/test_quests_kernels.py) and ``quests.entropy.entropy`` directly.
"""

import numpy as np
import pytest
import quests.entropy as qe

from atomscore import InputError
from atomscore.quests.kernels import cells, gaussian

RTOL = 1e-10  # the stated tolerance, float64


def _clusters(n, d=12, k=8, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d))
    return centres[rng.integers(0, k, n)] + spread * rng.normal(size=(n, d))


def _two_far_clusters(n, d=8, seed=1):
    rng = np.random.default_rng(seed)
    a = 0.05 * rng.normal(size=(n // 2, d))
    b = 0.05 * rng.normal(size=(n - n // 2, d)) + 10.0
    return np.vstack([a, b])[rng.permutation(n)]


DATA = {
    "clusters": lambda: _clusters(3000),
    "uniform noise": lambda: np.random.default_rng(2).uniform(size=(2500, 10)),
    "all points equal": lambda: np.ones((1500, 6)),
    "two far clusters": lambda: _two_far_clusters(3000),
}


@pytest.mark.parametrize("name", list(DATA))
@pytest.mark.parametrize("h", [0.05, 0.3])
def test_self_sums_equal_dense(name, h):
    x = DATA[name]()
    dense = gaussian.log_kernel_sums(x, None, h)
    pruned, bound = gaussian.pruned_log_kernel_sums(x, None, h)
    np.testing.assert_allclose(pruned, dense, rtol=RTOL, atol=1e-12)
    assert np.all(bound >= 0) and bound.max() < 1e-25
    ent = gaussian.entropy(x, h, prune=True)
    assert ent == pytest.approx(gaussian.entropy(x, h), rel=RTOL, abs=1e-12)


def test_delta_entropy_and_several_bandwidths_equal_dense():
    x, y = _clusters(3000, seed=3), _clusters(700, seed=4)
    h = np.array([0.03, 0.1, 0.5])
    dense = gaussian.delta_entropy(y, x, h)
    np.testing.assert_allclose(gaussian.delta_entropy(y, x, h, prune=True), dense, rtol=RTOL)
    # far queries: the log-sum-exp repair still runs on the pruned pass
    far = y + 3.0
    np.testing.assert_allclose(gaussian.delta_entropy(far, x, 0.03, prune=True), gaussian.delta_entropy(far, x, 0.03),
                               rtol=RTOL)


def test_equals_quests_entropy_and_diversity():
    x = _two_far_clusters(1200)
    assert gaussian.entropy(x, 0.1, prune=True) == pytest.approx(qe.entropy(x, h=0.1), rel=1e-10)
    assert gaussian.diversity(x, 0.1, prune=True) == pytest.approx(qe.diversity(x, h=0.1), rel=1e-10)


def test_far_clusters_are_skipped_and_noise_is_not():
    """The bound does its job: two clusters 10 apart never meet at h = 0.05 (half the pairs
    skipped); points of uniform noise in [0, 1]^10 all may matter at h = 0.3 (nothing skipped)."""
    gammas = np.array([1.0 / (2 * 0.05 ** 2)])
    x = _two_far_clusters(3000)
    part = cells.partition(x - x.mean(axis=0))
    pairs = cells.cell_pairs(part, part, gammas, True)
    sizes = part.sizes.astype(float)
    kept = (np.outer(sizes, sizes) * pairs.keep).sum() / len(x) ** 2
    assert kept <= 0.55
    noise = DATA["uniform noise"]()
    part = cells.partition(noise - noise.mean(axis=0))
    assert cells.cell_pairs(part, part, np.array([1.0 / (2 * 0.3 ** 2)]), True).keep.all()


def test_partition_covers_every_row_within_its_radius():
    x = _clusters(2000, seed=5)
    part = cells.partition(x, cell_size=64)
    assert np.array_equal(np.sort(part.order), np.arange(len(x)))
    assert part.sizes.max() <= 128
    member = np.repeat(np.arange(len(part.sizes)), part.sizes)
    dist = np.linalg.norm(x[part.order] - part.centres[member], axis=1)
    assert np.all(dist <= part.radii[member])


def test_prune_needs_numpy_backend_and_a_bool():
    x = _clusters(100)
    with pytest.raises(InputError, match="numpy backend"):
        gaussian.entropy(x, 0.1, prune=True, backend="torch")
    with pytest.raises(InputError, match="prune"):
        gaussian.entropy(x, 0.1, prune="yes")
