"""LatticeConstant, CohesiveEnergy, BulkModulus, CrystalElasticConstants (bcc W, diamond Si, hcp Ti).

References: LAMMPS with the same KIM model (box relaxation), ASE's equation of state
(``ase.eos``, Birch-Murnaghan fit of E(V): an energy route, independent of our stress route),
the energy second derivative by numdifftools (hcp), hexagonal symmetry relations, published
SW Si values (a0 5.431 Å, Ec 4.3366 eV, B 101.4 GPa), OpenKIM's ElasticConstantsCubic C11 of
ZJW W at strain 1e-3 quoted in issue 23 (522.2 GPa), and central differences (derivatives).
"""

import shutil

import numpy as np
import pytest

from atomscore.errors import InputError
from property_checks import SI_DIAMOND, SW, W, W_BCC, check_derivative

pytest.importorskip("kimpy")

TI = "EAM_Dynamo_ZhouJohnsonWadley_2004_Ti__MO_723456820410_005"
TI_HCP = {"lattice_param": 2.95, "lattice_type": "hcp", "elements": ["Ti"], "c_over_a": 1.59}
LMP = shutil.which("lmp")
needs_lmp = pytest.mark.skipif(LMP is None, reason="LAMMPS (Debian package lammps) not installed")


@pytest.fixture(scope="module")
def pots():
    from atomscore.potentials.kim import KIMPotential

    return {"W": KIMPotential(W), "Si": KIMPotential(SW), "Ti": KIMPotential(TI)}


@pytest.mark.parametrize("which, span", [("W", 2e-4), ("Si", 6e-3)])
def test_lattice_and_bulk_modulus_match_ase_eos(pots, which, span):
    """a0 within 1e-4 Å and B within 0.3 % of a Birch-Murnaghan fit (its own fit error).
    Tabulated W needs a narrow fit (±0.02 % in a): wider ones average the curvature over
    table segments and reach 310.5 GPa at ±0.1 % (docs/properties.md)."""
    from atomscore.properties import BulkModulus, LatticeConstant
    from atomscore.properties.crystal import eos_fit

    args = W_BCC if which == "W" else SI_DIAMOND
    a = LatticeConstant(**args).calculate_property(pots[which])["lattice_constant"]
    b = BulkModulus(units="GPa", **args).calculate_property(pots[which])
    a_eos, b_eos = eos_fit(pots[which], args["elements"], args["lattice_type"], a, span)
    assert a == pytest.approx(a_eos, abs=1e-4)
    assert b["bulk_modulus"] == pytest.approx(b_eos, rel=3e-3)
    assert b["units"]["bulk_modulus"] == "GPa"
    if which == "Si":  # published SW: B = (C11 + 2 C12)/3 = 101.4 GPa, a0 = 5.431 Å
        assert b["bulk_modulus"] == pytest.approx(101.4, rel=5e-3)
        assert a == pytest.approx(5.431, abs=5e-4)


def test_cohesive_energy_published_sw(pots):
    """SW Si: 4.3366 eV/atom (2 x 2.1683 eV, Stillinger & Weber 1985)."""
    from atomscore.properties import CohesiveEnergy

    r = CohesiveEnergy(**SI_DIAMOND).calculate_property(pots["Si"])
    assert r["cohesive_energy"] == pytest.approx(4.3366, rel=2e-4)
    assert r["units"]["cohesive_energy"] == "eV/atom"


@needs_lmp
def test_bcc_w_and_hcp_ti_match_lammps(pots):
    """a, c and Ec equal LAMMPS's box relaxation with the same KIM model (1e-8 relative)."""
    from atomscore.properties import CohesiveEnergy, LatticeConstant

    for args, pot in ((W_BCC, pots["W"]), (TI_HCP, pots["Ti"])):
        ours = CohesiveEnergy(**args).calculate_property(pot)
        lmp = CohesiveEnergy(simulator_path=LMP, **args).calculate_property(pot)
        assert lmp["backend"] == "lammps"
        assert ours["cohesive_energy"] == pytest.approx(lmp["cohesive_energy"], rel=1e-8)
        assert ours["lattice_constant"] == pytest.approx(lmp["lattice_constant"], rel=1e-7)
    ti = LatticeConstant(**TI_HCP).calculate_property(pots["Ti"])
    ti_lmp = LatticeConstant(simulator_path=LMP, **TI_HCP).calculate_property(pots["Ti"])
    assert ti["c"] == pytest.approx(ti_lmp["c"], rel=1e-7)
    assert 1.55 < ti["c_over_a"] < 1.65  # an hcp metal, not a collapsed cell


def test_hcp_elastic_constants_symmetry_and_energy_route(pots):
    """hcp Ti: hexagonal symmetry (C11 = C22, C66 = (C11 − C12)/2, ...) and C33 equal to
    (1/V) d²E/dε_zz² of the relaxed-ion energy (numdifftools), within 0.1 %."""
    import numdifftools as nd
    from ase.units import GPa

    from atomscore.properties import CrystalElasticConstants
    from atomscore.properties.common import relax_positions

    # strain 1e-5: the Ti table's curvature already varies at 1e-4 (C66 vs (C11 − C12)/2: 5e-4)
    prop = CrystalElasticConstants(units="GPa", deformation_mag=1e-5, **TI_HCP)
    r = prop.calculate_property(pots["Ti"])
    c = r["elastic_constants"]
    assert c[0, 0] == pytest.approx(c[1, 1], rel=1e-6)
    assert c[0, 2] == pytest.approx(c[1, 2], rel=1e-6)
    assert c[3, 3] == pytest.approx(c[4, 4], rel=1e-6)
    assert c[5, 5] == pytest.approx(0.5 * (c[0, 0] - c[0, 1]), rel=1e-5)
    assert np.max(np.abs(c[:3, 3:])) < 1e-3 * c[0, 0]
    assert np.all(np.linalg.eigvalsh(c) > 0)  # mechanically stable
    np.testing.assert_allclose(prop.property_vector(pots["Ti"]),
                               [c[0, 0], c[0, 1], c[0, 2], c[2, 2], c[3, 3]], rtol=1e-10)
    _, _, atoms = prop.relaxed_bulk(pots["Ti"])
    v = atoms.get_volume()

    def e(eps):
        s = atoms.copy()
        s.set_cell(atoms.cell @ np.diag([1.0, 1.0, 1.0 + float(eps)]).T, scale_atoms=True)
        return pots["Ti"].compute(relax_positions(pots["Ti"], s))["energy"]

    c33 = nd.Derivative(e, n=2, step=2e-5, order=4)(0.0) / v / GPa
    assert c[2, 2] == pytest.approx(c33, rel=1e-3)


def test_tabulated_w_spread_is_the_strain_dependence(pots):
    """ZJW W: C11 519.9 GPa at strain 1e-4 (issue 23), the spread reaches OpenKIM's 522.2 at 1e-3."""
    from atomscore.properties import CrystalElasticConstants

    r = CrystalElasticConstants(units="GPa", **W_BCC).calculate_property(pots["W"])
    assert r["c11"] == pytest.approx(519.9, abs=0.1)
    assert r["c44"] == pytest.approx(159.0, abs=0.1)
    assert r["c11"] + r["elastic_constants_spread"][0, 0] == pytest.approx(522.2, abs=0.3)


@pytest.mark.slow
def test_derivatives_match_central_differences():
    """FIMPropertyScore's Jacobian vs central differences at half the step (SW A and lambda;
    ZJW W and Ti deltaRho, the spacing of the embedding-function table; its step must stay
    far below one table cell, h = 2e-6 of 0.0845: at 1e-4 the differences straddle spline knots
    and miss by 18 %, see docs/properties.md)."""
    check_derivative("LatticeConstant", SI_DIAMOND, SW, ["A", "sigma"], 1e-4, 1e-5)
    check_derivative("BulkModulus", {**SI_DIAMOND, "units": "GPa"}, SW, ["A", "sigma"], 1e-4, 1e-4)
    check_derivative("CohesiveEnergy", W_BCC, W, ["deltaRho"], 2e-6, 1e-3)
    check_derivative("CrystalElasticConstants", TI_HCP, "EAM_Dynamo_ZhouJohnsonWadley_2004_Ti__MO_723456820410_005",
                     ["deltaRho"], 2e-6, 1e-3)


@pytest.mark.parametrize("change, match", [
    ({"lattice_type": "hexagonal"}, "lattice_type: unknown crystal structure"),
    ({"elements": ["W", "W"]}, "elements: a bcc crystal holds 1 species"),
    ({"elements": ["Xx"]}, "not a chemical symbol"),
    ({"c_over_a": 1.6}, "c_over_a: only hexagonal"),
    ({"lattice_param": float("nan")}, "lattice_param"),
    ({"fim_quantities": ["c"]}, "has no c axis"),
    ({"fim_quantities": ["volume"]}, "has no quantity 'volume'"),
])
def test_bad_arguments(change, match):
    from atomscore.properties import LatticeConstant

    with pytest.raises(InputError, match=match):
        LatticeConstant(**{**W_BCC, **change})


def test_spec_round_trip_and_species_check(pots):
    from atomscore.properties import BulkModulus, from_spec
    from atomscore.properties.base import TargetProperty

    prop = BulkModulus(units="GPa", **W_BCC)
    again = from_spec({"init_args": prop.to_spec()})
    assert again.to_spec() == prop.to_spec() and again.modulus_units == "GPa"
    with pytest.raises(InputError, match="does not support"):
        prop.calculate_property(pots["Si"])
    with pytest.raises(InputError, match="has no LAMMPS backend"):
        TargetProperty(simulator_path="lmp", **W_BCC)


@needs_lmp
def test_two_species_b2_nial_matches_lammps():
    """B2 NiAl (cesiumchloride, Mishin 2002 EAM): a and Ec equal LAMMPS's (two atom types)."""
    from atomscore.potentials.kim import KIMPotential
    from atomscore.properties import CohesiveEnergy

    pot = KIMPotential("EAM_Dynamo_MishinMehlPapaconstantopoulos_2002_NiAl__MO_109933561507_005")
    args = {"lattice_param": 2.88, "lattice_type": "cesiumchloride", "elements": ["Ni", "Al"]}
    ours = CohesiveEnergy(**args).calculate_property(pot)
    lmp = CohesiveEnergy(simulator_path=LMP, **args).calculate_property(pot)
    assert ours["cohesive_energy"] == pytest.approx(lmp["cohesive_energy"], rel=1e-9)
    assert ours["lattice_constant"] == pytest.approx(lmp["lattice_constant"], rel=1e-9)
    assert 4.0 < ours["cohesive_energy"] < 5.0 and 2.8 < ours["lattice_constant"] < 2.9
