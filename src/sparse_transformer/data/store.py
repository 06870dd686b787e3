"""On-disk byte store and the datasets that read it.

A prepared dataset is a directory holding

* ``train.bin``, ``val.bin``, ``test.bin``: raw ``uint8`` bytes, readable with ``np.memmap``;
* ``meta.json``: ``name``, ``kind`` (``"text"``, ``"image"`` or ``"audio"``), ``splits``
  ({split: n_bytes}), ``sha256`` ({split: hex digest}), ``source``, ``licence``, ``params``
  (the preparation options, used to decide whether a re-run can be skipped) and, per kind,
  ``image_shape`` ``[H, W, C]`` (images) or ``sample_rate`` and ``encoding`` (audio).

Every file is written atomically (temporary file + rename), and ``meta.json`` is written last, so a
directory with a ``meta.json`` is always complete. The preparers build a dataset in a hidden sibling
folder ``.<name>.partial-<pid>`` and move it into place only once every split parsed and was
written (:func:`building_dataset`): a damaged source, a full disk or a kill leaves the previous
dataset (if any) untouched and nothing half-written under the dataset's name. Leftovers of a
killed ``prepare`` are removed (and logged) by the next ``prepare`` of the same dataset, which
holds a lock (``.<name>.lock``) so that two never build the same dataset at once.

Windows and targets
-------------------
The model predicts the next byte. A *window* of ``ctx + 1`` bytes ``w`` gives the inputs
``x = w[:-1]`` and the targets ``y = w[1:]``, both of length ``ctx``.

* Text and audio: windows start anywhere in the split.
* Images: a record is one image of ``R = H * W * C`` bytes in raster order with the channels of a
  pixel adjacent (r, g, b, r, g, b, ...). Each record is prefixed with a fixed *start byte* ``0``,
  so the window is ``[0] + record`` (``R + 1`` bytes): ``x = [0, p0, ..., p_{R-2}]`` and
  ``y = [p0, ..., p_{R-1}]``. Every pixel, the first included, is thus a scored target. Image
  datasets require ``ctx == R`` and windows are always whole records. The start byte is added
  when batches are built; it is not stored in the ``.bin`` files.

Distributed reading: :meth:`ByteDataset.get_batch` takes the *global* batch size plus ``rank`` and
``world_size``. Every rank draws the same global batch from the (identically seeded) generator and
keeps its own contiguous slice of rows, so ranks read disjoint windows and the generator state stays
in step on all ranks.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np
import torch

from ..locking import BusyError, exclusive_lock, new_file_mode

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

SPLITS: tuple[str, ...] = ("train", "val", "test")
KINDS: tuple[str, ...] = ("text", "image", "audio")
IMAGE_START_BYTE = 0
META_FILE = "meta.json"

__all__ = [
    "IMAGE_START_BYTE",
    "KINDS",
    "SPLITS",
    "ByteDataset",
    "SplitWriter",
    "already_prepared",
    "atomic_write_bytes",
    "begin_dataset",
    "building_dataset",
    "finish_dataset",
    "is_up_to_date",
    "load_meta",
    "split_sizes",
    "write_splits",
]


# --------------------------------------------------------------------------------------------
# Atomic writing
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _atomic_file(path: Path) -> Iterator[IO[bytes]]:
    """Open a temporary file next to ``path``; rename it onto ``path`` only on success."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temporary file in the same folder + rename)."""
    with _atomic_file(Path(path)) as f:
        f.write(data)


class SplitWriter:
    """Stream the bytes of one split to ``<dir>/<split>.bin`` atomically, hashing as it goes.

    Use as a context manager; the file appears under its final name only if the block exits
    without an exception::

        with SplitWriter(out_dir, "train") as w:
            w.write(array_or_bytes)
        w.n_bytes, w.sha256
    """

    def __init__(self, out_dir: str | Path, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
        self.path = Path(out_dir) / f"{split}.bin"
        self.split = split
        self.n_bytes = 0
        self._hash = hashlib.sha256()
        self._cm: contextlib.AbstractContextManager[IO[bytes]] | None = None
        self._file: IO[bytes] | None = None

    def __enter__(self) -> Self:
        self._cm = _atomic_file(self.path)
        self._file = self._cm.__enter__()
        return self

    def write(self, data: bytes | bytearray | memoryview | np.ndarray) -> None:
        """Append bytes; a numpy array must be ``uint8`` and is written in C order."""
        if self._file is None:
            raise RuntimeError("SplitWriter.write called outside its `with` block")
        if isinstance(data, np.ndarray):
            if data.dtype != np.uint8:
                raise ValueError(f"split data must be uint8, got dtype {data.dtype}")
            data = np.ascontiguousarray(data).tobytes()
        self._hash.update(data)
        self._file.write(data)
        self.n_bytes += len(data)

    def __exit__(self, *exc: object) -> None:
        assert self._cm is not None
        self._file = None
        self._cm.__exit__(*exc)  # type: ignore[arg-type]

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def split_sizes(
    n: int, fractions: tuple[float, float, float] = (0.90, 0.05, 0.05)
) -> dict[str, int]:
    """Sizes of train/val/test for ``n`` items split by ``fractions`` (val and test rounded down,
    train takes the remainder)."""
    if n < 0:
        raise ValueError(f"cannot split a negative count {n}")
    n_val = int(n * fractions[1])
    n_test = int(n * fractions[2])
    return {"train": n - n_val - n_test, "val": n_val, "test": n_test}


def load_meta(dataset_dir: str | Path) -> dict[str, Any]:
    """Read ``meta.json`` of a prepared dataset directory."""
    path = Path(dataset_dir) / META_FILE
    if not path.is_file():
        raise ValueError(
            f"{dataset_dir} is not a prepared dataset (no {META_FILE}); "
            "run `sparse-transformer prepare <name> --data-dir ...` first"
        )
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("kind") not in KINDS:
        raise ValueError(f"{path}: kind {meta.get('kind')!r} is not one of {', '.join(KINDS)}")
    return meta


def already_prepared(
    out_dir: str | Path, name: str, params: Mapping[str, Any], force: bool
) -> bool:
    """True (and logged) when a preparer can skip its work: not forced and up to date. Leftovers
    of a killed ``prepare`` of this dataset are removed either way (when no other is running)."""
    if not force and is_up_to_date(out_dir, name, params):
        out_dir = Path(out_dir)
        with contextlib.suppress(BusyError), _dataset_lock(out_dir):
            _remove_leftovers(out_dir)
        logger.info(
            "%s is up to date; skipping (use --force, force=True in Python, to rebuild)", out_dir
        )
        return True
    return False


def is_up_to_date(out_dir: str | Path, name: str, params: Mapping[str, Any]) -> bool:
    """True when ``out_dir`` already holds dataset ``name`` prepared with the same ``params`` and
    every split file has the size recorded in its ``meta.json``."""
    out_dir = Path(out_dir)
    try:
        meta = load_meta(out_dir)
    except (ValueError, OSError, json.JSONDecodeError):
        return False
    if meta.get("name") != name or meta.get("params") != _jsonable(dict(params)):
        return False
    for split, n in meta.get("splits", {}).items():
        f = out_dir / f"{split}.bin"
        if not f.is_file() or f.stat().st_size != n:
            return False
    return set(meta.get("splits", {})) == set(SPLITS)


def begin_dataset(out_dir: str | Path) -> Path:
    """Create ``out_dir`` and remove a stale ``meta.json`` so that an interrupted re-preparation
    never leaves an old ``meta.json`` describing new files."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        (out_dir / META_FILE).unlink()
    return out_dir


@contextlib.contextmanager
def building_dataset(out_dir: str | Path) -> Iterator[Path]:
    """Build the dataset ``out_dir`` in a hidden sibling folder and publish it on success.

    Yields the folder to write the splits and ``meta.json`` into (with :func:`write_splits` and
    :func:`finish_dataset`). When the block ends without an exception the new files replace
    ``out_dir``'s (``meta.json`` last); on an exception the folder is removed and ``out_dir`` is
    left as it was. Holds the dataset's lock (:class:`~sparse_transformer.locking.BusyError` when
    another ``prepare`` builds it) and first removes what killed runs left behind.
    """
    out_dir = Path(out_dir)
    parent = out_dir.parent
    parent.mkdir(parents=True, exist_ok=True)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir} is a file; a dataset needs a folder of that name")
    with _dataset_lock(out_dir):
        _remove_leftovers(out_dir)
        stage = parent / f".{out_dir.name}.partial-{os.getpid()}"
        stage.mkdir()
        try:
            yield stage
            out_dir.mkdir(exist_ok=True)
            with contextlib.suppress(FileNotFoundError):
                (out_dir / META_FILE).unlink()  # the old files stop being a dataset first
            for f in sorted(stage.iterdir(), key=lambda f: f.name == META_FILE):
                os.replace(f, out_dir / f.name)
            stage.rmdir()
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise


def _dataset_lock(out_dir: Path) -> contextlib.AbstractContextManager[None]:
    return exclusive_lock(
        out_dir.parent / f".{out_dir.name}.lock", f"dataset {str(out_dir)!r}",
        "wait for that `prepare` to finish",
    )  # fmt: skip


def _remove_leftovers(out_dir: Path) -> None:
    """Delete the staging folders and temporary split files a killed ``prepare`` of ``out_dir``
    left (caller holds the dataset's lock), saying how much was freed."""
    found = list(out_dir.parent.glob(f".{out_dir.name}.partial-*"))
    if out_dir.is_dir():  # temporary files of older versions, written inside the dataset
        found += [p for p in out_dir.glob(".*.tmp") if p.is_file()]
    if not found:
        return
    size = 0
    for p in found:
        if p.is_dir():
            size += sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
            shutil.rmtree(p, ignore_errors=True)
        else:
            size += p.stat().st_size
            p.unlink(missing_ok=True)
    logger.info(
        "removed %d leftover(s) of an interrupted prepare of %s (%.1f MB)",
        len(found), out_dir, size / 1e6,
    )  # fmt: skip


def finish_dataset(
    out_dir: str | Path,
    writers: Mapping[str, SplitWriter],
    *,
    name: str,
    kind: str,
    source: str,
    licence: str,
    params: Mapping[str, Any],
    **extra: Any,
) -> dict[str, Any]:
    """Write ``meta.json`` (atomically, last) for splits written with :class:`SplitWriter`."""
    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}; choose from {', '.join(KINDS)}")
    if set(writers) != set(SPLITS):
        raise ValueError(f"need writers for splits {SPLITS}, got {sorted(writers)}")
    if writers["train"].n_bytes == 0:
        total = sum(w.n_bytes for w in writers.values())
        raise ValueError(
            f"{source}: no data to train on ("
            + ("0 bytes after parsing" if total == 0 else "the train split is empty")
            + "); nothing was prepared. Check the source: is it empty, or are its files empty?"
        )
    meta: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "splits": {s: writers[s].n_bytes for s in SPLITS},
        "sha256": {s: writers[s].sha256 for s in SPLITS},
        "source": source,
        "licence": licence,
        "params": _jsonable(dict(params)),
        **_jsonable(extra),
    }
    text = json.dumps(meta, indent=2, sort_keys=False) + "\n"
    atomic_write_bytes(Path(out_dir) / META_FILE, text.encode("utf-8"))
    logger.info(
        "prepared %s (%s) in %s: %s",
        name,
        kind,
        _public_name(Path(out_dir)),
        ", ".join(f"{s} {n:,} B" for s, n in meta["splits"].items()),
    )
    return meta


def _public_name(d: Path) -> Path:
    """``data/name`` for the staging folder ``data/.name.partial-PID`` of a build."""
    if d.name.startswith(".") and ".partial-" in d.name:
        return d.parent / d.name[1:].rsplit(".partial-", 1)[0]
    return d


def _jsonable(obj: Any) -> Any:
    """Round-trip through JSON so that stored and freshly built params compare equal."""
    return json.loads(json.dumps(obj, default=str))


# --------------------------------------------------------------------------------------------
# Dataset
# --------------------------------------------------------------------------------------------


class ByteDataset:
    """One split of a prepared dataset, memory-mapped.

    Attributes: ``kind``, ``meta``, ``split``, ``data`` (``np.memmap`` of ``uint8``),
    ``record_size`` (bytes per image for image datasets, else ``None``); ``len(ds)`` is the
    number of bytes in the split.
    """

    def __init__(self, dataset_dir: str | Path, split: str) -> None:
        self.dir = Path(dataset_dir)
        self.meta = load_meta(self.dir)
        if split not in self.meta["splits"]:
            raise ValueError(
                f"unknown split {split!r}; choose from {', '.join(self.meta['splits'])}"
            )
        self.split = split
        self.kind: str = self.meta["kind"]
        n = int(self.meta["splits"][split])
        path = self.dir / f"{split}.bin"
        if not path.is_file() or path.stat().st_size != n:
            raise ValueError(
                f"{path} is missing or its size differs from meta.json ({n:,} B); "
                "prepare the dataset again with --force"
            )
        # np.memmap cannot map an empty file.
        self.data: np.ndarray = (
            np.memmap(path, dtype=np.uint8, mode="r") if n else np.zeros(0, dtype=np.uint8)
        )
        self.record_size: int | None = None
        if self.kind == "image":
            h, w, c = (int(v) for v in self.meta["image_shape"])
            self.record_size = h * w * c
            if n % self.record_size:
                raise ValueError(
                    f"{path}: {n:,} B is not a whole number of {self.record_size}-byte images"
                )

    def __len__(self) -> int:
        return int(self.data.shape[0])

    def __repr__(self) -> str:
        return (
            f"ByteDataset({str(self.dir)!r}, {self.split!r}, kind={self.kind!r}, bytes={len(self)})"
        )

    @property
    def n_records(self) -> int | None:
        """Number of images (image datasets), else ``None``."""
        return None if self.record_size is None else len(self) // self.record_size

    def verify(self) -> None:
        """Recompute the split's sha256 and compare with ``meta.json`` (raises ``ValueError``)."""
        h = hashlib.sha256()
        step = 1 << 24
        for i in range(0, len(self), step):
            h.update(np.asarray(self.data[i : i + step]).tobytes())
        want = self.meta["sha256"][self.split]
        if h.hexdigest() != want:
            raise ValueError(f"{self.dir / self.split}.bin: sha256 {h.hexdigest()} != {want}")

    # ---------------------------------------------------------------- training batches

    def _check_ctx(self, ctx: int) -> None:
        if ctx < 1:
            raise ValueError(f"ctx must be >= 1, got {ctx}")
        if self.kind == "image":
            if ctx != self.record_size:
                raise ValueError(
                    f"image dataset {self.meta['name']!r} needs ctx == record size "
                    f"{self.record_size} (image_shape {self.meta['image_shape']}), got ctx={ctx}"
                )
            if not self.n_records:
                raise ValueError(f"split {self.split!r} of {self.meta['name']!r} has no images")
        elif len(self) < ctx + 1:
            raise ValueError(
                f"split {self.split!r} of {self.meta['name']!r} has {len(self)} bytes, "
                f"fewer than ctx + 1 = {ctx + 1}"
            )

    def _image_windows(self, idx: np.ndarray) -> np.ndarray:
        r = self.record_size
        assert r is not None
        out = np.empty((len(idx), r + 1), dtype=np.int64)
        out[:, 0] = IMAGE_START_BYTE
        for row, i in enumerate(idx):
            out[row, 1:] = self.data[int(i) * r : (int(i) + 1) * r]
        return out

    def _byte_windows(self, starts: np.ndarray, ctx: int) -> np.ndarray:
        out = np.empty((len(starts), ctx + 1), dtype=np.int64)
        for row, s in enumerate(starts):
            out[row] = self.data[int(s) : int(s) + ctx + 1]
        return out

    def get_batch(
        self,
        batch_size: int,
        ctx: int,
        generator: torch.Generator,
        rank: int = 0,
        world_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random training windows: ``(x, y)``, both ``LongTensor (batch_size // world_size, ctx)``.

        ``batch_size`` is the *global* batch size. The global batch is drawn from ``generator``
        (so the result depends only on its state) and rank ``rank`` receives rows
        ``[rank * B / W, (rank + 1) * B / W)``. ``y[:, t]`` is the byte that follows ``x[:, t]``.
        For image datasets ``ctx`` must equal the record size and each row is a whole image
        preceded by the start byte (see the module docstring).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        if batch_size % world_size:
            raise ValueError(
                f"global batch_size {batch_size} is not divisible by world_size {world_size}"
            )
        self._check_ctx(ctx)
        if self.kind == "image":
            assert self.n_records is not None
            draw = torch.randint(0, self.n_records, (batch_size,), generator=generator)
        else:
            draw = torch.randint(0, len(self) - ctx, (batch_size,), generator=generator)
        per_rank = batch_size // world_size
        mine = draw[rank * per_rank : (rank + 1) * per_rank].numpy()
        w = self._image_windows(mine) if self.kind == "image" else self._byte_windows(mine, ctx)
        wt = torch.from_numpy(w)
        return wt[:, :-1].contiguous(), wt[:, 1:].contiguous()

    # ---------------------------------------------------------------- evaluation windows

    def eval_windows(self, ctx: int, min_context: int = 0) -> list[tuple[int, int, int]]:
        """The evaluation plan: ``(start, first_scored_column, n_valid_columns)`` per window.

        Text/audio: window ``k`` covers inputs ``data[start : start + ctx]`` and targets
        ``data[start + 1 : start + ctx + 1]``. Starts advance by ``ctx - min_context``; the first
        window scores every target, later ones only targets not yet scored, which sit at column
        ``>= min_context`` and so see at least ``min_context + 1`` bytes of context. The last
        window is aligned to the end of the split (it scores only the leftover targets); a split
        shorter than ``ctx + 1`` gives one window padded at the end (``n_valid_columns < ctx``).
        Images: one window per record, start = record index, all ``ctx`` columns scored.
        """
        if not 0 <= min_context < ctx:
            raise ValueError(
                f"need 0 <= min_context < ctx, got min_context={min_context}, ctx={ctx}"
            )
        if self.kind == "image":
            self._check_ctx(ctx)
            assert self.n_records is not None
            return [(i, 0, ctx) for i in range(self.n_records)]
        n = len(self)
        last_target = n - 1  # targets are positions 1 .. n-1
        if last_target < 1:
            return []
        stride = ctx - min_context
        plan: list[tuple[int, int, int]] = []
        covered = 0  # highest target position already scored
        start = 0
        while start + ctx <= last_target:
            plan.append((start, covered - start, ctx))  # covered - start == first new column
            covered = start + ctx
            start += stride
        if covered < last_target:
            start = max(0, last_target - ctx)
            n_valid = min(ctx, last_target - start)
            plan.append((start, covered - start, n_valid))
        return plan

    def iter_eval_windows(
        self,
        ctx: int,
        min_context: int = 0,
        batch_size: int = 8,
        rank: int = 0,
        world_size: int = 1,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """Yield ``(x, y, score_mask)`` batches that score every target of the split exactly once.

        ``x`` and ``y`` are ``LongTensor (b, ctx)``, ``score_mask`` is ``BoolTensor (b, ctx)`` with
        ``b <= batch_size`` (the last batch may be smaller). The loss over the split is the sum of
        the per-target losses where ``score_mask`` is true. Padded columns (only in a split shorter
        than ``ctx + 1``) hold byte 0 and are never scored. See :meth:`eval_windows` for the plan.
        With ``world_size > 1`` rank ``rank`` gets windows ``rank, rank + W, ...``; the union over
        ranks is the whole plan.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}"
            )
        plan = self.eval_windows(ctx, min_context)[rank::world_size]
        cols = np.arange(ctx)
        for b0 in range(0, len(plan), batch_size):
            rows = plan[b0 : b0 + batch_size]
            if self.kind == "image":
                w = self._image_windows(np.array([r[0] for r in rows]))
            else:
                w = np.zeros((len(rows), ctx + 1), dtype=np.int64)
                for i, (start, _, n_valid) in enumerate(rows):
                    w[i, : n_valid + 1] = self.data[start : start + n_valid + 1]
            first = np.array([r[1] for r in rows])[:, None]
            valid = np.array([r[2] for r in rows])[:, None]
            mask = (cols[None, :] >= first) & (cols[None, :] < valid)
            wt = torch.from_numpy(w)
            yield wt[:, :-1].contiguous(), wt[:, 1:].contiguous(), torch.from_numpy(mask)

    def n_eval_windows(self, ctx: int, min_context: int = 0) -> int:
        """Number of windows :meth:`iter_eval_windows` produces (over all ranks)."""
        return len(self.eval_windows(ctx, min_context))


# --------------------------------------------------------------------------------------------
# Helpers shared by the preparers
# --------------------------------------------------------------------------------------------


def require_path(
    path: str | Path | None, dataset: str, what: str, *, must_be: str | None = None
) -> Path:
    """Return ``path`` as an existing ``Path`` or raise a ``ValueError`` naming the ``--path``
    flag the dataset needs (``what`` describes it, e.g. ``"FILE (any file of bytes)"``).
    ``must_be="file"`` or ``"folder"`` also checks what it is."""
    if path is None:
        raise ValueError(f"dataset {dataset!r} needs --path {what}")
    p = Path(path).expanduser()
    if not p.exists():
        raise ValueError(
            f"dataset {dataset!r}: --path {str(path)!r} does not exist (expected {what})"
        )
    assert must_be in (None, "file", "folder"), must_be
    if (must_be == "file" and not p.is_file()) or (must_be == "folder" and not p.is_dir()):
        raise ValueError(f"dataset {dataset!r}: --path {str(p)!r} is not a {must_be}")
    return p


def file_params(path: Path) -> dict[str, Any]:
    """Identity of a source file or folder for the up-to-date check: resolved path, size, mtime."""
    st = path.stat()
    return {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def path_params(
    path: str | Path | None, dataset: str, what: str, key: str = "file"
) -> dict[str, Any]:
    """``{key: file_params(path)}`` for the optional ``--path`` of a dataset that is otherwise
    downloaded (checked with :func:`require_path`), and ``{}`` when no path is given."""
    if path is None:
        return {}
    return {key: file_params(require_path(path, dataset, what))}


def find_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Files under ``folder`` (recursively) whose suffix, lower-cased, is one of ``suffixes``,
    sorted by their path relative to ``folder``."""
    return sorted(
        (p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes),
        key=lambda p: p.relative_to(folder).as_posix(),
    )


def write_splits(
    out_dir: Path, splits: Mapping[str, Iterable[bytes | np.ndarray]]
) -> dict[str, SplitWriter]:
    """Write the chunks of each split to its ``.bin`` file with a :class:`SplitWriter`, in the
    order train, val, test; returns the writers for :func:`finish_dataset`."""
    writers: dict[str, SplitWriter] = {}
    for split in SPLITS:
        with SplitWriter(out_dir, split) as w:
            for chunk in splits[split]:
                w.write(chunk)
        writers[split] = w
    return writers


def pick_split_items(n: int, min_items_for_split: int = 3) -> dict[str, list[int]]:
    """Assign ``n`` items (files) to train/val/test, about 90/5/5, deterministically.

    Items are taken in their given (sorted) order; val and test each get ``max(1, n // 20)``
    items spread evenly through the list (test first, then val from the rest) so that a folder
    sorted by class or by recording does not put one whole group in a held-out split. With fewer
    than ``min_items_for_split`` items every item goes to train.
    """
    idx = list(range(n))
    if n < min_items_for_split:
        return {"train": idx, "val": [], "test": []}
    k = max(1, n // 20)
    out: dict[str, list[int]] = {}
    rest = idx
    for split in ("test", "val"):
        take = {rest[int((j + 0.5) * len(rest) / k)] for j in range(k)}
        out[split] = sorted(take)
        rest = [i for i in rest if i not in take]
    out["train"] = rest
    return {s: out[s] for s in SPLITS}
