"""Our own QUESTS descriptors (issue 27 item 3) against the reference, ``quests.descriptor.get_descriptors``.

Every case compares :func:`atomscore.quests.descriptor.compute_descriptors` with quests' numba
descriptor on the same structure; the structures are rattled so that no two neighbours of an
atom are exactly equidistant (where the k-th and (k+1)-th are, which one is kept is arbitrary
in both codes).
"""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from quests.descriptor import get_descriptors

from atomscore import InputError, QUESTSDescriptor
from atomscore.quests.descriptor import compute_descriptors

TOL = 1e-12  # absolute, on numbers of order 0.1-1


def _rattled(atoms, amount, seed):
    atoms = atoms.copy()
    atoms.rattle(amount, seed=seed)
    return atoms


def _triclinic():
    atoms = bulk("Si", "diamond", 5.43).repeat((3, 2, 2))  # primitive fcc cell: 60-degree angles
    return _rattled(atoms, 0.05, 3)


def _sparse():
    # 6 atoms in a 14 A periodic box: most have fewer than k neighbours, one has none
    rng = np.random.default_rng(4)
    pos = np.vstack([rng.uniform(0.0, 3.0, size=(5, 3)) + 1.0, [[9.0, 9.0, 9.0]]])
    return Atoms("Cu6", positions=pos, cell=np.eye(3) * 14.0, pbc=True)


def _alloy():
    atoms = bulk("Cu", "fcc", 3.61, cubic=True).repeat((3, 3, 3))
    symbols = np.array(atoms.get_chemical_symbols())
    symbols[np.random.default_rng(5).random(len(atoms)) < 0.4] = "Au"
    atoms.set_chemical_symbols(symbols.tolist())
    return _rattled(atoms, 0.08, 5)


def _slab():
    atoms = _rattled(bulk("Cu", "fcc", 3.61, cubic=True).repeat((3, 3, 2)), 0.05, 6)
    atoms.pbc = [True, True, False]  # quests: periodic only when all three are; so here: open
    return atoms


def _close_pair():
    # an extra atom 0.02 A from another: pair distances below 0.1 cutoff are taken as differences of the
    # neighbour vectors; from |D_j|^2 + |D_l|^2 - 2 D_j.D_l they would be 3e-12 off quests here
    atoms = _rattled(bulk("Cu", "fcc", 3.61, cubic=True).repeat((3, 3, 3)), 0.05, 10)
    atoms += Atoms("H", positions=[atoms.positions[5] + [0.02, 0.0, 0.0]])
    return atoms


def _tiny_triclinic():
    # one atom in a skewed 2.3-2.6 A cell: the cutoff reaches 3 or more cells out along every axis
    rng = np.random.default_rng(11)
    cell = np.diag([2.3, 2.5, 2.6]) + rng.uniform(-0.4, 0.4, (3, 3))
    return Atoms("Cu", positions=[[0.1, 0.2, 0.3]], cell=cell, pbc=True)


def _mixed_pbc():
    atoms = _rattled(bulk("NaCl", "rocksalt", 5.64).repeat((2, 3, 2)), 0.05, 12)
    atoms.pbc = [True, False, True]
    return atoms


CASES = {
    "periodic fcc": lambda: _rattled(bulk("Cu", "fcc", 3.61, cubic=True).repeat((4, 4, 4)), 0.05, 1),
    "open C60": lambda: _rattled(molecule("C60"), 0.02, 2),
    "open H2O (k > atoms)": lambda: molecule("H2O"),
    "triclinic": _triclinic,
    "cell smaller than cutoff": lambda: _rattled(bulk("Si", "diamond", 5.43), 0.05, 7),
    "sparse cell": _sparse,
    "two species": lambda: _rattled(bulk("NaCl", "rocksalt", 5.64).repeat((2, 2, 2)), 0.05, 8),
    "alloy": _alloy,
    "slab (partial pbc)": _slab,
    "close pair": _close_pair,
    "one atom, many images": _tiny_triclinic,
    "mixed pbc": _mixed_pbc,
}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("k, cutoff", [(32, 5.0), (8, 3.0)])
def test_equal_to_quests(name, k, cutoff):
    atoms = CASES[name]()
    ours = compute_descriptors(atoms, k=k, cutoff=cutoff)
    ref = get_descriptors([atoms], k=k, cutoff=cutoff)
    assert ours.shape == ref.shape == (len(atoms), 2 * k - 1)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL)


def test_threads_change_nothing():
    # blocks of atoms on 2 threads: the same numbers bit for bit as on one (and as quests)
    atoms = _rattled(bulk("Cu", "fcc", 3.61, cubic=True).repeat((9, 9, 9)), 0.05, 9)
    one, two = compute_descriptors(atoms, n_threads=1), compute_descriptors(atoms, n_threads=2)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_allclose(one, get_descriptors([atoms]), rtol=0, atol=TOL)


@pytest.mark.parametrize("periodic", [True, False])
def test_threads_on_sparse_and_open(periodic):
    # 2,500 random atoms, many with fewer than k neighbours in the cutoff, in thread tasks: quests' numbers
    rng = np.random.default_rng(13)
    pos = rng.uniform(0.0, 60.0, (2500, 3))
    pos[:1500] *= 0.4  # a dense corner (~50 atoms in a cutoff sphere) in a dilute box
    atoms = Atoms("Cu2500", positions=pos, cell=np.eye(3) * 60.0, pbc=periodic)
    ours = compute_descriptors(atoms, n_threads=2)
    assert np.any(ours[:, 31] == 0.0) and np.any(ours[:, 31] > 0.0)  # some padded, some full
    np.testing.assert_array_equal(ours, compute_descriptors(atoms, n_threads=1))
    np.testing.assert_allclose(ours, get_descriptors([atoms]), rtol=0, atol=TOL)


def test_large_k():
    # k = 64 at a 7 A cutoff: pair blocks of 32 atoms (the block holds k^2 pairs per atom), 16 blocks here
    atoms = _rattled(bulk("Cu", "fcc", 3.61, cubic=True).repeat((5, 5, 5)), 0.05, 15)
    np.testing.assert_allclose(compute_descriptors(atoms, k=64, cutoff=7.0), get_descriptors([atoms], k=64, cutoff=7.0),
                               rtol=0, atol=TOL)


def test_isolated_atom_is_zero():
    # no neighbour inside the cutoff: quests pads with zeros, so do we
    atoms = Atoms("Cu", positions=[[0.0, 0.0, 0.0]], cell=np.eye(3) * 20.0, pbc=True)
    np.testing.assert_array_equal(compute_descriptors(atoms), np.zeros((1, 63)))
    np.testing.assert_array_equal(get_descriptors([atoms]), np.zeros((1, 63)))


def test_engines_agree_and_inputs_untouched():
    configs = [CASES["two species"](), CASES["open C60"]()]
    before = [a.positions.copy() for a in configs]
    ours = QUESTSDescriptor(k=16, engine="atomscore").compute_batch(configs, progress=False)
    ref = QUESTSDescriptor(k=16, engine="quests").compute_batch(configs, progress=False)
    for a, b in zip(ours, ref):
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL)
    for atoms, pos in zip(configs, before):
        np.testing.assert_array_equal(atoms.positions, pos)


def test_unknown_engine_refused():
    with pytest.raises(InputError, match="engine"):
        QUESTSDescriptor(engine="numba")


def test_coincident_atoms_refused():
    # quests returns 1/1e-16 = 1e16 for a neighbour at distance 0; we refuse it, naming both atoms
    atoms = CASES["periodic fcc"]()
    atoms += Atoms("Cu", positions=[atoms.positions[3]])
    with pytest.raises(InputError, match=r"atom 3 and atom \d+ .*same position"):
        compute_descriptors(atoms)


def test_coincident_atoms_refused_in_a_thread_task():
    # the pair in the last of several thread tasks: the same message, with the atoms' own indices
    atoms = _rattled(bulk("Cu", "fcc", 3.61, cubic=True).repeat((9, 9, 9)), 0.05, 14)
    atoms += Atoms("Cu", positions=[atoms.positions[2900]])
    with pytest.raises(InputError, match=r"atom 2900 and atom 2916 .*same position"):
        compute_descriptors(atoms, n_threads=2)


def test_periodic_without_a_cell_refused():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]], pbc=True)  # no cell given
    with pytest.raises(InputError, match="no volume"):
        compute_descriptors(atoms)
