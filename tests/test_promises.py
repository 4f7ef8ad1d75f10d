"""Promises kept under attack (issue 21, items 3-8 and save_results' overwrite).

Each test is a hostile input that main at b951a2a accepted silently, crashed on or answered
with the wrong exit code. Commands run in process through ``atomscore.cli.main`` (the
same code as the ``atomscore`` executable, without a Python start per call); references:
ASE's own readers (``ase.io.read``, ``ase.db``) for what a file holds, the bytes of every
input before and after (sha256), the ``quests``-computed descriptors of the files.
"""

import errno
import hashlib
import json
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from atomscore.cli import main
from atomscore.errors import InputError
from atomscore.io import check_output, read_data, temporary_name, write_data

K = 4  # QUESTS neighbours: 7 columns, fast


def sha(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def labelled(n=3, seed=0):
    """Silicon configurations with calculator labels (energy, forces, stress) and info strings."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = bulk("Si", "diamond", 5.43, cubic=True)
        atoms.rattle(0.05, seed=seed + i)
        atoms.calc = SinglePointCalculator(atoms, energy=-4.3 * len(atoms) + 0.1 * i,
                                           forces=rng.normal(size=(len(atoms), 3)), stress=rng.normal(size=6))
        atoms.info.update(config_type="bulk", tag="007", scale="1.5", flag="True", step=i)
        out.append(atoms)
    return out


def with_descriptors(configs, cutoff):
    from atomscore import QUESTSDescriptor

    return QUESTSDescriptor(cutoff=cutoff, k=K).attach(configs, progress=False)


def run(argv, capsys):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


# ----------------------------------------------------------------------------- 3: never NaN with exit 0

def test_huge_descriptors_and_error_logs_are_refused_not_turned_into_nan(tmp_path, capsys):
    from atomscore import LTAUForcesUQScore
    from atomscore.errors import NonFiniteResultError
    from atomscore.quests.kernels import gaussian
    from atomscore.quests.selection import select

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)) * 1e200  # finite, but the squared distances overflow float64
    with pytest.raises(NonFiniteResultError, match="kernel sums.*descriptor values up to"):
        gaussian.entropy(x, 0.015)
    with pytest.raises(NonFiniteResultError):
        gaussian.delta_entropy(x[:2], x, 0.015)
    with pytest.raises(InputError, match="float32"):  # faiss: float32 (1e30 fits, its square does not)
        gaussian.approx_delta_entropy(x[:2] * 1e-170, x * 1e-170, 0.015)
    pool = labelled(4)
    for atoms in pool:
        atoms.arrays["descriptors"] = rng.normal(size=(len(atoms), 5)) * 1e200
    for method in ("entropy", "fps", "random"):  # the greedy gains and the per-step measures
        with pytest.raises(NonFiniteResultError, match="select"):
            select(pool, 2, method=method, pool_summary=False, progress=False)
    logs = np.abs(rng.normal(size=(10, 12))) * 1e300  # error logs: expected errors overflow
    with pytest.raises(NonFiniteResultError, match="error logs"):
        LTAUForcesUQScore(train_descriptors=rng.normal(size=(12, 5)), error_pdfs=logs, from_error_logs=True)

    write_data(tmp_path / "huge.xyz", pool)
    code, out, err = run(["entropy", tmp_path / "huge.xyz"], capsys)
    assert code == 1 and "nan" not in out.lower()
    assert "huge.xyz" in err and "non-finite" in err  # names the input and the stage


# ----------------------------------------------------------------------------- 4: settings on every route

@pytest.fixture(scope="module")
def cutoffs(tmp_path_factory):
    """The same structures with descriptors of cutoff 4 Å and 5 Å: the same width (2k - 1)."""
    folder = tmp_path_factory.mktemp("cutoffs")
    configs = labelled(3)
    four, five = with_descriptors(configs, 4.0), with_descriptors(configs, 5.0)
    assert four[0].arrays["descriptors"].shape == five[0].arrays["descriptors"].shape
    write_data(folder / "c4.xyz", four)
    write_data(folder / "c5.xyz", five)
    write_data(folder / "mixed.xyz", four[:2] + five[2:])
    n = sum(len(a) for a in five)
    np.save(folder / "errors.npy", np.abs(np.random.default_rng(1).normal(size=(5, n))) * 0.1)
    return folder


@pytest.mark.parametrize("argv", [
    ["dh", "c4.xyz", "--reference", "c5.xyz", "-o", "dh.xyz"],
    ["uq", "c4.xyz", "--train-descriptors", "c5.xyz", "--error-logs", "errors.npy", "-o", "uq.xyz"],
    ["entropy", "mixed.xyz"],
    ["dh", "mixed.xyz", "--reference", "mixed.xyz", "-o", "dh_mixed.xyz"],
    ["select", "c4.xyz", "-n", "1", "--reference", "c5.xyz", "-o", "selected.xyz"],
    ["overlap", "c4.xyz", "c5.xyz"],
])
def test_descriptors_of_other_settings_are_refused_by_every_command(cutoffs, argv, capsys, monkeypatch):
    monkeypatch.chdir(cutoffs)
    before = {p.name: sha(p) for p in cutoffs.iterdir()}
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert "settings" in err and "cutoff" in err
    assert {p.name: sha(p) for p in cutoffs.iterdir()} == before  # nothing written, inputs untouched


def test_the_python_scores_refuse_what_the_commands_refuse(cutoffs):
    from atomscore import QUESTSDeltaEntropyScore

    c4, c5 = read_data(cutoffs / "c4.xyz"), read_data(cutoffs / "c5.xyz")
    with pytest.raises(InputError, match="settings"):
        QUESTSDeltaEntropyScore().compute_batch(c4, "DELTA_ENTROPY", reference_set=c5)


def test_descriptor_widths_that_differ_within_a_file_are_named(tmp_path, capsys):
    configs = labelled(2)
    configs[0].arrays["descriptors"] = np.ones((len(configs[0]), 7))
    configs[1].arrays["descriptors"] = np.ones((len(configs[1]), 9))
    write_data(tmp_path / "widths.xyz", configs)
    code, _, err = run(["entropy", tmp_path / "widths.xyz"], capsys)
    assert code == 2 and "configuration 1" in err and "7 columns" in err, err


# ----------------------------------------------------------------------------- 5: read whole or refused

def test_truncated_empty_and_foreign_files_are_refused_and_never_changed(tmp_path, capsys):
    import ase.io

    write_data(tmp_path / "whole.xyz", labelled(4))
    text = (tmp_path / "whole.xyz").read_text()
    cut = tmp_path / "cut.xyz"
    cut.write_text(text[:text.rfind("e") - 3])  # cut inside the last number's digits
    assert len(ase.io.read(cut, ":")) == 4  # ASE alone reads it, with the cut number as another value
    with pytest.raises(InputError, match="cut short"):
        read_data(cut)
    lines = text.splitlines(keepends=True)
    (tmp_path / "frames.xyz").write_text("".join(lines[:-(len(lines) // 4)]))  # cut at a frame boundary
    with pytest.raises(InputError, match="3 of the 4 configurations"):
        read_data(tmp_path / "frames.xyz")
    for name in ("empty.db", "empty.xyz", "empty.traj"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(InputError, match="empty"):
            read_data(tmp_path / name)
        assert (tmp_path / name).stat().st_size == 0  # reading created no database in it
    (tmp_path / "text.db").write_text("not a database\n")
    with pytest.raises(InputError, match="SQLite"):
        read_data(tmp_path / "text.db")

    write_data(tmp_path / "real.db", labelled(2))
    before, mtime = sha(tmp_path / "real.db"), os.stat(tmp_path / "real.db").st_mtime_ns
    assert len(read_data(tmp_path / "real.db")) == 2
    assert sha(tmp_path / "real.db") == before and os.stat(tmp_path / "real.db").st_mtime_ns == mtime

    job = tmp_path / "run" / "00000"
    job.mkdir(parents=True)
    (job / "job.json").write_text('{"score": {"target": "atomscore.qu')  # half written
    code, _, err = run(["jobs", "collect", job.parent, "-o", tmp_path / "c.xyz"], capsys)
    assert code == 2 and "job.json" in err and "not valid JSON" in err, err

    code, _, err = run(["descriptors", tmp_path / "empty.xyz", "-o", tmp_path / "d.xyz"], capsys)
    assert code == 2 and "empty" in err and not (tmp_path / "d.xyz").exists()
    code, _, err = run(["entropy", cut], capsys)
    assert code == 2 and "cut.xyz" in err
    code, _, err = run(["select", tmp_path / "whole.xyz", "-n", "1", "--reference", tmp_path / "empty.xyz",
                        "-o", tmp_path / "s.xyz"], capsys)
    assert code == 2 and "empty" in err and not (tmp_path / "s.xyz").exists()


# ----------------------------------------------------------------------------- 6: nothing lost

def test_an_output_that_appears_while_computing_is_never_replaced(tmp_path, capsys, monkeypatch):
    from atomscore.quests.descriptor import QUESTSDescriptor

    write_data(tmp_path / "in.xyz", labelled(2))
    out = tmp_path / "out.xyz"
    attach = QUESTSDescriptor.attach

    def racing_attach(self, configs, progress=None):  # another command writes the same output meanwhile
        out.write_text("the other command's result\n")
        return attach(self, configs, progress=progress)

    monkeypatch.setattr(QUESTSDescriptor, "attach", racing_attach)
    code, _, err = run(["descriptors", tmp_path / "in.xyz", "-o", out, "-k", K], capsys)
    assert code == 2 and "exists" in err
    assert out.read_text() == "the other command's result\n"
    assert not list(tmp_path.glob(".*.tmp"))  # the temporary file is gone


def test_publish_links_without_clobbering_and_save_results_refuses_an_existing_file(tmp_path):
    from atomscore import QUESTSEfficiencyScore
    from atomscore.io import publish

    target = tmp_path / "r.json"
    target.write_text("mine")
    tmp = temporary_name(target)
    tmp.write_text("new")
    with pytest.raises(InputError, match="exists"):
        publish(tmp, target, overwrite=False)
    assert target.read_text() == "mine" and not tmp.exists()

    score = QUESTSEfficiencyScore()
    configs = with_descriptors(labelled(2), 4.0)
    value = score.compute(configs, "EFFICIENCY")
    path = score.save_results(value, tmp_path)
    first = sha(path)
    with pytest.raises(InputError, match="exists"):
        score.save_results(value, tmp_path)
    assert sha(path) == first
    assert score.save_results(value, tmp_path, overwrite=True) == path


def test_flagged_frames_never_go_into_a_file_that_appeared_or_was_replaced(tmp_path, uq_calculator):
    from atomscore.ltau.md import FlaggedFramesWriter

    calc, _ = uq_calculator
    for name in ("late.xyz", "late.traj"):
        writer = FlaggedFramesWriter(calc, tmp_path / name)
        (tmp_path / name).write_bytes(b"someone else's file")  # appears after the writer was made
        calc.flagged[:] = labelled(1)
        with pytest.raises(InputError, match="appeared"):
            writer()
        assert (tmp_path / name).read_bytes() == b"someone else's file"

    writer = FlaggedFramesWriter(calc, tmp_path / "mine.xyz")
    assert writer() == 1 and len(read_data(tmp_path / "mine.xyz")) == 1
    (tmp_path / "other.xyz").write_text("replaced\n")
    os.replace(tmp_path / "other.xyz", tmp_path / "mine.xyz")
    calc.flagged[:] = labelled(2)
    with pytest.raises(InputError, match="replaced"):
        writer()
    assert (tmp_path / "mine.xyz").read_text() == "replaced\n"
    calc.flagged.clear()


def test_outputs_are_never_written_inside_a_job_folder(tmp_path):
    job = tmp_path / "run" / "00000"
    job.mkdir(parents=True)
    (job / "job.json").write_text("{}")
    for target in (job / "score_results.xyz", job / "sub" / "x.xyz"):
        target.parent.mkdir(exist_ok=True)
        with pytest.raises(InputError, match="inside the job folder"):
            check_output(target, overwrite=True)
    assert check_output(tmp_path / "run" / "gathered.xyz") == tmp_path / "run" / "gathered.xyz"


def test_a_full_disk_names_the_output(tmp_path, monkeypatch, capsys):
    import atomscore.io

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    write_data(tmp_path / "in.xyz", labelled(2))
    monkeypatch.setattr(atomscore.io, "write_extxyz", full)
    code, _, err = run(["descriptors", tmp_path / "in.xyz", "-o", tmp_path / "out.xyz", "-k", K], capsys)
    assert code == 2 and "No space left" in err and "out.xyz" in err, err
    assert not list(tmp_path.glob(".*"))


# ----------------------------------------------------------------------------- 7: outputs keep the input

def test_dh_and_uq_write_the_input_as_read_plus_the_scores(tmp_path, capsys, monkeypatch):
    import ase.io

    configs = labelled(3)
    write_data(tmp_path / "test.xyz", configs)
    write_data(tmp_path / "train.xyz", labelled(2, seed=7))
    np.save(tmp_path / "errors.npy", np.abs(np.random.default_rng(2).normal(size=(4, 16))) * 0.1)
    runs = {"dh": ["dh", "test.xyz", "--reference", "train.xyz", "-k", K],
            "uq": ["uq", "test.xyz", "--train-descriptors", "train.xyz", "--error-logs", "errors.npy", "-k", K]}
    monkeypatch.chdir(tmp_path)
    for name, argv in runs.items():
        code, _, err = run([*argv, "-o", f"{name}.xyz"], capsys)
        assert code == 0, err
        given, written = ase.io.read("test.xyz", ":"), ase.io.read(f"{name}.xyz", ":")  # ASE's reader: reference
        for a, b in zip(given, written):
            for prop in ("energy", "forces", "stress"):
                np.testing.assert_array_equal(a.calc.results[prop], b.calc.results[prop])
            assert {k: b.info[k] for k in a.info} == a.info
            assert "descriptors" not in b.arrays  # 63 columns per atom only when asked
        assert sorted(set(written[0].arrays) - set(given[0].arrays)) == [
            "ltau_forces_uq_score" if name == "uq" else "quests_delta_entropy_score"]
        mine = read_data(f"{name}.xyz")
        assert [a.info["tag"] for a in mine] == ["007"] * 3 and mine[0].info["scale"] == "1.5"
        assert mine[0].info["flag"] == "True"  # strings stay strings
    code, _, err = run([*runs["dh"], "-o", "kept.xyz", "--keep-descriptors"], capsys)
    assert code == 0 and read_data("kept.xyz")[0].arrays["descriptors"].shape == (8, 2 * K - 1)


def test_numpy_integers_read_from_extxyz_are_written_to_a_database(tmp_path):
    import ase.db

    write_data(tmp_path / "a.xyz", labelled(2))
    configs = read_data(tmp_path / "a.xyz")
    assert isinstance(configs[1].info["step"], np.integer)  # what ASE's extxyz reader gives
    write_data(tmp_path / "a.db", configs)
    with ase.db.connect(tmp_path / "a.db") as db:  # ASE's own reader as the reference
        assert [row.step for row in db.select()] == [0, 1]
    assert read_data(tmp_path / "a.db")[1].info["tag"] == "007"


def test_run_and_collect_write_a_database_and_never_into_a_job_folder(tmp_path, capsys, monkeypatch):
    import ase.db

    monkeypatch.chdir(tmp_path)
    configs = with_descriptors(labelled(3), 4.0)
    write_data("in.xyz", configs)
    np.save("ref.npy", np.concatenate([a.arrays["descriptors"] for a in configs[:2]]))
    spec = {"batch_size": 10, "score": {"score_type": "QUESTSDeltaEntropyScore", "query_configs_path": "in.xyz",
                                        "score_args": {}, "compute_args": {"score_quantity": "DELTA_ENTROPY",
                                                                           "reference_set": "ref.npy"}}}
    Path("spec.json").write_text(json.dumps(spec))
    code, _, err = run(["run", "spec.json", "--root", "jobs", "-o", "results.db"], capsys)
    assert code == 0, err  # the README's own example
    with ase.db.connect("results.db") as db:  # ASE's reader as the reference
        assert db.count() == 3
    back = read_data("results.db")
    np.testing.assert_array_equal(back[2].get_forces(), configs[2].get_forces())  # labels kept
    assert back[0].info["tag"] == "007"

    [folder] = [p.parent for p in Path("jobs").rglob("job.json")]
    before = sha(folder / "score_results.xyz")
    code, _, err = run(["jobs", "collect", folder.parent, "-o", folder / "score_results.xyz", "--overwrite"], capsys)
    assert code == 2 and "inside the job folder" in err
    assert sha(folder / "score_results.xyz") == before
    code, _, err = run(["jobs", "collect", folder.parent, "-o", "again.db"], capsys)
    assert code == 0, err


# ----------------------------------------------------------------------------- 8: crashes and exit codes

def test_sigterm_and_an_interrupt_inside_compiled_code_exit_130(tmp_path, capsys, monkeypatch):
    import atomscore.cli.quests as quests_cli

    write_data(tmp_path / "in.xyz", labelled(2))

    def killed(args):  # a real SIGTERM to this process while the command computes
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        raise AssertionError("SIGTERM did not stop the command")

    monkeypatch.setattr(quests_cli, "dataset_information", killed)
    handler = signal.getsignal(signal.SIGTERM)
    code, _, err = run(["entropy", tmp_path / "in.xyz"], capsys)
    assert code == 130 and "interrupted" in err
    assert signal.getsignal(signal.SIGTERM) is handler  # the command's handler is gone after it

    def numba_interrupted(args):  # what numba's compiled kernel turns a Ctrl-C into
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise SystemError("<function> returned a result with an exception set") from exc

    monkeypatch.setattr(quests_cli, "dataset_information", numba_interrupted)
    assert run(["entropy", tmp_path / "in.xyz"], capsys)[0] == 130


@pytest.mark.parametrize("argv, message", [
    (["select", "in.xyz", "-n", "1", "--method", "k_means", "--seed", "-1", "-o", "o.xyz"], "--seed"),
    (["select", "blank.xyz", "--atoms", "5", "-o", "o.xyz"], "no configurations"),
])
def test_select_refuses_instead_of_crashing(tmp_path, capsys, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    write_data(tmp_path / "in.xyz", labelled(2))
    (tmp_path / "blank.xyz").write_text("\n")
    code, _, err = run(argv, capsys)
    assert code == 2 and message in err, err
    assert not (tmp_path / "o.xyz").exists()


def test_overwrite_replaces_only_when_asked(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_data("in.xyz", with_descriptors(labelled(3), 4.0))
    argv = ["select", "in.xyz", "-n", "1", "--method", "random", "-o", "o.xyz", "--summary", "s.json"]
    assert run(argv, capsys)[0] == 0
    first = sha("o.xyz")
    code, _, err = run(argv + ["--seed", "1"], capsys)
    assert code == 2 and "exists" in err and sha("o.xyz") == first
    code, _, err = run(argv + ["--seed", "1", "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads(Path("s.json").read_text())["seed"] == 1


def test_a_hand_edited_status_is_shown_not_a_crash(tmp_path, capsys):
    job = tmp_path / "run" / "00000"
    job.mkdir(parents=True)
    (job / "job.json").write_text("{}")
    (job / "status.json").write_text(json.dumps({"state": ["x"], "seconds": "long", "error": 5, "exit_code": "1"}))
    code, out, err = run(["jobs", "status", tmp_path], capsys)
    assert code == 1 and "failed" in out and not err


def test_a_missing_kim_model_is_bad_input(capsys):
    from atomscore.cli import describe_error
    from atomscore.errors import PotentialError
    from atomscore.potentials.kim import KIMPotential

    with pytest.raises(PotentialError) as info:  # still a PotentialError for code that catches those
        KIMPotential("SW_NoSuchModel__MO_000000000000_000")
    code, line = describe_error(info.value)
    assert code == 2 and "not installed" in line


def test_nprocs_is_never_dropped_for_a_workflow_of_the_spec(tmp_path, capsys):
    write_data(tmp_path / "in.xyz", with_descriptors(labelled(2), 4.0))
    spec = {"workflow": {"workflow_type": "SLURM", "workflow_args": {}},
            "score": {"score_type": "QUESTSDeltaEntropyScore", "query_configs_path": "in.xyz", "score_args": {},
                      "compute_args": {"score_quantity": "DELTA_ENTROPY", "reference_set": "in.xyz"}}}
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    code, _, err = run(["run", tmp_path / "spec.json", "--base-dir", tmp_path, "--root", tmp_path / "jobs",
                        "--nprocs", "2"], capsys)
    assert code == 2 and "--nprocs" in err and "SLURM" in err
    assert not (tmp_path / "jobs").exists()


@pytest.fixture
def uq_calculator():
    """An UncertaintyCalculator around a calculator that counts its calls."""
    from ase.calculators.calculator import Calculator

    from atomscore import LTAUForcesUQScore, QUESTSDescriptor
    from atomscore.ltau.md import UncertaintyCalculator

    class Wrapped(Calculator):
        implemented_properties = ["energy", "forces"]
        calls = 0

        def calculate(self, atoms=None, properties=("energy",), system_changes=()):
            Wrapped.calls += 1
            super().calculate(atoms, properties, system_changes)
            self.results = {"energy": 0.0, "forces": np.zeros((len(atoms), 3))}

    rng = np.random.default_rng(3)
    score = LTAUForcesUQScore(train_descriptors=rng.normal(size=(16, 2 * K - 1)),
                              error_pdfs=np.abs(rng.normal(size=(5, 16))), from_error_logs=True)
    return UncertaintyCalculator(Wrapped(), score, descriptor=QUESTSDescriptor(cutoff=4.0, k=K)), Wrapped


def test_uncertainty_calculator_checks_positions_before_the_wrapped_calculator(uq_calculator):
    calc, wrapped = uq_calculator
    atoms = labelled(1)[0]
    atoms.calc = calc
    atoms.get_forces()
    assert wrapped.calls == 1  # a finite configuration goes through
    atoms.positions[3, 1] = np.nan  # ASE's KIM calculator crashes the process on this
    with pytest.raises(InputError, match="finite positions"):
        atoms.get_forces()
    assert wrapped.calls == 1
