"""Pure-PyTorch block-sparse attention driven by a block plan: O(N·sqrt(N)) for the factorized patterns, no
N x N tensor, query tiles in chunks of bounded size (``docs/kernels.md``, "The torch backend").
"""

from __future__ import annotations

import math

import torch

from ..patterns import BlockPlan, Segment
from .op import PlanRoute, RouteFunction, work_dtype

# Largest score tensor (elements) one chunk may build; a few such tensors live at once.
CHUNK_ELEMENTS = 1 << 23


def _chunks(seg: Segment, rows: int):
    """Yield (t0, t1, width): consecutive query tiles whose score tensors fit the budget."""
    counts = seg.counts.tolist()
    b = seg.block
    tq = len(counts)
    t0 = 0
    while t0 < tq:
        width = max(counts[t0], 1)
        t1 = t0 + 1
        while t1 < tq:
            w = max(width, counts[t1])
            if rows * (t1 + 1 - t0) * b * w * b > CHUNK_ELEMENTS:
                break
            width, t1 = w, t1 + 1
        yield t0, t1, width
        t0 = t1


def _chunk_geometry(seg: Segment, t0: int, t1: int, width: int):
    """Query positions (C, B), key positions (C, W*B) and the (C, B, W*B) allowed mask (the predicate
    evaluated only on the partial visits' tiles)."""
    qpos = seg.q_tiles[t0:t1]
    lay = seg.layout[t0:t1, :width]
    ent = seg.entry_pred[t0:t1, :width]
    c, b = qpos.shape
    kpos = torch.where(lay[:, :, None] >= 0, seg.k_tiles[lay.clamp(min=0)], -1)  # (C, W, B)
    allowed = ((lay >= 0) & (ent < 0))[:, None, :, None].expand(c, b, width, b).clone()
    for p, pred in enumerate(seg.preds):
        ci, wi = torch.nonzero((lay >= 0) & (ent == p), as_tuple=True)
        if ci.numel():
            allowed[ci, :, wi, :] = pred(qpos[ci][:, :, None], kpos[ci, wi][:, None, :])
    return qpos, kpos.reshape(c, width * b), allowed.view(c, b, width * b)


def _gather(x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, D) gathered at pos (any shape, -1 -> row 0): (B, H, *pos.shape, D)."""
    flat = pos.clamp(min=0).reshape(-1)
    return x.index_select(2, flat).reshape(*x.shape[:2], *pos.shape, x.shape[-1])


def _scatter_add(dst: torch.Tensor, pos: torch.Tensor, src: torch.Tensor) -> None:
    """dst (B, H, N+1, D) += src (B, H, *pos.shape, D) at pos; -1 goes to the spare row N."""
    n = dst.shape[2] - 1
    flat = torch.where(pos >= 0, pos, n).reshape(-1)
    dst.index_add_(2, flat, src.reshape(*src.shape[:2], -1, src.shape[-1]))


def _segment_forward(q, k, v, seg: Segment, scale: float):
    """Unnormalised pass: per-query output (already normalised within the segment) and lse."""
    bsz, h, n, _ = q.shape
    dv = v.shape[-1]
    wt = work_dtype(q)
    out = q.new_zeros(bsz, h, n + 1, dv, dtype=wt)
    lse = q.new_full((bsz, h, n + 1), float("-inf"), dtype=wt)
    for t0, t1, width in _chunks(seg, bsz * h):
        qpos, kpos, allowed = _chunk_geometry(seg, t0, t1, width)
        qg = _gather(q, qpos).to(wt)  # (B, H, C, Bq, D)
        kg = _gather(k, kpos).to(wt)  # (B, H, C, K, D)
        vg = _gather(v, kpos).to(wt)
        s = torch.matmul(qg * scale, kg.transpose(-1, -2))
        s.masked_fill_(~allowed, float("-inf"))
        m = s.amax(dim=-1, keepdim=True)
        m = torch.where(torch.isfinite(m), m, 0.0)
        p = s.sub_(m).exp_()  # in place: one pass over the scores
        denom = p.sum(-1, keepdim=True)
        o = torch.matmul(p, vg) / torch.where(denom > 0, denom, 1.0)
        m = (m + denom.log()).squeeze(-1)  # log-sum-exp; -inf where no key is allowed
        _put(out, qpos, o, n)
        _put(lse, qpos, m, n)
    return out[:, :, :n], lse[:, :, :n]


def _put(dst: torch.Tensor, pos: torch.Tensor, src: torch.Tensor, n: int) -> None:
    """dst[:, :, pos] = src for valid positions (each query appears once per segment)."""
    valid = (pos >= 0).reshape(-1)
    idx = pos.reshape(-1)[valid]
    src = src.reshape(*src.shape[:2], -1, *src.shape[4:])
    dst[:, :, idx] = src[:, :, valid]


def merge_parts(parts):
    """Combine per-segment (normalised output, lse) over disjoint key sets (also the flex backend's)."""
    if len(parts) == 1:
        return parts[0]
    lses = torch.stack([lse for _, lse in parts])
    total = torch.logsumexp(lses, dim=0)
    safe = torch.where(torch.isfinite(total), total, 0.0)
    out = 0
    for o, lse in parts:
        out = out + torch.exp(lse - safe)[..., None] * o
    return out, total


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float):
    """(out, lse): out (batch, heads, seq, head_dim_v) in q's dtype, lse (batch, heads, seq) in the
    work dtype (float32; float64 for float64 inputs). Both contiguous."""
    with torch.autocast(q.device.type, enabled=False):  # the kernel manages its precision
        out, lse = merge_parts([_segment_forward(q, k, v, seg, scale) for seg in plan.segments])
    return out.to(q.dtype).contiguous(), lse.contiguous()


def backward(q, k, v, out, lse, dout, plan: BlockPlan, scale: float):
    """dQ, dK, dV from the saved output and log-sum-exp, chunk by chunk (scores recomputed)."""
    with torch.autocast(dout.device.type, enabled=False):
        bsz, h, n, d = q.shape
        wt = work_dtype(q)
        dq = q.new_zeros(bsz, h, n + 1, d, dtype=wt)
        dk = q.new_zeros(bsz, h, n + 1, d, dtype=wt)
        dv = q.new_zeros(bsz, h, n + 1, v.shape[-1], dtype=wt)
        dout = dout.to(wt)
        delta = (dout * out.to(wt)).sum(-1)  # (B, H, N)
        lse_safe = torch.where(torch.isfinite(lse), lse, 0.0)
        for seg in plan.segments:
            for t0, t1, width in _chunks(seg, bsz * h):
                qpos, kpos, allowed = _chunk_geometry(seg, t0, t1, width)
                qg, kg, vg = (_gather(x, p).to(wt) for x, p in ((q, qpos), (k, kpos), (v, kpos)))
                dog = _gather(dout, qpos)
                lg = lse_safe[:, :, qpos.clamp(min=0)]
                dg = delta[:, :, qpos.clamp(min=0)]
                p = torch.matmul(qg * scale, kg.transpose(-1, -2))
                p = p.sub_(lg[..., None]).exp_().masked_fill_(~allowed, 0.0)
                _scatter_add(dv, kpos, torch.matmul(p.transpose(-1, -2), dog))
                ds = torch.matmul(dog, vg.transpose(-1, -2))
                ds = ds.sub_(dg[..., None]).mul_(p).mul_(scale)
                _scatter_add(dq, qpos, torch.matmul(ds, kg))
                _scatter_add(dk, kpos, torch.matmul(ds.transpose(-1, -2), qg))
    return tuple(g[:, :, :n].to(x.dtype).contiguous() for g, x in ((dq, q), (dk, k), (dv, v)))


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float | None = None):
    """Block-sparse attention for one plan shared by all heads: q, k (batch, heads, seq, head_dim), v (batch,
    heads, seq, head_dim_v), ``plan`` from ``pattern.plan(seq, block, device)`` -> (batch, heads, seq,
    head_dim_v) in q's dtype, differentiable in q, k and v (:func:`forward`, :func:`backward`)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return RouteFunction.apply(q, k, v, PlanRoute(forward, backward, plan), scale)
