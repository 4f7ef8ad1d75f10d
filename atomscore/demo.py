"""The demo behind ``atomscore demo``: information-matching active learning on SW silicon,
and the targets of EAM tungsten (a vacancy and a surface).

Step functions (:data:`STEPS`) pass a :class:`DemoState` on: QUESTS on a candidate pool, the
FIM of every candidate (jobs), the target FIM, information matching, LTAU, tungsten's target
FIM and matching; then the summary, the figures and ``report.html``. What each step does and shows: docs/README.md ("The demo").
"""

from __future__ import annotations

import html
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from atomscore.quests.defaults import DEFAULT_BANDWIDTH as BANDWIDTH

import numpy as np

SW_SI = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
PARAMETERS = ("A", "B", "sigma", "gamma", "lambda")
PARAMETERS_OPTIMIZE = {p: [["default"]] for p in PARAMETERS}
TRANSFORM = {"transform_type": "LogTransform", "transform_args": {"sign": [1.0] * len(PARAMETERS)}}
A0 = 5.431  # Å, SW silicon's equilibrium lattice constant
RELATIVE_ERROR = 0.1  # the target: 10 % on each target property
#: the "true" model of the closed loop: SW with each parameter scaled by this factor
TRUTH_FACTORS = {"A": 1.03, "B": 0.97, "sigma": 1.005, "gamma": 1.02, "lambda": 0.95}
EV_PER_A3_IN_GPA = 160.21766208  # 1 eV/Å³ in GPa
W_EAM = "EAM_Dynamo_ZhouJohnsonWadley_2004_W__MO_524392058194_005"
#: tungsten's crystal (the starting lattice constant, Å; the zero-stress one is relaxed)
W_BCC = {"lattice_param": 3.165, "lattice_type": "bcc", "elements": ["W"]}
W_MILLER = (1, 1, 0)
W_LAYERS = 8  # the (110) energy is the same to 1e-8 eV/Å² with 6 layers
#: finite-difference step in the log scale factors of W's tables (dimensionless): 0.1 % scales,
#: far above the tables' round-off and below where the relaxed vacancy changes path
W_STEP = 1e-3
#: eigenvalues of a FIM below this fraction of its largest are "unidentifiable" directions
TINY_EIGENVALUE = 1e-8
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoSettings:
    """Sizes of the main job (``quick`` for tests)."""

    lattice_constants: tuple
    rattle_amplitudes: tuple  # Å, cycled over the rattled candidates
    ensemble_size: int
    ensemble_spread: float  # relative spread of the perturbed SW parameters
    heldout: int  # held-out rattled configurations for LTAU
    seed: int = 7
    #: W vacancy supercell (conventional cells per side): 4 (127 atoms) is within 0.03 eV of
    #: converged (docs/properties.md); 3 (53 atoms, +0.03 eV) halves the time
    w_supercell: int = 4

    @classmethod
    def make(cls, quick=False):
        if quick:
            return cls(tuple(np.linspace(5.0, 6.0, 5)), (0.03, 0.08, 0.15), 6, 0.05, 3, w_supercell=3)
        return cls(tuple(np.round(np.linspace(5.0, 6.0, 21), 3)), (0.02, 0.05, 0.1, 0.15), 12, 0.05, 8)


def _potential_spec():
    return {"potential_type": "KIM", "potential_args": {"kim_id": SW_SI}}


def _diamond(a, rattle=0.0, seed=0):
    from ase.build import bulk

    atoms = bulk("Si", "diamond", a=a, cubic=True).repeat(2)  # 64 atoms
    if rattle:
        atoms.rattle(stdev=rattle, seed=seed)
    return atoms


def build_pool(settings: DemoSettings):
    """The candidate pool: per lattice constant one unperturbed (energy) and one rattled (forces)."""
    pool = []
    for i, a in enumerate(settings.lattice_constants):
        amplitude = settings.rattle_amplitudes[i % len(settings.rattle_amplitudes)]
        for kind, rattle in (("energy", 0.0), ("forces", amplitude)):
            atoms = _diamond(a, rattle, seed=settings.seed + i)
            atoms.info.update({"name": f"Si64_a{a:.3f}_{kind}", "lattice_constant": float(a),
                               "trained_on": kind, "rattle": float(rattle)})
            pool.append(atoms)
    return pool


def build_heldout(settings: DemoSettings):
    """Held-out rattled configurations for LTAU, at lattice constants between the pool's."""
    rng = np.random.default_rng(settings.seed + 1000)
    out = []
    for j in range(settings.heldout):
        a = float(rng.uniform(5.1, 5.9))
        rattle = float(settings.rattle_amplitudes[j % len(settings.rattle_amplitudes)])
        atoms = _diamond(a, rattle, seed=settings.seed + 2000 + j)
        atoms.info.update({"name": f"heldout_{j}_a{a:.3f}", "lattice_constant": a, "rattle": rattle})
        out.append(atoms)
    return out


def _step(message):
    log.info("demo: %s", message)


def _display(quantity, value):
    """A target quantity in the report's units: (value, unit) with elastic constants in GPa."""
    if quantity.startswith("c"):
        return value * EV_PER_A3_IN_GPA, "GPa"
    return value, {"lattice_constant": "Å", "cohesive_energy": "eV/atom"}.get(quantity, "")


def predicted_uncertainties(weights, fims, jacobian, nominal, relative_error=RELATIVE_ERROR):
    """Per target property: the standard deviation the weighted training FIM predicts, and the target's.

    ``sigma = sqrt(diag(J (sum_i w_i I_i)^+ J^T))`` with ``J`` the property Jacobian in the
    (transformed) parameters, in the units of the property vector; the target is
    ``relative_error * |nominal|``.
    """
    total = sum(float(w) * np.asarray(f, dtype=float) for w, f in zip(weights, fims))
    cov = jacobian @ np.linalg.pinv(total, hermitian=True) @ jacobian.T
    predicted = np.sqrt(np.clip(np.diag(cov), 0, None))
    return predicted, relative_error * np.abs(np.asarray(nominal, dtype=float))


def fim_directions(fim, names):
    """Every eigenvector of ``fim``, smallest eigenvalue first: (eigenvalue / largest, text) each,
    the text naming the log parameters it moves (components of at least 0.1)."""
    values, vectors = np.linalg.eigh(np.asarray(fim, dtype=float))
    top = max(values.max(), np.finfo(float).tiny)
    out = []
    for value, vector in zip(values, vectors.T):
        order = np.argsort(-np.abs(vector))
        terms = [f"{vector[i]:+.2f} log {names[i]}" for i in order if abs(vector[i]) >= 0.1]
        out.append((float(value / top), " ".join(terms)))
    return out


def weak_directions(fim, names, tiny=TINY_EIGENVALUE):
    """Eigenvectors of ``fim`` whose eigenvalue is below ``tiny`` times the largest: (ratio, text) each."""
    return [(r, d) for r, d in fim_directions(fim, names) if r < tiny]


def versions() -> dict:
    """Versions of Python and of the packages the demo used."""
    import platform
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("atomscore", "numpy", "scipy", "ase", "quests", "faiss-cpu", "kimpy", "information-matching",
                 "cvxpy", "sdpa-python", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def ensemble_force_errors(configs, settings: DemoSettings, desc):
    """|F_member - F_SW| per atom for every ensemble member: (members, atoms) array (eV/Å)."""
    from tqdm import tqdm

    from atomscore.potentials.kim import KIMPotential

    pot = KIMPotential(SW_SI)
    reference = np.concatenate([pot.compute(a, energy=False, forces=True)["forces"] for a in configs])
    defaults = {p: pot.get_parameter(p).copy() for p in PARAMETERS}
    rng = np.random.default_rng(settings.seed + 3000)
    errors = np.empty((settings.ensemble_size, len(reference)))
    for m in tqdm(range(settings.ensemble_size), desc=desc, unit="member", disable=None):
        for p in PARAMETERS:
            pot.set_parameter(p, defaults[p] * np.exp(settings.ensemble_spread * rng.standard_normal(defaults[p].shape)))
        forces = np.concatenate([pot.compute(a, energy=False, forces=True)["forces"] for a in configs])
        errors[m] = np.linalg.norm(forces - reference, axis=1)
    return errors


@dataclass
class DemoState:
    """What the steps of the demo pass on: the settings, the pool with its scores, the target."""

    output: Path
    settings: DemoSettings
    workflow: object
    timings: dict = field(default_factory=dict)
    pool: list = field(default_factory=list)
    results: dict = field(default_factory=dict)


def _timed(name):
    """Record the wall time of a step in ``state.timings[name]``."""
    def wrap(step):
        def run(state, *args, **kwargs):
            t = time.perf_counter()
            out = step(state, *args, **kwargs)
            state.timings[name] = time.perf_counter() - t
            return out

        run.__name__, run.__doc__ = step.__name__, step.__doc__
        return run

    return wrap


@_timed("quests")
def quests_step(state: DemoState):
    """Pool, QUESTS descriptors, efficiency and diversity, dH of every candidate against a starting set (jobs)."""
    from atomscore import QUESTSDeltaEntropyScore, QUESTSDescriptor, QUESTSDiversityScore, QUESTSEfficiencyScore

    settings = state.settings
    pool = build_pool(settings)
    _step(f"{len(pool)} candidates (64-atom diamond Si, a = {min(settings.lattice_constants)}-"
          f"{max(settings.lattice_constants)} Å); QUESTS descriptors")
    pool = QUESTSDescriptor().attach(pool)
    efficiency = float(np.squeeze(QUESTSEfficiencyScore().compute(pool, "EFFICIENCY", bandwidth=BANDWIDTH)))
    diversity = float(np.squeeze(QUESTSDiversityScore().compute(pool, "DIVERSITY", bandwidth=BANDWIDTH)))
    start = sorted(range(len(pool)), key=lambda i: abs(pool[i].info["lattice_constant"] - A0))[:2]
    reference_set = np.concatenate([pool[i].arrays["descriptors"] for i in start])
    dh_score = QUESTSDeltaEntropyScore()
    ids = dh_score.run("demo_dH", pool, {"score_quantity": "DELTA_ENTROPY", "reference_set": reference_set,
                                         "bandwidth": BANDWIDTH}, workflow=state.workflow,
                       batch_size=-(-len(pool) // 2))
    state.workflow.block_until_completed(ids, progress=True)
    state.pool = dh_score.data_from_calc_ids(ids)
    state.results["quests"] = {"efficiency": efficiency, "diversity": diversity, "start": start,
                               "dh_mean": [float(np.mean(a.arrays["quests_delta_entropy_score"]))
                                           for a in state.pool]}


@_timed("fim_training_set")
def fim_step(state: DemoState):
    """The FIM of every candidate in the SW parameters (log transform), as jobs."""
    from atomscore import FIMTrainingSetScore

    pool = state.pool
    _step(f"FIM of every candidate in {', '.join(PARAMETERS)} (log transform), as jobs")
    evaluate_kwargs = {"compute_energy": [a.info["trained_on"] == "energy" for a in pool],
                       "compute_forces": [a.info["trained_on"] == "forces" for a in pool],
                       "compute_stress": [False] * len(pool)}
    fim_score = FIMTrainingSetScore()
    ids = fim_score.run("demo_fim", pool, {"score_quantity": "SENSITIVITY", "potential": _potential_spec(),
                                          "parameters_optimize": PARAMETERS_OPTIMIZE, "transform": TRANSFORM,
                                          "evaluate_kwargs": evaluate_kwargs},
                        workflow=state.workflow, batch_size=-(-len(pool) // 2))
    state.workflow.block_until_completed(ids, progress=True)
    state.pool = fim_score.data_from_calc_ids(ids)


@_timed("fim_property")
def target_step(state: DemoState):
    """The target FIM of a0 and the cubic elastic constants with their error bars."""
    from atomscore import FIMPropertyScore
    from atomscore.potentials.kim import KIMPotential
    from atomscore.properties import ElasticConstants

    _step(f"target FIM of a0, C11, C12, C44 with {RELATIVE_ERROR:.0%} error bars (embedded backend)")
    quantities = ["lattice_constant", "c11", "c12", "c44"]
    target_args = {"lattice_param": A0, "lattice_type": "diamond", "deformation_mag": 1e-4,
                   "elements": ["Si"], "fim_quantities": quantities}
    nominal = ElasticConstants(**target_args).property_vector(KIMPotential(SW_SI))
    cov = np.diag((RELATIVE_ERROR * nominal) ** 2)
    target = [{"init_args": {"target_property_type": "ElasticConstants", "target_property_args": target_args},
               "calculate_property_args": {"workflow": {"workflow_type": "LOCAL", "workflow_args": {
                   "root_directory": str(state.output / "jobs")}}}}]
    prop_score = FIMPropertyScore()
    target_fim = np.asarray(prop_score.compute(target, "SENSITIVITY", cov=cov, potential=_potential_spec(),
                                               parameters_optimize=PARAMETERS_OPTIMIZE, transform=TRANSFORM,
                                               derivative_kwargs={"h": 0.01, "method": "CD"}))
    target_fim = target_fim.reshape(len(PARAMETERS), len(PARAMETERS))
    prop_score.save_results(target_fim, save_dir=state.output, overwrite=True)  # the demo's own folder
    state.results["target"] = {"quantities": quantities, "nominal": nominal, "fim": target_fim, "cov": cov,
                               "property": target[0], "target_args": target_args,
                               "jacobian": np.asarray(prop_score.jacobian, dtype=float)}


@_timed("matching")
def matching_step(state: DemoState):
    """Information matching: the weights of the candidates, and the predicted uncertainty of the target."""
    from atomscore import FIMMatchingScore

    _step("information matching")
    target = state.results["target"]
    matching = FIMMatchingScore()
    weights = matching.compute_batch(state.pool, fim_property=target["fim"], score_quantity="IMPORTANCE")
    state.pool = matching.parse_for_storage(weights, state.pool)
    fims = [np.asarray(a.info["fim_training_set_score"], dtype=float) for a in state.pool]
    predicted_sigma, target_sigma = predicted_uncertainties(weights, fims, target["jacobian"], target["nominal"])
    state.results["matching"] = {"weights": weights, "fims": fims, "predicted_sigma": predicted_sigma,
                                 "target_sigma": target_sigma,
                                 "selected": [i for i, w in enumerate(weights) if w > 0]}


@_timed("refit")
def refit_step(state: DemoState):
    """The loop closed: label the chosen candidates with a "true" model (SW with shifted parameters,
    each label with the noise its weight allows), refit from the installed parameters, and check
    the target property predicted with the refitted ones against the truth and the target."""
    from atomscore.fim import property_prediction, refit
    from atomscore.potentials.kim import KIMPotential
    from atomscore.properties import ElasticConstants

    _step("refit to the chosen configurations, labelled by a shifted SW model; the target checked")
    match, target = state.results["matching"], state.results["target"]
    truth = KIMPotential(SW_SI)
    for name, factor in TRUTH_FACTORS.items():
        truth.set_parameter(name, truth.get_parameter(name) * factor)
    rng = np.random.default_rng(state.settings.seed + 5000)
    labelled, flags = [], {"compute_energy": [], "compute_forces": []}
    weights = [float(match["weights"][i]) for i in match["selected"]]
    for i, w in zip(match["selected"], weights):
        atoms = state.pool[i].copy()
        sigma = 1.0 / np.sqrt(w)  # a weight is an inverse variance (eV^-2, (eV/Å)^-2)
        on_energy = atoms.info["trained_on"] == "energy"
        if on_energy:
            atoms.info["energy"] = float(truth.compute(atoms)["energy"]) + rng.normal(0.0, sigma)
        else:
            forces = truth.compute(atoms, energy=False, forces=True)["forces"]
            atoms.arrays["forces"] = forces + rng.normal(0.0, sigma, forces.shape)
        flags["compute_energy"].append(on_energy)
        flags["compute_forces"].append(not on_energy)
        labelled.append(atoms)
    fitted, fit = refit(_potential_spec(), labelled, weights, PARAMETERS_OPTIMIZE, transform=TRANSFORM,
                        evaluate_kwargs=flags, full_output=True)
    check = property_prediction(KIMPotential(SW_SI, parameters=fitted), target["property"], fit["fim"],
                                PARAMETERS_OPTIMIZE, cov=target["cov"], transform=TRANSFORM,
                                derivative_kwargs={"h": 0.01, "method": "CD"})
    truth_values = ElasticConstants(**target["target_args"]).property_vector(truth)
    state.results["refit"] = {"fitted": fitted, "check": check, "truth": truth_values, "nfev": fit["nfev"]}


@_timed("ltau")
def ltau_step(state: DemoState):
    """LTAU from the force errors of an ensemble of perturbed SW parameter sets, checked on held-out configurations."""
    from scipy.stats import spearmanr

    from atomscore import LTAUForcesUQScore, QUESTSDescriptor

    settings = state.settings
    _step(f"LTAU from an ensemble of {settings.ensemble_size} perturbed SW parameter sets")
    train = [a for a in state.pool if a.info["trained_on"] == "forces"]
    train_errors = ensemble_force_errors(train, settings, "ensemble on training set")
    heldout = QUESTSDescriptor().attach(build_heldout(settings))
    heldout_errors = ensemble_force_errors(heldout, settings, "ensemble on held-out set")
    ltau = LTAUForcesUQScore(train_descriptors=np.concatenate([a.arrays["descriptors"] for a in train]),
                             error_pdfs=train_errors, from_error_logs=True, nbins=50)
    predicted = ltau.compute_batch(heldout, "UNCERTAINTY", num_nearest_neighbors=5)
    heldout = ltau.parse_for_storage(predicted, heldout)
    actual = heldout_errors.mean(axis=0)
    offset = 0
    for atoms in heldout:
        atoms.arrays["ensemble_force_error"] = actual[offset:offset + len(atoms)]
        offset += len(atoms)
    predicted_all = np.concatenate(predicted)
    state.results["ltau"] = {"heldout": heldout, "predicted": predicted_all, "actual": actual,
                             "rho": float(spearmanr(predicted_all, actual).statistic)}


def build_w_candidates(settings: DemoSettings):
    """A few W configurations, each trained on its forces: rattled bulk at three lattice
    constants, a rattled vacancy cell and a rattled (110) slab."""
    from ase.build import bcc110, bulk

    out = []
    for a in (3.10, 3.165, 3.23):
        atoms = bulk("W", "bcc", a=a, cubic=True).repeat(2)  # 16 atoms
        atoms.info["name"] = f"W16_a{a:.3f}"
        out.append(atoms)
    vacancy = bulk("W", "bcc", a=W_BCC["lattice_param"], cubic=True).repeat(3)
    del vacancy[0]
    vacancy.info["name"] = "W53_vacancy"
    slab = bcc110("W", size=(2, 2, 6), a=W_BCC["lattice_param"], vacuum=6.0, periodic=True)
    slab.info["name"] = "W24_slab110"
    out += [vacancy, slab]
    for k, atoms in enumerate(out):
        atoms.rattle(stdev=0.05, seed=settings.seed + 3000 + k)
        atoms.info["trained_on"] = "forces"
    return out


@_timed("tungsten")
def tungsten_step(state: DemoState):
    """EAM W: the target FIM of the relaxed vacancy formation energy and the (110) surface energy
    (10 % each) in the log scale factors of the model's three tables, the FIMs of a few W
    configurations and the weights that match the target."""
    from atomscore import FIMMatchingScore, FIMPropertyScore, FIMTrainingSetScore
    from atomscore.fim.transforms import eam_table_scales
    from atomscore.potentials.kim import KIMPotential
    from atomscore.properties import SurfaceEnergy, VacancyFormationEnergy

    n = state.settings.w_supercell
    _step(f"tungsten: target FIM of the relaxed vacancy formation energy ({n}x{n}x{n} cells) and the "
          f"({''.join(map(str, W_MILLER))}) surface energy with {RELATIVE_ERROR:.0%} error bars")
    pot = KIMPotential(W_EAM)
    transform, parameters, _ = eam_table_scales(pot)
    props = [VacancyFormationEnergy(supercell=n, fim_quantities=["relaxed_formation_energy"], **W_BCC),
             SurfaceEnergy(miller=list(W_MILLER), layers=W_LAYERS, **W_BCC)]
    nominal = np.concatenate([p.property_vector(pot) for p in props])
    spec = {"potential_type": "KIM", "potential_args": {"kim_id": W_EAM}}
    fim, jacobian = FIMPropertyScore().compute(
        [{"init_args": p.to_spec()} for p in props], "SENSITIVITY", [np.diag([(RELATIVE_ERROR * v) ** 2]) for v in nominal],
        spec, parameters, transform=transform, derivative_kwargs={"h": W_STEP, "method": "CD"}, return_jacobian=True)
    jacobian = np.concatenate([np.atleast_2d(j) for j in jacobian])
    fim = np.asarray(fim, dtype=float)
    _step("tungsten: FIMs of a few W configurations (forces) and information matching")
    pool = build_w_candidates(state.settings)
    fim_score = FIMTrainingSetScore()
    fims = fim_score.compute_batch(pool, "SENSITIVITY", spec, parameters, transform=transform,
                                   evaluate_kwargs={"compute_energy": [False] * len(pool),
                                                    "compute_forces": [True] * len(pool)})
    pool = fim_score.parse_for_storage(fims, pool)
    fims = [np.asarray(f, dtype=float) for f in fims]
    weights = np.asarray(FIMMatchingScore().compute_batch(pool, fim_property=fim, score_quantity="IMPORTANCE"),
                         dtype=float)
    predicted, target_sigma = predicted_uncertainties(weights, fims, jacobian, nominal)
    state.results["tungsten"] = {"props": props, "nominal": nominal, "fim": fim, "jacobian": jacobian,
                                 "names": [f"{t} scale" for t in parameters], "pool": pool, "fims": fims,
                                 "weights": weights, "predicted_sigma": predicted, "target_sigma": target_sigma}


def summarize(state: DemoState) -> dict:
    """The demo's summary (summary.json): every number the report shows."""
    pool, q, target = state.pool, state.results["quests"], state.results["target"]
    match, lt = state.results["matching"], state.results["ltau"]
    weighted_fim = sum(float(w) * f for w, f in zip(match["weights"], match["fims"]))
    checks = []
    for name, value, pred, want in zip(target["quantities"], target["nominal"], match["predicted_sigma"],
                                       match["target_sigma"]):
        shown, unit = _display(name, float(value))
        scale = shown / value if value else 1.0
        checks.append({"quantity": name, "value": shown, "unit": unit, "target_sigma": float(want * abs(scale)),
                       "predicted_sigma": float(pred * abs(scale)), "meets": bool(pred <= want * (1 + 1e-3))})
    summary = {
        "model": SW_SI,
        "parameters": list(PARAMETERS),
        "candidates": len(pool),
        "lattice_range": [float(min(state.settings.lattice_constants)), float(max(state.settings.lattice_constants))],
        "quests": {"bandwidth": BANDWIDTH, "efficiency": q["efficiency"], "diversity": q["diversity"],
                   "starting_set": [pool[i].info["name"] for i in q["start"]],
                   "mean_delta_entropy": {a.info["name"]: d for a, d in zip(pool, q["dh_mean"])}},
        "target": {"quantities": target["quantities"], "values": target["nominal"].tolist(),
                   "relative_error": RELATIVE_ERROR, "fim_eigenvalues": np.linalg.eigvalsh(target["fim"]).tolist(),
                   "check": checks,
                   "unidentifiable": [{"relative_eigenvalue": r, "direction": d}
                                      for r, d in weak_directions(target["fim"], PARAMETERS)],
                   "unidentifiable_after_training": [{"relative_eigenvalue": r, "direction": d}
                                                     for r, d in weak_directions(weighted_fim, PARAMETERS)]},
        "matching": {"selected": [{"name": pool[i].info["name"], "lattice_constant": pool[i].info["lattice_constant"],
                                   "trained_on": pool[i].info["trained_on"], "weight": float(match["weights"][i])}
                                  for i in match["selected"]],
                     "meets_target": all(c["meets"] for c in checks)},
        "refit": _refit_summary(state),
        "tungsten": _tungsten_summary(state),
        "ltau": {"ensemble_size": state.settings.ensemble_size, "heldout_configurations": len(lt["heldout"]),
                 "heldout_atoms": int(lt["actual"].size), "spearman_rank_correlation": lt["rho"],
                 "mean_predicted_error": float(lt["predicted"].mean()), "mean_actual_error": float(lt["actual"].mean())},
        "timings_seconds": {k: round(v, 2) for k, v in state.timings.items()},
        "versions": versions(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    summary["result"] = result_sentence(summary)
    return summary


def _refit_summary(state: DemoState) -> dict:
    """The closed loop per target property: truth, refitted value, predicted and target uncertainty."""
    ref, target = state.results["refit"], state.results["target"]
    check, rows = ref["check"], []
    for k, name in enumerate(target["quantities"]):
        truth, unit = _display(name, float(ref["truth"][k]))
        scale = truth / float(ref["truth"][k]) if ref["truth"][k] else 1.0
        value, sigma, want = (float(x) * abs(scale) for x in (check["value"][k], check["uncertainty"][k],
                                                              check["target_uncertainty"][k]))
        rows.append({"quantity": name, "unit": unit, "truth": truth, "refitted": value, "predicted_sigma": sigma,
                     "target_sigma": want, "error": value - truth, "within_target": bool(abs(value - truth) <= want)})
    return {"truth_factors": dict(TRUTH_FACTORS), "fitted": ref["fitted"], "function_evaluations": ref["nfev"],
            "properties": rows, "all_within_target": all(r["within_target"] for r in rows)}


def _tungsten_summary(state: DemoState) -> dict:
    """W's target properties, their target FIM and its directions, the candidates' weights."""
    w = state.results["tungsten"]
    vacancy, surface = w["props"]
    fim = w["fim"]
    quantities = [q for p in w["props"] for q in p.fim_quantities]
    directions = [{"relative_eigenvalue": r, "direction": d, "identifiable": bool(r >= TINY_EIGENVALUE)}
                  for r, d in fim_directions(fim, w["names"])]
    return {"model": W_EAM, "parameters": w["names"],
            "transform": "log of one scale factor per table (atomscore.fim.transforms.eam_table_scales)",
            "settings": {"supercell": list(vacancy.supercell),  # bcc: 2 atoms per conventional cell
                         "vacancy_cell_sites": 2 * int(np.prod(vacancy.supercell)),
                         "miller": list(W_MILLER), "layers": surface.layers, "h": W_STEP},
            "quantities": quantities, "units": [p.units for p in w["props"]], "values": w["nominal"].tolist(),
            "relative_error": RELATIVE_ERROR, "target_sigma": w["target_sigma"].tolist(),
            "jacobian": w["jacobian"].tolist(), "fim": fim.tolist(),
            "fim_eigenvalues": np.linalg.eigvalsh(fim).tolist(), "directions": directions,
            "candidates": [{"name": a.info["name"], "atoms": len(a), "trained_on": a.info["trained_on"],
                            "weight": float(wt), "fim": f.tolist()}
                           for a, wt, f in zip(w["pool"], w["weights"], w["fims"])],
            "predicted_sigma": w["predicted_sigma"].tolist(),
            "meets_target": bool(np.all(w["predicted_sigma"] <= w["target_sigma"] * (1 + 1e-3)))}


def write_outputs(state: DemoState, summary: dict):
    """extxyz files with every score, summary.json, the figures and report.html."""
    from atomscore.io import write_extxyz

    lt = state.results["ltau"]
    write_extxyz(state.output / "candidates.xyz", state.pool)
    write_extxyz(state.output / "heldout.xyz", lt["heldout"])
    figures = write_figures(state.output / "figures", state.pool, state.results["matching"]["weights"],
                            state.results["quests"]["dh_mean"], lt["predicted"], lt["actual"], lt["rho"])
    (state.output / "summary.json").write_text(json.dumps(summary, indent=2))
    write_report(state.output / "report.html", summary, figures)


#: the steps of the demo, in order; each takes the state and adds to it
STEPS = (quests_step, fim_step, target_step, matching_step, refit_step, ltau_step, tungsten_step)


def run_demo(output="demo_output", quick=False):
    """Run the demo into ``output``; return the summary dict.

    Parameters
    ----------
    output : str or Path
        Output folder (created; files in it are replaced).
    quick : bool
        A smaller pool and ensemble, for tests (under a minute on 2 cores).
    """
    from atomscore import LocalWorkflow

    t_start = time.perf_counter()
    output = Path(output)
    (output / "figures").mkdir(parents=True, exist_ok=True)
    state = DemoState(output=output, settings=DemoSettings.make(quick), workflow=LocalWorkflow(output / "jobs"))
    for step in STEPS:
        step(state)
    summary = summarize(state)
    summary["timings_seconds"]["total"] = round(time.perf_counter() - t_start, 2)
    write_outputs(state, summary)
    _step(f"{len(state.results['matching']['selected'])} of {len(state.pool)} candidates selected; LTAU rank "
          f"correlation {state.results['ltau']['rho']:.2f}; {summary['timings_seconds']['total']:.0f} s")
    return summary


def headline(summary) -> str:
    """The report's headline: which configurations, with which weights, meet the target together."""
    chosen = ", ".join(f"{c['name']} (w = {c['weight']:.3g}, {c['trained_on']})" for c in summary["matching"]["selected"])
    n = len(summary["matching"]["selected"])
    verb = "together meet" if summary["matching"]["meets_target"] else "together do not meet"
    return f"These {n} configurations, with these weights, {verb} the target: {chosen}."


def result_sentence(summary) -> str:
    """The demo's result in one sentence, e.g. '3 of 42 candidates meet the 10 % target ...'."""
    n_sel, n = len(summary["matching"]["selected"]), summary["candidates"]
    pct = f"{summary['target']['relative_error'] * 100:g} %"
    names = ", ".join(q.replace("lattice_constant", "a0").upper().replace("A0", "a0")
                      for q in summary["target"]["quantities"])
    if summary["matching"]["meets_target"]:
        return (f"{n_sel} of {n} candidates meet the {pct} target: trained on these {n_sel} with the weights "
                f"below, the potential is predicted to give {names} each to within {pct}.")
    return (f"{n_sel} of {n} candidates were selected, but the predicted uncertainties do not all meet the "
            f"{pct} target on {names} (see the check below).")


def write_figures(folder: Path, pool, weights, dh_mean, predicted, actual, rho):
    """The report's PNG figures; returns {name: (file, caption)}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = {}

    def save(fig, name, caption):
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=110)
        plt.close(fig)
        figures[name] = (f"figures/{name}.png", caption)

    a = np.array([c.info["lattice_constant"] for c in pool])
    kinds = np.array([c.info["trained_on"] for c in pool])
    w = np.asarray(weights, dtype=float)

    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4), sharex=True)
    for kind, marker, color, shift in (("energy", "o", "tab:blue", -0.008), ("forces", "s", "tab:orange", 0.008)):
        m = kinds == kind
        ax.vlines(a[m] + shift, 0, w[m], color=color, alpha=0.6)
        ax.plot(a[m] + shift, w[m], marker, color=color, label=f"trained on {kind}")
        ax2.plot(a[m] + shift, np.asarray(dh_mean)[m], marker, color=color, label=f"trained on {kind}")
    for axis in (ax, ax2):
        axis.axvline(A0, color="grey", ls=":", label="equilibrium a0")
        axis.set_xlabel("lattice constant (Å)")
    ax.set_ylabel("optimal weight")
    ax.set_title("Information-matching weight per candidate")
    ax.legend()
    ax2.set_ylabel("mean dH per atom (nats)")
    ax2.set_title("QUESTS mean dH per candidate")
    save(fig, "weights", "Left: the weight of each candidate (zero: not selected). Right: its mean QUESTS dH "
                         "against the starting set (large: environments the starting set lacks).")

    fig, ax = plt.subplots(figsize=(6.4, 4))
    dh_all = np.concatenate([c.arrays["quests_delta_entropy_score"] for c in pool])
    finite = dh_all[np.isfinite(dh_all)]
    ax.hist(finite, bins=40, color="tab:green", alpha=0.8)
    ax.set_xlabel("dH per atom against the starting set (nats)")
    ax.set_ylabel("atoms")
    ax.set_title("QUESTS differential entropy of the pool")
    save(fig, "delta_entropy", "Distribution of dH: large values are environments the starting set does not cover.")

    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(actual, predicted, s=6, alpha=0.5)
    lo = max(min(actual.min(), predicted.min()), 1e-6)
    hi = max(actual.max(), predicted.max())
    ax.plot([lo, hi], [lo, hi], color="grey", ls=":")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("actual ensemble force error (eV/Å)")
    ax.set_ylabel("LTAU predicted error (eV/Å)")
    ax.set_title(f"LTAU on held-out atoms (Spearman ρ = {rho:.2f})")
    save(fig, "ltau", "Predicted against actual per-atom force error on held-out configurations.")
    return figures


def _unit_html(unit):
    return html.escape(unit.replace("A^2", "Å²").replace("A^3", "Å³"))


def _tungsten_section(w) -> str:
    """The report's section "Tungsten: a vacancy and a surface" (HTML)."""
    esc = html.escape
    st = w["settings"]
    label = {"relaxed_formation_energy": f"relaxed vacancy formation energy ({st['vacancy_cell_sites']}-site cell)",
             "surface_energy": f"({''.join(map(str, st['miller']))}) surface energy ({st['layers']} layers)"}
    rows = "".join(f"<tr><td>{esc(label.get(q, q))}</td><td>{v:.5g} {_unit_html(u)}</td><td>± {t:.3g}</td>"
                   f"<td>± {p:.3g}</td><td>{'yes' if p <= t * (1 + 1e-3) else '<b>no</b>'}</td></tr>"
                   for q, u, v, t, p in zip(w["quantities"], w["units"], w["values"], w["target_sigma"],
                                            w["predicted_sigma"]))
    dirs = "".join(f"<tr><td>{e:.4g}</td><td>{d['relative_eigenvalue']:.2e}</td><td>{esc(d['direction'])}</td>"
                   f"<td>{'yes' if d['identifiable'] else '<b>no</b>'}</td></tr>"
                   for e, d in reversed(list(zip(w["fim_eigenvalues"], w["directions"]))))
    cands = "".join(f"<tr><td>{esc(c['name'])}</td><td>{c['atoms']}</td><td>{c['weight']:.4g}</td><td>"
                    + (f"{1 / np.sqrt(c['weight']):.3g} eV/Å" if c["weight"] > 0 else "not needed") + "</td></tr>"
                    for c in w["candidates"])
    n_free = sum(not d["identifiable"] for d in w["directions"])
    pct = f"{w['relative_error'] * 100:g} %"
    return f"""<h2 id="tungsten">Tungsten: a vacancy and a surface</h2>
<p>Model <code>{esc(w['model'])}</code>, a tabulated EAM potential (embedding, pair and density tables). Its
parameters here are the log of one scale factor per table ({esc(', '.join(w['parameters']))}): the 6000 tabulated
values generated from three physical ones, so the FIM is 3&times;3 (derivatives by central differences, step
{st['h']:g}). Targets, each to {pct}:</p>
<table id="tungsten-targets"><tr><th>property</th><th>EAM value</th><th>target</th><th>predicted from the weights</th>
<th>meets</th></tr>
{rows}</table>
<p>Eigen-directions of the target FIM (largest first). With {len(w['quantities'])} target properties and
{len(w['parameters'])} parameters, {n_free} direction(s) are not constrained by the targets (eigenvalue below
{TINY_EIGENVALUE:g} of the largest): the training data need not pin them down.</p>
<table id="tungsten-directions"><tr><th>eigenvalue (per log-scale²)</th><th>/ largest</th><th>direction</th>
<th>identifiable</th></tr>
{dirs}</table>
<p>Candidate W configurations (rattled, trained on their forces) and the weights that match the target
({'met' if w['meets_target'] else 'not met'}):</p>
<table id="tungsten-candidates"><tr><th>configuration</th><th>atoms</th><th>weight w</th>
<th>required precision 1/&radic;w</th></tr>
{cands}</table>
"""


def write_report(path: Path, summary: dict, figures: dict):
    """A self-contained HTML report (figures as relative PNG links)."""
    esc = html.escape
    q, m, lt, tg = summary["quests"], summary["matching"], summary["ltau"], summary["target"]
    pct = f"{tg['relative_error'] * 100:g} %"
    rows = "".join(f"<tr><td>{esc(s['name'])}</td><td>{s['lattice_constant']:.3f}</td><td>{esc(s['trained_on'])}</td>"
                   f"<td>{s['weight']:.4g}</td><td>{1 / np.sqrt(s['weight']):.3g} "
                   f"{'eV/Å' if s['trained_on'] == 'forces' else 'eV'}</td></tr>" for s in m["selected"])
    label = {"lattice_constant": "lattice constant a0", "c11": "C11", "c12": "C12", "c44": "C44"}
    check = "".join(f"<tr><td>{esc(label.get(c['quantity'], c['quantity']))}</td><td>{c['value']:.5g} {esc(c['unit'])}</td>"
                    f"<td>± {c['target_sigma']:.3g} {esc(c['unit'])}</td><td>± {c['predicted_sigma']:.3g} "
                    f"{esc(c['unit'])}</td><td>{'yes' if c['meets'] else '<b>no</b>'}</td></tr>" for c in tg["check"])
    weak = "".join(f"<li>{esc(d['direction'])} (eigenvalue {d['relative_eigenvalue']:.1e} of the largest)</li>"
                   for d in tg["unidentifiable"])
    weak_text = (f"<p>The target FIM has {len(tg['unidentifiable'])} direction(s) in parameter space that the target "
                 f"properties do not constrain (eigenvalues below {TINY_EIGENVALUE:g} of the largest):</p><ul>{weak}</ul>"
                 "<p>Moving the parameters along such a direction leaves the four target properties unchanged, so "
                 "the matching does not ask the training set to pin it down, and the fitted potential may differ "
                 "from SW there. With 4 target properties and 5 parameters at least one such direction exists.</p>"
                 if weak else "<p>Every direction in parameter space is constrained by the target properties.</p>")
    after = tg.get("unidentifiable_after_training") or []
    if after:
        weak_text += (f"<p>The weighted training FIM leaves {len(after)} direction(s) unidentified: "
                      + "; ".join(esc(d["direction"]) for d in after) + ".</p>")
    rf = summary["refit"]
    refit_rows = "".join(
        f"<tr><td>{esc(label.get(r['quantity'], r['quantity']))}</td><td>{r['truth']:.5g} {esc(r['unit'])}</td>"
        f"<td>{r['refitted']:.5g}</td><td>{r['error']:+.3g}</td><td>{r['predicted_sigma']:.3g}</td>"
        f"<td>{r['target_sigma']:.3g}</td><td>{'yes' if r['within_target'] else '<b>no</b>'}</td></tr>"
        for r in rf["properties"])
    refit_sentence = ("Every property of the refitted model is within the target precision of the truth."
                      if rf["all_within_target"] else "Not every property of the refitted model is within the target "
                      "precision of the truth: one draw of the label noise can land outside one standard deviation.")
    tungsten = _tungsten_section(summary["tungsten"])
    figs = "".join(f'<figure><img src="{esc(f)}" alt="{esc(n)}"><figcaption>{esc(c)}</figcaption></figure>'
                   for n, (f, c) in figures.items())
    timings = ", ".join(f"{k} {v:.1f} s" for k, v in summary["timings_seconds"].items())
    vers = ", ".join(f"{esc(k)} {esc(v)}" for k, v in summary["versions"].items())
    path.write_text(f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>atomscore demo: information matching on SW silicon and EAM tungsten</title>
<style>body{{font-family:sans-serif;max-width:62em;margin:2em auto;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.2em .6em;text-align:left}} figure{{display:inline-block;margin:1em}}
img{{max-width:58em}} .result{{font-size:1.25em;background:#eef6ee;border-left:4px solid #3a3;padding:.6em}}</style>
</head><body>
<h1>Information-matching active learning on SW silicon</h1>
<h2 id="headline">{esc(headline(summary))}</h2>
<p class="result" id="result">{esc(summary['result'])}</p>
<p>Question: which of {summary['candidates']} candidate configurations (64-atom diamond silicon cells at lattice
constants {summary['lattice_range'][0]:.2f}&ndash;{summary['lattice_range'][1]:.2f} Å, unperturbed ones
fitted on their energy, rattled ones on their forces) must a Stillinger-Weber potential be trained on, and how
precisely, so that it predicts the lattice constant and the elastic constants C11, C12, C44 to {pct}?
Model <code>{esc(summary['model'])}</code>; fitted parameters {esc(', '.join(summary['parameters']))}
(log transform, so FIMs are per relative change of each parameter).</p>

<h2>Target ({pct} on each property) and check of the selected weights</h2>
<p>The predicted uncertainty of each property is <code>sqrt(diag(J F<sup>+</sup> J<sup>T</sup>))</code> with
F = &Sigma; w<sub>i</sub> I<sub>i</sub> the weighted FIM of the selected candidates and J the property Jacobian;
the weights meet the target when it is at most the target's.</p>
<table><tr><th>property</th><th>SW value</th><th>target</th><th>predicted from the weights</th><th>meets</th></tr>
{check}</table>

<h2>Selected configurations and what a weight means</h2>
<table><tr><th>configuration</th><th>a (Å)</th><th>trained on</th><th>weight w</th><th>required precision 1/&radic;w</th></tr>
{rows}</table>
<p>A weight multiplies the configuration's FIM, which assumes an error of 1 eV/Å on each force component
(1 eV on an energy). A weight w therefore asks for reference data fitted to 1/&radic;w of that: w = 100 means
forces to 0.1 eV/Å. Candidates not listed have weight 0: they add nothing the target needs.</p>

<h2>The loop closed: refit, and the target checked</h2>
<p>To check the promise, the selected configurations were labelled by a "true" model (SW with its parameters scaled
by {esc(', '.join(f"{k} ×{v:g}" for k, v in summary['refit']['truth_factors'].items()))}), each label with
random noise of the precision its weight asks for (1/&radic;w), and the five parameters were refitted from the
installed SW values by weighted least squares (<code>atomscore.fim.refit</code>). With the refitted parameters:</p>
<table><tr><th>property</th><th>truth</th><th>refitted model</th><th>error</th><th>predicted &plusmn;</th>
<th>target &plusmn;</th><th>error within target</th></tr>
{refit_rows}</table>
<p>{esc(refit_sentence)}</p>

<h2>Unidentifiable parameter directions</h2>
{weak_text}

<h2>Dataset information (QUESTS, bandwidth {q['bandwidth']})</h2>
<p>Efficiency {q['efficiency']:.4f} (dimensionless), diversity {q['diversity']:.4f} nats; dH of each candidate
against the starting set {esc(', '.join(q['starting_set']))} (figure below, next to the weights).</p>

<h2>LTAU force uncertainty</h2>
<p>The force errors LTAU learns from here are a stand-in: the spread of an ensemble of perturbed SW parameter
sets plays the part of the per-atom error logs of a training run, which a real potential provides
(docs/ltau.md walks from a training run to calibrated uncertainties).
Ensemble of {lt['ensemble_size']} perturbed parameter sets; {lt['heldout_atoms']} held-out atoms; Spearman rank
correlation of predicted and actual error {lt['spearman_rank_correlation']:.3f}; mean predicted
{lt['mean_predicted_error']:.3g} eV/Å, mean actual {lt['mean_actual_error']:.3g} eV/Å.</p>

{tungsten}
<h2>Figures</h2>{figs}

<h2 id="own-data">With your own data</h2>
<p>Each step above is one command or call on your own files (any format ASE reads):</p>
<pre>
atomscore descriptors train.xyz -o train_d.xyz          # QUESTS descriptors (docs/quests.md)
atomscore entropy train_d.xyz                           # how much information the dataset holds
atomscore dh pool.xyz --reference train_d.xyz -o dh.xyz # which new environments each candidate adds
atomscore select pool.xyz -n 20 --reference train_d.xyz -o to_label.xyz   (docs/selection.md)
atomscore run --example FIMTrainingSetScore > fim.json  # FIM of every candidate (docs/fim.md)
atomscore run --example FIMPropertyScore > target.json  # the target FIM of your property
atomscore run --example FIMMatchingScore > match.json   # the weights; then atomscore.fim.refit
atomscore uq md.xyz --train-descriptors train_d.xyz --error-logs errors.npy -o uq.xyz   (docs/ltau.md)
</pre>
<p>Coming from the Orchestrator: docs/orchestrator.md. Running many jobs or on SLURM: docs/jobs.md, docs/slurm.md.</p>
<p><small>Run {esc(summary['date'])}; {vers}.<br>Timings: {esc(timings)}. The QUESTS step includes quests'
one-time numba compilation (about 30 s) unless it was warmed at set-up, as <code>make</code> does.</small></p>
</body></html>
""")
