"""Labelled silicon for the MACE and NequIP tests and benchmarks: 16-atom cells labelled by SW through KIM.

Stillinger-Weber silicon (the installed OpenKIM model) evaluated through ASE's own KIM
calculator; the labels go to ``info['REF_energy']`` and ``arrays['REF_forces']`` (MACE's
default keys). Used by tests/test_ltau_mace.py, tests/test_ltau_nequip.py and
benchmarks/ltau_training.py; ``direct_ltau`` is the tests' numpy reference for LTAU.
"""

import numpy as np
from ase.build import bulk

SW = "SW_StillingerWeber_1985_Si__MO_405512056662_005"


def si_configs(n, seed, rattle=(0.02, 0.15)):
    """``n`` diamond Si cells (2x1x1, 16 atoms), lattice 5.35-5.55 Å, rattled by ``rattle`` Å, labelled by SW."""
    from ase.calculators.kim import KIM

    rng = np.random.default_rng(seed)
    calc = KIM(SW)
    out = []
    for _ in range(n):
        atoms = bulk("Si", "diamond", a=rng.uniform(5.35, 5.55), cubic=True) * (2, 1, 1)
        atoms.rattle(rng.uniform(*rattle), seed=int(rng.integers(1 << 30)))
        atoms.calc = calc
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.calc = None
        out.append(atoms)
    return out


#: the tiny MACE of the issue: 16 channels, L = 0, 2 interactions, r_max 4 Å
TINY_MACE = dict(num_channels=16, max_L=0, num_interactions=2, r_max=4.0, batch_size=5, valid_fraction=0.1)


def direct_ltau(train_x, logs, query_x, true_errors, k, bins):
    """LTAU and the PIT of the true errors without faiss or the estimator: numpy only."""
    norms = np.linalg.norm(logs, axis=2)  # (epochs, N)
    widths = np.diff(bins)
    pdfs = np.array([np.histogram(np.clip(norms[:, j], bins[0], bins[-1]), bins)[0] for j in range(norms.shape[1])])
    pdfs = pdfs / (pdfs.sum(axis=1, keepdims=True) * widths)
    mids = np.sqrt(bins[:-1] * bins[1:])  # log bins: geometric midpoints
    d = ((query_x[:, None, :] - train_x[None, :, :]) ** 2).sum(axis=2)
    nn = np.argsort(d, axis=1)[:, :k]
    uq, pit = [], []
    for row, err in zip(nn, true_errors):
        pdf = pdfs[row].mean(axis=0)
        uq.append(np.sum(pdf * widths * mids))
        cum = np.concatenate([[0], np.cumsum(pdf * widths)])
        pit.append(np.interp(err, bins, cum))
    return np.array(uq), np.array(pit)


def ranks(v):
    """Ranks with ties given their mean rank (the convention of Spearman's coefficient)."""
    r = np.empty(len(v))
    r[np.argsort(v, kind="stable")] = np.arange(len(v))
    _, inverse = np.unique(v, return_inverse=True)
    return (np.bincount(inverse, weights=r) / np.bincount(inverse))[inverse]
