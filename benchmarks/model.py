"""Model benchmark (issue 5): the ``enwik8`` preset's training step, dense vs fixed vs strided.

The paper's Table 2 time column (EnWik8, 12,288 context: dense 1.31, fixed 0.55, strided 0.35
per iteration; unit and hardware not stated) as our measurement: time per training step and
tokens/s of the ``enwik8`` preset (30 layers, 8 heads, d 512, ctx 12,288, residual dropout 0.4,
bf16 autocast) with three attention patterns, everything else the same:

* ``dense``: full causal attention, PyTorch's SDPA (FlashAttention: what ``auto`` picks for
  all-dense heads on CUDA); ``dense-triton`` (with ``--patterns``): the same through our Triton
  kernels on a dense block plan;
* ``fixed``: the preset, merged heads over block(128) + summary(128, 32) (25.8% of the pairs);
* ``strided``: merged heads over local(128) + strided(128) (the paper's strided, l = 128).

A step is train.py's (``memory.train_step``: forward, float32 loss, backward, clipping, AdamW) on
``--batch`` sequences (default 2: the preset's 16 over 8 GPUs). Median of ``--steps`` steps after
``--warmup`` steps. Writes JSON (and a .md table with ``--md``).

    PYTHONPATH=src python benchmarks/model.py --json out.json --md out.md
    PYTHONPATH=src python benchmarks/model.py --device cpu --ctx 256 --layers 2 --steps 1   # smoke
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import _write, env_info, measure

PAPER = {"dense": 1.31, "fixed": 0.55, "strided": 0.35}


def variants(base, sparse_backend: str):
    return {
        "dense": replace(base, pattern="dense", backend="auto"),
        "dense-triton": replace(base, pattern="dense", backend="triton"),
        "fixed": replace(base, backend=sparse_backend),
        "strided": replace(base, pattern="strided", mode="merged", backend=sparse_backend),
    }


def flop_floor(mc, batch: int) -> dict:
    """Step-time ratios to dense if every part ran at the same FLOP rate (Amdahl): matmul FLOPs
    6 * (block + head parameters) * tokens, attention 4 * pairs * d per layer forward (x 3.5
    forward + backward); elementwise work, the optimizer and the embeddings left out."""
    from sparse_transformer.attention import layer_patterns

    n, d = mc.ctx, mc.d_model
    per_layer = d * (2 * mc.qk_width + d) + d * d + 2 * d * mc.ffn_width  # in, out, FF
    linear = 6 * (mc.n_layer * per_layer + d * mc.vocab_size) * batch * n
    out = {}
    for name, pat in (("dense", "dense"), ("fixed", "fixed"), ("strided", "strided")):
        cfg = replace(mc, pattern=pat, mode="merged")
        causal = n * (n + 1) / 2
        layers = [heads[0] for heads in layer_patterns(cfg)]  # equal patterns are one object
        density = {id(p): p.plan(n, 64).pairs() / causal if pat != "dense" else 1.0 for p in layers}
        pairs = sum(density[id(p)] * causal for p in layers)
        out[name] = linear + 3.5 * 4 * pairs * d * batch
    return {k: v / out["dense"] for k, v in out.items()}


def to_markdown(doc: dict) -> str:
    rows = {r["name"]: r for r in doc["rows"]}
    env = doc["env"]
    out = [
        f"# enwik8 preset: training step, dense vs fixed vs strided ({env.get('device', '')})",
        "",
        (
            f"torch {env.get('torch')}, triton {env.get('triton', '-')}, commit {env.get('commit')}, "
            f"{env.get('date')}; batch {doc['batch']} x ctx {doc['ctx']:,}, {doc['precision']}, "
            f"median of {doc['steps']} steps."
        ),
        "",
        ("| pattern | step (ms) | tokens/s | peak memory (GiB) | ÷ dense | FLOP floor ÷ dense "
        "| paper time/iter | paper ÷ dense |"),
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    dense = (
        rows.get("dense", {}).get("step_ms")
        if rows.get("dense", {}).get("status") == "ok"
        else None
    )
    floor = doc.get("flop_floor", {})
    for name in ("dense", "dense-triton", "fixed", "strided"):
        r = rows.get(name)
        if r is None:
            continue
        paper = PAPER.get(name.split("-")[0])
        paper_cells = f"{paper} | {paper / PAPER['dense']:.2f}" if name in PAPER else "- | -"
        fl = f"{floor[name]:.2f}" if name in floor else "-"
        if r["status"] != "ok":
            out.append(f"| {name} | {r['status']} | | | | {fl} | {paper_cells} |")
            continue
        ratio = f"{r['step_ms'] / dense:.2f}" if dense else "-"
        out.append(
            f"| {name} | {r['step_ms']:.1f} | {r['tokens_per_s']:,.0f} | {r.get('peak_gib', 0):.1f} | "
            f"{ratio} | {fl} | {paper_cells} |"
        )
    out += [
        "",
        ("FLOP floor: the step-time ratio to dense if matmuls and attention ran at one FLOP rate "
        "(6 x parameters x tokens for the matmuls, 4 x pairs x d x 3.5 for attention; elementwise "
        "work and the optimizer left out): with kernels as efficient as the dense ones, a sparse step cannot go below it."),
    ]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="enwik8")
    ap.add_argument("--patterns", nargs="*", default=["dense", "fixed", "strided"],
                    choices=["dense", "dense-triton", "fixed", "strided"])
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--ctx", type=int, default=None, help="override the context (smoke tests)")
    ap.add_argument("--layers", type=int, default=None, help="override the depth (smoke tests)")
    ap.add_argument("--backend", default=None, help="default: triton on cuda, torch on cpu")
    ap.add_argument("--recompute", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args(argv)

    from sparse_transformer.config import get_preset

    cfg = get_preset(args.preset)
    base = cfg.model
    sparse_backend = args.backend or ("triton" if args.device == "cuda" else "torch")
    if args.ctx:
        base = replace(base, ctx=args.ctx)
    if args.layers:
        base = replace(base, n_layer=args.layers)
    doc = {
        "env": env_info(args.device), "preset": args.preset, "batch": args.batch,
        "ctx": base.ctx, "layers": base.n_layer, "precision": cfg.train.precision,
        "recompute": args.recompute, "steps": args.steps, "paper_time_per_iter": PAPER, "rows": [],
        "flop_floor": flop_floor(base, args.batch),
    }  # fmt: skip
    print("FLOP floor (ratio to dense at one FLOP rate): "
          + ", ".join(f"{k} {v:.2f}" for k, v in doc["flop_floor"].items()), flush=True)
    for name, mc in variants(base, sparse_backend).items():
        if name not in args.patterns:
            continue
        r = measure(mc, device=args.device, precision=cfg.train.precision,
                    recompute=args.recompute, steps=args.steps, batch=args.batch)  # fmt: skip
        r.update(name=name, pattern=mc.pattern, mode=mc.mode, stride=mc.stride, c=mc.c)
        doc["rows"].append(r)
        msg = (f"{r['step_ms']:.1f} ms/step, {r['tokens_per_s']:,.0f} tok/s, peak {r.get('peak_gib', 0):.1f} GiB"
               if r["status"] == "ok" else f"{r['status']}: {r.get('error')}")  # fmt: skip
        print(f"{name:<8} {msg}", flush=True)
        _write(args.json, doc)
    ok = {r["name"]: r["step_ms"] for r in doc["rows"] if r["status"] == "ok"}
    if "dense" in ok:
        doc["ratio_to_dense"] = {k: v / ok["dense"] for k, v in ok.items()}
        print(
            "step time / dense: "
            + ", ".join(f"{k} {v:.2f}" for k, v in doc["ratio_to_dense"].items())
        )
    _write(args.json, doc)
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(to_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
