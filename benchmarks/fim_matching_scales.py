"""FIMMatchingScore at every target scale: the fraction of random problems solved (issue 28).

The scale of a target FIM is arbitrary (the property's units, the chosen covariance), so a
problem and the same problem with its target times ``s`` must both be solved, with the same
configurations selected and the weights times ``s``. For each scale ``s`` in 1e-8 ... 1e8
and each random problem (10 candidates ``J^T J`` of rank 3 over 5 parameters, as in the
issue; targets ``s * I`` and ``s * 20 T^T T / 5`` with ``T`` 5x5 random; and "spread": 50
candidates of rank 2 whose magnitudes spread over 10^+-1, random target), ``compute_batch`` with
every default is called once. A problem counts as solved when weights come back and they
match the target: the lowest eigenvalue of ``sum_i w_i I_i - I_target`` is above
``-1e-3 |I_target|`` in parameter units where the target has a unit diagonal (numpy,
independent of the score's own check). Also printed: whether the selection and the weights
(divided by ``s``) equal those at ``s = 1``.

Run it on two checkouts to compare them in one table (the anchor, issue 28: main before the
fix): ``PYTHONPATH=<checkout> .venv/bin/python benchmarks/fim_matching_scales.py [--seeds 20]``.
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

SCALES = [10.0 ** k for k in range(-8, 9)]


def problem(seed, kind, p=5):
    rng = np.random.default_rng(seed)
    m, rank = (50, 2) if kind == "spread" else (10, 3)
    jac = rng.normal(size=(m, rank, p))
    if kind == "spread":
        jac *= 10 ** rng.uniform(-1, 1, size=(m, 1, 1))
    fims = np.einsum("mri,mrj->mij", jac, jac)
    if kind == "identity":
        target = np.eye(p)
    else:
        t = rng.normal(size=(p, p))
        target = 20 * t.T @ t / p
    return fims, target


def matches(weights, fims, target, tol=1e-3):
    d = 1 / np.sqrt(np.diag(target))
    units = np.outer(d, d)
    diff = (np.tensordot(weights, fims, axes=1) - target) * units
    return np.linalg.eigvalsh(diff)[0] >= -tol * np.linalg.norm(target * units)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=20)
    args = parser.parse_args(argv)
    import atomscore
    from atomscore import SolverError
    from atomscore.fim.matching import FIMMatchingScore
    from fim_matching import configs  # benchmarks/fim_matching.py: candidates as Atoms

    print(f"atomscore from {atomscore.__file__}; {args.seeds} seeds per scale and target kind")
    print(f"{'target':<9}{'scale':>8}{'solved':>8}{'same selection':>16}{'weights/s rel.err':>19}")
    for kind in ("identity", "random", "spread"):
        reference = {}
        for scale in [1.0] + [s for s in SCALES if s != 1.0]:
            solved = same = 0
            worst = 0.0
            for seed in range(args.seeds):
                fims, target = problem(seed, kind)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    try:
                        w = np.array(FIMMatchingScore().compute_batch(configs(fims), scale * target))
                    except SolverError:
                        continue
                if not matches(w, fims, scale * target):
                    continue
                solved += 1
                if scale == 1.0:
                    reference[seed] = w
                elif seed in reference:
                    ref = reference[seed]
                    if np.array_equal(w > 0, ref > 0):
                        same += 1
                        worst = max(worst, float(np.max(np.abs(w / scale - ref)) / np.max(ref)))
            compared = sum(1 for s in range(args.seeds) if s in reference) if scale != 1.0 else solved
            same_text = f"{same}/{compared}" if scale != 1.0 else "(reference)"
            err_text = f"{worst:.1e}" if scale != 1.0 and same else "-"
            print(f"{kind:<9}{scale:8.0e}{solved:>5}/{args.seeds:<3}{same_text:>15}{err_text:>19}", flush=True)


if __name__ == "__main__":
    main()
