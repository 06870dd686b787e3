"""The attention as registered PyTorch operators, so ``torch.compile`` sees one opaque node:
``sparse_transformer::attention(q, k, v, key, scale) -> (out, lse)`` and ``attention_backward``, and the
same pair on the fused QKV projection (``attention_qkv``, ``attention_qkv_backward``), each with a fake
implementation, joined by ``register_autograd``; eager calls take the same route through plain autograd
functions. ``key`` is an int naming an interned (backend, per-head patterns) pair (:func:`register`).
Design: ``docs/kernels.md`` ("Dispatch and the registered operator").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["PlanRoute", "RouteFunction", "attention", "attention_qkv", "merge_heads", "register", "source", "split_qkv"]

_SOURCES: list[tuple[str, object]] = []  # key -> (backend, pattern or tuple of per-head patterns)
_INDEX: dict[tuple[str, object], int] = {}


def register(backend: str, pattern_source) -> int:
    """The op key of (backend, one pattern or a tuple of per-head patterns); equal pairs share a key,
    valid for the life of the process."""
    item = (backend, pattern_source)
    key = _INDEX.get(item)
    if key is None:
        key = _INDEX[item] = len(_SOURCES)
        _SOURCES.append(item)
    return key


def source(key: int) -> tuple[str, object]:
    """(backend, pattern source) of a registered key."""
    if not 0 <= key < len(_SOURCES):
        raise ValueError(f"unknown attention key {key}; keys come from op.register()")
    return _SOURCES[key]


def _route(key: int, x: torch.Tensor, heads: int | None = None):
    """The dispatcher's cached route for ``key`` and a (batch, heads, seq, d) tensor, or a (batch, seq, width)
    one with ``heads`` given."""
    from . import _route as route

    h, n = (heads, x.shape[1]) if x.dim() == 3 else (x.shape[1], x.shape[2])
    return route(key, h, n, x.device)


def work_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype of softmax statistics and the log-sum-exp: float32 (float64 for float64 inputs)."""
    return torch.promote_types(x.dtype, torch.float32)


def heads_inner(shape, like: torch.Tensor) -> torch.Tensor:
    """An empty (batch, heads, seq, d) tensor laid out as (batch, seq, heads, d), like ``like``'s dtype and device."""
    b, h, n, d = shape
    return like.new_empty(b, n, h, d).transpose(1, 2)


def _canonical(x: torch.Tensor) -> torch.Tensor:
    """``x`` (batch, heads, seq, d) in the (batch, seq, heads, d) layout (copied if not already)."""
    if x.transpose(1, 2).is_contiguous():
        return x
    return heads_inner(x.shape, x).copy_(x)


def _like(g: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Gradient ``g`` of ``x`` in the layout ``torch.empty_like(x)`` has (copied if not already)."""
    if g.stride() == torch.empty_like(x, device="meta").stride():
        return g
    return torch.empty_like(x).copy_(g)


def split_qkv(qkv: torch.Tensor, heads: int, qk_width: int) -> tuple[torch.Tensor, ...]:
    """q, k (batch, heads, seq, qk_width / heads) and v: views of the fused projection."""
    b, n, _ = qkv.shape
    return tuple(x.view(b, n, heads, -1).transpose(1, 2)
                 for x in qkv.split([qk_width, qk_width, qkv.shape[-1] - 2 * qk_width], dim=-1))


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    """(batch, heads, seq, d) -> (batch, seq, heads * d) (a view in the canonical layout)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


@torch.library.custom_op("sparse_transformer::attention", mutates_args=())
def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = _route(key, q).forward(q, k, v, scale)
    return _canonical(out), lse


@_attention.register_fake
def _(q, k, v, key, scale):
    return heads_inner((*q.shape[:3], v.shape[-1]), q), q.new_empty(q.shape[:3], dtype=work_dtype(q))


@torch.library.custom_op("sparse_transformer::attention_backward", mutates_args=())
def _attention_backward(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor,
    key: int, scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grads = _route(key, q).backward(q, k, v, out, lse, dout, scale)
    return tuple(_like(g, x) for g, x in zip(grads, (q, k, v)))


@_attention_backward.register_fake
def _(q, k, v, out, lse, dout, key, scale):
    return tuple(torch.empty_like(x) for x in (q, k, v))


def _setup_context(ctx, inputs, output):
    (q, k, v, key, scale), (out, lse) = inputs, output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.key, ctx.scale = key, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    return (*_attention_backward(q, k, v, out, lse, dout, ctx.key, ctx.scale), None, None)


_attention.register_autograd(_backward, setup_context=_setup_context)


def _qkv_forward(qkv, route, scale: float, heads: int, qk_width: int):
    q, k, v = split_qkv(qkv, heads, qk_width)
    out, lse = route.forward(q, k, v, scale)
    return merge_heads(_canonical(out)), lse


def _qkv_backward(qkv, out, lse, dout, route, scale: float, heads: int, qk_width: int):
    q, k, v = split_qkv(qkv, heads, qk_width)
    dqkv = torch.empty_like(qkv, memory_format=torch.contiguous_format)
    grads = split_qkv(dqkv, heads, qk_width)
    o = out.view(out.shape[0], out.shape[1], heads, -1).transpose(1, 2)
    do = dout.reshape(o.shape[0], o.shape[2], heads, -1).transpose(1, 2)  # any strides (e.g. expanded)
    for g, r in zip(grads, route.backward(q, k, v, o, lse, do, scale, grads)):
        if r.data_ptr() != g.data_ptr():  # backends that do not write in place
            g.copy_(r)
    return dqkv


@torch.library.custom_op("sparse_transformer::attention_qkv", mutates_args=())
def _attention_qkv(
    qkv: torch.Tensor, key: int, scale: float, heads: int, qk_width: int
) -> tuple[torch.Tensor, torch.Tensor]:
    return _qkv_forward(qkv, _route(key, qkv, heads), scale, heads, qk_width)


@_attention_qkv.register_fake
def _(qkv, key, scale, heads, qk_width):
    b, n, width = qkv.shape
    return qkv.new_empty(b, n, width - 2 * qk_width), qkv.new_empty(b, heads, n, dtype=work_dtype(qkv))


@torch.library.custom_op("sparse_transformer::attention_qkv_backward", mutates_args=())
def _attention_qkv_backward(
    qkv: torch.Tensor, out: torch.Tensor, lse: torch.Tensor, dout: torch.Tensor, key: int, scale: float,
    heads: int, qk_width: int,
) -> torch.Tensor:
    return _qkv_backward(qkv, out, lse, dout, _route(key, qkv, heads), scale, heads, qk_width)


@_attention_qkv_backward.register_fake
def _(qkv, out, lse, dout, key, scale, heads, qk_width):
    return torch.empty_like(qkv, memory_format=torch.contiguous_format)


def _qkv_setup_context(ctx, inputs, output):
    (qkv, key, scale, heads, qk_width), (out, lse) = inputs, output
    ctx.save_for_backward(qkv, out, lse)
    ctx.args = key, scale, heads, qk_width
    ctx.mark_non_differentiable(lse)


def _qkv_autograd_backward(ctx, dout, dlse):
    qkv, out, lse = ctx.saved_tensors
    return _attention_qkv_backward(qkv, out, lse, dout, *ctx.args), None, None, None, None


_attention_qkv.register_autograd(_qkv_autograd_backward, setup_context=_qkv_setup_context)


class QKVFunction(torch.autograd.Function):
    """Eager twin of the fused-projection operator: ``apply(qkv, route, scale, heads, qk_width)``."""

    @staticmethod
    def forward(ctx, qkv, route, scale: float, heads: int, qk_width: int):
        out, lse = _qkv_forward(qkv, route, scale, heads, qk_width)
        ctx.save_for_backward(qkv, out, lse)
        ctx.args = route, scale, heads, qk_width
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        qkv, out, lse = ctx.saved_tensors
        return _qkv_backward(qkv, out, lse, dout, *ctx.args), None, None, None, None


def attention_qkv(qkv: torch.Tensor, key: int, scale: float, heads: int, qk_width: int) -> torch.Tensor:
    """Attention on the fused projection ``qkv`` (batch, seq, 2 * qk_width + d_v) for a registered ``key``:
    (batch, seq, d_v); the operator under ``torch.compile``, :class:`QKVFunction` in eager mode."""
    if torch.compiler.is_compiling():
        return _attention_qkv(qkv, key, scale, heads, qk_width)[0]
    return QKVFunction.apply(qkv, _route(key, qkv, heads), scale, heads, qk_width)


@dataclass(frozen=True)
class PlanRoute:
    """A backend's ``forward`` and ``backward`` bound to one plan (or kernel tables): a route for
    :class:`RouteFunction`."""

    fwd: Callable
    bwd: Callable
    plan: object

    def forward(self, q, k, v, scale: float):
        return self.fwd(q, k, v, self.plan, scale)

    def backward(self, q, k, v, out, lse, dout, scale: float, grads=None):
        """dq, dk, dv (``grads``, views to write into, are a hint the backend may ignore)."""
        return self.bwd(q, k, v, out, lse, dout, self.plan, scale)


class RouteFunction(torch.autograd.Function):
    """``apply(q, k, v, route, scale)`` for any ``route`` with ``forward(q, k, v, scale) -> (out, lse)``
    and ``backward(q, k, v, out, lse, dout, scale) -> (dq, dk, dv)``: the operator without its dispatcher."""

    @staticmethod
    def forward(ctx, q, k, v, route, scale: float):
        out, lse = route.forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.route, ctx.scale = route, scale
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        return (*ctx.route.backward(q, k, v, out, lse, dout, ctx.scale), None, None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key: int, scale: float) -> torch.Tensor:
    """Attention (batch, heads, seq, head_dim_v) for a registered ``key``: the operator under ``torch.compile``
    (and export), :class:`RouteFunction` in eager mode."""
    if torch.compiler.is_compiling():
        return _attention(q, k, v, key, scale)[0]
    return RouteFunction.apply(q, k, v, _route(key, q), scale)
