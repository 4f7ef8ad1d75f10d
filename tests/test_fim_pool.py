"""FIMTrainingSetScore's worker pool pays no import per worker (issue 16).

Each check runs in a fresh interpreter (so that nothing imported by other tests hides an
import): the parent prepares the pool as compute_batch does, then the worker initialiser
runs and computes one FIM; they must not add any module to ``sys.modules`` -- a forked worker would import it
again, which cost ~1 s per worker for information_matching (cvxpy, scipy.stats).
"""

import json
import os
import subprocess
import sys

import pytest

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"

SCRIPT = r"""
import json, sys
from ase.build import bulk
from atomscore.fim.evaluator import _FIMEvaluator
from atomscore.fim.workers import _pool_init_args, _worker_fim, _worker_init
atoms = bulk("Si", "diamond", a=5.43, cubic=True)
atoms.rattle(0.05, seed=1)
pot = {"potential_type": "KIM", "potential_args": {"kim_id": sys.argv[1]}}
opt = {p: [["default"]] for p in ("A", "B", "sigma")}
transform = json.loads(sys.argv[2])
deriv = json.loads(sys.argv[3])
ev = _FIMEvaluator(pot, opt, transform, deriv)
ev.restore()
init = _pool_init_args(ev, opt, deriv)
before = set(sys.modules)
_worker_init(*init)
_worker_fim((0, atoms, "forces", None))
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def new_modules_in_worker(transform, derivative_kwargs):
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    out = subprocess.run([sys.executable, "-c", SCRIPT, SW, json.dumps(transform), json.dumps(derivative_kwargs)],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("transform, derivative_kwargs", [
    (None, None),
    ({"transform_type": "IdentityTransform", "transform_args": {}}, None),
    ({"transform_type": "AffineTransform", "transform_args": {"a": [[2.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]],
                                                              "b": [0.0, 0.0, 0.0]}}, None),
    (None, {"method": "central", "step": 0.05, "order": 4}),
])
def test_worker_initialiser_imports_nothing(transform, derivative_kwargs):
    assert new_modules_in_worker(transform, derivative_kwargs) == []
