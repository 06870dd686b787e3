"""Attention benchmark: our backends against dense causal SDPA.

CPU mode (default): ms and peak memory of the ``reference`` and ``torch`` backends and of
``torch.nn.functional.scaled_dot_product_attention(is_causal=True)``, forward and forward+backward,
at N = 1024 ... 16384, B=1, H=4, D=64, float32, for two cases:

* factorized strided in multi-head mode: heads (local(l), strided(l), local(l), strided(l)), l ~ sqrt(N);
* fixed merged: every head union(block(128), summary(128, 32)).

Each measurement runs in a fresh subprocess so that its peak resident memory (minus the memory
held before the call) is the call's own. Prints a table, writes JSON and a short .md under
benchmarks/results/.

    python benchmarks/attention.py                    # the whole CPU table (a few minutes)
    python benchmarks/attention.py --sizes 1024 4096  # a subset
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
# Skip the O(N^2) reference where its score matrices would not fit comfortably in memory.
REFERENCE_MAX_N = 8192


def case_patterns(case: str, n: int):
    from sparse_transformer import patterns as P

    if case == "strided":
        l = 2 ** round(math.log2(math.sqrt(n)))
        return [P.local(l), P.strided(l)] * 2, f"4 heads local/strided l={l}"
    if case == "fixed":
        return P.union(*P.factorized("fixed", 128, 32)), "merged block(128)+summary(128,32)"
    raise ValueError(case)


def pairs(pattern, n: int, heads: int) -> int:
    """Attended (query, key) pairs over all heads, counted exactly from the block plans."""
    pats = pattern if isinstance(pattern, list) else [pattern] * heads
    return sum(p.plan(n, 128).pairs() for p in pats)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure_one(method: str, case: str, n: int, heads: int, dim: int, backward: bool, repeats: int) -> dict:
    """Runs inside the child process: one warm-up call (its peak memory), then `repeats` timed."""
    import resource

    import torch
    import torch.nn.functional as F

    from sparse_transformer import sparse_attention

    torch.manual_seed(0)
    q, k, v = (torch.randn(1, heads, n, dim, requires_grad=backward) for _ in range(3))
    pattern, _ = case_patterns(case, n)
    if method != "sdpa":  # build (and cache) the plans outside the timed region
        with torch.no_grad():
            sparse_attention(q[:, :, :8], k[:, :, :8], v[:, :, :8], pattern, backend="torch")

    def call():
        if method == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            out = sparse_attention(q, k, v, pattern, backend=method)
        if backward:
            out.backward(torch.ones_like(out))
        return out

    base = _rss_bytes()
    call()  # warm-up; its peak resident memory is the call's memory
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1e3)
    return {"ms": statistics.median(times), "ms_all": times, "peak_mb": max(peak, 0) / 2**20}


def run_child(args: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--child", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        return {"error": res.stderr.strip().splitlines()[-1] if res.stderr.strip() else f"exit {res.returncode}"}
    return json.loads(res.stdout.strip().splitlines()[-1])


def env_info() -> dict:
    import torch

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "device": f"CPU: {cpu}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "commit": commit,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def run_cpu(sizes: list[int], heads: int, dim: int, repeats: int) -> dict:
    rows = []
    for case in ("strided", "fixed"):
        for n in sizes:
            pattern, desc = case_patterns(case, n)
            npairs = pairs(pattern, n, heads)
            for method in ("sdpa", "torch", "reference"):
                for backward in (False, True):
                    row = {"case": case, "pattern": desc, "n": n, "method": method,
                           "pass": "fwd+bwd" if backward else "fwd", "pairs": npairs}
                    if method == "reference" and n > REFERENCE_MAX_N:
                        row["skipped"] = f"O(N^2) reference skipped above N={REFERENCE_MAX_N} (memory)"
                    else:
                        args = [method, case, str(n), str(heads), str(dim), str(int(backward)), str(repeats)]
                        row.update(run_child(args))
                    rows.append(row)
                    _print_row(row)
    return {"env": env_info(), "config": {"B": 1, "H": heads, "D": dim, "dtype": "float32"}, "rows": rows}


def _print_row(row: dict) -> None:
    if "ms" in row:
        print(f"{row['case']:8s} N={row['n']:6d} {row['method']:9s} {row['pass']:7s} "
              f"{row['ms']:10.1f} ms  peak {row['peak_mb']:8.1f} MB", flush=True)
    else:
        print(f"{row['case']:8s} N={row['n']:6d} {row['method']:9s} {row['pass']:7s} "
              f"{row.get('skipped') or row.get('error')}", flush=True)


def summarize(result: dict) -> str:
    """A markdown table with the torch-vs-SDPA speed-up per case and size."""
    rows = result["rows"]
    env = result["env"]
    lines = [
        f"# CPU attention benchmark ({env['date']})",
        "",
        (f"{env['device']}; torch {env['torch']} ({env['threads']} threads); commit {env['commit']}; "
        f"B=1, H={result['config']['H']}, D={result['config']['D']}, float32."),
        "Command: `python benchmarks/attention.py`",
        "",
        "| case | N | pass | SDPA ms | torch ms | reference ms | torch speed-up vs SDPA | torch peak MB | SDPA peak MB | one N×N fp32 matrix MB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    key = {(r["case"], r["n"], r["method"], r["pass"]): r for r in rows}
    for case in ("strided", "fixed"):
        for n in sorted({r["n"] for r in rows}):
            for ps in ("fwd", "fwd+bwd"):
                s, t, f = (key.get((case, n, m, ps), {}) for m in ("sdpa", "torch", "reference"))
                if "ms" not in s or "ms" not in t:
                    continue
                ref = f"{f['ms']:.1f}" if "ms" in f else "–"
                lines.append(
                    f"| {case} | {n} | {ps} | {s['ms']:.1f} | {t['ms']:.1f} | {ref} | {s['ms'] / t['ms']:.1f}x | "
                    f"{t['peak_mb']:.0f} | {s['peak_mb']:.0f} | {n * n * 4 / 2**20:.0f} |"
                )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[1024, 2048, 4096, 8192, 16384])
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path, default=None, help="JSON path (default: benchmarks/results/...)")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        method, case, n, heads, dim, backward, repeats = args.child
        print(json.dumps(measure_one(method, case, int(n), int(heads), int(dim), bool(int(backward)), int(repeats))))
        return 0
    if args.device == "cuda":
        print("the CUDA mode is not in this build of the benchmark", file=sys.stderr)
        return 2
    result = run_cpu(args.sizes, args.heads, args.dim, args.repeats)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = dt.date.today().isoformat()
    out = args.out or RESULTS / f"attention-cpu-{stamp}.json"
    out.write_text(json.dumps(result, indent=2))
    md = summarize(result)
    out.with_suffix(".md").write_text(md)
    print()
    print(md)
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
