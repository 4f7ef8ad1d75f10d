"""The smaller Score contract (issue 20 items 2, 3, 5, 6).

Defaults are read from the ``compute`` signatures (references: ``inspect.signature`` of the
methods, and the values a call with every argument given records); results carry their own
metadata through views, copies and pickling (reference: the arguments of each call); the
QUESTS reference set is loaded and hashed once per call and once per ``run()`` (reference:
counted calls of ``ase.io.read`` and ``array_digest``); kinds, failure reasons and job file
names are types (reference: the file names a job folder holds on disk).
"""

import inspect
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

import atomscore
from atomscore import InputError, LocalWorkflow
from atomscore.errors import RefusedJobError
from atomscore.jobs.folder import FailureReason, read_job, read_status
from atomscore.jobs.paths import FILES, JobPaths, ScoreKind
from atomscore.quests import QUESTSDeltaEntropyScore, QUESTSDiversityScore, QUESTSEfficiencyScore
from atomscore.quests.defaults import DEFAULT_BANDWIDTH
from atomscore.quests.kernels import gaussian
from atomscore.score import REQUIRED, AtomCenteredScore, ModelScore, ScoreArray, ScoreFloat, records_metadata

sys.path.insert(0, str(Path(__file__).parent))
from test_result_metadata import _configs  # noqa: E402 - Si cells with random descriptors
from toy_scores import JobRootScore, toy_double  # noqa: E402


# ----------------------------------------------------------------------------- item 2: one source

class _Scaled(AtomCenteredScore):
    OUTPUT_KEY = "scaled"
    supported_score_quantities = (atomscore.ScoreQuantity.UNCERTAINTY,)

    def __init__(self, offset=0.0):
        super().__init__(offset=offset)

    @records_metadata
    def compute(self, atoms, score_quantity="UNCERTAINTY", scale=2.0):
        return scale * np.ones(len(atoms))


def test_compute_defaults_are_the_signature():
    sig = inspect.signature(QUESTSDeltaEntropyScore.compute).parameters
    want = {n: p.default for n, p in sig.items() if n not in ("self", "atoms", "score_quantity")}
    assert QUESTSDeltaEntropyScore.compute_defaults() == want and len(want) == 16  # prune, prune_tolerance: issue 27
    assert QUESTSEfficiencyScore.compute_defaults()["bandwidth"] == DEFAULT_BANDWIDTH
    assert QUESTSEfficiencyScore.compute_defaults()["prune"] is False

    class _Required(_Scaled):
        @records_metadata
        def compute(self, atoms, score_quantity, reference, scale=2.0):
            return scale * np.ones(len(atoms))

    assert _Required.compute_defaults() == {"reference": REQUIRED, "scale": 2.0}


class _Rescaled(_Scaled):
    @records_metadata
    def compute(self, atoms, score_quantity="UNCERTAINTY", scale=3.0):
        return scale * np.ones(len(atoms))


def test_changing_a_default_in_the_signature_changes_the_metadata():
    atoms = _configs(1)[0]
    for cls, scale in ((_Scaled, 2.0), (_Rescaled, 3.0)):
        out = cls(offset=0.5).compute_batch([atoms], "UNCERTAINTY")
        assert out.metadata == {"score_quantity": "UNCERTAINTY", "offset": 0.5, "scale": scale}  # init + defaults
        assert out[0][0] == scale
    eff = QUESTSEfficiencyScore()
    given = eff.compute(_configs(), "EFFICIENCY", bandwidth=DEFAULT_BANDWIDTH)
    defaulted = eff.compute(_configs(), "EFFICIENCY")
    assert eff.metadata_of(defaulted) == eff.metadata_of(given) and float(defaulted) == float(given)


def test_unknown_and_missing_arguments_are_refused_before_a_folder_is_written(tmp_path):
    workflow = LocalWorkflow(tmp_path / "jobs")
    with pytest.raises(InputError, match=r"unknown key\(s\) \['bandwith'\]"):
        _Scaled().run("bad", _configs(1), {"bandwith": 1.0}, workflow=workflow)

    class _Needs(ModelScore):
        OUTPUT_KEY = "needs"
        supported_score_quantities = (atomscore.ScoreQuantity.SENSITIVITY,)

        @records_metadata
        def compute(self, items, score_quantity, cov, scale=1.0):
            return float(cov) * scale

    with pytest.raises(InputError, match=r"missing required argument\(s\) \['cov'\]"):
        _Needs().run("bad", [{"a": 1}], {"scale": 2.0}, workflow=workflow)
    assert not (tmp_path / "jobs").exists() or not any((tmp_path / "jobs").rglob(FILES.job))


def test_two_defaults_for_one_argument_are_refused():
    class _Twice(_Scaled):
        @records_metadata
        def compute_batch(self, list_of_atoms, score_quantity="UNCERTAINTY", scale=5.0):
            return [self.compute(a, score_quantity, scale) for a in list_of_atoms]

    with pytest.raises(TypeError, match="a default is written once"):
        _Twice.compute_defaults()


# ----------------------------------------------------------------------------- item 6: results carry metadata

def test_array_results_keep_their_metadata_through_views_copies_and_pickle():
    score, configs = QUESTSDeltaEntropyScore(), _configs()
    ref = configs[0].arrays["descriptors"]
    dh = score.compute(configs[1], "DELTA_ENTROPY", reference_set=ref, bandwidth=0.3)
    assert isinstance(dh, ScoreArray) and isinstance(dh, np.ndarray) and dh.metadata["bandwidth"] == 0.3
    # reference: the plain kernel on the same descriptors
    np.testing.assert_allclose(dh, gaussian.delta_entropy(configs[1].arrays["descriptors"], ref, 0.3), rtol=1e-12)
    for view in (dh[:3], dh.copy(), dh.reshape(-1, 1), dh.astype(np.float32)):
        assert view.metadata["bandwidth"] == 0.3
    assert score.metadata_of(np.asarray(dh)[:2])["bandwidth"] == 0.3  # a plain view leads back
    assert type(dh + 1) is np.ndarray and type(np.mean(dh)) is np.float64  # new numbers: no metadata
    with pytest.raises(InputError, match="cannot tell which call"):
        score.metadata_of(dh * 2)
    back = pickle.loads(pickle.dumps(dh))
    assert isinstance(back, ScoreArray) and back.metadata == dh.metadata
    np.testing.assert_array_equal(back, dh)


def test_number_and_estimate_results_carry_their_metadata():
    score, dataset = QUESTSDiversityScore(), _configs()
    d = score.compute(dataset, "DIVERSITY", bandwidth=0.2)
    assert isinstance(d, ScoreFloat) and isinstance(d, float) and d.metadata["bandwidth"] == 0.2
    x = np.concatenate([a.arrays["descriptors"] for a in dataset])
    assert d == pytest.approx(gaussian.diversity(x, 0.2), rel=1e-12)  # reference: the kernel function
    assert type(d + 0.0) is not ScoreFloat and pickle.loads(pickle.dumps(d)).metadata == d.metadata
    est = score.compute(dataset, "DIVERSITY", bandwidth=0.2, sample_size=10, seed=1)
    value, error = est  # still the named tuple it was
    assert isinstance(est, gaussian.Estimate) and est.metadata["sample_size"] == 10
    assert est.metadata["standard_error"] == pytest.approx(error)
    want = gaussian.estimate_diversity(x, 0.2, sample_size=10, seed=1)
    assert value == pytest.approx(want.value, rel=1e-12)
    assert pickle.loads(pickle.dumps(est)).metadata == est.metadata


def test_information_is_what_the_two_scores_compute():
    dataset = _configs()
    eff, div = QUESTSEfficiencyScore(), QUESTSDiversityScore()
    info = eff.information(dataset, bandwidth=0.25)
    assert info["efficiency"] == float(eff.compute(dataset, bandwidth=0.25))
    assert info["diversity"] == float(div.compute(dataset, bandwidth=0.25))
    n = sum(len(a) for a in dataset)
    assert info["entropy"] == pytest.approx(info["efficiency"] * np.log(n), rel=1e-12)
    assert eff.metadata_of(info) == eff.metadata_of(eff.compute(dataset, bandwidth=0.25))


# ----------------------------------------------------------------------------- item 3: the reference, once

def test_reference_is_read_and_hashed_once(tmp_path, monkeypatch):
    import ase.io

    from atomscore.quests import reference

    configs = _configs(4)
    path = tmp_path / "reference.xyz"
    ase.io.write(path, configs[:2])
    reads, digests = [], []
    real_read, real_digest = ase.io.read, reference.array_digest
    monkeypatch.setattr(ase.io, "read", lambda *a, **k: reads.append(a) or real_read(*a, **k))
    monkeypatch.setattr(reference, "array_digest", lambda arr: digests.append(1) or real_digest(arr))
    score = QUESTSDeltaEntropyScore()
    out = score.compute_batch(configs[2:], reference_set=str(path), bandwidth=0.3)
    assert len(reads) == 1 and len(digests) == 1
    ref = np.concatenate([a.arrays["descriptors"] for a in configs[:2]])
    assert out.metadata["reference_set"]["shape"] == list(ref.shape)
    reads.clear(), digests.clear()
    workflow = LocalWorkflow(tmp_path / "jobs")
    ids = score.run("once", configs[2:], {"reference_set": str(path), "bandwidth": 0.3, "reference_block_size": 10},
                    workflow=workflow, batch_size=1)
    assert len(reads) == 1 and len(digests) == 1  # prepare, check and plan share one ReferenceSet
    assert len(ids) == 4  # 2 configurations x 2 reference blocks of the 16 rows
    workflow.block_until_completed(ids)
    got = score.data_from_calc_ids(ids, workflow=workflow)
    for atoms, want in zip(got, out):  # reference: the in-memory call over the whole reference
        np.testing.assert_allclose(atoms.arrays["quests_delta_entropy_score"], want, rtol=1e-10)
    assert got[0].info["_metadata"]["quests_delta_entropy"]["reference_set"]["sha256"] == \
        out.metadata["reference_set"]["sha256"]
    checked = reference.ReferenceSet.load(str(path))
    assert checked.descriptors.flags.writeable is False
    assert reference.ReferenceSet.load(checked) is checked


# ----------------------------------------------------------------------------- item 5: types

def test_score_kind_names_its_files():
    assert ScoreKind.ATOM.results_file == FILES.results_xyz == "score_results.xyz"
    assert ScoreKind.DATASET.results_file == "score_results.json" and ScoreKind.MODEL.input_file == "input.json"
    assert QUESTSEfficiencyScore.kind is ScoreKind.DATASET and ScoreKind("configuration").on_configurations
    assert json.dumps({"k": ScoreKind.MODEL}) == '{"k": "model"}'


def test_failure_reasons_parse_what_status_files_hold():
    assert FailureReason.of("killed by signal SIGKILL") is FailureReason.KILLED
    assert FailureReason.of(FailureReason.TIMED_OUT.detail("5 s")) is FailureReason.TIMED_OUT
    assert FailureReason.of("not submitted") is FailureReason.NOT_SUBMITTED == "not submitted"
    assert FailureReason.of("something else") is None and FailureReason.of(None) is None
    assert f"{FailureReason.TIMEOUT}" == "timeout"
    assert issubclass(RefusedJobError, InputError)


def test_job_paths_name_every_file_of_a_real_job(tmp_path):
    workflow = LocalWorkflow(tmp_path / "jobs")
    configs = _configs(2)
    ids = JobRootScore().run("roots", configs, {}, workflow=workflow)
    workflow.block_until_completed(ids)
    paths = JobPaths(ids[0])
    assert paths.root == (tmp_path / "jobs").resolve() and paths.run == Path(ids[0]).parent
    on_disk = {p.name for p in Path(ids[0]).iterdir()}
    for name in ("job", "status", "input_xyz", "results_xyz", "stdout", "stderr"):
        assert getattr(paths, name).name in on_disk
    assert paths.results(ScoreKind.CONFIGURATION) == paths.results_xyz and paths.existing_results == [FILES.results_xyz]
    assert read_job(ids[0])["run"] == paths.run.name and read_status(ids[0])["state"] == "done"
    assert json.loads((paths.run / FILES.run).read_text())["jobs"] == [Path(i).name for i in ids]
    # the job root reached the score explicitly (no environment variable)
    out = JobRootScore.data_from_calc_ids(ids, workflow=workflow)
    assert out[0].info["_metadata"]["toy_root"]["job_root"] == str(paths.root)
    assert JobRootScore().job_root is None


def test_nested_calls_go_under_the_root_they_are_given(tmp_path, monkeypatch):
    """The property score's nested calls follow its ``job_root``, not an environment variable."""
    from atomscore.fim.property import _map

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ATOMSCORE_JOB_ROOT", str(tmp_path / "ignored"))
    out = _map(toy_double, [{"x": 1.0}, {"x": 2.5}], workflow="LOCAL", spec={"workflow_type": "LOCAL"},
               root=tmp_path / "root")
    assert out == [2.0, 5.0]
    (run,) = (tmp_path / "root" / "calls" / "fim_property").iterdir()
    assert json.loads((run / FILES.run).read_text())["function"]["target"].endswith(":toy_double")
    assert not (tmp_path / "ignored").exists() and not (tmp_path / "atomscore_jobs").exists()


def test_a_tuple_of_results_carries_the_metadata_in_each_item():
    """As ``FIMPropertyScore.compute(..., return_jacobian=True)``: ``(fim, jacobians)``."""
    class _Pair(_Scaled):
        @records_metadata
        def compute(self, atoms, score_quantity="UNCERTAINTY", scale=2.0):
            return scale * np.ones(len(atoms)), np.zeros(2)

    first, second = _Pair().compute(_configs(1)[0])
    assert first.metadata["scale"] == 2.0 and second.metadata == first.metadata
    np.testing.assert_array_equal(first, 2.0)
