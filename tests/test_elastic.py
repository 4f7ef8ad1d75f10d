"""ElasticConstants: embedded (kimpy) and LAMMPS (``kim param set``) backends.

References: the published Stillinger-Weber silicon values (a0 = 5.431 Å, relaxed C11, C12,
C44 = 151.4, 76.4, 56.4 GPa, cohesive energy 4.3366 eV/atom = 2.1683 eV * 2), the
Ackland 2003 W EAM fit (a0 = 3.1652 Å, Ec = 8.90 eV), the bulk modulus from the curvature
of the energy-volume curve taken with numdifftools (an energy route, independent of the
stress route the backends use), and each backend against the other.
"""

import copy
import os
import shutil
import stat

import numpy as np
import pytest

from atomscore.errors import InputError, PotentialError

pytest.importorskip("kimpy")

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
W_EAM = "EAM_Dynamo_Ackland_2003_W__MO_141627196590_005"
CU_EAM = "EAM_Dynamo_AcklandTichyVitek_1987_Cu__MO_179025990738_005"
LMP = shutil.which("lmp")
needs_lmp = pytest.mark.skipif(LMP is None, reason="LAMMPS (Debian package lammps) not installed")


def spec(kim_id):
    return {"potential_type": "KIM", "potential_args": {"kim_id": kim_id}}


def si(simulator_path=None, **kw):
    from atomscore.properties import ElasticConstants

    args = dict(lattice_param=5.43, lattice_type="diamond", deformation_mag=1e-4,
                simulator_path=simulator_path, elements=["Si"])
    args.update(kw)
    return ElasticConstants(**args)


@pytest.fixture(scope="module")
def sw_embedded():
    return si().calculate_property(spec(SW))


@pytest.fixture(scope="module")
def sw_lammps():
    if LMP is None:
        pytest.skip("no lmp")
    return si(LMP).calculate_property(spec(SW))


def _cubic(c):
    return c[0, 0], c[0, 1], c[3, 3]


def test_sw_silicon_embedded_matches_published(sw_embedded):
    """Embedded backend vs the published SW Si values (within 0.5%)."""
    r = sw_embedded
    assert r["lattice_constant"] == pytest.approx(5.431, abs=5e-4)
    assert r["cohesive_energy"] == pytest.approx(4.3366, rel=1e-3)
    c11, c12, c44 = _cubic(r["elastic_constants"])
    assert c11 == pytest.approx(151.4, rel=5e-3)
    assert c12 == pytest.approx(76.4, rel=5e-3)
    assert c44 == pytest.approx(56.4, rel=5e-3)  # relaxed C44 (internal coordinates relaxed)
    assert r["units"]["elastic_constants"] == "GPa"
    assert r["elastic_constants"].shape == (6, 6)


@needs_lmp
def test_sw_silicon_lammps_matches_published_and_embedded(sw_lammps, sw_embedded):
    """LAMMPS backend vs the published values and vs the embedded backend (0.2%)."""
    r = sw_lammps
    assert r["backend"] == "lammps"
    assert r["lattice_constant"] == pytest.approx(5.431, abs=5e-4)
    for got, want in zip(_cubic(r["elastic_constants"]), (151.4, 76.4, 56.4)):
        assert got == pytest.approx(want, rel=5e-3)
    ce, cl = sw_embedded["elastic_constants"], r["elastic_constants"]
    nz = np.abs(ce) > 1.0
    np.testing.assert_allclose(cl[nz], ce[nz], rtol=2e-3)
    assert np.max(np.abs(cl[~nz])) < 1e-3 and np.max(np.abs(ce[~nz])) < 1e-3  # cubic symmetry
    assert r["lattice_constant"] == pytest.approx(sw_embedded["lattice_constant"], rel=1e-6)
    assert r["cohesive_energy"] == pytest.approx(sw_embedded["cohesive_energy"], rel=1e-6)


def test_units_ev_per_a3(sw_embedded):
    """eV/Å³ on request equals GPa times ase.units.GPa."""
    from ase.units import GPa

    r = si(units="eV/A^3").calculate_property(spec(SW))
    assert r["units"]["elastic_constants"] == "eV/A^3"
    np.testing.assert_allclose(r["elastic_constants"], sw_embedded["elastic_constants"] * GPa,
                               rtol=1e-9, atol=1e-12)


def test_bulk_modulus_from_energy_curvature(sw_embedded):
    """(C11 + 2 C12)/3 from stresses equals V d²E/dV² from energies (numdifftools)."""
    import numdifftools as nd
    from ase.build import bulk
    from ase.units import GPa

    from atomscore.potentials.kim import KIMPotential

    pot = KIMPotential(SW)
    a0 = sw_embedded["lattice_constant"]
    v0 = a0 ** 3

    def energy(v):
        return pot.compute(bulk("Si", "diamond", a=float(v) ** (1 / 3), cubic=True))["energy"]

    b_energy = v0 * nd.Derivative(energy, n=2, step=v0 * 1e-3)(v0) / GPa
    c = sw_embedded["elastic_constants"]
    assert (c[0, 0] + 2 * c[0, 1]) / 3 == pytest.approx(b_energy, rel=1e-4)


@needs_lmp
def test_kim_param_set_matches_embedded_with_same_parameters():
    """A perturbed parameter through ``kim param set`` equals the embedded backend with it."""
    from atomscore.potentials.kim import KIMPotential

    pot = KIMPotential(SW)
    before = copy.deepcopy(pot.get_parameters())
    pot.set_parameter("lambda", pot.get_parameter("lambda") * 0.9)
    pot.set_parameter("B", pot.get_parameter("B") * 1.05)
    perturbed = copy.deepcopy(pot.get_parameters())
    emb = si().calculate_property(pot)
    lmp = si(LMP).calculate_property(pot)
    ref = si().calculate_property(spec(SW))
    # the perturbation really changes the constants (by far more than the tolerance)
    assert abs(emb["elastic_constants"][3, 3] / ref["elastic_constants"][3, 3] - 1) > 0.03
    assert abs(emb["lattice_constant"] / ref["lattice_constant"] - 1) > 0.005
    nz = np.abs(emb["elastic_constants"]) > 1.0
    np.testing.assert_allclose(lmp["elastic_constants"][nz], emb["elastic_constants"][nz], rtol=2e-3)
    assert lmp["lattice_constant"] == pytest.approx(emb["lattice_constant"], rel=1e-6)
    # the caller's potential keeps its parameters
    for name, values in pot.get_parameters().items():
        np.testing.assert_array_equal(values, perturbed[name])
    assert not np.array_equal(perturbed["B"], before["B"])


@needs_lmp
@pytest.mark.parametrize("kim_id, element, lattice, a, a0, ec", [
    (W_EAM, "W", "bcc", 3.1, 3.1652, 8.90),
    (CU_EAM, "Cu", "fcc", 3.6, 3.615, None),
])
def test_bcc_fcc_backends_agree(kim_id, element, lattice, a, a0, ec):
    """bcc W and fcc Cu (EAM): both backends agree; W's a0 and Ec are those of its fit."""
    from atomscore.properties import ElasticConstants

    res = [ElasticConstants(a, lattice, 1e-4, path, [element]).calculate_property(spec(kim_id))
           for path in (None, LMP)]
    for r in res:
        assert r["lattice_constant"] == pytest.approx(a0, abs=2e-3)
        if ec is not None:
            assert r["cohesive_energy"] == pytest.approx(ec, abs=0.02)
        c = r["elastic_constants"]
        assert c[0, 0] == pytest.approx(c[2, 2], rel=1e-6) and c[0, 0] > c[0, 1] > 0 and c[3, 3] > 0
    nz = np.abs(res[0]["elastic_constants"]) > 1.0
    np.testing.assert_allclose(res[1]["elastic_constants"][nz], res[0]["elastic_constants"][nz], rtol=2e-3)


def test_from_spec_dict_and_caller_dict_untouched():
    """The spec's dict form builds the same object; the dict is not modified."""
    from atomscore.properties import ElasticConstants

    d = {"target_property_type": "ElasticConstants",
         "target_property_args": {"lattice_param": 5.43, "lattice_type": "diamond",
                                  "deformation_mag": 0.0001, "elements": ["Si"]}}
    keep = copy.deepcopy(d)
    ec = ElasticConstants.from_spec(d)
    assert ec.backend == "embedded" and ec.lattice_type == "diamond"
    assert d == keep
    assert ElasticConstants.from_spec(ec.to_spec()).to_spec() == ec.to_spec()
    assert ElasticConstants.from_spec({"init_args": d}).lattice_param == 5.43


# ------------------------------------------------------------------ bad input
def test_unknown_lattice_type_lists_valid_ones():
    with pytest.raises(InputError, match=r"hcp.*'diamond', 'fcc', 'bcc'"):
        si(lattice_type="hcp")


def test_element_not_supported_by_model():
    with pytest.raises(InputError, match=r"does not support 'Cu'.*\['Si'\]"):
        si(elements=["Cu"], lattice_type="fcc").calculate_property(spec(SW))


def test_bad_arguments():
    with pytest.raises(InputError, match="lattice_param"):
        si(lattice_param=-1.0)
    with pytest.raises(InputError, match="deformation_mag"):
        si(deformation_mag=0.0)
    with pytest.raises(InputError, match="one species"):
        si(elements=["Si", "C"])
    with pytest.raises(InputError, match="units"):
        si(units="kbar")
    with pytest.raises(InputError, match="target_property_type"):
        from atomscore.properties import ElasticConstants

        ElasticConstants.from_spec({"target_property_type": "Phonons", "target_property_args": {}})


def test_lmp_missing():
    with pytest.raises(InputError, match="simulator_path.*not an executable"):
        si("/nonexistent/lmp")


def test_lmp_without_kim_package(tmp_path):
    """A LAMMPS whose help lists no KIM package is refused (a small fake executable)."""
    fake = tmp_path / "lmp"
    fake.write_text("#!/bin/sh\ncat <<'EOF'\nLarge-scale Atomic/Molecular Massively Parallel Simulator\n\n"
                    "Installed packages:\n\nMANYBODY MOLECULE\n\n\nList of individual style options\nEOF\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    with pytest.raises(InputError, match="without the KIM package"):
        si(str(fake))


@needs_lmp
def test_lammps_failure_carries_log_tail():
    """A LAMMPS error is raised with the tail of its log (an unknown KIM parameter)."""
    from atomscore.properties.lammps import lammps_elastic

    with pytest.raises(PotentialError, match=r"(?s)log tail:.*ERROR"):
        lammps_elastic(LMP, SW, "Si", "diamond", 5.43, 1e-4, parameters={"notaparam": [1.0]})


def test_fim_quantities_select_the_property_vector(sw_embedded):
    """The vector is exactly the chosen values of calculate_property (eV/Å³ for constants)."""
    from atomscore.potentials.kim import KIMPotential
    from atomscore.properties import ElasticConstants

    pot = KIMPotential(SW)
    chosen = ElasticConstants(5.43, "diamond", elements=["Si"],
                              fim_quantities=["lattice_constant", "c11", "c12", "c44", "cohesive_energy"])
    full = ElasticConstants(5.43, "diamond", elements=["Si"]).property_vector(pot)
    res = chosen.calculate_property(pot, units="eV/A^3")
    c = res["elastic_constants"]
    np.testing.assert_allclose(chosen.property_vector(pot),
                               [res["lattice_constant"], c[0, 0], c[0, 1], c[3, 3], res["cohesive_energy"]],
                               rtol=1e-12)
    assert full.shape == (36,)
    np.testing.assert_allclose(full[[0, 1, 21]], [c[0, 0], c[0, 1], c[3, 3]], rtol=1e-12)
    with pytest.raises(InputError, match="unknown quantity 'bulk_modulus'"):
        ElasticConstants(5.43, "diamond", elements=["Si"], fim_quantities=["bulk_modulus"])
    with pytest.raises(InputError, match="non-empty list"):
        ElasticConstants(5.43, "diamond", elements=["Si"], fim_quantities="c11")
