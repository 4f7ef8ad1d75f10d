"""FIMTrainingSetScore against an independent FIM built from ASE's KIM calculator.

Reference: ``ase.calculators.kim.KIM`` (its own kimpy wrapper and neighbour list), with
``set_parameters`` and a hand-written central difference (step 10% of |theta|), FIM = J^T J.
Also checked: our one-step central difference equals numdifftools.Jacobian for the same
settings, symmetry and positive semi-definiteness, masks, transforms, pure inputs, jobs.
"""

import copy

import numpy as np
import pytest

pytest.importorskip("kimpy")

from ase.build import bulk  # noqa: E402

from atomscore.errors import InputError  # noqa: E402
from atomscore.fim.training_set import FIMTrainingSetScore  # noqa: E402
from atomscore.potentials.kim import KIMPotential  # noqa: E402

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
POT = {"potential_type": "KIM", "potential_args": {"kim_id": SW, "kim_api": "kim-api-collections-management"}}
PARAMS = ["A", "B", "sigma", "gamma", "lambda"]
OPT = {p: [["default"]] for p in PARAMS}


def rattled(n=2, seed=0, repeat=1):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        a = bulk("Si", "diamond", a=5.43, cubic=True).repeat(repeat)
        a.positions += rng.normal(scale=0.1, size=a.positions.shape)
        out.append(a)
    return out


def cluster():
    a = bulk("Si", "diamond", a=5.43, cubic=True)[:7]
    a.rattle(0.1, seed=5)
    a.pbc = False
    a.cell = np.zeros((3, 3))
    return a


def ase_fim(atoms, quantity="forces", params=PARAMS, fixed=None):
    """Independent FIM: ASE's KIM calculator, central differences with 10% steps."""
    from ase.calculators.kim import KIM

    calc = KIM(SW)
    if fixed:
        calc.set_parameters(**{k: [[0], [v]] for k, v in fixed.items()})
    x0 = np.array([calc.get_parameters(**{p: [0]})[p][1][0] for p in params])
    a = atoms.copy()
    a.calc = calc

    def f(x):
        calc.set_parameters(**{p: [[0], [float(v)]] for p, v in zip(params, x)})
        if quantity == "forces":
            return a.get_forces().ravel()
        if quantity == "energy":
            return np.array([a.get_potential_energy()])
        return a.get_stress(voigt=True)

    h = np.maximum(0.1 * np.abs(x0), 1e-4)
    cols = []
    for i in range(len(x0)):
        e = np.zeros_like(x0)
        e[i] = h[i]
        cols.append((f(x0 + e) - f(x0 - e)) / (2 * h[i]))
    jac = np.stack(cols, axis=1)
    return jac.T @ jac


@pytest.fixture(scope="module")
def configs():
    return rattled(2, seed=1)


def test_forces_fim_equals_ase_reference(configs):
    """Forces FIM of rattled periodic Si equals the ASE-built central-difference FIM (rtol 1e-6)."""
    score = FIMTrainingSetScore()
    fims = score.compute_batch(configs, "SENSITIVITY", potential=POT, parameters_optimize=OPT)
    for atoms, fim in zip(configs, fims):
        assert fim.shape == (5, 5)
        np.testing.assert_allclose(fim, ase_fim(atoms), rtol=1e-6)
        np.testing.assert_array_equal(fim, fim.T)
        w = np.linalg.eigvalsh(fim)
        assert w[0] >= -1e-10 * w[-1]
    assert score.fim_index_to_parameter[2] == {"parameter": "sigma", "extent": 0}


def test_energy_and_stress_and_cluster(configs):
    """Energy and stress FIMs per configuration, and a non-periodic cluster, match ASE."""
    score = FIMTrainingSetScore()
    c = cluster()
    batch = [configs[0], configs[0], c]
    fims = score.compute_batch(batch, "SENSITIVITY", potential=POT, parameters_optimize=OPT,
                               evaluate_kwargs={"compute_energy": [True, False, False],
                                                "compute_forces": [False, False, True],
                                                "compute_stress": [False, True, False]})
    np.testing.assert_allclose(fims[0], ase_fim(configs[0], "energy"), rtol=1e-6)
    np.testing.assert_allclose(fims[1], ase_fim(configs[0], "stress"), rtol=1e-6)
    np.testing.assert_allclose(fims[2], ase_fim(c, "forces"), rtol=1e-6)
    with pytest.raises(InputError, match="configuration 0 asks for stress but is not periodic"):
        score.compute_batch([c], "SENSITIVITY", potential=POT, parameters_optimize=OPT,
                            evaluate_kwargs={"compute_stress": [True]})


def test_one_step_central_equals_numdifftools(configs):
    """Our 2P-evaluation central difference equals numdifftools.Jacobian with the same steps."""
    score = FIMTrainingSetScore()
    fast = score.compute(configs[0], "SENSITIVITY", potential=POT, parameters_optimize=OPT)
    # same default steps; num_steps=1 is not the plain form, so this call goes through numdifftools
    slow = score.compute(configs[0], "SENSITIVITY", potential=POT, parameters_optimize=OPT,
                         derivative_kwargs={"num_steps": 1})
    np.testing.assert_allclose(fast, slow, rtol=1e-12)
    assert score.metadata_of(slow)["derivative_kwargs"]["num_steps"] == 1


def test_transform_and_fixed_zero(configs):
    """J is taken w.r.t. the transformed parameters: phi = 2 theta gives FIM / 4; fixed lambda=0
    equals ASE's FIM with lambda set to 0."""
    score = FIMTrainingSetScore()
    ab = {"A": [["default"]], "B": [["default"]], "lambda": [[0.0, "fix"]]}
    plain = score.compute(configs[0], "SENSITIVITY", potential=POT, parameters_optimize=ab)
    np.testing.assert_allclose(plain, ase_fim(configs[0], params=["A", "B"], fixed={"lambda": 0.0}), rtol=1e-6)
    doubled = score.compute(configs[0], "SENSITIVITY", potential=POT, parameters_optimize=ab,
                            transform={"transform_type": "AffineTransform", "transform_args": {"a": 2.0}})
    np.testing.assert_allclose(doubled, plain / 4, rtol=1e-9)
    # a free parameter at zero still gets a non-zero step and a finite, non-zero column
    fim0 = score.compute(configs[0], "SENSITIVITY", potential=POT, parameters_optimize={"B": [[0.0]]})
    assert np.isfinite(fim0).all() and fim0[0, 0] > 0


def test_masks_list_npy_txt(configs, tmp_path):
    """A mask drops Jacobian rows: equal to the FIM of the kept rows; list, .npy and .txt agree."""
    atoms = configs[0]
    n = len(atoms)
    mask = np.zeros(3 * n, dtype=int)
    mask[: 3 * (n // 2)] = 1
    np.save(tmp_path / "m.npy", mask)
    np.savetxt(tmp_path / "m.txt", mask)
    score = FIMTrainingSetScore()
    got = [score.compute_batch([atoms], "SENSITIVITY", potential=POT, parameters_optimize=OPT, list_of_mask=[m])[0]
           for m in (mask.tolist(), mask, str(tmp_path / "m.npy"), str(tmp_path / "m.txt"))]
    for g in got[1:]:
        np.testing.assert_array_equal(g, got[0])
    half = atoms[: n // 2]  # not the same: the other atoms still act on the kept ones
    assert not np.allclose(got[0], ase_fim(half))
    full = score.compute(atoms, "SENSITIVITY", potential=POT, parameters_optimize=OPT)
    assert np.all(np.linalg.eigvalsh(full - got[0]) >= -1e-9 * np.abs(full).max())  # fewer rows, less information
    with pytest.raises(InputError, match=r"configuration 0\): expected 3N = 24 values \(forces of 8 atoms\), got shape \(23,\)"):
        score.compute_batch([atoms], "SENSITIVITY", potential=POT, parameters_optimize=OPT,
                            list_of_mask=[np.ones(3 * n - 1)])
    with pytest.raises(InputError, match="binary mask"):
        score.compute_batch([atoms], "SENSITIVITY", potential=POT, parameters_optimize=OPT,
                            list_of_mask=[np.full(3 * n, 0.5)])
    with pytest.raises(InputError, match=r"expected 3 masks \(one per configuration\), got 2"):
        score.compute_batch(configs + [atoms], "SENSITIVITY", potential=POT, parameters_optimize=OPT,
                            list_of_mask=[None, None])


@pytest.mark.parametrize("kwargs, message", [
    ({"evaluate_kwargs": {"compute_energy": [True, False], "compute_forces": [True, True]}},
     r"configuration 0 asks for \['energy', 'forces'\]"),
    ({"evaluate_kwargs": {"compute_forces": [True, False]}}, r"configuration 1 asks for nothing"),
    ({"evaluate_kwargs": {"compute_force": [True, True]}}, r"unknown keys \['compute_force'\]"),
    ({"evaluate_kwargs": {"compute_forces": [True]*3}}, r"expected 2 values \(one per configuration\)"),
    ({"potential": {"potential_type": "LAMMPS", "potential_args": {}}}, r"only 'KIM' is supported"),
    ({"parameters_optimize": {"Aa": [[1.0]]}}, r"unknown parameter 'Aa'.*its parameters are: A, B"),
    ({"derivative_kwargs": {"method": "complex"}}, r"cannot be evaluated at complex"),
    ({"derivative_kwargs": {"step": [0.1]}}, r"expected a non-zero finite number or 5 of them"),
    ({"nprocs": 0}, r"nprocs: expected an integer >= 1"),
])
def test_bad_inputs(configs, kwargs, message):
    """Bad input is one InputError naming the configuration or argument."""
    args = dict(potential=POT, parameters_optimize=OPT)
    args.update(kwargs)
    with pytest.raises(InputError, match=message):
        FIMTrainingSetScore().compute_batch(configs, "SENSITIVITY", **args)


def test_inputs_untouched_and_potential_object_restored(configs):
    """Atoms, dicts and a KIMPotential object given by the caller come back unchanged."""
    pot = KIMPotential(SW)
    pot.set_parameter("A", 16.0)
    before = pot.get_parameters()
    opt = {"A": [["default"]], "lambda": [[0.0, "fix"]]}
    opt_copy = copy.deepcopy(opt)
    pos = configs[0].positions.copy()
    fim = FIMTrainingSetScore().compute(configs[0], "SENSITIVITY", potential=pot, parameters_optimize=opt)
    assert opt == opt_copy
    np.testing.assert_array_equal(configs[0].positions, pos)
    for name, values in pot.get_parameters().items():
        np.testing.assert_array_equal(values, before[name])
    # 'default' meant this object's live A = 16.0
    ref = ase_fim(configs[0], params=["A"], fixed={"A": 16.0, "lambda": 0.0})
    np.testing.assert_allclose(fim, ref, rtol=1e-6)


def test_nprocs_matches_serial(configs):
    """A process pool (one model per worker) gives the serial numbers."""
    score = FIMTrainingSetScore()
    batch = configs + [cluster()]
    serial = score.compute_batch(batch, "SENSITIVITY", potential=POT, parameters_optimize=OPT)
    pooled = score.compute_batch(batch, "SENSITIVITY", potential=POT, parameters_optimize=OPT, nprocs=2)
    for a, b in zip(serial, pooled):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_spec_example_runs_as_written(tmp_path, monkeypatch):
    """The spec's FIMTrainingSetScore example (import path atomscore, _006 -> the installed _005)."""
    from ase.io import read, write

    monkeypatch.chdir(tmp_path)
    write("candidate_configurations.xyz", rattled(3, seed=2), format="extxyz")
    from atomscore.fim import FIMTrainingSetScore as FromPackage  # the spec's import, renamed

    list_of_atoms = read('candidate_configurations.xyz', format='extxyz', index=':')
    nconfigs = len(list_of_atoms)
    myfim_training_set = FromPackage()
    fim_training_set = myfim_training_set.compute_batch(
        list_of_atoms=list_of_atoms,
        score_quantity='SENSITIVITY',
        potential={'potential_type': 'KIM',
                   'potential_args': {'kim_id': SW, 'kim_api': 'kim-api-collections-management'}},
        parameters_optimize={'A': [[15.2848479197914]], 'B': [['default']], 'lambda': [[0.0, 'fix']]},
        evaluate_kwargs={'compute_energy': [False] * nconfigs, 'compute_forces': [True] * nconfigs,
                         'compute_stress': [False] * nconfigs},
        derivative_kwargs={'method': 'central'})
    myfim_training_set.save_results(compute_results=fim_training_set, list_of_configs=list_of_atoms)

    saved = read("score_results.xyz", index=":")
    assert len(saved) == 3
    for atoms, fim in zip(saved, fim_training_set):
        np.testing.assert_allclose(np.asarray(atoms.info["fim_training_set_score"]), fim, rtol=1e-12)
        meta = atoms.info["_metadata"]["fim_training_set"]
        assert meta["kim_id"] == SW and meta["score_quantity"] == "SENSITIVITY"
        assert meta["fim_index_to_parameter"] == {"0": {"parameter": "A", "extent": 0},
                                                  "1": {"parameter": "B", "extent": 0}}
        assert meta["parameters_optimize"]["lambda"] == [[0.0, "fix"]]
        assert meta["derivative_kwargs"]["method"] == "central"
        assert meta["transform"]["transform_type"] == "IdentityTransform"
    np.testing.assert_allclose(fim_training_set[0],
                               ase_fim(list_of_atoms[0], params=["A", "B"], fixed={"lambda": 0.0}), rtol=1e-6)


def test_run_as_jobs_with_objects(configs, tmp_path):
    """run() with a KIMPotential and a transform object: JSON job files, same numbers back."""
    from information_matching.transform import AffineTransform

    score = FIMTrainingSetScore()
    args = {"score_quantity": "SENSITIVITY", "potential": KIMPotential(SW),
            "parameters_optimize": {"A": [["default"]], "B": [["default"]]},
            "transform": AffineTransform(a=1.0, b=0.0, ainv=1.0), "list_of_mask": [None]}
    prepared = score.prepare_compute_args(args)
    assert prepared["potential"]["potential_type"] == "KIM" and prepared["transform"]["transform_type"] == "AffineTransform"
    assert isinstance(args["potential"], KIMPotential)  # the caller's dict is not modified
    from atomscore.jobs.workflow import LocalWorkflow

    wf = LocalWorkflow(root_directory=str(tmp_path / "jobs"))
    ids = score.run("fim", configs, args, workflow=wf, batch_size=1)
    wf.block_until_completed(ids)
    got = score.data_from_calc_ids(ids, workflow=wf)
    direct = score.compute_batch(configs, **args)
    for atoms, fim in zip(got, direct):
        np.testing.assert_allclose(np.asarray(atoms.info["fim_training_set_score"]), fim, rtol=1e-12)


def test_a_potential_changed_in_place_reaches_the_jobs(configs, tmp_path):
    """A KIMPotential whose parameters were changed in place (sigma and gamma, not optimised)
    gives the same FIM through run() job folders as in memory: its spec carries them."""
    from atomscore.jobs.workflow import LocalWorkflow

    pot = KIMPotential(SW)
    pot.set_parameter("sigma", pot.get_parameter("sigma") * 1.02)
    pot.set_parameter("gamma", pot.get_parameter("gamma") * 0.95)
    args = {"potential": pot, "parameters_optimize": {"A": [["default"]], "B": [["default"]]}}
    score = FIMTrainingSetScore()
    expected = score.compute_batch(configs, "SENSITIVITY", **args)
    default = score.compute_batch(configs, "SENSITIVITY", potential=KIMPotential(SW),
                                  parameters_optimize=args["parameters_optimize"])
    assert not np.allclose(expected[0], default[0], rtol=1e-3), "the changed parameters must matter"
    workflow = LocalWorkflow(tmp_path / "jobs", nprocs=2)
    ids = score.run("live", configs, {"score_quantity": "SENSITIVITY", **args}, workflow=workflow)
    workflow.block_until_completed(ids)
    for atoms, ref in zip(score.data_from_calc_ids(ids), expected):
        np.testing.assert_allclose(atoms.info["fim_training_set_score"], ref, rtol=1e-12)
    spec = pot.to_spec()["potential_args"]
    assert set(spec["parameters"]) == {"sigma", "gamma"}
    again = KIMPotential.from_spec(pot.to_spec())
    np.testing.assert_array_equal(again.get_parameter("sigma"), pot.get_parameter("sigma"))
