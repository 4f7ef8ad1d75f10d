"""The public KIMPotential methods the FIM scores use (issue 20, item 3: fim/ used six
private members). Reference: ASE's KIM calculator (its own kimpy wrapper and neighbour list)
and a freshly opened model for a changed cutoff.
"""

import numpy as np
import pytest

pytest.importorskip("kimpy")

from ase.build import bulk  # noqa: E402

from atomscore.errors import InputError  # noqa: E402
from atomscore.potentials.kim import KIMPotential, check_spec  # noqa: E402

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"


def si():
    atoms = bulk("Si", "diamond", a=5.43, cubic=True)
    atoms.rattle(0.08, seed=3)
    return atoms


def ase_results(atoms, **params):
    from ase.calculators.kim import KIM

    calc = KIM(SW)
    if params:
        calc.set_parameters(**{k: [[0], [v]] for k, v in params.items()})
    a = atoms.copy()
    a.calc = calc
    return a.get_potential_energy(), a.get_forces().ravel(), a.get_stress()


def test_predictions_follow_the_parameters_written():
    atoms = si()
    pot = KIMPotential(SW)
    forces, energy, stress = (pot.predictions(atoms, q) for q in ("forces", "energy", "stress"))
    assert forces.n_values == 24 and energy.n_values == 1 and stress.n_values == 6
    a0 = float(pot.get_parameter("A")[0])
    write = pot.parameter_writer([("A", 0), ("lambda", 0)])
    write([a0 * 1.1, 25.0])
    assert pot.get_parameter("A")[0] == a0 * 1.1 and pot.get_parameter("lambda")[0] == 25.0
    e_ref, f_ref, s_ref = ase_results(atoms, A=a0 * 1.1, **{"lambda": 25.0})
    np.testing.assert_allclose(forces(), f_ref, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(energy(), [e_ref], rtol=1e-12)
    np.testing.assert_allclose(stress(), s_ref, rtol=1e-7, atol=1e-12)
    # raw forces are linear: the fold of a difference is the difference of the folds
    plus = forces.raw()
    write([a0, 25.0])
    minus = forces.raw()
    np.testing.assert_allclose(forces.fold(plus - minus), f_ref - ase_results(atoms, A=a0, **{"lambda": 25.0})[1],
                               rtol=1e-8, atol=1e-11)


def test_a_cutoff_change_rebuilds_the_neighbours():
    atoms = si()
    pot = KIMPotential(SW)
    forces = pot.predictions(atoms, "forces")
    before = forces()
    cutoff = float(pot.get_parameter("cutoff")[0])
    pot.parameter_writer([("cutoff", 0)])([cutoff * 1.05])
    fresh = KIMPotential(SW, parameters={"cutoff": [cutoff * 1.05]})
    np.testing.assert_allclose(forces(), fresh.compute(atoms, energy=False, forces=True)["forces"].ravel(),
                               rtol=1e-10, atol=1e-12)
    assert not np.allclose(forces(), before)


def test_bad_uses_are_refused_with_the_names():
    pot = KIMPotential(SW)
    with pytest.raises(InputError, match=r"unknown parameter 'Q'"):
        pot.parameter_writer([("Q", 0)])
    with pytest.raises(InputError, match=r"extent 3 out of range"):
        pot.parameter_writer([("A", 3)])
    write = pot.parameter_writer([("A", 0)])
    with pytest.raises(InputError, match=r"expected 1 finite parameter values"):
        write([np.nan])
    with pytest.raises(InputError, match=r"expected 1 finite parameter values, got 2"):
        write([1.0, 2.0])
    cluster = si()
    cluster.pbc = False
    with pytest.raises(InputError, match=r"stress.*not periodic"):
        pot.predictions(cluster, "stress")
    with pytest.raises(InputError, match=r"configuration 4: .*species \['Cu'\]"):
        pot.check_species(bulk("Cu"), "configuration 4")


def test_check_spec_is_the_one_parser():
    spec = {"potential_type": "kim", "potential_args": {"kim_id": SW, "species": ["Si"]}}
    checked = check_spec(spec)
    assert checked == {"potential_type": "KIM", "potential_args": {"kim_id": SW, "species": ["Si"]}}
    checked["potential_args"]["species"].append("C")
    assert spec["potential_args"]["species"] == ["Si"]  # the caller's dict is never shared
    for bad, match in (({"potential_type": "LAMMPS"}, "only 'KIM'"), ({"potential_type": "KIM"}, "kim_id"),
                       ("SW", "expected a KIMPotential or a dict")):
        with pytest.raises(InputError, match=match):
            check_spec(bad)
    pot = KIMPotential(SW)
    pot.set_parameter("A", [16.0])
    copy = pot.copy()
    assert copy is not pot and copy.get_parameter("A")[0] == 16.0
    assert check_spec(pot)["potential_args"]["parameters"] == {"A": [16.0]}
