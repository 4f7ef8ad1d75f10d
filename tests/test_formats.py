"""Configurations and results by suffix (atomscore.io), through the library and the real CLI.

References: the values written (float64 bit for bit, compared with numpy.array_equal); ASE's
own readers (``ase.io.read``, ``ase.db.connect``) for files that other tools must read.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from atomscore.errors import InputError
from atomscore.io import check_output, read_configs, read_data, write_data

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = [".xyz", ".extxyz", ".traj", ".db", ".json"]


def configs():
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        atoms = bulk("Si", "diamond", 5.43, cubic=True).repeat((1, 1, 1 + i % 2))
        atoms.rattle(0.01, seed=i)
        n = len(atoms)
        atoms.arrays["quests_delta_entropy_score"] = np.pi + rng.random(n) * 1e-3  # needs all 17 digits
        atoms.arrays["descriptors"] = rng.random((n, 5))
        atoms.arrays["selection_mask"] = rng.random(n) > 0.5
        atoms.arrays["ids"] = np.arange(n)
        atoms.info["fim_training_set_score"] = rng.random((2, 2))
        atoms.info["quests_delta_entropy_bandwidth"] = 0.015 + rng.random() * 1e-9
        atoms.info["flag"] = True
        atoms.info["label"] = "two words"
        atoms.info["_metadata"] = {"quests_delta_entropy": {"bandwidth": 0.0150000001, "approx": False}}
        atoms.calc = SinglePointCalculator(atoms, energy=rng.random(), forces=rng.random((n, 3)),
                                           stress=rng.random(6))
        out.append(atoms)
    water = molecule("H2O")
    water.set_constraint(FixAtoms([0]))
    water.arrays["quests_delta_entropy_score"] = rng.random(3)
    out.append(water)
    return out


def assert_same(images, back):
    assert len(back) == len(images)
    for a, b in zip(images, back):
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.cell.array, b.cell.array)
        assert (a.pbc == b.pbc).all() and (a.numbers == b.numbers).all()
        for key, value in a.arrays.items():
            assert np.array_equal(np.asarray(value), np.asarray(b.arrays[key]).reshape(np.shape(value))), key
        for key, value in a.info.items():
            if isinstance(value, np.ndarray):
                assert np.array_equal(value, b.info[key]), key
            else:
                assert value == b.info[key], key
        if a.calc is not None:
            for prop in ("energy", "forces", "stress"):
                assert np.array_equal(a.calc.results[prop], b.calc.results[prop]), prop
        assert [c.todict() for c in a.constraints] == [c.todict() for c in b.constraints]


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_configurations_round_trip_exactly(tmp_path, suffix):
    images = configs()
    path = write_data(tmp_path / f"out{suffix}", images)
    assert_same(images, read_data(path))
    assert not list(tmp_path.glob(".*tmp")) and not list(tmp_path.glob("*.lock"))  # renamed, no lock left
    import ase.io  # other tools read the file too: ASE's own reader gets the structures back exactly

    theirs = ase.io.read(path, ":")
    assert len(theirs) == len(images)
    assert all(np.array_equal(a.positions, b.positions) for a, b in zip(images, theirs))


def test_extxyz_floats_keep_17_digits_and_ase_reads_them(tmp_path):
    """ASE's reader, not ours, gets the exact values back; nothing of ASE is patched while writing."""
    import ase.io
    import ase.io.extxyz

    before = ase.io.extxyz.output_column_format
    images = configs()
    write_data(tmp_path / "a.xyz", images)
    assert ase.io.extxyz.output_column_format is before
    back = ase.io.read(tmp_path / "a.xyz", ":")
    assert np.array_equal(back[0].arrays["quests_delta_entropy_score"], images[0].arrays["quests_delta_entropy_score"])
    assert np.array_equal(back[1].positions, images[1].positions)


def test_the_database_keeps_scores_in_data_and_scalars_as_key_value_pairs(tmp_path):
    import ase.db

    images = configs()
    write_data(tmp_path / "a.db", images)
    row = ase.db.connect(tmp_path / "a.db").get(id=1)
    assert np.array_equal(row.data["quests_delta_entropy_score"], images[0].arrays["quests_delta_entropy_score"])
    assert row.key_value_pairs["quests_delta_entropy_bandwidth"] == images[0].info["quests_delta_entropy_bandwidth"]
    assert row.flag is True and row.label == "two words"
    assert np.array_equal(row.data["fim_training_set_score"], images[0].info["fim_training_set_score"])
    assert row.data["_metadata"] == images[0].info["_metadata"]


def test_results_json_and_configurations_in_any_format_ase_reads(tmp_path):
    import ase.io

    write_data(tmp_path / "r.json", {"quests_efficiency_score": np.float64(0.5), "_metadata": {"bandwidth": 0.1}})
    assert read_data(tmp_path / "r.json") == {"quests_efficiency_score": 0.5, "_metadata": {"bandwidth": 0.1}}
    ase.io.write(tmp_path / "POSCAR", bulk("Cu", "fcc", 3.6), format="vasp")
    assert read_configs(tmp_path / "POSCAR")[0].get_chemical_formula() == "Cu"
    (tmp_path / "run.lammpstrj").write_text(  # a LAMMPS text dump, as `dump d all atom` style files
        "ITEM: TIMESTEP\n0\nITEM: NUMBER OF ATOMS\n2\nITEM: BOX BOUNDS pp pp pp\n0 5.43\n0 5.43\n0 5.43\n"
        "ITEM: ATOMS id type x y z\n1 1 0.0 0.0 0.0\n2 1 1.3575 1.3575 1.3575\n")
    dump = read_configs(tmp_path / "run.lammpstrj")
    assert len(dump) == 1 and np.allclose(dump[0].positions[1], [1.3575] * 3) and dump[0].cell[0, 0] == 5.43
    with pytest.raises(InputError, match="holds dict data, not configurations"):
        read_configs(tmp_path / "r.json")
    (tmp_path / "junk.xyz").write_text("not a structure\n")
    with pytest.raises(InputError, match="cannot read .*junk.xyz"):
        read_data(tmp_path / "junk.xyz")


def test_check_output_refuses_before_anything_is_written(tmp_path):
    (tmp_path / "in.xyz").write_text("x")
    with pytest.raises(InputError, match="unknown suffix '.npy'"):
        check_output(tmp_path / "o.npy")
    with pytest.raises(InputError, match="does not exist"):
        check_output(tmp_path / "missing" / "o.xyz")
    with pytest.raises(InputError, match="also an input"):
        check_output(tmp_path / "sub" / ".." / "in.xyz", inputs=[tmp_path / "in.xyz"], overwrite=True)
    with pytest.raises(InputError, match="exists; results never overwrite"):
        check_output(tmp_path / "in.xyz")
    assert check_output(tmp_path / "in.xyz", overwrite=True) == tmp_path / "in.xyz"
    with pytest.raises(InputError, match="unknown suffix"):
        write_data(tmp_path / "o.txt", configs())


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_folder_is_refused(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(InputError, match="not writable"):
            check_output(folder / "o.xyz")
    finally:
        folder.chmod(0o700)


@pytest.mark.parametrize("suffix", [".xyz", ".traj", ".db"])
def test_the_descriptors_command_writes_and_reads_every_format(tmp_path, suffix):
    """The real CLI: input in one format, output in another, read back by ``dh`` with the same values."""
    import ase.io

    from atomscore.quests.descriptor import QUESTSDescriptor

    images = [bulk("Si", "diamond", 5.43, cubic=True) for _ in range(2)]
    for i, atoms in enumerate(images):
        atoms.rattle(0.02, seed=i)
    source = tmp_path / ("in.traj" if suffix != ".traj" else "in.xyz")
    ase.io.write(source, images)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    out = tmp_path / f"out{suffix}"
    proc = subprocess.run([sys.executable, "-m", "atomscore.cli", "descriptors", str(source), "-o", str(out),
                           "-k", "8", "--no-progress"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    expected = QUESTSDescriptor(k=8).compute_batch(read_configs(source), progress=False)
    back = read_configs(out)
    for x, atoms in zip(expected, back):
        assert np.array_equal(atoms.arrays["descriptors"], x)
    again = subprocess.run([sys.executable, "-m", "atomscore.cli", "descriptors", str(source), "-o", str(out)],
                           capture_output=True, text=True, timeout=120, env=env)
    assert again.returncode == 2 and "exists; results never overwrite" in again.stderr
    assert again.stderr.count("\n") == 1 and "Traceback" not in again.stderr


def test_save_results_writes_by_the_suffix_of_filename(tmp_path):
    """An atom-centred score saved as .db and .traj reads back equal to compute_batch; a dataset score only as .json."""
    from atomscore import QUESTSDeltaEntropyScore, QUESTSEfficiencyScore
    from atomscore.quests.descriptor import QUESTSDescriptor

    data = QUESTSDescriptor(k=8).attach([bulk("Si", "diamond", 5.43, cubic=True) for _ in range(2)])
    data[1].rattle(0.1, seed=1)
    data = QUESTSDescriptor(k=8).attach(data)
    score = QUESTSDeltaEntropyScore()
    dh = score.compute_batch(data, "DELTA_ENTROPY", reference_set=data[0].arrays["descriptors"], bandwidth=0.1)
    for name in ("dh.db", "dh.traj", "dh.json"):
        path = score.save_results(dh, tmp_path, list_of_configs=data, filename=name)
        back = read_configs(path)
        for atoms, values in zip(back, dh):
            assert np.array_equal(atoms.arrays["quests_delta_entropy_score"], values), name
        assert back[0].info["_metadata"]["quests_delta_entropy"]["bandwidth"] == 0.1
    efficiency = QUESTSEfficiencyScore()
    value = efficiency.compute(data, "EFFICIENCY", bandwidth=0.1)
    with pytest.raises(InputError, match="expected one of .json"):
        efficiency.save_results(value, tmp_path, filename="eff.xyz")
    assert read_data(efficiency.save_results(value, tmp_path))["quests_efficiency_score"] == value


def test_write_configs_takes_our_formats_exactly_and_other_ase_formats_through_ase(tmp_path):
    import ase.io

    from atomscore.io import write_configs

    images = configs()
    assert_same(images, read_data(write_configs(tmp_path / "a.db", images)))
    cells = [bulk("Cu", "fcc", 3.6 + 0.1 * i) for i in range(2)]
    write_configs(tmp_path / "b.cif", cells)
    back = ase.io.read(tmp_path / "b.cif", ":")
    assert len(back) == 2 and np.allclose(back[1].cell.lengths(), cells[1].cell.lengths())
    with pytest.raises(InputError, match="list of ase.Atoms"):
        write_configs(tmp_path / "c.xyz", {"not": "atoms"})
    assert not list(tmp_path.glob(".*"))
