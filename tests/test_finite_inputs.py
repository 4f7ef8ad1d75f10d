"""NaN/inf positions or cell, and empty configurations, never reach a model or a job.

Before the fix a NaN position segfaulted the caller's Python inside the KIM driver (SW),
FIM scores passed it on, and ``run()`` wrote job folders for it. Each case must end in an
``InputError`` that names the configuration, before anything is computed or written.
"""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from atomscore.errors import InputError
from atomscore.validation import check_finite_configs, check_finite_positions

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
SPEC = {"potential_type": "KIM", "potential_args": {"kim_id": SW}}


def _si(bad=None):
    atoms = bulk("Si", "diamond", 5.43, cubic=True)
    if bad == "nan":
        atoms.positions[3, 1] = np.nan
    elif bad == "inf":
        atoms.positions[2, 0] = np.inf
    elif bad == "cell":
        cell = atoms.cell.array.copy()
        cell[0, 0] = np.nan
        atoms.set_cell(cell, scale_atoms=False)
    elif bad == "empty":
        atoms = Atoms(cell=np.eye(3) * 5.43, pbc=True)
    return atoms


@pytest.mark.parametrize("bad, match", [("nan", "finite positions"), ("inf", "finite positions"),
                                        ("cell", "finite cell"), ("empty", "empty configuration")])
def test_validation_names_the_configuration(bad, match):
    configs = [_si(), _si(bad)]
    with pytest.raises(InputError, match=rf"configs: configuration 1: expected .*{match.split()[-1]}"):
        check_finite_configs(configs, "configs")
    with pytest.raises(InputError, match=match):
        check_finite_positions(configs[1])
    assert check_finite_configs([_si()])  # a good one passes


@pytest.mark.parametrize("bad", ["nan", "inf", "cell", "empty"])
def test_kim_potential_refuses_before_the_driver(bad):
    pytest.importorskip("kimpy")
    from atomscore.potentials.kim import KIMPotential

    pot = KIMPotential(SW)
    with pytest.raises(InputError, match="configuration"):
        pot.compute(_si(bad), energy=True, forces=True)
    assert pot.compute(_si(), energy=True)["energy"] == pytest.approx(-4.3366 * 8, rel=1e-3)


@pytest.mark.parametrize("bad", ["nan", "empty"])
def test_fim_training_set_refuses(bad):
    pytest.importorskip("kimpy")
    from atomscore.fim.training_set import FIMTrainingSetScore

    score = FIMTrainingSetScore()
    with pytest.raises(InputError, match="list_of_atoms: configuration 1"):
        score.compute_batch([_si(), _si(bad)], "SENSITIVITY", potential=SPEC,
                            parameters_optimize={"A": [["default"]]})


def test_fim_matching_refuses():
    pytest.importorskip("cvxpy")
    from atomscore.fim.matching import FIMMatchingScore

    configs = [_si(), _si("nan")]
    for atoms in configs:
        atoms.info["fim_training_set_score"] = np.eye(2)
    with pytest.raises(InputError, match="list_of_atoms: configuration 1"):
        FIMMatchingScore().compute_batch(configs, fim_property=np.eye(2))


@pytest.mark.parametrize("bad", ["nan", "cell", "empty"])
def test_run_refuses_before_any_folder(tmp_path, bad):
    from atomscore import LTAUForcesUQScore
    from atomscore.jobs.workflow import LocalWorkflow

    rng = np.random.default_rng(0)
    score = LTAUForcesUQScore(train_descriptors=rng.random((20, 3)), error_pdfs=rng.random((5, 20)) + 0.1,
                              from_error_logs=True, nbins=5)
    configs = [_si(), _si(bad)]
    for atoms in configs:
        atoms.arrays["descriptors"] = rng.random((len(atoms), 3))
    root = tmp_path / "jobs"
    with pytest.raises(InputError, match="configuration 1"):
        score.run("uq", configs, {"score_quantity": "UNCERTAINTY"}, workflow=LocalWorkflow(root))
    assert not root.exists() or not any(p.is_dir() for p in root.rglob("*") if p.name.isdigit())


def test_elastic_constants_refuses_non_finite_lattice():
    from atomscore.properties import ElasticConstants

    for value in (np.nan, np.inf):
        with pytest.raises(InputError, match="lattice_param"):
            ElasticConstants(lattice_param=value, lattice_type="diamond", elements=["Si"])
