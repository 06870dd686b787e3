"""The attention as one registered PyTorch operator: ``torch.compile`` sees one opaque node.

Two operators (``torch.library.custom_op``), each with a fake (meta) implementation:

* ``sparse_transformer::attention(q, k, v, key, scale) -> (out, lse)``
* ``sparse_transformer::attention_backward(q, k, v, out, lse, dout, key, scale) -> (dq, dk, dv)``

joined by ``register_autograd``. :func:`attention` calls the operator when ``torch.compile`` traces
it; eager calls take the same route through a plain autograd function, which saves the custom
op's dispatcher overhead (measured with ``benchmarks/lab/host_overhead.py``). The pattern travels as ``key``: a plain int naming an interned
(backend, per-head patterns) pair (:func:`register`). Dynamo sees a constant, so it never traces the
planning, table or launch code (the source of the graph breaks and recompiles before), and Inductor
fuses everything around the node. The implementation resolves the key to the dispatcher's cached
route for (n, heads, device) and runs that backend's ``forward`` / ``backward``: the float64
``reference``, the PyTorch ``torch`` path and the fused ``triton`` kernels all go through here. The
two that are already PyTorch operators of their own (causal SDPA for all-dense heads on CUDA, and
FlexAttention) are called directly by :func:`sparse_transformer.kernels.sparse_attention`.
"""

from __future__ import annotations

import torch

__all__ = ["RouteFunction", "attention", "register", "source"]

_SOURCES: list[tuple[str, object]] = []  # key -> (backend, pattern or tuple of per-head patterns)
_INDEX: dict[tuple[str, object], int] = {}


def register(backend: str, pattern_source) -> int:
    """The op key of (backend, one pattern or a tuple of per-head patterns); equal pairs share a
    key, so a key is valid for the life of the process."""
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


def _route(key: int, q: torch.Tensor):
    from . import _route as route  # the dispatcher's cache of plans and kernel tables

    backend, src = source(key)
    return route(backend, src, q.shape[1], q.shape[2], q.device)


def _lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.custom_op("sparse_transformer::attention", mutates_args=())
def _attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key: int, scale: float
) -> tuple[torch.Tensor, torch.Tensor]:
    return _route(key, q).forward(q, k, v, scale)


@_attention.register_fake
def _(q, k, v, key, scale):
    out = q.new_empty(*q.shape[:3], v.shape[-1])
    return out, q.new_empty(q.shape[:3], dtype=_lse_dtype(q))


@torch.library.custom_op("sparse_transformer::attention_backward", mutates_args=())
def _attention_backward(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    out: torch.Tensor,
    lse: torch.Tensor,
    dout: torch.Tensor,
    key: int,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _route(key, q).backward(q, k, v, out, lse, dout, scale)


@_attention_backward.register_fake
def _(q, k, v, out, lse, dout, key, scale):
    return tuple(torch.empty(x.shape, dtype=x.dtype, device=x.device) for x in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, key, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.key, ctx.scale = key, scale
    ctx.mark_non_differentiable(lse)


def _backward(ctx, dout, dlse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _attention_backward(q, k, v, out, lse, dout, ctx.key, ctx.scale)
    return dq, dk, dv, None, None


_attention.register_autograd(_backward, setup_context=_setup_context)


class RouteFunction(torch.autograd.Function):
    """``apply(q, k, v, route, scale)`` for any ``route`` with ``forward(q, k, v, scale) -> (out,
    lse)`` and ``backward(q, k, v, out, lse, dout, scale) -> (dq, dk, dv)``: the same forward and
    backward as the operator, without the dispatcher round trips of a Python custom op (about 35 us
    forward and 100 us forward + backward of host time per call on the CI machine)."""

    @staticmethod
    def forward(ctx, q, k, v, route, scale: float):
        out, lse = route.forward(q, k, v, scale)
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.route, ctx.scale = route, scale
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        return (*ctx.route.backward(q, k, v, out, lse, dout, ctx.scale), None, None)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key: int, scale: float) -> torch.Tensor:
    """Attention (batch, heads, seq, head_dim_v) for a registered ``key``: the operator under
    ``torch.compile`` (and export), the same route through an autograd function in eager mode."""
    if torch.compiler.is_compiling():
        return _attention(q, k, v, key, scale)[0]
    return RouteFunction.apply(q, k, v, _route(key, q), scale)
