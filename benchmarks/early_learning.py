"""Early learning speed on the CPU: training loss of a small model over the first updates.

Used in docs/reproduction.md and docs/output-layer.md to compare initialisations, output layers
and patterns cheaply: a 4-layer, 4-head, d 128 model (torch backend, heads merged, per-head
summary offsets for the fixed pattern) on a prepared byte dataset, AdamW (lr 1e-3 after a
50-update linear warm-up, then constant; beta2 0.99, weight decay 0.01, clipping 1.0), fp32, one
torch thread, seed 0 for the weights and the data order (every run of one set-up sees the same
batches). Each run is one point of the grid ``--patterns`` x ``--inits`` x ``--w-out``:

* ``--inits``: ``paper`` / ``gpt2`` (``model.init``), or ``emb02`` (the paper's init with the
  token and position embeddings re-drawn with std 0.02);
* ``--w-out``: ``normal`` (W_out ~ N(0, 0.02), the library default) or ``zero``
  (``model.zero_logits=true``, the authors' zero output layer).

It prints the loss of the current batch every ``--print-every`` updates and, at the end, a table of
train bits/byte at each ``--report`` update, two ways: the loss of that update's batch alone
(``batch``) and the mean over the 10 updates ending there (``mean10``, as the training log's
interval average). ``--out NAME.json`` keeps every run's per-update losses; runs already in that
file are skipped, and the table (``NAME.md``) is rebuilt from all its rows, so a grid can be
filled in several calls (e.g. longer runs for one pattern):

    PYTHONPATH=src python benchmarks/early_learning.py --patterns fixed --inits paper,gpt2 \\
        --w-out normal,zero --ctx 2048 --stride 128 --c 32 --batch 4 --steps 250 \\
        --data data/gcide --out benchmarks/results/early-learning-wout-cpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

INITS = ("paper", "gpt2", "emb02")
W_OUT = ("normal", "zero")
MEAN_OVER = 10


def env_info() -> dict:
    try:
        commit = (
            os.environ.get("GIT_COMMIT")
            or subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
            ).stdout.strip()
        )
    except OSError:
        commit = ""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "device": f"CPU: {cpu}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": 1,
        "python": platform.python_version(),
        "commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def bpb(nats: float) -> float:
    return nats / math.log(2)


def run_one(args: argparse.Namespace, pattern: str, init: str, w_out: str) -> dict:
    """Train one model for ``args.steps`` updates; returns its per-update losses (nats)."""
    from sparse_transformer.config import TrainConfig
    from sparse_transformer.data import ByteDataset
    from sparse_transformer.model import ModelConfig, SparseTransformer
    from sparse_transformer.train import configure_optimizer

    cfg = ModelConfig(
        ctx=args.ctx, n_layer=4, n_head=4, d_model=128, pattern=pattern, stride=args.stride,
        c=args.c, mode="merged", head_offsets=True, backend="torch",
        init="gpt2" if init == "gpt2" else "paper", zero_logits=w_out == "zero",
    )  # fmt: skip
    torch.manual_seed(0)
    model = SparseTransformer(cfg)
    if init == "emb02":
        with torch.no_grad():
            torch.nn.init.normal_(model.wte.weight, std=0.02)
            for table in model.wpe:
                torch.nn.init.normal_(table.weight, std=0.02)
    opt = configure_optimizer(model, TrainConfig(lr=args.lr, beta2=0.99))
    ds = ByteDataset(args.data, "train")
    g = torch.Generator().manual_seed(0)
    losses: list[float] = []
    t0 = time.time()
    for s in range(1, args.steps + 1):
        for pg in opt.param_groups:
            pg["lr"] = args.lr * min(1.0, s / args.warmup)
        x, y = ds.get_batch(args.batch, args.ctx, g)
        loss = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if s % args.print_every == 0:
            print(f"{pattern:8s} {init:6s} W_out {w_out:6s} step {s} loss {losses[-1]:.3f} "
                  f"({bpb(losses[-1]):.3f} bits/byte) ({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    return {
        "pattern": pattern, "init": init, "w_out": w_out, "ctx": args.ctx, "stride": args.stride,
        "c": args.c, "batch": args.batch, "lr": args.lr, "warmup": args.warmup,
        "steps": args.steps, "seconds": round(time.time() - t0, 1), "losses": losses,
        "data": Path(args.data).name, "env": env_info(), "command": args.command,
    }  # fmt: skip


def at(row: dict, step: int) -> tuple[float, float] | None:
    """(batch, mean10) train bits/byte at ``step``, or None if the run is shorter."""
    ls = row["losses"]
    if step > len(ls):
        return None
    window = ls[max(0, step - MEAN_OVER) : step]
    return bpb(ls[step - 1]), bpb(sum(window) / len(window))


def table(rows: list[dict], report: list[int]) -> str:
    head = ["pattern", "init", "W_out"]
    for s in report:
        head += [f"update {s} batch", f"update {s} mean10"]
    lines = ["| " + " | ".join(head) + " |", "|---|---|---|" + "---:|" * (2 * len(report))]
    for r in rows:
        cells = [r["pattern"], r["init"], "N(0, 0.02)" if r["w_out"] == "normal" else "zero"]
        for s in report:
            v = at(r, s)
            cells += ["–", "–"] if v is None else [f"{v[0]:.3f}", f"{v[1]:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_results(path: Path, rows: list[dict], report: list[int]) -> None:
    path.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    rank = {v: i for i, v in enumerate(("fixed", "strided", "dense", *INITS, "zero", "normal"))}
    rows = sorted(
        rows, key=lambda r: tuple(rank.get(r[k], 99) for k in ("pattern", "init", "w_out"))
    )
    env = rows[-1]["env"] if rows else env_info()
    r0 = rows[0] if rows else {}
    md = [
        "# Early learning on the CPU: output layer x initialisation x pattern (issue 20)",
        "",
        (
            f"{env['device']}; torch {env['torch']} (1 thread), fp32; commit {env['commit']} "
            f"({env['date'][:10]}). Dataset `{r0.get('data')}` (train split), context "
            f"{r0.get('ctx')}, l = {r0.get('stride')}, c = {r0.get('c')} (fixed: per-head summary "
            f"offsets), 4 layers, 4 heads merged, d 128, batch {r0.get('batch')}, AdamW lr "
            f"{r0.get('lr')} after {r0.get('warmup')} warm-up updates (then constant), beta2 0.99, "
            "clip 1.0, seed 0 (same weights draw and data order per set-up). Train bits/byte: "
            f"`batch` = the loss of that update's batch alone, `mean10` = the mean over the "
            f"{MEAN_OVER} updates ending there. Single runs."
        ),
        "",
        table(rows, report),
        "",
        "Commands (one per call; rows already in the JSON are skipped):",
        "",
    ]
    for cmd in dict.fromkeys(r["command"] for r in rows):
        md.append(f"    {cmd}")
    md.append("")
    md.append("Seconds per run: " + ", ".join(
        f"{r['pattern']}/{r['init']}/{r['w_out']} {r['seconds']:.0f} s ({r['steps']} updates)"
        for r in rows) + ".")  # fmt: skip
    path.with_suffix(".md").write_text("\n".join(md) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # --pattern and --variant: the names of the earlier single-run interface (docs/reproduction.md).
    ap.add_argument(
        "--patterns", "--pattern", default="dense", help="comma-separated: fixed,strided,dense"
    )
    ap.add_argument(
        "--inits", "--variant", default="paper", help=f"comma-separated: {','.join(INITS)}"
    )
    ap.add_argument("--w-out", default="normal", help="comma-separated: normal,zero")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--c", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--print-every", type=int, default=50)
    ap.add_argument("--report", default="100,250", help="updates at which the table reports")
    ap.add_argument("--data", default="data/gcide", help="a prepared dataset folder")
    ap.add_argument("--out", default=None, help="JSON file (a .md table is written beside it)")
    args = ap.parse_args(argv)
    patterns, inits, w_outs = (a.split(",") for a in (args.patterns, args.inits, args.w_out))
    for name, vals, allowed in (("init", inits, INITS), ("w-out", w_outs, W_OUT)):
        bad = [v for v in vals if v not in allowed]
        if bad:
            ap.error(f"unknown --{name} {bad[0]!r}; choose from {', '.join(allowed)}")
    report = [int(s) for s in args.report.split(",")]
    # The command as run, with the dataset and output folders written as repository-relative
    # defaults (no machine paths in committed results).
    shown = list(sys.argv[1:] if argv is None else argv)
    for i, a in enumerate(shown[:-1]):
        if a == "--data":
            shown[i + 1] = f"data/{Path(args.data).name}"
        if a == "--out":
            shown[i + 1] = f"benchmarks/results/{Path(args.out).name}"
    args.command = "PYTHONPATH=src python benchmarks/early_learning.py " + shlex.join(shown)

    torch.set_num_threads(1)
    out = Path(args.out) if args.out else None
    rows: list[dict] = []
    if out is not None and out.exists():
        rows = json.loads(out.read_text())["rows"]
    for pattern, init, w_out in itertools.product(patterns, inits, w_outs):
        key = (pattern, init, w_out)
        if any((r["pattern"], r["init"], r["w_out"]) == key and r["steps"] >= args.steps
               for r in rows):  # fmt: skip
            print(f"skipping {key}: already in {out}", flush=True)
            continue
        row = run_one(args, pattern, init, w_out)
        rows = [r for r in rows if (r["pattern"], r["init"], r["w_out"]) != key] + [row]
        if out is not None:
            write_results(out, rows, report)
    print(table(rows, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
