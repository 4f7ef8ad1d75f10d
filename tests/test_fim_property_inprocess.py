"""FIMPropertyScore with the embedded backend and no workflow runs in this process (issue 16).

Reference: the same FIM with the perturbations as LOCAL jobs (subprocesses, the code path
used before), which must agree to the last digit -- both call evaluate_target_property.
"""

import numpy as np
import pytest

pytest.importorskip("kimpy")

from atomscore.fim.property import FIMPropertyScore  # noqa: E402

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
POT = {"potential_type": "KIM", "potential_args": {"kim_id": SW}}
PROPERTY_ARGS = {"lattice_param": 5.43, "lattice_type": "diamond", "deformation_mag": 1e-4, "elements": ["Si"]}


def target(workflow=None):
    out = {"init_args": {"target_property_type": "ElasticConstants", "target_property_args": PROPERTY_ARGS}}
    if workflow is not None:
        out["calculate_property_args"] = {"workflow": workflow}
    return out


def test_no_workflow_runs_in_process_and_equals_local_jobs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = dict(score_quantity="SENSITIVITY", cov=np.eye(36), potential=POT,
                parameters_optimize={"A": [["default"]], "B": [["default"]]},
                derivative_kwargs={"h": 0.1, "method": "CD"})
    score = FIMPropertyScore()
    inproc = score.compute(list_of_target_property=[target()], **args)
    assert not (tmp_path / "atomscore_jobs").exists()  # no job folder written
    assert score.metadata_of(inproc)["property_evaluation"] == ["in-process"]
    root = tmp_path / "jobs"
    jobs = FIMPropertyScore().compute(list_of_target_property=[target(
        {"workflow_type": "LOCAL", "workflow_args": {"root_directory": str(root), "nprocs": 2}})], **args)
    assert any((root / "calls" / "fim_property").iterdir())
    np.testing.assert_array_equal(inproc, jobs)
