"""KIMPotential against ASE's own KIM calculator (``ase.calculators.kim.KIM``), the independent
reference: same installed model, evaluated through ASE's separate kimpy wrapper and neighbour list.
"""

import pickle

import numpy as np
import pytest

pytest.importorskip("kimpy")

from ase.build import bulk  # noqa: E402

from atomscore.errors import InputError, PotentialError  # noqa: E402
from atomscore.potentials.kim import KIMPotential  # noqa: E402

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"


def ase_kim(atoms, **params):
    from ase.calculators.kim import KIM

    a = atoms.copy()
    a.calc = KIM(SW)
    if params:
        a.calc.set_parameters(**{k: [[0], [v]] for k, v in params.items()})
    return a


@pytest.fixture(scope="module")
def pot():
    return KIMPotential(SW)


@pytest.fixture
def si64():
    a = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    a.rattle(0.05, seed=3)
    a.positions += [2.0, -1.5, 7.0]  # atoms outside the cell: must be wrapped internally
    return a


@pytest.fixture
def cluster():
    a = bulk("Si", "diamond", a=5.43, cubic=True)[:8]
    a.rattle(0.05, seed=4)
    a.pbc = False
    a.cell = np.zeros((3, 3))
    return a


def test_periodic_matches_ase_kim(pot, si64):
    """Energy, forces and stress equal ASE's KIM calculator on a rattled periodic cell."""
    before = si64.positions.copy()
    res = pot.compute(si64, energy=True, forces=True, stress=True)
    ref = ase_kim(si64)
    assert res["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(res["forces"], ref.get_forces(), atol=1e-10)
    np.testing.assert_allclose(res["stress"], ref.get_stress(voigt=True), atol=1e-12)
    np.testing.assert_array_equal(si64.positions, before)  # input not modified


def test_cluster_matches_ase_kim_and_refuses_stress(pot, cluster):
    """A non-periodic cluster: energy and forces as ASE's KIM; stress is a clear InputError."""
    res = pot.compute(cluster, energy=True, forces=True)
    ref = ase_kim(cluster)
    assert res["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-10)
    np.testing.assert_allclose(res["forces"], ref.get_forces(), atol=1e-10)
    with pytest.raises(InputError, match="not periodic"):
        pot.compute(cluster, energy=False, stress=True)


def test_only_asked_quantities(pot, si64):
    """Only the requested keys come back."""
    assert set(pot.compute(si64, energy=False, forces=True)) == {"forces"}
    assert set(pot.compute(si64)) == {"energy"}


def test_parameters_in_place_and_neighbour_reuse(si64):
    """Set A in place: results equal ASE's KIM with the same A; the neighbour list is reused."""
    pot = KIMPotential(SW)
    pot.compute(si64, forces=True)
    setup = pot._setup(si64)
    pot.set_parameter("A", 16.5)
    assert pot.get_parameter("A")[0] == 16.5
    res = pot.compute(si64, forces=True)
    assert pot._setup(si64) is setup  # same padding and neighbour list
    ref = ase_kim(si64, A=16.5)
    np.testing.assert_allclose(res["forces"], ref.get_forces(), atol=1e-10)
    assert res["energy"] == pytest.approx(ref.get_potential_energy(), abs=1e-9)


def test_cutoff_change_rebuilds(si64):
    """A larger cutoff forces a new neighbour list; results match ASE's KIM with that cutoff."""
    pot = KIMPotential(SW)
    pot.compute(si64)
    setup = pot._setup(si64)
    pot.set_parameters({"cutoff": [4.4]})
    res = pot.compute(si64, forces=True)
    assert pot._setup(si64) is not setup
    ref = ase_kim(si64, cutoff=4.4)
    np.testing.assert_allclose(res["forces"], ref.get_forces(), atol=1e-10)


def test_parameter_info_and_errors(pot):
    """Parameter listing, and bad names/extents/values as InputError naming what is wrong."""
    info = pot.parameter_info()
    assert list(info)[:2] == ["A", "B"]
    assert info["A"]["extent"] == 1 and info["A"]["dtype"] == "Double" and info["A"]["index"] == 0
    with pytest.raises(InputError, match="unknown parameter 'AA'.*A, B, p"):
        pot.set_parameter("AA", 1.0)
    with pytest.raises(InputError, match="extent 3 out of range"):
        pot.set_parameter("A", [1.0], extents=[3])
    with pytest.raises(InputError, match="numeric"):
        pot.set_parameter("A", "big")
    with pytest.raises(InputError, match="finite"):
        pot.set_parameter("A", np.nan)
    assert pot.get_parameter("A")[0] == pytest.approx(15.2848479197914)  # nothing set


def test_unknown_model_lists_similar_and_install_command():
    """An unknown id names the installed _005 and the install command."""
    with pytest.raises(PotentialError) as err:
        KIMPotential("SW_StillingerWeber_1985_Si__MO_405512056662_006")
    msg = str(err.value)
    assert SW in msg
    assert "kim-api-collections-management install user SW_StillingerWeber_1985_Si__MO_405512056662_006" in msg


def test_spec_round_trip_and_pickle(pot, si64):
    """from_spec/to_spec re-create the model; pickling carries live parameters; other types refused."""
    spec = {"potential_type": "KIM",
            "potential_args": {"kim_id": SW, "kim_api": "kim-api-collections-management",
                               "model_driver": "SW__MD_335816936951_005", "species": ["Si"]}}
    p = KIMPotential.from_spec(spec)
    assert KIMPotential.from_spec(p) is p
    assert p.to_spec()["potential_args"]["kim_id"] == SW
    assert KIMPotential.from_spec(p.to_spec()).species == ["Si"]
    p.set_parameter("B", 0.7)
    q = pickle.loads(pickle.dumps(p))
    assert q.get_parameter("B")[0] == 0.7
    with pytest.raises(InputError, match="only 'KIM'"):
        KIMPotential.from_spec({"potential_type": "LAMMPS", "potential_args": {}})
    with pytest.raises(InputError, match="does not support"):
        KIMPotential(SW, species=["Al"])


def test_ase_calculator_view_follows_parameters(si64):
    """The ASE calculator view sees parameter changes made on the potential."""
    pot = KIMPotential(SW)
    a = si64.copy()
    a.calc = pot.get_calculator()
    e0 = a.get_potential_energy()
    pot.set_parameter("A", 16.0)
    e1 = a.get_potential_energy()
    assert e1 != e0
    assert e1 == pytest.approx(ase_kim(si64, A=16.0).get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(a.get_stress(), ase_kim(si64, A=16.0).get_stress(), atol=1e-12)


def test_stress_alone_matches_energy_finite_differences_for_eam():
    """EAM Dynamo fills the virial only in its force pass: a stress-only request must still
    give the stress, equal to the finite-difference strain derivative of the energy (ASE)."""
    from ase.build import bulk

    from atomscore.potentials.kim import KIMPotential

    pot = KIMPotential("EAM_Dynamo_AcklandTichyVitek_1987_Cu__MO_179025990738_005")
    atoms = bulk("Cu", "fcc", 3.68, cubic=True).repeat(2)
    atoms.set_cell(atoms.cell.array @ np.array([[1.0, 0.01, 0.0], [0.0, 0.99, 0.02], [0.0, 0.0, 1.01]]),
                   scale_atoms=True)
    atoms.rattle(0.02, seed=3)
    alone = pot.compute(atoms, energy=False, forces=False, stress=True)["stress"]
    with_forces = pot.compute(atoms, energy=False, forces=True, stress=True)["stress"]
    from ase.calculators.fd import calculate_numerical_stress

    atoms.calc = pot.get_calculator()
    numerical = calculate_numerical_stress(atoms, eps=1e-5)
    np.testing.assert_allclose(alone, with_forces, rtol=1e-12)
    np.testing.assert_allclose(alone, numerical, rtol=1e-5, atol=1e-8)
    assert np.abs(alone).max() > 1e-3


def test_reused_compute_arguments_point_at_the_new_setup(si64):
    """Compute arguments of dropped setups are reused: a setup built on them (another size,
    energy only then forces) equals ASE's KIM calculator, so every pointer was set again."""
    import gc

    p = KIMPotential(SW)
    p.compute(si64, energy=True, forces=True)  # a setup with pointers at its buffers
    p._cache.clear()
    gc.collect()
    assert len(p._free_args) == 1  # given back when its setup went
    small = si64[:40]  # fewer atoms, other buffers, on the reused arguments
    e = p.compute(small, energy=True)["energy"]
    assert not p._free_args
    ref = ase_kim(small)
    assert e == pytest.approx(ref.get_potential_energy(), abs=1e-9)
    np.testing.assert_allclose(p.compute(small, forces=True)["forces"], ref.get_forces(), atol=1e-10)
