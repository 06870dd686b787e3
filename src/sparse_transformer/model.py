"""The Sparse Transformer model (spec section 5). Reads top to bottom.

(Being written: the ModelConfig below is the contract other modules code against.)
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 256
    ctx: int = 1024  # context length in tokens (bytes)
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    pattern: str = "fixed"  # dense | strided | fixed
    stride: int = 32  # l
    c: int = 8  # fixed pattern summary width
    mode: str = "merged"  # interleaved | merged | multihead
    layers: str = ""  # interleaved only: explicit per-layer components, e.g. "local,local,local,strided"
    head_offsets: bool = True  # fixed: head h reads summary sub-block h mod (stride // c)
    half_size: bool = False  # feed-forward 2d instead of 4d, and q/k of half width
    dropout: float = 0.0  # at the end of each residual branch
    data_shape: tuple[int, ...] = ()  # factorized position dims; () = (ceil(ctx/stride), stride)
    backend: str = "auto"  # attention backend for training/eval
