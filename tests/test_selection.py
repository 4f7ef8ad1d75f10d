"""Selection of configurations (atomscore.quests.selection) and the ``select``/``curve`` commands.

Independent references: a brute-force greedy that recomputes ``quests.entropy.entropy`` of
every candidate union at each step; ``quests.compression.DatasetCompressor`` (its
``get_indices``, ``entropy``, ``diversity``, ``overlap``) on the same descriptors and seeds;
``quests.entropy.delta_entropy`` for coverage by the reference; scipy ``cdist`` for the
grouped kernel sums.
"""

import json
import random
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

quests_entropy = pytest.importorskip("quests.entropy")
from quests.compression import DatasetCompressor  # noqa: E402

from atomscore.quests.descriptor import QUESTSDescriptor  # noqa: E402
from atomscore.errors import InputError  # noqa: E402
from atomscore.quests.kernels import gaussian  # noqa: E402
from atomscore.quests.curve import learning_curve  # noqa: E402
from atomscore.quests.selection import METHODS, select  # noqa: E402

H = 0.005  # k=8 descriptors of 8-atom cells: at 0.015 nearly every environment overlaps
ROOT = Path(__file__).resolve().parents[1]


def _structures(n, seed=0):
    """Rattled and strained Si diamond (8 atoms) and Cu fcc (8 atoms) cells."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        base = [bulk("Si", "diamond", 5.43, cubic=True), bulk("Cu", "fcc", 3.61, cubic=True) * (2, 1, 1)][i % 2]
        atoms = base.copy()
        eps = np.eye(3) + rng.uniform(-0.03, 0.03, (3, 3))
        atoms.set_cell(atoms.cell @ ((eps + eps.T) / 2), scale_atoms=True)
        atoms.rattle(0.01 + 0.01 * (i % 4), seed=int(rng.integers(1 << 30)))
        atoms.info["label"] = f"s{i}"
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def pool():
    return QUESTSDescriptor(k=8).attach(_structures(16))


def _x(configs):
    return [a.arrays["descriptors"] for a in configs]


def _brute_force(pool_x, size, ref_x=None):
    """Greedy by recomputing quests' entropy of reference ∪ selected ∪ candidate for every candidate.

    Candidates all of whose environments the reference already holds (quests' dH < 1e-5)
    are not candidates (the documented rule of conditional selection).
    """
    chosen, values = [], []
    base = [] if ref_x is None else [np.concatenate(ref_x)]
    covered = set()
    if ref_x is not None:
        with np.errstate(divide="ignore"):  # quests: -log(0) = inf for environments far from the reference
            covered = {c for c, x in enumerate(pool_x)
                       if np.all(quests_entropy.delta_entropy(x, base[0], h=H) < 1e-5)}
    for _ in range(size):
        best = None
        for c in range(len(pool_x)):
            if c in chosen or c in covered:
                continue
            h = float(quests_entropy.entropy(np.concatenate(base + [pool_x[i] for i in chosen + [c]]), h=H))
            if best is None or h > best[0]:
                best = (h, c)
        chosen.append(best[1])
        values.append(best[0])
    return chosen, values


# ----------------------------------------------------------------------------- entropy greedy

def test_entropy_greedy_equals_brute_force(pool):
    sel = select(pool, 7, bandwidth=H, progress=False)
    chosen, values = _brute_force(_x(pool), 7)
    assert sel.indices == chosen
    np.testing.assert_allclose([s["entropy"] for s in sel.summary["steps"]], values, rtol=0, atol=1e-10)


def test_conditional_entropy_greedy_equals_brute_force(pool):
    ref = QUESTSDescriptor(k=8).attach(_structures(3, seed=9))
    sel = select(pool, 5, reference=ref, bandwidth=H, progress=False)
    chosen, values = _brute_force(_x(pool), 5, _x(ref))
    assert sel.indices == chosen and 6 not in chosen  # (pool[6] is covered by this reference)
    np.testing.assert_allclose([s["entropy_with_reference"] for s in sel.summary["steps"]], values,
                               rtol=0, atol=1e-10)
    # the selection's own entropy, without the reference
    own = quests_entropy.entropy(np.concatenate([pool[i].arrays["descriptors"] for i in chosen]), h=H)
    assert sel.summary["selection"]["entropy"] == pytest.approx(float(own), abs=1e-10)


def test_summary_measures_equal_quests(pool):
    sel = select(pool, 5, bandwidth=H, progress=False)
    dc = DatasetCompressor(pool, descriptor_fn=lambda a: a.arrays["descriptors"], bandwidth=H)
    for k, step in enumerate(sel.summary["steps"], 1):
        chosen = sel.indices[:k]
        assert step["entropy"] == pytest.approx(dc.entropy(chosen), abs=1e-10)
        assert step["diversity"] == pytest.approx(dc.diversity(chosen), abs=1e-10)
        with np.errstate(divide="ignore"):  # quests: -log(0) for environments far from the selection
            assert step["overlap"] == dc.overlap(chosen)
        assert step["n_envs"] == dc.num_envs(chosen)
    assert sel.summary["pool"]["entropy"] == pytest.approx(dc.entropy(), abs=1e-10)
    assert sel.summary["pool"]["diversity"] == pytest.approx(dc.diversity(), abs=1e-10)


def test_selected_configs_are_copies_with_pool_index(pool):
    raw = _structures(6)
    before = [a.copy() for a in raw]
    sel = select(raw, 3, progress=False)  # descriptors computed (default settings)
    assert {k: sel.summary["descriptors"][k] for k in ("name", "cutoff", "k")} == {"name": "QUESTS", "cutoff": 5.0,
                                                                                   "k": 32}
    for step, (i, atoms) in enumerate(zip(sel.indices, sel.configs), 1):
        assert atoms.info["pool_index"] == i and atoms.info["selection_step"] == step
        assert atoms.info["label"] == raw[i].info["label"]
        np.testing.assert_array_equal(atoms.positions, raw[i].positions)
        assert "descriptors" not in atoms.arrays
    for a, b in zip(raw, before):  # the caller's Atoms are untouched
        assert a.info == b.info and set(a.arrays) == set(b.arrays)


def test_missing_descriptors_computed_with_the_recorded_settings(pool):
    bare = _structures(16)[10:]  # the same structures as pool[10:], without descriptors
    mixed = pool[:10] + bare
    sel = select(mixed, 4, bandwidth=H, progress=False)
    assert sel.indices == select(pool, 4, bandwidth=H, progress=False).indices
    assert sel.summary["descriptors"]["k"] == 8 and sel.summary["descriptors_origin"] == "given and computed"


def test_atoms_budget(pool):
    sel = select(pool, atoms=44, bandwidth=H, progress=False)
    assert sum(len(pool[i]) for i in sel.indices) <= 44
    assert len(sel.indices) == 5  # 8 atoms each
    big = QUESTSDescriptor(k=8).attach([_structures(2)[0] * (2, 1, 1)])  # 16 atoms
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a spent budget is the expected end: no warning
        mixed = select(pool[:4] + big, atoms=20, bandwidth=H, progress=False)
    assert sum(len((pool[:4] + big)[i]) for i in mixed.indices) <= 20
    fps = select(pool, atoms=44, method="fps", bandwidth=H, progress=False)
    assert fps.indices == select(pool, 5, method="fps", bandwidth=H, progress=False).indices


# ----------------------------------------------------------------------------- quests' methods

@pytest.mark.parametrize("method", ["fps", "msc"])
def test_fps_msc_equal_quests(pool, method):
    # h = 0.015: no kernel sum underflows here, so quests' msc has no -log(0) = inf ties
    # (where it has, it takes the first; we rank by the exact finite dH)
    dc = DatasetCompressor(pool, descriptor_fn=lambda a: a.arrays["descriptors"], bandwidth=0.015)
    theirs = [int(i) for i in dc.get_indices(method, 8)]
    assert select(pool, 8, method=method, bandwidth=0.015, progress=False).indices == theirs


def test_msc_with_reference_equals_quests_msc_conditional(pool):
    ref, cand = pool[:4], pool[4:]
    dc = DatasetCompressor(cand, descriptor_fn=lambda a: a.arrays["descriptors"], bandwidth=H)
    theirs = [int(i) for i in dc.get_indices("msc_conditional", 6, reference=_x(ref))]
    assert select(cand, 6, method="msc", reference=ref, bandwidth=H, progress=False).indices == theirs


def test_random_and_k_means_equal_quests_with_same_seed(pool):
    dc = DatasetCompressor(pool, descriptor_fn=lambda a: a.arrays["descriptors"], bandwidth=H)
    random.seed(11)
    theirs = [int(i) for i in dc.get_indices("random", 6)]
    assert select(pool, 6, method="random", seed=11, progress=False).indices == theirs
    np.random.seed(5)
    theirs = [int(i) for i in dc.get_indices("k_means", 6)]
    ours = select(pool, 6, method="k_means", seed=5, progress=False).indices
    # quests' loop stops one cluster short (range(labels.max())); ours also takes the last cluster
    assert len(theirs) == 5 and ours[:5] == theirs and len(set(ours)) == 6


# ----------------------------------------------------------------------------- conditional

def test_conditional_selection_never_picks_what_the_reference_holds():
    desc = QUESTSDescriptor(k=8)
    ref = desc.attach(_structures(4, seed=3))
    novel = desc.attach(_structures(5, seed=4))
    pool = [ref[1], novel[0], ref[3], novel[1], novel[2], ref[0], novel[3], ref[2], novel[4]]
    dup = {0, 2, 5, 7}
    # each duplicate is covered by the reference: quests' dH < 1e-5 for all its environments
    r = np.concatenate(_x(ref))
    for i in dup:
        assert np.all(quests_entropy.delta_entropy(pool[i].arrays["descriptors"], r, h=H) < 1e-5)
    sel = select(pool, 5, reference=ref, bandwidth=H, progress=False)
    assert not dup & set(sel.indices) and len(sel.indices) == 5
    with pytest.warns(UserWarning, match="already in the reference"):
        more = select(pool, 8, reference=ref, bandwidth=H, progress=False)
    assert not dup & set(more.indices) and len(more.indices) == 5
    assert more.summary["stopped_early"]


@pytest.mark.parametrize("method", ["entropy", "msc"])
def test_pruned_kernel_sums_select_the_same(method):
    """prune=True (issue 27): the same selection and measures as the dense sums (reference: the
    dense run), on a pool and reference of two phases whose cells the pruning separates."""
    pool_ = QUESTSDescriptor(k=8).attach(_structures(60, seed=3))
    ref = QUESTSDescriptor(k=8).attach(_structures(40, seed=4))
    x = np.concatenate(_x(pool_))
    report = {}
    gaussian._log_sums(x, x, True, np.array([H]), "float64", 1024, 1, prune=1e-10, report=report)
    assert report["pairs_kept"] <= 0.6  # the pruning skips pairs here: the comparison below means something
    dense = select(pool_, 6, method=method, reference=ref, bandwidth=H, progress=False)
    pruned = select(pool_, 6, method=method, reference=ref, bandwidth=H, progress=False, prune=True)
    assert pruned.indices == dense.indices
    assert pruned.summary["prune_tolerance"] == 1e-10 and dense.summary["prune_tolerance"] is None
    for part in ("pool", "reference", "selection"):
        for key in ("entropy", "diversity"):
            assert pruned.summary[part][key] == pytest.approx(dense.summary[part][key], rel=1e-10, abs=1e-10)


# ----------------------------------------------------------------------------- uncertainty, weights

def test_uncertainty_order_and_diversity_guard(pool):
    configs = [pool[0], pool[0].copy(), pool[1], pool[2]]
    uq = [np.full(8, 0.9), np.full(8, 0.8), np.linspace(0.0, 1.0, 8), np.full(8, 0.1)]
    assert select(configs, 3, method="uncertainty", uncertainties=uq, progress=False).indices == [0, 1, 2]
    assert select(configs, 3, method="uncertainty", uncertainties=uq, reduce="max",
                  progress=False).indices == [2, 0, 1]
    # config 1 repeats config 0: its dH against the selection is <= 0, the guard skips it
    guarded = select(configs, 3, method="uncertainty", uncertainties=uq, min_delta_entropy=0.01, bandwidth=H,
                     progress=False)
    assert guarded.indices == [0, 2, 3]
    tagged = []
    for a, u in zip(configs, uq):
        a = a.copy()
        a.arrays["ltau_forces_uq_score"] = u
        tagged.append(a)
    assert select(tagged, 2, method="uncertainty", progress=False).indices == [0, 1]


def test_weights_nonzero_largest_first(pool):
    configs = [a.copy() for a in pool[:5]]
    for a, w in zip(configs, [0.0, 2.5, 0.0, 7.0, 1.0]):
        a.info["fim_matching_weight_score"] = w
    assert select(configs, method="weights", progress=False).indices == [3, 1, 4]
    assert select(configs, 2, method="weights", progress=False).indices == [3, 1]
    with pytest.raises(InputError, match="at most the 3 configurations with non-zero weight"):
        select(configs, 4, method="weights", progress=False)
    with pytest.raises(InputError, match="non-negative"):
        select(configs, method="weights", weights=[1, -1, 0, 0, 0], progress=False)


# ----------------------------------------------------------------------------- bad input

def test_bad_input_one_clear_error(pool):
    with pytest.raises(InputError, match="at most the 16 configurations of the pool, got 17"):
        select(pool, 17, progress=False)
    with pytest.raises(InputError) as err:
        select(pool, 2, method="greedy", progress=False)
    for m in METHODS:
        assert repr(m) in str(err.value)
    bare = _structures(3)
    with pytest.raises(InputError, match="descriptor=None forbids computing"):
        select(bare, 2, descriptor=None, progress=False)
    unrecorded = [x.copy() for x in pool[:2]]
    for x in unrecorded:
        del x.info["descriptors_settings"]
    with pytest.raises(InputError, match="settings are not recorded"):
        select(unrecorded + bare, 2, progress=False)
    other = QUESTSDescriptor(k=6).attach(_structures(2))
    with pytest.raises(InputError, match="descriptor settings differ"):
        select(pool, 2, reference=other, progress=False)
    for x in other:
        del x.info["descriptors_settings"]
    with pytest.raises(InputError, match="descriptors of other settings"):  # unrecorded: told by the width
        select(pool, 2, reference=other, progress=False)
    b = QUESTSDescriptor(k=8, cutoff=4.0).attach(_structures(2))
    with pytest.raises(InputError, match="descriptor settings differ"):
        select(pool, 2, reference=b, progress=False)
    with pytest.raises(InputError, match="uncertainties"):
        select(pool, 2, method="uncertainty", progress=False)
    with pytest.raises(InputError, match="k_means needs"):
        select(pool, atoms=20, method="k_means", progress=False)
    with pytest.raises(InputError, match="bandwidth"):
        select(pool, 2, bandwidth=float("nan"), progress=False)


def test_grouped_kernel_sums_against_scipy(pool):
    from scipy.spatial.distance import cdist

    y, x = pool[0].arrays["descriptors"], np.concatenate(_x(pool[1:6]))
    starts = np.arange(0, 40, 8)
    cols, groups = gaussian.grouped_kernel_sums(y, x, starts, 0.05, tile_size=16, n_threads=2)
    k = np.exp(-cdist(y, x, "sqeuclidean") / (2 * 0.05 ** 2))
    np.testing.assert_allclose(cols, k.sum(axis=0), rtol=1e-12)
    np.testing.assert_allclose(groups, np.add.reduceat(k, starts, axis=1), rtol=1e-12)


def test_memory_is_bounded_by_tiles_not_pool_squared():
    import tracemalloc

    from ase import Atoms

    rng = np.random.default_rng(1)
    configs = []
    for i in range(200):  # 6,000 environments: an N x N float64 matrix would be 288 MB
        a = Atoms("H30", positions=np.zeros((30, 3)))
        a.arrays["descriptors"] = rng.normal(size=(1, 16)) * 0.1 + 0.01 * rng.normal(size=(30, 16))
        configs.append(a)
    tracemalloc.start()
    try:
        sel = select(configs, 20, bandwidth=0.05, progress=False, n_threads=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(sel.indices) == 20
    assert peak < 6000 ** 2 * 8 / 8, peak  # tiles, the pool's descriptors, the (rows x configurations) sums


def test_learning_curve(pool):
    curve = learning_curve(pool, 6, method="msc", bandwidth=H, progress=False)
    assert curve["n_configs"] == [1, 2, 3, 4, 5, 6]
    assert len(curve["entropy"]) == len(curve["overlap"]) == 6
    assert all(b >= a for a, b in zip(curve["overlap"], curve["overlap"][1:]))  # overlap only grows


# ----------------------------------------------------------------------------- the commands, for real

def _cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "atomscore.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})


def test_cli_select_and_curve(tmp_path):
    import ase.io

    ase.io.write(tmp_path / "pool.xyz", _structures(10))
    ase.io.write(tmp_path / "ref.xyz", _structures(2, seed=8))
    r = _cli("select", "pool.xyz", "-n", "4", "--reference", "ref.xyz", "-k", "8", "-b", "0.005", "-o", "picked.xyz",
             "--summary", "summary.json", "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    picked = ase.io.read(tmp_path / "picked.xyz", index=":")
    assert [a.info["pool_index"] for a in picked] == summary["indices"] and len(picked) == 4
    assert summary["descriptors"]["k"] == 8 and summary["descriptors"]["cutoff"] == 5.0
    r = _cli("curve", "pool.xyz", "--method", "fps", "-k", "8", "-o", "curve.json", "--plot", "curve.png",
             "--no-progress", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(json.loads((tmp_path / "curve.json").read_text())["entropy"]) == 10


def test_cli_bad_input_writes_nothing(tmp_path, monkeypatch, capsys):
    import ase.io

    from atomscore.cli import main

    monkeypatch.chdir(tmp_path)
    ase.io.write(tmp_path / "pool.xyz", _structures(3))

    def run(*args):
        code = main(["select", "pool.xyz", *args, "--no-progress"])
        return code, capsys.readouterr().err

    for args, message in [(("-n", "5"), "at most the 3 configurations"),
                          (("-n", "2", "--no-compute-descriptors"), "forbids computing"),
                          (("-n", "2", "--reference", "missing.xyz"), "file not found"),
                          (("-n", "2", "--summary", "s.txt"), "ending in .json"),
                          (("-n", "2", "-b", "-1"), "bandwidth")]:
        code, err = run(*args, "-o", "out.xyz")
        assert code == 2 and message in err, err
        assert sorted(p.name for p in tmp_path.iterdir()) == ["pool.xyz"]
    (tmp_path / "out.xyz").write_text("mine")
    code, err = run("-n", "1", "-o", "out.xyz")
    assert code == 2 and "exists" in err and (tmp_path / "out.xyz").read_text() == "mine"
    code, err = run("-n", "1", "-o", "pool.xyz")
    assert code == 2 and "overwrite the input" in err
    for out, message in [("picked.foo", "cannot tell a configuration format"), ("nodir/picked.xyz", "does not exist")]:
        code, err = run("-n", "1", "-o", out)
        assert code == 2 and message in err, err
    code, err = run("-n", "1", "-o", "same.json", "--summary", "same.json")
    assert code == 2 and "also the -o/--output" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.xyz", "pool.xyz"]
    with pytest.raises(SystemExit):  # argparse: an unknown method, with the list of methods
        main(["select", "pool.xyz", "-n", "1", "--method", "greedy", "-o", "x.xyz"])
    err = capsys.readouterr().err
    assert all(m in err for m in METHODS)
