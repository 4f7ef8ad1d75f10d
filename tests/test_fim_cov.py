"""FIMPropertyScore's cov must be a covariance: symmetric positive semi-definite.

Before the fix ``cov = -I`` gave FIM = -JᵀJ (negative definite) and a run that ended
"done". A negative eigenvalue beyond round-off is refused before any job folder; a singular
PSD cov, with round-off eigenvalues of either sign, is still accepted (pseudo-inverse).
The eigenvalues are numpy's (``eigvalsh``).
"""

import numpy as np
import pytest

from atomscore.errors import InputError

pytest.importorskip("kimpy")

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
POTENTIAL = {"potential_type": "KIM", "potential_args": {"kim_id": SW}}


def _target(root):
    args = {"lattice_param": 5.43, "lattice_type": "diamond", "elements": ["Si"],
            "fim_quantities": ["c11", "c12", "c44"]}
    return {"init_args": {"target_property_type": "ElasticConstants", "target_property_args": args},
            "calculate_property_args": {"workflow": {"workflow_type": "LOCAL",
                                                     "workflow_args": {"root_directory": str(root)}}}}


def _indefinite():
    q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    return q @ np.diag([1.0, 0.5, -0.2]) @ q.T


@pytest.mark.parametrize("cov", [-np.eye(3), _indefinite(), np.diag([1.0, 1.0, -1e-6])])
def test_negative_eigenvalue_refused_before_any_job(tmp_path, cov):
    from atomscore.fim import FIMPropertyScore

    root = tmp_path / "jobs"
    with pytest.raises(InputError, match="positive semi-definite"):
        FIMPropertyScore().compute([_target(root)], "SENSITIVITY", cov=cov, potential=POTENTIAL,
                                   parameters_optimize={"A": [["default"]]})
    with pytest.raises(InputError, match="positive semi-definite"):
        FIMPropertyScore().check_compute_args([_target(root)], "SENSITIVITY",
                                              {"cov": cov, "potential": POTENTIAL,
                                               "parameters_optimize": {"A": [["default"]]}})
    assert not root.exists()


def test_singular_psd_with_round_off_accepted():
    from atomscore.fim.property import _covariance

    v = np.random.default_rng(1).normal(size=(3, 2))
    cov = v @ v.T  # rank 2: one eigenvalue is 0 up to round-off (either sign)
    cov = 0.5 * (cov + cov.T)
    lowest = np.linalg.eigvalsh(cov)[0]
    assert abs(lowest) < 1e-14 * np.abs(cov).max()
    np.testing.assert_array_equal(_covariance(cov, [3]), cov)
    np.testing.assert_array_equal(_covariance(cov - 1e-17 * np.eye(3), [3]), cov - 1e-17 * np.eye(3))
