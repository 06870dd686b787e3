"""Launch-configuration sweep of the Triton kernels (GPU): kernel-only forward and backward times.

    python benchmarks/lab/kernel_sweep.py [--cases strided:16384 fixed:65536] [--quick]

For each case (B=1, H=8, D=64, bf16; the target cases of ``benchmarks/attention.py``) and each
variant (plan tile, forward (warps, stages, maxnreg), backward (warps, stages, maxnreg), other
``LaunchPolicy`` fields such as ``bwd_steps``, ``fwd_block_long``, ``inline_delta_max_rows``; each
variant is its own policy, ``dataclasses.replace`` of the default): the median ms of
``triton.testing.do_bench`` of the forward launches and of the backward launches called directly
(``forward_tables`` / ``backward_tables``: no autograd, no dispatcher: GPU time plus the launch
cost), the compiled kernels' registers and spills, and the largest difference of the output and
the three gradients from the first variant of the case (a wrong configuration shows there). Host overhead is measured too:
per eager forward+backward call through ``sparse_attention`` at N=4,096 (strided), with the kernel
launches replaced by no-ops (pure Python/dispatch/allocation cost) and with them.

Prints a table; writes JSON to $OUT (or --out).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "src"))

from gpu_check import case_heads  # the target cases' per-head patterns

from sparse_transformer import sparse_attention
from sparse_transformer.kernels.triton import (
    LaunchPolicy,
    backward_tables,
    default_policy,
    forward_tables,
    kernel_tables,
)
from sparse_transformer.kernels.triton.launcher import Launcher, kernels

# (tile, fwd (warps, stages, maxnreg), bwd (warps, stages, maxnreg), other LaunchPolicy fields);
# None: the default policy's entry. The first is the reference (the default policy as it is).
# Long-walk forwards run on fwd_block_long's tile (its own configs).
SHORT = [
    (64, None, None, {}),  # the default
    # Smaller steps in both backward walks: four programs per multiprocessor at 128, no spills.
    (64, None, (4, 1, 128), {"bwd_steps": {(64, False): (16, 32)}}),
    (64, None, (4, 1, 128), {"bwd_steps": {(64, False): (16, 16)}}),
    (64, None, (4, 2, 128), {"bwd_steps": {(64, False): (16, 32)}}),
    (64, None, (4, 1, 128), {"bwd_steps": {(64, False): (32, 32)}}),
]
LONG = [
    (64, None, None, {}),  # the default
    # Half steps in both backward walks: no spills under the cap (sass_counts.py).
    (64, None, (4, 2, 168), {"bwd_steps": {(64, True): (32, 32)}}),
    (64, None, (4, 3, 168), {"bwd_steps": {(64, True): (32, 32)}}),
]
DEVICE = "cuda"  # where run_variant runs (a CPU dry run under TRITON_INTERPRET=1 may set "cpu")


def variant_policy(block: int, fcfg, bcfg, fields: dict) -> LaunchPolicy:
    """The default policy with one variant's launch configs on ``block``-row tiles (the stage
    count for long and short walks alike) and its other fields (mappings merged into the
    default's; a plain value replaces it)."""
    base = default_policy()
    configs, maxnreg = dict(base.configs), dict(base.maxnreg)
    for kernel, cfg in (("fwd", fcfg), ("bwd", bcfg)):
        if cfg is not None:
            configs[(kernel, block)] = (cfg[0], cfg[1], cfg[1])
            maxnreg[(kernel, block)] = cfg[2]
    changes = {name: {**getattr(base, name), **value} if isinstance(value, dict) else value
               for name, value in fields.items()}
    return dataclasses.replace(base, configs=configs, maxnreg={k: v for k, v in maxnreg.items() if v}, **changes)


def regs() -> dict:
    """Registers / spills of every compiled kernel kept by the launchers, by kernel name."""
    out = {}
    k = kernels()
    for name in ("fwd_kernel", "bwd_kernel"):
        ln = getattr(k, name)
        for key, ck in ln.compiled.items():
            out.setdefault(name, []).append({"warps": key[1], "stages": key[2], "maxnreg": key[3],
                                             "consts": list(key[0]), "n_regs": getattr(ck, "n_regs", None),
                                             "n_spills": getattr(ck, "n_spills", None)})
    return out


def run_variant(case, n, variant, ref=None):
    import triton.testing

    block, fcfg, bcfg, fields = variant
    policy = variant_policy(block, fcfg, bcfg, fields)
    dev = DEVICE
    tabs = kernel_tables([p.plan(n, block, dev) for p in case_heads(case, n)], dev, policy)
    ftabs = tabs.fwd_tables
    g = torch.Generator(device=dev).manual_seed(0)
    q, k, v, do = (torch.randn(1, 8, n, 64, device=dev, dtype=torch.bfloat16, generator=g) for _ in range(4))
    scale = 1 / 8
    o, lse = forward_tables(q, k, v, tabs, scale)
    grads = backward_tables(q, k, v, o, lse, do, tabs, scale)
    torch.cuda.synchronize()
    row = {"case": case, "n": n, "block": block, "fwd_block": ftabs.block, "bwd_block": tabs.block,
           "fwd_cfg": list(policy.launch_config("fwd", ftabs.block, 64, tabs.long_walk)),  # warps, stages, cap
           "bwd_cfg": list(policy.launch_config("bwd", tabs.block, 64, tabs.long_walk)),
           "settings": {k: str(v) for k, v in fields.items()}}
    row["fwd_ms"] = float(triton.testing.do_bench(lambda: forward_tables(q, k, v, tabs, scale), return_mode="median"))
    row["bwd_ms"] = float(triton.testing.do_bench(lambda: backward_tables(q, k, v, o, lse, do, tabs, scale),
                                                  return_mode="median"))
    row["fb_ms"] = row["fwd_ms"] + row["bwd_ms"]
    outs = [o, *grads]
    if ref is not None:
        row["max_diff_vs_first"] = max(float((a.float() - b.float()).abs().max()) for a, b in zip(outs, ref))
    return row, [x.detach().clone() for x in outs]


def host_overhead(n: int = 4096) -> dict:
    """us per eager fwd+bwd through sparse_attention: real launches, and launches as no-ops."""
    dev = "cuda"
    pats = case_heads("strided", n)
    q, k, v = (torch.randn(1, 8, n, 64, device=dev, dtype=torch.bfloat16, requires_grad=True) for _ in range(3))
    g = torch.randn(1, 8, n, 64, device=dev, dtype=torch.bfloat16)

    def step():
        sparse_attention(q, k, v, pats).backward(g)
        q.grad = k.grad = v.grad = None

    def per_call(reps=300):
        for _ in range(20):
            step()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(reps):
            step()
        enq = (time.perf_counter() - t0) / reps * 1e6
        torch.cuda.synchronize()
        return enq, (time.perf_counter() - t0) / reps * 1e6

    out = {}
    out["enqueue_us"], out["wall_us"] = per_call()
    real = Launcher.__call__
    Launcher.__call__ = lambda self, *a, **kw: None  # the launcher class, restored below
    try:
        out["no_launch_enqueue_us"], _ = per_call()
    finally:
        Launcher.__call__ = real
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", default=["strided:16384", "strided:65536", "fixed:16384", "fixed:65536"])
    ap.add_argument("--quick", action="store_true", help="first two variants per case only")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import triton

    t_start = time.time()
    rows = []
    for spec in args.cases:
        case, n = spec.split(":")
        n = int(n)
        variants = SHORT if case == "strided" else LONG
        if args.quick:
            variants = variants[:2]
        ref = None
        for var in variants:
            try:
                row, outs = run_variant(case, n, var, ref)
                if ref is None:
                    ref = outs
            except Exception as e:  # noqa: BLE001  (a config that does not compile or run: keep going)
                row = {"case": case, "n": n, "block": var[0], "fwd_cfg": var[1], "bwd_cfg": var[2],
                       "settings": {k: str(v) for k, v in var[3].items()}, "error": f"{type(e).__name__}: {str(e)[:300]}"}
            rows.append(row)
            print(json.dumps(row), flush=True)
    host = host_overhead()
    print("host", json.dumps(host), flush=True)
    try:
        commit = os.environ.get("GIT_COMMIT") or subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False).stdout.strip()
    except OSError:
        commit = "unknown"
    result = {
        "env": {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
                "commit": commit, "command": "python benchmarks/lab/kernel_sweep.py " + " ".join(sys.argv[1:])},
        "rows": rows, "host": host, "regs": regs(), "wall_s": time.time() - t_start,
    }
    print(f"\n{'case':8s} {'N':>6s} {'tile':>4s} {'fwd cfg':>14s} {'bwd cfg':>14s} {'fwd ms':>8s} {'bwd ms':>8s} {'f+b':>8s}  settings")
    for r in rows:
        if "error" in r:
            print(f"{r['case']:8s} {r['n']:6d} {r['block']:4d} {r['fwd_cfg']!s:>14s} {r['bwd_cfg']!s:>14s} error {r['error'][:60]}")
            continue
        print(f"{r['case']:8s} {r['n']:6d} {r['block']:4d} {r['fwd_cfg']!s:>14s} {r['bwd_cfg']!s:>14s} "
              f"{r['fwd_ms']:8.3f} {r['bwd_ms']:8.3f} {r['fb_ms']:8.3f}  diff {r.get('max_diff_vs_first', 0):.2e}"
              f"  {r['settings'] or ''}")
    out = Path(args.out or os.environ.get("OUT", ".")) / "kernel-sweep.json" if not (args.out or "").endswith(".json") else Path(args.out)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
