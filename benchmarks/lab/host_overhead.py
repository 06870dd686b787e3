"""Host time of the Triton backend's Python path, no GPU needed.

    python benchmarks/lab/host_overhead.py [--n 4096] [--calls 300]

Runs eager ``sparse_attention`` forward+backward calls of the strided target case (4 local + 4
strided heads, B=1, H=8, D=64, fp32 on the CPU) through the ``triton`` backend with every kernel
launch replaced by a no-op (``Launcher.__call__`` of
``sparse_transformer.kernels.triton.launcher``; ``TRITON_INTERPRET=1`` only to let the backend run on the CPU): what
is left is the dispatcher, the autograd function, the allocations and the launch preparation, the
host work an eager call pays before and around its launches. Prints microseconds per call.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch
from gpu_check import case_heads  # the target cases' per-head patterns

from sparse_transformer import sparse_attention
from sparse_transformer.kernels.triton.launcher import Launcher


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--calls", type=int, default=300)
    args = ap.parse_args()
    Launcher.__call__ = lambda self, *a, **kw: None  # no kernels: host cost only (this process)
    pats = case_heads("strided", args.n)
    q, k, v = (torch.randn(1, 8, args.n, 64, requires_grad=True) for _ in range(3))
    g = torch.randn(1, 8, args.n, 64)

    def step():
        sparse_attention(q, k, v, pats, backend="triton").backward(g)
        q.grad = k.grad = v.grad = None

    def forward():
        sparse_attention(q, k, v, pats, backend="triton")

    for name, fn in (("forward+backward", step), ("forward", forward)):
        for _ in range(10):
            fn()
        t0 = time.perf_counter()
        for _ in range(args.calls):
            fn()
        print(f"{name:17s} {(time.perf_counter() - t0) / args.calls * 1e6:7.1f} us per call (launches as no-ops)")


if __name__ == "__main__":
    main()
