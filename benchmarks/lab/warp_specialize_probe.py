"""Does Triton's warp specialization pay for attention loops like ours on Hopper? A probe.

    python benchmarks/lab/warp_specialize_probe.py [--n 16384]     # GPU: check + time
    pip install --target DIR triton==3.6.0; PYTHONPATH=DIR python benchmarks/lab/warp_specialize_probe.py
                                                                              # no GPU: compile only

Our kernels load K/V rows through pointer tensors, and Triton 3.6 does not partition such loops
into producer and consumer warps on sm_90 even with ``warp_specialize=True``. This probe compiles
two toy forward kernels whose key tiles come through tensor descriptors (TMA) instead, 64-row
tiles, head dim 64, bf16, 4 warps, each with and without ``warp_specialize=True`` on the key loop:

* ``band``: query tile t against key tiles 0..t, all pairs (contiguous tiles, as the fixed
  pattern's own-block and the local band's full tiles);
* ``summary``: query tile t against the gathered summary columns (the last C rows of each L-row
  block, L=128, C=32) of key tiles 0..t//4, each key tile one 3-D TMA box of BLOCK//C runs.

It prints whether the compiled TTGIR holds a ``ttg.warp_specialize`` op and, on a GPU, each
variant's largest error against a float32 reference and its median time (B=1, H=8). JSON to $OUT
(or --out) when run on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
import triton
import triton.language as tl

L, C = 128, 32  # the fixed pattern's block and summary width in the target case


@triton.jit
def probe_kernel(Q, K, V, O, N, qk_scale, BLOCK: tl.constexpr, D: tl.constexpr, SUMMARY: tl.constexpr,
                 LB: tl.constexpr, CB: tl.constexpr, WS: tl.constexpr):
    t = tl.program_id(0)
    h = tl.program_id(1).to(tl.int64)
    base = h * N * D
    qd = tl.make_tensor_descriptor(Q + base, shape=[N, D], strides=[D, 1], block_shape=[BLOCK, D])
    od = tl.make_tensor_descriptor(O + base, shape=[N, D], strides=[D, 1], block_shape=[BLOCK, D])
    if SUMMARY:  # (blocks, rows in block, D): one box = the last CB rows of BLOCK // CB blocks
        kd = tl.make_tensor_descriptor(K + base, shape=[N // LB, LB, D], strides=[LB * D, D, 1],
                                       block_shape=[BLOCK // CB, CB, D])
        vd = tl.make_tensor_descriptor(V + base, shape=[N // LB, LB, D], strides=[LB * D, D, 1],
                                       block_shape=[BLOCK // CB, CB, D])
        n_tiles = t // ((BLOCK // CB) * LB // BLOCK) + 1
    else:
        kd = tl.make_tensor_descriptor(K + base, shape=[N, D], strides=[D, 1], block_shape=[BLOCK, D])
        vd = tl.make_tensor_descriptor(V + base, shape=[N, D], strides=[D, 1], block_shape=[BLOCK, D])
        n_tiles = t + 1
    q = qd.load([t * BLOCK, 0])
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, D], tl.float32)
    for j in tl.range(0, n_tiles, warp_specialize=WS):
        if SUMMARY:
            k = tl.reshape(kd.load([j * (BLOCK // CB), LB - CB, 0]), [BLOCK, D])
            v = tl.reshape(vd.load([j * (BLOCK // CB), LB - CB, 0]), [BLOCK, D])
        else:
            k = kd.load([j * BLOCK, 0])
            v = vd.load([j * BLOCK, 0])
        s = tl.dot(q, tl.trans(k))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s * qk_scale - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    od.store([t * BLOCK, 0], (acc / l_i[:, None]).to(O.dtype.element_ty))


BLOCK, D, WARPS, STAGES = 64, 64, 4, 2


def allowed(n: int, summary: bool, device) -> torch.Tensor:
    """(n, n) bool: the pairs the toy kernel covers."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    if not summary:
        return j // BLOCK <= i // BLOCK
    per_tile = (BLOCK // C) * L // BLOCK  # query tiles per summary key tile
    return (j % L >= L - C) & ((j // L) // (BLOCK // C) <= (i // BLOCK) // per_tile)


def pairs(n: int, summary: bool) -> int:
    return int(allowed(n, summary, "cpu").sum())


def compile_only() -> list[dict]:
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    rows = []
    sig = {"Q": "*bf16", "K": "*bf16", "V": "*bf16", "O": "*bf16", "N": "i32", "qk_scale": "fp32",
           "BLOCK": "constexpr", "D": "constexpr", "SUMMARY": "constexpr", "LB": "constexpr", "CB": "constexpr",
           "WS": "constexpr"}
    for summary in (False, True):
        for ws in (False, True):
            consts = {"BLOCK": BLOCK, "D": D, "SUMMARY": summary, "LB": L, "CB": C, "WS": ws}
            src = ASTSource(probe_kernel, sig, consts, {(i,): [["tt.divisibility", 16]] for i in range(5)})
            k = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                               options={"num_warps": WARPS, "num_stages": STAGES})
            rows.append({"kernel": "summary" if summary else "band", "warp_specialize": ws,
                         "partitioned": "ttg.warp_specialize" in k.asm["ttgir"]})
    return rows


def on_gpu(n: int) -> list[dict]:
    triton.set_allocator(lambda size, align, stream: torch.empty(size, dtype=torch.int8, device="cuda"))
    g = torch.Generator(device="cuda").manual_seed(0)
    h = 8
    q, k, v = (torch.randn(h, n, D, device="cuda", dtype=torch.bfloat16, generator=g) for _ in range(3))
    rows = []
    for summary in (False, True):
        mask = allowed(n, summary, "cuda")
        ref = torch.nn.functional.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask)
        flops = 4 * pairs(n, summary) * D * h
        for ws in (False, True):
            o = torch.empty_like(q)

            def run(o=o, ws=ws, summary=summary):
                probe_kernel[(n // BLOCK, h)](q, k, v, o, n, 1.4426950408889634 / D**0.5, BLOCK=BLOCK, D=D,
                                              SUMMARY=summary, LB=L, CB=C, WS=ws, num_warps=WARPS,
                                              num_stages=STAGES)

            run()
            err = float((o.float() - ref).abs().max())
            ms = float(triton.testing.do_bench(run, return_mode="median"))
            rows.append({"kernel": "summary" if summary else "band", "warp_specialize": ws, "n": n, "heads": h,
                         "max_err": err, "ms": ms, "tflops": flops / ms / 1e9})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16384, help="sequence length (the dense reference needs n <= 16384)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    if args.n > 16384 or args.n % (L * BLOCK // C):
        raise SystemExit(f"--n must be a multiple of {L * BLOCK // C} and at most 16384 (the float32 reference "
                         f"holds an n x n mask), got {args.n}")
    for r in compile_only():
        print(f"sm_90 compile: {r['kernel']:8s} warp_specialize={r['warp_specialize']!s:5s} "
              f"-> partitioned: {r['partitioned']}")
    if not torch.cuda.is_available():
        return
    rows = on_gpu(args.n)
    for r in rows:
        print(f"{r['kernel']:8s} ws={r['warp_specialize']!s:5s} n={r['n']} max err {r['max_err']:.2e}  "
              f"{r['ms']:.3f} ms  {r['tflops']:.0f} TFLOP/s")
    out = Path(args.out or os.environ.get("OUT", ".")) / "warp-specialize-probe.json"
    out.write_text(json.dumps({"env": {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                                       "triton": triton.__version__,
                                       "command": "python benchmarks/lab/warp_specialize_probe.py "
                                       + " ".join(sys.argv[1:])}, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
