"""Transforms as the Orchestrator's users write them (issue 22, items 1 and 2).

Item 1: a transform that changes the number of parameters (P_phi != P_theta). The EAM W
model's three tables (3 x 2000 tabulated values, theta) are generated from three log-scale
factors (phi) by a user transform composed with information_matching's LogTransform, as the
research group's 7-parameter EAM transform does. Reference: ASE's KIM calculator
(``ase.calculators.kim.KIM``, its own kimpy wrapper and neighbour list), the full tables set
with ``set_parameters`` at phi0 +- h and a hand-written central difference.
Before: ``InputError: transform: expected 6000 finite transformed values``.

Item 2: with nprocs > 1 the workers use the transform object itself. Before, they rebuilt it
from its ``jsonable_kwargs``: a registered class whose kwargs do not hold its state gave
another FIM silently, an unregistered class a BrokenProcessPool.
"""

import numpy as np
import pytest

pytest.importorskip("kimpy")
transform_module = pytest.importorskip("information_matching.transform")

from ase.build import bulk  # noqa: E402

from atomscore.errors import InputError  # noqa: E402
from atomscore.fim import FIMPropertyScore, FIMTrainingSetScore  # noqa: E402
from atomscore.fim.transforms import EAM_TABLES as TABLES, TableScales, eam_table_scales  # noqa: E402
from atomscore.potentials.kim import KIMPotential  # noqa: E402
from ase_reference import ase_lattice_constant  # noqa: E402

W = "EAM_Dynamo_ZhouJohnsonWadley_2004_W__MO_524392058194_005"
W_SPEC = {"potential_type": "KIM", "potential_args": {"kim_id": W}}
SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
SW_SPEC = {"potential_type": "KIM", "potential_args": {"kim_id": SW}}


def eam_transform():
    transform, _, tables = eam_table_scales(KIMPotential(W))
    return tables, transform


EAM_OPT = {name: [["default"]] * 2000 for name in TABLES}


def w_configs():
    out = []
    for seed in range(2):
        atoms = bulk("W", "bcc", a=3.165, cubic=True).repeat(2)
        atoms.rattle(0.05, seed=seed)
        out.append(atoms)
    return out


def ase_tables_fim(atoms, tables, quantity, h):
    """Independent FIM: ASE's KIM calculator, the tables scaled by exp(phi), central differences."""
    from ase.calculators.kim import KIM

    calc = KIM(W)
    a = atoms.copy()
    a.calc = calc

    def predict(phi):
        calc.set_parameters(**{name: [list(range(t.size)), (np.exp(p) * t).tolist()]
                               for name, t, p in zip(TABLES, tables, phi)})
        return a.get_forces().ravel() if quantity == "forces" else np.array([a.get_potential_energy()])

    cols = []
    for i in range(3):
        step = np.zeros(3)
        step[i] = h
        cols.append((predict(step) - predict(-step)) / (2 * h))
    jac = np.stack(cols, axis=1)
    return jac.T @ jac


def test_tables_from_three_scale_factors_match_ase_finite_differences():
    tables, transform = eam_transform()
    configs = w_configs()
    score = FIMTrainingSetScore()
    fims = score.compute_batch(configs, "SENSITIVITY", potential=W_SPEC, parameters_optimize=EAM_OPT,
                               transform=transform,
                               evaluate_kwargs={"compute_forces": [True, False], "compute_energy": [False, True]})
    assert [f.shape for f in fims] == [(3, 3), (3, 3)]
    # phi0 = log(1) = 0: the default step is the floor 1e-4, never 0 (the Orchestrator's 0.1 * phi)
    meta = fims.metadata
    assert meta["derivative_kwargs"]["step"] == [1e-4] * 3
    for fim, atoms, quantity in zip(fims, configs, ("forces", "energy")):
        ref = ase_tables_fim(atoms, tables, quantity, 1e-4)
        np.testing.assert_allclose(fim, ref, rtol=1e-6, atol=1e-9 * np.abs(ref).max())
        assert np.linalg.matrix_rank(fim) == (3 if quantity == "forces" else 1)
    # metadata: both sizes and the transform, one FIM row per phi
    assert meta["n_parameters"] == 6000 and meta["n_transformed_parameters"] == 3
    assert meta["transform"]["transform_type"] == "ComposedTransform"
    assert [t["transform_type"] for t in meta["transform"]["transform_args"]["transform_list"]] == \
        ["TableScales", "LogTransform"]
    assert score.fim_index_to_parameter == {i: {"parameter": "phi", "extent": i} for i in range(3)}
    assert score.transform is transform  # the object given is the one used (the Orchestrator's attribute)
    # the 2000-entry tables are described by a digest of the model's values, not written out
    import hashlib

    for name, table in zip(TABLES, tables):
        assert meta["parameters_optimize"][name] == {
            "entries": 2000, "fixed": 0, "min": table.min(), "max": table.max(),
            "sha256": hashlib.sha256(table.astype(float).tobytes() + bytes(2000)).hexdigest()}


def test_tables_transform_is_the_same_object_in_two_workers():
    """Item 2 with item 1's transform: nprocs 2 equals nprocs 1."""
    _, transform = eam_transform()
    args = dict(potential=W_SPEC, parameters_optimize=EAM_OPT, transform=transform)
    one = FIMTrainingSetScore().compute_batch(w_configs(), "SENSITIVITY", nprocs=1, **args)
    two = FIMTrainingSetScore().compute_batch(w_configs(), "SENSITIVITY", nprocs=2, **args)
    for a, b in zip(one, two):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=0)


def test_a_transform_giving_tables_of_the_wrong_size_is_refused_at_the_point():
    tables, _ = eam_transform()
    short = TableScales([t[:-1] for t in tables])
    with pytest.raises(InputError, match=r"inverse_transform at .*expected 6000 finite values.*got 5997"):
        FIMTrainingSetScore().compute(w_configs()[0], "SENSITIVITY", potential=W_SPEC,
                                      parameters_optimize=EAM_OPT, transform=short)


def test_property_fim_with_the_tables_transform_matches_ase_lattice_constant():
    """FIMPropertyScore with P_phi = 3 != P_theta = 6000. Reference: the bcc lattice constant
    from ASE's KIM calculator (brentq on the pressure), differenced by hand (CD, h = 1e-3)."""
    from ase.calculators.kim import KIM

    tables, transform = eam_transform()
    target = {"init_args": {"target_property_type": "ElasticConstants",
                            "target_property_args": {"lattice_param": 3.165, "lattice_type": "bcc",
                                                     "elements": ["W"], "fim_quantities": ["lattice_constant"]}},
              "calculate_property_args": {}}
    score = FIMPropertyScore()
    fim, jac = score.compute(target, "SENSITIVITY", cov=[[1e-4]], potential=W_SPEC, parameters_optimize=EAM_OPT,
                             transform=transform, derivative_kwargs={"h": 1e-3, "method": "CD"},
                             return_jacobian=True)
    assert fim.shape == (3, 3) and jac.shape == (1, 3)

    calc = KIM(W)

    def a0(phi):
        calc.set_parameters(**{name: [list(range(t.size)), (np.exp(p) * t).tolist()]
                               for name, t, p in zip(TABLES, tables, phi)})
        return ase_lattice_constant(calc, "W", "bcc", (3.0, 3.4))

    h = 1e-3
    ref = np.array([(a0(h * e) - a0(-h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(jac[0], ref, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(fim, np.outer(ref, ref) / 1e-4, rtol=2e-4, atol=1e-6 * np.abs(fim).max())
    assert score.metadata_of(fim)["n_transformed_parameters"] == 3


# ------------------------------------------------------------------ item 2 on a cheap model
class StatefulScale(transform_module.TransformBase):
    """phi = theta / scale. Its jsonable_kwargs are empty: rebuilt from them, scale is lost."""

    def __init__(self, scale=None):
        super().__init__()
        self.scale = np.ones(3) if scale is None else np.asarray(scale, dtype=float)

    def transform(self, x):
        return np.asarray(x, dtype=float) / self.scale

    def inverse_transform(self, x):
        return np.asarray(x, dtype=float) * self.scale


SW_OPT = {"A": [["default"]], "B": [["default"]], "sigma": [["default"]]}


def si_configs(n=3):
    out = []
    for seed in range(n):
        atoms = bulk("Si", "diamond", a=5.43, cubic=True)
        atoms.rattle(0.05, seed=seed)
        out.append(atoms)
    return out


@pytest.mark.parametrize("registered", [True, False])
def test_workers_use_the_transform_object_not_its_kwargs(monkeypatch, registered):
    if registered:  # as the group's script does: avail_transform.update({...})
        monkeypatch.setitem(transform_module.avail_transform, "StatefulScale", StatefulScale)
    transform = StatefulScale([10.0, 0.5, 2.0])
    args = dict(potential=SW_SPEC, parameters_optimize=SW_OPT, transform=transform)
    # six 8-atom configurations: enough that nprocs=2 gives a worker a group of its own (fewer
    # all stay in this process, which starts with a head start, see fim/workers.py _balance)
    one = FIMTrainingSetScore().compute_batch(si_configs(6), "SENSITIVITY", nprocs=1, **args)
    two = FIMTrainingSetScore().compute_batch(si_configs(6), "SENSITIVITY", nprocs=2, **args)
    # default steps 0.1 |phi| in phi are 0.1 |theta| in theta: the same model evaluations
    plain = FIMTrainingSetScore().compute_batch(si_configs(6), "SENSITIVITY", potential=SW_SPEC,
                                                parameters_optimize=SW_OPT)
    for a, b, p in zip(one, two, plain):
        np.testing.assert_allclose(b, a, rtol=1e-12, atol=0)
        # independent of the workers: d/dphi = scale * d/dtheta (chain rule), same phi steps
        s = np.array([10.0, 0.5, 2.0])
        np.testing.assert_allclose(a, p * np.outer(s, s), rtol=1e-6)


def test_a_job_refuses_a_transform_its_kwargs_cannot_rebuild(tmp_path, monkeypatch):
    from atomscore.jobs.workflow import LocalWorkflow

    monkeypatch.setitem(transform_module.avail_transform, "StatefulScale", StatefulScale)
    root = tmp_path / "jobs"
    args = {"potential": SW_SPEC, "parameters_optimize": SW_OPT, "transform": StatefulScale([10.0, 0.5, 2.0])}
    with pytest.raises(InputError, match=r"StatefulScale.*jsonable_kwargs.*other values.*in this process"):
        FIMTrainingSetScore().run("fim", si_configs(1), {"score_quantity": "SENSITIVITY", **args},
                                  workflow=LocalWorkflow(root))
    assert not root.exists() or not any(p.name == "job.json" for p in root.rglob("*"))


class FailsInWorkers(StatefulScale):
    """Works in the process that made it, raises in any other (a worker)."""

    def __init__(self, scale=None):
        import os

        super().__init__(scale)
        self.home = os.getpid()

    def transform(self, x):
        import os

        if os.getpid() != self.home:
            raise RuntimeError("no licence server in this process")
        return super().transform(x)


def test_a_worker_that_cannot_start_says_why_in_the_parent():
    """Before: BrokenProcessPool, the cause only on the workers' stderr."""
    with pytest.raises(InputError, match=r"transform: cannot transform.*no licence server"):
        FIMTrainingSetScore().compute_batch(si_configs(6), "SENSITIVITY", potential=SW_SPEC, parameters_optimize=SW_OPT,
                                            transform=FailsInWorkers([10.0, 0.5, 2.0]), nprocs=2)
