"""Our tiled Gaussian kernel sums (atomscore.quests.kernels.gaussian) against the ``quests`` package.

Reference: ``quests.entropy`` (entropy, diversity, delta_entropy, get_all_metrics) called on
real QUESTS descriptors that ``quests.descriptor.get_descriptors`` computes for rattled and
strained Si diamond and Cu fcc cells. Where quests returns +inf (kernel sum underflow), the
independent reference is scipy: ``cdist(..., 'sqeuclidean')`` and ``scipy.special.logsumexp``
on the full matrix.
"""

import math
import tracemalloc

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

quests_entropy = pytest.importorskip("quests.entropy")

from atomscore.errors import InputError  # noqa: E402
from atomscore.quests.kernels import gaussian as G  # noqa: E402

H = 0.015


def _structures():
    from ase.build import bulk

    rng = np.random.default_rng(7)
    out = []
    for i, base in enumerate([bulk("Si", "diamond", 5.43, cubic=True).repeat((2, 2, 2)),
                              bulk("Cu", "fcc", 3.61, cubic=True).repeat((3, 3, 2))] * 5):
        atoms = base.copy()
        strain = np.eye(3) + rng.uniform(-0.02, 0.02, (3, 3))
        atoms.set_cell(atoms.cell @ (strain + strain.T) / 2, scale_atoms=True)
        atoms.rattle(0.01 + 0.02 * i, seed=i)
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def desc():
    from quests.descriptor import get_descriptors

    x = get_descriptors(_structures(), k=32, cutoff=5.0)
    assert x.shape == (5 * 64 + 5 * 72, 63)
    return x


@pytest.mark.parametrize("tile,threads", [(1024, 1), (97, 2), (64, 1)])
def test_float64_matches_quests_to_1e10(desc, tile, threads):
    """Entropy, diversity, efficiency: quests.entropy values, 1e-10 relative, any tiling/threads."""
    kw = dict(tile_size=tile, n_threads=threads)
    hq = quests_entropy.entropy(desc, H)
    dq = quests_entropy.diversity(desc, H)
    assert G.entropy(desc, H, **kw) == pytest.approx(hq, rel=1e-10)
    assert G.diversity(desc, H, **kw) == pytest.approx(dq, rel=1e-10)
    assert G.efficiency(desc, H, **kw) == pytest.approx(hq / math.log(len(desc)), rel=1e-10)


def test_delta_entropy_matches_quests_where_finite(desc):
    """dH(y|X) within 1e-8 absolute of quests.entropy.delta_entropy; rows quests gives as
    +inf (far queries) are finite here and equal scipy's exact log-sum-exp."""
    y, x = desc[::3], np.delete(desc, np.s_[::3], axis=0)
    far = y[:20] + 0.2  # far from every reference point: the kernel sum underflows
    queries = np.vstack([y, far])
    with np.errstate(divide="ignore"):
        ref = quests_entropy.delta_entropy(queries, x, H)
    ours = G.delta_entropy(queries, x, H, tile_size=128, n_threads=2)
    finite = np.isfinite(ref)
    assert finite.sum() >= len(y) and not finite[-20:].any(), "test set must have finite and +inf rows"
    np.testing.assert_allclose(ours[finite], ref[finite], rtol=0, atol=1e-8)
    assert np.all(np.isfinite(ours))
    exact = -logsumexp(-cdist(far, x, "sqeuclidean") / (2 * H * H), axis=1)
    np.testing.assert_allclose(ours[-20:], exact, rtol=1e-10)
    assert ours[-20:].min() > 700  # really beyond float64's exp range


def test_float32_accuracy(desc):
    """float32 tiles: entropy 1e-5 relative, dH 5e-3 absolute of quests; no +inf where f64 is finite."""
    hq = quests_entropy.entropy(desc, H)
    assert G.entropy(desc, H, precision="float32") == pytest.approx(hq, rel=1e-5)
    assert G.diversity(desc, H, precision="float32") == pytest.approx(quests_entropy.diversity(desc, H), rel=1e-5)
    y, x = desc[::3], np.delete(desc, np.s_[::3], axis=0)
    queries = np.vstack([y, y[:10] + 0.05, y[:10] + 0.3])  # near, underflowing in f32 only, in both
    with np.errstate(divide="ignore"):
        ref = quests_entropy.delta_entropy(queries, x, H)
    ours32 = G.delta_entropy(queries, x, H, precision="float32", tile_size=200)
    ours64 = G.delta_entropy(queries, x, H)
    finite = np.isfinite(ref)
    np.testing.assert_allclose(ours32[finite], ref[finite], rtol=0, atol=5e-3)
    assert np.all(np.isfinite(ours64)) and np.all(np.isfinite(ours32))
    np.testing.assert_allclose(ours32, ours64, rtol=0, atol=5e-3)


def _exact_log_sums(y, x, h):
    """Independent reference: scipy's log-sum-exp over the full cdist matrix, (M, H)."""
    d2 = cdist(y, x, "sqeuclidean")
    return np.stack([logsumexp(-d2 / (2 * hk * hk), axis=1) for hk in np.atleast_1d(h)], axis=1)


@pytest.mark.parametrize("tile,threads", [(64, 2), (1024, 1)])
def test_lifted_and_repaired_rows_on_mixed_data(desc, tile, threads):
    """Queries from on the reference set to far beyond float64's exp range, for a small and
    a large bandwidth in one call: float64 log p equals scipy's full log-sum-exp to 1e-12
    relative (1e-10 absolute near 0), float32 within 5e-3 absolute. The data covers, in
    both precisions, rows the lifted plain pass sums directly although they would underflow
    unlifted, and rows beyond the lift that the log-sum-exp pass repairs."""
    y, x = desc[::3], np.delete(desc, np.s_[::3], axis=0)
    queries = np.vstack([y[:40], y[40:200] + np.geomspace(0.005, 0.25, 160)[:, None]])
    hs = np.array([H, 1.0])  # 1.0: every term matters, no row underflows
    ref = _exact_log_sums(queries, x, hs)
    dh, n = -ref[:, 0], len(x)
    for precision in G.PRECISIONS:
        lift = G._EXP_MAX[precision] - math.log(n) - 1
        unlifted = -G._FLOOR[precision] - math.log(G._REPAIR_MARGIN[precision] * n)
        assert (dh < unlifted).sum() >= 5, precision
        assert ((dh > unlifted) & (dh < unlifted + lift)).sum() >= 5, precision
        assert (dh > unlifted + lift).sum() >= 5, precision
    ours = G.log_kernel_sums(queries, x, hs, tile_size=tile, n_threads=threads)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-10)
    ours32 = G.log_kernel_sums(queries, x, hs, precision="float32", tile_size=tile, n_threads=threads)
    np.testing.assert_allclose(ours32, ref, rtol=0, atol=5e-3)


@pytest.mark.parametrize("precision", G.PRECISIONS)
def test_only_rows_beyond_the_lift_are_repaired(desc, precision, monkeypatch):
    """The lifted plain pass keeps every row with dH below ``lift - floor - log(margin N)``;
    exactly the rows beyond it (by scipy's exact dH, away from the boundary) go to the
    log-sum-exp pass."""
    y, x = desc[::3], np.delete(desc, np.s_[::3], axis=0)
    queries = y[:160] + np.geomspace(0.005, 0.25, 160)[:, None]
    dh = -_exact_log_sums(queries, x, H)[:, 0]
    edge = G._EXP_MAX[precision] - 2 * math.log(len(x)) - 1 - G._FLOOR[precision] \
        - math.log(G._REPAIR_MARGIN[precision])
    assert np.abs(dh - edge).min() > 1.0 and 5 <= (dh > edge).sum() <= 150
    repaired = []
    tile_pass = G._tile_pass
    monkeypatch.setattr(G, "_tile_pass", lambda ops, *a, shifted=False: (
        repaired.append(len(ops[0].left)) if shifted else None) or tile_pass(ops, *a, shifted=shifted))
    G.delta_entropy(queries, x, H, precision=precision)
    assert repaired == [(dh > edge).sum()]


@pytest.mark.parametrize("precision,tol", [("float64", 1e-12), ("float32", 1e-5)])
def test_shifted_pass_equals_plain_pass(desc, precision, tol):
    """The one-pass log-sum-exp (running row maximum, rescaled sums) on rows where nothing
    underflows equals the log of the plain row sums -- with many small tiles, so row maxima
    move from tile to tile, and queries ordered so that the largest term comes late."""
    dtype = np.float64 if precision == "float64" else np.float32
    x = desc[np.argsort(desc[:, 0])]  # the nearest points of low queries come in the last tiles
    y = x[::-7][:60] + 0.002
    xc, yc = x - x.mean(axis=0), y - x.mean(axis=0)
    ops = [G._Operands.build(yc, xc, 1 / (2 * h * h), dtype) for h in (H, 0.05)]
    clip = (G._FLOOR[precision], 0.0) if precision == "float64" else None
    plain = np.log(G._tile_pass(ops, 32, False, dtype, 2, clip))
    shifted = G._tile_pass(ops, 32, False, dtype, 2, clip, shifted=True)
    np.testing.assert_allclose(shifted, plain, rtol=tol, atol=tol)
    np.testing.assert_allclose(shifted, _exact_log_sums(y, x, [H, 0.05]), rtol=tol, atol=100 * tol)


def test_array_of_bandwidths_in_one_pass(desc):
    """An array of bandwidths gives quests' per-bandwidth values (quests accepts a numpy array)."""
    hs = np.array([0.01, 0.015, 0.05])
    np.testing.assert_allclose(G.entropy(desc, hs), quests_entropy.entropy(desc, hs), rtol=1e-10)
    np.testing.assert_allclose(G.diversity(desc, hs), quests_entropy.diversity(desc, hs), rtol=1e-10)
    y, x = desc[:50], desc[50:]
    dh = G.delta_entropy(y, x, hs)
    assert dh.shape == (50, 3)
    np.testing.assert_allclose(dh, quests_entropy.delta_entropy(y, x, hs), rtol=0, atol=1e-8)
    for k, h in enumerate(hs):
        np.testing.assert_allclose(dh[:, k], G.delta_entropy(y, x, float(h)), rtol=1e-13)


def test_one_pass_gives_all_measures(desc):
    """dataset_information equals quests.entropy.get_all_metrics (entropy, diversity, self dH)."""
    info = G.dataset_information(desc, H)
    hq, dq, dhq = quests_entropy.get_all_metrics(desc, H)
    assert info.entropy == pytest.approx(hq, rel=1e-10)
    assert info.diversity == pytest.approx(dq, rel=1e-10)
    assert info.efficiency == pytest.approx(hq / math.log(len(desc)), rel=1e-10)
    np.testing.assert_allclose(info.delta_entropy, dhq, rtol=0, atol=1e-8)


def test_hand_computed_two_points():
    """Two points at distance r: p = 1 + exp(-r^2/2h^2) each; H = -log(p/2), D = log(2/p)."""
    r, h = 0.02, 0.015
    x = np.array([[0.0, 0.0], [r, 0.0]])
    p = 1 + math.exp(-r * r / (2 * h * h))
    assert G.entropy(x, h) == pytest.approx(-math.log(p / 2), rel=1e-14)
    assert G.diversity(x, h) == pytest.approx(math.log(2 / p), rel=1e-14)
    # far query at distance 1 and sqrt(1 + r^2): -log(e^-a + e^-b) = a - log(1 + e^-(b - a)),
    # a = 1/(2h^2) ~ 2222 (exp(-a) underflows in float64: quests would give +inf)
    a, b_minus_a = 1 / (2 * h * h), r * r / (2 * h * h)
    assert G.delta_entropy(np.array([[0.0, 1.0]]), x, h)[0] == pytest.approx(
        a - math.log1p(math.exp(-b_minus_a)), rel=1e-12)


def test_memory_is_bounded_by_the_tile():
    """N = 3000 with 256-row tiles: peak numpy allocation far below the N x N matrix (72 MB)."""
    x = np.random.default_rng(0).normal(size=(3000, 20)) * 0.01
    tracemalloc.start()
    G.entropy(x, H, tile_size=256, n_threads=2)
    G.delta_entropy(x[:1000] + 1.0, x, H, tile_size=256, n_threads=2)  # all rows repaired
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 8e6, f"peak {peak / 1e6:.1f} MB"


def test_inputs_not_modified(desc):
    """The caller's arrays are untouched."""
    x = desc.copy()
    hs = np.array([0.015, 0.02])
    G.dataset_information(x, hs, precision="float32")
    G.delta_entropy(x[:5], x, hs)
    np.testing.assert_array_equal(x, desc)
    np.testing.assert_array_equal(hs, [0.015, 0.02])


def test_npy_paths_accepted(desc, tmp_path):
    """Descriptors may be given as .npy paths."""
    np.save(tmp_path / "x.npy", desc)
    assert G.entropy(str(tmp_path / "x.npy"), H) == pytest.approx(G.entropy(desc, H), rel=1e-14)


@pytest.mark.parametrize("call,match", [
    (lambda: G.entropy(np.array([[0.0, np.nan]]), H), "finite"),
    (lambda: G.entropy(np.array([[0.0, np.inf], [1.0, 2.0]]), H), "finite"),
    (lambda: G.entropy(np.zeros((3, 2)), 0.0), "bandwidth"),
    (lambda: G.entropy(np.zeros((3, 2)), [0.1, -1.0]), "bandwidth"),
    (lambda: G.delta_entropy(np.zeros((3, 2)), np.zeros((4, 3)), H), "dimension"),
    (lambda: G.entropy(np.zeros((0, 4)), H), "empty"),
    (lambda: G.delta_entropy(np.zeros((3, 2)), np.zeros((0, 2)), H), "empty"),
    (lambda: G.entropy(np.zeros(4), H), "dimensions"),
    (lambda: G.entropy(np.zeros((3, 2)), H, precision="float16"), "precision"),
    (lambda: G.efficiency(np.zeros((1, 2)), H), "at least 2"),
])
def test_bad_input_one_clear_error(call, match):
    """Each bad input raises one InputError naming the problem."""
    with pytest.raises(InputError, match=match):
        call()
