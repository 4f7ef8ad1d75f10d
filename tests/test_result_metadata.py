"""Metadata belongs to the result it describes (not to the score's last call).

Before the fix ``compute_batch(k=1)``, ``compute_batch(k=5)``, ``save_results(results_of_k1)``
stored k=5; metadata was recorded once per configuration by a wrapper applied silently in
``__init_subclass__``; and ``FIMTrainingSetScore.get_metadata`` re-opened the KIM model.
References: the arguments each call was given.
"""

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk

import atomscore
from atomscore import InputError, ScoreResults
from atomscore.catalog import SCORE_TYPES, load_public
from atomscore.score import ScoreBase

sys.path.insert(0, str(Path(__file__).parent))
from toy_scores import MeanDescriptorScore, WeightedDistanceScore  # noqa: E402


def _configs(n=3, dim=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = bulk("Si", "diamond", 5.43, cubic=True)
        atoms.rattle(0.05, seed=i)
        atoms.arrays["descriptors"] = rng.random((len(atoms), dim))
        out.append(atoms)
    return out


def _ltau():
    rng = np.random.default_rng(1)
    return atomscore.LTAUForcesUQScore(train_descriptors=rng.random((30, 3)),
                                       error_pdfs=rng.random((8, 30)) + 0.05, from_error_logs=True, nbins=10)


def test_saving_an_earlier_batch_stores_its_own_metadata(tmp_path):
    score, configs = _ltau(), _configs()
    r1 = score.compute_batch(configs, "UNCERTAINTY", num_nearest_neighbors=1)
    r5 = score.compute_batch(configs, "UNCERTAINTY", num_nearest_neighbors=5)
    assert isinstance(r1, ScoreResults) and isinstance(r1, list) and len(r1) == 3
    assert r1.metadata["num_nearest_neighbors"] == 1 and r5.metadata["num_nearest_neighbors"] == 5
    saved = atomscore.LTAUForcesUQScore.read_data(score.save_results(r1, tmp_path, configs))
    assert all(a.info["ltau_forces_uq_num_nearest_neighbors"] == 1 for a in saved)
    assert all(a.info["_metadata"]["ltau_forces_uq"]["num_nearest_neighbors"] == 1 for a in saved)
    np.testing.assert_allclose(saved[0].arrays["ltau_forces_uq_score"], r1[0])


def test_single_values_are_attributed_by_identity(tmp_path):
    score, dataset = atomscore.QUESTSEfficiencyScore(), _configs()
    e1 = score.compute(dataset, "EFFICIENCY", bandwidth=0.1)
    e2 = score.compute(dataset, "EFFICIENCY", bandwidth=0.2)
    assert e1 != e2
    data = score.read_data(score.save_results(e1, tmp_path))
    assert data["_metadata"]["bandwidth"] == 0.1 and data["quests_efficiency_score"] == pytest.approx(float(e1))
    data = score.read_data(score.save_results(e2, tmp_path, overwrite=True))  # replacing is asked for
    assert data["_metadata"]["bandwidth"] == 0.2
    assert score.metadata_of(e1)["bandwidth"] == 0.1


def test_views_of_a_fim_array_keep_their_metadata():
    score = atomscore.QUESTSDeltaEntropyScore()
    configs = _configs()
    ref = configs[0].arrays["descriptors"]
    dh = score.compute(configs[1], "DELTA_ENTROPY", reference_set=ref, bandwidth=0.3)
    assert score.metadata_of(np.asarray(dh).reshape(-1, 1))["bandwidth"] == 0.3


def test_results_it_cannot_attribute_are_refused(tmp_path):
    score, configs = _ltau(), _configs()
    r1 = score.compute_batch(configs, "UNCERTAINTY", num_nearest_neighbors=2)
    by_hand = [np.asarray(x).copy() for x in r1]
    with pytest.raises(InputError, match="cannot tell which call"):
        score.save_results(by_hand, tmp_path, configs)
    with pytest.raises(InputError, match="cannot tell which call"):
        score.save_results(r1[:2], tmp_path, configs[:2])  # a slice is a plain list
    with pytest.raises(InputError, match="cannot tell which call"):
        atomscore.QUESTSEfficiencyScore().save_results(0.5, tmp_path)
    saved = score.read_data(score.save_results(by_hand, tmp_path, configs, metadata=r1.metadata))
    assert saved[0].info["ltau_forces_uq_num_nearest_neighbors"] == 2
    assert not list(tmp_path.glob(".*tmp"))


def test_metadata_recorded_once_per_call(monkeypatch):
    score = WeightedDistanceScore(weights=[1.0, 0.0, 0.0])
    calls = []
    original = ScoreBase.get_metadata
    monkeypatch.setattr(WeightedDistanceScore, "get_metadata",
                        lambda self, q, **kw: calls.append(kw) or original(self, q, **kw), raising=False)
    results = score.compute_batch(_configs(5), "UNCERTAINTY", centre=(0.0, 0.0, 0.0), scale=2.0)
    assert len(calls) == 1 and len(results) == 5
    assert results.metadata["scale"] == 2.0 and results.metadata["score_quantity"] == "UNCERTAINTY"


def test_dataset_compute_batch_and_toy_dataset(tmp_path):
    score = MeanDescriptorScore()
    out = score.compute_batch(_configs(), "DIVERSITY", descriptors_key="descriptors")
    assert isinstance(out, ScoreResults) and out.metadata["descriptors_key"] == "descriptors"
    assert pickle.loads(pickle.dumps(out)).metadata == out.metadata


def test_every_score_declares_its_recording_where_it_defines_compute():
    assert "__init_subclass__" not in ScoreBase.__dict__
    classes = [load_public(name) for name in SCORE_TYPES] + [WeightedDistanceScore, MeanDescriptorScore]
    for cls in classes:
        for klass in cls.__mro__:
            for name in ("compute", "compute_batch"):
                method = klass.__dict__.get(name)
                if method is None or (klass is ScoreBase and name == "compute"):  # the abstract one
                    continue
                assert getattr(method, "_records_metadata", False), f"{klass.__name__}.{name} lacks @records_metadata"


def test_fim_training_set_metadata_never_reopens_the_model(monkeypatch):
    pytest.importorskip("kimpy")
    from atomscore.fim.training_set import FIMTrainingSetScore
    from atomscore.potentials import kim

    sw = {"potential_type": "KIM", "potential_args": {"kim_id": "SW_StillingerWeber_1985_Si__MO_405512056662_005"}}
    score = FIMTrainingSetScore()
    configs = [bulk("Si", "diamond", 5.43, cubic=True)]
    configs[0].rattle(0.05, seed=1)
    first = score.compute_batch(configs, "SENSITIVITY", potential=sw, parameters_optimize={"A": [["default"]]})
    second = score.compute_batch(configs, "SENSITIVITY", potential=sw,
                                 parameters_optimize={"A": [["default"]], "lambda": [["default"]]})
    assert first.metadata["fim_index_to_parameter"] != second.metadata["fim_index_to_parameter"]
    assert len(first.metadata["fim_index_to_parameter"]) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("get_metadata opened a KIM model")

    monkeypatch.setattr(kim.KIMPotential, "__init__", refuse)
    meta = score.get_metadata("SENSITIVITY", potential=sw, parameters_optimize={"A": [["default"]]})
    assert meta["score_quantity"] == "SENSITIVITY"
    saved = score.parse_for_storage(first, configs)
    assert saved[0].info["_metadata"]["fim_training_set"]["fim_index_to_parameter"] == first.metadata["fim_index_to_parameter"]


class _Undecorated(MeanDescriptorScore):
    """A user's dataset score whose compute lacks @records_metadata."""

    def compute(self, dataset, score_quantity, descriptors_key="descriptors"):
        return float(np.mean(np.concatenate([a.arrays[descriptors_key] for a in dataset])))


def test_undecorated_compute_still_records_in_a_job(tmp_path):
    score = _Undecorated()
    value = score.run_batch(_configs(), "DIVERSITY", {"descriptors_key": "descriptors"})
    data = score.parse_for_storage(value)
    assert data["_metadata"] == {"score_quantity": "DIVERSITY", "descriptors_key": "descriptors"}
    with pytest.raises(InputError, match="records_metadata"):
        score.save_results(score.compute(_configs(), "DIVERSITY"), tmp_path)
