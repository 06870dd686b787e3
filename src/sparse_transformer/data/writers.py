"""Writing samples back to viewable / playable files: a PNG grid of images and a WAV file.

Both write atomically (temporary file + rename). Pillow is imported only when a PNG is written
(it is the optional ``plots`` extra).
"""

from __future__ import annotations

import io
import math
import wave
from pathlib import Path

import numpy as np

from .audio import mu_law_decode
from .store import atomic_write_bytes

__all__ = ["image_grid", "write_png_grid", "write_wav"]


def image_grid(
    images: np.ndarray, ncols: int | None = None, scale: int = 1, pad: int = 0
) -> np.ndarray:
    """Tile ``uint8`` images ``(K, H, W, C)`` (or ``(K, H, W)``) into one ``(rows*H', cols*W', C)``
    array, row by row; ``scale`` repeats pixels (nearest neighbour) and ``pad`` puts that many
    black pixels between tiles. ``ncols`` defaults to ``ceil(sqrt(K))``."""
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (K, H, W, C), got {images.dtype} {images.shape}")
    k, h, w, c = images.shape
    if k == 0:
        raise ValueError("no images to write")
    if c not in (1, 3):
        raise ValueError(f"images must have 1 or 3 channels, got {c}")
    if scale < 1 or pad < 0:
        raise ValueError(f"need scale >= 1 and pad >= 0, got scale={scale}, pad={pad}")
    ncols = ncols or math.ceil(math.sqrt(k))
    if ncols < 1:
        raise ValueError(f"ncols must be >= 1, got {ncols}")
    nrows = math.ceil(k / ncols)
    if scale > 1:
        images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    th, tw = h * scale, w * scale
    grid = np.zeros((nrows * th + (nrows - 1) * pad, ncols * tw + (ncols - 1) * pad, c), np.uint8)
    for i, im in enumerate(images):
        r, col = divmod(i, ncols)
        y, x = r * (th + pad), col * (tw + pad)
        grid[y : y + th, x : x + tw] = im
    return grid


def write_png_grid(
    images: np.ndarray, path: str | Path, ncols: int | None = None, scale: int = 1, pad: int = 0
) -> Path:
    """Write ``uint8`` images ``(K, H, W, C)``, C = 1 or 3, as one PNG grid (see
    :func:`image_grid`). Returns the path.

    Needs Pillow (``pip install 'sparse-transformer[plots]'``)."""
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "writing PNGs needs Pillow: pip install 'sparse-transformer[plots]'"
        ) from e
    grid = image_grid(images, ncols=ncols, scale=scale, pad=pad)
    im = Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid, mode=None)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def write_wav(samples_uint8_mu_law: np.ndarray, sample_rate: int, path: str | Path) -> Path:
    """Decode 8-bit µ-law samples (1-D ``uint8``) and write a mono 16-bit PCM WAV.

    Returns the path."""
    q = np.asarray(samples_uint8_mu_law)
    if q.ndim != 1 or q.dtype != np.uint8:
        raise ValueError(f"expected 1-D uint8 mu-law samples, got {q.dtype} {q.shape}")
    if int(sample_rate) < 1:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    pcm = np.clip(np.round(mu_law_decode(q) * 32767.0), -32768, 32767).astype("<i2")
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
