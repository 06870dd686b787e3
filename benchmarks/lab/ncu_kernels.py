"""Runs the Triton kernels of the target cases a few times, for a profiler to read (GPU).

    ncu --clock-control none -k regex:"fwd_kernel|bwd_kernel" --launch-skip 2 --launch-count 2 \
        --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
        --section SchedulerStats python benchmarks/lab/ncu_kernels.py --case strided:65536

Per ``--reps``: one forward (``fwd_kernel``, one launch per round) and one backward (``delta_kernel`` where the plan
uses it, ``bwd_kernel``, one launch per round) called directly (``forward_tables`` / ``backward_tables``, no
autograd), B=1, H=8, D=64, bf16, under the default launch policy (long-walk forwards on their own
tiles). The first
repetition compiles, so skip its launches (``--launch-skip``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from gpu_check import case_heads  # the target cases' per-head patterns

from sparse_transformer.kernels.triton import backward_tables, forward_tables, kernel_tables


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="strided:65536", help="strided:N or fixed:N")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--block", type=int, default=64, help="plan tile")
    args = ap.parse_args()
    case, n = args.case.split(":")
    n = int(n)
    heads = case_heads(case, n)
    tabs = kernel_tables([p.plan(n, args.block, "cuda") for p in heads], "cuda")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v, do = (torch.randn(1, 8, n, 64, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(4))
    for _ in range(args.reps):
        o, lse = forward_tables(q, k, v, tabs, 0.125)  # on tabs.fwd_tables
        backward_tables(q, k, v, o, lse, do, tabs, 0.125)
    torch.cuda.synchronize()
    print(f"{args.case}: {args.reps} forward+backward calls done")


if __name__ == "__main__":
    main()
