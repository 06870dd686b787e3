"""The paper's Table 2 at small scale (issue 9): dense vs fixed vs strided, equal updates.

Table 2 of the paper trains one model per attention pattern and reports bits per byte (or per
dim) and time per iteration: EnWik8 at context 12,288 (dense 1.00 / fixed 0.99 / strided 1.13 at
1.31 / 0.55 / 0.35) and CIFAR-10 at 3,072 (2.82 / 2.85 / 2.80 at 0.54 / 0.47 / 0.38). This script
runs one half of it:

* ``--half text``: the ``table2-text`` preset on GCIDE (``sparse-transformer prepare gcide``),
  context 8,192; ``--half images``: the ``table2-images`` preset on Fashion-MNIST (``prepare
  fashion-mnist``), 784 bytes per image.
* The three models differ only in ``model.pattern`` (dense | fixed | strided): same size, data
  order (seed), schedule and number of updates. Training is the library's (``train.train``):
  what a user gets from ``sparse-transformer train --preset table2-text --model.pattern=fixed``.
  Dense attention is PyTorch's causal SDPA (FlashAttention) on CUDA: the ``auto`` backend sends
  all-dense heads there.
* Updates: ``--steps``, or the most that fit ``--budget-s`` seconds of training for the three
  together, from a short timing probe of each model (capped at the preset's ``max_steps``).
* Time per iteration: median ``ms_per_step`` of the training log (synchronised each update,
  validation excluded), leaving out the first two log intervals (compilation, warm-up).
* Result: bits per byte/dim on the *whole* validation split of the final weights, plus the
  curves (training loss every ``log_interval`` updates, validation every ``eval_interval``).

Writes JSON (rows, curves, environment, command), a Markdown table and a PNG of the curves.

    PYTHONPATH=src python benchmarks/reproduce.py --half text --budget-s 300 --out results/
    PYTHONPATH=src python benchmarks/reproduce.py --half images --budget-s 200 --out results/
    PYTHONPATH=src python benchmarks/reproduce.py --half text --device cpu --smoke --out /tmp/r
    python benchmarks/reproduce.py --replot results/reproduce-text.json   # table + figure again
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import _write, env_info, measure

VARIANTS = ("dense", "fixed", "strided")
HALVES = {  # half: (preset, unit, paper's data set and context)
    "text": ("table2-text", "bits/byte", "EnWik8, 12,288 context"),
    "images": ("table2-images", "bits/dim", "CIFAR-10, 3,072 context"),
}
PAPER = {  # the paper's Table 2: (bits, time per iteration)
    "text": {"dense": (1.00, 1.31), "fixed": (0.99, 0.55), "strided": (1.13, 0.35)},
    "images": {"dense": (2.82, 0.54), "fixed": (2.85, 0.47), "strided": (2.80, 0.38)},
}
# --smoke: seconds on a CPU (tests): a tiny model, a few updates; images keep ctx = 784.
SMOKE = {
    "text": {"model.ctx": 256, "model.stride": 16, "model.c": 4},
    "images": {},
    "both": {
        "model.n_layer": 1, "model.n_head": 2, "model.d_model": 32, "train.batch_size": 2,
        "train.eval_batches": 1, "train.log_interval": 1, "train.precision": "fp32",
    },
}  # fmt: skip
PROBE_STEPS = 5
SKIP_INTERVALS = 2  # log intervals left out of the time per iteration (compilation, warm-up)
log = logging.getLogger("reproduce")


def variant_config(base, pattern: str, steps: int):
    """``base`` with ``model.pattern`` and a schedule of ``steps`` updates (warm-up and
    validation interval scaled down with it when the budget shortens the run)."""
    from sparse_transformer.config import apply_overrides

    t = base.train
    return apply_overrides(
        base,
        {
            "model.pattern": pattern,
            "train.max_steps": steps,
            "train.warmup": min(t.warmup, max(1, steps // 10)),
            "train.eval_interval": min(t.eval_interval, max(1, steps // 10)),
        },
    )


def choose_steps(probe_ms: dict[str, float], budget_s: float, cap: int, safety: float = 0.85) -> int:
    """The most equal updates that fit ``budget_s`` for all models together (times ``safety``
    for validation, logging and data loading), at most ``cap``."""
    per_update = sum(probe_ms.values()) / 1000
    if per_update <= 0:
        raise ValueError(f"probe step times must be positive, got {probe_ms}")
    return max(1, min(cap, int(safety * budget_s / per_update)))


def step_time_ms(events: list[dict], skip: int = SKIP_INTERVALS) -> float | None:
    """Median ``ms_per_step`` over the training log events, leaving out the first ``skip``."""
    ms = [e["ms_per_step"] for e in events if e.get("event") == "train"]
    ms = ms[skip:] if len(ms) > skip else ms
    return statistics.median(ms) if ms else None


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def pattern_label(cfg) -> str:
    m = cfg.model
    if m.pattern == "dense":
        return "dense (causal SDPA)" if _on_cuda(cfg) else "dense"
    extra = f", c={m.c}" if m.pattern == "fixed" else ""
    return f"{m.pattern} (l={m.stride}{extra}, {m.mode})"


def _on_cuda(cfg) -> bool:
    return cfg.train.device.startswith("cuda")


def run_variant(cfg, run_dir: Path, *, progress: bool) -> dict:
    """Train ``cfg`` into ``run_dir``, score the whole validation split, return the row."""
    import torch

    from sparse_transformer.checkpoint import load_model
    from sparse_transformer.evaluate import evaluate
    from sparse_transformer.train import open_dataset, train

    cuda = _on_cuda(cfg)
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = train(cfg, run_dir, progress=progress)
    train_s = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 2**30 if cuda else None
    model = load_model(run_dir, device=cfg.train.device)
    final = evaluate(
        model, open_dataset(cfg, "val"), batch_size=cfg.train.batch_size, progress=progress,
        precision=cfg.train.precision,
    )  # fmt: skip
    events = read_metrics(run_dir)
    ms = step_time_ms(events)
    tokens = cfg.train.batch_size * cfg.model.ctx
    return {
        "pattern": cfg.model.pattern,
        "label": pattern_label(cfg),
        "params": model.num_params(),
        "steps": result["step"],
        "val_bits": final["bits_per_byte"],
        "val_tokens": final["tokens"],
        "train_bits_last": result["train_bpb"],
        "ms_per_step": ms,
        "tokens_per_s": None if ms is None else tokens / (ms / 1000),
        "train_seconds": round(train_s, 1),
        "peak_gib": peak,
        "curves": [
            {k: e[k] for k in ("event", "step", "bpb", "val_bpb", "elapsed_s") if k in e}
            for e in events
        ],
    }


def to_markdown(doc: dict) -> str:
    half = doc["half"]
    unit = HALVES[half][1]
    rows = {r["pattern"]: r for r in doc["rows"]}
    dense_ms = rows.get("dense", {}).get("ms_per_step")
    env = doc["env"]
    out = [
        (f"| {doc['dataset']} ({doc['ctx']:,} context) | {unit} | ms/iter | ÷ dense | "
        f"paper ({HALVES[half][2]}) | paper time/iter | paper ÷ dense |"),
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in VARIANTS:
        r = rows.get(name)
        if r is None:
            continue
        pb, pt = PAPER[half][name]
        ratio = f"{r['ms_per_step'] / dense_ms:.2f}" if dense_ms and r["ms_per_step"] else "-"
        ms = f"{r['ms_per_step']:.1f}" if r["ms_per_step"] else "-"
        out.append(
            f"| {r['label']} | {r['val_bits']:.3f} | {ms} | {ratio} | {pb:.2f} | {pt:.2f} | "
            f"{pt / PAPER[half]['dense'][1]:.2f} |"
        )
    r0 = doc["rows"][0] if doc["rows"] else {}
    out += [
        "",
        (f"{env.get('device', '')}; torch {env.get('torch')}, triton {env.get('triton', '-')}, "
        f"commit {env.get('commit')}, {env.get('date')}. {r0.get('params', 0) / 1e6:.2f}M "
        f"parameters, {doc['steps']:,} updates of {doc['batch']} x {doc['ctx']:,} tokens each; "
        f"{unit} on the whole validation split ({r0.get('val_tokens', 0):,} bytes)."),
        f"Command: `{doc['command']}`",
    ]
    return "\n".join(out) + "\n"


def write_report(doc: dict, out: Path, name: str) -> str:
    """``name``.md (the table) and ``name``.png (the curves) in ``out``; returns the table."""
    from sparse_transformer.plots import curves_figure

    md = to_markdown(doc)
    (out / f"{name}.md").write_text(md)
    try:
        curves_figure(
            {r["label"]: r["curves"] for r in doc["rows"]}, out / f"{name}.png",
            unit=HALVES[doc["half"]][1],
            title=f"{doc['dataset']}, context {doc['ctx']:,}: {doc['steps']:,} updates per model",
        )  # fmt: skip
    except ValueError as e:  # matplotlib missing: the table still stands
        print(f"no figure: {e}", file=sys.stderr)
    return md


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replot", type=Path, default=None, metavar="JSON",
                    help="write the .md and .png of a finished run's JSON again, then stop")
    ap.add_argument("--half", choices=sorted(HALVES))
    ap.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--out", type=Path, default=None, help="folder for the JSON, .md and .png")
    ap.add_argument("--name", default=None, help="file name stem (default: reproduce-<half>)")
    ap.add_argument("--work", type=Path, default=None, help="run folders (default: OUT/runs-<half>)")
    ap.add_argument("--patterns", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--steps", type=int, default=None, help="updates per model (default: budget)")
    ap.add_argument("--budget-s", type=float, default=300.0,
                    help="training seconds for all models together when --steps is not given")
    ap.add_argument("--smoke", action="store_true", help="tiny models for a CPU test")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="config overrides for all models, e.g. model.n_layer=4")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.replot is not None:
        try:
            doc = json.loads(args.replot.read_text())
            print(write_report(doc, args.replot.parent, args.replot.stem))
        except (OSError, ValueError, KeyError) as e:
            print(f"error: cannot replot {args.replot}: {e}", file=sys.stderr)
            return 2
        return 0
    if args.half is None or args.out is None:
        ap.error("--half and --out are required (or --replot JSON)")

    from sparse_transformer.config import apply_overrides, get_preset
    from sparse_transformer.train import DataNotPreparedError, open_dataset

    preset = HALVES[args.half][0]
    try:
        overrides = {"data.data_dir": args.data_dir, "train.device": args.device}
        if args.smoke:
            overrides.update(SMOKE[args.half], **SMOKE["both"])
        base = apply_overrides(get_preset(preset), overrides)
        base = apply_overrides(base, [f"--{s}" for s in args.set])
        for split in ("train", "val"):
            open_dataset(base, split)
    except (ValueError, TypeError, DataNotPreparedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.steps is not None and args.steps < 1:
        print(f"error: --steps must be >= 1, got {args.steps}", file=sys.stderr)
        return 2
    name = args.name or f"reproduce-{args.half}"
    work = args.work or args.out / f"runs-{args.half}"
    device = "cuda" if args.device.startswith("cuda") else "cpu"
    doc = {
        "half": args.half, "preset": preset, "dataset": base.data.dataset, "ctx": base.model.ctx,
        "batch": base.train.batch_size, "env": env_info(device),
        "command": "python benchmarks/reproduce.py " + shlex.join(sys.argv[1:] if argv is None else argv),
        "paper": {k: {"bits": v[0], "time_per_iter": v[1]} for k, v in PAPER[args.half].items()},
        "rows": [],
    }  # fmt: skip

    # 1. Updates: given, or the most that fit the budget (a short probe of each model).
    if args.steps is None:
        probe = {}
        for p in args.patterns:
            cfg = variant_config(base, p, 1)
            r = measure(cfg.model, device=device, precision=cfg.train.precision,
                        recompute=cfg.train.recompute, steps=PROBE_STEPS,
                        batch=cfg.train.batch_size)  # fmt: skip
            if r["status"] != "ok":
                print(f"error: probing {p} failed: {r.get('error')}", file=sys.stderr)
                return 1
            probe[p] = r["step_ms"]
            print(f"probe {p:<8} {r['step_ms']:8.1f} ms/update", flush=True)
        steps = choose_steps(probe, args.budget_s, base.train.max_steps)
        doc["probe_ms"] = probe
        print(f"{steps} updates each fit {args.budget_s:.0f} s", flush=True)
    else:
        steps = args.steps
    doc["steps"] = steps

    # 2. Train and score each model.
    for p in args.patterns:
        cfg = variant_config(base, p, steps)
        run_dir = work / p
        if run_dir.exists():
            shutil.rmtree(run_dir)
        print(f"=== {p}: {pattern_label(cfg)}, {steps} updates", flush=True)
        row = run_variant(cfg, run_dir, progress=not args.no_progress)
        doc["rows"].append(row)
        ms = "-" if row["ms_per_step"] is None else f"{row['ms_per_step']:.1f}"
        print(f"{p:<8} val {row['val_bits']:.4f} {HALVES[args.half][1]} | {ms} ms/update | "
              f"{row['train_seconds']:.0f} s", flush=True)  # fmt: skip
        _write(args.out / f"{name}.json", doc)

    # 3. Table, curves.
    rows = {r["pattern"]: r for r in doc["rows"]}
    if rows.get("dense", {}).get("ms_per_step"):
        doc["time_ratio_to_dense"] = {
            k: r["ms_per_step"] / rows["dense"]["ms_per_step"]
            for k, r in rows.items() if r["ms_per_step"]
        }  # fmt: skip
    _write(args.out / f"{name}.json", doc)
    md = write_report(doc, args.out, name)
    print(md)
    return 0 if all(math.isfinite(r["val_bits"]) for r in doc["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
