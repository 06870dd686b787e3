"""Attention benchmark: our backends against dense causal SDPA.

CPU mode (default): ms and peak memory of the ``reference`` and ``torch`` backends and of
``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``, forward and forward+backward,
at N = 1024 ... 16384, B=1, H=4, D=64, float32, for two cases:

* factorized strided in multi-head mode: heads (local(l), strided(l), local(l), strided(l)), l ~ sqrt(N);
* fixed merged: every head union(block(128), summary(128, 32)).

Each measurement runs in a fresh subprocess so that its peak resident memory (minus the memory
held before the call) is the call's own. Prints a table, writes JSON and a short .md under
benchmarks/results/.

CUDA mode (``--device cuda``): N = 4096, 16384, 65536, B=1, H=8, D=64, bfloat16, forward and
forward+backward, for the same two cases (strided: 4 local + 4 strided heads, l = sqrt(N) rounded
to a power of two; fixed: every head the merged union(block(128), summary(128, 32))) and the methods

* ``triton``: our fused kernels (``sparse_attention(..., backend="triton")``, per-head plans in
  one launch);
* ``flex``: our block plans fed to FlexAttention (``backend="flex"``, one call per pattern group);
* ``flex-naive``: FlexAttention given the paper's element mask as ``mask_mod`` (per head), its
  BlockMask built by ``create_block_mask`` at 128x128 blocks: no re-layout, so no block sparsity;
* ``sdpa``: dense causal ``scaled_dot_product_attention`` on the flash backend (does 1/density
  times the useful work); ``sdpa-cudnn``: the same on the cuDNN backend. Their ``dense_tflops``
  (every causal pair counted) is the rate the vendors' dense kernels reach at this head dim: a
  reference for what the fixed pattern's FLOP-bound targets ask;
* ``torch`` (N <= 16384) and ``reference`` (N = 4096): our pure-PyTorch backends.

Times are medians of ``triton.testing.do_bench`` (in-process, after a warm-up that compiles);
useful TFLOP/s count attended pairs only (4 * pairs * D forward, x3.5 forward+backward); peak
memory is the CUDA allocator's peak during one call minus what was allocated before it.

``--graph`` adds a second time per row, the same call captured in a CUDA graph (static q, k, v;
forward+backward with a fixed output gradient) and timed by replaying the graph: the GPU time with
the host's Python, dispatch and launch overhead removed, measured the same way for every method.
The eager time stays the primary column (it is what a training step pays without graphs).
``--dims 64 128`` runs the whole table once per head dim in the same process; ``--check`` first
checks our kernels against the float64 oracle at every case, N <= 16,384 and head dim (output and
all three gradients, the tolerance rule of docs/style.md). The summary gives per row our useful
TFLOP/s over cuDNN's dense rate and cuDNN's time over ours, then the round-two kernel targets.

    python benchmarks/attention.py                    # the whole CPU table (a few minutes)
    python benchmarks/attention.py --sizes 1024 4096  # a subset
    PYTHONPATH=src python benchmarks/attention.py --device cuda [--methods triton sdpa] [--sizes 4096] [--graph]
    PYTHONPATH=src python benchmarks/attention.py --device cuda --dims 64 128 --methods triton sdpa sdpa-cudnn flex \
        --graph --check                                 # the round-two table (issue 19)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
# Skip the O(N^2) reference where its score matrices would not fit comfortably in memory.
REFERENCE_MAX_N = 8192


def case_patterns(case: str, n: int):
    from sparse_transformer import patterns as P

    if case == "strided":
        l = 2 ** round(math.log2(math.sqrt(n)))
        return [P.local(l), P.strided(l)] * 2, f"4 heads local/strided l={l}"
    if case == "fixed":
        return P.union(*P.factorized("fixed", 128, 32)), "merged block(128)+summary(128,32)"
    raise ValueError(case)


def pairs(pattern, n: int, heads: int) -> int:
    """Attended (query, key) pairs over all heads, counted exactly from the block plans."""
    pats = pattern if isinstance(pattern, list) else [pattern] * heads
    return sum(p.plan(n, 128).pairs() for p in pats)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_one(method: str, case: str, n: int, heads: int, dim: int, backward: bool, repeats: int) -> dict:
    """Runs inside the child process: one warm-up call (its peak memory), then `repeats` timed."""
    import resource

    import torch
    import torch.nn.functional as F

    from sparse_transformer import sparse_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, requires_grad=backward) for _ in range(3))
    pattern, _ = case_patterns(case, n)
    if method != "sdpa":  # build (and cache) the plans outside the timed region
        with torch.no_grad():
            sparse_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], pattern, backend="torch")

    def call():
        if method == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = sparse_attention(q, k, v, pattern, backend=method)
        if backward:
            out.backward(torch.ones_like(out))
        return out

    base = _rss_bytes()
    call()  # warm-up; its peak resident memory is the call's memory
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "ms_all": times, "peak_mb": max(peak, 0) / 2**20}


def run_child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def env_info() -> dict:
    import torch

    try:
        # GIT_COMMIT first: a copied working tree (the device machine) may carry a stale .git.
        commit = os.environ.get("GIT_COMMIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "device": f"CPU: {cpu}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run_cpu(sizes: list[int], heads: int, dim: int, repeats: int) -> dict:
    rows = []
    for case in ("strided", "fixed"):
        for n in sizes:
            pattern, desc = case_patterns(case, n)
            npairs = pairs(pattern, n, heads)
            for method in ("sdpa", "torch", "reference"):
                for backward in (False, True):
                    row = {"case": case, "pattern": desc, "n": n, "method": method,
                           "pass": "fwd+bwd" if backward else "fwd", "pairs": npairs}
                    if method == "reference" and n > REFERENCE_MAX_N:
                        row["skipped"] = f"O(N^2) reference skipped above N={REFERENCE_MAX_N} (memory)"
                    else:
                        args = [method, case, str(n), str(heads), str(dim), str(int(backward)), str(repeats)]
                        row.update(run_child(args))
                    rows.append(row)
                    _print_row(row)
    return {"env": env_info(), "config": {"B": 1, "H": heads, "D": dim, "dtype": "float32"}, "rows": rows}


def _print_row(row: dict) -> None:
    if "ms" in row:
        print(f"{row['case']:8s} N={row['n']:6d} {row['method']:9s} {row['pass']:7s} "
              f"{row['ms']:10.1f} ms  peak {row['peak_mb']:8.1f} MB", flush=True)
    else:
        print(f"{row['case']:8s} N={row['n']:6d} {row['method']:9s} {row['pass']:7s} "
              f"{row.get('skipped') or row.get('error')}", flush=True)


def summarize(result: dict) -> str:
    """A markdown table with the torch-vs-SDPA speed-up per case and size."""
    rows = result["rows"]
    env = result["env"]
    lines = [
        f"# CPU attention benchmark ({env['date']})",
        "",
        (f"{env['device']}; torch {env['torch']} ({env['threads']} threads); commit {env['commit']}; "
        f"B=1, H={result['config']['H']}, D={result['config']['D']}, float32."),
        "Command: `python benchmarks/attention.py`",
        "",
        "| case | N | pass | SDPA ms | torch ms | reference ms | torch speed-up vs SDPA | torch peak MB | SDPA peak MB | one N×N fp32 matrix MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    key = {(r["case"], r["n"], r["method"], r["pass"]): r for r in rows}
    for case in ("strided", "fixed"):
        for n in sorted({r["n"] for r in rows}):
            for ps in ("fwd", "fwd+bwd"):
                s, t, f = (key.get((case, n, m, ps), {}) for m in ("sdpa", "torch", "reference"))
                if "ms" not in s or "ms" not in t:
                    continue
                ref = f"{f['ms']:.1f}" if "ms" in f else "–"
                lines.append(
                    f"| {case} | {n} | {ps} | {s['ms']:.1f} | {t['ms']:.1f} | {ref} | {s['ms'] / t['ms']:.1f}x | "
                    f"{t['peak_mb']:.0f} | {s['peak_mb']:.0f} | {n * n * 4 / 2**20:.0f} |"
                )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------
# CUDA mode
# --------------------------------------------------------------------------------------------

CUDA_SIZES = [4096, 16384, 65536]
CUDA_METHODS = ("triton", "flex", "flex-naive", "sdpa", "sdpa-cudnn", "torch", "reference")
CUDA_LIMITS = {"torch": 16384, "reference": 4096}  # largest N each slow method runs at


def cuda_heads(case: str, n: int, heads: int):
    from sparse_transformer import patterns as P

    if case == "strided":
        l = 2 ** round(math.log2(math.sqrt(n)))
        return [P.local(l)] * (heads // 2) + [P.strided(l)] * (heads // 2), f"{heads // 2} local + {heads // 2} strided heads, l={l}"
    return [P.union(*P.factorized("fixed", 128, 32))] * heads, "merged union(block(128), summary(128, 32)) in every head"


def _naive_flex(heads: list, n: int):
    """FlexAttention with the paper's element mask (per head) as mask_mod: the naive baseline."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    distinct = list(dict.fromkeys(heads))
    group = torch.tensor([distinct.index(p) for p in heads], device="cuda")

    def mask_mod(b, h, i, j):
        if len(distinct) == 1:
            return distinct[0].allowed(i, j)
        m = (group[h] == 0) & distinct[0].allowed(i, j)
        for g, p in enumerate(distinct[1:], start=1):
            m = m | ((group[h] == g) & p.allowed(i, j))
        return m

    h = None if len(distinct) == 1 else len(heads)
    bm = create_block_mask(mask_mod, B=None, H=h, Q_LEN=n, KV_LEN=n, device="cuda", _compile=True)
    flex = torch.compile(flex_attention, dynamic=False)

    def call(q, k, v):
        return flex(q, k, v, block_mask=bm)

    return call, bm.sparsity()


def _cuda_method(method: str, heads: list, n: int):
    import torch.nn.functional as F

    from sparse_transformer import sparse_attention

    info = {}
    if method in ("triton", "flex", "torch", "reference"):
        def call(q, k, v):
            return sparse_attention(q, k, v, heads, backend=method)
    elif method == "flex-naive":
        call, sparsity = _naive_flex(heads, n)
        info["blockmask_sparsity_pct"] = float(sparsity)
    elif method in ("sdpa", "sdpa-cudnn"):
        from torch.nn.attention import SDPBackend, sdpa_kernel

        backend = SDPBackend.FLASH_ATTENTION if method == "sdpa" else SDPBackend.CUDNN_ATTENTION

        def call(q, k, v):
            with sdpa_kernel(backend):
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(CUDA_METHODS)}")
    return call, info


def _one_call(call, q, k, v, g, backward: bool):
    """One timed unit: the forward (no autograd), or forward then backward with gradient ``g``."""
    import torch

    def run():
        if backward:
            call(q, k, v).backward(g)
        else:
            with torch.no_grad():
                call(q, k, v)

    return run


CHECK_MAX_N = 16384  # the dense oracle's per-head float64 N x N scores: 2 GB at 16K


def check_float64(heads: list, q, k, v, g) -> dict:
    """Our Triton output and dq, dk, dv against the float64 oracle (the dense ``reference``
    backend), head by head, with the tolerance rule of docs/style.md: max|ours - ref64| <= 2
    max|ref_lowprec - ref64| + 1e-2 (bf16), ref_lowprec the oracle computed in bfloat16."""
    import torch

    from sparse_transformer import sparse_attention
    from sparse_transformer.kernels import reference

    def grads(pattern, g_out, *xs, upcast: bool = True):
        """[out, dq, dk, dv] of one call on fresh leaves ``xs`` (``pattern=None``: ours)."""
        xs = [x.detach().clone().requires_grad_(True) for x in xs]
        if pattern is None:
            out = sparse_attention(*xs, heads, backend="triton")
        else:
            out = reference.attention(*xs, pattern, upcast=upcast)
        out.backward(g_out.to(out.dtype))
        return [out.detach(), *(x.grad for x in xs)]

    ours = grads(None, g, q, k, v)
    err = dict.fromkeys(("out", "dq", "dk", "dv"), 0.0)
    base = dict(err)
    for h, pat in enumerate(heads):
        qh, kh, vh, gh = (x[:, h:h + 1].detach() for x in (q, k, v, g))
        ref = grads(pat, gh, qh.double(), kh.double(), vh.double())
        low = grads(pat, gh, qh, kh, vh, upcast=False)
        for name, o, r, lo in zip(err, ours, ref, low):
            err[name] = max(err[name], (o[:, h:h + 1].double() - r).abs().max().item())
            base[name] = max(base[name], (lo.double() - r).abs().max().item())
        del ref, low
        torch.cuda.empty_cache()
    ok = all(err[x] <= 2 * base[x] + 1e-2 for x in err)
    return {"max_err": err, "ref_lowprec_err": base, "ok": ok}


def measure_cuda(call, q, k, v, g, backward: bool) -> dict:
    import torch
    import triton.testing

    run = _one_call(call, q, k, v, g, backward)
    t0 = time.perf_counter()
    run()  # warm-up: compiles, builds and caches plans / tables
    torch.cuda.synchronize()
    first = time.perf_counter() - t0
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    ms = triton.testing.do_bench(run, warmup=25, rep=100, grad_to_none=[q, k, v], return_mode="median")
    return {"ms": float(ms), "peak_mb": peak, "first_call_s": first}


def measure_graph(call, q, k, v, g, backward: bool) -> dict:
    """Replay time (median ms) of one call captured in a CUDA graph, after three eager warm-up
    calls on a side stream (PyTorch's recipe for capturing autograd). Static inputs; the backward
    uses the fixed gradient ``g`` and writes q/k/v.grad into the graph's memory pool."""
    import torch
    import triton.testing

    step = _one_call(call, q, k, v, g, backward)
    q.grad = k.grad = v.grad = None
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
            q.grad = k.grad = v.grad = None
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            step()
        graph.replay()
        torch.cuda.synchronize()
        ms = triton.testing.do_bench(graph.replay, warmup=25, rep=100, return_mode="median")
    finally:
        q.grad = k.grad = v.grad = None
        del graph
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
    return {"graph_ms": float(ms)}


def cuda_env_info() -> dict:
    import torch
    import triton

    info = env_info()
    info["device"] = torch.cuda.get_device_name()
    info["triton"] = triton.__version__
    info["cuda"] = torch.version.cuda
    return info


def run_cuda(sizes: list[int], heads: int, dim: int, methods: list[str], cases: list[str],
             partial: Path | None = None, graph: bool = False, check: bool = False) -> dict:
    """All rows; with ``partial`` the rows so far are rewritten there after each one; ``check``:
    the Triton kernels against float64 at every (case, N <= CHECK_MAX_N) (:func:`check_float64`)."""
    import torch

    torch._dynamo.config.cache_size_limit = 64  # one FlexAttention compile per shape and mask
    torch._dynamo.config.accumulated_cache_size_limit = 512
    rows, checks = [], []
    for case in cases:
        for n in sizes:
            pats, desc = cuda_heads(case, n, heads)
            npairs = pairs(pats, n, heads)
            torch.manual_seed(0)
            q, k, v = (torch.randn(1, heads, n, dim, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            g = torch.randn_like(q)
            if check and "triton" in methods and n <= CHECK_MAX_N:
                try:
                    c = {"case": case, "n": n, "dim": dim, **check_float64(pats, q, k, v, g)}
                except Exception as e:  # noqa: BLE001  (a failed check is a result)
                    c = {"case": case, "n": n, "dim": dim, "ok": False, "error": f"{type(e).__name__}: {str(e)[:200]}"}
                torch.cuda.empty_cache()
                checks.append(c)
                print(f"check {case} N={n} D={dim}: {'ok' if c['ok'] else 'FAILED'} "
                      f"{c.get('max_err', c.get('error'))}", flush=True)
            for method in methods:
                if n > CUDA_LIMITS.get(method, n):
                    for backward in (False, True):
                        rows.append({"case": case, "pattern": desc, "n": n, "dim": dim, "method": method,
                                     "pass": "fwd+bwd" if backward else "fwd", "pairs": npairs,
                                     "skipped": f"runs up to N={CUDA_LIMITS[method]} here"})
                    continue
                try:
                    call, info = _cuda_method(method, pats, n)
                except Exception as e:  # noqa: BLE001  (a baseline failing is a result)
                    call, info = None, {"error": f"{type(e).__name__}: {str(e)[:200]}"}
                for backward in (False, True):
                    row = {"case": case, "pattern": desc, "n": n, "dim": dim, "method": method,
                           "pass": "fwd+bwd" if backward else "fwd", "pairs": npairs, **info}
                    if call is not None:
                        try:
                            row.update(measure_cuda(call, q, k, v, g, backward))
                            work = 4 * npairs * dim * (3.5 if backward else 1.0)
                            row["tflops"] = work / row["ms"] / 1e9
                            row["dense_tflops"] = 4 * (n * (n + 1) / 2) * heads * dim * (3.5 if backward else 1.0) / row["ms"] / 1e9
                        except Exception as e:  # noqa: BLE001  (OOM and compile failures are results)
                            row["error"] = f"{type(e).__name__}: {str(e)[:200]}"
                        torch.cuda.empty_cache()
                        if graph and "ms" in row:
                            try:
                                row.update(measure_graph(call, q, k, v, g, backward))
                            except Exception as e:  # noqa: BLE001  (a capture failing is a result)
                                row["graph_error"] = f"{type(e).__name__}: {str(e)[:200]}"
                                torch.cuda.synchronize()
                                torch.cuda.empty_cache()
                    rows.append(row)
                    _print_cuda_row(row)
                    if partial is not None:
                        partial.write_text(json.dumps({"rows": rows, "checks": checks}, indent=1))
            del q, k, v, g
            torch.cuda.empty_cache()
    info = cuda_env_info()
    if "triton" in methods:
        from sparse_transformer.kernels.triton import launch_stats

        info["triton_launches"] = launch_stats()
    return {"env": info, "config": {"B": 1, "H": heads, "D": dim, "dtype": "bfloat16", "graph": graph},
            "rows": rows, "checks": checks}


def _print_cuda_row(row: dict) -> None:
    head = f"{row['case']:8s} N={row['n']:6d} {row['method']:10s} {row['pass']:7s}"
    if "ms" in row:
        gr = f"  graph {row['graph_ms']:9.3f} ms" if "graph_ms" in row else (
            f"  graph error {row['graph_error'][:80]}" if "graph_error" in row else "")
        print(f"{head} {row['ms']:9.3f} ms {row['tflops']:7.1f} TF/s  peak {row['peak_mb']:8.1f} MB{gr}", flush=True)
    else:
        print(f"{head} {row.get('skipped') or row.get('error')}", flush=True)


def issue_targets(rows: list[dict]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for the kernel targets of round two (``docs/kernels.md``), from the
    fwd+bwd rows of one run; met is None where the rows it needs are missing."""
    key = {(r["case"], r["n"], r.get("dim", 64), r["method"]): r for r in rows if r["pass"] == "fwd+bwd" and "ms" in r}
    out = []
    for dim in sorted({r.get("dim", 64) for r in rows}):
        for n in (16384, 65536):
            t, c = key.get(("fixed", n, dim, "triton")), key.get(("fixed", n, dim, "sdpa-cudnn"))
            ratio = t["tflops"] / c["dense_tflops"] if t and c else None
            out.append((f"fixed N={n} D={dim}: useful rate >= 0.90 of cuDNN's",
                        f"{ratio:.2f} ({t['tflops']:.0f} vs {c['dense_tflops']:.0f} TF/s)" if ratio else "–",
                        None if ratio is None else ratio >= 0.90))
        t, c = key.get(("strided", 65536, dim, "triton")), key.get(("strided", 65536, dim, "sdpa-cudnn"))
        if dim == 64:
            out.append(("strided N=65536 D=64: <= 0.40 ms (>= 85x cuDNN)",
                        f"{t['ms']:.3f} ms ({c['ms'] / t['ms']:.0f}x)" if t and c else "–",
                        None if not t else t["ms"] <= 0.40))
        for case in ("strided", "fixed"):
            t, c = key.get((case, 4096, dim, "triton")), key.get((case, 4096, dim, "sdpa-cudnn"))
            out.append((f"{case} N=4096 D={dim}, eager: no slower than cuDNN",
                        f"{t['ms']:.3f} vs {c['ms']:.3f} ms" if t and c else "–",
                        None if not (t and c) else t["ms"] <= c["ms"]))
    for case in ("strided", "fixed"):
        a, b = key.get((case, 16384, 64, "triton")), key.get((case, 16384, 128, "triton"))
        if a and b:  # GPU time where both were also timed in a CUDA graph (eager short calls are host-bound)
            graph = "graph_ms" in a and "graph_ms" in b
            ra, rb = (a["tflops"] * a["ms"] / a["graph_ms"], b["tflops"] * b["ms"] / b["graph_ms"]) if graph else (
                a["tflops"], b["tflops"])
            out.append((f"{case} N=16384: D=128 rate >= 0.9 of D=64's ({'graph' if graph else 'eager'} times)",
                        f"{rb / ra:.2f} ({rb:.0f} vs {ra:.0f} TF/s)", rb / ra >= 0.9))
    return out


def summarize_cuda(result: dict, command: str) -> str:
    rows, env = result["rows"], result["env"]
    graph = bool(result["config"].get("graph")) or any("graph_ms" in r for r in rows)
    key = {(r["case"], r["n"], r.get("dim", 64), r["method"], r["pass"]): r for r in rows}
    methods = [m for m in CUDA_METHODS if any(r["method"] == m for r in rows)]
    cols = [f"{m} ms" for m in methods]
    if graph:
        cols += [f"{m} graph ms" for m in methods]
    lines = [
        f"# GPU attention benchmark ({env['date']})",
        "",
        (f"{env['device']}; torch {env['torch']}, triton {env['triton']}, CUDA {env['cuda']}; commit "
         f"{env['commit']}; B=1, H={result['config']['H']}, bfloat16. "
         "Median ms of triton.testing.do_bench; TF/s = useful TFLOP/s (4·pairs·D, ×3.5 fwd+bwd); "
         "÷ cuDNN rate = our useful TF/s over cuDNN's dense causal TF/s (every causal pair useful "
         "to it); cuDNN ÷ ours = the time ratio."),
        f"Command: `{command}`",
        "",
    ]
    if graph:
        lines += [
            ("`ms` columns: eager calls (host Python, dispatch and kernel launches included: what a "
             "training step pays). `graph ms` columns: the same call captured once in a CUDA graph "
             "(static inputs, forward+backward with a fixed output gradient) and timed by replaying "
             "it: GPU time without host overhead, measured the same way for every method."),
            "",
        ]
    launches = env.get("triton_launches")
    if launches:
        direct = sum(v["direct"] for v in launches.values() if isinstance(v, dict))
        via = sum(v["triton"] for v in launches.values() if isinstance(v, dict))
        state = "on" if launches.get("direct_ok") else "off: " + launches.get("reason", "")
        lines += [(f"Triton launches in this run: {direct} direct (cached compiled kernel), {via} through "
                   f"`kernel[grid]`; direct path {state}."), ""]

    def cell(r, field="ms"):
        if field in r:
            return f"{r[field]:.3f}"
        if "error" in r or (field == "graph_ms" and "graph_error" in r):
            return "error"
        return "–"

    for dim in sorted({r.get("dim", 64) for r in rows}):
        lines += [
            f"## head dim {dim}", "",
            "| case | N | pass | " + " | ".join(cols) + " | triton TF/s | ÷ cuDNN rate | cuDNN ÷ ours | triton peak MB |",
            "|---|---:|---|" + "---:|" * len(cols) + "---:|---:|---:|---:|",
        ]
        for case in ("strided", "fixed"):
            for n in sorted({r["n"] for r in rows if r["case"] == case and r.get("dim", 64) == dim}):
                for ps in ("fwd", "fwd+bwd"):
                    rs = [key.get((case, n, dim, m, ps), {}) for m in methods]
                    cells = [cell(r) for r in rs] + ([cell(r, "graph_ms") for r in rs] if graph else [])
                    t = key.get((case, n, dim, "triton", ps), {})
                    c = key.get((case, n, dim, "sdpa-cudnn", ps), {})
                    rate = f"{t['tflops'] / c['dense_tflops']:.2f}" if "ms" in t and "ms" in c else "–"
                    speed = f"{c['ms'] / t['ms']:.1f}x" if "ms" in t and "ms" in c else "–"
                    lines.append(f"| {case} | {n} | {ps} | " + " | ".join(cells)
                                 + f" | {t.get('tflops', 0):.0f} | {rate} | {speed} | {t.get('peak_mb', 0):.0f} |")
        lines.append("")
    targets = issue_targets(rows)
    if targets:
        lines += ["## Targets (fwd+bwd)", "", "| target | measured | verdict |", "|---|---|---|"]
        lines += [f"| {name} | {got} | {'–' if ok is None else 'met' if ok else 'MISSED'} |" for name, got, ok in targets]
        lines.append("")
    checks = result.get("checks") or []
    if checks:
        lines += ["## Correctness against the float64 oracle (same run)", "",
                  ("max|ours - ref64| <= 2 max|ref_lowprec - ref64| + 1e-2 for the output and dq, dk, dv (max "
                   f"over heads; low = the oracle in bf16); N <= {CHECK_MAX_N}, where the dense oracle fits."), "",
                  "| case | N | D | out | dq | dk | dv | verdict |", "|---|---:|---:|---:|---:|---:|---:|---|"]
        for c in checks:
            if "max_err" in c:
                errs = " | ".join(f"{c['max_err'][x]:.2e} (low {c['ref_lowprec_err'][x]:.2e})" for x in ("out", "dq", "dk", "dv"))
                lines.append(f"| {c['case']} | {c['n']} | {c['dim']} | {errs} | {'ok' if c['ok'] else 'FAILED'} |")
            else:
                lines.append(f"| {c['case']} | {c['n']} | {c['dim']} | – | – | – | – | error: {c['error']} |")
        lines.append("")
    errors = [r for r in rows if "error" in r or "graph_error" in r]
    if errors:
        lines += ["Errors:"] + [
            f"- {r['case']} N={r['n']} D={r.get('dim', 64)} {r['method']} {r['pass']}: "
            f"{r.get('error') or 'graph: ' + r['graph_error']}" for r in errors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", type=int, nargs="+", default=None,
                    help="default: 1024 ... 16384 on the CPU, 4096 16384 65536 on CUDA")
    ap.add_argument("--heads", type=int, default=None, help="default: 4 on the CPU, 8 on CUDA")
    ap.add_argument("--methods", nargs="+", default=list(CUDA_METHODS), help="CUDA mode: which methods")
    ap.add_argument("--cases", nargs="+", default=["strided", "fixed"], help="CUDA mode: which cases")
    ap.add_argument("--dim", type=int, default=64, help="head dim (CPU; CUDA: see --dims)")
    ap.add_argument("--dims", type=int, nargs="+", default=None, help="CUDA mode: head dims, one table each")
    ap.add_argument("--check", action="store_true",
                    help="CUDA mode: check the Triton kernels against the float64 oracle (N <= 16384)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    ap.add_argument("--graph", action="store_true",
                    help="CUDA mode: also time each call captured in a CUDA graph (GPU time without host overhead)")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        method, case, n, heads, dim, backward, repeats = args.child
        print(json.dumps(measure_one(method, case, int(n), int(heads), int(dim), bool(int(backward)), int(repeats))))
        return 0
    stamp = dt.date.today().isoformat()
    if args.device == "cuda":
        command = "PYTHONPATH=src python " + " ".join(["benchmarks/attention.py", *(argv if argv is not None else sys.argv[1:])])
        partial = (args.out or RESULTS / "attention-gpu-partial.json").with_suffix(".partial.json")
        result = None
        for dim in args.dims or [args.dim]:
            part = run_cuda(args.sizes or CUDA_SIZES, args.heads or 8, dim, args.methods, args.cases,
                            partial.with_suffix(f".d{dim}.json"), graph=args.graph, check=args.check)
            if result is None:
                result = part
            else:
                result["rows"] += part["rows"]
                result["checks"] += part["checks"]
                result["env"] = part["env"]  # launch counts of the whole run
        result["config"]["D"] = args.dims or [args.dim]
        result["command"] = command
        tag = next((t.lower() for t in ("H100", "H200", "A100") if t in result["env"]["device"]), "cuda")
        out = args.out or RESULTS / f"attention-gpu-{tag}-{stamp}.json"
        md = summarize_cuda(result, command)
    else:
        result = run_cpu(args.sizes or [1024, 2048, 4096, 8192, 16384], args.heads or 4, args.dim, args.repeats)
        out = args.out or RESULTS / f"attention-cpu-{stamp}.json"
        md = summarize(result)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(md)
    print()
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
