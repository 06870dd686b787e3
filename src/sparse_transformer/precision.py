"""Mixed precision and recomputation, applied from outside the model (spec sections 6 and 7).

* ``train.precision`` = ``fp32`` | ``bf16`` | ``fp16``: the weights (and the optimizer) stay float32;
  the forward and backward run under autocast in the chosen dtype. ``fp16`` adds dynamic loss
  scaling (:class:`DynamicLossScaler`): the loss is multiplied by a scale before backward; a step
  whose gradients hold inf/NaN is skipped and the scale halved; after ``growth_interval`` clean
  steps in a row the scale doubles (the blocksparse example's rule).
* ``train.recompute``: :func:`apply_recompute` makes every residual block of ``model.blocks``
  recompute its forward pass during backward (only the residual stream is stored, as in the
  paper's Figure 4). Dropout masks match between the forward and the recomputed forward because
  the RNG state is saved and restored around the recomputation. For long inputs the block's
  position-wise feed-forward network additionally runs in chunks of at most
  :data:`FF_CHUNK_TOKENS` tokens, each recomputed on its own, so its 4d-wide hidden activations
  exist for one chunk at a time rather than for the whole sequence (at 1M tokens they would
  otherwise be the largest tensors of the step). Chunking changes no result: the feed-forward
  network acts on every position separately.
"""

from __future__ import annotations

import contextlib
import logging
import math
import types

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.checkpoint import checkpoint

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_dtype(precision: str) -> torch.dtype:
    """The activation dtype of a ``train.precision`` name, or ValueError."""
    if precision not in PRECISIONS:
        raise ValueError(
            f"unknown train.precision {precision!r}; choose from {', '.join(PRECISIONS)}"
        )
    return PRECISIONS[precision]


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """The autocast context for a forward pass (a no-op for fp32)."""
    dtype = compute_dtype(precision)
    device_type = torch.device(device).type
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=dtype)


# --------------------------------------------------------------------------------------------
# Recomputation
# --------------------------------------------------------------------------------------------


def _recomputed_forward(self: nn.Module, *args, **kwargs):
    """``type(self).forward`` checkpointed. Bound to each block as a method (not a closure over
    the block), so every block shares this code and ``torch.compile`` compiles it once."""
    forward = type(self).forward
    if not torch.is_grad_enabled():
        return forward(self, *args, **kwargs)
    return checkpoint(forward, self, *args, use_reentrant=False, preserve_rng_state=True, **kwargs)


#: Tokens per feed-forward chunk under recomputation (inputs with more tokens are chunked).
FF_CHUNK_TOKENS = 1 << 16


def _chunked_ff_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A position-wise ``type(self).forward`` over ``x`` (..., d) in chunks of FF_CHUNK_TOKENS
    positions, each checkpointed (only its input, a view, is kept; the hidden layer is
    recomputed)."""
    forward = type(self).forward
    n = x.numel() // x.shape[-1]
    if not torch.is_grad_enabled() or n <= FF_CHUNK_TOKENS:
        return forward(self, x)
    flat = x.reshape(n, x.shape[-1])
    outs = [
        checkpoint(forward, self, part, use_reentrant=False, preserve_rng_state=True)
        for part in flat.split(FF_CHUNK_TOKENS)
    ]
    out = torch.cat(outs)
    return out.view(*x.shape[:-1], out.shape[-1])


def apply_recompute(model: nn.Module) -> nn.Module:
    """Recompute each residual block in the backward pass (and chunk long feed-forward passes,
    see the module notes). Parameter names do not change, so checkpoints are the same with and
    without it. Apply before compiling and before FSDP wrapping."""
    blocks = getattr(model, "blocks", None)
    if blocks is None:
        raise ValueError("recomputation needs a model with a .blocks ModuleList of residual blocks")
    for block in blocks:
        if getattr(block, "_recompute", False):
            continue
        mlp = getattr(block, "mlp", None)
        if isinstance(mlp, nn.Module):
            mlp.forward = types.MethodType(_chunked_ff_forward, mlp)
        block.forward = types.MethodType(_recomputed_forward, block)
        block._recompute = True
    return model


# --------------------------------------------------------------------------------------------
# Dynamic loss scaling
# --------------------------------------------------------------------------------------------


def _local(t: torch.Tensor) -> torch.Tensor:
    """The local shard of a DTensor (FSDP2 gradients), or the tensor itself."""
    return t.to_local() if hasattr(t, "to_local") else t


class DynamicLossScaler:
    """fp16 loss scaling that works the same for plain, DDP and FSDP2 models.

    Use: ``scaler.scale(loss).backward()``; ``ok = scaler.unscale_(params)`` (divides the
    gradients by the scale and checks them, agreeing across ranks); clip; ``if ok: opt.step()``;
    ``scaler.update(ok)``. With ``enabled=False`` every call is a no-op that returns ok.
    """

    def __init__(
        self,
        enabled: bool = True,
        init_scale: float = 2.0**16,
        growth_interval: int = 1000,
        factor: float = 2.0,
        min_scale: float = 1.0,
    ):
        self.enabled = enabled
        self.scale_value = float(init_scale)
        self.growth_interval = int(growth_interval)
        self.factor = float(factor)
        self.min_scale = float(min_scale)
        self.good_steps = 0
        self.skipped = 0

    def scale(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.scale_value if self.enabled else loss

    def unscale_(self, params) -> bool:
        """Divide gradients by the scale in place; True when every gradient is finite."""
        if not self.enabled:
            return True
        grads = [_local(p.grad) for p in params if p.grad is not None]
        if not grads:
            return True
        inv = 1.0 / self.scale_value
        bad = torch.zeros((), device=grads[0].device)
        for g in grads:
            g.mul_(inv)
            bad += (~torch.isfinite(g)).any().float()
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(bad, op=dist.ReduceOp.MAX)
        return bool(bad.item() == 0)

    def update(self, ok: bool) -> None:
        if not self.enabled:
            return
        if not ok:
            self.scale_value = max(self.min_scale, self.scale_value / self.factor)
            self.good_steps = 0
            self.skipped += 1
            log.warning(
                "non-finite gradients: step skipped, loss scale lowered to %g", self.scale_value
            )
            return
        self.good_steps += 1
        if self.good_steps % self.growth_interval == 0:
            self.scale_value *= self.factor

    def state_dict(self) -> dict:
        return {
            "scale": self.scale_value,
            "good_steps": self.good_steps,
            "skipped": self.skipped,
        }

    def load_state_dict(self, state: dict) -> None:
        self.scale_value = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped = int(state.get("skipped", 0))


def check_finite_loss(loss: torch.Tensor | float, step: int) -> None:
    """Stop on a non-finite loss (a scalar tensor or a number) with a clear message (the last good
    checkpoint stays)."""
    value = float(loss)
    if not math.isfinite(value):
        raise FloatingPointError(
            f"loss is {value} at step {step}: training stopped; the last good checkpoint is kept "
            "(try a lower train.lr, train.precision=bf16, or resume from the checkpoint)"
        )
