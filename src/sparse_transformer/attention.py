"""Causal sparse self-attention as an ``nn.Module`` (spec sections 1, 4 and 5.1).

Two things live here:

* :func:`layer_patterns`: which pattern each head of each layer attends with, from a
  :class:`~sparse_transformer.model.ModelConfig` (spec section 4):

  - ``interleaved``: layer r uses component ``r mod p`` of the named pattern (p = 2 for strided and
    fixed), or ``cfg.layers``, an explicit comma list cycled over the layers (``"local,local,local,
    strided"`` is the authors' 3:1 CIFAR stack); every head of a layer shares the pattern;
  - ``merged``: every head attends to the union of the components (the paper's EnWik8 model);
  - ``multihead``: the heads are split into p contiguous groups, group m attending component m.

  With ``cfg.head_offsets`` every ``summary`` component reads a per-head c-wide sub-block: head h
  (counted within the heads that read a summary in that layer) gets offset ``h mod (stride // c)``,
  so different heads summarise different parts of each block (paper section 4.3: "distinct
  sub-blocks ... better than the same sub-block").

* :class:`SparseSelfAttention`: projections, head split, the call to
  :func:`~sparse_transformer.kernels.keyed_attention` (one registered operator under
  ``torch.compile``), head merge and the output projection W_p.
  The q/k width is ``qk_width`` (half of d with ``half_size``); values and W_p stay d -> d
  (spec section 5.1). When all heads share a pattern the kernel gets that one pattern (its fast
  path); otherwise one pattern per head.

Equal patterns are interned (one object per distinct pattern in the whole model), so the block
plans the kernels cache on a pattern are built once and shared by every layer that uses it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import torch
from torch import nn

from . import patterns as P
from .kernels import keyed_attention, pattern_key

if TYPE_CHECKING:  # pragma: no cover
    from .model import ModelConfig

__all__ = ["COMPONENT_NAMES", "MODES", "Attend", "SparseSelfAttention", "layer_patterns"]

MODES = ("interleaved", "merged", "multihead")
COMPONENT_NAMES = ("block", "dense", "local", "strided", "summary")

# attend(q, k, v) -> y with q, k: (B, H, T, d_qk), v and y: (B, H, T, d_v).
Attend = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def _component(name: str, stride: int, c: int) -> P.Pattern:
    if name == "dense":
        return P.dense()
    if name == "local":
        return P.local(stride)
    if name == "strided":
        return P.strided(stride)
    if name == "block":
        return P.block(stride)
    if name == "summary":
        return P.summary(stride, c)
    raise ValueError(f"unknown layer component {name!r}; choose from {', '.join(COMPONENT_NAMES)}")


def _components(cfg: ModelConfig) -> tuple[P.Pattern, ...]:
    if cfg.pattern not in P.PATTERN_NAMES:
        raise ValueError(
            f"unknown pattern {cfg.pattern!r}; choose from {', '.join(P.PATTERN_NAMES)}"
        )
    return P.from_name(cfg.pattern, cfg.stride, cfg.c)


def _with_offset(p: P.Pattern, offset: int) -> P.Pattern:
    """``p`` with every summary part reading sub-block ``offset`` (other parts unchanged)."""
    if isinstance(p, P.Summary):
        return P.summary(p.size, p.c, offset % (p.size // p.c))
    if isinstance(p, P.Union):
        return P.union(*(_with_offset(m, offset) for m in p.members))
    return p


def _has_summary(p: P.Pattern) -> bool:
    return any(isinstance(q, P.Summary) for q in p.parts())


def layer_patterns(cfg: ModelConfig) -> list[list[P.Pattern]]:
    """Per layer, per head: the pattern that head attends with. Raises ValueError for a bad
    pattern, mode, layer list or head count (the message names the value and the allowed set)."""
    if cfg.mode not in MODES:
        raise ValueError(f"unknown mode {cfg.mode!r}; choose from {', '.join(MODES)}")
    layers_spec = cfg.layers.strip() if isinstance(cfg.layers, str) else cfg.layers
    if layers_spec and cfg.mode != "interleaved":
        raise ValueError(
            f"layers={cfg.layers!r} is only used by mode 'interleaved', not {cfg.mode!r}; "
            "leave it empty"
        )
    H = cfg.n_head
    if cfg.mode == "interleaved" and layers_spec:
        names = [s.strip() for s in str(layers_spec).split(",")]
        for s in names:
            if s not in COMPONENT_NAMES:
                raise ValueError(
                    f"unknown layer component {s!r} in layers={cfg.layers!r}; "
                    f"choose from {', '.join(COMPONENT_NAMES)}"
                )
        comps = tuple(_component(s, cfg.stride, cfg.c) for s in names)
    else:
        comps = _components(cfg)
    p = len(comps)

    table: list[list[P.Pattern]] = []
    for r in range(cfg.n_layer):
        if cfg.mode == "interleaved":
            heads = [comps[r % p]] * H
        elif cfg.mode == "merged":
            heads = [P.union(*comps)] * H
        else:  # multihead
            if H % p:
                raise ValueError(
                    f"mode 'multihead' splits n_head={H} evenly among the {p} components of "
                    f"pattern {cfg.pattern!r}; n_head must be a multiple of {p}"
                )
            heads = [comps[h * p // H] for h in range(H)]
        if cfg.head_offsets:
            rank = 0
            for h, hp in enumerate(heads):
                if _has_summary(hp):
                    heads[h] = _with_offset(hp, rank)
                    rank += 1
        table.append(heads)

    # Intern: one object per distinct pattern, so plans cached on it are shared across layers.
    seen: dict[P.Pattern, P.Pattern] = {}
    return [[seen.setdefault(hp, hp) for hp in heads] for heads in table]


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
        """The sparse attention kernel on (B, H, T, ·) tensors; scale 1/sqrt(per-head q/k dim).

        Under autocast, q, k and v arrive in the autocast dtype and the kernel runs with autocast
        off: the kernels choose their own precision (float32 softmax statistics), and autocast
        would otherwise recast their internal float32 products."""
        device_type = q.device.type
        if torch.is_autocast_enabled(device_type):
            with torch.autocast(device_type=device_type, enabled=False):
                return keyed_attention(q, k, v, self.pattern_key)
        return keyed_attention(q, k, v, self.pattern_key)

    def forward(self, x: torch.Tensor, attend: Attend | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        q, k, v = self.project(x)
        y = (attend or self.attend)(q, k, v)  # (B, H, T, d/H)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, self.d_model))
