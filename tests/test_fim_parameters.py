"""The parameters_optimize format, the parameter vector map and transforms (atomscore.fim.parameters).

References: the spec's own example (fim_index_to_parameter as it prints it), the installed SW
model's parameter values read through ASE's KIM calculator, and information_matching's
transforms evaluated directly.
"""

import numpy as np
import pytest

pytest.importorskip("kimpy")

from atomscore.errors import InputError  # noqa: E402
from atomscore.fim.parameters import (IdentityTransform, ParameterMap, make_transform,  # noqa: E402
                                      transform_to_dict)
from atomscore.potentials.kim import KIMPotential  # noqa: E402

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
SPEC_EXAMPLE = {"A": [[15.2848479197914]], "B": [["default"]], "lambda": [[0.0, "fix"]]}


@pytest.fixture(scope="module")
def pot():
    return KIMPotential(SW)


def ase_value(name):
    from ase.calculators.kim import KIM

    return KIM(SW).get_parameters(**{name: [0]})[name][1][0]


def test_spec_example_mapping(pot):
    """fim_index_to_parameter exactly as the spec shows; 'default' is the model's value (ASE's KIM)."""
    before = pot.get_parameters()
    pm = ParameterMap(pot, SPEC_EXAMPLE)
    assert pm.fim_index_to_parameter == {0: {"parameter": "A", "extent": 0}, 1: {"parameter": "B", "extent": 0}}
    assert pm.n_params == 2
    np.testing.assert_array_equal(pm.theta0, [15.2848479197914, ase_value("B")])
    assert pm.fixed == [("lambda", 0, 0.0)]
    assert isinstance(pm.transform, IdentityTransform)
    for name, values in pot.get_parameters().items():  # reading the map changes nothing
        np.testing.assert_array_equal(values, before[name])


def test_apply_and_vector_round_trip():
    """apply() writes fixed and free values into the model; vector <-> dict round trip."""
    pot = KIMPotential(SW)
    pm = ParameterMap(pot, {"A": [[16.0]], "sigma": [["default", 1.5, 2.5]], "lambda": [[0.0, "fix"]]})
    pm.apply(pot)
    assert pot.get_parameter("lambda")[0] == 0.0 and pot.get_parameter("A")[0] == 16.0
    d = pm.vector_to_dict([17.0, 2.2])
    assert d == {"A": [[17.0]], "sigma": [[2.2]], "lambda": [[0.0, "fix"]]}
    np.testing.assert_array_equal(pm.dict_to_vector(d), [17.0, 2.2])
    np.testing.assert_array_equal(pm.lower, [-np.inf, 1.5])
    with pytest.raises(InputError, match=r"sigma\[0\] = 3.0 is outside its bounds \[1.5, 2.5\]"):
        pm.check_bounds(np.array([17.0, 3.0]))


def test_default_step_has_a_floor(pot):
    """10% of |phi|, never zero for a zero-valued parameter (a reference bug)."""
    pm = ParameterMap(pot, {"A": [["default"]], "lambda": [[0.0]]})
    step = pm.default_step()
    assert step[0] == pytest.approx(0.1 * 15.2848479197914)
    assert step[1] > 0


@pytest.mark.parametrize("bad, message", [
    ({"AA": [[1.0]]}, r"unknown parameter 'AA'.*A, B, p, q, sigma, gamma, cutoff, lambda, costheta0"),
    ({"A": [[1.0], [2.0]]}, r"extent 1 out of range"),
    ({"A": [["big"]]}, r"non-numeric value 'big'"),
    ({"A": [[True]]}, r"non-numeric value True"),
    ({"A": [[1.0, 2.0, 3.0]]}, r"outside its bounds \[2.0, 3.0\]"),
    ({"A": [[1.0, "low", 3.0]]}, r"lower bound must be a number"),
    ({"A": [1.0]}, r"one inner list per extent"),
    ({"A": [[1.0, 2.0]]}, r"expected \[value\], \[value, 'fix'\]"),
    ({"A": [[1.0, "fix"]]}, r"every parameter is fixed"),
    ({}, r"non-empty dict"),
])
def test_bad_parameters_optimize(pot, bad, message):
    """Each malformed entry is one InputError naming the entry and what was expected."""
    with pytest.raises(InputError, match=message):
        ParameterMap(pot, bad)


def test_transforms_from_dicts_and_objects(pot):
    """Dict and object forms build the same information_matching transform; JSON round trip keeps x0."""
    from information_matching.transform import AffineTransform, LogTransform

    conf10 = {"transform_type": "AffineTransform", "transform_args": {"a": 1.0, "b": 0.0, "ainv": 1.0}}
    t = make_transform(conf10)
    assert isinstance(t, AffineTransform)
    obj = AffineTransform(a=2.0, x0=1.0, b=0.5)
    again = make_transform(transform_to_dict(obj))
    x = np.array([3.0, 4.0])
    np.testing.assert_allclose(again.transform(x), 2.0 * (x - 1.0) + 0.5)
    np.testing.assert_allclose(again.inverse_transform(again.transform(x)), x)
    assert make_transform(obj) is obj
    log = make_transform({"transform_type": "LogTransform", "transform_args": {"sign": [1.0, 1.0]}})
    assert isinstance(log, LogTransform)
    pm = ParameterMap(pot, {"A": [["default"]], "B": [["default"]]}, transform=log)
    np.testing.assert_allclose(pm.phi0, np.log(pm.theta0))
    np.testing.assert_allclose(pm.to_theta(pm.phi0), pm.theta0)
    assert transform_to_dict(None) == {"transform_type": "IdentityTransform", "transform_args": {}}
    with pytest.raises(InputError, match="unknown 'Square'.*AffineTransform"):
        make_transform({"transform_type": "Square", "transform_args": {}})
    with pytest.raises(InputError, match="cannot build AffineTransform"):
        make_transform({"transform_type": "AffineTransform", "transform_args": {"slope": 2}})
