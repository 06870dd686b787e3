"""``torch.compile``, applied from outside the model (``train.compile``, ``train.compile_mode``).

The attention is one registered operator (:mod:`sparse_transformer.kernels.op`), so Dynamo traces
a residual block without a graph break and Inductor fuses everything around the attention node
(LayerNorms, residual adds, dropout, GELU, casts). :func:`apply_compile` compiles each block's
forward on its own: blocks share their code, so a model compiles once per distinct attention
pattern (one block for merged heads, p for interleaved patterns) instead of once per layer, and
compile time stays that of one block whatever the depth. Module hooks (DDP, FSDP2) stay outside
the compiled code and parameter names do not change, so checkpoints are the same either way.
The embedding and the output layer stay eager (a few kernels per step).

``train.compile``: ``auto`` (compile on CUDA; on the CPU Inductor's compile time outweighs what it
saves on short runs), ``true`` or ``false``. The compile happens at the first step; the trainer
logs how long that step took.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["COMPILE", "COMPILE_MODES", "apply_compile", "should_compile", "uses_cuda_graphs"]

COMPILE = ("auto", "true", "false")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def should_compile(setting: str, device: torch.device | str) -> bool:
    """Whether ``train.compile`` = ``setting`` compiles on ``device``."""
    if setting not in COMPILE:
        raise ValueError(f"unknown train.compile {setting!r}; choose from {', '.join(COMPILE)}")
    if setting == "auto":
        return torch.device(device).type == "cuda"
    return setting == "true"


def uses_cuda_graphs(mode: str) -> bool:
    """Whether a compile mode captures CUDA graphs (the trainer then marks each step's start)."""
    return mode in ("reduce-overhead", "max-autotune")


def apply_compile(model: nn.Module, mode: str = "default") -> nn.Module:
    """Compile every residual block's forward (``fullgraph=True``: a graph break is an error).
    Apply after recomputation and before DDP/FSDP wrapping; idempotent."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown train.compile_mode {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("compiling needs a model with a .blocks ModuleList of residual blocks")
    # Static shapes: training steps have one shape; evaluation's few others compile once each.
    options = {"fullgraph": True, "dynamic": False}
    if mode != "default":
        options["mode"] = mode
    for block in blocks:
        if getattr(block, "_compiled", False):
            continue
        block.forward = torch.compile(block.forward, **options)
        block._compiled = True
    log.info("compiling %d residual blocks (mode %s) at the first step", len(blocks), mode)
    return model
