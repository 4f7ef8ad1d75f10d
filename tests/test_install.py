"""A base ``pip install .`` (no extras) in a fresh virtual environment gives working QUESTS and LTAU.

The environment is built from this checkout for the test (about a minute from a local
package mirror, plus quests' first numba compilation) and thrown away after it. References:
the QUESTS values of the same structures computed in the full environment running this test,
and the absence of every package of the extras (``importlib.util.find_spec``).
"""

import json
import os
import subprocess
import sys
import textwrap
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import importlib.util, json
    import numpy as np
    from ase.build import bulk
    from atomscore import LTAUForcesUQScore, QUESTSDeltaEntropyScore, QUESTSEfficiencyScore
    from atomscore.quests.descriptor import QUESTSDescriptor
    from atomscore.errors import MissingExtraError

    configs = [bulk("Si", "diamond", 5.43, cubic=True) for _ in range(3)]
    for i, atoms in enumerate(configs):
        atoms.rattle(0.05, seed=i)
    data = QUESTSDescriptor(k=8).attach(configs, progress=False)
    efficiency = QUESTSEfficiencyScore().compute(data, "EFFICIENCY", bandwidth=0.05)
    dh = QUESTSDeltaEntropyScore().compute(data[0], "DELTA_ENTROPY", reference_set=data[1].arrays["descriptors"],
                                           bandwidth=0.05)
    train = np.vstack([a.arrays["descriptors"] for a in data[1:]])
    logs = np.abs(np.random.default_rng(0).normal(size=(10, len(train)))) * 0.1
    uq = LTAUForcesUQScore(train, logs, from_error_logs=True, nbins=20).compute(data[0], "UNCERTAINTY")
    absent = {m: importlib.util.find_spec(m) is None
              for m in ("cvxpy", "information_matching", "numdifftools", "psij", "kimpy", "torch")}
    from atomscore.fim.matching import installed_solvers
    try:
        installed_solvers()  # the solvers of FIMMatchingScore: cvxpy, from the [fim] extra
        missing = None
    except MissingExtraError as exc:
        missing = str(exc)
    except Exception as exc:
        missing = f"{type(exc).__name__}: {exc}"
    print(json.dumps({"efficiency": efficiency, "dh": dh.tolist(), "uq": uq.tolist(), "absent": absent,
                      "missing": missing}))
""")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_base_install_runs_quests_and_ltau_without_the_extras(tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    install = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(ROOT)],
                             capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path)
    assert install.returncode == 0, install.stderr[-3000:]
    run = subprocess.run([str(python), "-c", SCRIPT], capture_output=True, text=True, timeout=300, env=env,
                         cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert all(got["absent"].values()), got["absent"]
    assert got["missing"] and "atomscore[fim]" in got["missing"], got["missing"]

    # the same numbers in the full environment running this test
    ns = {}
    exec(SCRIPT.split("absent = ")[0], ns)
    assert got["efficiency"] == pytest.approx(ns["efficiency"], rel=1e-12)
    assert got["dh"] == pytest.approx(ns["dh"].tolist(), rel=1e-12)
    assert got["uq"] == pytest.approx(ns["uq"].tolist(), rel=1e-6)

    cli = subprocess.run([str(env_dir / "bin" / "atomscore"), "--version"], capture_output=True, text=True,
                         timeout=60, env=env)
    assert cli.returncode == 0 and cli.stdout.startswith("atomscore ")

    # the command line of the base install: entropy of the same structures, from a file
    from atomscore.io import write_data

    write_data(tmp_path / "train.xyz", ns["configs"])
    entropy = subprocess.run([str(env_dir / "bin" / "atomscore"), "entropy", "train.xyz", "-k", "8", "-b", "0.05",
                              "--json"], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert entropy.returncode == 0, entropy.stderr
    assert json.loads(entropy.stdout)["efficiency"] == pytest.approx(ns["efficiency"], rel=1e-12)


def _make(target, venv_dir):
    return subprocess.run(["make", "--no-print-directory", "-C", str(ROOT), f"VENV={venv_dir}", str(target)],
                          capture_output=True, text=True, timeout=120)


def _fake_venv(folder):
    """A venv whose python only records its arguments (the Makefile's pip calls, not run)."""
    (folder / "bin").mkdir(parents=True)
    python = folder / "bin" / "python"
    python.write_text(f"#!/bin/sh\necho \"$*\" >> {folder / 'calls.log'}\n")
    python.chmod(0o755)
    return folder


def _calls(folder):
    log = folder / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    log.unlink(missing_ok=True)
    return [c for c in calls if "pip install" in c]


def test_make_demo_installs_only_its_part_and_make_test_completes_it(tmp_path):
    """Issue 26: the Makefile's stamps. `make demo` installs atomscore[kim,fim] only (no torch, no
    test tools); a second run installs nothing; `make test` after it installs the rest; after a
    complete install the demo installs nothing. Reference: the pip calls a recording python saw."""
    demo = _fake_venv(tmp_path / "a")
    assert _make(demo / ".atomscore-demo-installed", demo).returncode == 0
    calls = _calls(demo)
    assert any("-e .[kim,fim]" in c for c in calls), calls
    assert not any("torch" in c or "test]" in c or ".[all" in c for c in calls), calls
    assert _make(demo / ".atomscore-demo-installed", demo).returncode == 0 and _calls(demo) == []  # idempotent
    assert _make(demo / ".atomscore-installed", demo).returncode == 0  # make test's install, after the demo's
    calls = _calls(demo)
    assert any("torch==" in c for c in calls) and any("-e .[all,gpu,test,mace]" in c for c in calls), calls
    assert _make(demo / ".atomscore-installed", demo).returncode == 0 and _calls(demo) == []
    assert _make(demo / ".atomscore-demo-installed", demo).returncode == 0 and _calls(demo) == []

    full = _fake_venv(tmp_path / "b")  # make test first: make demo then installs nothing
    assert _make(full / ".atomscore-installed", full).returncode == 0 and _calls(full)
    assert _make(full / ".atomscore-demo-installed", full).returncode == 0 and _calls(full) == []


def test_readme_states_the_base_dependencies_as_pyproject_has_them():
    """The README's base-dependency row names exactly pyproject.toml's [project] dependencies."""
    import re
    import tomllib

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    names = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0] for d in deps}
    readme = (ROOT / "README.md").read_text()
    row = next(line for line in readme.splitlines() if line.startswith("| (none) |"))
    listed = {n.strip().strip("`") for n in row.split("|")[2].split(",")}
    assert listed == names, (listed, names)
