"""FIMPropertyScore as the Orchestrator's users call it (issue 22, item 3).

``compute(target_property, ...)`` with one property dict (also by keyword, and a list as the
spec shows), and ``compute_batch(list_of_target_property, score_quantity, cov, potential,
parameters_optimize, transform=None, derivative_kwargs=None, return_jacobian=False,
nprocs=1)`` returning the summed FIM or ``(fim, list_of_jacobians)``; ``cov`` one matrix for
all properties or a list, one per property. Before: ``compute_batch`` raised TypeError
(missing 'list_of_atoms'), ``return_jacobian``/``nprocs``/``target_property=`` TypeError.
References: the FIM rebuilt by numpy from the returned Jacobians; the lattice constant's
derivative from ASE's KIM calculator (brentq on its pressure) differenced by hand.
"""

import numpy as np
import pytest

pytest.importorskip("kimpy")
pytest.importorskip("information_matching")

from ase_reference import ase_lattice_constant  # noqa: E402

from atomscore.fim import FIMPropertyScore  # noqa: E402

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
POT = {"potential_type": "KIM", "potential_args": {"kim_id": SW}}
OPT = {"sigma": [["default"]], "lambda": [["default"]]}
DERIV = {"h": [1e-3, 1e-2], "method": "CD"}


def target(quantities):
    return {"init_args": {"target_property_type": "ElasticConstants",
                          "target_property_args": {"lattice_param": 5.43, "lattice_type": "diamond",
                                                   "elements": ["Si"], "units": "GPa",
                                                   "fim_quantities": quantities}},
            "calculate_property_args": {}}


ELASTIC, LATTICE = target(["c11", "c12"]), target(["lattice_constant"])
COV_ELASTIC, COV_LATTICE = np.diag([25.0, 16.0]), np.array([[1e-4]])


@pytest.fixture(scope="module")
def batch():
    """compute_batch over two properties, a list cov, the Jacobians returned."""
    score = FIMPropertyScore()
    out = score.compute_batch([ELASTIC, LATTICE], "SENSITIVITY", [COV_ELASTIC, COV_LATTICE], POT, OPT,
                              derivative_kwargs=DERIV, return_jacobian=True)
    return score, out


def test_compute_batch_returns_the_summed_fim_and_one_jacobian_per_property(batch, tmp_path):
    score, (fim, jacobians) = batch
    assert isinstance(fim, np.ndarray) and fim.shape == (2, 2)
    assert score.fim_index_to_parameter == {0: {"parameter": "sigma", "extent": 0},
                                            1: {"parameter": "lambda", "extent": 0}}
    assert isinstance(jacobians, list) and [j.shape for j in jacobians] == [(2, 2), (1, 2)]
    # the FIM is the sum of the properties' FIMs, rebuilt here by numpy
    expected = sum(j.T @ np.linalg.inv(c) @ j for j, c in zip(jacobians, (COV_ELASTIC, COV_LATTICE)))
    np.testing.assert_allclose(fim, expected, rtol=1e-12)
    assert np.all(np.linalg.eigvalsh(fim) > 0)
    # the FIM returned with its Jacobians is still the recorded result: it saves with its metadata
    score.save_results(fim, save_dir=tmp_path)
    assert (tmp_path / "score_results.json").is_file()


def test_the_jacobian_of_the_lattice_constant_matches_ase(batch):
    from ase.calculators.kim import KIM

    _, (_, jacobians) = batch
    calc = KIM(SW)
    x0 = {p: calc.get_parameters(**{p: [0]})[p][1][0] for p in OPT}

    def a0(**change):
        calc.set_parameters(**{p: [[0], [x0[p] + change.get(p, 0.0)]] for p in OPT})
        return ase_lattice_constant(calc, "Si", "diamond", (5.2, 5.7))

    ref = [(a0(**{p: h}) - a0(**{p: -h})) / (2 * h) for p, h in zip(OPT, DERIV["h"])]
    np.testing.assert_allclose(jacobians[1][0], ref, rtol=1e-5, atol=1e-8)


def test_compute_of_one_property_dict_as_the_orchestrator_calls_it(batch):
    _, (_, jacobians) = batch
    score = FIMPropertyScore()
    fim, jac = score.compute(target_property=LATTICE, score_quantity="SENSITIVITY", cov=COV_LATTICE,
                             potential=POT, parameters_optimize=OPT, derivative_kwargs=DERIV,
                             return_jacobian=True)
    np.testing.assert_allclose(jac, jacobians[1], rtol=1e-12)
    np.testing.assert_allclose(fim, jac.T @ jac / 1e-4, rtol=1e-12)
    # the spec's form: a list under list_of_target_property, the cov as a one-element list
    again = FIMPropertyScore().compute(list_of_target_property=[LATTICE], score_quantity="SENSITIVITY",
                                       cov=[COV_LATTICE], potential=POT, parameters_optimize=OPT,
                                       derivative_kwargs=DERIV)
    np.testing.assert_allclose(again, fim, rtol=1e-12)


def test_one_cov_for_all_properties_and_two_workers(batch):
    """One (3, 3) cov: here block diagonal, so the same FIM as the list; nprocs=2 changes nothing."""
    _, (fim, _) = batch
    full = np.zeros((3, 3))
    full[:2, :2], full[2:, 2:] = COV_ELASTIC, COV_LATTICE
    two = FIMPropertyScore().compute_batch([ELASTIC, LATTICE], "SENSITIVITY", full, POT, OPT,
                                           derivative_kwargs=DERIV, nprocs=2)
    np.testing.assert_allclose(two, fim, rtol=1e-12)
