"""Causal sparse self-attention as an ``nn.Module`` (spec sections 1 and 5.1).

:class:`SparseSelfAttention`: projections, head split, the call to
:func:`~sparse_transformer.kernels.keyed_attention` (one registered operator under
``torch.compile``), head merge and the output projection W_p. The q/k width is ``qk_width`` (half
of d with ``half_size``); values and W_p stay d -> d (spec section 5.1). When all heads share a
pattern the kernel gets that one pattern (its fast path); otherwise one pattern per head.

Which pattern each head of each layer attends with is decided by
:func:`~sparse_transformer.patterns.layer_patterns` (spec section 4), next to the patterns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from . import patterns as P
from .kernels import keyed_attention, keyed_attention_qkv, pattern_key

__all__ = ["Attend", "SparseSelfAttention"]

# attend(q, k, v) -> y with q, k: (B, H, T, d_qk), v and y: (B, H, T, d_v).
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


class SparseSelfAttention(nn.Module):
    """Multi-head causal sparse self-attention: ``W_p · attend(X, S)`` (paper eqs. 5-8).

    Args:
        d_model: residual width d (the value width and W_p are d -> d).
        patterns: one pattern per head.
        qk_width: total q/k width (d, or d/2 with half-size q/k); must divide by the head count.
        backend: passed to :func:`sparse_attention` (``auto``, ``torch``, ``reference``, ...).

    ``forward(x)`` maps (B, T, d) to (B, T, d). ``forward(x, attend)`` replaces the kernel call
    with ``attend(q, k, v)`` (the cached sampler uses this to read and write its key/value cache
    without duplicating the projections).
    """

    def __init__(
        self,
        d_model: int,
        patterns: Sequence[P.Pattern],
        *,
        qk_width: int | None = None,
        backend: str = "auto",
    ):
        super().__init__()
        self.patterns = tuple(patterns)
        self.n_head = len(self.patterns)
        self.d_model = d_model
        self.qk_width = d_model if qk_width is None else qk_width
        if self.n_head < 1 or d_model % self.n_head or self.qk_width % self.n_head:
            raise ValueError(
                f"d_model={d_model} and qk_width={self.qk_width} must be multiples of the "
                f"number of heads {self.n_head}"
            )
        self.backend = backend
        self.in_proj = nn.Linear(d_model, 2 * self.qk_width + d_model)  # [W_q; W_k; W_v]
        self.out_proj = nn.Linear(d_model, d_model)  # W_p
        distinct = set(self.patterns)
        # One pattern for every head lets the kernels take their single-plan fast path.
        self.kernel_pattern: P.Pattern | tuple[P.Pattern, ...] = (
            self.patterns[0] if len(distinct) == 1 else self.patterns
        )
        # Built once here, a constant to torch.compile: the forward is one operator node.
        self.pattern_key = pattern_key(self.kernel_pattern, self.n_head, backend)

    def extra_repr(self) -> str:
        pats = self.kernel_pattern
        desc = str(pats) if isinstance(pats, P.Pattern) else "[" + ", ".join(map(str, pats)) + "]"
        return f"heads={self.n_head}, qk_width={self.qk_width}, backend={self.backend!r}, {desc}"

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(B, T, d) -> q, k (B, H, T, qk_width/H) and v (B, H, T, d/H)."""
        B, T, _ = x.shape
        q, k, v = self.in_proj(x).split([self.qk_width, self.qk_width, self.d_model], dim=-1)
        H = self.n_head
        return (
            q.view(B, T, H, -1).transpose(1, 2),
            k.view(B, T, H, -1).transpose(1, 2),
            v.view(B, T, H, -1).transpose(1, 2),
        )

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The sparse attention kernel on (B, H, T, ·) tensors; scale 1/sqrt(per-head q/k dim)."""
        return _autocast_off(keyed_attention, q, k, v, self.pattern_key)

    def forward(self, x: torch.Tensor, attend: Attend | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        if attend is None:  # the fused projection straight into the kernel: no layout copies
            qkv = self.in_proj(x)
            return self.out_proj(_autocast_off(keyed_attention_qkv, qkv, self.pattern_key, self.n_head, self.qk_width))
        y = attend(*self.project(x))  # (B, H, T, d/H)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, self.d_model))


def _autocast_off(kernel, x: torch.Tensor, *args):
    """``kernel(x, *args)`` with autocast off: under autocast the inputs arrive in the autocast
    dtype, and the kernels choose their own precision (float32 softmax statistics), which autocast
    would otherwise recast."""
    if torch.is_autocast_enabled(x.device.type):
        with torch.autocast(device_type=x.device.type, enabled=False):
            return kernel(x, *args)
    return kernel(x, *args)
