"""LTAU estimator: build time and memory at 10^6 training atoms (issue 16, item 4).

10^6 training descriptors of dimension 64, error logs of 20 epochs, 100 log bins. For each
PDF storage, in one run (each in a fresh state):

* ``disk`` (the default): expected errors in memory, PDFs in a memory-mapped temporary file;
* ``float64``: the PDFs in memory;
* ``old layout``: ``float64`` plus the per-bin weights ``pdfs * widths`` the estimator kept
  before issue 16 (recomputed here, for the comparison).

Printed: build time (histograms + expected errors + index), the resident memory the
estimator holds beyond its faiss index once built (RSS after minus before, minus the index's
own bytes, freed heap memory given back first), per training atom, the peak extra RSS while
building, and the time of ``--queries`` (1,000) ``predict`` and ``predict_full(pdfs=True,
atol=...)`` queries with k = 5.

Then the ``HNSW+IVFPQ`` index build with and without polysemous training (faiss factory
``...np`` -- what the estimator uses now -- vs ``...``), at ``--ivfpq-n`` points.

Run: ``.venv/bin/python benchmarks/ltau_memory.py [--n 1000000] [--ivfpq-n 200000]``
"""

from __future__ import annotations

import argparse
import gc
import os
import threading
import time

import numpy as np


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Peak:
    def __enter__(self):
        self.base = self.peak = rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


def trim():
    """Give freed heap memory back to the system (glibc keeps freed blocks of up to 32 MB in
    its heap after a larger one was freed, which would count as the estimator's)."""
    import ctypes

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def index_bytes(index):
    import faiss

    return int(faiss.serialize_index(index).size)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--nbins", type=int, default=100)
    parser.add_argument("--ivfpq-n", type=int, default=200_000)
    parser.add_argument("--queries", type=int, default=1000)
    args = parser.parse_args(argv)

    from atomscore.ltau.estimator import LTAUEstimator

    rng = np.random.default_rng(0)
    x = rng.normal(size=(args.n, args.dim)).astype(np.float32)
    logs = rng.lognormal(-3.0, 1.0, size=(args.epochs, args.n))
    queries = rng.normal(size=(args.queries, args.dim))
    atol = float(np.median(logs))
    print(f"LTAU estimator, N = {args.n}, dim {args.dim}, {args.epochs} epochs, {args.nbins} bins, "
          f"IndexFlatL2 (load average {os.getloadavg()[0]:.1f})")
    print(f"{'storage':<12}{'build s':>9}{'held MB':>9}{'B/atom':>8}{'peak MB':>9}{'predict s':>11}"
          f"{'full s':>8}  ratio held / disk")
    # first-use allocations of faiss, OpenMP and OpenBLAS (thread buffers) outside the measure
    warm = LTAUEstimator.from_error_logs(x[:2000], logs[:, :2000], nbins=args.nbins)
    warm.predict_full(queries[:100], 5, pdfs=True, atol=atol)
    del warm
    held = {}
    preds = {}
    for storage in ("disk", "float64", "old layout"):
        trim()
        before = rss()
        with Peak() as peak:
            t0 = time.perf_counter()
            est = LTAUEstimator.from_error_logs(x, logs, nbins=args.nbins,
                                                pdf_storage="disk" if storage == "disk" else "float64")
            extra = np.asarray(est.pdfs) * est.widths if storage == "old layout" else None
            t_build = time.perf_counter() - t0
        trim()
        beyond = rss() - before - index_bytes(est.index)
        held[storage] = beyond
        t0 = time.perf_counter()
        preds[storage] = est.predict(queries, 5)
        t_pred = time.perf_counter() - t0
        t0 = time.perf_counter()
        full = est.predict_full(queries, 5, pdfs=True, atol=atol)
        t_full = time.perf_counter() - t0
        print(f"{storage:<12}{t_build:9.1f}{beyond / 2**20:9.0f}{beyond / args.n:8.1f}"
              f"{(peak.peak - peak.base) / 2**20:9.0f}{t_pred:11.2f}{t_full:8.2f}  "
              f"{beyond / max(held['disk'], 1):.1f}x", flush=True)
        if storage == "disk":
            ref_full = full
        else:
            assert np.array_equal(preds[storage], preds["disk"])
            np.testing.assert_allclose(full.pdfs, ref_full.pdfs, rtol=1e-12, atol=0)
            np.testing.assert_allclose(full.cdf, ref_full.cdf, rtol=1e-12, atol=1e-15)
        del est, extra, full
    print("predictions, PDFs and CDFs of the three layouts agree (1e-12)")

    import faiss

    n = args.ivfpq_n
    xs = x[:n]
    nlist = int(round(4 * np.sqrt(n)))
    m = 16
    nbits = int(min(8, np.floor(np.log2(n / 39))))
    print(f"\nHNSW+IVFPQ build at N = {n} (IVF{nlist}_HNSW32,PQ{m}x{nbits}):")
    times = {}
    for label, suffix in (("np (ours)", "np"), ("polysemous", "")):
        index = faiss.index_factory(args.dim, f"IVF{nlist}_HNSW32,PQ{m}x{nbits}{suffix}")
        t0 = time.perf_counter()
        index.train(xs)
        index.add(xs)
        times[label] = time.perf_counter() - t0
        print(f"  {label:<12}{times[label]:8.1f} s  index {index_bytes(index) / 2**20:.0f} MB", flush=True)
    print(f"  polysemous / np: {times['polysemous'] / times['np (ours)']:.2f}x")


if __name__ == "__main__":
    main()
