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

Sampling itself is :func:`~sparse_transformer.sample.generate` (the one loop, pattern-aware
cache) with ``start_token=True``: ``prompt + length`` may reach ``ctx + 1``, since the last
sampled byte is never fed back, so a whole image (start byte + ``ctx`` pixels) needs only ``ctx``
positions. This module only turns bytes into images and sounds and back.

The writers (:func:`write_image_samples`, :func:`write_audio_samples`) have the signature of the
CLI's ``SAMPLE_OUTPUTS`` hooks: ``fn(samples: list[bytes], out_dir, meta) -> written paths``.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .data import IMAGE_START_BYTE, image_grid, write_wav
from .data.store import atomic_write_bytes
from .sample import _unwrap, generate

log = logging.getLogger(__name__)

__all__ = [
    "AUDIO_START_BYTE",
    "complete_images",
    "completion_grid",
    "file_stem",
    "grid_scale",
    "image_shape",
    "sample_audio",
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
# Images
# --------------------------------------------------------------------------------------------


def _from_start(
    model: torch.nn.Module, start: int, num: int, length: int, desc: str, **kw: Any
) -> np.ndarray:
    """``num`` sequences of ``length`` bytes drawn after the start byte ``start``:
    :func:`~sparse_transformer.sample.generate` with ``start_token``; ``uint8 (num, length)``."""
    if num < 1:
        raise ValueError(f"num must be >= 1, got {num}")
    prompt = torch.full((num, 1), start, dtype=torch.long)
    out = generate(model, prompt, length, start_token=True, desc=desc, **kw)
    return out[:, 1:].cpu().numpy().astype(np.uint8)


def image_shape(meta: dict[str, Any]) -> tuple[int, int, int]:
    """``(H, W, C)`` of an image dataset's ``meta.json``."""
    shape = meta.get("image_shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3):
        raise ValueError(f"dataset {meta.get('name')!r} has no image_shape [H, W, C] in meta.json")
    h, w, c = (int(v) for v in shape)
    return h, w, c


def _check_image_model(model: torch.nn.Module, shape: Sequence[int]) -> int:
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
    r = _check_image_model(model, shape)
    out = _from_start(
        model, IMAGE_START_BYTE, num, r, "sample images", temperature=temperature,
        generator=generator, progress=progress, stats=stats,
    )  # fmt: skip
    return out.reshape(num, *shape)


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
    out = generate(
        model, prompt, h * w * c - given, temperature=temperature, generator=generator,
        progress=progress, stats=stats, start_token=True, desc="complete images",
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


def sample_audio(
    model: torch.nn.Module,
    num: int,
    length: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    stats: dict[str, Any] | None = None,
) -> np.ndarray:
    """``num`` clips of ``length`` µ-law bytes, ``uint8 (num, length)``, each drawn after
    :data:`AUDIO_START_BYTE` (silence); ``length <= ctx``."""
    return _from_start(
        model, AUDIO_START_BYTE, num, length, "sample audio", temperature=temperature,
        generator=generator, progress=progress, stats=stats,
    )  # fmt: skip


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
