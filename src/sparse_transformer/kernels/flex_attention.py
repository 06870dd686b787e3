"""The same block plans fed to PyTorch's FlexAttention (CUDA; plan block a multiple of 128): per segment,
gathered queries and keys and a :class:`BlockMask` built from the plan's layout, segments merged by
log-sum-exp (``docs/kernels.md``, "The flex backend").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..patterns import BlockPlan, Segment
from .torch_sparse import merge_parts

_compiled = None
# Used after the autotuned defaults fail to compile ("out of resource": docs/kernels.md).
SMALL_TILES = {"BLOCK_M": 64, "BLOCK_N": 64, "num_stages": 2, "num_warps": 4,
               "bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 32}
_options: dict = {"kernel_options": None}  # what worked last; set on the first failure


def available(device: torch.device | str) -> bool:
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _flex():
    """``flex_attention``, compiled on CUDA (eager elsewhere: slow, for tests only)."""
    global _compiled
    from torch.nn.attention.flex_attention import flex_attention

    if _compiled is None:
        _compiled = torch.compile(flex_attention, dynamic=False)
    return _compiled


@dataclass(frozen=True, eq=False)
class _SegmentMask:
    """One segment's gathers, inverse permutation and BlockMask (device tensors)."""

    q_index: torch.Tensor  # (Lq,) positions in segment order (padding -> 0)
    k_index: torch.Tensor  # (Lk,)
    inverse: torch.Tensor  # (n,) where each position sits in the segment order
    block_mask: object


def _segment_mask(seg: Segment, n: int, device) -> _SegmentMask:
    from torch.nn.attention.flex_attention import BlockMask

    b = seg.block
    tq, tk = seg.q_tiles.shape[0], seg.k_tiles.shape[0]
    qpos, kpos = seg.q_tiles.reshape(-1).to(device), seg.k_tiles.reshape(-1).to(device)
    lay, ent = seg.layout.cpu(), seg.entry_pred.cpu()
    sel = lay >= 0
    full = sel & (ent < 0)
    part = sel & (ent >= 0)

    def blocks(m):
        num = m.sum(1).to(torch.int32)
        order = torch.argsort((~m).to(torch.int8), dim=1, stable=True)
        idx = torch.where(torch.gather(m, 1, order), torch.gather(lay, 1, order), 0).to(torch.int32)
        # FlexAttention reads the index width as the number of key blocks.
        idx = torch.cat([idx, idx.new_zeros(tq, max(0, tk - idx.shape[1]))], 1)[:, :tk]
        return num[None, None].to(device), idx[None, None].contiguous().to(device)

    kv_num, kv_idx = blocks(part)
    full_num, full_idx = blocks(full)
    # Per (query tile, key tile): -2 not visited, -1 full visit, p >= 0 partial under predicate p
    # (mask_mod must be right everywhere; FlexAttention only skips calling it on full blocks).
    pid = torch.full((tq, tk), -2, dtype=torch.int32)
    ti = torch.arange(tq)[:, None].expand_as(lay)
    pid[ti[sel], lay[sel]] = ent[sel].to(torch.int32)
    pid = pid.to(device)
    preds = seg.preds

    def mask_mod(bi, hi, qi, ki):
        i, j = qpos[qi], kpos[ki]
        p = pid[qi // b, ki // b]
        ok = (i >= 0) & (j >= 0) & (j <= i)
        allowed = p == -1
        for idx, pred in enumerate(preds):  # each atom's flex_term, traced
            allowed = allowed | ((p == idx) & pred.flex_terms(i, j))
        return ok & allowed

    bm = BlockMask.from_kv_blocks(
        kv_num, kv_idx, full_num, full_idx, BLOCK_SIZE=b, mask_mod=mask_mod, seq_lengths=(tq * b, tk * b)
    )
    valid = qpos >= 0
    inverse = torch.empty(n, dtype=torch.long, device=device)
    inverse[qpos[valid]] = torch.nonzero(valid).squeeze(1)
    return _SegmentMask(qpos.clamp(min=0), kpos.clamp(min=0), inverse, bm)


def _masks(plan: BlockPlan, device) -> tuple[_SegmentMask, ...]:
    cache = plan.__dict__.get("_flex_masks")
    if cache is None:
        cache = {}
        object.__setattr__(plan, "_flex_masks", cache)
    key = str(torch.device(device))
    if key not in cache:
        cache[key] = tuple(_segment_mask(s, plan.n, device) for s in plan.segments)
    return cache[key]


def _call(flex, q, k, v, block_mask, scale):
    opts = _options["kernel_options"]
    try:
        return flex(q, k, v, block_mask=block_mask, scale=scale, return_lse=True, kernel_options=opts)
    except Exception as e:
        if opts is not None or "out of resource" not in str(e):
            raise
        _options["kernel_options"] = dict(SMALL_TILES)
        return flex(q, k, v, block_mask=block_mask, scale=scale, return_lse=True, kernel_options=SMALL_TILES)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float | None = None
) -> torch.Tensor:
    """Block-sparse attention through FlexAttention for one plan (block a multiple of 128) shared by all
    heads: q, k (batch, heads, seq, head_dim), v (batch, heads, seq, head_dim_v) -> (batch, heads, seq,
    head_dim_v) in q's dtype; differentiable (FlexAttention's own backward)."""
    if plan.block % 128:
        raise ValueError(f"the flex backend needs a plan block that is a multiple of 128, got {plan.block}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    flex = _flex() if q.device.type == "cuda" else None
    if flex is None:
        from torch.nn.attention.flex_attention import flex_attention as flex
    parts = []
    for sm in _masks(plan, q.device):
        qs, ks, vs = q.index_select(2, sm.q_index), k.index_select(2, sm.k_index), v.index_select(2, sm.k_index)
        o, lse = _call(flex, qs, ks, vs, sm.block_mask, scale)
        parts.append((o.index_select(2, sm.inverse), lse.index_select(2, sm.inverse)))
    if len(parts) == 1:
        return parts[0][0]
    return merge_parts([(o.float(), lse.float()) for o, lse in parts])[0].to(q.dtype)
