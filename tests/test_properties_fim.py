"""The built-in target properties inside FIMPropertyScore: registration, stacking, units.

References: the FIM assembled by hand from each property's central differences (Jᵀ cov⁻¹ J),
and the registry (every class named in atomscore.properties is accepted).
"""

import numpy as np
import pytest

from atomscore.errors import InputError
from property_checks import SI_DIAMOND, SW, central_differences, spec

pytest.importorskip("kimpy")


def test_every_registered_property_is_accepted():
    from atomscore.fim.property import TARGET_PROPERTY_TYPES
    import atomscore.properties as properties
    from atomscore.properties import TARGET_PROPERTIES

    assert set(TARGET_PROPERTY_TYPES) == set(TARGET_PROPERTIES)
    for name in ("LatticeConstant", "CohesiveEnergy", "BulkModulus", "CrystalElasticConstants",
                 "VacancyFormationEnergy", "VacancyMigrationEnergy", "SurfaceEnergy", "ElasticConstants"):
        assert getattr(properties, name).target_property_type == name


def test_stacked_properties_fim_equals_hand_assembly():
    """Lattice constant + surface energy, block-diagonal cov: FIM = Σ Jᵀ cov⁻¹ J."""
    from atomscore.fim.property import FIMPropertyScore

    targets = [("LatticeConstant", SI_DIAMOND),
               ("SurfaceEnergy", {**SI_DIAMOND, "miller": [1, 1, 1], "layers": 3})]
    covs = [np.array([[1e-4]]), np.array([[1e-6]])]
    free = ["A", "sigma"]
    h = 1e-5
    score = FIMPropertyScore()
    fim = score.compute([{"init_args": {"target_property_type": t, "target_property_args": a}} for t, a in targets],
                        "SENSITIVITY", covs, spec(SW), {name: [["default"]] for name in free},
                        derivative_kwargs={"h": h, "method": "CD"})
    want = sum(j.T @ np.linalg.inv(c) @ j for j, c in
               zip((central_differences(t, a, SW, free, h) for t, a in targets), covs))
    np.testing.assert_allclose(fim, want, rtol=1e-8)
    meta = score.metadata_of(fim)
    assert meta["property_units"] == ["A", "eV/A^2"]
    assert meta["property_evaluation"] == ["in-process", "in-process"]


def test_unknown_type_names_the_new_ones():
    from atomscore.fim.property import FIMPropertyScore

    with pytest.raises(InputError, match="VacancyFormationEnergy"):
        FIMPropertyScore().compute([{"init_args": {"target_property_type": "Vacancy", "target_property_args": {}}}],
                                   "SENSITIVITY", np.eye(1), spec(SW), {"A": [["default"]]})
    with pytest.raises(InputError, match="supercell"):
        FIMPropertyScore().compute([{"init_args": {"target_property_type": "VacancyFormationEnergy",
                                                   "target_property_args": {**SI_DIAMOND, "supercell": 0}}}],
                                   "SENSITIVITY", np.eye(3), spec(SW), {"A": [["default"]]})
