"""Pruned kernel sums (issue 27 item 1): equal to the dense pass to the stated tolerance, with
the skipped mass bounded.

References: the dense tile pass of the same module (``prune=False``, itself checked against
``quests.entropy`` in tests/test_quests_kernels.py), ``quests.entropy`` directly, and direct
numpy projections for the cells' extents.
"""

import numpy as np
import pytest
import quests.entropy as qe

from atomscore import InputError
from atomscore.quests.kernels import cells, gaussian

RTOL = 1e-10  # the stated tolerance, float64 (the default prune_tolerance)
# the float64 rounding of log p in two passes that sum in different orders (measured up to
# 2.3e-12 on the two far clusters, whose lifted exponents reach 1e5)
ROUND = 5e-12


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
def test_self_sums_equal_dense_to_the_tolerance(name, h):
    x = DATA[name]()
    dense = gaussian.log_kernel_sums(x, None, h)
    pruned, bound = gaussian.pruned_log_kernel_sums(x, None, h)
    # the skipped terms only lower log p, by at most the bound (<= 1e-10), plus the passes' rounding
    assert np.all(bound >= 0) and bound.max() <= RTOL
    assert np.all(dense - pruned <= bound + ROUND) and np.all(pruned - dense <= ROUND)
    ent = gaussian.entropy(x, h, prune=True)
    assert abs(ent - gaussian.entropy(x, h)) <= RTOL + ROUND
    assert abs(gaussian.diversity(x, h, prune=True) - gaussian.diversity(x, h)) <= RTOL + ROUND


def test_reported_bound_bounds_a_visible_error():
    """A Gaussian blob in 3 dimensions at h = 0.1 has many terms just below any threshold; at a
    loose tolerance the skipped mass is far above rounding: the error is visible and still
    within the reported bound, row by row."""
    x = np.random.default_rng(8).normal(size=(3000, 3))
    dense = gaussian.log_kernel_sums(x, None, 0.1)
    pruned, bound = gaussian.pruned_log_kernel_sums(x, None, 0.1, prune_tolerance=1e-3)
    err = dense - pruned
    assert bound.max() <= 1e-3
    assert np.all(err <= np.log1p(bound) + ROUND) and np.all(err >= -ROUND)
    assert err.max() > 1e-9  # something was skipped: the check above could fail
    pruned, bound = gaussian.pruned_log_kernel_sums(x, None, 0.1)  # default: 1e-10
    assert bound.max() <= RTOL and np.all(np.abs(dense - pruned) <= RTOL + ROUND)


def test_delta_entropy_and_several_bandwidths_equal_dense():
    x, y = _clusters(3000, seed=3), _clusters(700, seed=4)
    h = np.array([0.03, 0.1, 0.5])
    dense = gaussian.delta_entropy(y, x, h)
    pruned = gaussian.delta_entropy(y, x, h, prune=True)
    assert np.all(pruned - dense <= RTOL + ROUND) and np.all(pruned - dense >= -ROUND)  # dH = -log p: only up
    logp, bound = gaussian.pruned_log_kernel_sums(y, x, h)
    assert bound.shape == (700, 3) and bound.max() <= RTOL
    # far queries: the log-sum-exp repair still runs on the pruned pass, and their bound is 0 (exact)
    far = y + 3.0
    np.testing.assert_allclose(gaussian.delta_entropy(far, x, 0.03, prune=True), gaussian.delta_entropy(far, x, 0.03),
                               rtol=1e-12)
    assert gaussian.pruned_log_kernel_sums(far, x, 0.03)[1].max() == 0.0


def test_float32_within_its_own_rounding():
    """float32 (default tolerance 1e-7): within the dense float32 pass's own error of float64."""
    x = _clusters(3000, seed=6)
    exact = gaussian.log_kernel_sums(x, None, 0.1)
    rounding = np.abs(gaussian.log_kernel_sums(x, None, 0.1, precision="float32") - exact).max()
    pruned, bound = gaussian.pruned_log_kernel_sums(x, None, 0.1, precision="float32")
    assert bound.max() <= 1e-7
    assert np.abs(pruned - exact).max() <= 2 * rounding + 1e-7


def test_equals_quests_entropy_and_diversity():
    x = _two_far_clusters(1200)
    assert gaussian.entropy(x, 0.1, prune=True) == pytest.approx(qe.entropy(x, h=0.1), rel=1e-10)
    assert gaussian.diversity(x, 0.1, prune=True) == pytest.approx(qe.diversity(x, h=0.1), rel=1e-10)


def _kept(x, h, tolerance=1e-10):
    """Share of pairs the plan keeps with the prior lower bound (1, the own term)."""
    xc = x - x.mean(axis=0)
    part = cells.partition(xc)
    xs = xc[part.order]
    gammas = np.array([1.0 / (2 * h * h)])
    bounds = cells.cell_bounds(part, part, xs, xs, gammas, True)
    return cells.kept_share(part, part, cells.plan(bounds, part, gammas, bounds.prior, tolerance, True).keep)


def test_far_clusters_are_skipped_and_close_noise_is_not():
    """Two clusters 10 apart never meet at h = 0.05 (half the pairs skipped); every pair of
    uniform noise in [0, 1]^10 may matter at h = 0.3 (nothing skipped)."""
    assert _kept(_two_far_clusters(3000), 0.05) <= 0.55
    assert _kept(DATA["uniform noise"](), 0.3) == 1.0


def test_cells_cover_rows_and_extents_bound_projections():
    x = _clusters(2000, seed=5)
    part = cells.partition(x, cell_size=64)
    assert np.array_equal(np.sort(part.order), np.arange(len(x)))
    assert part.sizes.max() <= 128
    member = np.repeat(np.arange(len(part.sizes)), part.sizes)
    xs = x[part.order]
    assert np.all(np.linalg.norm(xs - part.centres[member], axis=1) <= part.radii[member])
    targets = np.random.default_rng(7).normal(size=(9, x.shape[1]))
    ext = cells.extents(xs, part, targets)
    for a in range(len(part.sizes)):  # direct projections of every member
        rows = xs[part.starts[a]:part.starts[a + 1]] - part.centres[a]
        u = targets - part.centres[a]
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        assert np.all((rows @ u.T).max(axis=0) <= ext[a])
    assert np.all(ext <= part.radii[:, None])
    assert np.median(ext / part.radii[:, None]) < 0.8  # tighter than the ball in 12 dimensions


def test_prune_options_are_checked():
    x = _clusters(100)
    with pytest.raises(InputError, match="numpy backend"):
        gaussian.entropy(x, 0.1, prune=True, backend="torch")
    with pytest.raises(InputError, match="prune"):
        gaussian.entropy(x, 0.1, prune="yes")
    with pytest.raises(InputError, match="prune_tolerance.*prune=True"):
        gaussian.entropy(x, 0.1, prune_tolerance=1e-8)
    for bad in (0.0, -1e-3, 1.0, float("nan")):
        with pytest.raises(InputError, match="prune_tolerance"):
            gaussian.entropy(x, 0.1, prune=True, prune_tolerance=bad)
