"""The torch backend of the QUESTS kernel (backend='torch', device='cpu'), against numpy.

References: our numpy kernel (itself equal to ``quests.entropy`` to 1e-10 and to scipy's
full log-sum-exp, tests/test_quests_kernels.py), scipy's ``logsumexp`` over the full
``cdist`` matrix for rows beyond float64's exp range, and ``quests.gpu.entropy`` (quests'
own torch code) on the same descriptors. Runs on the CPU build of torch; no test needs a GPU.
"""

import math
import sys

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

torch = pytest.importorskip("torch")

from atomscore.errors import InputError, MissingExtraError  # noqa: E402
from atomscore.quests.kernels import gaussian as G  # noqa: E402
from atomscore.quests import QUESTSDeltaEntropyScore, QUESTSDiversityScore, QUESTSEfficiencyScore  # noqa: E402

H = 0.015
T = dict(backend="torch", device="cpu")


@pytest.fixture(scope="module")
def desc():
    from quests.descriptor import get_descriptors

    from test_quests_kernels import _structures

    return get_descriptors(_structures(), k=32, cutoff=5.0)


@pytest.fixture(scope="module")
def mixed(desc):
    """Queries from on the reference set to far beyond float64's exp range, and the reference."""
    y, x = desc[::3], np.delete(desc, np.s_[::3], axis=0)
    return np.vstack([y[:40], y[40:200] + np.geomspace(0.005, 0.25, 160)[:, None]]), x


def _close(a, b, rtol):
    """Relative to the scale of the values (log p crosses 0 on self sums)."""
    a, b = np.asarray(a), np.asarray(b)
    assert np.max(np.abs(a - b)) <= rtol * max(1.0, np.max(np.abs(b))), np.max(np.abs(a - b))


@pytest.mark.parametrize("tile,threads", [(1024, 1), (97, 2)])
def test_float64_equals_numpy(desc, tile, threads):
    """entropy, diversity, efficiency, self log sums and the estimates: 1e-12 relative."""
    kw = dict(tile_size=tile, n_threads=threads)
    hs = [H, 0.1]
    for f in (G.entropy, G.diversity, G.efficiency):
        np.testing.assert_allclose(f(desc, hs, **kw, **T), f(desc, hs, **kw), rtol=1e-12)
    _close(G.log_kernel_sums(desc, None, hs, **kw, **T), G.log_kernel_sums(desc, None, hs, **kw), 1e-12)
    for f in (G.estimate_entropy, G.estimate_diversity, G.estimate_efficiency):
        ours, ref = f(desc, hs, 100, 3, **kw, **T), f(desc, hs, 100, 3, **kw)
        np.testing.assert_allclose(ours.value, ref.value, rtol=1e-12)
        np.testing.assert_allclose(ours.standard_error, ref.standard_error, rtol=1e-9)


@pytest.mark.parametrize("tile,threads", [(64, 2), (1024, 1)])
def test_repaired_rows_float64(mixed, tile, threads, monkeypatch):
    """Rows beyond the lift go through torch's log-sum-exp pass and equal numpy's (1e-12
    relative) and scipy's full log-sum-exp; the test data really holds such rows."""
    queries, x = mixed
    shifted_rows = []
    from atomscore.quests.kernels import torch_backend

    inner = torch_backend._tile_pass
    monkeypatch.setattr(torch_backend, "_tile_pass", lambda ops, *a, shifted=False, device: (
        shifted_rows.append(len(ops[0].left)) if shifted else None) or inner(ops, *a, shifted=shifted, device=device))
    hs = np.array([H, 1.0])
    ours = G.log_kernel_sums(queries, x, hs, tile_size=tile, n_threads=threads, **T)
    assert shifted_rows and shifted_rows[0] >= 5
    ref = G.log_kernel_sums(queries, x, hs, tile_size=tile, n_threads=threads)
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-10)
    exact = np.stack([logsumexp(-cdist(queries, x, "sqeuclidean") / (2 * h * h), axis=1) for h in hs], axis=1)
    np.testing.assert_allclose(ours, exact, rtol=1e-12, atol=1e-10)
    np.testing.assert_allclose(G.delta_entropy(queries, x, H, **T), -exact[:, 0], rtol=1e-12, atol=1e-10)


def test_float32_within_documented_error(desc, mixed):
    """float32: the numpy float32 tolerances (entropy 1e-5 relative, dH 5e-3 nats absolute
    of float64), repaired rows included, and close to numpy's own float32 result."""
    queries, x = mixed
    ref64 = G.delta_entropy(queries, x, H)
    ours = G.delta_entropy(queries, x, H, precision="float32", tile_size=200, **T)
    np.testing.assert_allclose(ours, ref64, rtol=0, atol=5e-3)
    np.testing.assert_allclose(ours, G.delta_entropy(queries, x, H, precision="float32", tile_size=200),
                               rtol=0, atol=5e-3)
    assert G.entropy(desc, H, precision="float32", **T) == pytest.approx(G.entropy(desc, H), rel=1e-5)
    assert G.diversity(desc, H, precision="float32", **T) == pytest.approx(G.diversity(desc, H), rel=1e-5)


def test_equals_quests_gpu_entropy(desc):
    """quests' own torch code (quests.gpu.entropy, float64 tensors on the CPU): 1e-10 relative."""
    quests_gpu = pytest.importorskip("quests.gpu.entropy")
    ref = float(quests_gpu.entropy(torch.tensor(desc, dtype=torch.float64), H, device="cpu"))
    assert G.entropy(desc, H, **T) == pytest.approx(ref, rel=1e-10)


def _configs(desc, size=68):
    from ase import Atoms

    configs = []
    for i in range(0, len(desc), size):
        atoms = Atoms("H" * len(desc[i:i + size]), positions=np.zeros((len(desc[i:i + size]), 3)))
        atoms.arrays["descriptors"] = desc[i:i + size]
        configs.append(atoms)
    return configs


def test_scores_with_torch(desc):
    """backend/device as compute args of the three scores: numpy's values, backend in the metadata."""
    configs = _configs(desc)
    eff = QUESTSEfficiencyScore()
    value = eff.compute(configs, "EFFICIENCY", **T)
    meta = eff.parse_for_storage(value)["_metadata"]
    assert (meta["backend"], meta["device"]) == ("torch", "cpu")
    assert value == pytest.approx(eff.compute(configs, "EFFICIENCY"), rel=1e-12)
    div = QUESTSDiversityScore()
    est_t = div.compute(configs, "DIVERSITY", sample_size=50, **T)
    est_n = div.compute(configs, "DIVERSITY", sample_size=50)
    assert est_t.value == pytest.approx(est_n.value, rel=1e-12)
    dh = QUESTSDeltaEntropyScore()
    ref = desc[::5] + 0.01
    np.testing.assert_allclose(np.concatenate(dh.compute_batch(configs, reference_set=ref, **T)),
                               np.concatenate(dh.compute_batch(configs, reference_set=ref)), rtol=1e-12)


def test_caller_state_restored(desc):
    """torch's global thread count and float32 matmul precision are as before the call."""
    threads, precision = torch.get_num_threads(), torch.get_float32_matmul_precision()
    G.entropy(desc[:300], H, n_threads=2, precision="float32", **T)
    assert (torch.get_num_threads(), torch.get_float32_matmul_precision()) == (threads, precision)


def test_missing_torch_names_the_extra(desc, monkeypatch):
    """Without torch (import fails): MissingExtraError naming atomscore[gpu], for the kernel and a score."""
    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` raise ImportError
    with pytest.raises(MissingExtraError, match=r"atomscore\[gpu\]"):
        G.entropy(desc, H, backend="torch")
    with pytest.raises(MissingExtraError, match=r"atomscore\[gpu\]"):
        QUESTSDeltaEntropyScore().check_compute_args(_configs(desc[:10]), "DELTA_ENTROPY",
                                                     {"reference_set": desc, "backend": "torch"})


@pytest.mark.parametrize("kwargs,match", [
    (dict(backend="jax"), "backend"),
    (dict(backend="numpy", device="cuda"), "numpy backend runs on the CPU"),
    (dict(backend="torch", device="tpu"), "device"),
    (dict(backend="torch", device=3), "device"),
    (dict(backend="torch", device="nonsense"), "device"),
])
def test_bad_backend_or_device(desc, kwargs, match):
    with pytest.raises(InputError, match=match):
        G.entropy(desc[:50], H, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_cuda_without_gpu_is_one_clear_error(desc):
    with pytest.raises(InputError, match="no CUDA GPU"):
        G.delta_entropy(desc[:5], desc, H, backend="torch", device="cuda")


def test_approx_with_torch_refused(desc):
    from ase import Atoms

    atoms = Atoms("H2", positions=np.zeros((2, 3)))
    atoms.arrays["descriptors"] = desc[:2]
    with pytest.raises(InputError, match="approx=True"):
        QUESTSDeltaEntropyScore().compute(atoms, reference_set=desc, approx=True, **T)
