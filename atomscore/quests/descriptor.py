"""The QUESTS descriptor of atomic environments, as the ``quests`` package defines it.

QUESTS (Schwalbe-Koda et al., "Model-free quantification of completeness, uncertainties
and outliers in atomistic machine learning using information theory") describes the
environment of each atom by its ``k`` nearest neighbours: the sorted, cutoff-weighted
inverse distances to them (``k`` numbers) and the sorted weighted inverse distances
between those neighbours (``k - 1`` numbers), ``2k - 1`` in all. The numbers are
computed here (:func:`compute_descriptors`: a compiled k-d tree for the neighbours and
vectorised sorting, equal to ``quests.descriptor.get_descriptors`` to ~1e-15, about 5x
less CPU time for periodic cells of 64 to 10^5 atoms, see docs/internals.md) or, with
``engine='quests'``, by quests itself, the reference in the tests; around them we add
what a workflow needs: checked input, one array per configuration, new Atoms with the
descriptors attached, a progress bar.

Species
-------
As in ``quests.descriptor.get_descriptors``, every atom is treated alike: the descriptor
sees positions only, not chemical species, so a Cu and a Si atom in identical geometric
surroundings get identical descriptors. (``quests`` has an experimental multicomponent
variant, ``get_descriptors_multicomponent``; it is not used here.)

Periodicity
-----------
Periodic cells (all three ``atoms.pbc`` true) are handled through periodic images, as
``quests`` does, also for cells smaller than the cutoff; anything else (molecules,
clusters such as C60, and -- as in ``quests`` -- slabs periodic in only some directions)
uses its atoms only. An environment with fewer than
``k`` neighbours inside the cutoff is padded with zeros by ``quests``.
"""

from __future__ import annotations

import itertools

import numpy as np

from atomscore.errors import InputError
from atomscore.io import copy_with_labels
from atomscore.quests.defaults import DEFAULT_CUTOFF, DEFAULT_K
from atomscore.threads import blas_single_thread, resolve_threads
from atomscore.validation import (DESCRIPTOR_SETTINGS_SUFFIX, check_choice, check_configs, check_finite_positions,
                                  check_int, check_positive)

ENGINES = ("atomscore", "quests")

# Configurations are sent to quests in chunks of about this many atoms, so the progress
# bar moves while each chunk still fills quests' parallel loop.
_CHUNK_ATOMS = 4096


class QUESTSDescriptor:
    """QUESTS descriptors, ``(n_atoms, 2k - 1)`` per configuration.

    Parameters
    ----------
    cutoff : float
        Cutoff radius of the smooth weight function, in Å (default 5.0).
    k : int
        Number of nearest neighbours per environment (default 32), giving ``2k - 1``
        columns.
    key : str
        ``atoms.arrays`` key that :meth:`attach` writes (default ``'descriptors'``, the key
        the QUESTS scores read by default).
    engine : {'atomscore', 'quests'}
        Who computes the numbers: :func:`compute_descriptors` (default; ~5x less CPU time)
        or ``quests.descriptor.get_descriptors``. Both give the same numbers to ~1e-15.

    Examples
    --------
    >>> from ase.build import bulk
    >>> desc = QUESTSDescriptor(cutoff=5.0, k=32)
    >>> desc.compute(bulk("Si", "diamond", 5.43, cubic=True)).shape
    (8, 63)
    """

    def __init__(self, cutoff=DEFAULT_CUTOFF, k=DEFAULT_K, key="descriptors", engine="atomscore"):
        self.cutoff = float(check_positive(cutoff, "cutoff", allow_array=False))
        self.k = check_int(k, "k", minimum=1)
        self.engine = check_choice(engine, "engine", ENGINES)
        if not isinstance(key, str) or not key:
            raise InputError(f"key: expected a non-empty string, got {key!r}")
        self.key = key

    @property
    def settings(self) -> dict:
        """What defines the numbers: ``{'name': 'QUESTS', 'cutoff' (Å), 'k', 'quests_version'}``.

        :meth:`attach` writes it to ``atoms.info[key + '_settings']``; the scores compare it
        between queries and references.
        """
        from importlib.metadata import PackageNotFoundError, version

        try:
            quests_version = version("quests")
        except PackageNotFoundError:  # an unpackaged checkout of quests
            quests_version = "unknown"
        return {"name": "QUESTS", "cutoff": self.cutoff, "k": self.k, "quests_version": quests_version}

    @property
    def n_features(self) -> int:
        """Number of descriptor columns, ``2k - 1``."""
        return 2 * self.k - 1

    def __repr__(self):
        return f"QUESTSDescriptor(cutoff={self.cutoff}, k={self.k}, key={self.key!r}, engine={self.engine!r})"

    def compute(self, atoms) -> np.ndarray:
        """Descriptors of one configuration.

        Parameters
        ----------
        atoms : ase.Atoms
            Periodic or not; never modified.

        Returns
        -------
        numpy.ndarray, shape (n_atoms, 2k - 1), float64
        """
        return self.compute_batch([atoms], progress=False)[0]

    def compute_batch(self, list_of_atoms, progress=None):
        """Descriptors of each configuration: a list of ``(n_atoms_i, 2k - 1)`` arrays.

        Parameters
        ----------
        list_of_atoms : list of ase.Atoms
            Never modified.
        progress : bool or None
            Show a tqdm progress bar (``None``: only when writing to a terminal).
        """
        configs = check_configs(list_of_atoms, "list_of_atoms", allow_empty=True)
        for i, atoms in enumerate(configs):
            check_finite_positions(atoms, f"list_of_atoms: configuration {i}", allow_empty=True)
            if any(atoms.pbc) and atoms.cell.rank < 3 and len(atoms):
                raise InputError(f"list_of_atoms: configuration {i}: periodic (pbc={atoms.pbc.tolist()}) but "
                                 f"its cell has rank {atoms.cell.rank}; expected a 3-D cell")
        from tqdm.auto import tqdm

        out = [None] * len(configs)
        disable = None if progress is None else not progress
        if self.engine == "atomscore":
            with tqdm(total=len(configs), desc="QUESTS descriptors", unit="config", disable=disable) as bar:
                for i, atoms in enumerate(configs):
                    out[i] = compute_descriptors(atoms, self.k, self.cutoff)
                    bar.update(1)
            return out
        from quests.descriptor import get_descriptors

        with tqdm(total=len(configs), desc="QUESTS descriptors", unit="config", disable=disable) as bar:
            for chunk in _chunks(configs):
                # copies: quests is given its own Atoms, so the caller's are never touched
                nonempty = [i for i in chunk if len(configs[i])]
                if nonempty:
                    x = get_descriptors([configs[i].copy() for i in nonempty], k=self.k, cutoff=self.cutoff)
                    x = np.asarray(x, dtype=np.float64)
                    start = 0
                    for i in nonempty:
                        n = len(configs[i])
                        out[i] = x[start:start + n].copy()
                        start += n
                for i in chunk:
                    if out[i] is None:
                        out[i] = np.zeros((0, self.n_features))
                bar.update(len(chunk))
        return out

    def attach(self, list_of_atoms, progress=None):
        """New configurations with the descriptors in ``arrays[key]``; the inputs are untouched.

        Parameters
        ----------
        list_of_atoms : list of ase.Atoms
        progress : bool or None
            Progress bar, as in :meth:`compute_batch`.

        Returns
        -------
        list of ase.Atoms
            Copies (with their calculator results kept as a single-point calculator) whose
            ``arrays[key]`` holds the ``(n_atoms, 2k - 1)`` descriptors and
            ``info[key + '_settings']`` their :attr:`settings`.
        """
        configs = check_configs(list_of_atoms, "list_of_atoms", allow_empty=True)
        descriptors = self.compute_batch(configs, progress=progress)
        settings = self.settings
        out = []
        for atoms, x in zip(configs, descriptors):
            new = copy_with_labels(atoms)
            if self.key in new.arrays:
                del new.arrays[self.key]  # replaced, possibly with another width
            new.new_array(self.key, x)
            new.info[f"{self.key}{DESCRIPTOR_SETTINGS_SUFFIX}"] = dict(settings)
            out.append(new)
        return out


def _chunks(configs):
    """Index chunks of about ``_CHUNK_ATOMS`` atoms (at least one configuration each)."""
    chunk, atoms_in_chunk = [], 0
    for i, atoms in enumerate(configs):
        chunk.append(i)
        atoms_in_chunk += len(atoms)
        if atoms_in_chunk >= _CHUNK_ATOMS:
            yield chunk
            chunk, atoms_in_chunk = [], 0
    if chunk:
        yield chunk


def warm_up():
    """Compile quests' numba kernels once (periodic and not), so that the first real call is fast.

    numba caches the compiled code next to the quests package (``cache=True``), so this
    runs at install time (``make``) and takes about half a minute only the first time.
    """
    from ase.build import bulk, molecule

    QUESTSDescriptor(k=4).compute_batch([bulk("Si", "diamond", 5.43, cubic=True), molecule("H2O")], progress=False)


# ----------------------------------------------------------------------------- our own computation

_EPS_X1 = 1e-16  # the small numbers quests adds to distances (descriptor_x1, descriptor_x2 defaults)
_EPS_X2 = 1e-15
_BLOCK_PAIRS = 128 * 32 * 32  # neighbour pairs per vectorised block (1 MB: in cache; 128 atoms at k = 32)
_TASK_ATOMS = 1024  # atoms per thread task: one k-d tree query, then its pair blocks
_THREADED_ATOMS = 2048  # fewer atoms: one thread (starting threads costs more than the work)
# When two atoms are closer than this (a fraction of the cutoff), pair distances are taken as
# differences of the neighbour vectors, not from |D_j|^2 + |D_l|^2 - 2 D_j.D_l, whose rounding
# (~1e-16 cutoff^2 on r_jl^2) reached 3e-12 in the descriptor for atoms 0.02 Å apart (cutoff 5 Å).
_CLOSE_PAIR = 0.1


def _positions_and_images(atoms, cutoff):
    """Positions the descriptor sees (Å; periodic ones wrapped as quests wraps them), the
    points the neighbours are searched among (the atoms first, in order, then periodic
    images within ``cutoff`` of the cell) with one extra row at the origin (the target of
    the k-d tree's "not found" index), and the atom each point is an image of.

    As ``quests.descriptor.get_descriptors``, a structure is periodic only when all three
    ``pbc`` flags are set (anything else: its atoms only), and periodic positions are first
    wrapped into the cell with the fractional coordinates rounded to 12 decimals, as quests'
    ``wrap_pbc`` does, so both see the same numbers.
    """
    pos = np.asarray(atoms.positions, dtype=np.float64)
    n = len(pos)
    if np.all(atoms.pbc):
        cell = np.array(atoms.cell, dtype=np.float64)
        if not abs(np.linalg.det(cell)) > 0.0:
            raise InputError(f"atoms: periodic but its cell {cell.tolist()} has no volume; expected a 3-D cell")
        frac = np.round(pos @ _inverse_as_quests(cell), decimals=12) % 1.0
        pos = frac @ cell
        points, owner = _periodic_images(frac, cell, cutoff)
    else:
        points, owner = np.vstack([pos, np.zeros((1, 3))]), np.arange(n)
    return pos, points, owner


def _inverse_as_quests(cell):
    """The cell's inverse by cofactors, as ``quests.matrix.inverse_3d`` computes it: its
    rounding must be the same, or the 12-decimal rounding of a fractional coordinate can
    flip and move an atom by 1e-12 of the cell length."""
    cof = np.stack([np.cross(cell[1], cell[2]), np.cross(cell[2], cell[0]), np.cross(cell[0], cell[1])], axis=1)
    det = cell[0, 0] * cof[0, 0] + cell[0, 1] * cof[1, 0] + cell[0, 2] * cof[2, 0]
    return cof * (1.0 / det)  # numba fastmath turns quests' division into this product


def _periodic_images(frac, cell, cutoff):
    """The atoms (first, in order), their periodic images within ``cutoff`` of the cell and
    a last row at the origin: Cartesian positions (Å) and the atom each one is an image of."""
    volume = abs(np.linalg.det(cell))
    heights = volume / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    skin = cutoff / heights  # the cutoff in fractional units, per axis
    reach = np.ceil(skin).astype(int)
    n = len(frac)
    parts, owners = [frac], [np.arange(n)]
    # only atoms within the skin of a face have images inside (a quarter of them at 10^5 atoms)
    near = np.nonzero(np.any((frac < skin) | (frac > 1.0 - skin), axis=1))[0]
    near_frac = frac[near]
    # inside[d][s]: shifted by s along axis d, the coordinate is within the skin of the cell
    inside = [{s: (near_frac[:, d] + s > -skin[d]) & (near_frac[:, d] + s < 1.0 + skin[d])
               for s in range(-reach[d], reach[d] + 1)} for d in range(3)]
    for shift in itertools.product(*[range(-m, m + 1) for m in reach]):
        if not any(shift):
            continue
        keep = np.nonzero(inside[0][shift[0]] & inside[1][shift[1]] & inside[2][shift[2]])[0]
        parts.append(near_frac[keep] + np.asarray(shift, dtype=np.float64))
        owners.append(near[keep])
    parts.append(np.zeros((1, 3)))
    return np.concatenate(parts) @ cell, np.concatenate(owners)


def _weight(r, cutoff):
    """quests' cutoff function ``(1 - (r/rc)^2)^2`` (0 at and beyond ``rc``)."""
    z = np.minimum(r, cutoff) / cutoff
    return (1.0 - z * z) ** 2


def compute_descriptors(atoms, k=DEFAULT_K, cutoff=DEFAULT_CUTOFF, n_threads=None):
    """QUESTS descriptors of one configuration, computed here, shape ``(n_atoms, 2k - 1)``.

    The same numbers as ``quests.descriptor.get_descriptors([atoms], k, cutoff)`` (to
    rounding, ~1e-15; checked in ``tests/test_descriptor_own.py``) from a compiled neighbour
    search and vectorised sorting instead of quests' per-atom numba loops. Only neighbours
    inside the cutoff can contribute (the weight is 0 beyond it), so the ``k`` nearest of
    those are used and the rest is zero padding, as in quests. Where the ``k``-th and
    ``(k+1)``-th nearest neighbours are *exactly* equidistant (unrattled crystals), which
    one is kept is arbitrary in both codes, and the second half of the descriptor (the
    neighbour-pair part) may differ. ``n_threads`` (default: all CPUs) share structures of
    more than a few thousand atoms; the numbers do not depend on it.
    """
    n = len(atoms)
    x = np.empty((n, 2 * k - 1))
    if n == 0:
        return x
    # OpenBLAS threads on the (n, 3) x (3, 3) products took 3-50 ms instead of 3 at 10^5 atoms on a
    # loaded machine, and kept spinning against the work after them
    with blas_single_thread():
        return _compute(atoms, k, cutoff, n_threads, x)


def _compute(atoms, k, cutoff, n_threads, x):
    from scipy.spatial import cKDTree

    n = len(atoms)
    pos, points, owner = _positions_and_images(atoms, cutoff)
    # A k-d tree answers "the k + 1 nearest within the cutoff" sorted; a cell list gives every pair to
    # sort (matscipy's neighbour_list alone: 0.62 s at 97,556 atoms, this query 0.35 s; docs/internals.md).
    # The extra last point (index len(points) - 1) is never a neighbour: the tree leaves it out.
    tree = cKDTree(points[:-1], balanced_tree=False, compact_nodes=False)  # measured ~15 % faster queries
    m = min(k + 1, len(points) - 1)
    threads = resolve_threads(n_threads) if n >= _THREADED_ATOMS else 1
    # tasks of at most _TASK_ATOMS atoms, at least one per thread, whole pair blocks
    size = min(_TASK_ATOMS, -(-n // threads))
    block = max(1, _BLOCK_PAIRS // (k * k))
    size = -(-size // block) * block if size > block else size
    work = _Work(tree, pos, points, owner, k, m, cutoff, x, size)
    starts = range(0, n, size)
    threads = min(threads, len(starts))
    if threads <= 1:
        for a in starts:
            work.neighbours(a)
        work.settle()
        for a in starts:
            work.pairs(a)
    else:  # the k-d tree query and numpy's array operations release the GIL: tasks share the cores
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(work.neighbours, starts))  # in order: the first error is the lowest atom's
            work.settle()
            list(pool.map(work.pairs, starts))
    return x


class _Work:
    """The tasks of :func:`compute_descriptors` on atoms ``a .. a + size``, writing into ``x``:
    :meth:`neighbours` (all tasks), then :meth:`settle`, then :meth:`pairs` (all tasks)."""

    def __init__(self, tree, pos, points, owner, k, m, cutoff, x, size):
        self.tree, self.pos, self.points, self.owner = tree, pos, points, owner
        self.k, self.m, self.cutoff, self.x, self.size = k, m, cutoff, x, size
        n = len(pos)
        self.r = np.full((n, k), np.inf)  # distances to the k nearest (Å), ascending; inf: none
        self.idx = np.full((n, k), len(points) - 1)  # their points; none: the origin row
        self.sw = np.zeros((n, k))  # square roots of their weights (0: none)
        self.close = self.absent = False

    def neighbours(self, a):
        """The ``k`` nearest neighbours of atoms ``a .. a + size`` and the first ``k`` columns."""
        m, x = self.m, self.x
        b = min(a + self.size, len(self.pos))
        r, idx = self._query(a, b)  # (b - a, m - 1): distances, ascending, inf where none
        self.r[a:b, :m - 1] = r
        self.idx[a:b, :m - 1] = idx
        w = _weight(r, self.cutoff)  # 0 where none (r = inf), so is w / r
        x[a:b, :m - 1] = w / (r + _EPS_X1)
        np.sqrt(w, out=self.sw[a:b, :m - 1])
        x[a:b, m - 1:self.k] = 0.0

    def settle(self):
        """What the pair part needs to know of all atoms: whether any two are close (then pair
        distances come from differences, see :func:`_pair_part`) and whether any neighbour is absent."""
        nearest = self.r[:, 0]
        self.close = bool(np.any(nearest < _CLOSE_PAIR * self.cutoff))
        self.absent = bool(np.isinf(self.r[:, -1]).any())

    def pairs(self, a):
        """The last ``k - 1`` columns of atoms ``a .. a + size``."""
        k = self.k
        b = min(a + self.size, len(self.pos))
        nb = b - a
        # per neighbour: left (D, |D|^2, 1) and right (-2D, 1, |D|^2), D the vector to it (Å), so that
        # r_jl^2 = |D_j|^2 + |D_l|^2 - 2 D_j.D_l = left_j . right_l: one batched product per block
        left = np.empty((nb, k, 5))
        vec = left[:, :, :3]
        np.subtract(self.points[self.idx[a:b]], self.pos[a:b, None, :], out=vec)
        r = self.r[a:b]
        if self.absent:
            vec[np.isinf(r)] = 0.0  # absent neighbours at the centre: weight 0, as quests' padding
        left[:, :, 3] = np.einsum("bjc,bjc->bj", vec, vec)
        left[:, :, 4] = 1.0
        right = np.empty((nb, k, 5))
        np.multiply(vec, -2.0, out=right[:, :, :3])
        right[:, :, 3] = 1.0
        right[:, :, 4] = left[:, :, 3]
        sw = self.sw[a:b]
        block = max(1, _BLOCK_PAIRS // (k * k))
        buffer = np.empty((min(block, nb), k, k))
        for c in range(0, nb, block):
            d = min(c + block, nb)
            self.x[a + c:a + d, k:] = _pair_part(left[c:d], right[c:d], sw[c:d], self.close, self.absent,
                                                 buffer[:d - c])

    def _query(self, a, b):
        """The ``m - 1`` nearest other points within the cutoff of atoms ``a .. b``."""
        n, m = b - a, self.m
        dist, idx = self.tree.query(self.pos[a:b], k=m, distance_upper_bound=self.cutoff, workers=1)
        dist, idx = dist.reshape(n, m), idx.reshape(n, m)
        rows = np.arange(a, b)
        # drop each atom itself (point i is atom i, at distance 0)
        if np.array_equal(idx[:, 0], rows):  # the usual case: each atom first
            dist, idx = dist[:, 1:], idx[:, 1:]
        else:  # another atom at distance 0 came first: take each atom out wherever it is
            self_hit = idx == rows[:, None]
            if np.any(self_hit.sum(axis=1) != 1):  # can only fail for k + 1 coincident atoms
                raise InputError("atoms: more than k atoms at the same position; expected distinct positions")
            order = np.argsort(self_hit, axis=1, kind="stable")[:, :m - 1]
            dist = np.take_along_axis(dist, order, axis=1)
            idx = np.take_along_axis(idx, order, axis=1)
        if m > 1 and np.any(dist[:, 0] == 0.0):  # quests divides by 1e-16 here: a descriptor of 1e16
            i = int(np.flatnonzero(dist[:, 0] == 0.0)[0])
            raise InputError(f"atoms: atom {a + i} and atom {int(self.owner[idx[i, 0]])} (or a periodic image of "
                             f"it) are at the same position {self.pos[a + i].tolist()}; expected distinct positions")
        return dist, idx


def _pair_part(left, right, sw, close, absent, out):
    """The last ``k - 1`` columns for a block of atoms, from ``left`` and ``right`` (B, k, 5) of
    :class:`_Work` (the neighbour vectors in Å are ``left[..., :3]``) and the square-root
    weights ``sw`` (B, k); ``out`` is a (B, k, k) work array.

    quests' ``sqrt(w_j w_l) / (r_jl + 1e-15)``, rows sorted, averaged over the ``k`` rows: the
    factor ``sqrt(w_j)`` is the same along row ``j``, so each row ``sqrt(w_l) / r_jl`` is sorted
    and the rows are averaged with weights ``sqrt(w_j)`` (one product less per pair). ``r_jl``
    is 1e-15 Å short of quests' ``r_jl + 1e-15`` (1e-16 relative at 1 Å) unless two absent
    neighbours (both at the origin) meet, where quests' 1e-15 is what avoids 0/0.
    """
    nb, k = sw.shape
    if close:  # r_jl^2 from differences: exact to rounding at any distance
        vec = left[:, :, :3]
        diff = vec[:, :, None, :] - vec[:, None, :, :]
        d2 = np.einsum("bjlc,bjlc->bjl", diff, diff, out=out)
    else:  # rounding ~1e-16 cutoff^2, ~1e-15 relative for neighbours more than 0.1 cutoff apart
        d2 = np.matmul(left, right.transpose(0, 2, 1), out=out)
    d2.reshape(nb, k * k)[:, ::k + 1] = np.inf  # the diagonal: a term of 0, as quests' zero diagonal
    rjl = np.sqrt(d2, out=d2)
    if absent:
        rjl += _EPS_X2
    q = np.divide(sw[:, None, :], rjl, out=rjl)
    q.sort(axis=2)  # each row ascending, as quests' np.sort(rjl)
    # column l (l >= 1) of the sorted rows, weighted by sqrt(w_j), averaged over all k rows, largest first
    return np.matmul(sw[:, None, :], q)[:, 0, :0:-1] / k
