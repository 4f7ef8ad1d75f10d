"""The tile pass of :mod:`atomscore.quests.kernels.gaussian` on torch tensors (CPU or CUDA).

``gaussian`` builds the centred, lifted operands and decides which rows need the float64
log-sum-exp repair; this module only runs a pass over the tiles, with the same contract
as ``gaussian._tile_pass``: one matrix product per tile, the float64 clip to
``[floor, lift]``, ``exp``, row sums by a matrix-vector product accumulated in float64
(plus column sums of the off-diagonal tiles of a symmetric pass), or, for the repair, the
one-pass log-sum-exp with a running row maximum. The operands are copied to the device
once per pass. float32 matrix products run at full float32 precision (TF32 off).

torch is the optional extra ``atomscore[gpu]``; without it :func:`tile_pass_on` raises
:class:`~atomscore.errors.MissingExtraError`. On a GPU, larger tiles (``tile_size=8192``)
keep it busy; on the CPU the tiles are shared among ``n_threads`` Python threads, each
running torch on one thread, as numpy's pass does.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import numpy as np

from atomscore.errors import InputError, missing_extra
from atomscore.quests.kernels.tiles import tile_pairs

__all__ = ["tile_pass_on", "torch_device"]


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise missing_extra("backend='torch'", "gpu", cause=exc) from None
    return torch


def torch_device(device):
    """``device`` (None, ``'cpu'``, ``'cuda'``, ``'cuda:N'``) as a usable ``torch.device``."""
    torch = _torch()
    name = "cpu" if device is None else device
    if not isinstance(name, str):
        raise InputError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r} ({exc})") from None
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"device: expected 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise InputError(f"device={device!r}: torch {torch.__version__} sees no CUDA GPU "
                             "(torch.cuda.is_available() is False); use device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise InputError(f"device={device!r}: only {torch.cuda.device_count()} CUDA device(s)")
    return dev


def tile_pass_on(device):
    """The tile pass (signature of ``gaussian._tile_pass``) running on ``device``."""
    return functools.partial(_tile_pass, device=torch_device(device))


@contextmanager
def _settings(torch, dev):
    """Full-precision float32 products (no TF32) and, on the CPU, one torch thread per
    worker thread (torch's own OpenMP threads meet at a barrier after every operation,
    which a loaded machine makes several times slower); restored after."""
    precision = torch.get_float32_matmul_precision()
    threads = torch.get_num_threads()
    torch.set_float32_matmul_precision("highest")
    if dev.type == "cpu" and threads != 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(precision)
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)


def _tile_pass(ops_list, tile, symmetric, dtype, n_threads, clip, shifted=False, *, device):
    """``gaussian._tile_pass`` with torch: returns a float64 numpy array (n_rows, n_h).

    On the CPU the tiles are shared among ``n_threads`` Python threads as in numpy (torch
    releases the GIL); on a GPU they run in order on its stream.
    """

    torch = _torch()
    n_rows, n_cols, n_h = len(ops_list[0].left), len(ops_list[0].right), len(ops_list)
    tdtype = torch.float32 if dtype is np.float32 else torch.float64
    pairs = tile_pairs(n_rows, n_cols, tile, symmetric)

    def work(lefts, rights, chunk):
        acc = torch.zeros((n_h, n_rows), dtype=torch.float64, device=device)
        top = torch.full((n_h, n_rows), -torch.inf, dtype=torch.float64, device=device) if shifted else None
        acc_cols = torch.zeros((n_h, n_cols), dtype=torch.float64, device=device) if symmetric else None
        ones = torch.ones(tile, dtype=tdtype, device=device)
        buf = torch.empty((tile, tile), dtype=tdtype, device=device)
        for a, b in chunk:
            for k in range(n_h):
                left, right = lefts[k][a:a + tile], rights[k][b:b + tile]
                e = buf[:len(left), :len(right)]
                torch.matmul(left, right.T, out=e)
                if shifted:
                    m_old = top[k, a:a + tile]
                    m_new = torch.maximum(m_old, e.amax(dim=1).to(torch.float64))
                    e -= m_new[:, None].to(tdtype)
                    acc[k, a:a + tile] *= torch.exp(m_old - m_new)
                    top[k, a:a + tile] = m_new
                if clip is not None:  # as numpy: keeps float64 exp off subnormals
                    torch.clamp(e, *clip, out=e)
                torch.exp(e, out=e)
                acc[k, a:a + tile] += (e @ ones[:e.shape[1]]).to(torch.float64)
                if symmetric and b != a:
                    acc_cols[k, b:b + tile] += (ones[:e.shape[0]] @ e).to(torch.float64)
        if shifted:
            return top, acc
        return acc if not symmetric else acc + acc_cols

    with _settings(torch, device), torch.no_grad():
        lefts = [torch.from_numpy(np.ascontiguousarray(ops.left, dtype=dtype)).to(device) for ops in ops_list]
        rights = [torch.from_numpy(np.ascontiguousarray(ops.right, dtype=dtype)).to(device) for ops in ops_list]
        n_workers = 1 if device.type != "cpu" else max(1, min(n_threads, len(pairs)))
        if n_workers == 1:
            parts = [work(lefts, rights, pairs)]
        else:
            chunks = [pairs[k::n_workers] for k in range(n_workers)]
            with ThreadPoolExecutor(max_workers=n_workers) as pool:
                parts = list(pool.map(lambda chunk: work(lefts, rights, chunk), chunks))
        if shifted:
            top = functools.reduce(torch.maximum, [m for m, _ in parts])
            out = top + torch.log(sum(s * torch.exp(m - top) for m, s in parts))
        else:
            out = sum(parts)
        return out.T.cpu().numpy().copy()
