"""The training step against a compiled dense GPT (issue 16): what a user gains by training sparse.

For each preset (``enwik8``: 30 L, d 512, 8 heads, ctx 12,288, dropout 0.4; ``table2-text``: 8 L,
d 256, ctx 8,192; ``table2-images``: 8 L, d 256, ctx 784), in ONE process:

* ``gpt``: a plain dense causal GPT of the same shape written here (pre-LN, GELU 4x, fused QKV,
  SDPA, learned positions, the preset's dropout): the model a user would train instead. Compiled
  whole with ``torch.compile(model)`` (its best case), and eager.
* ``dense`` / ``fixed`` / ``strided``: our model with ``model.pattern`` set (dense runs through SDPA
  under ``auto``; the sparse ones through our Triton kernels), eager and compiled as
  ``train.compile=true`` compiles (each residual block, :mod:`sparse_transformer.compilation`).
* ``*-graphs`` (``--rows``): compiled with ``mode="reduce-overhead"`` (CUDA graphs;
  ``train.compile_mode=reduce-overhead``), the GPT whole, ours per block; ``*-autotune``: the same
  with ``mode="max-autotune"`` (Inductor benchmarks kernel configurations while compiling).

Every row runs train.py's step: bf16 autocast, float32 loss, backward, clipping, fused AdamW. The
time is the median of ``--steps`` steps after ``--warmup`` (the first one compiles), each synchronised;
"back to back" is the mean of ``3 * --steps`` steps with one synchronisation at the end, as train.py
runs them (it reads losses back only at log, evaluation and checkpoint points).

Useful FLOPs per step (the formula of issue 16): matmuls ``6 * P * tokens`` with P the weights of
the linear layers (the embeddings are look-ups), plus attention ``4 * pairs * d_head * heads *
layers * 3`` per sequence for forward + backward, with ``pairs`` the (query, key) pairs each head's
pattern allows (n(n+1)/2 for dense). Utilisation is useful FLOP/s over the bf16 matmul rate
measured in the same process (8192^3). ``--profile`` adds, for the compiled rows (GPT included) of the
first preset, one profiled step split into attention / matmul / optimizer / other kernels.

    PYTHONPATH=src python benchmarks/model.py --presets enwik8 table2-text table2-images \\
        --json out.json --md out.md --profile
    PYTHONPATH=src python benchmarks/model.py --device cpu --presets tiny-cpu --steps 1   # smoke
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import torch
import torch.nn.functional as F
from memory import GIB, _write, env_info
from torch import nn

ROWS = ("gpt-compiled", "gpt-eager", "dense-eager", "dense-compiled", "fixed-eager",
        "fixed-compiled", "strided-eager", "strided-compiled", "gpt-graphs", "dense-graphs", "fixed-graphs",
        "strided-graphs", "gpt-autotune", "dense-autotune", "fixed-autotune", "strided-autotune")  # fmt: skip
DEFAULT_ROWS = ROWS[:8]
BATCH = {"enwik8": 2}  # per-GPU batch where it differs from the preset's (enwik8: 16 over 8 GPUs)


# --------------------------------------------------------------------------------------------
# The baseline: a plain dense causal GPT of the same shape
# --------------------------------------------------------------------------------------------


class GPTBlock(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(B, T, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.drop(self.proj(y.transpose(1, 2).reshape(B, T, d)))
        return x + self.drop(self.fc2(F.gelu(self.fc(self.ln2(x)), approximate="tanh")))


class GPT(nn.Module):
    def __init__(self, vocab: int, ctx: int, layers: int, heads: int, d: int, dropout: float):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(GPTBlock(d, heads, dropout) for _ in range(layers))
        self.ln_f, self.head = nn.LayerNorm(d), nn.Linear(d, vocab, bias=False)
        for p in self.parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln_f(x))


# --------------------------------------------------------------------------------------------
# FLOPs
# --------------------------------------------------------------------------------------------


def useful_flops(mc, batch: int, pattern: str) -> dict:
    """Useful FLOPs of one training step (forward + backward) of ``mc`` with ``pattern``."""
    n, d, H = mc.ctx, mc.d_model, mc.n_head
    per_layer = d * (2 * mc.qk_width + d) + d * d + 2 * d * mc.ffn_width
    matmul = 6 * (mc.n_layer * per_layer + d * mc.vocab_size) * batch * n
    cfg = replace(mc, pattern=pattern)
    pairs = 0
    for heads in cfg.layer_patterns():
        for p in heads:
            pairs += n * (n + 1) // 2 if pattern == "dense" else p.plan(n, 64).pairs()
    attention = 4 * pairs * (d // H) * 3 * batch  # pairs summed over heads and layers
    return {"matmul": matmul, "attention": attention, "total": matmul + attention}


def matmul_rate(device: str) -> float:
    """Measured bf16 matmul TFLOP/s (8192^3, median of 20)."""
    if device != "cuda":
        return float("nan")
    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(3):
        a @ b
    times = []
    for _ in range(20):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1000)
    return 2 * 8192**3 / statistics.median(times) / 1e12


# --------------------------------------------------------------------------------------------
# One row
# --------------------------------------------------------------------------------------------


def build_row(row: str, mc, device: str):
    from sparse_transformer.compilation import apply_compile
    from sparse_transformer.model import SparseTransformer

    name, how = row.split("-")
    torch.manual_seed(0)
    with torch.device(device):
        if name == "gpt":
            model = GPT(mc.vocab_size, mc.ctx, mc.n_layer, mc.n_head, mc.d_model, mc.dropout)
        else:
            model = SparseTransformer(replace(mc, pattern=name, backend="auto"))
    model.train()
    params = list(model.parameters())
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01, fused=device == "cuda")
    if how == "compiled":
        model = torch.compile(model) if name == "gpt" else apply_compile(model)
    if how in ("graphs", "autotune"):  # CUDA graphs: train.compile_mode=reduce-overhead or max-autotune
        mode = "reduce-overhead" if how == "graphs" else "max-autotune"
        model = torch.compile(model, mode=mode) if name == "gpt" else apply_compile(model, mode, mc.ctx)
    return model, opt, params


def step(model, opt, params, x, y, device: str) -> torch.Tensor:
    if device == "cuda":
        torch.compiler.cudagraph_mark_step_begin()
    with torch.autocast(device, dtype=torch.bfloat16):
        logits = model(x)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


KINDS = (
    ("attention", ("fwd_kernel", "bwd_kernel", "delta_kernel",
                   "flash", "fmha", "cudnn", "attention")),
    ("optimizer", ("adam", "multi_tensor", "foreach")),
    ("matmul", ("gemm", "nvjet", "cutlass", "xmma", "sm90_", "matmul")),
)  # fmt: skip


def kernel_kind(name: str) -> str:
    low = name.lower()
    for kind, keys in KINDS:
        if any(k in low for k in keys):
            return kind
    return "other"


def profile_step(model, opt, params, x, y, device: str) -> dict:
    """One step under the profiler: GPU time by kernel kind (ms), the largest 'other' kernels,
    the step's wall time against its GPU-busy time, and the host ops with the most own time."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        t0 = time.perf_counter()
        with record_function("bench_step"):
            step(model, opt, params, x, y, device)
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
    split: dict[str, float] = {}
    other: dict[str, list] = {}  # name -> [ms, launches]
    # CUDA events are the kernels, memsets and copies, and the GPU side of the step's annotation
    kernels = sorted((ev for ev in prof.events() if ev.device_type == DeviceType.CUDA and ev.name != "bench_step"),
                     key=lambda ev: ev.time_range.start)
    marks = [ev for ev in prof.events() if ev.name == "bench_step" and ev.device_type == DeviceType.CPU]
    for ev in kernels:
        ms = ev.time_range.elapsed_us() / 1000
        kind = kernel_kind(ev.name)
        split[kind] = split.get(kind, 0.0) + ms
        if kind == "other":
            acc = other.setdefault(ev.name[:90], [0.0, 0])
            acc[0] += ms
            acc[1] += 1
    top = sorted(other.items(), key=lambda kv: -kv[1][0])[:40]
    # Idle GPU time inside the step: before the first kernel, between kernels, after the last.
    gaps, end, prev = [], None, ""
    for ev in kernels:
        if end is not None and ev.time_range.start > end:
            gaps.append((ev.time_range.start - end, prev[:50], ev.name[:50]))
        if end is None or ev.time_range.end > end:
            end, prev = ev.time_range.end, ev.name
    idle = {}
    if kernels and marks:
        idle = {"lead_ms": round((kernels[0].time_range.start - marks[0].time_range.start) / 1000, 3),
                "between_ms": round(sum(g[0] for g in gaps) / 1000, 3),
                "largest_gaps": [[round(g / 1000, 3), a, b] for g, a, b in sorted(gaps, reverse=True)[:8]]}
    host = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:15]
    return {"ms": {k: round(v, 2) for k, v in split.items()}, "total_ms": round(sum(split.values()), 2),
            "wall_ms": round(1000 * wall, 2), "idle": idle, "top_other": [[k, round(v, 3), n] for k, (v, n) in top],
            "host_self_ms": [[e.key[:80], e.count, round(e.self_cpu_time_total / 1000, 3)] for e in host]}


def measure(row: str, mc, batch: int, device: str, steps: int, warmup: int, prof: bool) -> dict:
    out: dict = {"name": row, "batch": batch, "ctx": mc.ctx}
    model = opt = None
    try:
        if device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()  # the peak over the whole row: compile, capture, steps,
            base = (torch.cuda.memory_allocated(), torch.cuda.memory_reserved())  # over what earlier rows left
        model, opt, params = build_row(row, mc, device)
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, mc.vocab_size, (batch, mc.ctx + 1), generator=g).to(device)
        x, y = data[:, :-1], data[:, 1:]
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        t0 = time.perf_counter()
        step(model, opt, params, x, y, device)
        sync()
        out["first_step_s"] = round(time.perf_counter() - t0, 2)
        for _ in range(warmup - 1):
            step(model, opt, params, x, y, device)
        sync()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = step(model, opt, params, x, y, device)
            sync()
            times.append(time.perf_counter() - t0)
        out["loss"] = float(loss)
        out["step_ms"] = 1000 * statistics.median(times)
        out["step_ms_all"] = [round(1000 * t, 2) for t in times]
        out["tokens_per_s"] = batch * mc.ctx / statistics.median(times)
        t0 = time.perf_counter()  # 3 x steps back to back, one sync: the host may run ahead of the GPU
        for _ in range(3 * steps):
            step(model, opt, params, x, y, device)
        sync()
        out["back_to_back_ms"] = 1000 * (time.perf_counter() - t0) / (3 * steps)
        if device == "cuda":
            out["peak_gib"] = (torch.cuda.max_memory_allocated() - base[0]) / GIB
            out["reserved_gib"] = (torch.cuda.max_memory_reserved() - base[1]) / GIB
        if prof and device == "cuda":
            out["profile"] = profile_step(model, opt, params, x, y, device)
        out["status"] = "ok"
    except torch.OutOfMemoryError as e:
        out.update(status="oom", error=str(e).splitlines()[0][:300])
    except Exception as e:  # noqa: BLE001  (a failed row is recorded, the others still run)
        out.update(status="error", error=f"{type(e).__name__}: {str(e)[:400]}")
    finally:
        del model, opt
        torch._dynamo.reset()
        gc.collect()
    return out


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def to_markdown(doc: dict) -> str:
    env = doc["env"]
    lines = [
        f"# Training step vs a compiled dense GPT ({env.get('device', '')})",
        "",
        (f"torch {env.get('torch')}, triton {env.get('triton', '-')}, commit {env.get('commit')}, "
        f"{env.get('date')}; bf16 autocast, fused AdamW, median of {doc['steps']} synchronised steps; back to "
        f"back: mean of {3 * doc['steps']} steps, one synchronisation; measured "
        f"bf16 matmul rate {doc['matmul_tflops']:.0f} TFLOP/s. Command: `{doc['command']}`"),
        "",
        ("Useful FLOPs = 6 x linear weights x tokens + 4 x pairs x d_head x heads x layers x 3 "
        "(forward + backward; pairs = what each head's pattern allows). Utilisation = useful "
        "FLOP/s / measured matmul rate."),
        "",
    ]
    for p in doc["presets"]:
        lines += [
            (f"## {p['preset']}: {p['layers']} L, d {p['d_model']}, {p['heads']} heads, ctx "
            f"{p['ctx']:,}, batch {p['batch']}, dropout {p['dropout']}"),
            "",
            ("| row | ms/step | ÷ compiled GPT | back to back ms | ÷ GPT | tokens/s | useful TFLOP/s "
            "| utilisation | peak GiB (allocated / reserved) | first step s |"),
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        base = p.get("baseline_ms")
        for r in p["rows"]:
            if r["status"] != "ok":
                lines.append(f"| {r['name']} | {r['status']}: {r.get('error', '')[:80]} | | | | | | | | |")
                continue
            ratio = f"{r['step_ms'] / base:.3f}" if base else "-"
            b2b, base2 = r.get("back_to_back_ms"), p.get("baseline_b2b_ms")
            ratio2 = f"{b2b / base2:.3f}" if b2b and base2 else "-"
            lines.append(
                f"| {r['name']} | {r['step_ms']:.1f} | {ratio} | {b2b or float('nan'):.1f} | {ratio2} | "
                f"{r['tokens_per_s']:,.0f} | "
                f"{r['useful_tflops']:.0f} | {r['utilisation']:.2f} | {r.get('peak_gib', 0):.1f} / "
                f"{r.get('reserved_gib', 0):.1f} | {r['first_step_s']:.1f} |"
            )
        lines.append("")
        for r in p["rows"]:
            if "profile" in r:
                pr = r["profile"]
                parts = ", ".join(f"{k} {v:.1f}" for k, v in sorted(pr["ms"].items()))
                lines += [f"Profile of one `{r['name']}` step ({pr['wall_ms']:.1f} ms wall): "
                          f"{pr['total_ms']:.1f} ms of GPU time: "
                          f"{parts} ms. Largest other kernels: "
                          + "; ".join(f"{k} {v:.2f} ({n})" for k, v, n in pr["top_other"][:6])
                          + (f". GPU idle: {pr['idle']['lead_ms']:.2f} ms before the first kernel, "
                             f"{pr['idle']['between_ms']:.2f} ms between kernels" if "lead_ms" in pr.get("idle", {}) else ""), ""]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--presets", nargs="+", default=["enwik8", "table2-text", "table2-images"])
    ap.add_argument("--rows", nargs="+", default=list(DEFAULT_ROWS), choices=ROWS)
    ap.add_argument("--batch", type=int, default=None, help="default: 2 for enwik8, else the preset's")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--layers", type=int, default=None, help="override the depth (smoke tests)")
    ap.add_argument("--profile", action="store_true", help="profile one step of the first preset's compiled rows")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args(argv)

    from sparse_transformer.config import get_preset

    rate = matmul_rate(args.device)
    doc = {"env": env_info(args.device), "steps": args.steps, "matmul_tflops": rate,
           "command": "python benchmarks/model.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "presets": []}  # fmt: skip
    print(f"bf16 matmul rate {rate:.0f} TFLOP/s", flush=True)
    for pi, preset in enumerate(args.presets):
        cfg = get_preset(preset)
        mc = cfg.model if args.layers is None else replace(cfg.model, n_layer=args.layers)
        batch = args.batch or BATCH.get(preset, cfg.train.batch_size)
        entry = {"preset": preset, "layers": mc.n_layer, "d_model": mc.d_model, "heads": mc.n_head,
                 "ctx": mc.ctx, "batch": batch, "dropout": mc.dropout, "rows": []}  # fmt: skip
        doc["presets"].append(entry)
        flops = {p: useful_flops(mc, batch, p) for p in ("dense", "fixed", "strided")}
        entry["useful_flops"] = flops
        for row in args.rows:
            pattern = row.split("-")[0].replace("gpt", "dense")
            prof = args.profile and pi == 0 and "eager" not in row
            r = measure(row, mc, batch, args.device, args.steps, args.warmup, prof)
            if r["status"] == "ok":
                r["useful_tflops"] = flops[pattern]["total"] / (r["step_ms"] / 1000) / 1e12
                r["utilisation"] = r["useful_tflops"] / rate
                if row == "gpt-compiled":
                    entry["baseline_ms"] = r["step_ms"]
                    entry["baseline_b2b_ms"] = r["back_to_back_ms"]
            entry["rows"].append(r)
            base = entry.get("baseline_ms")
            msg = (f"{r['step_ms']:8.1f} ms/step  {r['step_ms'] / base if base else float('nan'):5.2f} x "
                   f"compiled GPT  {r['tokens_per_s']:>10,.0f} tok/s  peak {r.get('peak_gib', 0):5.1f} GiB  "
                   f"first step {r['first_step_s']:.1f} s  back to back {r['back_to_back_ms']:.1f} ms"
                   if r["status"] == "ok" else f"{r['status']}: {r.get('error')}")  # fmt: skip
            print(f"{preset:<14} {row:<17} {msg}", flush=True)
            if "profile" in r:
                pr = r["profile"]
                print(f"   profile: GPU {pr['ms']} = {pr['total_ms']} ms in a {pr['wall_ms']} ms step", flush=True)
                print(f"   top other: {pr['top_other'][:5]}", flush=True)
                print(f"   GPU idle: {pr['idle']}", flush=True)
                print(f"   host self ms: {pr['host_self_ms'][:10]}", flush=True)
            _write(args.json, doc)
    _write(args.json, doc)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(to_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
