"""docs/ltau.md's table of differences from LTAU-FF, and the behaviour each new row states.

References: ``np.histogram`` on the same samples (with the edge handling the row states),
and the hand-computed mean of per-member histograms for ensembles.
"""

from pathlib import Path

import numpy as np

from atomscore.ltau.estimator import pdfs_from_error_logs

DOC = Path(__file__).resolve().parents[1] / "docs" / "ltau.md"


def _table_rows():
    text = DOC.read_text()
    start = text.index("## Compared with the `ltau-ff` package")
    return [line for line in text[start:].splitlines() if line.startswith("|")][2:]


def test_table_has_the_three_rows():
    rows = "\n".join(_table_rows())
    assert "10**log10(min)" in rows
    assert "outside `range_limits`" in rows
    assert "ensemble" in rows and "number of epochs" in rows


def test_smallest_sample_counted_in_the_first_bin():
    rng = np.random.default_rng(0)
    logs = np.exp(rng.normal(-3, 1, size=(50, 4)))
    pdfs, bins = pdfs_from_error_logs(logs, nbins=10)
    assert bins[0] == logs.min() and bins[-1] == logs.max()
    widths = np.diff(bins)
    counts = pdfs * widths * len(logs)
    np.testing.assert_allclose(counts.sum(axis=1), len(logs))  # every epoch counted, min and max included
    col = int(np.argmin(logs.min(axis=0)))
    ref, _ = np.histogram(logs[:, col], bins=bins)  # np.histogram counts both ends of [min, max]
    np.testing.assert_allclose(counts[col], ref)


def test_samples_outside_range_limits_kept_in_edge_bins():
    logs = np.array([[0.05, 0.5], [0.2, 0.7], [2.0, 0.3], [0.4, 5.0]])
    pdfs, bins = pdfs_from_error_logs(logs, nbins=4, range_limits=(0.1, 1.0))
    counts = pdfs * np.diff(bins) * len(logs)
    ref = np.array([np.histogram(np.clip(col, 0.1, 1.0), bins=bins)[0] for col in logs.T])
    np.testing.assert_allclose(counts, ref)
    assert counts[0, 0] >= 1 and counts[0, -1] >= 1


def test_ensemble_members_weighted_equally():
    rng = np.random.default_rng(1)
    short, long = np.exp(rng.normal(-3, 1, size=(5, 3))), np.exp(rng.normal(-1, 1, size=(45, 3)))
    pdfs, bins = pdfs_from_error_logs([short, long], nbins=8)
    one = [pdfs_from_error_logs(m, bins=bins)[0] for m in (short, long)]
    np.testing.assert_allclose(pdfs, 0.5 * (one[0] + one[1]), rtol=1e-12)
    pooled = pdfs_from_error_logs(np.vstack([short, long]), bins=bins)[0]
    assert not np.allclose(pdfs, pooled)  # what pooling by epochs would give instead
