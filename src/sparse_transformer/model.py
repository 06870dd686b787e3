"""The Sparse Transformer model (spec section 5). Reads top to bottom.

    idx (B, T) bytes
      -> token embedding + factorized position embeddings (one table per data dimension)
      -> N pre-activation residual blocks:   x = x + drop(attn(ln1(x)));  x = x + drop(mlp(ln2(x)))
      -> final LayerNorm -> W_out -> logits (B, T, 256)

``logits[:, t]`` predicts the byte that follows ``idx[:, t]``; the data layer supplies the targets
(the next bytes) and, for images, the start byte in front. Any length 1 <= T <= ctx works.

Infrastructure (recomputation, autocast, DDP/FSDP, compile) is applied from outside through
``model.blocks``; the model knows nothing of it. Cached sampling lives in ``sample.py``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import nn

from .attention import Attend, SparseSelfAttention
from .kernels import BACKENDS
from .patterns import Pattern, layer_patterns

INITS = ("paper", "gpt2")

log = logging.getLogger(__name__)

__all__ = ["MLP", "Block", "ModelConfig", "SparseTransformer"]


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 256
    ctx: int = 1024  # context length in tokens (bytes)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    pattern: str = "fixed"  # dense | strided | fixed (| local)
    stride: int = 32  # l
    c: int = 8  # fixed pattern summary width
    mode: str = "merged"  # interleaved | merged | multihead
    layers: str = ""  # interleaved only: per-layer components, e.g. "local,local,local,strided"
    head_offsets: bool = True  # fixed: head h reads summary sub-block h mod (stride // c)
    half_size: bool = False  # feed-forward 2d instead of 4d, and q/k of half width
    dropout: float = 0.0  # at the end of each residual branch
    data_shape: tuple[int, ...] = ()  # factorized position dims; () = (ceil(ctx/stride), stride)
    backend: str = "auto"  # attention backend for training/eval
    init: str = "paper"  # paper | gpt2 (see SparseTransformer.init_weights)
    zero_logits: bool = False  # W_out starts at zero (the authors' configs); default N(0, 0.02)

    def __post_init__(self):
        # JSON round trips give lists; keep the frozen dataclass hashable.
        if isinstance(self.data_shape, list):
            object.__setattr__(self, "data_shape", tuple(self.data_shape))
        _validate(self)

    @property
    def position_shape(self) -> tuple[int, ...]:
        """The factorized position dimensions: ``data_shape``, or (ceil(ctx/stride), stride)."""
        if self.data_shape:
            return tuple(self.data_shape)
        return (-(-self.ctx // self.stride), self.stride)

    def layer_patterns(self) -> list[list[Pattern]]:
        """Per layer, per head: the pattern that head attends with
        (:func:`~sparse_transformer.patterns.layer_patterns` of this config)."""
        return layer_patterns(
            self.pattern, self.mode, self.layers, self.n_layer, self.n_head, self.stride, self.c,
            self.head_offsets, prefix="model.",
        )  # fmt: skip

    @property
    def ffn_width(self) -> int:
        return (2 if self.half_size else 4) * self.d_model

    @property
    def qk_width(self) -> int:
        return self.d_model // 2 if self.half_size else self.d_model


def _check_int(name: str, value: object, minimum: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"model.{name} must be an integer >= {minimum}, got {value!r}")


def _validate(cfg: ModelConfig) -> None:
    """ValueError naming the bad value and what is allowed; called on every ModelConfig."""
    for name in ("vocab_size", "ctx", "n_layer", "n_head", "d_model", "stride", "c"):
        _check_int(name, getattr(cfg, name))
    if cfg.init not in INITS:
        raise ValueError(f"unknown model.init {cfg.init!r}; choose from {', '.join(INITS)}")
    if cfg.backend not in BACKENDS:
        raise ValueError(
            f"unknown model.backend {cfg.backend!r}; choose from {', '.join(BACKENDS)}"
        )
    if not isinstance(cfg.layers, str):
        raise TypeError(f"model.layers must be a comma-separated string, got {cfg.layers!r}")
    for name in ("head_offsets", "half_size", "zero_logits"):
        if not isinstance(getattr(cfg, name), bool):
            raise TypeError(f"model.{name} must be true or false, got {getattr(cfg, name)!r}")
    if cfg.d_model % cfg.n_head:
        raise ValueError(
            f"model.d_model={cfg.d_model} must be a multiple of model.n_head={cfg.n_head}"
        )
    if cfg.half_size and (cfg.d_model // 2) % cfg.n_head:
        raise ValueError(
            f"half_size q/k width {cfg.d_model // 2} (= d_model/2) must be a multiple of "
            f"model.n_head={cfg.n_head}"
        )
    uses_summary = cfg.pattern == "fixed" or "summary" in cfg.layers
    if uses_summary and cfg.c > cfg.stride:
        raise ValueError(f"model.c={cfg.c} (summary width) must be <= model.stride={cfg.stride}")
    if (
        not isinstance(cfg.dropout, (int, float))
        or isinstance(cfg.dropout, bool)
        or not (0.0 <= cfg.dropout < 1.0)
    ):
        raise ValueError(f"model.dropout must be in [0, 1), got {cfg.dropout!r}")
    if not isinstance(cfg.data_shape, tuple) or any(
        isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in cfg.data_shape
    ):
        raise ValueError(
            f"model.data_shape must be a tuple of positive integers, got {cfg.data_shape!r}"
        )
    if math.prod(cfg.position_shape) < cfg.ctx:
        raise ValueError(
            f"model.ctx={cfg.ctx} exceeds the positions of model.data_shape={cfg.data_shape} "
            f"({math.prod(cfg.position_shape)}); ctx must be <= their product"
        )
    cfg.layer_patterns()  # pattern, mode, layers and head-count combinations


# --------------------------------------------------------------------------------------------
# The residual block
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """ff(x) = W_2 f(W_1 x + b_1) + b_2 with f(x) = x * sigmoid(1.702 x) (the paper's GELU)."""

    def __init__(self, d_model: int, width: int):
        super().__init__()
        self.fc = nn.Linear(d_model, width)  # W_1
        self.proj = nn.Linear(width, d_model)  # W_2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        return self.proj(h * torch.sigmoid(1.702 * h))


class Block(nn.Module):
    """One pre-activation residual block (paper eqs. 12-14); dropout ends each branch."""

    def __init__(self, cfg: ModelConfig, patterns: list[Pattern]):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.attn = SparseSelfAttention(
            cfg.d_model, patterns, qk_width=cfg.qk_width, backend=cfg.backend
        )
        self.ln2 = nn.LayerNorm(cfg.d_model, eps=1e-5)
        self.mlp = MLP(cfg.d_model, cfg.ffn_width)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, attend: Attend | None = None) -> torch.Tensor:
        # ``attend`` swaps the attention kernel (the cached sampler's hook); None in training.
        x = x + self.drop(self.attn(self.ln1(x), attend))
        x = x + self.drop(self.mlp(self.ln2(x)))
        return x


# --------------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------------


class SparseTransformer(nn.Module):
    """``SparseTransformer(cfg)(idx)``: (B, T) int64 bytes -> (B, T, vocab) next-byte logits."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        if not isinstance(cfg, ModelConfig):
            raise TypeError(f"SparseTransformer takes a ModelConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        d = cfg.d_model
        self.data_shape = cfg.position_shape
        self.wte = nn.Embedding(cfg.vocab_size, d)  # W_e
        self.wpe = nn.ModuleList(nn.Embedding(s, d) for s in self.data_shape)  # W_1 .. W_n_emb
        self.blocks = nn.ModuleList(Block(cfg, pats) for pats in cfg.layer_patterns())
        self.ln_f = nn.LayerNorm(d, eps=1e-6)
        self.lm_head = nn.Linear(d, cfg.vocab_size, bias=False)  # W_out (paper eq. 11: no bias)
        self.init_weights()
        log.debug(
            "SparseTransformer: %d layers, %d heads, d %d, ctx %d, %s/%s, %.2fM parameters",
            cfg.n_layer, cfg.n_head, d, cfg.ctx, cfg.pattern, cfg.mode, self.num_params() / 1e6,
        )  # fmt: skip

    @torch.no_grad()
    def init_weights(self) -> None:
        """Initialisation (spec section 5.3).

        * Attention and feed-forward weights: N(0, variance 0.125 / fan_in), biases 0 (the
          authors' code; the paper's "N(0, 0.125/sqrt(d_in))" is ambiguous between std and
          variance). W_p and W_2 additionally x 1/(2N) in variance (std x 1/sqrt(2N)).
        * Embeddings: we read the paper's N(0, 0.125/sqrt(d)) for W_e and
          N(0, 0.125/sqrt(d * n_emb)) for each position table as *standard deviations*
          (0.0078 for d = 256, next to the authors' code's 0.01 / 0.013); the variance reading
          would give 0.09, an order of magnitude off the code.
        * W_out: N(0, 0.02) under both schemes. The authors' released configs start it at zero
          (``logits_w = 0``: a uniform first prediction, loss ln 256); ``cfg.zero_logits`` keeps
          that as an option. A zero W_out gets a gradient only through the final LayerNorm's
          output, while every other weight's gradient passes through W_out and is zero on the
          first update; on byte-level text it held the fixed pattern near 3.15 bits/byte where a
          N(0, 0.02) W_out reaches 1.53 (docs/reproduction.md). LayerNorms: gain 1, bias 0.

        ``cfg.init = "gpt2"`` instead draws every weight and embedding with std 0.02 and W_p, W_2
        with 0.02 / sqrt(2N) (GPT-2's scheme: the same 1/sqrt(2N) residual scaling, larger
        embeddings). On byte-level text it leaves the early loss plateau sooner
        (docs/reproduction.md).
        """
        d, n_layer = self.cfg.d_model, self.cfg.n_layer
        gpt2 = self.cfg.init == "gpt2"
        nn.init.normal_(self.wte.weight, std=0.02 if gpt2 else 0.125 / math.sqrt(d))
        for table in self.wpe:
            nn.init.normal_(table.weight, std=0.02 if gpt2 else 0.125 / math.sqrt(d * len(self.wpe)))
        for block in self.blocks:
            for lin, extra in (
                (block.attn.in_proj, 1.0),
                (block.attn.out_proj, 2 * n_layer),
                (block.mlp.fc, 1.0),
                (block.mlp.proj, 2 * n_layer),
            ):
                std = 0.02 / math.sqrt(extra) if gpt2 else math.sqrt(0.125 / (lin.in_features * extra))
                nn.init.normal_(lin.weight, std=std)
                nn.init.zeros_(lin.bias)
            for ln in (block.ln1, block.ln2):
                nn.init.ones_(ln.weight)
                nn.init.zeros_(ln.bias)
        nn.init.ones_(self.ln_f.weight)
        nn.init.zeros_(self.ln_f.bias)
        if self.cfg.zero_logits:
            nn.init.zeros_(self.lm_head.weight)
        else:
            nn.init.normal_(self.lm_head.weight, std=0.02)

    def embed(self, idx: torch.Tensor, start: int = 0) -> torch.Tensor:
        """h_0 = x W_e + sum_j o^(j) W_j (paper eq. 15) for tokens at positions start.. (B, T, d)."""
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2:
            shape = tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__
            raise ValueError(f"idx must be a (batch, time) tensor of token ids, got {shape}")
        if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
            raise ValueError(f"idx must hold integer token ids, got dtype {idx.dtype}")
        T = idx.shape[1]
        if T < 1 or start < 0 or start + T > self.cfg.ctx:
            raise ValueError(
                f"positions {start}..{start + T - 1} are outside the context 0..{self.cfg.ctx - 1} "
                f"(sequence length must be 1..ctx={self.cfg.ctx})"
            )
        x = self.wte(idx)
        coords = self.position_coords(start, T, idx.device)
        for j, table in enumerate(self.wpe):
            x = x + table(coords[:, j])
        return x

    def position_coords(
        self, start: int, length: int, device: torch.device | str | None = None
    ) -> torch.Tensor:
        """(length, n_emb) row-major coordinates of positions start.. in ``data_shape``
        (text: (i // stride, i % stride); images: (row, column, channel))."""
        pos = torch.arange(start, start + length, device=device)
        return torch.stack(torch.unravel_index(pos, self.data_shape), dim=1)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Final LayerNorm and W_out: (B, T, d) -> (B, T, vocab)."""
        return self.lm_head(self.ln_f(x))

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        return self.logits(x)

    # ----------------------------------------------------------------------------------------

    def layer_patterns(self) -> list[list[Pattern]]:
        """Per layer, per head: the pattern each head attends with."""
        return [list(block.attn.patterns) for block in self.blocks]

    def num_params(self, exclude_embeddings: bool = False) -> int:
        """Number of parameters (optionally without the token and position tables)."""
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            n -= self.wte.weight.numel() + sum(t.weight.numel() for t in self.wpe)
        return n
