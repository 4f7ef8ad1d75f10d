"""QUESTS kernel backends side by side: numpy vs torch (CPU or CUDA) vs ``quests.gpu``.

Same descriptors as benchmarks/quests_kernels.py (QUESTS, k=32, cutoff 5 Å, rattled and
strained Si, Cu, C60), bandwidth 0.015. For the entropy of N environments and the dH of
M = N/10 queries (more strongly rattled) against them, it prints the time of each backend
and precision, the pairs per second (core-seconds per 10^9 pairs on the CPU), and the
largest difference to numpy float64 (relative for H, absolute for dH). ``quests.gpu``
(quests' own torch code, float64 by default) runs at ``--quests-max-n`` and below.

CPU (what CI machines have): ``python benchmarks/quests_backends.py --n 20000``.
GPU (issue 17's open figure; N = 10^6 environments, 10^5 queries)::

    python benchmarks/quests_backends.py --device cuda --n 1000000 --tile 8192 --skip-numpy-above 100000

Above ``--skip-numpy-above`` the CPU time is extrapolated from the largest measured N by the
pair count (marked ``~``). Descriptors above 10^5 are the 10^5 real ones plus copies
jittered by 0.2 h (building 10^6 real descriptors takes minutes).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def data(n, rattle, seed, h):
    from quests_kernels import descriptors

    base = descriptors(min(n, 100_000), rattle, seed)
    if n <= len(base):
        return base
    rng = np.random.default_rng(seed)
    copies = [base] + [base + rng.normal(scale=0.2 * h, size=base.shape) for _ in range(math.ceil(n / len(base)) - 1)]
    return np.vstack(copies)[:n]


def timed(fn):
    t0 = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - t0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--tile", type=int, default=1024)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--bandwidth", type=float, default=0.015)
    parser.add_argument("--quests-max-n", type=int, default=20_000)
    parser.add_argument("--skip-numpy-above", type=int, default=100_000)
    parser.add_argument("--quests-batch", type=int, default=4096, help="quests.gpu batch (its default 20000: 3 GB f64)")
    args = parser.parse_args(argv)

    import torch

    from atomscore.quests.kernels import gaussian as G

    h, n, dev = args.bandwidth, args.n, args.device
    threads = args.threads or G.default_threads()
    x = data(n, (0.01, 0.1), n, h)
    y = data(max(n // 10, 1), (0.1, 0.3), n + 1, h)
    name = torch.cuda.get_device_name(0) if dev.startswith("cuda") else f"{threads} CPU threads"
    print(f"N = {n}, M = {len(y)}, bandwidth {h}, tile {args.tile}, torch {torch.__version__} on {dev} "
          f"({name}); load {os.getloadavg()[0]:.1f}", flush=True)
    header = f"{'task':<8}{'backend':<22}{'time s':>10}{'pairs/s':>11}{'core-s/1e9':>11}  diff to numpy f64"
    print(header)
    print("-" * len(header))
    tasks = {
        "entropy": (lambda **kw: G.entropy(x, h, tile_size=args.tile, n_threads=threads, **kw), n * (n + 1) / 2),
        "dH": (lambda **kw: G.delta_entropy(y, x, h, tile_size=args.tile, n_threads=threads, **kw), len(y) * n),
    }
    for task, (call, pairs) in tasks.items():
        ref = None
        if n <= args.skip_numpy_above:
            runs = [("numpy f64", {}), ("numpy f32", {"precision": "float32"})]
        else:
            runs = []
            print(f"{task:<8}{'numpy':<22}{'~':>10}  skipped above N = {args.skip_numpy_above}: "
                  f"~{pairs * 18.5e-9 / threads:.0f} s f64 at 18.5 core-s per 1e9 pairs (benchmarks/quests_estimates.py)")
        runs += [(f"torch f64 {dev}", {"backend": "torch", "device": dev}),
                 (f"torch f32 {dev}", {"backend": "torch", "device": dev, "precision": "float32"})]
        for label, kw in runs:
            value, t = timed(lambda: call(**kw))
            if dev.startswith("cuda"):
                torch.cuda.synchronize()
            if ref is None and label == "numpy f64":
                ref = value
            if ref is None:
                diff = "n/a"
            elif task == "entropy":
                diff = f"{abs(value - ref) / abs(ref):.1e} relative"
            else:
                diff = f"{np.max(np.abs(value - ref)):.1e} nats"
            core = t * (threads if "cpu" in label or "numpy" in label else 1) / pairs * 1e9
            print(f"{task:<8}{label:<22}{t:10.2f}{pairs / t:11.2e}{core:11.1f}  {diff}", flush=True)
        if n <= args.quests_max_n:
            from quests.gpu import entropy as QG

            xt = torch.tensor(x, dtype=torch.float64)
            if task == "entropy":
                value, t = timed(lambda: float(QG.entropy(xt, h, batch_size=args.quests_batch, device=dev)))
            else:
                yt = torch.tensor(y, dtype=torch.float64)
                value, t = timed(lambda: QG.delta_entropy(yt, xt, h, batch_size=args.quests_batch, device=dev).cpu().numpy())
            if ref is None:
                diff = "n/a"
            elif task == "entropy":
                diff = f"{abs(value - ref) / abs(ref):.1e} relative"
            else:
                finite = np.isfinite(value)
                diff = f"{np.max(np.abs(value[finite] - ref[finite])):.1e} nats ({int((~finite).sum())} inf rows)"
            print(f"{task:<8}{'quests.gpu f64 ' + dev:<22}{t:10.2f}{pairs / t:11.2e}{'':>11}  {diff}", flush=True)


if __name__ == "__main__":
    main()
