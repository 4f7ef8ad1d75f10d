"""Shared checks of the built-in target properties (imported by tests/test_properties_*.py)."""

import shutil

import numpy as np
import pytest

W = "EAM_Dynamo_ZhouJohnsonWadley_2004_W__MO_524392058194_005"
SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
W_BCC = {"lattice_param": 3.16, "lattice_type": "bcc", "elements": ["W"]}
SI_DIAMOND = {"lattice_param": 5.43, "lattice_type": "diamond", "elements": ["Si"]}


LMP = shutil.which("lmp")
needs_lmp = pytest.mark.skipif(LMP is None, reason="LAMMPS (Debian package lammps) not installed")


@pytest.fixture(scope="module")
def pots():
    """The W and Si models, opened once per test module."""
    from atomscore.potentials.kim import KIMPotential

    return {"W": KIMPotential(W), "Si": KIMPotential(SW)}


def spec(kim_id):
    return {"potential_type": "KIM", "potential_args": {"kim_id": kim_id}}


def fim_jacobian(ptype, args, kim_id, free, h):
    """J = d(property vector)/dθ from FIMPropertyScore (central differences at step h)."""
    from atomscore.fim.property import FIMPropertyScore
    import atomscore.properties as properties

    n = getattr(properties, ptype)(**args).property_size
    score = FIMPropertyScore()
    score.compute([{"init_args": {"target_property_type": ptype, "target_property_args": args}}],
                  "SENSITIVITY", np.eye(n), spec(kim_id), {name: [["default"]] for name in free},
                  derivative_kwargs={"h": h, "method": "CD"})
    return score.jacobian


def central_differences(ptype, args, kim_id, free, h):
    """The reference: property vectors at θ ± h e_k computed directly (parameters set in place)."""
    from atomscore.potentials.kim import KIMPotential
    import atomscore.properties as properties

    prop = getattr(properties, ptype)(**args)
    pot = KIMPotential(kim_id)
    cols = []
    for name in free:
        theta = pot.get_parameter(name).copy()
        vec = []
        for sign in (1, -1):
            pot.set_parameter(name, theta + sign * h)
            vec.append(prop.property_vector(pot))
        pot.set_parameter(name, theta)
        cols.append((vec[0] - vec[1]) / (2 * h))
    return np.array(cols).T


def check_derivative(ptype, args, kim_id, free, h, rtol):
    """FIMPropertyScore's Jacobian at step h agrees with direct central differences at h/2
    (the two differ by O(h²) if the property is smooth) and is not zero."""
    jac = fim_jacobian(ptype, args, kim_id, free, h)
    ref = central_differences(ptype, args, kim_id, free, h / 2)
    assert np.all(np.isfinite(jac)) and np.max(np.abs(jac)) > 0
    np.testing.assert_allclose(jac, ref, rtol=rtol, atol=rtol * np.max(np.abs(ref)))
    return jac
