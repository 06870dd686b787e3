"""One device call: correctness of the Triton kernels against the reference, then timings.

    python benchmarks/lab/gpu_check.py               # check + sweep + SDPA baselines
    python benchmarks/lab/gpu_check.py --no-sweep    # check + the default policy only
    python benchmarks/lab/gpu_check.py --no-sweep --sizes 0 --only fixed \
        --set 'fwd_block_long={64: 64}' --set inline_delta_max_rows=0   # checks under a non-default policy

``--set FIELD=LITERAL`` overrides a field of the launch policy (:class:`LaunchPolicy`, a Python
literal; mapping fields are merged into the default's, e.g. ``--set 'configs={("fwd", 64): (4, 1, 1)}'``):
every check and timing runs under that policy (``--profile-host`` excepted: it goes through the
dispatcher, which uses the default policy).

1. Correctness (tolerance rule of docs/style.md: max|fast - ref64| <= 2 max|ref_lowprec - ref64| +
   atol), checked on a call that uses the direct launches of cached compiled kernels, which must
   also be bit-identical to the same call through Triton's binder: the two target cases at N=4096 (B=1, H=8, D=64, bf16) against the float64 reference, and
   smaller ragged cases for head dims 32/64/128, fp16, fp32 (tf32 dots), merged two-segment heads.
2. Timings (median of triton.testing.do_bench, ms) of the target cases at N=16,384 and 65,536
   (``--sizes``), forward and forward+backward, for each (tile, launch config) variant in SWEEP;
   dense causal SDPA (flash) for comparison. Each default-config row is timed twice: with the
   direct launches of cached compiled kernels (``LaunchPolicy.direct_launch``, the default) and with
   every launch through Triton's ``kernel[grid]`` binder (``*_binder`` fields), so the host overhead
   saved shows in one run; short-walk rows also with the delta pre-pass (``*_prepass``,
   ``inline_delta_max_rows=0``) instead of rowsum(dO * O) inside the backward.
3. ``--profile-host``: cProfile of eager strided forward+backward calls at N=4096 (host time per
   function, per call).
Prints a table last; writes JSON to $OUT (or --out).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import math
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from sparse_transformer import patterns as P
from sparse_transformer.kernels import reference
from sparse_transformer.kernels.triton import (
    LaunchPolicy,
    attention_multihead,
    backward_tables,
    default_policy,
    forward_tables,
    kernel_tables,
    launch_stats,
)

# (case, tile, fwd (warps, stages), bwd (warps, stages)); the first entry per case is the policy
# as it is (None: no override of its configs).
SWEEP = [
    ("strided", 64, None, None),
    ("strided", 64, (4, 3), (4, 2)),
    ("strided", 128, (4, 3), (8, 2)),
    ("fixed", 64, None, None),
    ("fixed", 128, (8, 3), (8, 2)),
    ("fixed", 128, (4, 3), (4, 2)),
]
POLICY: LaunchPolicy = default_policy()  # with the --set overrides (main)
DTYPE = torch.bfloat16
ATOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 2e-2}  # fp32: tf32 dots


def case_heads(case: str, n: int, heads: int = 8):
    if case == "strided":
        l = 2 ** round(math.log2(math.sqrt(n)))
        return [P.local(l)] * (heads // 2) + [P.strided(l)] * (heads // 2)
    return [P.union(*P.factorized("fixed", 128, 32))] * heads


def wall_fb_ms(fn, q, k, v, g, calls: int = 50) -> float:
    """Wall ms per call of ``calls`` back-to-back eager forward+backward calls (gradients accumulate)."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        fn(q, k, v).backward(g)
    torch.cuda.synchronize()
    ms = (time.perf_counter() - t0) / calls * 1e3
    q.grad = k.grad = v.grad = None
    return ms


def pairs(heads, n: int) -> int:
    return sum(p.plan(n, 128).pairs() for p in heads)


def with_overrides(policy: LaunchPolicy, items: list[str]) -> LaunchPolicy:
    """``policy`` with ``FIELD=LITERAL`` overrides (mapping fields merged)."""
    fields = {f.name for f in dataclasses.fields(LaunchPolicy)}
    changes = {}
    for item in items:
        name, _, value = item.partition("=")
        name = name.strip()
        if name not in fields:
            raise SystemExit(f"--set: LaunchPolicy has no field {name!r} (fields: {', '.join(sorted(fields))})")
        value = ast.literal_eval(value)
        old = changes.get(name, getattr(policy, name))
        changes[name] = {**old, **value} if isinstance(value, dict) else value
    return dataclasses.replace(policy, **changes) if changes else policy


def variant_policy(block: int, fwd_cfg, bwd_cfg) -> LaunchPolicy:
    """:data:`POLICY` with one sweep entry's launch configs on ``block``-row tiles (None: as is)."""
    configs = dict(POLICY.configs)
    if fwd_cfg is not None:
        configs[("fwd", block)] = (fwd_cfg[0], fwd_cfg[1], fwd_cfg[1])
    if bwd_cfg is not None:
        configs[("bwd", block)] = (bwd_cfg[0], bwd_cfg[1], bwd_cfg[1])
    return POLICY if configs == dict(POLICY.configs) else dataclasses.replace(POLICY, configs=configs)


def triton_call(heads, n, block, device, policy: LaunchPolicy | None = None):
    plans = [p.plan(n, block, device) for p in heads]
    policy = policy or POLICY

    def f(q, k, v):
        return attention_multihead(q, k, v, plans, policy=policy)

    return f


def _grads(fn, q, k, v, g):
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    out = fn(q, k, v)
    return [out.detach(), *torch.autograd.grad(out, (q, k, v), g)]


def _ref(q, k, v, heads, g, upcast: bool):
    def fn(q, k, v):
        outs = [reference.attention(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], heads[h], upcast=upcast)
                for h in range(q.shape[1])]
        return torch.cat(outs, 1)

    return _grads(fn, q, k, v, g)


def check(name, heads, n, d, dtype, block, device=None) -> dict:
    device = device or DEVICE
    torch.manual_seed(hash((name, n, d)) % 2**31)
    q, k, v = (torch.randn(1, len(heads), n, d, device=device).to(dtype) for _ in range(3))
    g = torch.randn_like(q)
    fn = triton_call(heads, n, block, device)
    _grads(fn, q, k, v, g)  # first launches: through Triton (compiles, caches the compiled kernels)
    binder = _grads(triton_call(heads, n, block, device, dataclasses.replace(POLICY, direct_launch=False)),
                    q, k, v, g)
    fast = _grads(fn, q, k, v, g)  # direct launches where supported (POLICY.direct_launch); checked below
    direct_equal = all(torch.equal(a, b) for a, b in zip(binder, fast))
    del binder
    ref64 = _ref(q.double(), k.double(), v.double(), heads, g.double(), True)
    low = _ref(q, k, v, heads, g, False)
    row = {"name": name, "n": n, "d": d, "dtype": str(dtype).replace("torch.", ""), "block": block, "ok": True,
           "direct_equals_binder": direct_equal}
    for label, f, r, lo in zip(("out", "dq", "dk", "dv"), fast, ref64, low):
        err = (f.double() - r).abs().max().item()
        base = (lo.double() - r).abs().max().item()
        rel = ((f.double() - r).norm() / r.norm()).item()
        ok = bool(torch.isfinite(f).all()) and err <= 2 * base + ATOL[dtype]
        row[label] = {"err": err, "ref_lowprec_err": base, "rel": rel, "ok": ok}
        row["ok"] &= ok
    row["ok"] &= direct_equal  # bit-identical outputs and gradients with and without direct launches
    del q, k, v, g, fast, ref64, low
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return row


def check_cases():
    return [
        ("strided 4+4 l=64", case_heads("strided", 4096), 4096, 64, torch.bfloat16, 64),
        ("strided 4+4 l=64", case_heads("strided", 4096), 4096, 64, torch.bfloat16, 128),
        ("fixed merged", case_heads("fixed", 4096), 4096, 64, torch.bfloat16, 64),
        ("fixed merged", case_heads("fixed", 4096), 4096, 64, torch.bfloat16, 128),
        ("strided 2+2 l=32", case_heads("strided", 1500, 4)[:2] * 2, 1500, 32, torch.float16, 64),
        ("fixed merged", case_heads("fixed", 1500, 2), 1500, 128, torch.bfloat16, 64),
        ("fixed merged", case_heads("fixed", 1500, 2), 1500, 32, torch.float32, 64),
        ("union(local, strided)", [P.union(*P.factorized("strided", 40))] * 2, 1500, 64, torch.bfloat16, 64),
        ("summary offset 1 + dense", [P.summary(128, 32, 1), P.dense()], 1500, 64, torch.float16, 64),
    ]


def _warm(job) -> float:
    """Child process: compile one kernel variant into the shared Triton cache (a tiny call)."""
    global POLICY
    kind, idx, cfg, overrides = job
    POLICY = with_overrides(default_policy(), overrides)  # the parent's --set (a spawned process)
    t0 = time.time()
    policy = POLICY
    if kind == "check":
        _name, heads, n, d, dtype, block = check_cases()[idx]
    else:
        case, block, fwd_cfg, bwd_cfg = cfg
        policy = variant_policy(block, fwd_cfg, bwd_cfg)
        n, d, dtype = 1024, 64, torch.bfloat16
        heads = case_heads(case, idx)
    q, k, v = (torch.randn(1, len(heads), n, d, device="cuda").to(dtype).requires_grad_(True) for _ in range(3))
    triton_call(heads, n, block, "cuda", policy)(q, k, v).sum().backward()
    torch.cuda.synchronize()
    return time.time() - t0


def precompile(sweep, overrides: list[str]) -> float:
    """Compile every kernel variant the run needs in parallel processes (Triton's file cache is
    shared), so that the serial part below finds them compiled."""
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.time()
    jobs = [("check", i, None, overrides) for i in range(len(check_cases()))]
    jobs += [("sweep", 16384, cfg, overrides) for cfg in sweep]
    with ProcessPoolExecutor(max_workers=min(12, len(jobs)), mp_context=mp.get_context("spawn")) as ex:
        for job, secs in zip(jobs, ex.map(_warm, jobs)):
            print(f"compiled {job[0]} {job[1]} {job[2] or ''} in {secs:.1f}s", flush=True)
    return time.time() - t0


def correctness(small: bool = False, only: str | None = None) -> list[dict]:
    rows = []
    cases = [c for c in check_cases() if only is None or only in c[0]]
    if small:
        cases = [(c[0], c[1], 200, c[3], torch.float32 if c[4] == torch.bfloat16 else c[4], c[5]) for c in cases[::4]]
    for name, heads, n, d, dtype, block in cases:
        try:
            row = check(name, heads, n, d, dtype, block)
        except Exception as e:  # noqa: BLE001  (report and go on: the timings still matter)
            traceback.print_exc()
            row = {"name": name, "n": n, "d": d, "block": block, "ok": False, "error": repr(e)[:300]}
        rows.append(row)
        print("check", json.dumps(row), flush=True)
    return rows


DEVICE = "cuda"


def bench(fn, backward: bool, q, k, v, g) -> float:
    import triton.testing

    if backward:
        def run():
            fn(q, k, v).backward(g)
    else:
        def run():
            with torch.no_grad():
                fn(q, k, v)
    run()
    if DEVICE != "cuda":  # dry run on the CPU (Triton interpreter): one call, wall clock
        t0 = time.perf_counter()
        run()
        return (time.perf_counter() - t0) * 1e3
    torch.cuda.synchronize()
    return float(triton.testing.do_bench(run, warmup=25, rep=100, grad_to_none=[q, k, v], return_mode="median"))


def peak_mb(fn, backward, q, k, v, g) -> float:
    if DEVICE != "cuda":
        return 0.0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    if backward:
        fn(q, k, v).backward(g)
    else:
        with torch.no_grad():
            fn(q, k, v)
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def raw_and_wall(heads, n, block, fn, q, k, v, g, policy: LaunchPolicy) -> dict:
    """Kernel-only times (no autograd: the forward launches, the backward launches) and the
    steady-state wall time per forward+backward call (CPU launch overhead shows up here)."""
    if DEVICE != "cuda":
        return {}
    import triton.testing

    tabs = kernel_tables([p.plan(n, block, DEVICE) for p in heads], DEVICE, policy)
    scale = 1 / math.sqrt(q.shape[-1])
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    o, lse = forward_tables(qd, kd, vd, tabs, scale)
    out = {
        "fwd_kernels_ms": float(triton.testing.do_bench(lambda: forward_tables(qd, kd, vd, tabs, scale),
                                                        return_mode="median")),
        "bwd_kernels_ms": float(triton.testing.do_bench(lambda: backward_tables(qd, kd, vd, o, lse, g, tabs, scale),
                                                        return_mode="median")),
    }
    for _ in range(3):
        fn(q, k, v).backward(g)
    out["wall_fb_ms"] = wall_fb_ms(fn, q, k, v, g)
    return out


def delta_prepass(heads, n, block, q, k, v, g, policy: LaunchPolicy) -> dict:
    """Short-walk plans compute rowsum(dO * O) inside the backward; the same row with the
    ``delta_kernel`` pre-pass instead (``*_prepass`` fields, ``inline_delta_max_rows=0``), for a
    same-run comparison."""
    prepass = dataclasses.replace(policy, inline_delta_max_rows=0)
    tabs = kernel_tables([p.plan(n, block, DEVICE) for p in heads], DEVICE, prepass)
    if DEVICE != "cuda" or tabs.long_walk or not policy.inline_delta(False, q.shape[0] * q.shape[1] * n):
        return {}
    import triton.testing

    scale = 1 / math.sqrt(q.shape[-1])
    qd, kd, vd = q.detach(), k.detach(), v.detach()
    o, lse = forward_tables(qd, kd, vd, tabs, scale)
    return {
        "fb_ms_prepass": bench(triton_call(heads, n, block, DEVICE, prepass), True, q, k, v, g),
        "bwd_kernels_ms_prepass": float(triton.testing.do_bench(
            lambda: backward_tables(qd, kd, vd, o, lse, g, tabs, scale), return_mode="median")),
    }


def host_profile(n: int = 4096, calls: int = 300) -> dict:
    """Where the host time of one eager forward+backward goes (strided case, direct launches):
    cProfile over ``calls`` calls, the top functions by own time (us per call)."""
    import cProfile
    import pstats

    from sparse_transformer import sparse_attention

    heads = case_heads("strided", n)
    q, k, v = (torch.randn(1, 8, n, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn_like(q)

    def step():
        sparse_attention(q, k, v, heads, backend="triton").backward(g)
        q.grad = k.grad = v.grad = None

    for _ in range(5):
        step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(calls):
        step()
    enqueue_us = (time.perf_counter() - t0) / calls * 1e6
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        step()
    prof.disable()
    torch.cuda.synchronize()
    stats = pstats.Stats(prof)
    rows = []
    for (file, line, name), (_cc, nc, tt, ct, _callers) in stats.stats.items():
        rows.append({"fn": f"{Path(file).name}:{line}({name})", "calls_per_step": nc / calls,
                     "own_us": tt / calls * 1e6, "cum_us": ct / calls * 1e6})
    rows.sort(key=lambda r: -r["own_us"])
    out = {"n": n, "enqueue_us_per_fb_no_profiler": enqueue_us, "top_own": rows[:30],
           "top_cum": sorted(rows, key=lambda r: -r["cum_us"])[:30]}
    print("host", json.dumps({"enqueue_us": enqueue_us}), flush=True)
    for r in rows[:30]:
        print(f"host own {r['own_us']:8.1f} us cum {r['cum_us']:8.1f} us x{r['calls_per_step']:.0f} {r['fn']}", flush=True)
    return out


def binder_only(heads, n, block, q, k, v, g, policy: LaunchPolicy) -> dict:
    """The same calls with every launch through Triton's binder (``direct_launch=False``)."""
    if DEVICE != "cuda":
        return {}
    fn = triton_call(heads, n, block, DEVICE, dataclasses.replace(policy, direct_launch=False))
    out = {"fwd_ms_binder": bench(fn, False, q, k, v, g), "fb_ms_binder": bench(fn, True, q, k, v, g)}
    out["wall_fb_ms_binder"] = wall_fb_ms(fn, q, k, v, g)
    return out


def timings(sweep, sizes) -> list[dict]:
    import torch.nn.functional as F

    rows = []
    for n in sizes:
        q, k, v = (torch.randn(1, 8, n, 64, device=DEVICE, dtype=DTYPE, requires_grad=True) for _ in range(3))
        g = torch.randn_like(q)
        for case in ("strided", "fixed"):
            heads = case_heads(case, n)
            npairs = pairs(heads, n)
            for c, block, fwd_cfg, bwd_cfg in sweep:
                if c != case:
                    continue
                policy = variant_policy(block, fwd_cfg, bwd_cfg)
                row = {"case": case, "n": n, "block": block, "fwd_cfg": fwd_cfg or "policy",
                       "bwd_cfg": bwd_cfg or "policy", "pairs": npairs}
                try:
                    t0 = time.time()
                    fn = triton_call(heads, n, block, DEVICE, policy)
                    row["fwd_ms"] = bench(fn, False, q, k, v, g)
                    row["fb_ms"] = bench(fn, True, q, k, v, g)
                    row["peak_mb_fb"] = peak_mb(fn, True, q, k, v, g)
                    row.update(raw_and_wall(heads, n, block, fn, q, k, v, g, policy))
                    if sweep.index((c, block, fwd_cfg, bwd_cfg)) == [s[0] for s in sweep].index(case):
                        row.update(binder_only(heads, n, block, q, k, v, g, policy))
                        row.update(delta_prepass(heads, n, block, q, k, v, g, policy))
                    row["wall_s"] = time.time() - t0
                    row["fwd_tflops"] = 4 * npairs * 64 / row["fwd_ms"] / 1e9
                    row["fb_tflops"] = 3.5 * 4 * npairs * 64 / row["fb_ms"] / 1e9
                except Exception as e:  # noqa: BLE001
                    traceback.print_exc()
                    row["error"] = repr(e)[:300]
                rows.append(row)
                print("time", json.dumps(row), flush=True)

        def sdpa(q, k, v):
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)

        row = {"case": "sdpa-flash dense causal", "n": n}
        row["fwd_ms"] = bench(sdpa, False, q, k, v, g)
        row["fb_ms"] = bench(sdpa, True, q, k, v, g)
        rows.append(row)
        print("time", json.dumps(row), flush=True)
        del q, k, v, g
        if DEVICE == "cuda":
            torch.cuda.empty_cache()
    return rows


def diagnostics() -> dict:
    """Where the time goes at N=4096 (small work): GPU kernel times (profiler) and CPU time per call."""
    from torch.profiler import ProfilerActivity, profile

    out = {}
    for case in ("strided", "fixed"):
        heads = case_heads(case, 4096)
        fn = triton_call(heads, 4096, 64, "cuda")
        q, k, v = (torch.randn(1, 8, 4096, 64, device="cuda", dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
        g = torch.randn_like(q)
        for _ in range(3):
            fn(q, k, v).backward(g)
        torch.cuda.synchronize()
        cpu_ms = {}
        for direct in (True, False):
            run = triton_call(heads, 4096, 64, "cuda", dataclasses.replace(POLICY, direct_launch=direct))
            run(q, k, v).backward(g)
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                run(q, k, v).backward(g)
            cpu_ms["direct" if direct else "binder"] = (time.perf_counter() - t0) / 20 * 1e3  # enqueue time
            torch.cuda.synchronize()
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(5):
                fn(q, k, v).backward(g)
            torch.cuda.synchronize()
        kernels = {}
        for ev in prof.key_averages():
            if ev.device_type.name == "CUDA" or getattr(ev, "self_device_time_total", 0):
                t = getattr(ev, "self_device_time_total", None) or getattr(ev, "self_cuda_time_total", 0)
                if t:
                    kernels[ev.key[:60]] = round(t / 5, 1)  # us per call
        out[case] = {"cpu_enqueue_ms_per_fb": cpu_ms, "gpu_us_per_fb": kernels}
        print("diag", case, json.dumps(out[case]), flush=True)
    return out


def env() -> dict:
    import triton

    if DEVICE != "cuda":
        return {"device": "cpu (Triton interpreter dry run)", "torch": torch.__version__,
                "triton": triton.__version__, "commit": "", "date": ""}
    try:  # GIT_COMMIT first: a copied working tree (the device machine) may carry a stale .git
        commit = os.environ.get("GIT_COMMIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "commit": commit,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--no-sweep", action="store_true")
    ap.add_argument("--no-check", action="store_true")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")))
    ap.add_argument("--dry", action="store_true", help="CPU dry run of this script (interpreter, tiny)")
    ap.add_argument("--profile-host", action="store_true", help="cProfile of eager strided fwd+bwd at N=4096")
    ap.add_argument("--only", default=None, help="checks whose name holds this text (e.g. 'fixed')")
    ap.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                    help="override a LaunchPolicy field (a Python literal; mapping fields are merged into the "
                         "default's), e.g. --set inline_delta_max_rows=0 --set 'fwd_block_long={64: 64}'")
    args = ap.parse_args()
    global DEVICE, DTYPE, POLICY
    POLICY = with_overrides(default_policy(), args.set)
    if args.dry:
        DEVICE, DTYPE = "cpu", torch.float32
    t0 = time.time()
    info = env()
    print(json.dumps(info), flush=True)
    sweep = SWEEP
    if args.no_sweep:
        seen, sweep = set(), []
        for s in SWEEP:
            if s[0] not in seen:
                seen.add(s[0])
                sweep.append(s)
    if not args.dry:
        try:
            print(f"precompiled in {precompile(sweep, args.set):.0f}s", flush=True)
        except Exception:  # noqa: BLE001  (only a speed-up: the serial run compiles what is missing)
            traceback.print_exc()
    checks = [] if args.no_check else correctness(small=args.dry, only=args.only)
    print(f"checks done at {time.time() - t0:.0f}s", flush=True)
    diag = {}
    if not args.dry:
        try:
            diag = diagnostics()
        except Exception:  # noqa: BLE001  (diagnostics only)
            traceback.print_exc()
    times = timings(sweep, args.sizes) if args.sizes != [0] else []
    if args.profile_host and not args.dry:
        try:
            diag["host_profile"] = host_profile()
        except Exception:  # noqa: BLE001  (diagnostics only)
            traceback.print_exc()
    info["command"] = "python " + " ".join(["benchmarks/lab/gpu_check.py", *sys.argv[1:]])
    info["policy_overrides"] = args.set
    info["triton_launches"] = launch_stats()
    result = {"env": info, "checks": checks, "diagnostics": diag, "timings": times, "wall_s": time.time() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.json").write_text(json.dumps(result, indent=1))
    print()
    print(f"{info['device']} torch {info['torch']} triton {info['triton']} commit {info['commit']}")
    print(f"launches {json.dumps(info['triton_launches'])}")
    for r in checks:
        errs = " ".join(f"{k}={r[k]['err']:.2e}/{r[k]['ref_lowprec_err']:.2e}" for k in ("out", "dq", "dk", "dv") if k in r)
        print(f"CHECK {'PASS' if r['ok'] else 'FAIL'} {r['name']:26s} n={r['n']} d={r['d']} {r.get('dtype', '')} "
              f"blk={r['block']} {errs or r.get('error', '')} direct==binder {r.get('direct_equals_binder')}")
    for r in times:
        if "error" in r:
            print(f"TIME {r['case']:8s} n={r['n']:6d} blk={r.get('block')} ERROR {r['error'][:120]}")
        elif "block" in r:
            print(f"TIME {r['case']:8s} n={r['n']:6d} blk={r['block']:3d} fwd {r['fwd_cfg']} bwd {r['bwd_cfg']} "
                  f"fwd {r['fwd_ms']:.3f} ms ({r['fwd_tflops']:.0f} TF/s)  f+b {r['fb_ms']:.3f} ms "
                  f"({r['fb_tflops']:.0f} TF/s)  peak {r['peak_mb_fb']:.0f} MB  kernels fwd "
                  f"{r.get('fwd_kernels_ms', 0):.3f} bwd {r.get('bwd_kernels_ms', 0):.3f} wall f+b {r.get('wall_fb_ms', 0):.3f}"
                  + (f" | binder: fwd {r['fwd_ms_binder']:.3f} f+b {r['fb_ms_binder']:.3f} wall f+b "
                     f"{r['wall_fb_ms_binder']:.3f}" if "fb_ms_binder" in r else "")
                  + (f" | delta pre-pass: f+b {r['fb_ms_prepass']:.3f} bwd kernels {r['bwd_kernels_ms_prepass']:.3f}"
                     if "fb_ms_prepass" in r else ""))
        else:
            print(f"TIME {r['case']:8s} n={r['n']:6d} fwd {r['fwd_ms']:.3f} ms  f+b {r['fb_ms']:.3f} ms")
    print(f"total {time.time() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
