"""Images and audio out of a model: whole images, completions of real ones, PNG grids and WAVs.

    from sparse_transformer.media import sample_images, complete_images, completion_grid
    imgs = sample_images(model, 16, (28, 28, 1))              # uint8 (16, 28, 28, 1)
    done = complete_images(model, real, num=3)                # uint8 (N, 3, 28, 28, 1)
    write_grid(completion_grid(real, done), "completions.png", ncols=5, scale=3)

Conventions come from the data layer (:mod:`sparse_transformer.data.store`): an image record is
``H * W * C`` bytes in raster order with the channels of a pixel adjacent, and the model sees it
after the start byte 0, so an image model has ``ctx == H * W * C``. Sampling an image therefore
starts from the single token ``[0]`` and draws exactly ``H * W * C`` bytes; a completion starts
from ``[0]`` followed by the real top rows and draws the rest.

:func:`sample_bytes` is the loop under both (and under audio): the pattern-aware cache of
:mod:`sparse_transformer.sample` (:func:`~sparse_transformer.sample.prefill` once, then one
:func:`~sparse_transformer.sample.step` per token). Unlike
:func:`~sparse_transformer.sample.generate` it lets ``prompt + length`` reach ``ctx + 1``: the
last sampled byte is never fed back, so a whole image (start byte + ``ctx`` pixels) needs only
``ctx`` positions.

The writers (:func:`write_image_samples`, :func:`write_audio_samples`) have the signature of the
CLI's ``SAMPLE_OUTPUTS`` hooks: ``fn(samples: list[bytes], out_dir, meta) -> written paths``.
"""

from __future__ import annotations

import io
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import IMAGE_START_BYTE, image_grid, write_wav
from .data.store import atomic_write_bytes
from .sample import KVCache, pick_token, prefill, step

log = logging.getLogger(__name__)

__all__ = [
    "AUDIO_START_BYTE",
    "complete_images",
    "completion_grid",
    "file_stem",
    "grid_scale",
    "image_shape",
    "sample_bytes",
    "sample_images",
    "write_audio_samples",
    "write_completions",
    "write_grid",
    "write_image_samples",
]

#: µ-law code of silence (``mu_law_encode(0) == 128``): the first token of an audio sample.
AUDIO_START_BYTE = 128
#: Grey that fills the part of a completion's input the model did not see.
HIDDEN_GREY = 128
#: Colour of the lines between the tiles of a grid (and of empty tiles): white, since the images
#: of MNIST-like sets have black backgrounds.
GRID_LINES = 255


# --------------------------------------------------------------------------------------------
# The sampling loop
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def sample_bytes(
    model: torch.nn.Module,
    prompt: torch.Tensor,
    length: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    stats: dict[str, Any] | None = None,
    desc: str = "sample",
) -> torch.Tensor:
    """Draw ``length`` bytes after ``prompt`` (B, T0), T0 >= 1, with ``T0 + length <= ctx + 1``.

    Returns (B, T0 + length) int64 on the model's device: the prompt, then the samples. ``stats``
    (if given) receives ``tokens`` (new tokens per sequence), ``batch``, ``seconds`` and
    ``tokens_per_s`` (new tokens of all B sequences over the wall time, prefill included).
    """
    from .sample import _unwrap

    net = _unwrap(model)
    ctx = net.cfg.ctx
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"prompt must be (B, T0) with T0 >= 1, got shape {tuple(prompt.shape)}")
    B, T0 = prompt.shape
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be an integer >= 0, got {length!r}")
    if T0 + length - 1 > ctx:
        raise ValueError(
            f"prompt ({T0}) + length ({length}) needs {T0 + length - 1} positions, more than the "
            f"model's context ctx={ctx}"
        )
    if not (isinstance(temperature, (int, float)) and 0 <= temperature < math.inf):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    device = next(net.parameters()).device
    out = torch.empty(B, T0 + length, dtype=torch.long, device=device)
    out[:, :T0] = prompt.to(device)
    if length == 0:
        return out
    was_training = net.training
    net.eval()
    t0 = time.perf_counter()
    try:
        cache = KVCache(net, B, T0 + length - 1)
        logits = prefill(net, out[:, :T0], cache)[:, -1]
        with tqdm(total=length, disable=not progress, unit="tok", desc=desc) as bar:
            for s in range(length):
                tok = pick_token(logits, temperature, generator)
                out[:, T0 + s] = tok
                if s + 1 < length:
                    logits = step(net, tok, cache)
                bar.update(1)
                if s % 64 == 63 or s + 1 == length:
                    bar.set_postfix_str(f"{B * (s + 1) / (time.perf_counter() - t0):.0f} tok/s")
    finally:
        net.train(was_training)
    seconds = time.perf_counter() - t0
    rate = B * length / seconds if seconds > 0 else float("inf")
    log.debug("sampled %d x %d bytes in %.2f s: %.1f tokens/s", B, length, seconds, rate)
    if stats is not None:
        stats.update(tokens=length, batch=B, seconds=seconds, tokens_per_s=rate)
    return out


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


def image_shape(meta: dict[str, Any]) -> tuple[int, int, int]:
    """``(H, W, C)`` of an image dataset's ``meta.json``."""
    shape = meta.get("image_shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3):
        raise ValueError(f"dataset {meta.get('name')!r} has no image_shape [H, W, C] in meta.json")
    h, w, c = (int(v) for v in shape)
    return h, w, c


def _check_image_model(model: torch.nn.Module, shape: Sequence[int]) -> int:
    from .sample import _unwrap

    r = math.prod(shape)
    ctx = _unwrap(model).cfg.ctx
    if ctx != r:
        raise ValueError(
            f"the model's context ctx={ctx} is not the image size {'x'.join(map(str, shape))} = "
            f"{r} bytes; it was not trained on these images"
        )
    return r


def sample_images(
    model: torch.nn.Module,
    num: int,
    shape: Sequence[int],
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    stats: dict[str, Any] | None = None,
) -> np.ndarray:
    """``num`` unconditional images ``uint8 (num, H, W, C)``: from the start byte, ``H*W*C``
    bytes each. The model's ``ctx`` must equal ``H*W*C``."""
    h, w, c = shape
    r = _check_image_model(model, shape)
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    prompt = torch.full((num, 1), IMAGE_START_BYTE, dtype=torch.long)
    out = sample_bytes(
        model, prompt, r, temperature=temperature, generator=generator, progress=progress,
        stats=stats, desc="sample images",
    )  # fmt: skip
    return out[:, 1:].cpu().numpy().astype(np.uint8).reshape(num, h, w, c)


def complete_images(
    model: torch.nn.Module,
    images: np.ndarray,
    *,
    num: int = 1,
    rows: int | None = None,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    stats: dict[str, Any] | None = None,
) -> np.ndarray:
    """Complete real images ``uint8 (N, H, W, C)`` from their top ``rows`` rows (default
    ``H // 2``): ``num`` completions each, ``uint8 (N, num, H, W, C)``. The given rows are copied
    unchanged; only the rows below are sampled."""
    images = np.asarray(images)
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, H, W, C), got {images.dtype} {images.shape}")
    n, h, w, c = images.shape
    _check_image_model(model, (h, w, c))
    rows = h // 2 if rows is None else rows
    if not 0 <= rows < h:
        raise ValueError(f"rows must be in 0..{h - 1}, got {rows}")
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    given = rows * w * c
    flat = images.reshape(n, h * w * c)[:, :given].astype(np.int64)
    prompt = torch.from_numpy(np.repeat(flat, num, axis=0))  # image i's copies are adjacent
    prompt = torch.cat([torch.full((n * num, 1), IMAGE_START_BYTE), prompt], dim=1)
    out = sample_bytes(
        model, prompt, h * w * c - given, temperature=temperature, generator=generator,
        progress=progress, stats=stats, desc="complete images",
    )  # fmt: skip
    return out[:, 1:].cpu().numpy().astype(np.uint8).reshape(n, num, h, w, c)


def completion_grid(images: np.ndarray, completions: np.ndarray, rows: int | None = None):
    """Tiles for a completion figure, one row per real image: the input the model saw (top
    ``rows`` rows, the rest grey), its completions, then the original. Returns ``uint8
    (N * (num + 2), H, W, C)``; write it with ``ncols = num + 2``."""
    n, num, h, w, c = completions.shape
    rows = h // 2 if rows is None else rows
    seen = images.copy()
    seen[:, rows:] = HIDDEN_GREY
    tiles = np.concatenate([seen[:, None], completions, images[:, None]], axis=1)
    return tiles.reshape(n * (num + 2), h, w, c)


def write_grid(
    tiles: np.ndarray, path: str | Path, ncols: int | None = None, scale: int = 1, pad: int = 2
) -> Path:
    """Tiles ``uint8 (K, H, W, C)`` as one PNG grid (:func:`~sparse_transformer.data.image_grid`
    layout) with :data:`GRID_LINES` between the tiles; written atomically."""
    from PIL import Image

    grid = image_grid(tiles, ncols=ncols, scale=scale, pad=pad)
    inside = image_grid(np.ones_like(tiles), ncols=ncols, scale=scale, pad=pad)
    grid[inside == 0] = GRID_LINES
    buf = io.BytesIO()
    Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid).save(buf, format="PNG")
    atomic_write_bytes(Path(path), buf.getvalue())
    return Path(path)


def grid_scale(h: int, w: int) -> int:
    """Pixel repeat that makes a tile about 96 pixels across (28 -> 3, 32 -> 3, 64 -> 2)."""
    return max(1, round(96 / max(h, w)))


def write_image_samples(
    samples: list[bytes], out_dir: Path | None, meta: dict[str, Any]
) -> list[Path]:
    """Unconditional image samples (each ``H*W*C`` bytes, start byte removed) -> one PNG grid
    ``out_dir/<dataset>-samples.png``."""
    h, w, c = image_shape(meta)
    if out_dir is None:
        raise ValueError("image samples need an output folder (--out DIR)")
    arr = np.stack([np.frombuffer(s, dtype=np.uint8) for s in samples])
    if arr.shape[1] != h * w * c:
        raise ValueError(f"an image sample holds {arr.shape[1]} bytes, not H*W*C = {h * w * c}")
    path = write_grid(
        arr.reshape(-1, h, w, c), Path(out_dir) / f"{file_stem(meta)}-samples.png",
        scale=grid_scale(h, w), pad=2,
    )  # fmt: skip
    return [path]


def write_completions(
    images: np.ndarray,
    completions: np.ndarray,
    out_dir: Path,
    rows: int | None = None,
    name: str = "images",
) -> Path:
    """The completion figure (see :func:`completion_grid`) as
    ``out_dir/<name>-completions.png``."""
    num, h, w = completions.shape[1:4]
    tiles = completion_grid(images, completions, rows)
    return write_grid(
        tiles, Path(out_dir) / f"{name}-completions.png", ncols=num + 2, scale=grid_scale(h, w),
        pad=2,
    )  # fmt: skip


def file_stem(meta: dict[str, Any]) -> str:
    """File-name prefix: the dataset's name (``fashion-mnist-samples.png``)."""
    name = str(meta.get("name") or meta.get("kind") or "sample")
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)


# --------------------------------------------------------------------------------------------
# Audio
# --------------------------------------------------------------------------------------------


def write_audio_samples(
    samples: list[bytes], out_dir: Path | None, meta: dict[str, Any]
) -> list[Path]:
    """µ-law byte samples -> ``out_dir/<dataset>-sample-K.wav``, 16-bit mono at the dataset's
    sample rate."""
    if out_dir is None:
        raise ValueError("audio samples need an output folder (--out DIR)")
    rate = meta.get("sample_rate")
    if not isinstance(rate, int) or rate < 1:
        raise ValueError(f"dataset {meta.get('name')!r} has no sample_rate in meta.json")
    if meta.get("encoding", "mu-law-8") != "mu-law-8":
        raise ValueError(f"unsupported audio encoding {meta.get('encoding')!r} (want mu-law-8)")
    return [
        write_wav(
            np.frombuffer(s, dtype=np.uint8),
            rate,
            Path(out_dir) / f"{file_stem(meta)}-sample-{k}.wav",
        )
        for k, s in enumerate(samples)
    ]
