"""Bits per byte over a whole split, with the paper's minimum-context procedure (Table 3).

With context ``ctx`` and minimum context ``M``, windows of ``ctx`` inputs advance by ``ctx - M``;
the first window scores all of its targets, every later window scores only the targets it has not
seen, i.e. its last ``ctx - M`` columns, so each of those is predicted from at least ``M + 1``
bytes of context. Every target of the split is scored exactly once (the window plan is the data
layer's :meth:`~sparse_transformer.data.ByteDataset.eval_windows`). ``M = 0`` gives
non-overlapping windows; larger ``M`` costs ``ctx / (ctx - M)`` times more compute.

bits per byte = (sum over scored targets of -ln p(target)) / ln 2 / (number of scored targets)
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

log = logging.getLogger(__name__)

__all__ = ["bits_per_byte", "estimate_loss", "evaluate"]

LN2 = math.log(2.0)


def bits_per_byte(loss_nats: float) -> float:
    return loss_nats / LN2


def _model_ctx(model: torch.nn.Module) -> int:
    m = model
    while not hasattr(m, "cfg") and hasattr(m, "module"):
        m = m.module
    cfg = getattr(m, "cfg", None)
    if cfg is None or not hasattr(cfg, "ctx"):
        raise ValueError("pass ctx= for a model without a .cfg.ctx")
    return int(cfg.ctx)


def _device(model: torch.nn.Module) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _autocast(precision: str, device: torch.device):
    from .precision import autocast

    return autocast(precision, device)


def _all_reduce_sum(*values: float, device: torch.device) -> list[float]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


@torch.no_grad()
def evaluate(
    model: torch.nn.Module,
    dataset: Any,
    *,
    min_context: int = 0,
    batch_size: int = 8,
    progress: bool = True,
    ctx: int | None = None,
    precision: str = "fp32",
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Bits per byte of ``model`` over every target of ``dataset`` (a ByteDataset split).

    Args:
        model: maps (B, ctx) LongTensor -> (B, ctx, 256) logits; its ``cfg.ctx`` is the window
            length unless ``ctx`` is given. Run in eval mode (restored afterwards).
        min_context: M of the paper's Table 3 (0 <= M < ctx).
        batch_size: windows per forward pass.
        precision: fp32 | bf16 | fp16 autocast for the forward pass (the loss is summed in fp32).
        rank, world_size: under a process group each rank scores windows rank, rank + W, ... and
            the sums are all-reduced.
    Returns:
        ``{"bits_per_byte", "loss" (nats per byte), "tokens", "windows", "seconds", "min_context",
        "ctx"}``.
    """
    ctx = _model_ctx(model) if ctx is None else int(ctx)
    if isinstance(min_context, bool) or not isinstance(min_context, int):
        raise TypeError(f"min_context must be an integer, got {min_context!r}")
    if not 0 <= min_context < ctx:
        raise ValueError(f"min_context must be in 0..{ctx - 1} (ctx={ctx}), got {min_context}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    device = _device(model)
    n_windows = -(-len(dataset.eval_windows(ctx, min_context)[rank::world_size]) // batch_size)
    was_training = model.training
    model.eval()
    total_nats, total_tokens, windows = 0.0, 0, 0
    t0 = time.perf_counter()
    try:
        batches = dataset.iter_eval_windows(
            ctx, min_context, batch_size, rank=rank, world_size=world_size
        )
        for x, y, mask in tqdm(
            batches, total=n_windows, disable=not progress, desc="eval", unit="batch"
        ):
            x, y, mask = x.to(device), y.to(device), mask.to(device)
            with _autocast(precision, device):
                logits = model(x)
            nll = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none"
            ).view_as(y)
            total_nats += float(nll[mask].double().sum())
            total_tokens += int(mask.sum())
            windows += x.shape[0]
    finally:
        model.train(was_training)
    total_nats, total_tokens_f, windows_f = _all_reduce_sum(
        total_nats, float(total_tokens), float(windows), device=device
    )
    total_tokens, windows = int(total_tokens_f), int(windows_f)
    if total_tokens == 0:
        raise ValueError(f"split {getattr(dataset, 'split', '?')!r} has no bytes to evaluate")
    loss = total_nats / total_tokens
    seconds = time.perf_counter() - t0
    log.info(
        "eval %s: %.4f bits/byte over %s bytes (ctx %d, min context %d, %d windows, %.1f s)",
        getattr(dataset, "split", "?"),
        bits_per_byte(loss),
        f"{total_tokens:,}",
        ctx,
        min_context,
        windows,
        seconds,
    )
    return {
        "bits_per_byte": bits_per_byte(loss),
        "loss": loss,
        "tokens": total_tokens,
        "windows": windows,
        "seconds": seconds,
        "min_context": min_context,
        "ctx": ctx,
    }


@torch.no_grad()
def estimate_loss(
    model: torch.nn.Module,
    dataset: Any,
    *,
    batches: int,
    batch_size: int,
    ctx: int,
    seed: int = 0,
    precision: str = "fp32",
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, Any]:
    """Mean loss on ``batches`` random windows of a split, drawn from a generator seeded with
    ``seed`` (the same windows every call, independent of the training RNG): the cheap periodic
    validation of training. ``batch_size`` is global, as in ``get_batch``."""
    device = _device(model)
    g = torch.Generator().manual_seed(seed)
    was_training = model.training
    model.eval()
    total, n = 0.0, 0
    t0 = time.perf_counter()
    try:
        for _ in range(batches):
            x, y = dataset.get_batch(batch_size, ctx, g, rank=rank, world_size=world_size)
            x, y = x.to(device), y.to(device)
            with _autocast(precision, device):
                logits = model(x)
            nll = F.cross_entropy(
                logits.float().reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="sum"
            )
            total += float(nll)
            n += y.numel()
    finally:
        model.train(was_training)
    total, n_f = _all_reduce_sum(total, float(n), device=device)
    loss = total / n_f
    return {
        "bits_per_byte": bits_per_byte(loss),
        "loss": loss,
        "tokens": int(n_f),
        "seconds": time.perf_counter() - t0,
    }
