"""atomscore.fim.refit on synthetic truth: labels from the same model with shifted parameters.

References: the shifted parameters themselves (exact labels must give them back), and for
noisy labels the FIM prediction checked against what happened: the fitted parameters and
the lattice constant fall within the uncertainty the weighted FIM predicts, and refit's FIM
equals the weighted sum of FIMTrainingSetScore's per-configuration FIMs.
"""

import numpy as np
import pytest

pytest.importorskip("kimpy")
pytest.importorskip("information_matching")

import atomscore.fim  # noqa: E402
from atomscore.errors import InputError  # noqa: E402
from atomscore.potentials.kim import KIMPotential  # noqa: E402

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
FREE = {"A": [["default"]], "B": [["default"]]}


def _configs(n=6):
    from ase.build import bulk

    out = []
    for k in range(n):
        atoms = bulk("Si", "diamond", 5.43 * (0.98 + 0.008 * k), cubic=True)
        atoms.rattle(0.08, seed=k)
        out.append(atoms)
    return out


def _truth():
    pot = KIMPotential(SW)
    a0, b0 = pot.get_parameter("A")[0], pot.get_parameter("B")[0]
    pot.set_parameters({"A": [1.05 * a0], "B": [0.95 * b0]})
    return pot, 1.05 * a0, 0.95 * b0


def test_refit_recovers_shifted_parameters():
    from ase.calculators.singlepoint import SinglePointCalculator

    truth, a_true, b_true = _truth()
    configs = _configs()
    for atoms in configs[:4]:  # labels as calculator results (as read from an extxyz file)
        r = truth.compute(atoms, energy=True, forces=True)
        atoms.calc = SinglePointCalculator(atoms, energy=r["energy"], forces=r["forces"])
    wrong = KIMPotential(SW)  # a configuration with wrong labels, and one with none: weight 0
    r = wrong.compute(configs[4], energy=True, forces=True)
    configs[4].calc = SinglePointCalculator(configs[4], energy=r["energy"] + 5.0, forces=r["forces"] + 1.0)
    before = [(a.positions.copy(), dict(a.info)) for a in configs]
    start = KIMPotential(SW)
    installed = start.get_parameters()
    weights = [1.0, 2.0, 0.5, 1.0, 0.0, 0.0]
    fitted, info = atomscore.fim.refit(start, configs, weights, FREE, full_output=True)
    # reference: the shifted parameters the labels were made with
    assert fitted["A"] == pytest.approx([a_true], rel=1e-9)
    assert fitted["B"] == pytest.approx([b_true], rel=1e-9)
    assert info["configurations"] == [0, 1, 2, 3] and info["cost"] < 1e-20
    # the caller's potential and configurations are not changed
    assert all(np.array_equal(v, installed[k]) for k, v in start.get_parameters().items())
    assert all(np.array_equal(a.positions, p) and a.info == i for a, (p, i) in zip(configs, before))

    # the same labels under other names: info/arrays keys, energies left out
    named = _configs(3)
    for atoms in named:
        atoms.arrays["dft_forces"] = truth.compute(atoms, energy=False, forces=True)["forces"]
    fitted2 = atomscore.fim.refit(KIMPotential(SW), named, np.ones(3), FREE, energy_key=None,
                                  forces_key="dft_forces")
    assert fitted2["A"] == pytest.approx([a_true], rel=1e-9) and fitted2["B"] == pytest.approx([b_true], rel=1e-9)
    # in log-scale parameters (information_matching's LogTransform): the same answer
    log = {"transform_type": "LogTransform", "transform_args": {"sign": [1.0, 1.0]}}
    fitted3, info3 = atomscore.fim.refit(KIMPotential(SW), named, np.ones(3), FREE, energy_key=None,
                                         forces_key="dft_forces", transform=log, full_output=True)
    assert fitted3["A"] == pytest.approx([a_true], rel=1e-9) and fitted3["B"] == pytest.approx([b_true], rel=1e-9)
    assert info3["phi"] == pytest.approx([np.log(a_true), np.log(b_true)], rel=1e-9)


def test_refit_property_within_predicted_uncertainty():
    from atomscore.fim import FIMPropertyScore, FIMTrainingSetScore, property_covariance
    from atomscore.properties.elastic import ElasticConstants

    truth, a_true, b_true = _truth()
    sigma_f = 0.02  # eV/Å, noise on every force component
    rng = np.random.default_rng(7)
    configs = _configs()
    for atoms in configs:
        f = truth.compute(atoms, energy=False, forces=True)["forces"]
        atoms.arrays["forces"] = f + rng.normal(0.0, sigma_f, f.shape)
    weights = np.full(len(configs), 1.0 / sigma_f**2)  # inverse label variances
    fitted, info = atomscore.fim.refit(KIMPotential(SW), configs, weights, FREE, energy_key=None, full_output=True)
    fim = info["fim"]

    # refit's FIM is the weighted training-set FIM the matching works with (independent code)
    pot = KIMPotential(SW)
    pot.set_parameters({k: v for k, v in fitted.items()})
    per_config = FIMTrainingSetScore().compute_batch(configs, "SENSITIVITY", potential=pot, parameters_optimize=FREE)
    weighted = sum(w * f for w, f in zip(weights, per_config))
    assert np.allclose(fim, weighted, rtol=1e-4)

    # the parameters: within 3 predicted standard deviations of the truth
    cov_theta = np.linalg.inv(fim)
    err = np.array([fitted["A"][0] - a_true, fitted["B"][0] - b_true])
    assert np.all(np.abs(err) < 3 * np.sqrt(np.diag(cov_theta)))
    assert np.any(np.abs(err) > 1e-6)  # the noise really moved them (the check is not vacuous)

    # the property: the lattice constant with the refitted parameters, within its uncertainty
    target = {"init_args": {"target_property_type": "ElasticConstants", "target_property_args": {
        "lattice_param": 5.43, "elements": ["Si"], "fim_quantities": ["lattice_constant"]}}}
    score = FIMPropertyScore()
    score.compute([target], "SENSITIVITY", [[1.0]], pot, FREE, derivative_kwargs={"h": [1e-4, 1e-5], "method": "CD"})
    sigma_a = float(np.sqrt(property_covariance(score.jacobian, fim)[0, 0]))
    prop = ElasticConstants(lattice_param=5.43, elements=["Si"])
    a_fit = prop.calculate_property(pot)["lattice_constant"]
    a_ref = prop.calculate_property(truth)["lattice_constant"]
    assert 0.0 < sigma_a < 1e-2
    assert abs(a_fit - a_ref) < 3 * sigma_a

    # the same check in one call, against a target precision of 0.01 Å
    report = atomscore.fim.property_prediction(pot, target, fim, FREE, cov=[[0.01**2]],
                                               derivative_kwargs={"h": [1e-4, 1e-5], "method": "CD"})
    assert report["value"] == pytest.approx([a_fit], rel=1e-14)
    assert report["uncertainty"] == pytest.approx([sigma_a], rel=1e-12)
    assert report["target_uncertainty"] == pytest.approx([0.01]) and report["within_target"].tolist() == [True]


def test_refit_refuses_bad_inputs():
    configs = _configs(2)
    for atoms in configs:
        atoms.info["energy"] = 0.0
        atoms.arrays["forces"] = np.zeros((len(atoms), 3))
    pot = KIMPotential(SW)
    with pytest.raises(InputError, match="one weight per configuration"):
        atomscore.fim.refit(pot, configs, [1.0], FREE)
    with pytest.raises(InputError, match="non-negative"):
        atomscore.fim.refit(pot, configs, [1.0, -1.0], FREE)
    with pytest.raises(InputError, match="every weight is zero"):
        atomscore.fim.refit(pot, configs, [0.0, 0.0], FREE)
    with pytest.raises(InputError, match="finite"):
        atomscore.fim.refit(pot, configs, [1.0, np.nan], FREE)
    del configs[1].info["energy"]
    with pytest.raises(InputError, match=r"configuration 1 .*no energy label.*energy_key=None"):
        atomscore.fim.refit(pot, configs, [1.0, 1.0], FREE)
    configs[1].arrays["forces"] = np.zeros((3, 3))
    with pytest.raises(InputError, match=r"forces.*configuration 1.*shape"):
        atomscore.fim.refit(pot, configs, [1.0, 1.0], FREE, energy_key=None)
    with pytest.raises(InputError, match="both None"):
        atomscore.fim.refit(pot, configs, [1.0, 1.0], FREE, energy_key=None, forces_key=None)
    with pytest.raises(InputError, match="unknown parameter 'Z'"):
        atomscore.fim.refit(pot, configs[:1], [1.0], {"Z": [["default"]]})
