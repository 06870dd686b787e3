"""Where a model's attention time goes: the kernels of one layer's forward+backward, per kernel.

    python benchmarks/lab/step_attention_profile.py [--presets enwik8 table2-text] [--patterns fixed strided]

For each preset and pattern, one layer's attention exactly as the model calls it
(``kernels.keyed_attention_qkv`` on a (batch, ctx, 3 d) bf16 projection, the preset's mode, batch and
heads): GPU microseconds per kernel name per forward+backward (torch.profiler over 10 calls), the
same call's time replayed as a CUDA graph (GPU time) and eager (host included). Prints a table per
layer; ``--json`` writes them. (The host profile of an eager call: ``gpu_check.py --profile-host``.)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[2] / "src"))  # PYTHONPATH first (a before/after tree)

import torch

from sparse_transformer import kernels
from sparse_transformer.config import get_preset


def layer_call(preset: str, pattern: str, batch: int | None):
    mc = get_preset(preset).model
    mc = replace(mc, pattern=pattern)
    bsz = batch or get_preset(preset).train.batch_size
    pats = mc.layer_patterns()[0]
    pk = kernels.pattern_key(pats, mc.n_head, "auto")
    d = mc.d_model
    kernels.prepare_route(pk, mc.n_head, mc.ctx, "cuda")
    qkv = torch.randn(bsz, mc.ctx, 3 * d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    g = torch.randn(bsz, mc.ctx, d, device="cuda", dtype=torch.bfloat16)

    def run():
        kernels.keyed_attention_qkv(qkv, pk, mc.n_head, d).backward(g)
        qkv.grad = None

    return run, f"{preset} {pattern} ({mc.mode}) B={bsz} H={mc.n_head} N={mc.ctx} d_head={d // mc.n_head}"


def kernel_table(run, calls: int = 10) -> dict:
    from torch.profiler import ProfilerActivity, profile

    for _ in range(3):
        run()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            run()
        torch.cuda.synchronize()
    per = defaultdict(lambda: [0.0, 0])
    for e in prof.events():
        if e.device_type.name == "CUDA":
            per[e.name][0] += e.device_time / calls
            per[e.name][1] += 1 / calls
    return {k: {"us": v[0], "count": v[1]} for k, v in sorted(per.items(), key=lambda kv: -kv[1][0])}


def graph_ms(run, reps: int = 20) -> float:
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            run()
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        run()
    graph.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def eager_ms(run, reps: int = 20) -> float:
    import triton.testing

    return triton.testing.do_bench(run, warmup=10, rep=reps * 5)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["enwik8", "table2-text"])
    ap.add_argument("--patterns", nargs="+", default=["fixed", "strided"])
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": []}
    for preset in args.presets:
        for pattern in args.patterns:
            run, desc = layer_call(preset, pattern, args.batch)
            table = kernel_table(run)
            gms, ems = graph_ms(run), eager_ms(run)
            total = sum(r["us"] for r in table.values())
            print(f"\n## {desc}: graph {gms * 1e3:.0f} us, eager {ems * 1e3:.0f} us, kernels {total:.0f} us")
            for name, r in table.items():
                print(f"  {r['us']:8.1f} us  x{r['count']:.0f}  {name[:110]}")
            out["cases"].append({"case": desc, "graph_us": gms * 1e3, "eager_us": ems * 1e3, "kernels": table})
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
