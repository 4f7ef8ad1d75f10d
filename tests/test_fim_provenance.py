"""FIMMatchingScore refuses FIMs that do not describe the same parameters.

Before the fix, training-set FIMs over {A, B} matched against a property FIM over
{A, lambda} (both 2x2) gave weights with no warning. Both FIM scores now record
``fim_index_to_parameter``, the transform and the potential id; the matching compares them
from Atoms info (in memory and after a score_results.xyz round trip), score_results.json
files and dicts. Plain arrays without metadata still work. The FIMs here are real (SW Si
through KIM); the reference for "same parameters" is the parameter map each score recorded.
"""

import copy
import json

import numpy as np
import pytest
from ase.build import bulk

from atomscore.errors import InputError

pytest.importorskip("kimpy")
pytest.importorskip("cvxpy")

SW = {"potential_type": "KIM", "potential_args": {"kim_id": "SW_StillingerWeber_1985_Si__MO_405512056662_005"}}
AB = {"A": [["default"]], "B": [["default"]]}
ALAMBDA = {"A": [["default"]], "lambda": [["default"]]}


def _configs():
    out = []
    for i in range(3):
        atoms = bulk("Si", "diamond", 5.40 + 0.03 * i, cubic=True)
        atoms.rattle(0.05, seed=i)
        out.append(atoms)
    return out


@pytest.fixture(scope="module")
def candidates(tmp_path_factory):
    from atomscore.fim import FIMTrainingSetScore

    score = FIMTrainingSetScore()
    configs = _configs()
    fims = score.compute_batch(configs, "SENSITIVITY", potential=SW, parameters_optimize=AB)
    folder = tmp_path_factory.mktemp("ts")
    path = score.save_results(fims, save_dir=folder, list_of_configs=configs)
    return score.parse_for_storage(fims, configs), score.read_data(path), fims


@pytest.fixture(scope="module")
def targets(tmp_path_factory):
    """Property FIMs of C11 over {A, B} and over {A, lambda} (real LOCAL jobs)."""
    from atomscore.fim import FIMPropertyScore

    folder = tmp_path_factory.mktemp("prop")
    out = {}
    for name, popt in (("AB", AB), ("ALAMBDA", ALAMBDA)):
        target = [{"init_args": {"target_property_type": "ElasticConstants", "target_property_args": {
            "lattice_param": 5.43, "lattice_type": "diamond", "elements": ["Si"], "fim_quantities": ["c11"]}},
            "calculate_property_args": {"workflow": {"workflow_type": "LOCAL",
                                                     "workflow_args": {"root_directory": str(folder / name)}}}}]
        score = FIMPropertyScore()
        fim = score.compute(target, "SENSITIVITY", cov=np.eye(1) * 1e-4, potential=SW, parameters_optimize=popt,
                            derivative_kwargs={"h": 0.01, "method": "CD"})
        path = score.save_results(fim, save_dir=folder / f"{name}_out")
        out[name] = (fim, path, json.loads(path.read_text()))
    return out


def _match(configs, target):
    from atomscore.fim import FIMMatchingScore

    return FIMMatchingScore().compute_batch(configs, fim_property=target, solver_kwargs={"solver": "CLARABEL"})


def test_metadata_recorded_by_both_scores(candidates, targets):
    in_memory, _, fims = candidates
    assert fims.metadata["fim_index_to_parameter"] == {"0": {"parameter": "A", "extent": 0},
                                                       "1": {"parameter": "B", "extent": 0}}
    meta = targets["ALAMBDA"][2]["_metadata"]
    assert meta["fim_index_to_parameter"]["1"]["parameter"] == "lambda"
    assert meta["kim_id"] == SW["potential_args"]["kim_id"] and "transform" in meta


@pytest.mark.parametrize("form", ["path", "dict", "str_path"])
@pytest.mark.parametrize("source", ["memory", "file"])
def test_different_parameters_refused(candidates, targets, form, source):
    configs = candidates[0] if source == "memory" else candidates[1]
    _, path, data = targets["ALAMBDA"]
    target = {"path": path, "dict": data, "str_path": str(path)}[form]
    with pytest.raises(InputError, match=r"(?s)different parameters.*fim_index_to_parameter.*\"B\".*\"lambda\""):
        _match(configs, target)


def test_same_parameters_match(candidates, targets):
    weights = _match(candidates[1], targets["AB"][1])
    assert len(weights) == 3 and sum(weights) > 0


def test_plain_arrays_still_work(candidates, targets):
    plain = [a.copy() for a in candidates[0]]
    for a in plain:
        a.info = {"fim_training_set_score": np.asarray(a.info["fim_training_set_score"])}
    weights = _match(plain, np.asarray(targets["ALAMBDA"][0]))  # no metadata anywhere: not compared
    assert len(weights) == 3
    weights = _match(candidates[0], np.asarray(targets["AB"][0]))  # metadata on one side only
    assert len(weights) == 3


def test_candidates_disagreeing_among_themselves_refused(candidates):
    configs = [a.copy() for a in candidates[0]]
    meta = copy.deepcopy(configs[2].info["_metadata"])
    meta["fim_training_set"]["transform"] = {"transform_type": "AffineTransform", "transform_args": {}}
    configs[2].info["_metadata"] = meta
    with pytest.raises(InputError, match="configuration 2.*transform"):
        _match(configs, np.eye(2))
