"""``torch.compile``, applied from outside the model (``train.compile``, ``train.compile_mode``).

The attention is one registered operator (:mod:`sparse_transformer.kernels.op`), so Dynamo traces
a residual block without a graph break and Inductor fuses everything around the attention node
(LayerNorms, residual adds, dropout, GELU, casts). :func:`apply_compile` compiles each block's
forward on its own: blocks share their code, so a model compiles once per distinct attention
pattern (one block for merged heads, p for interleaved patterns) instead of once per layer, and
compile time stays that of one block whatever the depth. Module hooks (DDP, FSDP2) stay outside
the compiled code and parameter names do not change, so checkpoints are the same either way.
The embedding (``model.embed``) and the output layer (``model.logits``) compile as two more
functions.

``train.compile``: ``auto`` (compile on CUDA; on the CPU Inductor's compile time outweighs what it
saves on short runs), ``true`` or ``false``. The compile happens at the first step; the trainer
logs how long that step took.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["COMPILE", "COMPILE_MODES", "apply_compile", "resolve_compile_mode", "should_compile", "uses_cuda_graphs"]

COMPILE = ("auto", "true", "false")
COMPILE_MODES = ("auto", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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


def _attention_backends(model: nn.Module, device: torch.device) -> set[str]:
    """The backends the model's attention layers run on (``sdpa``: all-dense heads on CUDA)."""
    from .kernels import resolve_backend

    out = set()
    for m in model.modules():
        pk = getattr(m, "pattern_key", None)
        if pk is not None:
            out.add("sdpa" if pk.uses_sdpa(device) else resolve_backend(pk.backend, device))
    return out


def resolve_compile_mode(mode: str, model: nn.Module, recompute: bool = False, distributed: str = "none",
                         micro_batches: bool = False) -> str:
    """``train.compile_mode`` with ``auto`` resolved: ``reduce-overhead`` (CUDA graphs of each
    block's forward and backward) on CUDA when every attention layer runs on the Triton kernels or
    SDPA, without recomputation, a data-parallel wrapper or gradient accumulation
    (``micro_batches``) (the measured case: enwik8 preset at
    batch 2 on the H200, 84-90 against 88-108 ms per step, docs/training-step.md); ``default``
    otherwise. Other modes are returned as they are."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown train.compile_mode {mode!r}; choose from {', '.join(COMPILE_MODES)}")
    if mode != "auto":
        return mode
    device = next(model.parameters()).device
    if device.type != "cuda" or recompute or distributed != "none" or micro_batches:
        return "default"
    return "reduce-overhead" if _attention_backends(model, device) <= {"triton", "sdpa"} else "default"


def apply_compile(model: nn.Module, mode: str = "default", seq_len: int | None = None) -> nn.Module:
    """Compile every residual block's forward (``fullgraph=True``: a graph break is an error).
    Apply after recomputation and before DDP/FSDP wrapping, the model on its device; idempotent.
    With CUDA graphs, the attention routes for ``seq_len`` (default: the model's ``cfg.ctx``) are
    built first, outside any graph."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("compiling needs a model with a .blocks ModuleList of residual blocks")
    recompute = any(getattr(block, "_recompute", False) for block in blocks)
    mode = resolve_compile_mode(mode, model, recompute)
    device = next(model.parameters()).device
    if uses_cuda_graphs(mode) and device.type == "cuda" and "torch" in _attention_backends(model, device):
        raise ValueError(f"train.compile_mode={mode} captures CUDA graphs, which the torch attention backend "
                         "cannot run in (it reads tile counts on the host); use model.backend=triton or "
                         "train.compile_mode=default")
    # Static shapes: training steps have one shape; evaluation's few others compile once each.
    options = {"fullgraph": True, "dynamic": False}
    if mode != "default":
        options["mode"] = mode
    for block in blocks:
        if getattr(block, "_compiled", False):
            continue
        block.forward = torch.compile(block.forward, **options)
        block._compiled = True
    if hasattr(model, "embed") and hasattr(model, "logits") and not getattr(model, "_ends_compiled", False):
        model.embed = torch.compile(model.embed, **options)
        model.logits = torch.compile(model.logits, **options)
        model._ends_compiled = True
    model.compile_mode = mode  # resolved: the trainer marks CUDA-graph steps from it
    if seq_len is None and hasattr(model, "cfg"):
        seq_len = model.cfg.ctx  # the training length of a SparseTransformer
    if uses_cuda_graphs(mode) and seq_len:
        from .kernels import prepare_route

        for m in model.modules():
            if hasattr(m, "pattern_key"):
                prepare_route(m.pattern_key, m.n_head, seq_len, device)
    log.info("compiling %d residual blocks (mode %s) at the first step", len(blocks), mode)
    return model
