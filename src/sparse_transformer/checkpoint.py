"""Checkpoints: a run directory of complete, atomically written checkpoint directories.

Layout of a run directory ``OUT`` (the ``--out`` of ``train``)::

    OUT/ckpt-000600/config.json        the resolved Config (config_to_dict)
    OUT/ckpt-000600/model.safetensors  the model's full state dict (safetensors.torch)
    OUT/ckpt-000600/trainer.pt         optimizer state (keyed by parameter name), step, RNG states
                                       (python, numpy, torch, cuda, data generator), loss scaler,
                                       best val bits/byte; loads with torch.load(weights_only=True)
    OUT/ckpt-000600/data.json          what the model was trained on: the dataset's name, kind
                                       (text / image / audio), image_shape or sample_rate and
                                       encoding, split sizes and sha256, and where it lived (an
                                       absolute path and one relative to OUT); absent in
                                       checkpoints written before it existed
    OUT/latest                         "ckpt-000600\\n": the newest checkpoint
    OUT/best                           the checkpoint with the lowest val bits per byte
    OUT/metrics.jsonl                  one JSON object per log/eval event (written by train.py)
    OUT/.lock                          flock'ed by the training process for its whole life
                                       (:func:`lock_run_dir`): a second trainer on OUT is refused

Crash safety. Every file is written to a temporary name, flushed to disk and renamed. A checkpoint
is assembled in ``ckpt-000600.tmp`` and renamed to ``ckpt-000600`` only when complete, then the
``latest`` pointer is replaced (also by rename). Old checkpoints are renamed to ``*.del`` before
they are deleted. So a SIGKILL at any moment leaves ``latest`` naming a complete checkpoint, and
leftovers (``*.tmp``, ``*.del``) are ignored and cleaned up by the next run. Readers that find no
usable pointer fall back to the newest complete ``ckpt-*`` directory. A checkpoint that cannot be
written (full disk, read-only folder) leaves no ``ckpt-N.tmp`` behind and raises
:class:`CheckpointWriteError`, whose message says what to do; the previous checkpoint stays the
latest.

Readers (``eval``, ``sample``, :func:`load_model`) take no lock: they may run while a trainer
writes. Should the checkpoint they picked be pruned under them, they pick the new latest.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import Config, config_from_dict, config_to_json
from .locking import exclusive_lock, new_file_mode

log = logging.getLogger(__name__)

__all__ = [
    "CONFIG_FILE",
    "DATA_FILE",
    "MODEL_FILE",
    "TRAINER_FILE",
    "CheckpointWriteError",
    "DataMovedError",
    "atomic_write",
    "checkpoint_dirs",
    "data_record",
    "get_rng_state",
    "list_checkpoints",
    "load_config",
    "load_data_record",
    "load_model",
    "load_model_state",
    "load_trainer_state",
    "locate_data_dir",
    "lock_run_dir",
    "resolve_checkpoint",
    "save_checkpoint",
    "set_rng_state",
]

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
TRAINER_FILE = "trainer.pt"
DATA_FILE = "data.json"
LOCK_FILE = ".lock"
LATEST = "latest"
BEST = "best"
_CKPT_RE = re.compile(r"^ckpt-(\d+)$")


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (full disk, read-only folder ...); nothing half-written
    is left and the message says what to do."""


class DataMovedError(FileNotFoundError):
    """The dataset of a run is not where it was trained; the message says how to point at it."""


# --------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | str, *, fsync: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if fsync:
        _fsync_dir(path.parent)
    return path


def _atomic_save(path: Path, writer) -> None:
    """``writer(tmp_path)`` writes the file; then fsync and rename onto ``path``."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        writer(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, new_file_mode())  # safetensors creates its file 0600
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------------------------
# RNG states (weights_only-loadable: tensors, ints, tuples)
# --------------------------------------------------------------------------------------------


def get_rng_state(data_generator: torch.Generator | None = None) -> dict[str, Any]:
    """Python, numpy, torch (and CUDA) RNG states, plus the data generator's."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": {
            "name": str(np_state[0]),
            "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
            "pos": int(np_state[2]),
            "has_gauss": int(np_state[3]),
            "cached_gaussian": float(np_state[4]),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], data_generator: torch.Generator | None = None) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
         n["cached_gaussian"])
    )  # fmt: skip
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        states = state["cuda"]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    if data_generator is not None and "data" in state:
        data_generator.set_state(state["data"])


# --------------------------------------------------------------------------------------------
# Finding checkpoints
# --------------------------------------------------------------------------------------------


def _complete(d: Path) -> bool:
    return all((d / f).is_file() for f in (CONFIG_FILE, MODEL_FILE, TRAINER_FILE))


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoint directories of a run, oldest (lowest step) first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for d in run_dir.iterdir():
        m = _CKPT_RE.match(d.name)
        if m and d.is_dir() and _complete(d):
            found.append((int(m.group(1)), d))
    return [d for _, d in sorted(found)]


def checkpoint_dirs(run_dir: str | Path) -> Iterator[Path]:
    yield from list_checkpoints(run_dir)


def _read_pointer(run_dir: Path, name: str) -> Path | None:
    p = run_dir / name
    try:
        target = p.read_text(encoding="utf-8").strip()
    except (FileNotFoundError, UnicodeDecodeError, OSError):
        return None
    if not _CKPT_RE.match(target):
        return None
    d = run_dir / target
    return d if d.is_dir() and _complete(d) else None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint ``OUT/latest`` names, else the newest complete one, else None."""
    run_dir = Path(run_dir)
    d = _read_pointer(run_dir, LATEST)
    if d is not None:
        return d
    ckpts = list_checkpoints(run_dir)
    return ckpts[-1] if ckpts else None


def best_checkpoint(run_dir: str | Path) -> Path | None:
    return _read_pointer(Path(run_dir), BEST)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory (its latest) or a checkpoint directory."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if not p.is_dir():
        raise ValueError(f"checkpoint {str(path)!r} is not a directory")
    if (p / CONFIG_FILE).exists() or (p / MODEL_FILE).exists():
        missing = [f for f in (CONFIG_FILE, MODEL_FILE) if not (p / f).is_file()]
        if missing:
            raise ValueError(f"checkpoint {str(p)!r} is incomplete: no {', '.join(missing)}")
        return p
    d = latest_checkpoint(p)
    if d is None:
        raise ValueError(
            f"{str(path)!r} holds no checkpoint (expected a run directory with ckpt-* "
            f"subdirectories or a checkpoint directory with {CONFIG_FILE} and {MODEL_FILE})"
        )
    return d


# --------------------------------------------------------------------------------------------
# The run lock
# --------------------------------------------------------------------------------------------


@contextmanager
def lock_run_dir(run_dir: str | Path, *, enabled: bool = True) -> Iterator[Path]:
    """Create ``run_dir`` if needed and hold its lock (``run_dir/.lock``) for the ``with`` block.

    A second process on the same directory gets :class:`~sparse_transformer.locking.BusyError`
    at once. The lock dies with its process, so a run killed by ``kill -9`` resumes without
    clean-up. ``enabled=False`` (ranks other than 0 under torchrun) takes no lock. A directory
    created here that still holds nothing but the lock file at the end is removed again (a run
    refused before it wrote anything leaves no empty folder).
    """
    run_dir = Path(run_dir)
    if not enabled:
        yield run_dir
        return
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(
            f"--out {str(run_dir)!r} is a file, not a run directory; choose another --out"
        )
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_FILE
    with exclusive_lock(
        lock, f"run directory {str(run_dir)!r}",
        "wait for that `train` to finish, or choose another --out",
    ):  # fmt: skip
        try:
            yield run_dir
        finally:
            if created:
                try:
                    if [p.name for p in run_dir.iterdir()] == [LOCK_FILE]:
                        lock.unlink()
                        run_dir.rmdir()
                except OSError:
                    pass


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def _save_safetensors(state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state.items()}
    save_file(tensors, str(path), metadata=metadata)


def save_checkpoint(
    run_dir: str | Path,
    step: int,
    cfg: Config,
    model_state: dict[str, torch.Tensor],
    trainer_state: dict[str, Any],
    *,
    val_bpb: float | None = None,
    keep_last: int = 3,
    data: dict[str, Any] | None = None,
) -> Path:
    """Write ``run_dir/ckpt-{step:06d}`` atomically, point ``latest`` (and ``best`` if
    ``val_bpb`` beats the recorded best) at it, and prune to the last ``keep_last`` + best.

    ``trainer_state`` must hold only what ``torch.load(weights_only=True)`` reads back (tensors,
    numbers, strings, lists, tuples, dicts); ``best_val_bpb`` in it is kept up to date here.
    ``data`` (see :func:`data_record`) goes into ``data.json``. Returns the checkpoint directory.
    Raises :class:`CheckpointWriteError` (nothing half-written left) when a file cannot be
    written.
    """
    run_dir = Path(run_dir)
    name = f"ckpt-{step:06d}"
    final = run_dir / name
    tmp = run_dir / f"{name}.tmp"

    best_so_far = trainer_state.get("best_val_bpb")
    is_best = val_bpb is not None and (best_so_far is None or val_bpb < best_so_far)
    trainer_state = dict(trainer_state, step=int(step))
    if is_best:
        trainer_state["best_val_bpb"] = float(val_bpb)
        trainer_state["best_step"] = int(step)
    if val_bpb is not None:
        trainer_state["val_bpb"] = float(val_bpb)

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        atomic_write(tmp / CONFIG_FILE, config_to_json(cfg) + "\n")
        if data is not None:
            atomic_write(tmp / DATA_FILE, json.dumps(data, indent=2) + "\n")
        meta = {"step": str(step), "format": "sparse-transformer/1"}
        _atomic_save(tmp / MODEL_FILE, lambda p: _save_safetensors(model_state, p, meta))
        _atomic_save(tmp / TRAINER_FILE, lambda p: torch.save(trainer_state, p))
        _fsync_dir(tmp)
        if final.exists():  # re-saving a step (e.g. after a crash before `latest` moved)
            trash = run_dir / f"{name}.del"
            if trash.exists():
                shutil.rmtree(trash)
            os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
        _fsync_dir(run_dir)
        # A failure from here on leaves `final` complete; readers without a pointer to it fall
        # back to the pointed-at (older) checkpoint, and a resume re-saves this step.
        atomic_write(run_dir / LATEST, name + "\n")
        if is_best:
            atomic_write(run_dir / BEST, name + "\n")
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_error(e, run_dir, name) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("checkpoint %s%s", final, f" (best: val bpb {val_bpb:.4f})" if is_best else "")
    _prune(run_dir, keep_last)
    return final


def _write_error(e: Exception, run_dir: Path, name: str) -> CheckpointWriteError:
    """A one-line CheckpointWriteError for any failure while writing ``name`` (torch.save reports
    a full disk as ``RuntimeError: [enforce fail at inline_container.cc ...]``)."""
    import errno

    reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    if isinstance(e, OSError) and e.strerror:
        reason = e.strerror
    try:
        free = shutil.disk_usage(run_dir).free
    except OSError:
        free = None
    code = getattr(e, "errno", None)
    try:
        last = latest_checkpoint(run_dir)
    except OSError:
        last = None
    keep = f"{last.name} stays the latest checkpoint" if last else "the run has no checkpoint yet"
    mib = "" if free is None else f"{free / 2**20:.0f} MiB free"
    if code in (errno.EROFS, errno.EACCES, errno.EPERM):
        what = f"{reason} (the folder is not writable)"
        advice = "make it writable or copy the run elsewhere, then continue with --resume"
    elif code in (errno.ENOSPC, errno.EDQUOT):
        what = f"{reason}{f' ({mib})' if mib else ''}"
        advice = "free some space, then continue the run with --resume"
    elif free is not None and free < 64 << 20:  # torch.save's RuntimeError carries no errno
        what = f"the disk is full ({mib}; {reason})"
        advice = "free some space, then continue the run with --resume"
    else:
        what = reason
        advice = "fix the cause, then continue the run with --resume"
    err = CheckpointWriteError(
        f"cannot write checkpoint {name} in {run_dir}: {what}; {keep}; {advice}"
    )
    err.errno = code
    return err


def _prune(run_dir: Path, keep_last: int) -> None:
    ckpts = list_checkpoints(run_dir)
    keep = set(ckpts[-keep_last:]) if keep_last > 0 else set()
    for pointer in (LATEST, BEST):
        d = _read_pointer(run_dir, pointer)
        if d is not None:
            keep.add(d)
    for d in ckpts:
        if d not in keep:
            trash = d.with_name(d.name + ".del")
            os.replace(d, trash)
            shutil.rmtree(trash, ignore_errors=True)


def clean_leftovers(run_dir: str | Path) -> None:
    """Remove ``*.tmp`` / ``*.del`` directories and temporary files a killed run left behind."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return
    for d in run_dir.iterdir():
        if d.name.startswith("ckpt-") and d.suffix in (".tmp", ".del") and d.is_dir():
            shutil.rmtree(d, ignore_errors=True)
        elif d.name.startswith(".") and ".tmp-" in d.name and d.is_file():
            d.unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# What a run was trained on (data.json) and where that data is now
# --------------------------------------------------------------------------------------------

#: Keys of a dataset's meta.json copied into a checkpoint's data.json.
DATA_KEYS = (
    "name", "kind", "image_shape", "sample_rate", "encoding", "channels", "splits", "sha256",
)  # fmt: skip


def data_record(
    meta: dict[str, Any], dataset_dir: str | Path, run_dir: str | Path
) -> dict[str, Any]:
    """The ``data.json`` of a checkpoint: the kind of data (``meta.json``'s name, kind,
    image_shape / sample_rate / encoding, split sizes and hashes) and the dataset's location,
    absolute (``dataset_dir``) and relative to the run directory (``dataset_dir_from_run``)."""
    rec = {k: meta[k] for k in DATA_KEYS if k in meta}
    ds = Path(dataset_dir).expanduser().resolve()
    rec["dataset_dir"] = str(ds)
    try:
        rec["dataset_dir_from_run"] = os.path.relpath(ds, Path(run_dir).expanduser().resolve())
    except ValueError:  # pragma: no cover - another drive (Windows)
        pass
    return rec


def load_data_record(path: str | Path) -> dict[str, Any] | None:
    """The ``data.json`` of a checkpoint, or None for checkpoints written before it existed (or
    with an unreadable one, which is logged)."""
    d = resolve_checkpoint(path)
    f = d / DATA_FILE
    if not f.is_file():
        return None
    try:
        rec = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        log.warning("%s is unreadable (%s); ignoring it", f, e)
        return None
    if not isinstance(rec, dict) or rec.get("kind") not in ("text", "image", "audio"):
        log.warning("%s does not describe a dataset (no valid kind); ignoring it", f)
        return None
    return rec


def _run_dir_of(ckpt: Path) -> Path:
    return ckpt.parent if _CKPT_RE.match(ckpt.name) else ckpt


def locate_data_dir(cfg: Config, ckpt: str | Path, data_dir: str | None = None) -> str:
    """The data directory (holding ``cfg.data.dataset``) for a run's checkpoint ``ckpt``,
    whatever the working directory.

    ``data_dir`` (``--data-dir``) wins when given. Otherwise, the first folder that holds the
    prepared dataset among: ``data.data_dir`` of the config if absolute, the absolute location in
    ``data.json``, its location relative to the run directory (a run moved together with its
    data), and, for checkpoints without ``data.json``, ``data.data_dir`` relative to the working
    directory and then to each parent of the run directory. Raises :class:`DataMovedError`
    naming the places tried and what to do when none does.
    """
    if data_dir is not None:
        return str(Path(data_dir).expanduser())
    ckpt = Path(ckpt)
    run = _run_dir_of(ckpt)
    name = cfg.data.dataset
    rec = load_data_record(ckpt) or {}
    configured = Path(cfg.data.data_dir).expanduser()
    tried: list[Path] = []
    if configured.is_absolute():
        tried.append(configured)
    if isinstance(rec.get("dataset_dir"), str):
        tried.append(Path(rec["dataset_dir"]).parent)
    if isinstance(rec.get("dataset_dir_from_run"), str):
        tried.append((run / rec["dataset_dir_from_run"]).parent)
    if not configured.is_absolute():
        tried.append(configured)
        if not rec:  # an old checkpoint: data_dir was relative to where `train` ran
            tried += [parent / configured for parent in run.resolve().parents]
    for i, cand in enumerate(dict.fromkeys(tried)):
        if (cand / name / "meta.json").is_file():
            if i:
                log.info("dataset %r of this run found in %s", name, cand.resolve())
            return str(cand)
    where = rec.get("dataset_dir") or str(configured / name)
    raise DataMovedError(
        f"dataset {name!r} of run {str(run)!r} is not where it was trained ({where}) nor "
        f"anywhere tried ({', '.join(str(c) for c in list(dict.fromkeys(tried))[:4])}); if it "
        f"moved, pass --data-dir DIR (the folder holding {name}/), else prepare it again: "
        f"`sparse-transformer prepare {name} --data-dir DIR`"
    )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_config(path: str | Path) -> Config:
    """The Config stored in a checkpoint (run directory or checkpoint directory)."""
    d = resolve_checkpoint(path)
    try:
        raw = json.loads((d / CONFIG_FILE).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{d / CONFIG_FILE} is not valid JSON: {e}") from None
    return config_from_dict(raw)


def load_model_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of ``model.safetensors`` in a checkpoint, or ValueError if it is damaged."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = resolve_checkpoint(path)
    f = d / MODEL_FILE
    try:
        return load_file(str(f), device="cpu")
    except (SafetensorError, OSError, RuntimeError, ValueError) as e:
        raise ValueError(
            f"{f} is unreadable (truncated or corrupt?): {str(e).splitlines()[0]}"
        ) from None


def load_trainer_state(path: str | Path) -> dict[str, Any]:
    d = resolve_checkpoint(path)
    f = d / TRAINER_FILE
    if not f.is_file():
        raise ValueError(f"checkpoint {str(d)!r} has no {TRAINER_FILE}: it cannot be resumed")
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a damaged file
        raise ValueError(f"{f} is unreadable (truncated or corrupt?): {e}") from None


def check_state_matches(model: torch.nn.Module, state: dict[str, torch.Tensor], where: str) -> None:
    """ValueError naming the differences when ``state`` does not fit ``model``."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    extra = sorted(set(state) - set(own))
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or extra or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        if extra:
            parts.append(f"unexpected {', '.join(extra[:3])}{' ...' if len(extra) > 3 else ''}")
        if shapes:
            parts.append(f"shape {'; '.join(shapes[:2])}{' ...' if len(shapes) > 2 else ''}")
        raise ValueError(
            f"{where}: model.safetensors does not match the model of config.json "
            f"({'; '.join(parts)}); is the checkpoint from a different config?"
        )


def load_model(
    path: str | Path, *, device: str | torch.device = "cpu", eval_mode: bool = True
) -> torch.nn.Module:
    """A trained :class:`~sparse_transformer.model.SparseTransformer` from a run directory (its
    latest checkpoint) or one checkpoint directory; ``model(idx)`` maps (B, T) bytes to logits
    (B, T, 256). The config is on ``model.cfg`` and the whole Config on ``model.run_config``.

    Raises FileNotFoundError for a missing path and ValueError for a directory without a
    checkpoint, a damaged ``model.safetensors`` or weights that do not fit ``config.json``.
    """
    from .model import SparseTransformer

    for attempt in range(3):
        d = resolve_checkpoint(path)
        try:
            cfg = load_config(d)
            state = load_model_state(d)
            break
        except (FileNotFoundError, ValueError):
            # A trainer may prune the checkpoint we picked while we read it: take the new one.
            if attempt == 2 or d == Path(path) or d.is_dir() and _complete(d):
                raise
    model = SparseTransformer(cfg.model)
    check_state_matches(model, state, str(d))
    model.load_state_dict(state)
    model.run_config = cfg  # type: ignore[attr-defined]
    model.checkpoint_dir = d  # type: ignore[attr-defined]
    model.to(device)
    if eval_mode:
        model.eval()
    return model
