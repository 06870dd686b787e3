"""Audio datasets: mono PCM WAV → resampled → 8-bit µ-law bytes (one byte per sample).

Pipeline per file: read with the standard :mod:`wave` module (8-bit *unsigned* and 16/24/32-bit
*signed* little-endian PCM; float WAVs (format 3) and WAVE_FORMAT_EXTENSIBLE headers are refused
with a one-line error), scale to floats in [-1, 1], average the channels to mono, resample to
``sample_rate`` with a Kaiser-windowed sinc filter (:func:`resample`), clip to [-1, 1] and µ-law
encode (µ = 255, :func:`mu_law_encode`). ``normalize=True`` additionally scales each file to a
peak of 0.99 first (off by default; µ-law already spends its codes on quiet audio).

Splits: with 3 or more files, whole files go to train/val/test about 90/5/5
(:func:`~sparse_transformer.data.store.pick_split_items`) and the files of a split are concatenated
in sorted order; with 1 or 2 files the concatenated samples are split 90/5/5 by bytes.

* ``audio --path DIR``: every ``*.wav`` under ``DIR`` (recursively); ``sample_rate`` defaults to
  12,000 Hz.
* ``moh-music``: the 5 music-on-hold tracks of Debian ``asterisk-moh-opsound-wav``
  (``usr/share/asterisk/moh/*.wav``, 18.5 minutes, CC BY-SA 3.0). ``sample_rate`` defaults to
  8,000 Hz because the recordings are 8 kHz: resampling up would only add empty bandwidth.
  ``--path`` may be the ``.deb`` or a folder of WAVs.
"""

from __future__ import annotations

import io
import logging
import math
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .sources import Fetch, apt_download, fetch_or_path, read_deb_files
from .store import (
    SPLITS,
    already_prepared,
    building_dataset,
    find_files,
    finish_dataset,
    path_params,
    pick_split_items,
    require_path,
    split_sizes,
    write_splits,
)

logger = logging.getLogger(__name__)

MU = 255
ENCODING = "mu-law-8"
MOH_PACKAGE = "asterisk-moh-opsound-wav"
MOH_DIR = "usr/share/asterisk/moh/"

__all__ = [
    "mu_law_decode",
    "mu_law_encode",
    "prepare_audio",
    "prepare_moh_music",
    "read_wav",
    "resample",
]


# --------------------------------------------------------------------------------------------
# µ-law
# --------------------------------------------------------------------------------------------


def mu_law_encode(x: np.ndarray, mu: int = MU) -> np.ndarray:
    """Floats in [-1, 1] (clipped) → µ-law codes ``uint8`` 0..255 (128 ≈ silence).

    ``F(x) = sign(x) ln(1 + µ|x|) / ln(1 + µ)`` is quantised uniformly:
    ``q = floor((F(x) + 1) / 2 * µ + 0.5)``. Round-trip error: since the companded value is off by
    at most half a step (``1/µ``),
    ``|x - decode(encode(x))| <= (1 + µ|x|) / µ * ((1 + µ)**(1/µ) - 1)``, i.e. about ``0.022 |x| + 8.6e-5`` for µ = 255.
    """
    x = np.clip(np.asarray(x, dtype=np.float64), -1.0, 1.0)
    y = np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu)
    return np.floor((y + 1.0) / 2.0 * mu + 0.5).astype(np.uint8)


def mu_law_decode(q: np.ndarray, mu: int = MU) -> np.ndarray:
    """µ-law codes ``uint8`` → ``float32`` in [-1, 1] (inverse of :func:`mu_law_encode`)."""
    y = np.asarray(q, dtype=np.float64) / mu * 2.0 - 1.0
    return (np.sign(y) * np.expm1(np.abs(y) * math.log1p(mu)) / mu).astype(np.float32)


# --------------------------------------------------------------------------------------------
# WAV reading and resampling
# --------------------------------------------------------------------------------------------


def read_wav(source: str | Path | bytes, *, name: str | None = None) -> tuple[np.ndarray, int]:
    """Read a PCM WAV file (path or bytes) as mono ``float32`` in [-1, 1] and its sample rate.

    8-bit samples are unsigned, wider ones signed little-endian; channels are averaged. Raises a
    ``ValueError`` naming the file for anything else (not a WAV, float or extensible format,
    truncated data).
    """
    if isinstance(source, (str, Path)):
        name = name or str(source)
        fobj: Any = open(source, "rb")  # noqa: SIM115 - closed below
    else:
        name = name or "WAV data"
        fobj = io.BytesIO(source)
    try:
        try:
            with wave.open(fobj, "rb") as w:
                channels, width, rate, n = (
                    w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes(),
                )  # fmt: skip
                raw = w.readframes(n)
        except wave.Error as e:
            msg = str(e)
            if "unknown format: 3" in msg:
                msg = "IEEE float WAV (format 3) is not supported; convert it to 16-bit PCM"
            elif "unknown format: 65534" in msg:
                msg = "WAVE_FORMAT_EXTENSIBLE header is not supported; re-save as plain PCM WAV"
            raise ValueError(f"{name}: not a readable PCM WAV file ({msg})") from e
        except EOFError as e:
            raise ValueError(f"{name}: truncated WAV header") from e
    finally:
        fobj.close()
    if width not in (1, 2, 3, 4):
        raise ValueError(f"{name}: {8 * width}-bit samples are not supported (8/16/24/32-bit PCM)")
    if rate <= 0 or channels <= 0:
        raise ValueError(f"{name}: invalid header (rate {rate}, {channels} channels)")
    frame = width * channels
    if len(raw) != n * frame:
        raise ValueError(
            f"{name}: truncated WAV data: header says {n:,} frames, found {len(raw) // frame:,}"
        )
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v) / float(1 << 23)).astype(np.float32)
    else:
        x = (np.frombuffer(raw, dtype="<i4") / float(1 << 31)).astype(np.float32)
    return x.reshape(-1, channels).mean(axis=1, dtype=np.float32), rate


def resample(
    x: np.ndarray, orig_rate: int, new_rate: int, *, half_width: int = 16, chunk: int = 1 << 13
) -> np.ndarray:
    """Resample a 1-D signal with a Kaiser-windowed sinc filter (band-limited interpolation).

    Output sample ``n`` sits at input time ``t = n * orig_rate / new_rate`` and is
    ``sum_k x[k] * c * sinc(c * (t - k)) * kaiser(t - k)`` over the ``2 * half_width / c`` nearest
    inputs, with cutoff ``c = min(1, new_rate / orig_rate)`` (anti-aliasing when downsampling)
    and a Kaiser window (beta 8.6). Samples outside the signal count as zero. Output length is
    ``ceil(len(x) * new_rate / orig_rate)``.
    """
    if orig_rate <= 0 or new_rate <= 0:
        raise ValueError(f"sample rates must be positive, got {orig_rate} -> {new_rate}")
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"resample expects a 1-D signal, got shape {x.shape}")
    if orig_rate == new_rate or len(x) == 0:
        return x.copy()
    g = math.gcd(orig_rate, new_rate)
    up, down = new_rate // g, orig_rate // g
    n_out = -(-len(x) * up // down)
    cutoff = min(1.0, new_rate / orig_rate)
    reach = math.ceil(half_width / cutoff)  # input samples on each side
    offsets = np.arange(-reach + 1, reach + 1)
    beta = 8.6
    padded = np.concatenate([np.zeros(reach, np.float32), x, np.zeros(reach + 1, np.float32)])
    out = np.empty(n_out, dtype=np.float32)
    for s in range(0, n_out, chunk):
        n = np.arange(s, min(s + chunk, n_out), dtype=np.int64)
        base = (n * down) // up  # integer part of t, exact
        frac = (n * down - base * up) / up  # fractional part of t
        k = base[:, None] + offsets[None, :]  # input indices
        d = frac[:, None] - offsets[None, :]  # t - k
        win = np.i0(beta * np.sqrt(np.clip(1.0 - (d / reach) ** 2, 0.0, 1.0))) / np.i0(beta)
        h = cutoff * np.sinc(cutoff * d) * win
        out[s : s + len(n)] = np.einsum("ij,ij->i", padded[k + reach], h)
    return out


# --------------------------------------------------------------------------------------------
# Preparation
# --------------------------------------------------------------------------------------------


def _encode_file(
    source: Path | bytes, name: str, sample_rate: int, normalize: bool
) -> tuple[np.ndarray, int]:
    x, rate = read_wav(source, name=name)
    if normalize:
        peak = float(np.max(np.abs(x))) if len(x) else 0.0
        if peak > 0:
            x = x * (0.99 / peak)
    y = resample(x, rate, sample_rate)
    return mu_law_encode(np.clip(y, -1.0, 1.0)), rate


def write_audio_dataset(
    out_dir: Path,
    files: list[tuple[str, Path | bytes]],
    *,
    name: str,
    sample_rate: int,
    normalize: bool,
    source: str,
    licence: str,
    params: dict[str, Any],
    progress: bool,
) -> Path:
    """Encode ``(name, path-or-bytes)`` WAV files and write the splits (see the module doc)."""
    if not files:
        raise ValueError(f"{source}: no WAV files found")
    if sample_rate < 1:
        raise ValueError(f"sample_rate must be a positive number of Hz, got {sample_rate}")
    by_file = len(files) >= 3
    assignment = pick_split_items(len(files)) if by_file else {"train": list(range(len(files)))}
    split_files: dict[str, list[str]] = {s: [] for s in SPLITS}
    bar = tqdm(total=len(files), unit="file", desc=f"encoding {name}", disable=not progress)
    empty: list[str] = []

    def encoded(indices: list[int], split: str) -> Iterator[np.ndarray]:
        for i in indices:
            fname, src = files[i]
            q, rate = _encode_file(src, fname, sample_rate, normalize)
            logger.debug("%s: %d Hz -> %d Hz, %d samples", fname, rate, sample_rate, len(q))
            if not len(q):
                empty.append(fname)
            split_files[split].append(fname)
            bar.update(1)
            yield q

    with building_dataset(out_dir) as stage, bar:
        if by_file:
            writers = write_splits(stage, {s: encoded(assignment[s], s) for s in SPLITS})
        else:
            allq = np.concatenate(list(encoded(assignment["train"], "train")))
            sizes = split_sizes(len(allq))
            split_files = {s: [f for f, _ in files] for s in SPLITS}
            n_train, n_val = sizes["train"], sizes["val"]
            parts = {
                "train": allq[:n_train],
                "val": allq[n_train : n_train + n_val],
                "test": allq[n_train + n_val :],
            }
            writers = write_splits(stage, {s: [parts[s]] for s in SPLITS})
        if empty:
            logger.warning(
                "%d of %d WAV file(s) hold no samples (0 frames): %s%s",
                len(empty), len(files), ", ".join(empty[:5]), " ..." if len(empty) > 5 else "",
            )  # fmt: skip
        finish_dataset(
            stage, writers, name=name, kind="audio", source=source, licence=licence,
            params=params, sample_rate=sample_rate, encoding=ENCODING, channels=1,
            split_by="files" if by_file else "bytes", files=split_files,
        )  # fmt: skip
    return out_dir


def _folder_params(folder: Path, files: list[Path]) -> dict[str, Any]:
    return {
        "path": str(folder.resolve()),
        "files": [[p.relative_to(folder).as_posix(), p.stat().st_size, p.stat().st_mtime_ns]
                  for p in files],
    }  # fmt: skip


def prepare_audio(
    data_dir: Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    out_name: str | None = None,
    sample_rate: int | None = 12000,
    normalize: bool = False,
) -> Path:
    """Every ``*.wav`` under a folder (or one WAV file) → 8-bit µ-law at ``sample_rate`` Hz."""
    src = require_path(path, "audio", "DIR (a folder of WAV files)")
    sample_rate = 12000 if sample_rate is None else int(sample_rate)
    files = find_files(src, (".wav",)) if src.is_dir() else [src]
    if not files:
        raise ValueError(f"{src}: no .wav files found (searched recursively)")
    root = src if src.is_dir() else src.parent
    name = out_name or "audio"
    out_dir = Path(data_dir) / name
    params = {**_folder_params(root, files), "sample_rate": sample_rate, "normalize": normalize}
    if already_prepared(out_dir, name, params, force):
        return out_dir
    return write_audio_dataset(
        out_dir, [(p.relative_to(root).as_posix(), p) for p in files], name=name,
        sample_rate=sample_rate, normalize=normalize,
        source=f"{src.resolve()} ({len(files)} files)",
        licence="user-supplied recordings; see their source", params=params, progress=progress,
    )  # fmt: skip


def prepare_moh_music(
    data_dir: Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    out_name: str | None = None,
    sample_rate: int | None = 8000,
    normalize: bool = False,
    fetch: Fetch | None = None,
) -> Path:
    """Music-on-hold tracks of Debian ``asterisk-moh-opsound-wav`` (``path``: the ``.deb`` or a
    folder of WAVs). ``fetch(package, dest_dir) -> .deb path`` replaces :func:`apt_download`."""
    sample_rate = 8000 if sample_rate is None else int(sample_rate)
    name = out_name or "moh-music"
    out_dir = Path(data_dir) / name
    params: dict[str, Any] = {
        "package": MOH_PACKAGE, "sample_rate": sample_rate, "normalize": normalize,
    }  # fmt: skip
    params |= path_params(path, "moh-music", "FILE.deb or DIR")
    if already_prepared(out_dir, name, params, force):
        return out_dir
    files: list[tuple[str, Path | bytes]]
    if path is not None and Path(path).is_dir():
        folder = Path(path)
        files = [(p.relative_to(folder).as_posix(), p) for p in find_files(folder, (".wav",))]
        source = str(folder.resolve())
    else:
        deb = fetch_or_path(path, fetch or apt_download, MOH_PACKAGE, data_dir)
        found = read_deb_files(deb, lambda n: n.startswith(MOH_DIR) and n.lower().endswith(".wav"))
        if not found:
            raise ValueError(f"{deb}: no {MOH_DIR}*.wav files; is this {MOH_PACKAGE}?")
        files = [(k.removeprefix(MOH_DIR), found[k]) for k in sorted(found)]
        source = f"Debian {deb.name}: {MOH_DIR}*.wav ({len(files)} files)"
    return write_audio_dataset(
        out_dir, files, name=name, sample_rate=sample_rate, normalize=normalize, source=source,
        licence="CC BY-SA 3.0 (Asterisk opsound music on hold, Digium)", params=params,
        progress=progress,
    )  # fmt: skip
