"""Information matching written as the Orchestrator's users write it, on an EAM W model.

The calls are those of a research group's scripts for the Orchestrator (EAM tungsten, the
tabulated parameters generated from a few physical ones), with only the import path changed
(``orchestrator.computer.score.fim`` -> ``atomscore.fim``):

1. candidate FIMs: ``FIMTrainingSetScore.compute_batch`` with a dimension-changing transform
   (6000 tabulated values theta from 3 log-scale factors phi: ``TableScales``, a
   ``TransformBase`` from atomscore.fim.transforms, composed with ``LogTransform``), masks read from ``.txt`` files, ``nprocs=2``;
2. target FIM: ``FIMPropertyScore.compute_batch`` of two properties (C11/C12/C44 and the
   lattice constant) with a list ``cov`` and ``return_jacobian=True``;
3. weights: ``FIMMatchingScore().fim_match(...)`` with SDPA options;
4. the target uncertainty predicted from the weighted FIM, checked against the target.

Run::

    python examples/orchestrator_style.py [OUTPUT_DIR]

Needs the KIM API with ``EAM_Dynamo_ZhouJohnsonWadley_2004_W__MO_524392058194_005`` (Debian
``openkim-models``), kimpy, information-matching, cvxpy with SDPA (``make`` installs them).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.io import read, write

from atomscore.fim import FIMMatchingScore, FIMPropertyScore, FIMTrainingSetScore
from atomscore.fim.transforms import eam_table_scales
from atomscore.potentials.kim import KIMPotential

KIM_ID = "EAM_Dynamo_ZhouJohnsonWadley_2004_W__MO_524392058194_005"


def write_candidates(config_dir):
    """Candidate configurations as the group keeps them: config_<i>.xyz and config_<i>_mask.txt."""
    config_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i, (a, strain) in enumerate([(3.165, 0.00), (3.10, 0.02), (3.23, -0.02), (3.165, 0.04)]):
        atoms = bulk("W", "bcc", a=a, cubic=True).repeat((2, 2, 1))
        cell = atoms.cell.array.copy()
        cell[0, 1] += strain * a  # a sheared cell
        atoms.set_cell(cell, scale_atoms=True)
        atoms.positions += rng.normal(scale=0.06, size=atoms.positions.shape)
        write(config_dir / f"config_{i}.xyz", atoms, format="extxyz")
        mask = np.zeros((len(atoms), 3), dtype=int)
        mask[: len(atoms) // 2] = 1  # the forces on half of the atoms
        np.savetxt(config_dir / f"config_{i}_mask.txt", mask.ravel(), fmt="%d")
    return 4


def main(out):
    out = Path(out)
    config_dir = out / "configs"
    nconfigs = write_candidates(config_dir)

    # Parameter transformation: theta (6000 tabulated values) -> scale factors -> their logs
    transform, parameters_optimize, _ = eam_table_scales(KIMPotential(KIM_ID))
    potential_dict = {
        "potential": {"potential_type": "KIM",
                      "potential_args": {"kim_id": KIM_ID, "kim_api": "kim-api-collections-management",
                                         "species": ["W"]}},
        "parameters_optimize": parameters_optimize,
    }

    # 1. FIMs of the candidates
    print("[1/4] candidate FIMs", flush=True)
    list_of_atoms = [read(config_dir / f"config_{ii}.xyz") for ii in range(nconfigs)]
    list_of_mask = [str(config_dir / f"config_{ii}_mask.txt") for ii in range(nconfigs)]
    fim = FIMTrainingSetScore()
    list_of_fims = fim.compute_batch(list_of_atoms=list_of_atoms, score_quantity="SENSITIVITY",
                                     transform=transform, list_of_mask=list_of_mask, nprocs=2, **potential_dict)
    fim.save_results(compute_results=list_of_fims, save_dir=str(out / "FIM_candidates"),
                     list_of_configs=list_of_atoms)
    print("  ", len(list_of_fims), "FIMs of shape", list_of_fims[0].shape, "(P_theta = 6000, P_phi = 3)")

    # 2. FIM of the target properties, with their Jacobians
    print("[2/4] target FIM", flush=True)
    elastic = {"init_args": {"target_property_type": "ElasticConstants",
                             "target_property_args": {"lattice_param": 3.165, "lattice_type": "bcc",
                                                      "elements": ["W"], "units": "GPa",
                                                      "fim_quantities": ["c11", "c12", "c44"]}},
               "calculate_property_args": {}}
    lattice = {"init_args": {"target_property_type": "ElasticConstants",
                             "target_property_args": {"lattice_param": 3.165, "lattice_type": "bcc",
                                                      "elements": ["W"], "fim_quantities": ["lattice_constant"]}},
               "calculate_property_args": {}}
    sigma_elastic, sigma_lattice = np.array([5.0, 5.0, 5.0]), np.array([0.002])  # GPa, Å
    cov_list = [np.diag(sigma_elastic ** 2), np.diag(sigma_lattice ** 2)]
    fim_property_inst = FIMPropertyScore()
    fim_property, list_of_jac = fim_property_inst.compute_batch(
        score_quantity="SENSITIVITY", list_of_target_property=[elastic, lattice], cov=cov_list,
        return_jacobian=True, transform=transform, derivative_kwargs={"h": 1e-3, "method": "CD"},
        **potential_dict)
    fim_property_inst.save_results(fim_property, save_dir=str(out / "FIM_target"))
    np.save(out / "FIM_target" / "fim_target.npy", fim_property)
    print("   target FIM eigenvalues:", np.linalg.eigvalsh(fim_property))

    # 3. information matching (the Orchestrator's fim_match, SDPA with its options)
    print("[3/4] information matching", flush=True)
    fim_candidates = np.array([a.info["fim_training_set_score"]
                               for a in read(out / "FIM_candidates" / "score_results.xyz", index=":")])
    matching = FIMMatchingScore()
    weights = matching.fim_match(np.load(out / "FIM_target" / "fim_target.npy"), fim_candidates,
                                 convexopt_init_kwargs={"weight_upper_bound": None},
                                 # the Orchestrator's default scaling, spelled out (atomscore's None
                                 # rescales the parameters first: docs/orchestrator.md)
                                 fim_preconditioning_kwargs={"scale_type": "max_frobenius"},
                                 solver_kwargs={"solver": "SDPA", "epsilonStar": 1e-7, "epsilonDash": 1e-7},
                                 weight_tolerance={"zero_tol": 1e-6, "zero_tol_dual": 1e-4})
    weights = np.asarray(weights, dtype=float)
    for i, w in enumerate(weights):  # a weight is an inverse variance of the forces (eV/Å)^-2
        print(f"   config_{i}: weight {w:.4g}" + (f", fit its forces to {1 / np.sqrt(w):.2g} eV/Å" if w > 0 else ""))

    # 4. the target uncertainty predicted by the weighted FIM
    print("[4/4] target uncertainty", flush=True)
    fim_weighted = np.einsum("i,ijk->jk", weights, fim_candidates)
    cov_phi = np.linalg.inv(fim_weighted)
    ok = True
    for name, jac, sigma in (("C11, C12, C44 (GPa)", list_of_jac[0], sigma_elastic),
                             ("lattice constant (Å)", list_of_jac[1], sigma_lattice)):
        predicted = np.sqrt(np.diag(jac @ cov_phi @ jac.T))
        print(f"   {name}: predicted {np.array2string(predicted, precision=4)}, target {sigma}")
        ok &= bool(np.all(predicted <= sigma * 1.01))
    np.savetxt(out / "weights.txt", weights)
    if not ok:
        print("the weighted training set does not reach the target precision", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "orchestrator_style_output"))
