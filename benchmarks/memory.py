"""Memory benchmark (issue 5): peak memory and time of one full training step against length.

One *training step* is exactly the training loop's (``train.py``): forward under autocast,
float32 cross-entropy, backward, gradient clipping at 1.0, AdamW step (fp32 master weights and
optimizer state), ``zero_grad``. Batch 1: one sequence of N tokens.

Two modes, one JSON file each (rows are appended and the file rewritten after every measurement,
so a run cut short keeps what it measured):

* ``--presets audio-1m audio-65k ...``: the presets as configured (strided, bf16, recompute on),
  then, with ``--no-recompute-too``, the same without recomputation (expected not to fit at these
  lengths: reported as ``oom``).
* ``--sweep``: a fixed small model (4 layers, 4 heads, d 256) at N = 4096 ... 262,144: strided
  (l = sqrt(N)) with and without recomputation; dense attention through the same Triton kernels
  (flash-style: O(N) memory, O(N^2) time; N <= ``--dense-max``); and dense with the N x N
  score matrix materialised (``reference`` backend: the memory a plain implementation needs;
  N <= ``--materialized-max``).

On CUDA, peak memory is ``torch.cuda.max_memory_allocated`` over the timed steps (the steady
state: weights, gradients, AdamW moments and activations) and the reserved peak beside it; the
first step (compilation, optimizer-state creation) is reported separately. Times are medians of
``--steps`` steps after one warm-up step, synchronised. On the CPU (for testing the script) peak
memory is the growth of the resident set (``ru_maxrss``), the torch backend replaces Triton and
sizes should be tiny.

    PYTHONPATH=src python benchmarks/memory.py --presets audio-1m audio-65k --json out.json
    PYTHONPATH=src python benchmarks/memory.py --sweep --json sweep.json
    PYTHONPATH=src python benchmarks/memory.py --plot out.json sweep.json --png memory.png
    python benchmarks/memory.py --device cpu --sweep --sizes 256 512 --small 2,2,32   # smoke test
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
GIB = 2**30


# --------------------------------------------------------------------------------------------
# Environment
# --------------------------------------------------------------------------------------------


def env_info(device: str) -> dict:
    import torch

    commit = os.environ.get("GIT_COMMIT", "")
    if not commit:
        try:
            commit = subprocess.run(
                ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
            ).stdout.strip()
        except OSError:
            commit = ""
    info = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if device == "cuda":
        info["device"] = torch.cuda.get_device_name()
        info["cuda"] = torch.version.cuda
        info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / GIB, 1)
        try:
            import triton

            info["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        info["device"] = f"CPU ({platform.machine()}, {os.cpu_count()} cores)"
        info["threads"] = torch.get_num_threads()
    return info


# --------------------------------------------------------------------------------------------
# One training step, as train.py runs it
# --------------------------------------------------------------------------------------------


def build(model_cfg, *, device: str, recompute: bool, lr: float = 1e-4):
    """The model on ``device`` (initialised there), recomputation applied, and AdamW as
    ``train.configure_optimizer`` builds it."""
    import torch

    from sparse_transformer.config import TrainConfig
    from sparse_transformer.model import SparseTransformer
    from sparse_transformer.precision import apply_recompute
    from sparse_transformer.train import configure_optimizer

    torch.manual_seed(0)
    with torch.device(device):
        model = SparseTransformer(model_cfg)
    if recompute:
        apply_recompute(model)
    model.train()
    opt = configure_optimizer(model, TrainConfig(lr=lr))
    return model, opt


def train_step(model, opt, x, y, precision: str, grad_clip: float = 1.0) -> float:
    """The body of train.py's loop for one micro-batch (bf16/fp32: no loss scaler)."""
    import torch
    import torch.nn.functional as F

    from sparse_transformer.precision import autocast

    with autocast(precision, x.device):
        logits = model(x)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1))
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.detach()


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(
    model_cfg, *, device: str, precision: str, recompute: bool, steps: int, batch: int = 1
) -> dict:
    """Peak memory and median time of one training step of ``model_cfg`` at its full ctx."""
    import resource

    import torch

    n = model_cfg.ctx
    row: dict = {"ctx": n, "batch": batch, "precision": precision, "recompute": recompute}
    cuda = device == "cuda"
    model = opt = None
    try:
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        base_rss = _rss()
        model, opt = build(model_cfg, device=device, recompute=recompute)
        row["params"] = sum(p.numel() for p in model.parameters())
        g = torch.Generator().manual_seed(0)
        data = torch.randint(0, model_cfg.vocab_size, (batch, n + 1), generator=g).to(device)
        x, y = data[:, :-1], data[:, 1:]
        if cuda:
            torch.cuda.synchronize()
            row["static_gib"] = torch.cuda.memory_allocated() / GIB
        t0 = time.perf_counter()
        loss = train_step(model, opt, x, y, precision)
        if cuda:
            torch.cuda.synchronize()
            row["first_step_peak_gib"] = torch.cuda.max_memory_allocated() / GIB
            torch.cuda.reset_peak_memory_stats()
        row["first_step_s"] = time.perf_counter() - t0
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            loss = train_step(model, opt, x, y, precision)
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        row["loss"] = float(loss)
        row["step_ms"] = 1000 * statistics.median(times)
        row["step_ms_all"] = [round(1000 * t, 2) for t in times]
        row["tokens_per_s"] = batch * n / statistics.median(times)
        if cuda:
            row["peak_gib"] = torch.cuda.max_memory_allocated() / GIB
            row["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / GIB
        else:
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            row["peak_gib"] = max(0, peak - base_rss) / GIB  # resident-set growth (approximate)
        row["status"] = "ok"
    except torch.OutOfMemoryError as e:
        row["status"] = "oom"
        row["error"] = str(e).splitlines()[0][:300]
    except Exception as e:  # noqa: BLE001 - one failure must not lose the other rows
        row["status"] = "error"
        row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
    finally:
        del model, opt
        if cuda:
            torch.cuda.empty_cache()
    return row


# --------------------------------------------------------------------------------------------
# The two modes
# --------------------------------------------------------------------------------------------


def _write(path: Path | None, doc: dict) -> None:
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _print_row(r: dict) -> None:
    if r["status"] == "ok":
        print(
            f"{r['name']:<24} N={r['ctx']:>9,} rec={int(r['recompute'])} "
            f"peak {r['peak_gib']:7.2f} GiB  step {r['step_ms']:9.1f} ms  "
            f"{r['tokens_per_s'] / 1e3:9.1f}k tok/s",
            flush=True,
        )
    else:
        print(f"{r['name']:<24} N={r['ctx']:>9,} rec={int(r['recompute'])} {r['status']}: "
              f"{r.get('error', '')}", flush=True)  # fmt: skip


def run_presets(args, doc: dict) -> None:
    """Every preset as configured first (the numbers that matter), then the variants without
    recomputation (which may run out of memory)."""
    from dataclasses import replace

    from sparse_transformer.config import get_preset

    jobs = [(name, get_preset(name).train.recompute) for name in args.presets]
    if args.no_recompute_too:
        jobs += [(name, False) for name, rec in jobs if rec]
    for name, rec in jobs:
        cfg = get_preset(name)
        model_cfg = replace(cfg.model, backend=args.backend)
        r = measure(model_cfg, device=args.device, precision=cfg.train.precision,
                    recompute=rec, steps=args.steps)  # fmt: skip
        r.update(name=name, kind="preset", pattern=cfg.model.pattern, stride=cfg.model.stride,
                 layers=cfg.model.n_layer, heads=cfg.model.n_head, d=cfg.model.d_model)  # fmt: skip
        doc["rows"].append(r)
        _print_row(r)
        _write(args.json, doc)


def run_sweep(args, doc: dict) -> None:
    from sparse_transformer.model import ModelConfig

    layers, heads, d = (int(v) for v in args.small.split(","))
    doc["small_model"] = {"layers": layers, "heads": heads, "d": d}
    for n in args.sizes:
        l = 2 ** round(math.log2(math.sqrt(n)))
        cases = [
            (
                "strided",
                {"pattern": "strided", "stride": l, "mode": "multihead"},
                args.backend,
                True,
            ),
            (
                "strided",
                {"pattern": "strided", "stride": l, "mode": "multihead"},
                args.backend,
                False,
            ),
        ]
        if n <= args.dense_max:
            cases.append(("dense", {"pattern": "dense"}, args.backend, False))
        if n <= args.materialized_max:
            cases.append(("dense-materialized", {"pattern": "dense"}, "reference", False))
        for label, pat, backend, rec in cases:
            mc = ModelConfig(ctx=n, n_layer=layers, n_head=heads, d_model=d, backend=backend, **pat)
            r = measure(mc, device=args.device, precision=args.precision, recompute=rec,
                        steps=args.steps)  # fmt: skip
            r.update(name=f"{label}{' +rec' if rec else ''}", kind=label, backend=backend,
                     stride=mc.stride if label == "strided" else None)  # fmt: skip
            doc["rows"].append(r)
            _print_row(r)
            _write(args.json, doc)


# --------------------------------------------------------------------------------------------
# Plot
# --------------------------------------------------------------------------------------------


def plot(paths: list[Path], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = []
    device = ""
    for p in paths:
        d = json.loads(Path(p).read_text())
        device = device or d.get("env", {}).get("device", "")
        rows += [r for r in d["rows"] if r["status"] == "ok"]
    fig, (ax_m, ax_t) = plt.subplots(1, 2, figsize=(12, 4.8))
    series: dict[str, list] = {}
    for r in rows:
        key = r["name"] if r["kind"] != "preset" else f"preset{' +rec' if r['recompute'] else ''}"
        series.setdefault(key, []).append(r)
    labels = {
        "preset +rec": "audio presets (recompute)",
        "preset": "audio presets, no recompute",
        "dense": "dense, flash-style Triton (O(N) memory)",
        "dense-materialized": "dense, N x N scores stored",
        "strided": "strided l=sqrt(N)",
        "strided +rec": "strided l=sqrt(N), recompute",
    }
    for key, rs in sorted(series.items()):
        rs.sort(key=lambda r: r["ctx"])
        xs = [r["ctx"] for r in rs]
        style = "o-" if key != "preset +rec" and key != "preset" else "*"
        kw = {"label": labels.get(key, key), "markersize": 9 if "*" in style else 5}
        ax_m.plot(xs, [r["peak_gib"] for r in rs], style, **kw)
        ax_t.plot(xs, [r["step_ms"] for r in rs], style, **kw)
        if key.startswith("preset"):
            for r in rs:
                for ax, v in ((ax_m, r["peak_gib"]), (ax_t, r["step_ms"])):
                    ax.annotate(r["name"], (r["ctx"], v), textcoords="offset points",
                                xytext=(4, 4), fontsize=8)  # fmt: skip
    ax_m.axhline(16, color="grey", ls="--", lw=0.8)
    ax_m.text(xs[0] if rows else 1, 16, " 16 GB (V100)", va="bottom", fontsize=8, color="grey")
    for ax, label in ((ax_m, "peak memory of one training step (GiB)"), (ax_t, "step time (ms)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length N (tokens, batch 1)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.legend(fontsize=8)
    fig.suptitle(
        f"One training step (fwd, bwd, AdamW), bf16, batch 1 — {device}; small model 4 L, 4 H, d 256",
        fontsize=10,
    )
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=110)
    print(f"wrote {png}")


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--presets", nargs="*", default=[], help="preset names to measure")
    ap.add_argument(
        "--no-recompute-too", action="store_true", help="presets also without recompute"
    )
    ap.add_argument("--sweep", action="store_true", help="the small-model sweep over --sizes")
    ap.add_argument("--sizes", nargs="*", type=int, default=[4096, 16384, 65536, 262144])
    ap.add_argument("--small", default="4,4,256", help="sweep model: layers,heads,d")
    ap.add_argument("--dense-max", type=int, default=65536)
    ap.add_argument("--materialized-max", type=int, default=16384)
    ap.add_argument("--precision", default="bf16", choices=["bf16", "fp32", "fp16"])
    ap.add_argument(
        "--backend", default=None, help="attention backend (default: triton on cuda, torch on cpu)"
    )
    ap.add_argument("--steps", type=int, default=3, help="timed steps after the warm-up step")
    ap.add_argument("--memory-cap-gb", type=float, default=None,
                    help="CUDA: cap this process's GPU memory at this many GB (1e9 bytes)")  # fmt: skip
    ap.add_argument("--json", type=Path, default=None, help="write results here")
    ap.add_argument("--plot", nargs="*", type=Path, default=None, help="JSON files to plot")
    ap.add_argument("--png", type=Path, default=RESULTS / "memory.png")
    args = ap.parse_args(argv)
    if args.plot:
        plot(args.plot, args.png)
        return 0
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        print("CUDA is not available: use --device cpu", file=sys.stderr)
        return 2
    args.backend = args.backend or ("triton" if args.device == "cuda" else "torch")
    cap = None
    if args.memory_cap_gb and args.device == "cuda":
        # A hard limit like a smaller card's: the caching allocator frees its cached blocks and
        # retries before it would exceed the cap, and raises out-of-memory past it.
        total = torch.cuda.get_device_properties(0).total_memory
        cap = args.memory_cap_gb * 1e9
        torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total))
    doc = {"env": env_info(args.device), "steps": args.steps, "rows": []}
    if cap is not None:
        doc["memory_cap_bytes"] = cap
    if args.presets:
        run_presets(args, doc)
    if args.sweep:
        doc["precision"] = args.precision
        run_sweep(args, doc)
    _write(args.json, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
