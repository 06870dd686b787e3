"""SASS instruction counts of the Triton kernels' loops, compiled for sm_90 on a machine without a GPU.

    pip install --target /some/dir triton==3.6.0      # the device machine's Triton, for its ptxas
    PYTHONPATH=/some/dir:src python benchmarks/lab/sass_counts.py [--maxnreg 168] [--inline-delta]
        [--block 128 --warps 8 --qsub 64 --ksub 64] [--only bwd]   (--maxnreg 0: no cap)

Compiles ``fwd_kernel`` and ``bwd_kernel`` for sm_90 (64-row tiles, head dim 64, bf16, 4 warps,
``--stages`` software-pipeline stages (default 2), the delta pre-pass unless ``--inline-delta``,
the first round's kernels unless ``--fold``) with the argument specializations a real launch gets (pointers and ints
divisible by 16), disassembles the cubin with the ``cuobjdump`` bundled with Triton, and prints, for
each loop (a backward branch), its instruction count per thread and iteration and its most common
opcodes, plus the registers and stack of the whole kernel. In the forward the loops come in kernel
order: contiguous fast, fast, causal, mask tile, gathered visits; the backward lists the dK/dV loops,
then the dQ loops.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sparse_transformer.kernels.triton import kernels as K

BF16 = {"Q", "K", "V", "O", "DO", "DQ", "DK", "DV_"}  # DV_: the dV pointer
F32 = {"LSE", "DELTA"}
INT_TABLES = {"qdesc", "qpos", "kdesc", "kpos", "fvis", "fptr", "fsplit", "bvis", "bptr", "bsplit", "items"}
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def compile_sm90(fn, consts: dict, warps: int, stages: int, maxnreg: int | None):
    sig = {}
    for p in fn.params:
        name = p.name
        sig[name] = ("constexpr" if name in consts else "*fp32" if name in F32 else "*bf16" if name in BF16
                     else "*i8" if name in ("masks", "qadd", "kadd") else "*i32" if name in INT_TABLES
                     else "fp32" if name in ("qk_scale", "scale") else "i32")
    attrs = {(i,): [["tt.divisibility", 16]] for i, ty in enumerate(sig.values()) if ty not in ("constexpr", "fp32")}
    opts = {"num_warps": warps, "num_stages": stages, **({"maxnreg": maxnreg} if maxnreg else {})}
    return triton.compile(ASTSource(fn, sig, consts, attrs), target=GPUTarget("cuda", 90, 32), options=opts)


def report(name: str, kernel) -> None:
    with tempfile.NamedTemporaryFile(suffix=".cubin", delete=False) as f:
        f.write(kernel.asm["cubin"])
        path = f.name
    try:
        res = subprocess.run([str(BIN / "cuobjdump"), "-res-usage", path], capture_output=True, text=True,
                             check=True).stdout
        sass = subprocess.run([str(BIN / "cuobjdump"), "-sass", path], capture_output=True, text=True,
                              check=True).stdout
    finally:
        os.unlink(path)
    m = re.search(r"REG:(\d+) STACK:(\d+)", res)
    ins = [(int(a, 16), t) for a, t in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?);", sass)]
    where = {a: i for i, (a, _) in enumerate(ins)}
    print(f"{name}: {len(ins)} instructions, registers {m[1] if m else '?'}, stack {m[2] if m else '?'} bytes")
    for i, (a, text) in enumerate(ins):
        target = re.search(r"BRA.*?0x([0-9a-f]+)", text)
        if not target or int(target[1], 16) > a or int(target[1], 16) not in where:
            continue
        body = ins[where[int(target[1], 16)]: i + 1]
        if len(body) < 8:
            continue
        ops = collections.Counter((t.split()[1] if t.startswith("@") else t.split()[0]) for _, t in body)
        hgmma = sum(v for k, v in ops.items() if k.startswith("HGMMA"))
        print(f"  loop: {len(body):5d} instructions, {hgmma} HGMMA; {', '.join(f'{k} {v}' for k, v in ops.most_common(6))}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--maxnreg", type=int, default=168)
    ap.add_argument("--inline-delta", action="store_true")
    ap.add_argument("--stages", type=int, default=2)
    ap.add_argument("--qsub", type=int, default=32, help="query rows per dK/dV step (the tile: whole tiles)")
    ap.add_argument("--ksub", type=int, default=None, help="key rows per dQ step (default: whole tiles)")
    ap.add_argument("--block", type=int, default=64, help="tile rows")
    ap.add_argument("--warps", type=int, default=4)
    ap.add_argument("--only", choices=("fwd", "bwd"), default=None)
    ap.add_argument("--fold", action="store_true", help="the kernels of rounds after the first (FOLD)")
    args = ap.parse_args()
    if args.maxnreg == 0:
        args.maxnreg = None
    base = {"BLOCK": args.block, "D": 64, "DV": 64, "BD": 64, "BDV": 64, "FOLD": args.fold}
    if args.only != "bwd":
        report("fwd_kernel", compile_sm90(K.fwd_kernel, base, args.warps, args.stages, args.maxnreg))
    if args.only != "fwd":
        consts = {**base, "INLINE_DELTA": args.inline_delta, "QSUB": args.qsub, "KSUB": args.ksub or args.block}
        report("bwd_kernel", compile_sm90(K.bwd_kernel, consts, args.warps, args.stages, args.maxnreg))


if __name__ == "__main__":
    main()
