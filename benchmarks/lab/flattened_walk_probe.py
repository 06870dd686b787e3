"""Probe: the short-walk forward as ONE flattened loop over (work item, visit) pairs (issue 19).

    python benchmarks/lab/flattened_walk_probe.py --dry                         # CPU: correctness only
    PYTHONPATH=src python benchmarks/lab/flattened_walk_probe.py               # GPU: check + timings

The library's forward runs one program per (head, query tile), and a short walk (local and strided
heads: 1-5 key tiles) spends much of each program before its first product (work item -> tile
descriptor -> rows -> Q, K, V) and after its last (the stores). Measured: 176 (forward) and 232
(backward) TFLOP/s of computed products on the strided 64K case against 417 / 385-431 on the fixed
pattern's long walks (docs/kernels.md). Here a fixed number of programs each walks a contiguous
range of (item, visit) pairs in one loop: the loads of the next pair (its key tile's rows, K, V)
do not depend on the current pair's products, so Triton's pipeliner may issue them while the
current pair computes; a program's query tile is loaded when its item starts and its output stored
when it ends (branches inside the loop). The price: every visit takes the general path (row checks,
the mask by code), where the library compiles one loop per visit kind.

Single-round plans only (the multi-head strided and local cases; no ``FOLD``). Not used by the
library: if it measures faster, the forward and then the backward get it; if not, its figures go
to docs/kernels.md and this file goes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

if "--dry" in sys.argv:  # the interpreter must be on before the kernels are decorated
    os.environ["TRITON_INTERPRET"] = "1"

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))

import triton
import triton.language as tl
from gpu_check import case_heads  # the target cases' per-head patterns

from sparse_transformer import patterns as P
from sparse_transformer.kernels.triton import kernels as K
from sparse_transformer.kernels.triton.attention import LOG2E, _pow2, forward_tables
from sparse_transformer.kernels.triton.tables import kernel_tables


@triton.jit
def _visit(q, qi, k_base, v_base, stride_kn, stride_vn, fvis, kpos, masks, e, m_i, l_i, acc, qk_scale, offs_d,
           offs_dv, BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
           KIND: tl.constexpr):
    """One visit of kind KIND: the library's loop body (``_fwd_walk``) for a single visit."""
    kj = K._visited_rows(fvis, kpos, e, 0, BLOCK, BLOCK, KIND)
    k = K._load_rows(k_base, kj, stride_kn, offs_d, D, BD, KIND == K.GATHERED)
    v = K._load_rows(v_base, kj, stride_vn, offs_dv, DV, BDV, KIND == K.GATHERED)
    ok = K._visit_mask(fvis, masks, e, qi, kj, 0, BLOCK, BLOCK, KIND, False)
    return K._softmax_step(q, k, v, m_i, l_i, acc, ok, qk_scale, KIND >= K.CAUSAL_TILE)


@triton.jit
def flat_fwd_kernel(
    Q, Kt, V, O, LSE,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, H, N, qk_scale,
    qdesc, qpos, kpos, fvis, fptr, fsplit, masks, items, pair_item, pair_vis, prog_ptr,
    BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    KIND_BRANCH: tl.constexpr, PREDICATED: tl.constexpr,
):
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    lo = tl.load(prog_ptr + pid)
    hi = tl.load(prog_ptr + pid + 1)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    q = tl.zeros([BLOCK, BD], Q.dtype.element_ty)
    qi = tl.full([BLOCK], -1, tl.int32)
    h = b * 0
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BDV], tl.float32)
    for j in range(lo, hi):
        it = tl.load(pair_item + j)
        e = tl.load(pair_vis + j)
        prev = tl.load(pair_item + j - 1, mask=j > lo, other=-1)
        if PREDICATED:  # no branch: the item-start work masked, so the pipeliner may take the loop
            first = prev != it
            h = tl.load(items + 2 * it).to(tl.int64)
            qi_new = K._tile_rows(qdesc, qpos, tl.load(items + 2 * it + 1), BLOCK)
            q_ptrs = Q + b * stride_qb + h * stride_qh + qi_new.to(tl.int64)[:, None] * stride_qn + offs_d[None, :]
            take = (qi_new >= 0) & ((qi_new * 0 + first.to(tl.int32)) != 0)  # rows to load: only at an item's start
            q_new = tl.load(q_ptrs, mask=take[:, None] & (offs_d < D)[None, :], other=0.0)
            qi = tl.where(first, qi_new, qi)
            q = tl.where(first, q_new, q)
            m_i = tl.where(first, float("-inf"), m_i)
            l_i = tl.where(first, 0.0, l_i)
            acc = tl.where(first, 0.0, acc)
        elif prev != it:  # a new work item: its query tile, a fresh softmax state
            h = tl.load(items + 2 * it).to(tl.int64)
            t = tl.load(items + 2 * it + 1)
            qi = K._tile_rows(qdesc, qpos, t, BLOCK)
            q = K._load_rows(Q + b * stride_qb + h * stride_qh, qi, stride_qn, offs_d, D, BD, True)
            m_i = tl.full([BLOCK], float("-inf"), tl.float32)
            l_i = tl.zeros([BLOCK], tl.float32)
            acc = tl.zeros([BLOCK, BDV], tl.float32)
        k_base = Kt + b * stride_kb + h * stride_kh
        v_base = V + b * stride_vb + h * stride_vh
        if KIND_BRANCH:  # the visit's kind from its place in the tile's list: one specialised body each
            t = tl.load(items + 2 * it + 1)
            rel = e - tl.load(fptr + t)
            sp = fsplit + 4 * t
            kind = ((rel >= tl.load(sp)).to(tl.int32) + (rel >= tl.load(sp + 1)).to(tl.int32)
                    + (rel >= tl.load(sp + 2)).to(tl.int32) + (rel >= tl.load(sp + 3)).to(tl.int32))
            if kind == 0:
                m_i, l_i, acc = _visit(q, qi, k_base, v_base, stride_kn, stride_vn, fvis, kpos, masks, e, m_i, l_i,
                                       acc, qk_scale, offs_d, offs_dv, BLOCK, D, DV, BD, BDV, K.CONTIGUOUS)
            elif kind == 1:
                m_i, l_i, acc = _visit(q, qi, k_base, v_base, stride_kn, stride_vn, fvis, kpos, masks, e, m_i, l_i,
                                       acc, qk_scale, offs_d, offs_dv, BLOCK, D, DV, BD, BDV, K.FAST)
            elif kind == 2:
                m_i, l_i, acc = _visit(q, qi, k_base, v_base, stride_kn, stride_vn, fvis, kpos, masks, e, m_i, l_i,
                                       acc, qk_scale, offs_d, offs_dv, BLOCK, D, DV, BD, BDV, K.CAUSAL_TILE)
            elif kind == 3:
                m_i, l_i, acc = _visit(q, qi, k_base, v_base, stride_kn, stride_vn, fvis, kpos, masks, e, m_i, l_i,
                                       acc, qk_scale, offs_d, offs_dv, BLOCK, D, DV, BD, BDV, K.MASK_TILE)
            else:
                m_i, l_i, acc = _visit(q, qi, k_base, v_base, stride_kn, stride_vn, fvis, kpos, masks, e, m_i, l_i,
                                       acc, qk_scale, offs_d, offs_dv, BLOCK, D, DV, BD, BDV, K.GATHERED)
        else:  # every visit on the general path
            m_i, l_i, acc = _visit(q, qi, k_base, v_base, stride_kn, stride_vn, fvis, kpos, masks, e, m_i, l_i, acc,
                                   qk_scale, offs_d, offs_dv, BLOCK, D, DV, BD, BDV, K.GATHERED)
        nxt = tl.load(pair_item + j + 1, mask=j + 1 < hi, other=-1)
        last = nxt != it
        if PREDICATED:
            l_ok = l_i > 0
            inv = tl.where(l_ok, 1.0 / tl.where(l_ok, l_i, 1.0), 0.0)
            lse = tl.where(l_ok, m_i + tl.math.log2(tl.where(l_ok, l_i, 1.0)), float("-inf"))
            keep = (qi >= 0) & ((qi * 0 + last.to(tl.int32)) != 0)
            o_ptrs = O + b * stride_ob + h * stride_oh + qi.to(tl.int64)[:, None] * stride_on + offs_dv[None, :]
            tl.store(o_ptrs, (acc * inv[:, None]).to(O.dtype.element_ty), mask=keep[:, None] & (offs_dv < DV)[None, :])
            tl.store(LSE + (b * H + h) * N + qi.to(tl.int64), lse, mask=keep)
        elif last:  # the item's last visit: its output and log2-sum-exp
            l_ok = l_i > 0
            l_safe = tl.where(l_ok, l_i, 1.0)
            lse = tl.where(l_ok, m_i + tl.math.log2(l_safe), float("-inf"))
            K._store_rows(O + b * stride_ob + h * stride_oh, stride_on, acc / l_safe[:, None], qi, 0, offs_dv, DV,
                          False)
            tl.store(LSE + (b * H + h) * N + qi.to(tl.int64), lse, mask=qi >= 0)


def flat_tables(tabs, programs: int) -> dict:
    """(item, visit) pairs of the forward's one round in work order, cut into ``programs`` contiguous
    ranges of whole items with about equal visit counts."""
    if len(tabs.fwd_rounds) != 1 or tabs.long_walk:
        raise ValueError("the probe takes single-round short-walk plans (multi-head strided / local)")
    items = tabs.fwd_rounds[0].cpu()
    fptr = tabs.fptr.cpu()
    tiles = items[:, 1].long()
    counts = fptr[tiles + 1] - fptr[tiles]
    if (counts == 0).any():  # such a tile's rows would never be written
        raise ValueError("the probe takes plans where every query tile visits a key tile")
    pair_item = torch.repeat_interleave(torch.arange(len(items)), counts)
    starts = torch.repeat_interleave(fptr[tiles] - torch.cumsum(counts, 0) + counts, counts)
    pair_vis = starts + torch.arange(len(pair_item))
    ends = torch.cumsum(counts, 0)  # pair index after each item
    total = int(ends[-1])
    cuts = [0]
    for p in range(1, programs):
        i = int(torch.searchsorted(ends, total * p // programs))
        cuts.append(max(cuts[-1], int(ends[min(i, len(ends) - 1)])))
    cuts.append(total)
    dev = tabs.fvis.device
    return {"pair_item": pair_item.int().to(dev), "pair_vis": pair_vis.int().to(dev),
            "prog_ptr": torch.tensor(cuts, dtype=torch.int32, device=dev), "programs": programs}


FORMS = {"general": (False, False), "kind-branch": (True, False), "predicated": (False, True)}


def flat_forward(q, k, v, tabs, flat: dict, scale: float, warps: int = 4, stages: int = 3, form: str = "kind-branch"):
    bsz, h, n, d = q.shape
    dv = v.shape[-1]
    o = torch.empty(bsz, n, h, dv, device=q.device, dtype=q.dtype).transpose(1, 2)
    lse = torch.empty(bsz, h, n, device=q.device, dtype=torch.float32)
    flat_fwd_kernel[(flat["programs"], bsz)](
        q, k, v, o, lse, *q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *o.stride()[:3], h, n, scale * LOG2E,
        tabs.qdesc, tabs.qpos, tabs.kpos, tabs.fvis, tabs.fptr, tabs.fsplit, tabs.masks, tabs.fwd_rounds[0],
        flat["pair_item"], flat["pair_vis"], flat["prog_ptr"], tabs.block, d, dv, _pow2(d), _pow2(dv), *FORMS[form],
        num_warps=warps, num_stages=stages, maxnreg=128)
    return o, lse


def gpu_ms(fn, reps: int = 50) -> float:
    """Median ms of ``fn`` replayed as a CUDA graph (kernel time, no host)."""
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return sorted(times)[len(times) // 2]


def timings(q, k, v, tabs, flat: dict, scale: float, stages: int, form: str) -> dict:
    return {"flat_ms": gpu_ms(lambda: flat_forward(q, k, v, tabs, flat, scale, stages=stages, form=form)),
            "library_ms": gpu_ms(lambda: forward_tables(q, k, v, tabs, scale))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dry", action="store_true", help="CPU interpreter: small shapes, correctness only")
    ap.add_argument("--sizes", type=int, nargs="+", default=[16384, 65536])
    ap.add_argument("--programs", type=int, nargs="+", default=[132 * 3, 132 * 6, 132 * 12])
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    dry = args.dry or os.environ.get("TRITON_INTERPRET") == "1"
    device = "cpu" if dry else "cuda"
    dtype = torch.float32 if dry else torch.bfloat16
    block = 16 if dry else 64
    sizes = [200] if dry else args.sizes
    rows = []
    for n in sizes:
        # dry: every visit kind (contiguous and other fast visits, causal, mask tile, gathered)
        heads = case_heads("strided", n) if not dry else [P.local(32), P.strided(32), P.strided(8), P.local(48)]
        plans = [p.plan(n, block, device) for p in heads]
        tabs = kernel_tables(plans, device)
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, len(heads), n, 64 if not dry else 32, device=device, dtype=dtype) for _ in range(3))
        scale = 1 / math.sqrt(q.shape[-1])
        ref_o, ref_lse = forward_tables(q, k, v, tabs, scale)
        for programs in (args.programs if not dry else [3, 7]):
            flat = flat_tables(tabs, programs)
            for stages, form in [(st, f) for st in (args.stages if not dry else [1]) for f in FORMS]:
                o, lse = flat_forward(q, k, v, tabs, flat, scale, stages=stages, form=form)
                err = (o.float() - ref_o.float()).abs().max().item()
                lerr = (lse - ref_lse).abs().max().item()
                row = {"n": n, "programs": programs, "stages": stages, "form": form, "max_err_o": err, "max_err_lse": lerr,
                       "ok": err <= (1e-5 if dry else 2e-2) and lerr <= (1e-4 if dry else 1e-2)}
                if not dry:
                    row.update(timings(q, k, v, tabs, flat, scale, stages, form))
                rows.append(row)
                print(json.dumps(row), flush=True)
    if args.json:
        env = {"device": torch.cuda.get_device_name() if not dry else "cpu (interpreter)", "torch": torch.__version__,
               "triton": triton.__version__, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        Path(args.json).write_text(json.dumps({"env": env, "rows": rows}, indent=1))
    if not all(r["ok"] for r in rows):
        raise SystemExit("flattened forward differs from the library's")


if __name__ == "__main__":
    main()
