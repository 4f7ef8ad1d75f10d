"""Thread counts and BLAS limits shared by the kernels (QUESTS tiles, faiss searches)."""

from __future__ import annotations

import functools
import os
from contextlib import nullcontext

from atomscore.validation import check_int


def default_threads() -> int:
    """Number of worker threads used by default: the CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def resolve_threads(n_threads) -> int:
    """``n_threads`` checked (an int >= 1), or :func:`default_threads` when None."""
    return default_threads() if n_threads is None else check_int(n_threads, "n_threads", minimum=1)


@functools.lru_cache(maxsize=1)
def _threadpool_controller():
    """One ``threadpoolctl`` controller (numpy's BLAS is loaded by now): ``threadpool_limits``
    re-scans the loaded libraries on every call (0.7 ms, ~5% of a 10k x 2.5k float32 pass)."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional: without it BLAS may oversubscribe, results are the same
        return None
    return ThreadpoolController()


def blas_single_thread():
    """Context keeping BLAS (faiss' own OpenBLAS included) to one thread while our own threads
    share the work: BLAS or OpenMP threads spinning at barriers made a 2-thread pass 2-4x slower
    than one thread on a loaded machine."""
    controller = _threadpool_controller()
    return nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")
