"""The dataset registry: :data:`PREPARERS` and :func:`prepare`."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .audio import prepare_audio, prepare_moh_music
from .images import (
    prepare_cifar10,
    prepare_fashion_mnist,
    prepare_imagenet64,
    prepare_images,
    prepare_mnist,
)
from .text import prepare_enwik8, prepare_gcide, prepare_shakespeare, prepare_text

__all__ = ["PREPARERS", "prepare"]

#: Dataset name -> preparer ``fn(data_dir, *, path, progress, force, out_name, ...) -> Path``.
PREPARERS: dict[str, Callable[..., Path]] = {
    # text
    "shakespeare": prepare_shakespeare,
    "text": prepare_text,
    "enwik8": prepare_enwik8,
    "gcide": prepare_gcide,
    # images
    "fashion-mnist": prepare_fashion_mnist,
    "mnist": prepare_mnist,
    "cifar10": prepare_cifar10,
    "imagenet64": prepare_imagenet64,
    "images": prepare_images,
    # audio
    "audio": prepare_audio,
    "moh-music": prepare_moh_music,
}


def preparer_options(name: str) -> list[str]:
    """The keyword options dataset ``name`` accepts besides ``path`` and ``progress``."""
    fn = _lookup(name)
    params = inspect.signature(fn).parameters
    return [p for p in params if p not in ("data_dir", "path", "progress")]


def _lookup(name: str) -> Callable[..., Path]:
    try:
        return PREPARERS[name]
    except KeyError:
        raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(PREPARERS)}") from None


def prepare(
    name: str,
    data_dir: str | Path,
    *,
    path: str | Path | None = None,
    progress: bool = True,
    **options: Any,
) -> Path:
    """Prepare dataset ``name`` under ``data_dir`` and return its directory.

    The directory is ``data_dir / name`` (``text`` uses the file stem; any dataset takes
    ``out_name``). It receives ``train.bin``, ``val.bin``, ``test.bin`` and ``meta.json``, written
    atomically. Re-running with the same inputs and options does nothing unless ``force=True``.
    Options per dataset: :func:`preparer_options`. Raises ``ValueError`` for an unknown dataset
    or option, a missing ``path`` and bad files; :class:`~.sources.FetchError` when a download
    fails.
    """
    fn = _lookup(name)
    allowed = preparer_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(map(repr, unknown))} for dataset {name!r}; "
            f"choose from {', '.join(allowed)}"
        )
    if path is not None:  # "~/x.deb" reaches us unexpanded when quoted or from Python
        path = Path(path).expanduser()
    return fn(Path(data_dir).expanduser(), path=path, progress=progress, **options)
