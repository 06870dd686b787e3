"""Scaling benchmark (issue 8): data-parallel tokens/s of a preset under torchrun on K GPUs.

For every K in ``--ks`` (default: 1, 2, 4, 8 up to the visible GPU count) and every mode in
``--modes`` (ddp, fsdp) this runs the real training command

    torchrun --standalone --nproc_per_node=K -m sparse_transformer train --preset P ...
        --train.distributed=MODE --train.batch_size=PER_GPU*K (the same per-GPU batch)

for ``--steps`` updates on a synthetic text dataset (prepared once, in ``--work``), logging every
update, and reads ``metrics.jsonl``: tokens/s over the updates after the first ``--skip`` (those
hold compilation and warm-up), the per-GPU tokens/s, and the scaling efficiency = per-GPU tokens/s
÷ the 1-GPU tokens/s of the same mode. NCCL's NVLink multicast stays off (``NCCL_NVLS_ENABLE=0``
in every launched environment). With a largest K > 1 and ``--loss-check`` one more run at K=1
accumulates that K's global batch (``train.micro_batch_size`` = the per-GPU batch), and its loss
curve is compared with the K-GPU runs' (same global batch, same data).

Writes ``<out>.json`` and ``<out>.md`` (device names, world sizes, versions, per-run numbers).

    PYTHONPATH=src python benchmarks/scaling.py --preset enwik8 --out benchmarks/results/scaling-h200
    python benchmarks/scaling.py --device cpu --preset tiny-cpu --ks 1 2 --modes ddp --steps 4 \\
        --per-gpu-batch 2 --out /tmp/scaling          # the CPU (gloo) check of the logic
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from memory import env_info

ROOT = Path(__file__).resolve().parent.parent


def default_ks(device: str) -> list[int]:
    if device != "cuda":
        return [1, 2]
    import torch

    n = torch.cuda.device_count()
    return [k for k in (1, 2, 4, 8) if k <= n] or [1]


def prepare_synthetic(work: Path, ctx: int) -> Path:
    """A random-text dataset ``synthetic`` in ``work/data`` with every split longer than ctx."""
    import random

    data = work / "data"
    if (data / "synthetic" / "meta.json").is_file():
        return data
    from sparse_transformer.data import prepare

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 9)))
             for _ in range(2000)]  # fmt: skip
    size = max(400_000, 40 * (ctx + 1))  # val/test get ~5% each
    text = []
    n = 0
    while n < size:
        w = rng.choice(words) + (" " if rng.random() > 0.1 else ".\n")
        text.append(w)
        n += len(w)
    work.mkdir(parents=True, exist_ok=True)
    src = work / "synthetic.txt"
    src.write_text("".join(text))
    prepare("text", data, path=src, progress=False, out_name="synthetic")
    return data


def launch(args, data: Path, k: int, mode: str, run: Path, global_batch: int, micro: int) -> dict:
    """One torchrun of the training command; the parsed metrics (or the error)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={k}",
        "-m", "sparse_transformer", "train", "--preset", args.preset, "--out", str(run),
        "--data-dir", str(data), "--dataset", "synthetic", "--no-progress",
        f"--train.distributed={mode}", f"--train.batch_size={global_batch}",
        f"--train.micro_batch_size={micro}", f"--train.max_steps={args.steps}",
        "--train.log_interval=1", "--train.eval_interval=0", "--train.eval_batches=1",
        "--train.ckpt_interval=0", f"--train.warmup={args.steps}",
        f"--train.device={'cuda' if args.device == 'cuda' else 'cpu'}",
        *args.override,
    ]  # fmt: skip
    env = dict(os.environ, NCCL_NVLS_ENABLE="0", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH")) if p)
    if args.device == "cpu":
        env["OMP_NUM_THREADS"] = "1"
    row: dict = {"k": k, "mode": mode, "global_batch": global_batch, "micro_batch": micro,
                 "per_gpu_batch": global_batch // k, "command": " ".join(cmd[1:])}  # fmt: skip
    t0 = time.perf_counter()
    try:
        res = subprocess.run(
            cmd, check=False, capture_output=True, text=True, env=env, timeout=args.timeout
        )
    except subprocess.TimeoutExpired:
        row.update(status="timeout", wall_s=time.perf_counter() - t0)
        return row
    row["wall_s"] = time.perf_counter() - t0
    if res.returncode != 0:
        tail = (res.stderr or res.stdout).strip().splitlines()[-15:]
        row.update(status="error", returncode=res.returncode, error="\n".join(tail))
        return row
    events = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train = [e for e in events if e["event"] == "train"]
    timed = [e for e in train if e["step"] > args.skip]
    if not timed:
        row.update(status="error", error=f"no updates after --skip {args.skip}")
        return row
    seconds = sum(e["ms_per_step"] for e in timed) / 1000
    tokens = sum(e["tokens_per_s"] * e["ms_per_step"] / 1000 for e in timed)
    row.update(
        status="ok",
        tokens_per_s=tokens / seconds,
        tokens_per_s_per_gpu=tokens / seconds / k,
        ms_per_step=statistics.median(e["ms_per_step"] for e in timed),
        losses=[e["loss"] for e in train],
        timed_steps=len(timed),
    )
    return row


def to_markdown(doc: dict) -> str:
    env = doc["env"]
    out = [
        f"# Data-parallel scaling: `{doc['preset']}` preset ({env.get('device', '')})",
        "",
        (
            f"torch {env.get('torch')}, NCCL {env.get('nccl', '-')}, commit {env.get('commit')}, "
            f"{env.get('date')}; {doc['visible_devices']} visible device(s); per-GPU batch "
            f"{doc['per_gpu_batch']} x ctx {doc['ctx']:,}; {doc['steps']} updates, the first "
            f"{doc['skip']} not timed; NCCL_NVLS_ENABLE=0."
        ),
        "",
        "| mode | K | global batch | ms/update | tokens/s | tokens/s per GPU | efficiency |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in doc["runs"]:
        if r["status"] != "ok":
            out.append(f"| {r['mode']} | {r['k']} | {r['global_batch']} | {r['status']} | | | |")
            continue
        eff = r.get("efficiency")
        out.append(
            f"| {r['mode']} | {r['k']} | {r['global_batch']} | {r['ms_per_step']:.1f} | "
            f"{r['tokens_per_s']:,.0f} | {r['tokens_per_s_per_gpu']:,.0f} | "
            f"{'-' if eff is None else f'{100 * eff:.1f}%'} |"
        )
    lc = doc.get("loss_check")
    if lc:
        out += ["", f"Loss curves at global batch {lc['global_batch']}: K=1 with accumulation vs "
                f"K={lc['k']}: " + ", ".join(f"{m} max |Δloss| {v:.2e}" for m, v in
                lc["max_abs_diff"].items())]  # fmt: skip
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--preset", default="enwik8")
    ap.add_argument("--ks", nargs="*", type=int, default=None)
    ap.add_argument("--modes", nargs="*", default=["ddp", "fsdp"], choices=["ddp", "fsdp"])
    ap.add_argument("--per-gpu-batch", type=int, default=2)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--skip", type=int, default=3, help="first updates left out of the timing")
    ap.add_argument("--loss-check", action=argparse.BooleanOptionalAction, default=True)
    ap.add_argument("--timeout", type=float, default=900, help="seconds per torchrun")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temp dir)")
    ap.add_argument("--out", type=Path, required=True, help="writes OUT.json and OUT.md")
    ap.add_argument("override", nargs="*", help="extra --section.key=value overrides (after --)")
    args = ap.parse_args(argv)
    import torch

    from sparse_transformer.config import apply_overrides, get_preset

    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: use --device cpu", file=sys.stderr)
        return 2
    ks = args.ks or default_ks(args.device)
    cfg = get_preset(args.preset)
    cfg = apply_overrides(cfg, args.override) if args.override else cfg  # checks them, too
    work = args.work or Path(tempfile.mkdtemp(prefix="scaling-"))
    data = prepare_synthetic(work, cfg.model.ctx)
    env = env_info(args.device)
    if args.device == "cuda":
        env["devices"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        try:
            v = torch.cuda.nccl.version()
            env["nccl"] = ".".join(map(str, v)) if isinstance(v, tuple) else str(v)
        except Exception:  # noqa: BLE001 - informational only
            env["nccl"] = "unknown"
    doc = {
        "env": env, "preset": args.preset, "ctx": cfg.model.ctx, "per_gpu_batch": args.per_gpu_batch,
        "steps": args.steps, "skip": args.skip, "overrides": args.override,
        "visible_devices": torch.cuda.device_count() if args.device == "cuda" else os.cpu_count(),
        "runs": [],
    }  # fmt: skip

    def save() -> None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".json").write_text(json.dumps(doc, indent=1))
        args.out.with_suffix(".md").write_text(to_markdown(doc))

    for mode in args.modes:
        base = None
        for k in ks:
            b = args.per_gpu_batch
            r = launch(args, data, k, mode, work / f"{mode}-k{k}", b * k, b)
            if r["status"] == "ok":
                if k == 1:
                    base = r["tokens_per_s"]
                r["efficiency"] = r["tokens_per_s_per_gpu"] / base if base else None
            doc["runs"].append(r)
            if r["status"] == "ok":
                eff = r["efficiency"]
                msg = (f"{r['tokens_per_s']:,.0f} tok/s, {r['tokens_per_s_per_gpu']:,.0f} per GPU, "
                       f"efficiency {'-' if eff is None else f'{100 * eff:.1f}%'}")  # fmt: skip
            else:
                msg = f"{r['status']}: {r.get('error', '')}"
            print(f"{mode} K={k}: {msg}", flush=True)
            save()
    kmax = max(ks)
    if args.loss_check and kmax > 1:
        b = args.per_gpu_batch
        ref = launch(args, data, 1, args.modes[0], work / "loss-check-k1", b * kmax, b)
        doc["loss_check_run"] = ref
        if ref["status"] == "ok":
            diffs = {}
            for r in doc["runs"]:
                if r["k"] == kmax and r["status"] == "ok":
                    diffs[r["mode"]] = max(abs(a - c) for a, c in zip(ref["losses"], r["losses"]))
            doc["loss_check"] = {"k": kmax, "global_batch": b * kmax, "max_abs_diff": diffs,
                                 "losses_k1": ref["losses"]}  # fmt: skip
            print(f"loss check (global batch {b * kmax}, K=1 accumulating vs K={kmax}): "
                  + ", ".join(f"{m} {v:.2e}" for m, v in diffs.items()), flush=True)  # fmt: skip
        save()
    save()
    print(f"wrote {args.out.with_suffix('.json')} and .md")
    return 0 if all(r["status"] == "ok" for r in doc["runs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
