"""UncertaintyCalculator (atomscore.ltau.md) in real ASE molecular dynamics, and index_path=.

Everything runs for real: Stillinger-Weber silicon through ASE's own KIM calculator
(``ase.calculators.kim.KIM``), ASE's VelocityVerlet, QUESTS descriptors from the ``quests``
package, faiss indexes saved and read back, and subprocess jobs for index_path.
References: ``LTAUForcesUQScore.compute_batch`` on the same frame and descriptors (the
uncertainty), a numpy brute-force k-NN (the distance), a fresh KIM calculator on a copy of
the frame (energy, forces, stress). The training set is the 300 K neighbourhood of diamond
silicon; its error logs are synthetic (larger for more distorted environments), as a
trained model's would be.
"""

import warnings

import numpy as np
import pytest
from ase import units
from ase.build import bulk
from ase.io import read
from ase.md.verlet import VelocityVerlet

from atomscore import LTAUForcesUQScore, QUESTSDescriptor, UncertaintyCalculator
from atomscore.errors import InputError, UncertaintyExceeded
from atomscore.ltau.md import FlaggedFramesWriter

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"
K = 3


def kim():
    from ase.calculators.kim import KIM

    return KIM(SW)


def thermalize(atoms, temperature_K, seed):
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # renamed in newer ASE
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=np.random.default_rng(seed))


def crystal():
    return bulk("Si", "diamond", 5.43, cubic=True).repeat(2)  # 64 atoms


@pytest.fixture(scope="module")
def desc():
    return QUESTSDescriptor(cutoff=4.0, k=8)  # 15 columns


@pytest.fixture(scope="module")
def train(desc):
    """Frames of a 300 K run (started at 600 K: equipartition), their descriptors and logs."""
    atoms = crystal()
    thermalize(atoms, 600, seed=1)
    atoms.calc = kim()
    dyn = VelocityVerlet(atoms, 2 * units.fs)
    frames = []
    for _ in range(12):
        dyn.run(5)
        frames.append(atoms.copy())
    x = np.concatenate(desc.compute_batch(frames, progress=False))
    ideal = desc.compute(crystal())[0]
    distortion = np.linalg.norm(x - ideal, axis=1)
    rng = np.random.default_rng(0)
    logs = (0.02 + 2.0 * distortion) * rng.lognormal(0.0, 0.3, size=(25, len(x)))
    return x, logs


@pytest.fixture(scope="module")
def score(train):
    x, logs = train
    return LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=50)


def run_md(calc, temperature_K, seed, steps):
    """VelocityVerlet on the crystal; per step a copy of the frame and of the results."""
    atoms = crystal()
    thermalize(atoms, temperature_K, seed)
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, 2 * units.fs)
    seen = []
    dyn.attach(lambda: seen.append((atoms.copy(), {k: np.copy(v) for k, v in calc.results.items()})))
    dyn.run(steps)
    return atoms, seen


def test_md_matches_compute_batch_and_the_wrapped_calculator(score, desc, train, monkeypatch):
    """Per step of a real VelocityVerlet run: uncertainty == compute_batch on the frame
    (1e-12), distance == numpy brute-force k-NN, energy/forces/stress == a fresh KIM
    calculator; the index is never rebuilt (build_index made to fail during the run)."""
    import atomscore.ltau.estimator as kernel

    calc = UncertaintyCalculator(kim(), score, descriptor=desc, num_nearest_neighbors=K)
    monkeypatch.setattr(kernel, "build_index", lambda *a, **k: pytest.fail("index rebuilt during MD"))
    atoms, seen = run_md(calc, 600, seed=7, steps=8)
    assert len(seen) == 9 and calc.step == 9  # the start frame and one per step
    x_train = train[0]
    reference = kim()
    for frame, results in seen:
        scored = frame.copy()
        scored.arrays["descriptors"] = desc.compute(frame)
        expected = score.compute_batch([scored], "UNCERTAINTY", num_nearest_neighbors=K)[0]
        np.testing.assert_allclose(results["uncertainty"], expected, rtol=1e-12, atol=0)
        d = np.linalg.norm(scored.arrays["descriptors"][:, None] - x_train[None], axis=-1)
        knn = np.sort(d, axis=1)[:, :K].mean(axis=1)
        np.testing.assert_allclose(results["descriptor_distance"], knn, rtol=1e-4, atol=1e-6)
        probe = frame.copy()
        probe.calc = reference
        np.testing.assert_array_equal(results["forces"], probe.get_forces())
        assert results["energy"] == probe.get_potential_energy()
    # stress and the convenience getters, on the last frame
    # (the wrapped calculator's own numbers exactly; a fresh one's to rounding: its neighbour
    # list sums in another order)
    stress = atoms.get_stress()
    np.testing.assert_array_equal(stress, calc.calculator.results["stress"])
    probe = atoms.copy()
    probe.calc = kim()
    np.testing.assert_allclose(stress, probe.get_stress(), rtol=1e-12, atol=1e-15)
    np.testing.assert_array_equal(calc.get_uncertainty(atoms), seen[-1][1]["uncertainty"])
    assert calc.get_descriptor_distance(atoms).shape == (len(atoms),)


def test_stop_fires_on_a_hot_run_not_inside_the_training_distribution(score, desc):
    """max_distance set from the training set: a 300 K run (another seed) runs through;
    a run started at 6000 K (about 3000 K) stops with the frame where it left."""
    limit = 0.03
    calm = UncertaintyCalculator(kim(), score, descriptor=desc, num_nearest_neighbors=K, max_distance=limit)
    _, seen = run_md(calm, 600, seed=3, steps=30)
    assert len(seen) == 31
    assert max(r["descriptor_distance"].max() for _, r in seen) <= limit

    hot = UncertaintyCalculator(kim(), score, descriptor=desc, num_nearest_neighbors=K, max_distance=limit)
    atoms = crystal()
    thermalize(atoms, 6000, seed=3)
    atoms.calc = hot
    dyn = VelocityVerlet(atoms, 2 * units.fs)
    with pytest.raises(UncertaintyExceeded, match="max_distance") as info:
        dyn.run(30)
    err = info.value
    assert 0 < err.step < 30 and err.frame.info["step"] == err.step
    assert err.descriptor_distance.max() > limit
    # the frame is the configuration the run stopped at, with its scores and forces
    np.testing.assert_array_equal(err.frame.positions, atoms.positions)
    np.testing.assert_array_equal(err.frame.arrays["descriptor_distance"], err.descriptor_distance)
    np.testing.assert_array_equal(err.frame.arrays["uncertainty"], err.uncertainty)
    np.testing.assert_array_equal(err.frame.get_forces(), hot.calculator.results["forces"])
    probe = atoms.copy()
    probe.calc = kim()
    np.testing.assert_allclose(err.frame.get_forces(), probe.get_forces(), rtol=1e-12, atol=1e-12)
    err.frame.positions[0] += 1.0  # a copy: the run's atoms stay put
    assert not np.array_equal(err.frame.positions, atoms.positions)


def test_threshold_records_exactly_the_steps_above_it(score, desc, tmp_path):
    """on_exceed='record' with a threshold in eV/Å: the flagged steps are those whose max
    uncertainty (seen in a run without a threshold, same seed) is above it; the writer
    appends them to extxyz (scores kept) and traj."""
    free = UncertaintyCalculator(kim(), score, descriptor=desc, num_nearest_neighbors=K)
    _, seen = run_md(free, 3000, seed=5, steps=20)
    peaks = np.array([r["uncertainty"].max() for _, r in seen])
    threshold = float(np.median(peaks))
    want = [i for i, p in enumerate(peaks) if p > threshold]
    assert 0 < len(want) < len(peaks)

    calc = UncertaintyCalculator(kim(), score, descriptor=desc, num_nearest_neighbors=K, threshold=threshold,
                                 on_exceed="record")
    atoms = crystal()
    thermalize(atoms, 3000, seed=5)
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, 2 * units.fs)
    xyz = FlaggedFramesWriter(calc, tmp_path / "flagged.xyz")
    traj = FlaggedFramesWriter(calc, tmp_path / "flagged.traj")
    dyn.attach(xyz, interval=3)
    dyn.attach(traj, interval=7)
    dyn.run(20)
    xyz(), traj()  # what the last interval left
    assert [f.info["step"] for f in calc.flagged] == want
    back = read(tmp_path / "flagged.xyz", ":")
    assert [f.info["step"] for f in back] == want
    for f, g in zip(back, calc.flagged):
        np.testing.assert_allclose(f.arrays["uncertainty"], g.arrays["uncertainty"], rtol=1e-12)
        np.testing.assert_allclose(f.get_forces(), g.get_forces(), rtol=1e-12)
        np.testing.assert_allclose(f.positions, seen[f.info["step"]][0].positions, rtol=1e-12)
    assert len(read(tmp_path / "flagged.traj", ":")) == len(want)


def test_descriptors_from_the_wrapped_calculators_results(score, desc):
    """An ML-like calculator that returns its features in results['descriptors'] gives the
    same uncertainty as the descriptor object; a missing key is one clear error."""
    from ase.calculators.calculator import Calculator, all_changes

    class FeaturesCalculator(Calculator):
        """SW forces plus per-atom features in its results, as an ML potential gives them."""

        implemented_properties = ["energy", "forces"]

        def __init__(self):
            super().__init__()
            self.inner = kim()

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            for name in properties:
                self.results[name] = self.inner.get_property(name, self.atoms)
            self.results["descriptors"] = desc.compute(self.atoms)

    feat = FeaturesCalculator()
    atoms = crystal()
    thermalize(atoms, 600, seed=9)
    atoms.calc = UncertaintyCalculator(feat, score, num_nearest_neighbors=K)
    via_results = atoms.calc.get_uncertainty(atoms)
    again = atoms.copy()
    again.calc = UncertaintyCalculator(kim(), score, descriptor=desc, num_nearest_neighbors=K)
    np.testing.assert_array_equal(via_results, again.calc.get_uncertainty(again))

    plain = atoms.copy()
    plain.calc = UncertaintyCalculator(kim(), score, num_nearest_neighbors=K, descriptors_key="features")
    with pytest.raises(InputError, match=r"results\['features'\].*step 0.*energy"):
        plain.get_forces()


def test_bad_input_is_refused_at_construction(score, desc, train):
    x, logs = train
    from atomscore import QUESTSEfficiencyScore

    for bad in (None, LTAUForcesUQScore, QUESTSEfficiencyScore()):
        with pytest.raises(InputError, match="training set"):
            UncertaintyCalculator(kim(), bad, descriptor=desc)
    with pytest.raises(InputError, match=r"descriptor: gives 7 columns.*dimension 15"):
        UncertaintyCalculator(kim(), score, descriptor=QUESTSDescriptor(cutoff=4.0, k=4))
    for name in ("threshold", "max_distance"):
        for value in (-0.1, float("nan"), float("inf"), True, "0.2"):
            with pytest.raises(InputError, match=name):
                UncertaintyCalculator(kim(), score, descriptor=desc, **{name: value})
    with pytest.raises(InputError, match="'raise', 'record'"):
        UncertaintyCalculator(kim(), score, descriptor=desc, on_exceed="stop")
    with pytest.raises(InputError, match=f"at most the {len(x)}"):
        UncertaintyCalculator(kim(), score, descriptor=desc, num_nearest_neighbors=len(x) + 1)
    with pytest.raises(InputError, match="ASE calculator"):
        UncertaintyCalculator(object(), score, descriptor=desc)
    with pytest.raises(InputError, match="descriptor: expected"):
        UncertaintyCalculator(kim(), score, descriptor=42)
    calc = UncertaintyCalculator(kim(), score, descriptor=desc)
    with pytest.raises(InputError, match="already an UncertaintyCalculator"):
        UncertaintyCalculator(calc, score, descriptor=desc)
    # a callable gives its width only when called: refused at the first step, by shape
    atoms = crystal()
    atoms.calc = UncertaintyCalculator(kim(), score, descriptor=lambda a: np.zeros((len(a), 4)))
    with pytest.raises(InputError, match=r"expected shape \(64, 15\).*got \(64, 4\)"):
        atoms.get_forces()
    # the writer: existing file, single-frame format, unknown suffix
    with pytest.raises(InputError, match="exists"):
        FlaggedFramesWriter(calc, __file__)
    with pytest.raises(InputError, match="one frame"):
        FlaggedFramesWriter(calc, "/tmp/never-written-POSCAR", format="vasp")
    with pytest.raises(InputError, match="format"):
        FlaggedFramesWriter(calc, "/tmp/never-written.unknownsuffix")
    with pytest.raises(InputError, match="not found"):
        FlaggedFramesWriter(calc, "/no/such/folder/flagged.xyz")


# ---------------------------------------------------------------------------- index_path

def test_index_path_loads_instead_of_building(train, tmp_path, monkeypatch):
    """A saved index (file or LTAUEstimator.save folder), with or without the training
    descriptors, gives the scores of the built one -- and nothing is built."""
    import atomscore.ltau.estimator as kernel

    x, logs = train
    for index_type in ("IndexFlatL2", "IndexHNSWFlat"):
        built = LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=50, index_type=index_type)
        path = built.save_index(tmp_path / f"{index_type}.faiss")
        built.estimator.save(tmp_path / f"{index_type}-estimator")
        queries = crystal()
        thermalize(queries, 3000, seed=2)
        queries.positions += np.random.default_rng(0).normal(0, 0.1, size=queries.positions.shape)
        queries.arrays["descriptors"] = QUESTSDescriptor(cutoff=4.0, k=8).compute(queries)
        expected = built.compute(queries, "UNCERTAINTY", num_nearest_neighbors=K)
        with monkeypatch.context() as m:
            m.setattr(kernel, "build_index", lambda *a, **k: pytest.fail("built instead of loaded"))
            for source, descriptors in ((path, x), (path, None), (tmp_path / f"{index_type}-estimator", None)):
                loaded = LTAUForcesUQScore(descriptors, logs, from_error_logs=True, nbins=50,
                                           index_type=index_type, index_path=source)
                np.testing.assert_array_equal(loaded.compute(queries, "UNCERTAINTY", num_nearest_neighbors=K),
                                              expected)
    with pytest.raises(InputError, match="exists"):
        built.save_index(path)


def test_mismatched_index_is_refused(train, tmp_path):
    x, logs = train
    LTAUForcesUQScore(x[:, :10], logs, from_error_logs=True).save_index(tmp_path / "dim10.faiss")
    LTAUForcesUQScore(x[:100], logs[:, :100], from_error_logs=True).save_index(tmp_path / "n100.faiss")
    LTAUForcesUQScore(x + 1e-3, logs, from_error_logs=True).save_index(tmp_path / "other.faiss")
    LTAUForcesUQScore(x, logs, from_error_logs=True, index_type="IndexHNSWFlat").save_index(tmp_path / "hnsw.faiss")
    LTAUForcesUQScore(x, logs, from_error_logs=True).save_index(tmp_path / "x.faiss")
    (tmp_path / "junk.faiss").write_bytes(b"not an index")
    n, dim = x.shape
    cases = [("dim10", x, rf"{n} vectors of dimension {dim}.*got {n} of dimension 10"),
             ("n100", x, rf"{n} vectors of dimension {dim}.*got 100 of dimension {dim}"),
             ("n100", None, rf"{n} vectors.*got 100"),
             ("other", x, rf"not the training descriptors \({n} of {n} rows differ"),
             ("hnsw", x, r"expected a faiss IndexFlatL2 or IndexFlat for index_type='IndexFlatL2', got IndexHNSWFlat"),
             ("junk", x, r"is not a faiss index"),
             ("missing", x, r"not found")]
    for name, descriptors, message in cases:
        with pytest.raises(InputError, match=message):
            LTAUForcesUQScore(descriptors, logs, from_error_logs=True, index_path=tmp_path / f"{name}.faiss")
    one_off = x.copy()
    one_off[37, 2] += 1e-3
    with pytest.raises(InputError, match=rf"1 of {n} rows differ, first row 37"):
        LTAUForcesUQScore(one_off, logs, from_error_logs=True, index_path=tmp_path / "x.faiss")
    with pytest.raises(InputError, match="train_descriptors: expected the"):
        LTAUForcesUQScore(None, logs, from_error_logs=True)
    with pytest.raises(InputError, match="index_path: expected a path"):
        LTAUForcesUQScore(x, logs, from_error_logs=True, index_path=42)


def test_index_path_through_job_folders(train, tmp_path):
    """run() with index_path and no descriptors: the path travels in the init args, each
    subprocess job loads the index, results equal in-memory compute_batch."""
    from atomscore.jobs.workflow import LocalWorkflow

    x, logs = train
    built = LTAUForcesUQScore(x, logs, from_error_logs=True, nbins=50)
    path = built.save_index(tmp_path / "index.faiss")
    loaded = LTAUForcesUQScore(None, logs, from_error_logs=True, nbins=50, index_path=str(path))
    configs = []
    for seed in range(3):
        atoms = crystal()
        atoms.positions += np.random.default_rng(seed).normal(0, 0.05, size=atoms.positions.shape)
        atoms.arrays["descriptors"] = QUESTSDescriptor(cutoff=4.0, k=8).compute(atoms)
        configs.append(atoms)
    workflow = LocalWorkflow(root_directory=str(tmp_path / "jobs"), nprocs=2)
    ids = loaded.run("md_index", configs, {"score_quantity": "UNCERTAINTY", "num_nearest_neighbors": K},
                     workflow=workflow, batch_size=2)
    workflow.block_until_completed(ids, timeout=120)
    back = loaded.data_from_calc_ids(ids, workflow=workflow)
    expected = built.compute_batch(configs, "UNCERTAINTY", num_nearest_neighbors=K)
    for atoms, res in zip(back, expected):
        np.testing.assert_allclose(atoms.arrays["ltau_forces_uq_score"], res, rtol=1e-12)


def test_the_docs_example_runs_and_stops(tmp_path):
    """docs/md.md's example, run as written in a fresh process: the heating run stops
    (UncertaintyExceeded caught) before the thermostat reaches 3000 K and writes its figure."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "md.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, re.S)
    script = tmp_path / "md_example.py"
    script.write_text(block)
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    stop = re.search(r"stopped at step (\d+) \(thermostat (\d+) K", proc.stdout)
    assert stop and 0 < int(stop.group(1)) < 300 and int(stop.group(2)) < 3000, proc.stdout
    assert (tmp_path / "md_uncertainty.png").stat().st_size > 10_000


def test_the_callers_atoms_and_score_are_not_modified(score, desc):
    """Evaluating through the wrapper leaves the Atoms' arrays/info and the score's index as
    they were (the descriptor sees a copy)."""
    atoms = crystal()
    atoms.info["tag"] = "mine"
    before = {k: v.copy() for k, v in atoms.arrays.items()}
    ntotal = score.estimator.index.ntotal
    seen = []

    def describe(a):
        seen.append(a is atoms)
        a.positions += 1.0  # a hostile descriptor: must not reach the caller's Atoms
        return desc.compute(a)

    atoms.calc = UncertaintyCalculator(kim(), score, descriptor=describe, num_nearest_neighbors=K)
    atoms.get_forces()
    atoms.calc.get_uncertainty(atoms)
    assert seen == [False]
    assert atoms.info == {"tag": "mine"} and set(atoms.arrays) == set(before)
    for key, value in before.items():
        np.testing.assert_array_equal(atoms.arrays[key], value)
    assert score.estimator.index.ntotal == ntotal


def test_record_mode_keeps_flagged_frames_few(score, desc):
    """min_gap and min_frame_distance (issue 26): of the frames above the threshold, those
    recorded are a greedy walk in step order that keeps a frame only when it is at least
    min_gap steps after the last kept one and, with min_frame_distance, has an atom farther
    than it from every atom of the frames kept. Reference: the same walk over the frames of a
    run without a threshold (same seed), with scipy's cKDTree for the distances."""
    from scipy.spatial import cKDTree

    free = UncertaintyCalculator(kim(), score, descriptor=desc, num_nearest_neighbors=K)
    _, seen = run_md(free, 3000, seed=5, steps=20)
    peaks = np.array([r["uncertainty"].max() for _, r in seen])
    threshold = float(np.quantile(peaks, 0.25))
    above = [i for i, p in enumerate(peaks) if p > threshold]
    x = [np.asarray(desc.compute(frame)) for frame, _ in seen]

    def walk(gap, distance):
        kept = []
        for i in above:
            if kept and i - kept[-1] < gap:
                continue
            if distance is not None and kept:
                nearest, _ = cKDTree(np.concatenate([x[j] for j in kept])).query(x[i])
                if np.all(nearest <= distance):
                    continue
            kept.append(i)
        return kept

    # a distance that makes some, not all, frames duplicates
    first = cKDTree(x[above[0]])
    distance = float(np.median([first.query(x[i])[0].max() for i in above[1:]]))
    for gap, dist in ((3, None), (0, distance), (2, distance)):
        calc = UncertaintyCalculator(kim(), score, descriptor=desc, num_nearest_neighbors=K, threshold=threshold,
                                     on_exceed="record", min_gap=gap, min_frame_distance=dist)
        run_md(calc, 3000, seed=5, steps=20)
        want = walk(gap, dist)
        assert [f.info["step"] for f in calc.flagged] == want, (gap, dist)
        assert len(want) < len(above)  # fewer than the frames above the threshold
        assert calc.skipped["gap"] + calc.skipped["duplicate"] == len(above) - len(want)
        assert all(f.info.get("min_gap", 0) == gap for f in calc.flagged)
    with pytest.raises(InputError, match="on_exceed='record'"):
        UncertaintyCalculator(kim(), score, descriptor=desc, threshold=threshold, min_gap=5)
    with pytest.raises(InputError, match="min_gap"):
        UncertaintyCalculator(kim(), score, descriptor=desc, threshold=threshold, on_exceed="record", min_gap=-1)
