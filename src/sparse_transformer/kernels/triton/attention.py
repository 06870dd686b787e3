"""The Triton backend's host side: ``forward_tables`` / ``backward_tables`` launch the kernels over prepared
:class:`~.tables.KernelTables`; ``attention``, ``attention_multihead`` and ``attention_tables`` are the
differentiable entry points (through :class:`~sparse_transformer.kernels.op.RouteFunction`).
"""

from __future__ import annotations

import importlib.util
import math
import os

import torch

from ...patterns import BlockPlan
from ..op import PlanRoute, RouteFunction, heads_inner
from .launcher import kernels
from .policy import LaunchPolicy
from .tables import KernelTables, kernel_tables

LOG2E = 1.4426950408889634
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_CAPABLE: dict[int, bool] = {}  # device index -> compute capability >= 8.0 (asked once)


def available(device: torch.device | str) -> bool:
    """Triton importable, and CUDA with compute capability >= 8.0 or the Triton interpreter."""
    device = torch.device(device)
    if importlib.util.find_spec("triton") is None:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return device.type in ("cpu", "cuda")
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABLE:
        _CAPABLE[index] = torch.cuda.get_device_capability(index)[0] >= 8
    return _CAPABLE[index]


def _last_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _pow2(x: int) -> int:
    return max(16, 1 << (int(x) - 1).bit_length())


def forward_tables(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tabs: KernelTables, scale: float):
    """(out, lse) over prepared :func:`~.tables.kernel_tables`: out (batch, heads, seq, head_dim_v) in
    q's dtype, laid out as (batch, seq, heads, head_dim_v), lse (batch, heads, seq) float32 (log2
    domain). q, k, v may be strided views (last dim contiguous)."""
    if q.shape[1] != tabs.heads or q.shape[2] != tabs.n:
        raise ValueError(f"tables built for {tabs.heads} heads and n={tabs.n}, inputs have "
                         f"{q.shape[1]} heads and n={q.shape[2]}")
    _check_tensors(q, v)
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1:
        q, k, v = (_last_contiguous(x) for x in (q, k, v))
    tabs = tabs.fwd_tables
    kern = kernels()
    policy = tabs.policy
    bsz, h, n, d_qk = q.shape
    d_v = v.shape[-1]
    blk = tabs.block
    o = heads_inner((bsz, h, n, d_v), q)
    lse = torch.empty(bsz, h, n, device=q.device, dtype=torch.float32)
    warps, stages, maxnreg = policy.launch_config("fwd", blk, max(d_qk, d_v), tabs.long_walk)
    qs, ks, vs, os_ = q.stride(), k.stride(), v.stride(), o.stride()
    scalars = (*qs[:3], *ks[:3], *vs[:3], *os_[:3], h, n, scale * LOG2E)
    consts = (blk, d_qk, d_v, _pow2(d_qk), _pow2(d_v))
    for r, (items, static) in enumerate(zip(tabs.fwd_rounds, tabs.fwd_static)):
        kern.fwd_kernel((items.shape[0], bsz), (q, k, v, o, lse), scalars, (*consts, r > 0),  # ... FOLD
                        warps, stages, maxnreg, static, policy.direct_launch)
    return o, lse


def backward_tables(q, k, v, o, lse, do, tabs: KernelTables, scale: float, grads=None):
    """dQ, dK, dV of :func:`forward_tables` from its output and log-sum-exp, written into ``grads``
    (three (batch, heads, seq, ·) views with a contiguous last dim, e.g. of one QKV gradient) or
    into new tensors laid out as ``torch.empty_like`` lays out q, k and v."""
    if q.stride(-1) != 1 or k.stride(-1) != 1 or v.stride(-1) != 1 or o.stride(-1) != 1 or do.stride(-1) != 1:
        q, k, v, o, do = (_last_contiguous(x) for x in (q, k, v, o, do))
    if grads is not None and any(g.stride(-1) != 1 for g in grads):
        raise ValueError("backward_tables writes gradients with a contiguous last dim")
    kern = kernels()
    policy = tabs.policy
    bsz, h, n, d_qk = q.shape
    d_v = v.shape[-1]
    blk = tabs.block
    direct = policy.direct_launch
    os_, dos = o.stride()[:3], do.stride()[:3]
    # rowsum(dO * O): inside the backward programs for short walks, a pre-pass for long ones.
    inline_delta = policy.inline_delta(tabs.long_walk, bsz * h * n)
    if inline_delta:
        delta = lse  # not read
    else:
        delta = torch.empty_like(lse)
        kern.delta_kernel((-(-n // 128), bsz * h), (o, do, delta), (h, n, *os_, *dos), (128, d_v, _pow2(d_v)),
                          4, 3, None, (), direct)
    if grads is None:  # in the inputs' layout (views of a fused projection: contiguous)
        grads = (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v))
    dq, dk, dv = grads
    if tabs.zero_dkv:  # some key position is in no key tile
        dk.zero_()
        dv.zero_()
    qsub, ksub = policy.steps(blk, tabs.long_walk)
    warps, stages, maxnreg = policy.launch_config("bwd", blk, max(d_qk, d_v), tabs.long_walk)
    scalars = (*q.stride()[:3], *k.stride()[:3], *v.stride()[:3], *dos, *os_, *dq.stride()[:3],
               *dk.stride()[:3], *dv.stride()[:3], h, n, scale, scale * LOG2E)
    consts = (blk, d_qk, d_v, _pow2(d_qk), _pow2(d_v), inline_delta, qsub, ksub)  # ... INLINE_DELTA QSUB KSUB
    tensors = (q, k, v, do, o, dq, dk, dv, lse, delta)
    for r, (items, static) in enumerate(zip(tabs.bwd_rounds, tabs.bwd_static)):
        kern.bwd_kernel((items.shape[0], bsz), tensors, scalars, (*consts, r > 0), warps, stages, maxnreg,  # FOLD
                        static, direct)
    return dq, dk, dv


def forward(q, k, v, plan: BlockPlan, scale: float):
    """:func:`forward_tables` for one plan shared by the heads (its tables are cached)."""
    return forward_tables(q, k, v, kernel_tables([plan] * q.shape[1], q.device), scale)


def backward(q, k, v, o, lse, do, plan: BlockPlan, scale: float, grads=None):
    """:func:`backward_tables` for one plan shared by the heads."""
    return backward_tables(q, k, v, o, lse, do, kernel_tables([plan] * q.shape[1], q.device), scale, grads)


def _check_tensors(q, v) -> None:
    if q.dtype not in _DTYPES:
        raise ValueError(f"the triton backend takes float16, bfloat16 or float32, got {q.dtype}")
    d_qk, d_v = q.shape[-1], v.shape[-1]
    if d_qk > 256 or d_v > 256:
        raise ValueError(f"the triton backend supports head dims up to 256, got {d_qk} and {d_v}")


def _check_plans(n: int, plans: list[BlockPlan]) -> None:
    for p in plans:
        if p.n != n:
            raise ValueError(f"plan built for n={p.n}, inputs have n={n}")
        if p.block < 16 or p.block & (p.block - 1):
            raise ValueError(f"the triton backend needs a power-of-two plan block >= 16, got {p.block}")
    if len({p.block for p in plans}) > 1:
        raise ValueError(f"the heads' plans have tile sizes {sorted({p.block for p in plans})}; one launch "
                         "takes one tile size (the dispatcher runs each size on its own)")


def attention_tables(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tabs: KernelTables, scale: float):
    """Differentiable attention over prepared :func:`~.tables.kernel_tables` (:func:`forward_tables`,
    :func:`backward_tables`)."""
    return RouteFunction.apply(q, k, v, PlanRoute(forward_tables, backward_tables, tabs), scale)


def attention_multihead(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plans: list[BlockPlan], scale: float | None = None,
    policy: LaunchPolicy | None = None,
) -> torch.Tensor:
    """Block-sparse attention with one plan per head, all heads in the same launches: q, k (batch, heads,
    seq, head_dim), v (batch, heads, seq, head_dim_v) -> (batch, heads, seq, head_dim_v) in q's dtype,
    differentiable; float16, bfloat16, float32 (tf32 dots). ``plans``: ``heads`` plans of one sequence
    length; ``policy``: the launch policy (default: :func:`~.policy.default_policy`)."""
    if len(plans) != q.shape[1]:
        raise ValueError(f"got {len(plans)} plans for {q.shape[1]} heads")
    _check_tensors(q, v)
    _check_plans(q.shape[2], plans)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return attention_tables(q, k, v, kernel_tables(plans, q.device, policy), scale)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float | None = None,
    policy: LaunchPolicy | None = None,
) -> torch.Tensor:
    """:func:`attention_multihead` with one plan (block a power of two >= 16) shared by all heads: q, k
    (batch, heads, seq, head_dim), v (batch, heads, seq, head_dim_v) -> (batch, heads, seq, head_dim_v)."""
    return attention_multihead(q, k, v, [plan] * q.shape[1], scale, policy)
