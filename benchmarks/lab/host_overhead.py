"""Host time of the Triton backend's Python path, no GPU needed.

    python benchmarks/lab/host_overhead.py [--n 4096] [--calls 1000] [--rounds 5] [--case strided|fixed]

Runs eager ``sparse_attention`` forward+backward calls of a target case (B=1, H=8, D=64, fp32 on the
CPU) through the ``triton`` backend, with Triton's compiled kernels replaced by stand-ins whose launch
does nothing: the launchers take their direct path as on a GPU (specialization key, cache lookup,
argument flattening), and what is timed is the dispatcher, the autograd function, the allocations and
the launch preparation, the host work an eager call pays around its kernels. Beside it, a Python
``autograd.Function`` that saves and allocates the same tensors and launches nothing: the floor of
any Python operator. ``TRITON_INTERPRET=1`` only lets the backend run on the CPU. Prints CPU µs per
call, the best of ``--rounds`` rounds.
"""

from __future__ import annotations

import argparse
import inspect
import os
import sys
import time
from pathlib import Path

os.environ["TRITON_INTERPRET"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import torch
from gpu_check import case_heads  # the target cases' per-head patterns

from sparse_transformer import sparse_attention
from sparse_transformer.kernels.triton import launcher


class _Compiled:
    """A compiled kernel whose launch does nothing."""

    function, packed_metadata = object(), ()

    def run(self, *args):
        return None


class _Kernel:
    """Stands in for a ``@triton.jit`` function: same parameters, ``kernel[grid](...)`` returns a
    :class:`_Compiled`."""

    def __init__(self, fn):
        py = getattr(fn, "fn", fn)  # the interpreter's wrapper holds the Python function
        self.__name__ = py.__name__
        self.params = [type("P", (), {"is_constexpr": "constexpr" in str(p.annotation)})
                       for p in inspect.signature(py).parameters.values()]

    def __getitem__(self, grid):
        return lambda *args, **kw: _Compiled()


def fake_direct_launches() -> None:
    """Every launcher takes the direct path (as with Triton 3.6 on a GPU) into no-op kernels."""
    launcher.Launcher.state.update(ok=True, reason="", runtime=type("R", (), {"launch_enter_hook": None,
                                                                                "launch_exit_hook": None}),
                                   stream=lambda device: 0)
    torch.cuda.current_device = lambda: 0
    ks = launcher.kernels()
    for ln in vars(ks).values():
        if isinstance(ln, launcher.Launcher):
            ln.fn = _Kernel(ln.fn)


class _Floor(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v):
        out, lse = torch.empty_like(q), q.new_empty(q.shape[:3])
        ctx.save_for_backward(q, k, v, out, lse)
        return out

    @staticmethod
    def backward(ctx, g):
        q, k, v, _, _ = ctx.saved_tensors
        return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--calls", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--case", default="strided", choices=("strided", "fixed"))
    args = ap.parse_args()
    fake_direct_launches()
    pats = case_heads(args.case, args.n)
    q, k, v = (torch.randn(1, 8, args.n, 64, requires_grad=True) for _ in range(3))
    g = torch.randn(1, 8, args.n, 64)

    def clear():
        q.grad = k.grad = v.grad = None

    def ours():
        sparse_attention(q, k, v, pats, backend="triton").backward(g)
        clear()

    def ours_forward():
        with torch.no_grad():
            sparse_attention(q, k, v, pats, backend="triton")

    def floor():
        _Floor.apply(q, k, v).backward(g)
        clear()

    def floor_forward():
        with torch.no_grad():
            _Floor.apply(q, k, v)

    for name, fn in (("ours, forward+backward", ours), ("ours, forward", ours_forward),
                     ("floor, forward+backward", floor), ("floor, forward", floor_forward)):
        for _ in range(20):
            fn()
        best = []
        for _ in range(args.rounds):  # best round, in CPU time: this machine's wall time is noisy
            t0 = time.process_time()
            for _ in range(args.calls):
                fn()
            best.append((time.process_time() - t0) / args.calls * 1e6)
        print(f"{args.case:8s} {name:24s} {min(best):7.1f} us per call (CPU time, best of {args.rounds})")
    print("launches:", launcher.launch_stats())


if __name__ == "__main__":
    main()
