"""Where an eager forward+backward call's host time goes, on the GPU (issue 19's eager 4K target).

    PYTHONPATH=src python benchmarks/lab/eager_host.py [--n 4096] [--calls 300] [--json PATH] [--md PATH]

Per method (ours strided / fixed through ``sparse_attention``, SDPA cuDNN, and two floors: a Python
``autograd.Function`` that launches one kernel each way, and the same product as a built-in op):
``do_bench`` ms (what ``benchmarks/attention.py`` reports: per call, L2 flushed between calls),
back-to-back wall µs per call (no flush, one synchronisation at the end), and for ours the same
with every kernel launch a no-op (host path alone). Then cProfile's largest own times for ours.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gpu_check import case_heads  # the target cases' per-head patterns

from sparse_transformer import sparse_attention
from sparse_transformer.kernels.triton.launcher import Launcher


class _Scale(torch.autograd.Function):
    """A Python autograd function: one kernel forward, one backward."""

    @staticmethod
    def forward(ctx, x):
        return x * 2.0

    @staticmethod
    def backward(ctx, g):
        return g * 2.0


def methods(n: int) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    pats = {c: case_heads(c, n) for c in ("strided", "fixed")}

    def cudnn(q, k, v):
        with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

    return {
        "triton strided": lambda q, k, v: sparse_attention(q, k, v, pats["strided"], backend="triton"),
        "triton fixed": lambda q, k, v: sparse_attention(q, k, v, pats["fixed"], backend="triton"),
        "sdpa cudnn": cudnn,
        "python Function x*2": lambda q, k, v: _Scale.apply(q),
        "built-in x*2": lambda q, k, v: q * 2.0,
    }


def back_to_back(run, xs, calls: int) -> float:
    for _ in range(10):
        run()
        for x in xs:
            x.grad = None
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        run()
        for x in xs:
            x.grad = None
    torch.cuda.synchronize()
    return (time.perf_counter() - t0) / calls * 1e6


def launch_anatomy(run, calls: int) -> list[dict]:
    """Per kernel launch of one ``run``: µs per call of the whole launcher, of its specialization key
    (``_spec``) alone, and of the compiled kernel's ``run`` alone with prepared arguments."""
    from sparse_transformer.kernels.triton import launcher as L

    seen = []
    real = L.Launcher.__call__

    def spy(self, *a):
        seen.append((self, a))
        return real(self, *a)

    L.Launcher.__call__ = spy
    try:
        run()
    finally:
        L.Launcher.__call__ = real
    torch.cuda.synchronize()
    return [_anatomy(ln, a, calls) for ln, a in seen]


def _timed(fn, calls: int) -> float:
    fn()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn()
    t = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    return t


def _anatomy(ln, a: tuple, calls: int) -> dict:
    """One launch's pieces; with launchers of the (tensors, scalars, ...) interface also the key and
    the compiled kernel's run alone (older trees: the whole launcher only)."""
    from sparse_transformer.kernels.triton import launcher as L

    row = {"kernel": ln.fn.__name__, "launcher_us": _timed(lambda: ln(*a), calls)}
    if not hasattr(ln, "scalar_cache"):
        return row
    grid, tensors, scalars, consts, warps, stages, maxnreg, static, _ = a
    device = torch.cuda.current_device()
    tensor_key, flat = L._spec(tensors)
    key = (consts, warps, stages, maxnreg, device, tensor_key, ln.scalar_cache[scalars][1], ln._static(static)[0])
    k = ln.compiled.get(key)
    row.update(n_args=len(tensors) + len(scalars) + len(static) + len(consts), direct=k is not None,
               spec_us=_timed(lambda: (L._spec(tensors), ln.scalar_cache.get(scalars), ln._static(static)), calls))
    if k is not None:
        st = L.Launcher.state
        sflat = ln._static(static)[1]
        stream = st["stream"](device)
        pad = (1,) * (3 - len(grid))
        row["compiled_run_us"] = _timed(lambda: k.run(*grid, *pad, stream, k.function, k.packed_metadata, None,
                                                      None, None, *flat, *scalars, *sflat, *consts), calls)
        row["stream_us"] = _timed(lambda: st["stream"](device), calls)
    return row


def inside_times(run, xs, calls: int) -> dict:
    """µs per call spent inside the launchers and the autograd function's forward and backward, in the
    back-to-back loop (perf_counter around each)."""
    from sparse_transformer.kernels import op
    from sparse_transformer.kernels.triton import launcher as L

    acc = {"launcher": 0.0, "route_forward": 0.0, "route_backward": 0.0}
    saved = (L.Launcher.__call__, op.RouteFunction.forward, op.RouteFunction.backward)

    def timed(name, fn):
        def wrapper(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                acc[name] += time.perf_counter() - t0
        return wrapper

    L.Launcher.__call__ = timed("launcher", saved[0])
    op.RouteFunction.forward = staticmethod(timed("route_forward", saved[1]))
    op.RouteFunction.backward = staticmethod(timed("route_backward", saved[2]))
    try:
        total = back_to_back(run, xs, calls)
    finally:
        L.Launcher.__call__ = saved[0]
        op.RouteFunction.forward, op.RouteFunction.backward = (staticmethod(f) for f in saved[1:3])
    n = calls + 10
    return {"total_us": total, **{k: v / n * 1e6 for k, v in acc.items() if v}}


def main() -> None:
    import triton.testing

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=4096)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--json", default=None)
    ap.add_argument("--md", default=None)
    args = ap.parse_args()
    torch.manual_seed(0)
    q, k, v, g = (torch.randn(1, 8, args.n, 64, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    for x in (q, k, v):
        x.requires_grad_(True)
    rows, profiles = [], {}
    for name, call in methods(args.n).items():
        def run(call=call):
            call(q, k, v).backward(g)

        run()
        torch.cuda.synchronize()
        row = {"method": name,
               "do_bench_ms": float(triton.testing.do_bench(run, warmup=25, rep=100, grad_to_none=[q, k, v],
                                                            return_mode="median")),
               "back_to_back_us": back_to_back(run, (q, k, v), args.calls)}
        def fwd(call=call):
            with torch.no_grad():
                call(q, k, v)

        row["forward_us"] = back_to_back(fwd, (), args.calls)
        with torch.autograd.set_multithreading_enabled(False):  # the backward on this thread
            row["one_thread_us"] = back_to_back(run, (q, k, v), args.calls)
        if name.startswith("triton"):
            real = Launcher.__call__
            Launcher.__call__ = lambda self, *a, **kw: None
            try:
                row["no_launch_us"] = back_to_back(run, (q, k, v), args.calls)
                row["forward_no_launch_us"] = back_to_back(fwd, (), args.calls)
                with torch.autograd.set_multithreading_enabled(False):
                    row["one_thread_no_launch_us"] = back_to_back(run, (q, k, v), args.calls)
            finally:
                Launcher.__call__ = real
            pr = cProfile.Profile()
            pr.enable()
            for _ in range(args.calls):
                run()
                q.grad = k.grad = v.grad = None
            torch.cuda.synchronize()
            pr.disable()
            s = io.StringIO()
            pstats.Stats(pr, stream=s).sort_stats("tottime").print_stats(25)
            profiles[name] = s.getvalue()
            row["launches"] = launch_anatomy(run, args.calls)
            row["inside"] = inside_times(run, (q, k, v), args.calls)
        rows.append(row)
        print(json.dumps(row), flush=True)
    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
           "triton": __import__("triton").__version__, "n": args.n, "calls": args.calls}
    lines = [f"# Eager forward+backward host time at N={args.n} ({env['device']})", "",
             f"torch {env['torch']}, triton {env['triton']}; B=1 H=8 D=64 bf16", "",
             ("| method | do_bench ms | back to back µs/call | launches as no-ops | forward only (no grad) "
             "| forward, no-op launches | backward on the calling thread | same, no-op launches |"),
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        nl, fnl = (f"{r[x]:.1f}" if x in r else "-" for x in ("no_launch_us", "forward_no_launch_us"))
        lines.append(f"| {r['method']} | {r['do_bench_ms']:.3f} | {r['back_to_back_us']:.1f} | {nl} | "
                     f"{r['forward_us']:.1f} | {fnl} | {r['one_thread_us']:.1f} | "
                     f"{r.get('one_thread_no_launch_us', float('nan')):.1f} |")
    lines += ["", "Launch anatomy (µs per call, each piece timed alone in a loop):", "",
              "| method | kernel | args | whole launcher | key (_spec) | compiled run | stream lookup |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        for a in r.get("launches", []):
            lines.append(f"| {r['method']} | {a['kernel']} | {a.get('n_args', '-')} | {a['launcher_us']:.1f} | "
                         f"{a.get('spec_us', float('nan')):.1f} | {a.get('compiled_run_us', float('nan')):.1f} | "
                         f"{a.get('stream_us', float('nan')):.2f} |")
    lines += ["", "Inside (µs per call, back to back, perf_counter around each piece):", ""]
    lines += [f"* {r['method']}: " + ", ".join(f"{k} {v:.1f}" for k, v in r["inside"].items())
              for r in rows if "inside" in r]
    for name, text in profiles.items():
        lines += ["", f"## cProfile, {name}, {args.calls} calls (own time first)", "", "```", text.strip(), "```"]
    md = "\n".join(lines) + "\n"
    print(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows, "profiles": profiles}, indent=1))
    if args.md:
        Path(args.md).write_text(md)


if __name__ == "__main__":
    main()
