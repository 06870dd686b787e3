"""Image datasets, stored as fixed-size records of ``H * W * C`` bytes.

Each record is one image in raster order with the channels of a pixel adjacent
(r, g, b, r, g, b, ...); ``meta.json`` holds ``image_shape`` ``[H, W, C]``. See
:mod:`sparse_transformer.data.store` for how records become training windows (a start byte 0 is
prepended, ``ctx`` must equal the record size).

Splits:

* ``fashion-mnist`` (Debian ``dataset-fashion-mnist``; ``--path`` may be the ``.deb`` or a folder of
  IDX files) and ``mnist --path DIR`` (IDX files ``train-images-idx3-ubyte[.gz]`` and
  ``t10k-images-idx3-ubyte[.gz]``): the 60,000 training images give train = the first 55,000 and
  val = the last 5,000 (in general the last ``n // 12``); the 10,000 test images are the test split.
  ``[28, 28, 1]``.
* ``cifar10 --path cifar-10-python.tar.gz`` (read in place, or the extracted
  ``cifar-10-batches-py`` folder): ``data_batch_1..5`` in order give train = the first 48,000 and
  val = the last 2,000 (in general the last ``n // 25``); ``test_batch`` is test. The
  channel-planar rows (1024 R, 1024 G, 1024 B) are interleaved to HWC. Batches are unpickled with
  :func:`~sparse_transformer.data.pickle_safe.safe_load`, never plain ``pickle.load``.
  ``[32, 32, 3]``.
* ``imagenet64 --path DIR`` (downsampled ImageNet npz release, searched recursively):
  ``train_data_batch_*.npz`` (in batch-number order) are train; ``val_data.npz`` (50,000 images)
  is split into val = its first half and test = its second half, because the official test set is
  not public and the paper reports validation numbers. Rows are channel-planar ``3 * S * S``
  (S = 64; other sizes such as the 32x32 release are detected from the row length).
* ``images --path DIR --size S``: every PNG/JPEG under ``DIR`` (recursively, sorted by path),
  converted to RGB (or greyscale with ``channels=1``), centre-cropped to a square (``crop=False``
  to squash instead) and resized to ``S x S`` with Lanczos filtering. Files are split about
  90/5/5 with :func:`~sparse_transformer.data.store.pick_split_items` (val and test files spread
  evenly through the sorted list).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import logging
import lzma
import re
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from .pickle_safe import safe_load
from .sources import Fetch, apt_download, fetch_or_path, read_deb_files
from .store import (
    SPLITS,
    already_prepared,
    building_dataset,
    file_params,
    find_files,
    finish_dataset,
    path_params,
    pick_split_items,
    require_path,
    write_splits,
)

logger = logging.getLogger(__name__)

FASHION_PACKAGE = "dataset-fashion-mnist"
FASHION_DIR = "usr/share/datasets/fashion-mnist/"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

__all__ = [
    "hwc_from_planar",
    "prepare_cifar10",
    "prepare_fashion_mnist",
    "prepare_imagenet64",
    "prepare_images",
    "prepare_mnist",
    "read_idx",
    "write_image_dataset",
]


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def read_idx(source: bytes | str | Path, *, name: str | None = None) -> np.ndarray:
    """Read an IDX file (MNIST format), gzip-compressed or not, holding unsigned bytes.

    Layout: two zero bytes, a type code (``0x08`` = uint8), the number of dimensions, then each
    dimension as a big-endian uint32 and the data. Images have magic ``0x00000803`` (N, rows,
    cols), labels ``0x00000801`` (N,). Returns an ``uint8`` array of those dimensions.
    """
    if isinstance(source, (str, Path)):
        name = name or str(source)
        raw = Path(source).read_bytes()
    else:
        raw = source
    name = name or "IDX data"
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise ValueError(f"{name}: corrupt gzip stream ({e})") from e
    if len(raw) < 4 or raw[:2] != b"\x00\x00":
        raise ValueError(f"{name}: not an IDX file (bad magic {raw[:4].hex() or 'empty'})")
    type_code, ndim = raw[2], raw[3]
    if type_code != 0x08:
        raise ValueError(f"{name}: IDX type code 0x{type_code:02x} is not 0x08 (unsigned byte)")
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{name}: truncated IDX header ({ndim} dimensions)")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = memoryview(raw)[4 + 4 * ndim :]
    want = int(np.prod(dims))
    if len(body) != want:
        raise ValueError(
            f"{name}: IDX dimensions {dims} need {want:,} data bytes, found {len(body):,} "
            "(truncated or corrupt file)"
        )
    return np.frombuffer(body, dtype=np.uint8).reshape(dims)


def hwc_from_planar(rows: np.ndarray, channels: int = 3) -> np.ndarray:
    """``(N, C*S*S)`` channel-planar rows (all R, then all G, then all B) to ``(N, S, S, C)``."""
    if rows.ndim != 2 or rows.dtype != np.uint8:
        raise ValueError(
            f"expected a 2-D uint8 array of planar images, got {rows.dtype} {rows.shape}"
        )
    side = round((rows.shape[1] / channels) ** 0.5)
    if channels * side * side != rows.shape[1]:
        raise ValueError(f"row length {rows.shape[1]} is not {channels} x S x S for any S")
    return np.ascontiguousarray(rows.reshape(-1, channels, side, side).transpose(0, 2, 3, 1))


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------


def write_image_dataset(
    out_dir: Path,
    splits: dict[str, Iterable[np.ndarray]],
    *,
    name: str,
    image_shape: tuple[int, int, int],
    source: str,
    licence: str,
    params: dict[str, Any],
    progress: bool,
    total: int | None = None,
) -> Path:
    """Write image splits; each iterable yields ``uint8`` arrays ``(n, H, W, C)``."""
    records = {split: 0 for split in SPLITS}
    with building_dataset(out_dir) as stage, tqdm(
        total=total, unit="img", desc=f"writing {name}", disable=not progress
    ) as bar:

        def checked(split: str) -> Iterator[np.ndarray]:
            for batch in splits[split]:
                if batch.dtype != np.uint8 or tuple(batch.shape[1:]) != tuple(image_shape):
                    raise ValueError(
                        f"{source}: got images of shape {batch.shape[1:]} / {batch.dtype}, "
                        f"expected {tuple(image_shape)} / uint8"
                    )
                yield batch
                records[split] += len(batch)
                bar.update(len(batch))

        writers = write_splits(stage, {split: checked(split) for split in SPLITS})
        finish_dataset(
            stage, writers, name=name, kind="image", source=source, licence=licence,
            params=params, image_shape=list(image_shape), records=records,
        )  # fmt: skip
    return out_dir


def _fingerprint(root: Path, files: list[Path]) -> dict[str, Any]:
    """Identity of a set of input files for the up-to-date check (paths, sizes, mtimes)."""
    h = hashlib.sha256()
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"path": str(root.resolve()), "files": len(files), "fingerprint": h.hexdigest()}


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST
# --------------------------------------------------------------------------------------------


def _idx_images(raw: bytes | Path, name: str) -> np.ndarray:
    arr = read_idx(raw, name=name)
    if arr.ndim != 3:
        raise ValueError(
            f"{name}: expected an IDX image file (3 dimensions), got shape {arr.shape}"
        )
    return arr[..., None]  # (N, H, W, 1)


def _write_held_out(
    out_dir: Path, train: np.ndarray, test: np.ndarray, n_val: int, *, name: str, source: str,
    licence: str, params: dict[str, Any], progress: bool,
) -> Path:  # fmt: skip
    """Write ``(N, H, W, C)`` image arrays: the last ``n_val`` training images are val."""
    if train.shape[1:] != test.shape[1:]:
        raise ValueError(
            f"{source}: train images {train.shape[1:]} and test {test.shape[1:]} differ"
        )
    n_train = len(train) - n_val
    return write_image_dataset(
        out_dir, {"train": [train[:n_train]], "val": [train[n_train:]], "test": [test]},
        name=name, image_shape=tuple(train.shape[1:]), source=source, licence=licence,
        params=params, progress=progress, total=len(train) + len(test),
    )  # fmt: skip


def _find_idx(folder: Path, stem: str) -> Path:
    """``train-images-idx3-ubyte[.gz]`` also matches ``train-images.idx3-ubyte`` and the like."""
    pattern = re.compile(stem.replace("-idx", r"[-.]idx") + r"(\.gz)?$")
    hits = sorted(p for p in folder.rglob("*") if p.is_file() and pattern.fullmatch(p.name))
    if not hits:
        raise ValueError(f"{folder}: no {stem}[.gz] file found")
    return hits[0]


def prepare_mnist(
    data_dir: Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    out_name: str | None = None,
) -> Path:
    """MNIST-format IDX files in a folder (any MNIST-like set: MNIST, Fashion-MNIST, KMNIST)."""
    folder = require_path(
        path, "mnist", "DIR (holding train-images-idx3-ubyte[.gz] and t10k-...)", must_be="folder"
    )
    name = out_name or "mnist"
    out_dir = Path(data_dir) / name
    files = [
        _find_idx(folder, "train-images-idx3-ubyte"),
        _find_idx(folder, "t10k-images-idx3-ubyte"),
    ]
    params = _fingerprint(folder, files)
    if already_prepared(out_dir, name, params, force):
        return out_dir
    train, test = (_idx_images(f, str(f)) for f in files)
    # val: the last 5,000 of the 60,000 training images
    return _write_held_out(
        out_dir, train, test, len(train) // 12, name=name, source=str(folder.resolve()),
        licence="user-supplied (MNIST: CC BY-SA 3.0)", params=params, progress=progress,
    )  # fmt: skip


def prepare_fashion_mnist(
    data_dir: Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    out_name: str | None = None,
    fetch: Fetch | None = None,
) -> Path:
    """Fashion-MNIST from Debian ``dataset-fashion-mnist`` (``path``: the ``.deb`` or a folder of
    IDX files). ``fetch(package, dest_dir) -> .deb path`` replaces :func:`apt_download`."""
    name = out_name or "fashion-mnist"
    out_dir = Path(data_dir) / name
    params: dict[str, Any] = {"package": FASHION_PACKAGE}
    params |= path_params(path, "fashion-mnist", "FILE.deb or DIR")
    if already_prepared(out_dir, name, params, force):
        return out_dir
    if path is not None and Path(path).is_dir():
        folder = Path(path)
        train = _idx_images(_find_idx(folder, "train-images-idx3-ubyte"), "train images")
        test = _idx_images(_find_idx(folder, "t10k-images-idx3-ubyte"), "test images")
        source = str(folder.resolve())
    else:
        deb = fetch_or_path(path, fetch or apt_download, FASHION_PACKAGE, data_dir)
        want = {FASHION_DIR + f"{s}-images-idx3-ubyte.gz" for s in ("train", "t10k")}
        files = read_deb_files(deb, lambda n: n in want)
        missing = sorted(want - set(files))
        if missing:
            raise ValueError(f"{deb}: missing {', '.join(missing)}; is this {FASHION_PACKAGE}?")
        train = _idx_images(files[FASHION_DIR + "train-images-idx3-ubyte.gz"], "train images")
        test = _idx_images(files[FASHION_DIR + "t10k-images-idx3-ubyte.gz"], "test images")
        source = f"Debian {deb.name}: {FASHION_DIR}{{train,t10k}}-images-idx3-ubyte.gz"
    # val: the last 5,000 of the 60,000 training images
    return _write_held_out(
        out_dir, train, test, len(train) // 12, name=name, source=source,
        licence="MIT (Zalando Research, Fashion-MNIST)", params=params, progress=progress,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------

_CIFAR_TRAIN = [f"data_batch_{i}" for i in range(1, 6)]
_CIFAR_TEST = "test_batch"


def _cifar_batch(raw: bytes, where: str) -> np.ndarray:
    try:
        obj = safe_load(io.BytesIO(raw), encoding="bytes")
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from e
    if not isinstance(obj, dict):
        got = type(obj).__name__
        raise ValueError(f"{where}: expected a pickled dict, got {got}")  # noqa: TRY004
    data = obj.get(b"data", obj.get("data"))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{where}: no uint8 (N, 3072) array under key b'data'")
    if data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"{where}: rows of {data.shape[1]} bytes, expected 3072 (3x32x32)")
    return hwc_from_planar(data)


def _cifar_members(src: Path) -> dict[str, bytes]:
    wanted = set(_CIFAR_TRAIN) | {_CIFAR_TEST}
    found: dict[str, bytes] = {}
    if src.is_dir():
        for p in sorted(src.rglob("*")):
            if p.is_file() and p.name in wanted and p.name not in found:
                found[p.name] = p.read_bytes()
    else:
        try:
            with tarfile.open(src, mode="r:*") as tar:
                for info in tar:
                    base = info.name.rsplit("/", 1)[-1]
                    if info.isfile() and base in wanted and base not in found:
                        fobj = tar.extractfile(info)
                        assert fobj is not None
                        found[base] = fobj.read()
        except (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError) as e:
            raise ValueError(f"{src}: not a readable tar archive ({e})") from e
    missing = sorted(wanted - set(found))
    if missing:
        damaged = " (some found: the archive may be truncated or damaged)" if found and not src.is_dir() else ""
        raise ValueError(
            f"{src}: missing CIFAR-10 batch(es) {', '.join(missing)}{damaged}; expected "
            "cifar-10-python.tar.gz or its cifar-10-batches-py folder"
        )
    return found


def prepare_cifar10(
    data_dir: Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    out_name: str | None = None,
) -> Path:
    """CIFAR-10 from ``cifar-10-python.tar.gz`` (or the extracted folder)."""
    src = require_path(path, "cifar10", "cifar-10-python.tar.gz")
    name = out_name or "cifar10"
    out_dir = Path(data_dir) / name
    params = file_params(src)
    if already_prepared(out_dir, name, params, force):
        return out_dir
    members = _cifar_members(src)
    batches = [
        _cifar_batch(members[m], f"{src.name}:{m}")
        for m in tqdm(_CIFAR_TRAIN, desc="reading CIFAR-10", disable=not progress)
    ]
    train = np.concatenate(batches)
    test = _cifar_batch(members[_CIFAR_TEST], f"{src.name}:{_CIFAR_TEST}")
    # val: the last 2,000 of the 50,000 training images
    return _write_held_out(
        out_dir, train, test, len(train) // 25, name=name, source=str(src.resolve()),
        licence="CIFAR-10 (Krizhevsky 2009); see its terms", params=params, progress=progress,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# ImageNet 64x64 (npz release)
# --------------------------------------------------------------------------------------------


def _load_npz_rows(path: Path) -> np.ndarray:
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
        raise ValueError(f"{path}: not a readable npz file ({e})") from e
    if not isinstance(z, np.lib.npyio.NpzFile):
        msg = f"{path}: expected an .npz archive, got a single .npy array"
        raise ValueError(msg)  # noqa: TRY004
    with z:
        if "data" not in z.files:
            raise ValueError(f"{path}: no 'data' array (keys: {', '.join(z.files)})")
        try:
            data = z["data"]
        except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
            raise ValueError(f"{path}: corrupt 'data' array ({e})") from e
    if data.dtype != np.uint8 or data.ndim != 2:
        raise ValueError(f"{path}: 'data' is {data.dtype} {data.shape}, expected uint8 (N, 3*S*S)")
    return data


def _npz_images(path: Path, chunk: int = 8192) -> Iterator[np.ndarray]:
    rows = _load_npz_rows(path)
    for i in range(0, len(rows), chunk):
        yield hwc_from_planar(rows[i : i + chunk])


def _batch_number(p: Path) -> int:
    m = re.search(r"(\d+)\.npz$", p.name)
    return int(m.group(1)) if m else 0


def prepare_imagenet64(
    data_dir: Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    out_name: str | None = None,
) -> Path:
    """Downsampled ImageNet from the npz release (``train_data_batch_*.npz``, ``val_data.npz``)."""
    what = "DIR (holding train_data_batch_*.npz and val_data.npz)"
    folder = require_path(path, "imagenet64", what, must_be="folder")
    train_files = sorted(folder.rglob("train_data_batch_*.npz"), key=_batch_number)
    val_files = sorted(folder.rglob("val_data.npz"))
    if not train_files or not val_files:
        raise ValueError(
            f"{folder}: need train_data_batch_*.npz and val_data.npz (unzip the "
            "Imagenet64_train_part1/2_npz.zip and Imagenet64_val_npz.zip files there)"
        )
    name = out_name or "imagenet64"
    out_dir = Path(data_dir) / name
    params = _fingerprint(folder, [*train_files, val_files[0]])
    if already_prepared(out_dir, name, params, force):
        return out_dir
    val_rows = _load_npz_rows(val_files[0])
    val = hwc_from_planar(val_rows)
    half = len(val) // 2

    def train_batches() -> Iterator[np.ndarray]:
        for f in tqdm(train_files, desc="train batches", disable=not progress, leave=False):
            yield from _npz_images(f)

    return write_image_dataset(
        out_dir, {"train": train_batches(), "val": [val[:half]], "test": [val[half:]]},
        name=name, image_shape=tuple(val.shape[1:]),
        source=f"{folder.resolve()}: {len(train_files)} train batches + {val_files[0].name}",
        licence="ImageNet terms of access (non-commercial research)", params=params,
        progress=progress,
    )  # fmt: skip


# --------------------------------------------------------------------------------------------
# A folder of PNG / JPEG files
# --------------------------------------------------------------------------------------------


def _pil() -> Any:
    try:
        from PIL import Image
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(
            "reading image files needs Pillow: pip install 'sparse-transformer[plots]'"
        ) from e
    return Image


def _load_image(path: Path, size: int, channels: int, crop: bool) -> np.ndarray:
    image_mod = _pil()
    try:
        with image_mod.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            if crop:
                w, h = im.size
                s = min(w, h)
                left, top = (w - s) // 2, (h - s) // 2
                im = im.crop((left, top, left + s, top + s))
            im = im.resize((size, size), image_mod.Resampling.LANCZOS)
            arr = np.asarray(im, dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({e})") from e
    return arr.reshape(size, size, channels)


def prepare_images(
    data_dir: Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    out_name: str | None = None,
    size: int | None = 32,
    channels: int | None = 3,
    crop: bool | None = True,
) -> Path:
    """Every PNG/JPEG under a folder, resized to ``size x size`` with ``channels`` 3 or 1."""
    folder = require_path(
        path, "images", "DIR (a folder of PNG/JPEG files) and --size S", must_be="folder"
    )
    size = 32 if size is None else int(size)
    channels = 3 if channels is None else channels
    crop = True if crop is None else bool(crop)
    if size < 1:
        raise ValueError(f"size must be a positive number of pixels, got {size}")
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    files = find_files(folder, IMAGE_SUFFIXES)
    if not files:
        raise ValueError(
            f"{folder}: no {'/'.join(IMAGE_SUFFIXES)} files found (searched recursively)"
        )
    name = out_name or "images"
    out_dir = Path(data_dir) / name
    params = {**_fingerprint(folder, files), "size": size, "channels": channels, "crop": crop}
    if already_prepared(out_dir, name, params, force):
        return out_dir
    assignment = pick_split_items(len(files))

    def load(split: str) -> Iterator[np.ndarray]:
        for i in assignment[split]:
            yield _load_image(files[i], size, channels, crop)[None]

    return write_image_dataset(
        out_dir, {s: load(s) for s in SPLITS}, name=name, image_shape=(size, size, channels),
        source=f"{folder.resolve()} ({len(files)} files)",
        licence="user-supplied images; see their source", params=params, progress=progress,
        total=len(files),
    )  # fmt: skip
