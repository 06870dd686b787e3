"""Training: a plain loop with AdamW, warm-up + cosine decay, clipping, validation, checkpoints.

    from sparse_transformer.config import get_preset
    from sparse_transformer.train import train
    metrics = train(get_preset("tiny-cpu"), "runs/tiny")          # -> {"val_bpb": ..., ...}
    metrics = train(cfg, "runs/tiny", resume=True)                 # continue where it stopped

The pieces, in the order ``train`` uses them (each usable alone):

* :func:`build_model` seeds torch and builds the bare :class:`SparseTransformer`;
* :func:`apply_infrastructure` applies what lives outside the model, one config flag each:
  recomputation (``train.recompute``, :func:`~sparse_transformer.precision.apply_recompute`),
  compilation (``train.compile``, :func:`~sparse_transformer.compilation.apply_compile`) and
  data parallelism (``train.distributed``, :func:`~sparse_transformer.distributed.apply_parallel`);
  mixed precision (``train.precision``) is an autocast around the forward pass plus a loss scaler;
* :func:`configure_optimizer`: AdamW, decoupled weight decay on tensors of rank >= 2 only;
* :func:`lr_at`: linear warm-up to ``train.lr`` over ``train.warmup`` updates, then cosine decay
  to 0 at ``train.max_steps`` (spec section 8.1).

Determinism: everything is seeded from ``train.seed``; training windows come from a
``torch.Generator`` whose state, with the python/numpy/torch RNG states, the optimizer and the
loss scaler, is saved in every checkpoint, so ``resume=True`` continues bit for bit (a run of 20
updates equals 10 updates, a stop, and 10 resumed ones). Validation draws from its own generator,
seeded afresh each time, so when and how often it runs never changes the training trajectory.

Output: ``out_dir/metrics.jsonl`` (one JSON object per log or eval event) and checkpoints
(:mod:`sparse_transformer.checkpoint`). Rank 0 logs, writes metrics and checkpoints; every rank
takes part in validation and in gathering the state to save.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import checkpoint as C
from . import distributed as D
from .compilation import apply_compile, resolve_compile_mode, should_compile, uses_cuda_graphs
from .config import Config, config_to_dict
from .evaluate import bits_per_byte, estimate_loss, evaluate
from .model import SparseTransformer
from .precision import DynamicLossScaler, apply_recompute, autocast, check_finite_loss

log = logging.getLogger(__name__)

__all__ = [
    "DataNotPreparedError",
    "apply_infrastructure",
    "build_model",
    "configure_optimizer",
    "lr_at",
    "open_dataset",
    "resolve_device",
    "seed_everything",
    "train",
]

METRICS_FILE = "metrics.jsonl"


class DataNotPreparedError(FileNotFoundError):
    """The dataset a config names has not been prepared; the message says how to prepare it."""


# --------------------------------------------------------------------------------------------
# Pieces
# --------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; anything else as given (checked)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"unknown device {name!r}; choose from auto, cpu, cuda, cuda:N, mps")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} needs CUDA, which is not available; use cpu or auto")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {name!r} needs MPS, which is not available; use cpu or auto")
    return dev


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(cfg: Config) -> SparseTransformer:
    """The bare model, initialised from ``train.seed`` (the same weights on every rank)."""
    seed_everything(cfg.train.seed)
    return SparseTransformer(cfg.model)


def apply_infrastructure(model: nn.Module, cfg: Config, info: D.DistInfo) -> nn.Module:
    """Recomputation, compilation, then the data-parallel wrapper: the only places the model is
    changed."""
    if cfg.train.recompute:
        model = apply_recompute(model)
    t = cfg.train
    if should_compile(t.compile, info.device):
        accumulates = 0 < t.micro_batch_size < t.batch_size // info.world_size  # several passes a step
        mode = resolve_compile_mode(t.compile_mode, model, t.recompute, t.distributed, accumulates)
        model = apply_compile(model, mode, cfg.model.ctx)
    return D.apply_parallel(model, cfg.train.distributed, info)


def configure_optimizer(model: nn.Module, t) -> torch.optim.AdamW:
    """AdamW with weight decay ``t.weight_decay`` on tensors of rank >= 2 (matrices and
    embeddings) and none on biases and LayerNorm gains."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [
        {"params": decay, "weight_decay": t.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused CUDA kernel: one launch for all parameters instead of a few per tensor.
    fused = all(p.is_cuda for g in groups for p in g["params"])
    return torch.optim.AdamW(groups, lr=t.lr, betas=(t.beta1, t.beta2), eps=t.eps, fused=fused)


def lr_at(update: int, t) -> float:
    """Learning rate of update ``update`` (1-based): ``lr * update / warmup`` during warm-up,
    then ``lr * (1 + cos(pi * (update - warmup) / (max_steps - warmup))) / 2``, 0 at the end."""
    if t.warmup and update <= t.warmup:
        return t.lr * update / t.warmup
    if t.max_steps <= t.warmup:
        return t.lr
    progress = min(1.0, (update - t.warmup) / (t.max_steps - t.warmup))
    return t.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def dataset_dir(cfg: Config) -> Path:
    return Path(cfg.data.data_dir) / cfg.data.dataset


def open_dataset(cfg: Config, split: str):
    """The ``split`` of the prepared dataset ``data.dataset``; DataNotPreparedError (with the
    prepare command to run) when it is not there."""
    from .data import ByteDataset

    d = dataset_dir(cfg)
    if not (d / "meta.json").is_file():
        raise DataNotPreparedError(
            f"dataset {cfg.data.dataset!r} is not prepared in {cfg.data.data_dir}/: run "
            f"`sparse-transformer prepare {cfg.data.dataset} --data-dir {cfg.data.data_dir}` first"
        )
    return ByteDataset(d, split)


# --------------------------------------------------------------------------------------------
# Metrics file
# --------------------------------------------------------------------------------------------


def _truncate_metrics(path: Path, step: int) -> None:
    """Keep only complete events up to ``step``, the step training starts from (a killed run may
    have written more: after its last checkpoint, or before its first one, ``step`` 0)."""
    if not path.is_file():
        return
    keep, dropped = [], 0
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            dropped += bool(line.strip())
            continue
        at = ev.get("step", 0) if isinstance(ev, dict) else None
        if isinstance(at, int) and at <= step:
            keep.append(json.dumps(ev))
        else:
            dropped += 1
    if dropped:
        log.info("%s: dropped %d event(s) past step %d (from a killed run)", path, dropped, step)
        C.atomic_write(path, "".join(k + "\n" for k in keep))


def _log_schedule_change(saved: Config | None, cfg: Config, step: int) -> None:
    """Say what a resume with another max_steps / warmup / lr does to the learning rate."""
    if saved is None or step >= cfg.train.max_steps:
        return
    old, new = saved.train, cfg.train
    if (old.max_steps, old.warmup, old.lr) == (new.max_steps, new.warmup, new.lr):
        return
    log.warning(
        "schedule changed on resume (train.max_steps %d -> %d): the warm-up + cosine schedule is "
        "recomputed for %d steps, so the learning rate goes from %.2e at step %d to %.2e at "
        "step %d and decays to 0 at step %d",
        old.max_steps, new.max_steps, new.max_steps, lr_at(step, old) if step else 0.0, step,
        lr_at(step + 1, new), step + 1, new.max_steps,
    )  # fmt: skip


class _Metrics:
    """Appends events to ``path`` (opened at the first event: a run refused before its first
    step leaves no file)."""

    def __init__(self, path: Path | None):
        self.path, self.f = path, None

    def write(self, event: dict[str, Any]) -> None:
        if self.path is not None:
            if self.f is None:
                self.f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self.f.write(json.dumps(event) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f is not None:
            self.f.close()


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def _shape_probe(cfg: Config) -> nn.Module:
    """The model of ``cfg`` on the meta device (shapes only, nothing allocated, not logged)."""
    model_log = logging.getLogger(SparseTransformer.__module__)
    level = model_log.level
    model_log.setLevel(logging.WARNING)
    try:
        with torch.device("meta"):
            return SparseTransformer(cfg.model)
    finally:
        model_log.setLevel(level)


def _check_resume_config(saved: Config, cfg: Config, where: Path) -> None:
    if saved.model != cfg.model:
        a, b = config_to_dict(saved)["model"], config_to_dict(cfg)["model"]
        diff = [f"model.{k}: {a[k]!r} -> {b[k]!r}" for k in a if a[k] != b.get(k)]
        raise ValueError(
            f"cannot resume {where} with a different model ({'; '.join(diff)}); "
            "only train.*, data.data_dir and sample.* may change on resume"
        )
    if saved.data.dataset != cfg.data.dataset:
        raise ValueError(
            f"cannot resume {where} on dataset {cfg.data.dataset!r}: it was trained on "
            f"{saved.data.dataset!r}"
        )


def train(
    cfg: Config,
    out_dir: str | Path,
    *,
    resume: bool = False,
    progress: bool = True,
    stop_at: int | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` into the run directory ``out_dir``; return the final metrics.

    Args:
        cfg: the resolved Config (written into every checkpoint and the first log line).
        out_dir: the run directory. Without ``resume`` it must not hold checkpoints yet.
        resume: continue from the latest checkpoint of ``out_dir`` (its optimizer, step, RNG and
            data-generator states) up to ``cfg.train.max_steps``; the model config must match.
            With no checkpoint there yet, training starts from scratch.
        progress: show a tqdm bar.
        stop_at: stop after this many updates (saving a checkpoint) although the schedule runs
            to ``max_steps``; a later ``resume`` carries on as if never stopped.
    Returns:
        ``{"step", "train_loss", "train_bpb", "val_loss", "val_bpb", "best_val_bpb",
        "seconds", "checkpoint"}`` (``None`` where nothing was measured).
    """
    t = cfg.train
    out_dir = Path(out_dir)
    device = None if t.device == "auto" else resolve_device(t.device)
    created_group = not (torch.distributed.is_available() and torch.distributed.is_initialized())
    info = D.init_distributed(t.distributed, device)
    threads = torch.get_num_threads()
    try:
        if t.threads:
            torch.set_num_threads(t.threads)
        with C.lock_run_dir(out_dir, enabled=info.is_main):  # one trainer per run directory
            return _train(cfg, out_dir, info, resume=resume, progress=progress, stop_at=stop_at)
    finally:
        torch.set_num_threads(threads)
        if created_group and info.enabled:
            D.cleanup()


def _train(
    cfg: Config,
    out_dir: Path,
    info: D.DistInfo,
    *,
    resume: bool,
    progress: bool,
    stop_at: int | None,
) -> dict[str, Any]:
    t = cfg.train
    device, main = info.device, info.is_main
    if t.batch_size % info.world_size:
        raise ValueError(
            f"train.batch_size={t.batch_size} must be divisible by the world size {info.world_size}"
        )
    per_rank = t.batch_size // info.world_size
    micro = t.micro_batch_size or per_rank
    if per_rank % micro:
        raise ValueError(
            f"train.micro_batch_size={micro} must divide the per-rank batch {per_rank} "
            f"(train.batch_size={t.batch_size} over {info.world_size} ranks)"
        )
    n_micro = per_rank // micro

    ckpt = C.latest_checkpoint(out_dir)
    if ckpt is not None and not resume:
        raise ValueError(
            f"{out_dir} already holds a run (latest checkpoint {ckpt.name}); pass --resume to "
            "continue it or choose another --out"
        )
    resumed: tuple[dict, dict] | None = None
    saved_cfg = None
    if ckpt is not None:  # read (and check) everything before starting
        saved_cfg = C.load_config(ckpt)
        _check_resume_config(saved_cfg, cfg, ckpt)
        resumed = C.load_model_state(ckpt), C.load_trainer_state(ckpt)
        C.check_state_matches(_shape_probe(cfg), resumed[0], str(ckpt))

    train_ds = open_dataset(cfg, "train")
    val_ds = open_dataset(cfg, "val")
    ctx = cfg.model.ctx

    if main:
        out_dir.mkdir(parents=True, exist_ok=True)
        C.clean_leftovers(out_dir)
    log.info("config %s", json.dumps(config_to_dict(cfg), separators=(",", ":")))

    model = build_model(cfg)
    model.to(device)
    data_gen = torch.Generator().manual_seed(t.seed)
    model = apply_infrastructure(model, cfg, info)
    opt = configure_optimizer(model, t)
    scaler = DynamicLossScaler(enabled=t.precision == "fp16")

    step, best, val = 0, None, None
    if ckpt is not None and resumed is not None:
        state, ts = resumed
        D.load_full_state(model, state, opt, ts["optimizer"])
        C.set_rng_state(ts["rng"], data_gen)
        if "scaler" in ts:
            scaler.load_state_dict(ts["scaler"])
        step, best = int(ts["step"]), ts.get("best_val_bpb")
        log.info("resumed from %s at step %d", ckpt, step)
        _log_schedule_change(saved_cfg, cfg, step)
    if main:  # events a killed run logged after its last checkpoint (or before its first)
        _truncate_metrics(out_dir / METRICS_FILE, step)
    if info.rank:  # distinct dropout masks per rank; rank 0 keeps the single-process stream
        torch.manual_seed(t.seed + 7919 * info.rank + step)

    n_params = D.unwrap(model).num_params()
    log.info(
        "model %.2fM parameters | data %s: train %s B, val %s B | device %s | %d rank(s) | "
        "batch %d x ctx %d = %s tokens/update%s",
        n_params / 1e6,
        cfg.data.dataset,
        f"{len(train_ds):,}",
        f"{len(val_ds):,}",
        device,
        info.world_size,
        t.batch_size,
        ctx,
        f"{t.batch_size * ctx:,}",
        f" ({n_micro} micro-batches of {micro} per rank)" if n_micro > 1 else "",
    )
    metrics_out = _Metrics(out_dir / METRICS_FILE if main else None)
    end = t.max_steps if stop_at is None else min(t.max_steps, stop_at)
    if step >= end:
        log.info("nothing to do: already at step %d (train.max_steps=%d)", step, t.max_steps)

    def validate() -> dict[str, Any]:
        if t.eval_batches:
            # In forward passes of at most `micro` sequences per rank (long sequences): the same
            # windows as whole batches would draw (one generator, consumed in order).
            r = estimate_loss(
                model, val_ds, batches=t.eval_batches * n_micro,
                batch_size=micro * info.world_size, ctx=ctx, seed=t.seed + 1,
                precision=t.precision, rank=info.rank, world_size=info.world_size,
            )  # fmt: skip
        else:
            r = evaluate(
                model, val_ds, batch_size=micro, progress=False, ctx=ctx,
                precision=t.precision, rank=info.rank, world_size=info.world_size,
            )  # fmt: skip
        log.info(
            "eval step %d | val loss %.4f | val bpb %.4f | %.1f s",
            step, r["loss"], r["bits_per_byte"], r["seconds"],
        )  # fmt: skip
        metrics_out.write(
            {"event": "eval", "step": step, "val_loss": r["loss"],
             "val_bpb": r["bits_per_byte"], "tokens": r["tokens"], "seconds": r["seconds"]}
        )  # fmt: skip
        return r

    def save(val_bpb: float | None) -> Path | None:
        nonlocal best
        model_state = D.full_model_state(model)
        opt_state = D.full_optimizer_state(model, opt)
        path = None
        if main:
            ts = {
                "optimizer": opt_state,
                "rng": C.get_rng_state(data_gen),
                "scaler": scaler.state_dict(),
                "best_val_bpb": best,
                "world_size": info.world_size,
            }
            path = C.save_checkpoint(
                out_dir, step, cfg, model_state, ts, val_bpb=val_bpb, keep_last=t.keep_last,
                data=C.data_record(train_ds.meta, train_ds.dir, out_dir),
            )  # fmt: skip
            if val_bpb is not None and (best is None or val_bpb < best):
                best = val_bpb
        D.barrier()
        return path

    model.train()
    compiled, first_step = should_compile(t.compile, device), step
    graphs = compiled and uses_cuda_graphs(getattr(D.unwrap(model), "compile_mode", "default"))
    t_start = time.perf_counter()
    last: dict[str, Any] = {"train_loss": None}
    acc_loss, acc_steps, t_interval = 0.0, 0, time.perf_counter()
    pending: list[tuple[int, torch.Tensor]] = []  # (update, loss) not read back yet
    pin = torch.device(device).type == "cuda"

    def read_losses() -> None:
        """Read back the pending losses in one transfer (no sync per update, so the host runs
        ahead of the GPU) and stop at the first non-finite one: checkpoints are only written
        after this check, so the last one saved stays good."""
        nonlocal acc_loss, acc_steps
        if not pending:
            return
        values = torch.stack([v for _, v in pending]).tolist()
        for (at, _), value in zip(pending, values):
            check_finite_loss(value, at)
        acc_loss += sum(values)
        acc_steps += len(values)
        pending.clear()

    saved_path: Path | None = None
    bar = tqdm(
        total=t.max_steps, initial=step, disable=not (progress and main), desc="train", unit="step"
    )
    try:
        while step < end:
            if graphs:  # CUDA-graph replays of the last step may be overwritten from here on
                torch.compiler.cudagraph_mark_step_begin()
            lr = lr_at(step + 1, t)
            for g in opt.param_groups:
                g["lr"] = lr
            x, y = train_ds.get_batch(t.batch_size, ctx, data_gen, info.rank, info.world_size)
            if pin:  # a copy from pageable memory waits for the GPU; from pinned memory the host runs ahead
                x, y = x.pin_memory(), y.pin_memory()
            loss_sum = torch.zeros((), device=device)
            for m in range(n_micro):
                D.set_gradient_sync(model, m == n_micro - 1)
                xb = x[m * micro : (m + 1) * micro].to(device, non_blocking=True)
                yb = y[m * micro : (m + 1) * micro].to(device, non_blocking=True)
                with autocast(t.precision, device):
                    logits = model(xb)
                loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), yb.reshape(-1))
                scaler.scale(loss / n_micro).backward()
                loss_sum += loss.detach()
            step_loss = D.all_reduce_mean(loss_sum / n_micro)
            pending.append((step + 1, step_loss.detach()))
            ok = scaler.unscale_(model.parameters())
            if t.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            if ok:
                opt.step()
            scaler.update(ok)
            opt.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if compiled and step == first_step + 1:
                read_losses()
                log.info("first step %.1f s (torch.compile of the blocks included)",
                         time.perf_counter() - t_start)  # fmt: skip

            at_end = step == end
            do_ckpt = at_end or (t.ckpt_interval and step % t.ckpt_interval == 0)
            do_eval = do_ckpt or (t.eval_interval and step % t.eval_interval == 0)
            if step % t.log_interval == 0 or do_eval:
                read_losses()
            if step % t.log_interval == 0 or at_end:
                dt = time.perf_counter() - t_interval
                loss_avg = acc_loss / acc_steps
                ms = 1000 * dt / acc_steps
                tok_s = acc_steps * t.batch_size * ctx / dt
                log.info(
                    "step %d | loss %.4f | bpb %.3f | lr %.2e | %.0f ms | %.1fk tok/s%s",
                    step, loss_avg, bits_per_byte(loss_avg), lr, ms, tok_s / 1000,
                    f" | loss scale {scaler.scale_value:g}" if scaler.enabled else "",
                )  # fmt: skip
                event = {
                    "event": "train", "step": step, "loss": loss_avg,
                    "bpb": bits_per_byte(loss_avg), "lr": lr, "ms_per_step": ms,
                    "tokens_per_s": tok_s, "elapsed_s": time.perf_counter() - t_start,
                }  # fmt: skip
                if scaler.enabled:
                    event["loss_scale"] = scaler.scale_value
                metrics_out.write(event)
                bar.set_postfix(loss=f"{loss_avg:.3f}", bpb=f"{bits_per_byte(loss_avg):.2f}")
                last["train_loss"] = loss_avg
                acc_loss, acc_steps, t_interval = 0.0, 0, time.perf_counter()

            if do_eval:
                t_eval = time.perf_counter()
                val = validate()
                if do_ckpt:
                    saved_path = save(val["bits_per_byte"])
                t_interval += time.perf_counter() - t_eval  # keep eval out of the step timing
    finally:
        bar.close()
        metrics_out.close()

    seconds = time.perf_counter() - t_start
    train_loss = last["train_loss"]
    result = {
        "step": step,
        "train_loss": train_loss,
        "train_bpb": None if train_loss is None else bits_per_byte(train_loss),
        "val_loss": None if val is None else val["loss"],
        "val_bpb": None if val is None else val["bits_per_byte"],
        "best_val_bpb": best,
        "seconds": seconds,
        "checkpoint": str(saved_path or C.latest_checkpoint(out_dir) or ""),
    }
    log.info(
        "done: step %d | val bpb %s | best %s | %.1f s",
        step,
        "-" if result["val_bpb"] is None else f"{result['val_bpb']:.4f}",
        "-" if best is None else f"{best:.4f}",
        seconds,
    )
    return result
