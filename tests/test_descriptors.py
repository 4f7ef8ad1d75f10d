"""QUESTSDescriptor and ``atomscore descriptors`` against the ``quests`` package.

Reference: ``quests.descriptor.get_descriptors`` called directly on the same structures
(rattled and strained Si diamond and Cu fcc cells, a slab, C60); plus geometric facts that
hold for any correct descriptor (a perfect crystal has one environment; the descriptor
ignores species, as quests documents; translation invariance).
"""

import subprocess
import sys

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule

quests_descriptor = pytest.importorskip("quests.descriptor")

from atomscore import QUESTSDescriptor  # noqa: E402
from atomscore.errors import InputError  # noqa: E402
from atomscore.io import read_extxyz  # noqa: E402


def _structures():
    si = bulk("Si", "diamond", 5.43, cubic=True).repeat((2, 2, 1))
    si.rattle(0.05, seed=1)
    cu = bulk("Cu", "fcc", 3.61, cubic=True).repeat(2)
    cu.set_cell(cu.cell * [1.02, 0.99, 1.0], scale_atoms=True)
    cu.rattle(0.03, seed=2)
    slab = bulk("Si", "diamond", 5.43, cubic=True).repeat((2, 2, 2))
    slab.pbc = [True, True, False]
    c60 = molecule("C60")
    return [si, cu, slab, c60]


def test_compute_equals_quests_per_configuration():
    """compute(atoms) is quests.descriptor.get_descriptors([atoms]) for periodic, slab and molecule."""
    d = QUESTSDescriptor(cutoff=5.0, k=32)
    for atoms in _structures():
        ours = d.compute(atoms)
        ref = quests_descriptor.get_descriptors([atoms.copy()], k=32, cutoff=5.0)
        assert ours.shape == (len(atoms), 63)
        np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-12)  # computed by us since issue 27: ~1e-15


def test_other_k_and_cutoff():
    """k and cutoff are passed through: shape 2k-1 and quests' values."""
    atoms = _structures()[0]
    ours = QUESTSDescriptor(cutoff=4.0, k=8).compute(atoms)
    assert ours.shape == (len(atoms), 15)
    np.testing.assert_allclose(ours, quests_descriptor.get_descriptors([atoms.copy()], k=8, cutoff=4.0),
                               rtol=0, atol=1e-12)


def test_geometry_facts():
    """Perfect diamond: all environments equal; translation does not change the descriptor;
    species are ignored (as quests does): Si -> Ge relabelled gives the same numbers."""
    d = QUESTSDescriptor()
    x = d.compute(bulk("Si", "diamond", 5.43, cubic=True))
    np.testing.assert_allclose(x, np.broadcast_to(x[0], x.shape), atol=1e-12)
    atoms = _structures()[0]
    moved = atoms.copy()
    moved.translate([0.3, -1.1, 2.0])
    np.testing.assert_allclose(d.compute(moved), d.compute(atoms), atol=1e-12)
    relabelled = atoms.copy()
    relabelled.set_chemical_symbols(["Ge"] * len(atoms))
    np.testing.assert_array_equal(d.compute(relabelled), d.compute(atoms))


def test_attach_returns_new_atoms_and_keeps_inputs():
    """attach gives copies with arrays[key] equal to the batched quests call; inputs untouched."""
    configs = _structures()
    before = [(a.positions.copy(), dict(a.arrays), dict(a.info)) for a in configs]
    configs[0].calc = None
    from ase.calculators.singlepoint import SinglePointCalculator

    configs[1].calc = SinglePointCalculator(configs[1], energy=-1.5)
    out = QUESTSDescriptor(key="qd").attach(configs, progress=False)
    ref = quests_descriptor.get_descriptors([a.copy() for a in configs], k=32, cutoff=5.0)
    assert [len(a) for a in out] == [len(a) for a in configs]
    np.testing.assert_allclose(np.vstack([a.arrays["qd"] for a in out]), ref, rtol=0, atol=1e-12)
    for a, new, (pos, arrays, info) in zip(configs, out, before):
        assert new is not a and "qd" not in a.arrays
        assert set(a.arrays) == set(arrays) and a.info == info
        np.testing.assert_array_equal(a.positions, pos)
    assert out[1].get_potential_energy() == -1.5


def test_empty_configuration_and_empty_list():
    """An Atoms with no atoms gives a (0, 2k-1) array; an empty list gives an empty list."""
    d = QUESTSDescriptor(k=4)
    assert d.compute(Atoms()).shape == (0, 7)
    assert d.attach([]) == []


@pytest.mark.parametrize("make,match", [
    (lambda: QUESTSDescriptor(cutoff=0.0), "cutoff"),
    (lambda: QUESTSDescriptor(k=0), "k"),
    (lambda: QUESTSDescriptor(key=""), "key"),
    (lambda: QUESTSDescriptor().compute_batch([bulk("Si"), "not atoms"]), "configuration 1"),
    (lambda: QUESTSDescriptor().compute_batch(bulk("Si")), "single Atoms"),
    (lambda: QUESTSDescriptor().compute(Atoms("H", positions=[[np.nan, 0, 0]])), "finite"),
])
def test_bad_input(make, match):
    """One InputError each, naming the argument or configuration."""
    with pytest.raises(InputError, match=match):
        make()


def test_cli_descriptors(tmp_path):
    """``atomscore descriptors IN -o OUT`` writes the descriptors quests computes."""
    import ase.io

    configs = _structures()[:2]
    ase.io.write(tmp_path / "in.xyz", configs)
    proc = subprocess.run([sys.executable, "-m", "atomscore.cli", "descriptors", str(tmp_path / "in.xyz"),
                           "-o", str(tmp_path / "out.xyz"), "-k", "16"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = read_extxyz(tmp_path / "out.xyz")
    ref = quests_descriptor.get_descriptors(ase.io.read(tmp_path / "in.xyz", ":"), k=16, cutoff=5.0)
    np.testing.assert_allclose(np.vstack([a.arrays["descriptors"] for a in out]), ref, rtol=0, atol=1e-12)
    bad = subprocess.run([sys.executable, "-m", "atomscore.cli", "descriptors", str(tmp_path / "missing.xyz"),
                          "-o", str(tmp_path / "o.xyz")], capture_output=True, text=True)
    assert bad.returncode == 2 and "not found" in bad.stderr and not (tmp_path / "o.xyz").exists()
