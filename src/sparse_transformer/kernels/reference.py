"""The oracle: dense masked attention, O(N^2) time and memory, slow and exact on purpose. Every other
backend is tested against this one (in float64, ``upcast=True``).
"""

from __future__ import annotations

import math

import torch

from ..patterns import BlockPlan, Pattern


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: Pattern | BlockPlan, scale: float | None = None, *,
    upcast: bool = True, return_lse: bool = False,
):
    """Dense masked causal attention for one pattern shared by all heads.

    q, k: (batch, heads, seq, head_dim); v: (batch, heads, seq, head_dim_v); returns (batch, heads, seq,
    head_dim_v) in q's dtype (and the (batch, heads, seq) float32/64 log-sum-exp of the scaled scores with
    ``return_lse``). ``plan`` is a pattern or a block plan of one. ``upcast`` computes in float32 (float64
    stays float64); without it the scores, softmax and products run in the input dtype, which is what the
    tolerance rule's ``ref_lowprec`` needs. A query with no allowed key (``summary`` alone) gets zeros.
    """
    pattern = plan.pattern if isinstance(plan, BlockPlan) else plan
    n, d = q.shape[-2], q.shape[-1]
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    dtype = q.dtype
    work = torch.promote_types(dtype, torch.float32) if upcast else dtype
    qf, kf, vf = q.to(work), k.to(work), v.to(work)
    mask = pattern.mask(n, device=q.device)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    lse = torch.logsumexp(s.float() if work != torch.float64 else s, dim=-1)
    empty = ~mask.any(-1)
    s = s.masked_fill(empty[:, None], 0.0)  # keeps softmax finite on rows with no key
    p = torch.softmax(s, dim=-1).masked_fill(empty[:, None], 0.0)
    out = torch.matmul(p, vf).to(dtype)
    if return_lse:
        return out, lse
    return out


def forward(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern, scale: float):
    """(out, lse) for the registered operator: out in q's dtype, lse in float32 (float64 inputs:
    float64), computed in float32 (float64)."""
    out, lse = attention(q, k, v, pattern, scale, return_lse=True)
    return out, lse.to(torch.promote_types(q.dtype, torch.float32))


def backward(q, k, v, out, lse, dout, pattern: Pattern, scale: float):
    """dQ, dK, dV of :func:`forward` from its saved log-sum-exp, written out (dense, O(N^2)):
    P = exp(S - lse), dV = P^T dO, dS = P * (dO V^T - rowsum(P * dO V^T)), dQ = dS K * scale,
    dK = dS^T Q * scale. Checked against autograd through :func:`attention` in the tests."""
    work = torch.promote_types(q.dtype, torch.float32)
    qf, kf, vf, dof = (x.to(work) for x in (q, k, v, dout))
    mask = pattern.mask(q.shape[-2], device=q.device)
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale
    lse_safe = torch.where(torch.isfinite(lse), lse, 0.0).to(work)
    p = torch.exp(s - lse_safe[..., None]).masked_fill(~mask, 0.0)
    dv = torch.matmul(p.transpose(-1, -2), dof)
    dp = torch.matmul(dof, vf.transpose(-1, -2))
    ds = p * (dp - (p * dp).sum(-1, keepdim=True))
    dq = torch.matmul(ds, kf) * scale
    dk = torch.matmul(ds.transpose(-1, -2), qf) * scale
    return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype)
