"""Where a training step's GPU time goes: torch.profiler over one step of a preset's model.

Builds the model as ``benchmarks/memory.py`` does (train.py's step: forward under autocast,
float32 loss, backward, clipping, AdamW), runs ``--warmup`` steps, profiles one, and prints the
CUDA kernels by total GPU time with a summary by kind: matmuls (cuBLAS/CUTLASS GEMMs), attention
(our Triton kernels, flash/SDPA), optimizer (multi-tensor AdamW, norms), and the rest (elementwise,
normalisation, reductions, copies). Also reports the step's wall time and the GPU-busy time, so
host-bound steps show up. JSON to ``--json``.

    PYTHONPATH=src python benchmarks/profile_step.py --preset enwik8 --patterns strided dense
    PYTHONPATH=src python benchmarks/profile_step.py --device cpu --ctx 256 --layers 1   # smoke
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import _write, build, env_info, train_step

KINDS = (  # (kind, substrings of kernel names, checked in order)
    ("attention", ("fwd_kernel", "bwd_kernel", "delta_kernel", "merge_kernel", "add_slots",
                   "flash", "fmha", "attention", "sdpa", "cudnn")),
    ("matmul", ("gemm", "cutlass", "sm90_xmma", "nvjet", "cublas", "matmul", "wgmma", "aten::mm",
                "aten::addmm", "aten::bmm")),
    ("optimizer", ("multi_tensor", "foreach", "adam", "l2norm")),
)  # fmt: skip


def kind_of(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def profile(model_cfg, *, device: str, precision: str, batch: int, warmup: int, top: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    model, opt = build(model_cfg, device=device, recompute=False)
    g = torch.Generator().manual_seed(0)
    data = torch.randint(0, model_cfg.vocab_size, (batch, model_cfg.ctx + 1), generator=g).to(device)
    x, y = data[:, :-1], data[:, 1:]
    cuda = device == "cuda"
    for _ in range(warmup):
        train_step(model, opt, x, y, precision)
    if cuda:
        torch.cuda.synchronize()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch_profile(activities=acts) as prof:
        t0 = time.perf_counter()
        train_step(model, opt, x, y, precision)
        if cuda:
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    rows = []
    for e in prof.key_averages():
        us = getattr(e, "device_time_total", None) if cuda else e.self_cpu_time_total
        if us is None:
            us = getattr(e, "cuda_time_total", 0)
        if cuda and getattr(e, "device_type", None) is not None and str(e.device_type) != "DeviceType.CUDA":
            continue  # CPU-side operators: their device time is their kernels', counted there
        if cuda and e.key.startswith(("Optimizer.", "ProfilerStep", "## ")):
            continue  # annotations: their device time is their kernels', counted there
        if us > 0:
            rows.append({"name": e.key, "ms": us / 1000, "calls": e.count, "kind": kind_of(e.key)})
    rows.sort(key=lambda r: -r["ms"])
    busy = sum(r["ms"] for r in rows)
    by_kind: dict[str, float] = {}
    for r in rows:
        by_kind[r["kind"]] = by_kind.get(r["kind"], 0.0) + r["ms"]
    del model, opt
    return {"wall_ms": 1000 * wall, "gpu_busy_ms": busy, "by_kind_ms": by_kind,
            "kernels": len(rows), "launches": sum(r["calls"] for r in rows), "top": rows[:top]}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="enwik8")
    ap.add_argument("--patterns", nargs="+", default=["strided", "dense"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--ctx", type=int, default=None)
    ap.add_argument("--layers", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from sparse_transformer.config import get_preset

    cfg = get_preset(args.preset)
    base = replace(cfg.model, backend="auto" if args.device == "cuda" else "torch")
    if args.ctx:
        base = replace(base, ctx=args.ctx)
    if args.layers:
        base = replace(base, n_layer=args.layers)
    doc = {"env": env_info(args.device), "preset": args.preset, "batch": args.batch,
           "ctx": base.ctx, "precision": cfg.train.precision, "runs": {}}  # fmt: skip
    for pat in args.patterns:
        mc = replace(base, pattern=pat, mode="merged")
        r = profile(mc, device=args.device, precision=cfg.train.precision, batch=args.batch,
                    warmup=args.warmup, top=args.top)  # fmt: skip
        doc["runs"][pat] = r
        _write(args.json, doc)
        kinds = ", ".join(f"{k} {v:.1f}" for k, v in sorted(r["by_kind_ms"].items(), key=lambda kv: -kv[1]))
        print(f"== {pat}: wall {r['wall_ms']:.1f} ms, GPU busy {r['gpu_busy_ms']:.1f} ms "
              f"({r['launches']} launches); by kind (ms): {kinds}")  # fmt: skip
        for t in r["top"]:
            print(f"  {t['ms']:8.2f} ms {t['calls']:5d}x  {t['kind']:<9} {t['name'][:90]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
