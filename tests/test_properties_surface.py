"""SurfaceEnergy (bcc W EAM, diamond SW Si).

References: LAMMPS with the same KIM model (the same slab, ``minimize`` at fixed box), the
exact bond count of SW Si(100) (a bulk-truncated (100) surface atom keeps 2 of its 4 bonds at
the pair minimum and tetrahedral angles: γ = E_coh / a², 0.1470 eV/Å² = 2.36 J/m²),
convergence in slab thickness, and central differences of the property (derivative).
"""

import pytest

from atomscore.errors import InputError
from property_checks import LMP, SI_DIAMOND, SW, W, W_BCC, check_derivative, needs_lmp, pots  # noqa: F401

pytest.importorskip("kimpy")

def test_sw_si_100_is_the_bond_count(pots):
    from atomscore.properties import CohesiveEnergy, SurfaceEnergy

    r = SurfaceEnergy(miller=[1, 0, 0], layers=4, **SI_DIAMOND).calculate_property(pots["Si"])
    bulk = CohesiveEnergy(**SI_DIAMOND).calculate_property(pots["Si"])
    exact = bulk["cohesive_energy"] / bulk["lattice_constant"] ** 2
    assert r["unrelaxed_surface_energy"] == pytest.approx(exact, rel=1e-9)
    assert r["surface_energy"] <= r["unrelaxed_surface_energy"] + 1e-12
    assert r["units"]["surface_energy"] == "eV/A^2"


@needs_lmp
@pytest.mark.parametrize("miller", [[1, 1, 0], [1, 0, 0]])
def test_w_matches_lammps(pots, miller):
    from atomscore.properties import SurfaceEnergy

    ours = SurfaceEnergy(miller=miller, layers=6, **W_BCC).calculate_property(pots["W"])
    lmp = SurfaceEnergy(miller=miller, layers=6, simulator_path=LMP, **W_BCC).calculate_property(pots["W"])
    for key in ("surface_energy", "unrelaxed_surface_energy"):
        assert ours[key] == pytest.approx(lmp[key], rel=1e-8)
    assert ours["surface_energy"] < ours["unrelaxed_surface_energy"]  # relaxation lowers it


def test_w_converged_in_thickness(pots):
    """6 and 10 (110) layers agree to 1e-4 eV/Å² (the slab's two surfaces do not interact)."""
    from atomscore.properties import SurfaceEnergy

    thin, thick = (SurfaceEnergy(miller=[1, 1, 0], layers=n, **W_BCC).calculate_property(pots["W"])["surface_energy"]
                   for n in (6, 10))
    assert thin == pytest.approx(thick, abs=1e-4)
    assert 0.15 < thick < 0.17  # 2.4-2.7 J/m²: W(110), the densest bcc face


def test_derivative_matches_central_differences():
    """FIMPropertyScore's Jacobian vs central differences at half the step (SW A and sigma)."""
    check_derivative("SurfaceEnergy", {**SI_DIAMOND, "miller": [1, 1, 1], "layers": 3}, SW, ["A", "sigma"], 1e-5, 1e-4)


@pytest.mark.parametrize("change, match", [
    ({"miller": [0, 0, 0]}, "miller: expected three integers"),
    ({"miller": "110"}, "miller: expected three integers"),
    ({"layers": 1}, "layers: expected an integer >= 2"),
    ({"vacuum": -1}, "vacuum"),
])
def test_bad_arguments(change, match):
    from atomscore.properties import SurfaceEnergy

    with pytest.raises(InputError, match=match):
        SurfaceEnergy(**{**W_BCC, **change})
