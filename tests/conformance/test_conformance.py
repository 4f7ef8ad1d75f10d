"""The reference implementation's own score test suite, run through ``atomscore run``.

Reads ``$ATOMSCORE_CONFORMANCE_DIR`` (``../shared/conformance`` in CI; nothing is copied
into the repository). Each case's inputs are copied to a temporary folder with the
placeholders filled in, run by the real ``atomscore run`` command, and every job folder
is compared with the reference output (rtol 5e-3, as the reference does): the number of
job folders shows that ``batch_size`` split the work the same way.

Deliberate differences (a reference flaw we fixed) are stated in :data:`CASES` and
checked by the case's own ``check`` function instead; no case is silently skipped: a case
whose score is not built yet is reported as such.

The SW silicon model of cases 10-13 is ``SW_StillingerWeber_1985_Si__MO_405512056662_006``
in the reference; Debian ships ``..._005`` with the same parameter values, so the inputs
are mapped to ``_005`` here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest

CONFORMANCE_DIR = os.environ.get("ATOMSCORE_CONFORMANCE_DIR")
RTOL = 5e-3
MODEL_006 = "SW_StillingerWeber_1985_Si__MO_405512056662_006"
MODEL_005 = "SW_StillingerWeber_1985_Si__MO_405512056662_005"


@dataclass
class Case:
    """One conformance case.

    ``status``: ``'on'`` (must match), ``'pending'`` (its score is not built yet: the issue
    that builds it switches it on) or ``'unavailable'`` (cannot run here; ``reason`` says why).
    ``key``: the result key compared. ``check``: replaces the plain comparison where we
    deliberately differ from the reference (the deviation is stated in its docstring).
    """

    score: str
    key: str
    status: str = "pending"
    issue: int = 0
    reason: str = ""
    atol: float = 0.0
    check: Optional[Callable] = None


def _check_11_fim_property(ours, reference, ours_job, ref_job):
    """Case 11, deliberate deviation: the reference's lattice relaxation is truncated.

    The reference relaxes the cell with LAMMPS ``fix box/relax`` at its default ``vmax``
    (1e-4) for at most 100 iterations, which cannot follow the 2.5% lattice change that
    its default forward step ``B + 0.1`` causes (a stops at 5.484 Å instead of 5.557 Å),
    so its B entries mix relaxed and unrelaxed constants (tests/test_fim_property.py
    reproduces them by emulating that). We relax fully. Checked instead: the A-A entry
    (a0 does not depend on A, so the flaw leaves it alone) against the reference, and the
    whole FIM against the corrected value: plain forward differences (h = 0.1, the
    reference's default) of the embedded backend's constants in eV/Å³ with cov = I.
    """
    from atomscore.potentials.kim import KIMPotential
    from atomscore.properties import ElasticConstants

    fim, ref = np.squeeze(ours[0]), np.squeeze(reference[0])
    np.testing.assert_allclose(fim[0, 0], ref[0, 0], rtol=RTOL)
    prop = ElasticConstants(5.43, "diamond", 1e-4, None, ["Si"])
    pot = KIMPotential(MODEL_005)
    theta0 = np.array([pot.get_parameter("A")[0], pot.get_parameter("B")[0]])

    def g(theta):
        pot.set_parameters({"A": [theta[0]], "B": [theta[1]]})
        return prop.property_vector(pot)

    g0 = g(theta0)
    jac = np.column_stack([(g(theta0 + 0.1 * e) - g0) / 0.1 for e in np.eye(2)])
    np.testing.assert_allclose(fim, jac.T @ jac, rtol=RTOL)


def check_ltau_top_edge(ours, reference, ours_job, ref_job):
    """LTAU cases 01-04. Deviation: the reference's histogram drops an error sample equal to
    the top bin edge (and renormalises that training atom over the remaining epochs); ours
    counts it (as ``np.histogram`` does). Only the training atom holding the largest logged
    error is affected, so only query atoms whose nearest neighbour it is differ (~1 %).

    Checked here, independently of atomscore: bins (log, nbins 100, min..max of the logs)
    and flat metadata equal the reference's; every score equals the corrected value
    (``np.histogram`` per training atom, geometric midpoints, numpy brute-force nearest
    neighbour); every reference score equals the flawed value (top-edge sample dropped) --
    which explains the difference; wherever the two agree, ours matches the reference
    (rtol 5e-3). Configurations are paired by positions, because the reference's ColabFit
    case (03) stored its jobs in database (co-id) order, not in input order.
    """
    from atomscore.io import read_extxyz

    inputs = Path(CONFORMANCE_DIR) / "orchestrator-score" / "score" / "test_inputs"
    train = np.load(inputs / "train_descriptors.npy")
    logs = np.load(inputs / "error_traj.npy")
    ours_all = [a for job in sorted(ours_job.parent.iterdir()) if job.name.isdigit()
                for a in read_extxyz(job / "score_results.xyz")]
    ref_cfg = read_extxyz(ref_job / "saved_config.extxyz")
    bins = np.asarray(ref_cfg[0].info["ltau_forces_uq_bins"], dtype=float)
    mid = np.sqrt(bins[1:] * bins[:-1])
    corrected = np.array([np.histogram(col, bins=bins)[0] for col in logs.T]) / logs.shape[0] @ mid
    kept = [col[col < bins[-1]] for col in logs.T]
    flawed = np.array([np.histogram(col, bins=bins)[0] @ mid / len(col) for col in kept])
    assert len(ours) == len(reference) == len(ref_cfg)
    for i, ref_atoms in enumerate(ref_cfg):
        match = [a for a in ours_all if len(a) == len(ref_atoms) and np.allclose(a.positions, ref_atoms.positions)]
        assert len(match) == 1, f"reference {ref_job.name} item {i}: {len(match)} configurations of ours match"
        atoms = match[0]
        a, b = atoms.arrays["ltau_forces_uq_score"], ref_atoms.arrays["ltau_forces_uq_score"]
        np.testing.assert_allclose(atoms.info["ltau_forces_uq_bins"], bins, rtol=1e-12)
        for field in ("index_type", "index_args", "num_nearest_neighbors"):
            key = f"ltau_forces_uq_{field}"
            assert str(atoms.info[key]) == str(ref_atoms.info[key]), key
        d = np.linalg.norm(atoms.arrays["descriptors"][:, None, :] - train[None], axis=-1)
        nearest = np.argmin(d, axis=1)
        np.testing.assert_allclose(a, corrected[nearest], rtol=1e-8, err_msg=f"{ours_job.name} item {i}")
        np.testing.assert_allclose(b, flawed[nearest], rtol=RTOL, err_msg=f"reference {ref_job.name} item {i}")
        same = np.isclose(corrected[nearest], flawed[nearest], rtol=1e-12, atol=0)
        np.testing.assert_allclose(a[same], b[same], rtol=RTOL, err_msg=f"{ours_job.name} item {i}")


def check_quests_delta_entropy(ours, reference, ours_job, ref_job):
    """QUESTS cases 07-09. Deviation: where the kernel sum underflows in float64 (query
    farther than about 38 bandwidths from every reference point) the reference (quests)
    writes +inf; ours is the exact finite -log sum by log-sum-exp. Checked: wherever the
    reference is finite, ours matches it (rtol 5e-3); where it is +inf, ours is finite and
    beyond float64's exp range (> 700 nats), and equals scipy's logsumexp on the full
    squared-distance matrix (independent of atomscore); flat metadata equal the reference's.
    """
    from scipy.spatial.distance import cdist
    from scipy.special import logsumexp

    from atomscore.io import read_extxyz

    train = np.load(Path(CONFORMANCE_DIR) / "orchestrator-score" / "score" / "test_inputs" / "train_descriptors.npy")
    ours_cfg = read_extxyz(ours_job / "score_results.xyz")
    ref_cfg = read_extxyz(ref_job / "saved_config.extxyz")
    assert len(ours) == len(reference) == len(ours_cfg) == len(ref_cfg)
    for i, (a, b, atoms, ref_atoms) in enumerate(zip(ours, reference, ours_cfg, ref_cfg)):
        a, b = np.squeeze(a), np.squeeze(b)
        assert a.shape == b.shape and np.all(np.isfinite(a)), f"{ours_job.name} item {i}"
        finite = np.isfinite(b)
        np.testing.assert_allclose(a[finite], b[finite], rtol=RTOL, err_msg=f"{ours_job.name} item {i}")
        assert np.all(b[~finite] > 0) and np.all(a[~finite] > 700), f"{ours_job.name} item {i}"
        h = float(ref_atoms.info["quests_delta_entropy_bandwidth"])
        exact = -logsumexp(-cdist(atoms.arrays["descriptors"], train, "sqeuclidean") / (2 * h * h), axis=1)
        np.testing.assert_allclose(a, exact, rtol=1e-9, err_msg=f"{ours_job.name} item {i}")
        for field in ("bandwidth", "approx", "num_nearest_neighbors", "graph_neighbors"):
            key = f"quests_delta_entropy_{field}"
            assert str(atoms.info[key]) == str(ref_atoms.info[key]), key


CASES = {
    "01_ltau": Case("LTAUForcesUQScore", "ltau_forces_uq_score", "on", issue=4, check=check_ltau_top_edge),
    "02_ltau_batched": Case("LTAUForcesUQScore", "ltau_forces_uq_score", "on", issue=4, check=check_ltau_top_edge),
    "03_ltau_colabfit": Case("LTAUForcesUQScore", "ltau_forces_uq_score", "on", issue=4, check=check_ltau_top_edge),
    "04_ltau_in_memory": Case("LTAUForcesUQScore", "ltau_forces_uq_score", "on", issue=4, check=check_ltau_top_edge),
    "05_quests_efficiency": Case("QUESTSEfficiencyScore", "quests_efficiency_score", "on", issue=3),
    "06_quests_diversity": Case("QUESTSDiversityScore", "quests_diversity_score", "on", issue=3),
    "07_quests_delta_entropy": Case("QUESTSDeltaEntropyScore", "quests_delta_entropy_score", "on", issue=3,
                                    check=check_quests_delta_entropy),
    "08_quests_delta_entropy_batched": Case("QUESTSDeltaEntropyScore", "quests_delta_entropy_score", "on", issue=3,
                                            check=check_quests_delta_entropy),
    "09_quests_delta_entropy_in_memory": Case("QUESTSDeltaEntropyScore", "quests_delta_entropy_score", "on",
                                              issue=3, check=check_quests_delta_entropy),
    "10_fim_training_set": Case("FIMTrainingSetScore", "fim_training_set_score", status="on", issue=5),
    "11_fim_property": Case("FIMPropertyScore", "fim_property_score", status="on", issue=6,
                            check=_check_11_fim_property),
    "12_fim_property_kimrun": Case(
        "FIMPropertyScore", "fim_property_score", status="unavailable", issue=6,
        reason="needs the OpenKIM test driver ElasticConstantsCubic_diamond_Si__TE_507832142782_001 and the "
               "KIMRun property path, which cannot be installed here (no OpenKIM test drivers in Debian, no network)"),
    "13_fim_matching": Case("FIMMatchingScore", "fim_matching_weight_score", status="on", issue=7),
}


def _fill_placeholders(text: str, install: Path) -> str:
    return (text.replace("<INSTALL_PATH>", str(install))
            .replace("<KIM_API>", shutil.which("kim-api-collections-management") or "kim-api-collections-management")
            .replace("<LAMMPS_PATH>", shutil.which("lmp") or "lmp")
            .replace(MODEL_006, MODEL_005))


def prepare_inputs(source: Path, target: Path):
    """Copy the case inputs to ``target`` with placeholders filled (text files only)."""
    shutil.copytree(source / "score", target / "score")
    for path in (target / "score").rglob("*"):
        path.chmod(0o644 if path.is_file() else 0o755)
        if path.suffix in (".json", ".txt"):
            path.write_text(_fill_placeholders(path.read_text(), target))


def run_case(name: str, tmp_path: Path) -> Path:
    """Run one case through ``atomscore run``; return the root of its job folders."""
    prepare_inputs(Path(CONFORMANCE_DIR) / "orchestrator-score", tmp_path / "inputs")
    root = tmp_path / "jobs"
    spec = tmp_path / "inputs" / "score" / "test_inputs" / f"{name}.json"
    proc = subprocess.run([sys.executable, "-m", "atomscore.cli", "run", str(spec), "--root", str(root),
                           "--base-dir", str(tmp_path / "inputs" / "score")],
                          capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, f"atomscore run failed:\n{proc.stdout}\n{proc.stderr}"
    return root


def load_result(folder: Path, key: str):
    """The result values of one job folder (ours or the reference's), as a list of arrays."""
    from atomscore.io import read_extxyz

    for name in ("score_results.json",):
        if (folder / name).is_file():
            return [np.asarray(json.loads((folder / name).read_text())[key], dtype=float)]
    for name in ("score_results.xyz", "saved_config.extxyz"):
        if (folder / name).is_file():
            configs = read_extxyz(folder / name)
            return [np.asarray(a.arrays[key] if key in a.arrays else a.info[key], dtype=float) for a in configs]
    raise AssertionError(f"no results in {folder}")


def compare(ours: list, reference: list, case: Case, where: str):
    assert len(ours) == len(reference), f"{where}: {len(ours)} results, reference has {len(reference)}"
    for i, (a, b) in enumerate(zip(ours, reference)):
        a, b = np.squeeze(a), np.squeeze(b)
        assert a.shape == b.shape, f"{where} item {i}: shape {a.shape}, reference {b.shape}"
        np.testing.assert_allclose(a, b, rtol=RTOL, atol=case.atol, err_msg=f"{where} item {i}")


@pytest.mark.skipif(not CONFORMANCE_DIR, reason="ATOMSCORE_CONFORMANCE_DIR is not set (make test sets it)")
@pytest.mark.parametrize("name", sorted(CASES))
def test_conformance(name, tmp_path):
    case = CASES[name]
    if case.status == "pending":
        pytest.skip(f"{case.score} is not built yet (issue {case.issue}); case not run")
    if case.status == "unavailable":
        pytest.skip(f"cannot run here: {case.reason}")
    root = run_case(name, tmp_path)
    runs = sorted((root / case.score / name).iterdir())
    assert len(runs) == 1, f"expected one run folder (root/<Score>/<path_type>/<run>/), got {runs}"
    ours_dir = runs[0]
    ref_dir = Path(CONFORMANCE_DIR) / "orchestrator-score" / "reference_output" / "score" / case.score / name
    ours_jobs = sorted(p for p in ours_dir.iterdir() if p.name.isdigit())
    ref_jobs = sorted(p for p in ref_dir.iterdir() if p.name.isdigit())
    assert [p.name for p in ours_jobs] == [p.name for p in ref_jobs], "batch_size split the work differently"
    for ours_job, ref_job in zip(ours_jobs, ref_jobs):
        ours, reference = load_result(ours_job, case.key), load_result(ref_job, case.key)
        if case.check is not None:
            case.check(ours, reference, ours_job, ref_job)
        else:
            compare(ours, reference, case, f"{name}/{ours_job.name}")


def test_every_reference_case_is_listed():
    """A new case in the conformance data must get an entry (and a decision) here."""
    if not CONFORMANCE_DIR:
        pytest.skip("ATOMSCORE_CONFORMANCE_DIR is not set")
    inputs = Path(CONFORMANCE_DIR) / "orchestrator-score" / "score" / "test_inputs"
    assert sorted(p.stem for p in inputs.glob("[0-9][0-9]_*.json")) == sorted(CASES)
