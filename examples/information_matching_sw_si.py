"""The spec's three FIM examples, end to end, on Stillinger-Weber silicon.

1. FIMTrainingSetScore: the FIM of the forces of each candidate configuration;
2. FIMPropertyScore: the FIM of the elastic constants of diamond Si (LAMMPS);
3. FIMMatchingScore: the optimal weight of each candidate (information matching).

The code of each step is the spec's, with two changes: the import path
``orchestrator.computer.score`` is ``atomscore``, and the KIM model is the ``_005`` version
that Debian's ``openkim-models`` installs (same parameter values as the spec's ``_006``).
The spec reads ``candidate_configurations.xyz``; this script first writes one (rattled
8-atom diamond cells at a few lattice constants). Every file goes to the output folder.

Run::

    python examples/information_matching_sw_si.py [OUTPUT_DIR] [--lmp /usr/bin/lmp]

Needs the KIM API with the SW model, kimpy and LAMMPS with the KIM package
(``make`` installs them).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

import numpy as np

KIM_ID = "SW_StillingerWeber_1985_Si__MO_405512056662_005"  # the spec names ..._006


def write_candidates(path, lattice_constants=(5.30, 5.43, 5.56), rattle=0.05, seed=0):
    """Write rattled 8-atom diamond Si cells (one per lattice constant, in Å) to ``path``."""
    from ase.build import bulk
    from ase.io import write

    configs = []
    for i, a in enumerate(lattice_constants):
        atoms = bulk("Si", "diamond", a=a, cubic=True)
        atoms.rattle(rattle, seed=seed + i)
        atoms.info["lattice_constant"] = a
        configs.append(atoms)
    write(path, configs, format="extxyz")
    return len(configs)


def step1_training_set():
    """The spec's FIMTrainingSetScore example (forces of every candidate)."""
    from atomscore.fim import FIMTrainingSetScore
    from ase.io import read

    # Candidate configurations as ase.Atoms objects
    list_of_atoms = read('candidate_configurations.xyz', format='extxyz', index=':')
    nconfigs = len(list_of_atoms)

    # Compute the FIM for each atomic configuration
    myfim_training_set = FIMTrainingSetScore()
    fim_training_set = myfim_training_set.compute_batch(
        list_of_atoms=list_of_atoms,
        score_quantity='SENSITIVITY',
        potential={
            'potential_type': 'KIM',
            'potential_args': {
                'kim_id': KIM_ID,
                'kim_api': 'kim-api-collections-management'
            }
        },
        parameters_optimize={
            'A': [[15.2848479197914]],
            'B': [['default']],
            'lambda': [[0.0, 'fix']]
        },
        # Optional - The defult is to compute the forces only
        evaluate_kwargs={
            'compute_energy': [False] * nconfigs,
            'compute_forces': [True] * nconfigs,
            'compute_stress': [False] * nconfigs
        },
        # Optional - central differences (numdifftools.Jacobian keyword arguments)
        derivative_kwargs={'method': 'central'}
    )
    # Save the results to score_results.xyz
    myfim_training_set.save_results(
        compute_results=fim_training_set, list_of_configs=list_of_atoms)
    print("FIM index -> parameter:", myfim_training_set.fim_index_to_parameter)
    return fim_training_set


def step2_property(simulator_path):
    """The spec's FIMPropertyScore example (elastic constants, identity covariance)."""
    from atomscore.fim import FIMPropertyScore

    myfim_property = FIMPropertyScore()
    fim_property = myfim_property.compute(
        list_of_target_property=[
            {
                'init_args': {
                    'target_property_type': 'ElasticConstants',
                    'target_property_args': {
                        'lattice_param': 5.43,
                        'lattice_type': 'diamond',
                        'deformation_mag': 0.0001,
                        'simulator_path': simulator_path,
                        'elements': ['Si']
                    }
                },
                'calculate_property_args': {
                    'workflow': {
                        'workflow_type': 'LOCAL',
                        'workflow_args': {'root_directory': 'fim_property_jobs'}
                    }
                }
            }
        ],
        score_quantity='SENSITIVITY',
        cov=np.eye(36),  # Target covariance matrix for the target properties
        potential={
            'potential_type': 'KIM',
            'potential_args': {
                'kim_id': KIM_ID,
                'kim_api': 'kim-api-collections-management'
            }
        },
        parameters_optimize={
            'A': [[15.2848479197914]],
            'B': [['default']],
            'lambda': [[0.0, 'fix']]
        },
        # Optional - finite-difference step size and method
        derivative_kwargs={'h': 0.1, 'method': 'CD'},
    )
    # Save the results to score_results.json
    myfim_property.save_results(compute_results=fim_property)
    return fim_property


def step3_matching():
    """The spec's FIMMatchingScore example (SDPA, no upper bound on the weights)."""
    from atomscore.fim import FIMMatchingScore
    from ase.io import read

    # Load the FIMs
    list_of_atoms = read('score_results.xyz', format='extxyz', index=':')
    fim_property = 'score_results.json'

    # information-matching calculation
    myfim_matching = FIMMatchingScore()
    fim_matching = myfim_matching.compute_batch(
        list_of_atoms=list_of_atoms,
        fim_property=fim_property,
        score_quantity='IMPORTANCE',
        # Optional - keyword arguments to instantiate information_matching.ConvexOpt
        convexopt_init_kwargs={'weight_upper_bound': None},
        # Optional - keyword arguments to solve convex optimization problem via cvxpy
        solver_kwargs={'solver': 'SDPA', 'verbose': False},
        # Optional - tolerances for extracting non-zero weights
        weight_tolerance={'zero_tol': 1e-4, 'zero_tol_dual': 1e-4}
    )
    # Save the results to score_results.xyz: the candidates with their FIMs (step 1's file) now with
    # their weights too. save_results never replaces a file unless asked (the Orchestrator's did).
    myfim_matching.save_results(compute_results=fim_matching, list_of_configs=list_of_atoms, overwrite=True)
    print(fim_matching)
    return fim_matching


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", nargs="?", default="information_matching_sw_si",
                        help="folder for every file written (default: ./information_matching_sw_si)")
    parser.add_argument("--lmp", default=shutil.which("lmp") or "/usr/bin/lmp",
                        help="the LAMMPS executable, with the KIM package (default: lmp on PATH)")
    args = parser.parse_args(argv)
    out = Path(args.output_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    os.chdir(out)  # the spec's snippets read and write score_results.* in the working folder
    try:
        n = write_candidates("candidate_configurations.xyz")
        print(f"[1/3] FIM of the forces of {n} candidate configurations")
        fims = step1_training_set()
        print("[2/3] FIM of the elastic constants of diamond Si (LAMMPS)")
        fim_property = step2_property(args.lmp)
        print("target FIM:\n", np.asarray(fim_property))
        print("[3/3] information matching")
        weights = step3_matching()
    finally:
        os.chdir(here)
    print(f"weights written to {out / 'score_results.xyz'} (info['fim_matching_weight_score'])")
    return {"fims": fims, "fim_property": np.asarray(fim_property), "weights": weights, "output_dir": out}


if __name__ == "__main__":
    main(sys.argv[1:])
