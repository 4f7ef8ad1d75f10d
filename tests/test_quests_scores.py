"""QUESTS scores (atomscore.quests) against the ``quests`` package, and their contract.

References: ``quests.entropy`` (entropy / log N, diversity, delta_entropy) on the
descriptors pooled from all configurations (real QUESTS descriptors from
``quests.descriptor.get_descriptors``); for ``approx=True``, a brute-force numpy k-NN
(``scipy.spatial.distance.cdist``) with ``scipy.special.logsumexp``. Job folders are run
by the real LocalWorkflow and compared with in-memory ``compute``.
"""

import json
import math

import numpy as np
import pytest
from scipy.spatial.distance import cdist
from scipy.special import logsumexp

quests_entropy = pytest.importorskip("quests.entropy")

from atomscore import QUESTSDeltaEntropyScore, QUESTSDiversityScore, QUESTSEfficiencyScore, ScoreQuantity  # noqa: E402
from atomscore.errors import InputError  # noqa: E402

H = 0.015


@pytest.fixture(scope="module")
def dataset():
    from ase.build import bulk

    from atomscore.quests.descriptor import QUESTSDescriptor

    configs = []
    for i in range(6):
        atoms = (bulk("Si", "diamond", 5.43, cubic=True) if i % 2 else bulk("Cu", "fcc", 3.61, cubic=True)).repeat(2)
        atoms.rattle(0.02 + 0.02 * i, seed=i)
        configs.append(atoms)
    return QUESTSDescriptor().attach(configs, progress=False)


@pytest.fixture(scope="module")
def reference(dataset):
    from ase.build import bulk

    from atomscore.quests.descriptor import QUESTSDescriptor

    atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat(2)
    atoms.rattle(0.03, seed=42)
    return QUESTSDescriptor().compute(atoms)


def _pooled(configs, key="descriptors"):
    return np.vstack([a.arrays[key] for a in configs])


def test_efficiency_and_diversity_equal_quests(dataset):
    """Dataset scores pool every atom of every configuration: quests on the pooled array, 1e-10."""
    x = _pooled(dataset)
    eff = QUESTSEfficiencyScore().compute(dataset, ScoreQuantity.EFFICIENCY, descriptors_key="descriptors",
                                          bandwidth=H)
    assert eff == pytest.approx(quests_entropy.entropy(x, H) / math.log(len(x)), rel=1e-10)
    div = QUESTSDiversityScore().compute(dataset, "diversity", bandwidth=H)
    assert div == pytest.approx(quests_entropy.diversity(x, H), rel=1e-10)
    eff32 = QUESTSEfficiencyScore().compute(dataset, "EFFICIENCY", precision="float32")
    assert eff32 == pytest.approx(eff, rel=1e-5)
    both = QUESTSEfficiencyScore().compute(dataset, "EFFICIENCY", bandwidth=[0.01, 0.05])
    np.testing.assert_allclose(both, quests_entropy.entropy(x, np.array([0.01, 0.05])) / math.log(len(x)), rtol=1e-10)


def test_selection_mask(dataset):
    """apply_mask=True: only atoms with arrays['selection_mask'] true (quests on those rows);
    delta entropy gives NaN to unselected atoms and quests' value to the others."""
    rng = np.random.default_rng(3)
    masked = []
    for atoms in dataset:
        new = atoms.copy()
        new.arrays["selection_mask"] = rng.random(len(atoms)) < 0.5
        masked.append(new)
    x = np.vstack([a.arrays["descriptors"][a.arrays["selection_mask"]] for a in masked])
    div = QUESTSDiversityScore().compute(masked, "DIVERSITY", apply_mask=True)
    assert div == pytest.approx(quests_entropy.diversity(x, H), rel=1e-10)
    assert div != pytest.approx(QUESTSDiversityScore().compute(masked, "DIVERSITY"), rel=1e-3)
    ref = x[::2]
    out = QUESTSDeltaEntropyScore().compute_batch(masked, "DELTA_ENTROPY", reference_set=ref, apply_mask=True)
    for atoms, values in zip(masked, out):
        m = atoms.arrays["selection_mask"]
        assert values.shape == (len(atoms),) and np.all(np.isnan(values[~m]))
        np.testing.assert_allclose(values[m], quests_entropy.delta_entropy(atoms.arrays["descriptors"][m], ref, H),
                                   rtol=0, atol=1e-8)


def test_delta_entropy_equals_quests(dataset, reference, tmp_path):
    """Per atom, per configuration: quests.entropy.delta_entropy within 1e-8; compute equals
    compute_batch; the reference set may be a .npy path."""
    score = QUESTSDeltaEntropyScore()
    out = score.compute_batch(dataset, ScoreQuantity.DELTA_ENTROPY, reference_set=reference, bandwidth=H,
                              descriptors_key="descriptors")
    assert len(out) == len(dataset)
    for atoms, values in zip(dataset, out):
        with np.errstate(divide="ignore"):
            ref = quests_entropy.delta_entropy(atoms.arrays["descriptors"], reference, H)
        finite = np.isfinite(ref)
        assert finite.any()
        np.testing.assert_allclose(values[finite], ref[finite], rtol=0, atol=1e-8)
        assert np.all(np.isfinite(values))
    np.save(tmp_path / "ref.npy", reference)
    single = score.compute(dataset[1], "DELTA_ENTROPY", reference_set=str(tmp_path / "ref.npy"))
    np.testing.assert_allclose(single, out[1], rtol=1e-13)


def test_approx_is_exact_knn_log_sum_exp(dataset, reference):
    """approx=True: -logsumexp over the k nearest reference points (brute-force scipy reference);
    graph_neighbors is accepted (unused: our k-NN is exact)."""
    out = QUESTSDeltaEntropyScore().compute_batch(dataset, "DELTA_ENTROPY", reference_set=reference, approx=True,
                                                  num_nearest_neighbors=4, graph_neighbors=7)
    for atoms, values in zip(dataset, out):
        d2 = np.sort(cdist(atoms.arrays["descriptors"], reference, "sqeuclidean"), axis=1)[:, :4]
        np.testing.assert_allclose(values, -logsumexp(-d2 / (2 * H * H), axis=1), rtol=1e-10)


def test_results_saved_with_flat_metadata(dataset, reference, tmp_path):
    """save_results: arrays['quests_delta_entropy_score'] and flat info keys as the reference
    writes them; dataset scores write score_results.json."""
    from atomscore.io import read_extxyz

    score = QUESTSDeltaEntropyScore()
    out = score.compute_batch(dataset[:2], "DELTA_ENTROPY", reference_set=reference, bandwidth=0.02)
    score.save_results(out, tmp_path, dataset[:2])
    saved = read_extxyz(tmp_path / "score_results.xyz")
    np.testing.assert_allclose(saved[1].arrays["quests_delta_entropy_score"], out[1], rtol=1e-15)
    for atoms in saved:
        assert atoms.info["quests_delta_entropy_bandwidth"] == 0.02
        assert atoms.info["quests_delta_entropy_approx"] is False
        assert atoms.info["quests_delta_entropy_num_nearest_neighbors"] == 3
        assert atoms.info["quests_delta_entropy_graph_neighbors"] == 10
    eff = QUESTSEfficiencyScore()
    value = eff.compute(dataset, "EFFICIENCY", bandwidth=0.02)
    eff.save_results(value, tmp_path)
    data = json.loads((tmp_path / "score_results.json").read_text())
    assert data["quests_efficiency_score"] == pytest.approx(value, rel=1e-15)
    assert data["_metadata"]["bandwidth"] == 0.02


def test_run_through_local_workflow(dataset, reference, tmp_path):
    """run() -> job folders -> LocalWorkflow -> results equal to in-memory compute (batched dH, one dataset job)."""
    from atomscore.jobs.workflow import LocalWorkflow

    wf = LocalWorkflow(root_directory=str(tmp_path / "jobs"), nprocs=2)
    score = QUESTSDeltaEntropyScore()
    args = {"score_quantity": "DELTA_ENTROPY", "reference_set": reference, "bandwidth": H}
    ids = score.run("dh", dataset, args, workflow=wf, batch_size=4)
    assert len(ids) == 2
    wf.block_until_completed(ids)
    got = score.data_from_calc_ids(ids, workflow=wf)
    expected = score.compute_batch(dataset, "DELTA_ENTROPY", reference_set=reference, bandwidth=H)
    for atoms, values in zip(got, expected):
        np.testing.assert_allclose(atoms.arrays["quests_delta_entropy_score"], values, rtol=1e-12)
    div = QUESTSDiversityScore()
    ids = div.run("div", dataset, {"score_quantity": "DIVERSITY", "bandwidth": H}, workflow=wf)
    wf.block_until_completed(ids)
    (result,) = div.data_from_calc_ids(ids, workflow=wf)
    assert result["quests_diversity_score"] == pytest.approx(div.compute(dataset, "DIVERSITY"), rel=1e-12)


def test_inputs_not_modified(dataset, reference):
    """Atoms and the reference array are untouched."""
    before = [(dict(a.arrays), dict(a.info)) for a in dataset]
    ref = reference.copy()
    QUESTSDeltaEntropyScore().compute_batch(dataset, "DELTA_ENTROPY", reference_set=ref)
    QUESTSEfficiencyScore().compute(dataset, "EFFICIENCY")
    np.testing.assert_array_equal(ref, reference)
    for a, (arrays, info) in zip(dataset, before):
        assert set(a.arrays) == set(arrays) and a.info == info


def _with(dataset, index, key, value):
    configs = [a.copy() for a in dataset]
    if value is None:
        del configs[index].arrays[key]
    else:
        configs[index].arrays[key] = value
    return configs


def _bad_cases(dataset, reference):
    nan = dataset[2].arrays["descriptors"].copy()
    nan[3, 5] = np.nan
    dh = QUESTSDeltaEntropyScore()
    return [
        (lambda: QUESTSDiversityScore().compute(_with(dataset, 2, "descriptors", nan), "DIVERSITY"),
         "configuration 2.*finite"),
        (lambda: QUESTSEfficiencyScore().compute(_with(dataset, 4, "descriptors", None), "EFFICIENCY"),
         "configuration 4 has no"),
        (lambda: QUESTSEfficiencyScore().compute(dataset, "EFFICIENCY", bandwidth=0.0), "bandwidth"),
        (lambda: QUESTSEfficiencyScore().compute(dataset, "EFFICIENCY", bandwidth=-1), "bandwidth"),
        (lambda: dh.compute_batch(dataset, "DELTA_ENTROPY", reference_set=reference[:, :10]),
         "configuration 0.*dimension 10"),
        (lambda: dh.compute_batch(dataset, "DELTA_ENTROPY"), "reference_set"),
        (lambda: QUESTSDiversityScore().compute([], "DIVERSITY"), "empty"),
        (lambda: QUESTSEfficiencyScore().compute(dataset, "EFFICIENCY", apply_mask=True),
         "configuration 0 has no.*selection_mask"),
        (lambda: dh.compute_batch(dataset, "DELTA_ENTROPY", reference_set=reference, apply_mask=True),
         "selection_mask"),
        (lambda: QUESTSEfficiencyScore().compute(dataset, "DIVERSITY"), "score_quantity"),
        (lambda: dh.compute_batch(dataset, "DELTA_ENTROPY", reference_set=reference, approx=True,
                                  num_nearest_neighbors=0), "num_nearest_neighbors"),
        (lambda: dh.compute_batch(dataset, "DELTA_ENTROPY", reference_set=reference, precision="half"), "precision"),
        (lambda: dh.check_compute_args(dataset, "DELTA_ENTROPY", {"reference_set": reference, "bandwith": 0.1}),
         r"compute_args: unknown key\(s\) \[.bandwith.\]"),
        (lambda: QUESTSEfficiencyScore().check_compute_args(
            _with(dataset, 5, "descriptors", None), "EFFICIENCY", {}), "configuration 5"),
    ]


def test_bad_input_one_clear_error(dataset, reference):
    """Each bad input gives one InputError that names the argument / configuration."""
    for call, match in _bad_cases(dataset, reference):
        with pytest.raises(InputError, match=match):
            call()


def test_bad_input_stops_run_before_any_folder(dataset, tmp_path):
    """run() refuses a bandwidth <= 0 before writing a job folder."""
    from atomscore.jobs.workflow import LocalWorkflow

    wf = LocalWorkflow(root_directory=str(tmp_path / "jobs"), nprocs=1)
    with pytest.raises(InputError, match="bandwidth"):
        QUESTSEfficiencyScore().run("e", dataset, {"score_quantity": "EFFICIENCY", "bandwidth": 0}, workflow=wf)
    assert not any((tmp_path / "jobs").rglob("job.json"))
