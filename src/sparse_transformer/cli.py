"""The ``sparse-transformer`` command: prepare, train, eval, sample, patterns.

The only module that prints. Library code logs through ``logging``; here the log records go to
stderr (through tqdm, so they do not break progress bars), results go to stdout. User errors
(bad flags, unknown presets or keys, missing data, damaged checkpoints or sources, a run directory
another ``train`` holds) end with one line ``error: ...`` on stderr and exit status 2; failures
while running (a full disk, a read-only folder, a diverged run, a failed download) with one line
and exit status 1; never a traceback.

    sparse-transformer prepare shakespeare --data-dir data
    sparse-transformer train --preset shakespeare --out runs/shakespeare --model.n_layer=6
    sparse-transformer train --out runs/shakespeare --resume --train.max_steps=1200
    sparse-transformer eval --checkpoint runs/shakespeare --split test --min-context 128 --json
    sparse-transformer sample --checkpoint runs/shakespeare --prompt "ROMEO:" --length 400
    sparse-transformer sample --checkpoint runs/fmnist --num 16 --out samples      # PNG grid
    sparse-transformer sample --checkpoint runs/fmnist --complete 8 --out samples  # completions
    sparse-transformer patterns --pattern fixed --stride 8 --c 2 --n 64 --out fixed.png
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

__all__ = ["SAMPLE_OUTPUTS", "UsageError", "main"]

log = logging.getLogger("sparse_transformer.cli")


class UsageError(ValueError):
    """A bad command line (reported in one line, exit 2)."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (``error: ...``) with exit status 2."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{self.prog}: {message}")


# --------------------------------------------------------------------------------------------
# Logging and output
# --------------------------------------------------------------------------------------------


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001
            self.handleError(record)


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def setup_logging(verbosity: int = 0) -> None:
    """Our loggers at INFO (DEBUG with -v, WARNING with -q and on ranks other than 0)."""
    level = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    if _rank() != 0:
        level = logging.WARNING
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("sparse_transformer")
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False


def _out(text: str = "") -> None:
    if _rank() == 0:
        print(text, flush=True)


# --------------------------------------------------------------------------------------------
# prepare
# --------------------------------------------------------------------------------------------


def _parse_options(name: str, extras: list[str]) -> dict[str, Any]:
    """``--key=value`` / ``--key value`` / ``--flag`` options of preparer ``name``, typed by its
    signature."""
    from .data import PREPARERS, preparer_options

    if name not in PREPARERS:
        raise UsageError(f"unknown dataset {name!r}; choose from {', '.join(PREPARERS)}")
    allowed = [o for o in preparer_options(name) if o not in ("force", "fetch")]
    hints = typing.get_type_hints(PREPARERS[name])
    opts: dict[str, Any] = {}
    i = 0
    while i < len(extras):
        a = extras[i]
        if not a.startswith("--"):
            raise UsageError(f"unexpected argument {a!r} for prepare {name}")
        key, eq, value = a[2:].partition("=")
        key = key.replace("-", "_")
        if key not in allowed:
            raise UsageError(
                f"unknown option --{key.replace('_', '-')} for dataset {name!r}; "
                f"choose from {', '.join('--' + o.replace('_', '-') for o in allowed) or '(none)'}"
            )
        tp = hints.get(key, str)
        args = [x for x in typing.get_args(tp) if x is not type(None)] or [tp]
        base = args[0]
        if not eq:
            nxt = extras[i + 1] if i + 1 < len(extras) else None
            if base is bool and (nxt is None or nxt.startswith("--")):
                value = "true"
            elif nxt is None:
                raise UsageError(f"option --{key.replace('_', '-')} needs a value")
            else:
                value = nxt
                i += 1
        from .config import parse_value

        opts[key] = parse_value(f"--{key}", value, base)
        i += 1
    return opts


def cmd_prepare(args: argparse.Namespace, extras: list[str]) -> int:
    from .data import prepare

    options = _parse_options(args.name, extras)
    # An absolute data directory: downloads run with their own working directory.
    data_dir = _folder_arg("--data-dir", args.data_dir).resolve()
    out = prepare(
        args.name, data_dir, path=args.path, progress=not args.no_progress,
        force=args.force, **options,
    )  # fmt: skip
    _out(str(out))
    return 0


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------


def cmd_train(args: argparse.Namespace, extras: list[str]) -> int:
    from . import checkpoint as C
    from .config import apply_overrides, get_preset
    from .train import train

    out = _folder_arg("--out", args.out, what="a run directory")
    ckpt = C.latest_checkpoint(out) if args.resume else None
    preset = get_preset(args.preset) if args.preset else None
    if ckpt is not None:
        cfg = C.load_config(ckpt)  # the run's own config; overrides below change train.* etc.
    elif preset is not None:
        cfg = preset
    else:
        raise UsageError(
            "train needs --preset NAME"
            + (f" ({out} holds no checkpoint to resume)" if args.resume else "")
        )
    overrides: list[Any] = []
    if args.data_dir is not None:
        overrides.append(("data.data_dir", str(_folder_arg("--data-dir", args.data_dir))))
    if args.dataset is not None:
        overrides.append(("data.dataset", args.dataset))
    from .config import parse_override_args

    overrides += parse_override_args(extras)
    cfg = apply_overrides(cfg, overrides) if overrides else cfg
    if ckpt is not None and args.data_dir is None and not any(
        k in ("data.data_dir", "data.dataset") for k, _ in overrides
    ):  # the run's data, wherever `train` runs from
        cfg = apply_overrides(cfg, {"data.data_dir": C.locate_data_dir(cfg, ckpt)})
    # An absolute data directory in the checkpoints: eval and sample work from any folder.
    cfg = apply_overrides(
        cfg, {"data.data_dir": str(Path(cfg.data.data_dir).expanduser().resolve())}
    )
    result = train(cfg, out, resume=args.resume, progress=not args.no_progress)
    if args.json:
        _out(json.dumps(result))
    else:
        val = result["val_bpb"]
        _out(
            f"trained to step {result['step']}: val {_unit(_dataset_meta(cfg))} "
            f"{'-' if val is None else f'{val:.4f}'} (on {cfg.train.eval_batches or 'all'} "
            f"val batches) in {result['seconds']:.0f} s; checkpoint {result['checkpoint']}"
        )
    return 0


# --------------------------------------------------------------------------------------------
# eval
# --------------------------------------------------------------------------------------------


def _load(checkpoint: str, device: str):
    from .checkpoint import load_model
    from .train import resolve_device

    return load_model(checkpoint, device=resolve_device(device))


def _open_run(args: argparse.Namespace, extras: list[str]):
    """(model, config) of ``--checkpoint`` for eval/sample; no extra arguments allowed. The
    config's ``data.data_dir`` points at the run's dataset wherever we run from
    (:func:`~sparse_transformer.checkpoint.locate_data_dir`), unless it cannot be found (then
    ``--data-dir`` or the stored one, and reading the data fails with a clear message)."""
    if extras:
        raise UsageError(f"unrecognized arguments: {' '.join(extras)}")
    model = _load(args.checkpoint, args.device)
    return model, _run_config(model, args.data_dir)


def _run_config(model, data_dir: str | None):
    from .checkpoint import DataMovedError, locate_data_dir
    from .config import apply_overrides

    cfg = model.run_config
    if data_dir is not None:
        data_dir = str(_folder_arg("--data-dir", data_dir))
    try:
        found = locate_data_dir(cfg, model.checkpoint_dir, data_dir)
    except DataMovedError as e:
        model.data_error = e  # raised when the data is needed (eval, --complete)
    else:
        cfg = apply_overrides(cfg, {"data.data_dir": found})
    if cfg.train.threads:  # the run's CPU thread count (small models sample faster on one)
        import torch

        torch.set_num_threads(cfg.train.threads)
    return cfg


def _open_data(model, cfg, split: str):
    """The ``split`` of the run's dataset (DataMovedError when it could not be found)."""
    from .train import open_dataset

    err = getattr(model, "data_error", None)
    if err is not None:
        raise err
    ds = open_dataset(cfg, split)
    rec = _data_record(model)
    if rec is not None:
        for key in ("splits", "sha256"):
            if key in rec and ds.meta.get(key, {}).get(split) != rec[key].get(split):
                log.warning(
                    "the %s split in %s differs from the one this run was trained with (%s); "
                    "the dataset was prepared again from another source or with other options",
                    split, ds.dir, key,
                )  # fmt: skip
                break
    return ds


def _data_record(model) -> dict[str, Any] | None:
    from .checkpoint import load_data_record

    if not hasattr(model, "data_record"):
        model.data_record = load_data_record(model.checkpoint_dir)
    return model.data_record


def cmd_eval(args: argparse.Namespace, extras: list[str]) -> int:
    from .compilation import apply_compile, should_compile
    from .evaluate import evaluate

    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    model, cfg = _open_run(args, extras)
    ds = _open_data(model, cfg, args.split)
    if should_compile(cfg.train.compile, next(model.parameters()).device):
        mode = cfg.train.compile_mode  # auto: no CUDA graphs for one evaluation pass
        apply_compile(model, "default" if mode == "auto" else mode, cfg.model.ctx)
    r = evaluate(
        model, ds, min_context=args.min_context, batch_size=args.batch_size,
        progress=not args.no_progress,
    )  # fmt: skip
    if args.json:
        res = {"bits_per_byte": r["bits_per_byte"], "tokens": r["tokens"], "split": args.split,
               "min_context": args.min_context, "checkpoint": str(model.checkpoint_dir)}  # fmt: skip
        if ds.kind == "image":  # one byte per sub-pixel: bits per dim = bits per byte
            res["bits_per_dim"] = r["bits_per_byte"]
        _out(json.dumps(res))  # fmt: skip
    else:
        _out(
            f"{args.split} {_unit(ds.meta)} {r['bits_per_byte']:.4f} over {r['tokens']:,} "
            f"{'dims' if ds.kind == 'image' else 'bytes'} "
            f"(ctx {r['ctx']}, min context {r['min_context']}) [{model.checkpoint_dir}]"
        )
    return 0


# --------------------------------------------------------------------------------------------
# sample
# --------------------------------------------------------------------------------------------


def _text_output(samples: list[bytes], out_dir: Path | None, meta: dict[str, Any]) -> list[Path]:
    """Text: print each sample; with --out also write sample-K.txt."""
    paths = []
    for k, s in enumerate(samples):
        if len(samples) > 1:
            _out(f"--- sample {k} ---")
        _out(s.decode("utf-8", errors="replace"))
        if out_dir is not None:
            from .checkpoint import atomic_write

            out_dir.mkdir(parents=True, exist_ok=True)
            paths.append(atomic_write(out_dir / f"sample-{k}.txt", s, fsync=False))
    return paths


def _image_output(samples: list[bytes], out_dir: Path | None, meta: dict[str, Any]) -> list[Path]:
    from .media import write_image_samples

    return write_image_samples(samples, out_dir, meta)


def _audio_output(samples: list[bytes], out_dir: Path | None, meta: dict[str, Any]) -> list[Path]:
    from .media import write_audio_samples

    return write_audio_samples(samples, out_dir, meta)


#: Data kind -> ``fn(samples: list[bytes], out_dir: Path | None, meta: dict) -> written paths``.
#: Text samples hold the prompt and the generated bytes; image samples are whole images (the
#: start byte removed), written as one PNG grid; audio samples are µ-law bytes, written as WAVs.
SAMPLE_OUTPUTS: dict[str, Callable[[list[bytes], Path | None, dict[str, Any]], list[Path]]] = {
    "text": _text_output,
    "image": _image_output,
    "audio": _audio_output,
}


def _dataset_meta(cfg) -> dict[str, Any]:
    """The prepared dataset's ``meta.json``; without it, an image model (3-D
    ``model.data_shape`` covering ctx) still gets its image shape, anything else counts as text."""
    import math

    from .data import load_meta
    from .train import dataset_dir

    try:
        return load_meta(dataset_dir(cfg))
    except (ValueError, OSError):
        shape = cfg.model.data_shape
        if len(shape) == 3 and math.prod(shape) == cfg.model.ctx:
            return {"kind": "image", "name": cfg.data.dataset, "image_shape": list(shape)}
        return {"kind": "text", "name": cfg.data.dataset}


def _run_meta(model, cfg) -> dict[str, Any]:
    """What the run was trained on: the checkpoint's ``data.json``; for checkpoints written
    before it, the prepared dataset's ``meta.json`` (said in the log), else a guess (warned)."""
    from .data import load_meta
    from .train import dataset_dir

    rec = _data_record(model)
    if rec is not None:
        return rec
    try:
        meta = load_meta(dataset_dir(cfg))
    except (ValueError, OSError):
        meta = _dataset_meta(cfg)
        log.warning(
            "%s has no data.json (written by an older version) and dataset %r is not found: "
            "treating the model as %s; pass --data-dir DIR (the folder holding %s/) if it is not",
            model.checkpoint_dir, cfg.data.dataset, meta["kind"], cfg.data.dataset,
        )  # fmt: skip
        return meta
    log.info(
        "%s has no data.json (written by an older version): data kind %r read from %s",
        model.checkpoint_dir, meta.get("kind"), dataset_dir(cfg),
    )  # fmt: skip
    return meta


def _unit(meta: dict[str, Any]) -> str:
    return "bits/dim" if meta.get("kind") == "image" else "bits/byte"


def _sample_out_dir(args: argparse.Namespace, model) -> Path:
    """``--out``, or ``samples/`` in the run directory (image and audio files need a folder)."""
    if args.out is not None:
        return Path(args.out)
    ckpt = Path(model.checkpoint_dir)
    return ckpt.parent / "samples" if ckpt.name.startswith("ckpt-") else ckpt / "samples"


def _sample_out_arg(args: argparse.Namespace) -> Path | None:
    """``--out`` checked before any sampling: a folder (created now) we can write into."""
    if args.out is None:
        return None
    out = _folder_arg("--out", args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK):
        raise UsageError(f"--out {str(out)!r} is not writable; choose another folder")
    return out


def _folder_arg(flag: str, value: str, what: str = "a folder") -> Path:
    """The folder a command-line flag names: not empty, not an existing file."""
    if not value.strip():
        raise UsageError(f"{flag} must name {what}, got an empty string")
    p = Path(value).expanduser()
    if p.exists() and not p.is_dir():
        raise UsageError(f"{flag} {value!r} is a file; it must name {what}")
    return p


def _sample_images(args, model, cfg, meta, num, temperature, gen, stats) -> tuple[list[Path], str]:
    """Unconditional images (a PNG grid) or, with --complete N, completions of N test images."""
    import math

    import numpy as np

    from . import media

    shape = media.image_shape(meta)
    size = math.prod(shape)
    if args.prompt is not None:
        raise UsageError(
            "--prompt is for text models; image samples start from the start byte "
            "(use --complete N to condition on the top half of real test images)"
        )
    if args.length is not None and args.length != size:
        raise UsageError(
            f"--length: an image model draws whole {'x'.join(map(str, shape))} images "
            f"({size} bytes); leave --length out"
        )
    out_dir = _sample_out_dir(args, model)
    progress = not args.no_progress
    if args.complete is None:
        imgs = media.sample_images(
            model, num, shape, temperature=temperature, generator=gen, progress=progress,
            stats=stats,
        )  # fmt: skip
        paths = SAMPLE_OUTPUTS["image"]([im.tobytes() for im in imgs], out_dir, meta)
        return paths, f"{num} images of {size} bytes"
    n = args.complete
    ds = _open_data(model, cfg, "test")
    if not 1 <= n <= (ds.n_records or 0):
        raise UsageError(f"--complete must be in 1..{ds.n_records} (test images), got {n}")
    seed = cfg.sample.seed if args.seed is None else args.seed
    pick = np.sort(np.random.default_rng(seed).choice(ds.n_records, n, replace=False))
    real = np.stack([ds.data[i * size : (i + 1) * size] for i in pick]).reshape(n, *shape)
    done = media.complete_images(
        model, real, num=num, temperature=temperature, generator=gen, progress=progress,
        stats=stats,
    )  # fmt: skip
    path = media.write_completions(real, done, out_dir, name=media.file_stem(meta))
    log.info(
        "test images %s: each row shows the top half given, %d completion(s), the original",
        ", ".join(map(str, pick.tolist())), num,
    )  # fmt: skip
    return [path], f"{n} x {num} completions of {size - size // shape[0] * (shape[0] // 2)} bytes"


def _sample_audio(args, model, cfg, meta, num, temperature, gen, stats) -> tuple[list[Path], str]:
    """``num`` clips from silence, written as WAVs at the dataset's sample rate."""
    from . import media

    if args.prompt is not None:
        raise UsageError("--prompt is for text models; audio samples start from silence")
    length = cfg.sample.length if args.length is None else args.length
    if not 1 <= length <= cfg.model.ctx:
        raise UsageError(f"--length must be in 1..{cfg.model.ctx} (the model's context)")
    clips = media.sample_audio(
        model, num, length, temperature=temperature, generator=gen,
        progress=not args.no_progress, stats=stats,
    )  # fmt: skip
    paths = SAMPLE_OUTPUTS["audio"]([c.tobytes() for c in clips], _sample_out_dir(args, model), meta)
    rate = int(meta["sample_rate"])
    return paths, f"{num} clips of {length} samples ({length / rate:.2f} s at {rate} Hz)"


def cmd_sample(args: argparse.Namespace, extras: list[str]) -> int:
    import torch

    from .sample import generate

    out_dir = _sample_out_arg(args)
    model, cfg = _open_run(args, extras)
    meta = _run_meta(model, cfg)
    kind = meta.get("kind", "text")
    if args.complete is not None and kind != "image":
        raise UsageError(f"--complete is for image models; this model was trained on {kind}")
    num = cfg.sample.num if args.num is None else args.num
    if args.complete is not None and args.num is None:
        num = 3  # completions per image
    temperature = cfg.sample.temperature if args.temperature is None else args.temperature
    seed = cfg.sample.seed if args.seed is None else args.seed
    if num < 1:
        raise UsageError(f"--num must be >= 1, got {num}")
    device = next(model.parameters()).device
    logging.getLogger("sparse_transformer.sample").setLevel(logging.WARNING)  # we print the rate
    if kind in ("image", "audio"):
        if out_dir is None:  # samples/ in the run directory: checked before sampling too
            args.out = str(_sample_out_dir(args, model))
            _sample_out_arg(args)
        gen = torch.Generator(device=device).manual_seed(seed)
        stats: dict[str, Any] = {}
        run = _sample_images if kind == "image" else _sample_audio
        paths, what = run(args, model, cfg, meta, num, temperature, gen, stats)
        for p in paths:
            _out(str(p))
        print(
            f"sampled {what} in {stats.get('seconds', 0):.2f} s: "
            f"{stats.get('tokens_per_s', 0):.1f} tokens/s",
            file=sys.stderr,
        )
        return 0
    writer = SAMPLE_OUTPUTS.get(kind, _text_output)
    text = cfg.sample.prompt if args.prompt is None else args.prompt
    prompt = text.encode("utf-8") or b"\n"
    length = cfg.sample.length if args.length is None else args.length
    idx = torch.tensor(list(prompt), dtype=torch.long, device=device)[None].repeat(num, 1)
    gen = torch.Generator(device=device).manual_seed(seed)
    stats: dict[str, Any] = {}
    # Past the context: a sliding window that re-encodes the last ctx // 2 bytes per pass.
    out = generate(
        model, idx, length, temperature=temperature, generator=gen,
        progress=not args.no_progress, stats=stats, window=model.cfg.ctx // 2 or None,
    )  # fmt: skip
    samples = [bytes(row.tolist()) for row in out.cpu()]
    paths = writer(samples, out_dir, meta)
    for p in paths:
        print(f"wrote {p}", file=sys.stderr)
    print(
        f"sampled {num} x {length} bytes in {stats.get('seconds', 0):.2f} s: "
        f"{stats.get('tokens_per_s', 0):.1f} tokens/s",
        file=sys.stderr,
    )
    return 0


# --------------------------------------------------------------------------------------------
# patterns
# --------------------------------------------------------------------------------------------


def cmd_patterns(args: argparse.Namespace, extras: list[str]) -> int:
    from .plots import pattern_figure

    if extras:
        raise UsageError(f"unrecognized arguments: {' '.join(extras)}")
    if not args.out.strip() or Path(args.out).is_dir():
        raise UsageError(f"--out must name an image file (.png/.svg/.pdf), got {args.out!r}")
    path = pattern_figure(
        args.pattern, args.stride, args.c, args.n, Path(args.out), query=args.query,
        mode=args.mode,
    )  # fmt: skip
    _out(str(path))
    return 0


# --------------------------------------------------------------------------------------------
# The parser
# --------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="sparse-transformer",
        description="OpenAI's Sparse Transformer (Child et al., 2019) for long byte sequences.",
        allow_abbrev=False,
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="warnings and results only")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--no-progress", action="store_true", help="no progress bars")

    def run_options(sp: argparse.ArgumentParser) -> None:
        """Where the data lives and the device, for the commands that open a trained run."""
        sp.add_argument("--data-dir", default=None, help="where datasets live (default: the run's)")
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")

    from .data import PREPARERS

    sp = sub.add_parser(
        "prepare", help="download/convert a dataset into byte splits", allow_abbrev=False,
        description="Prepare a dataset. Datasets: " + ", ".join(PREPARERS) + ". Extra options "
        "of a dataset go as --key=value (e.g. --out-name NAME, --size 32).",
    )  # fmt: skip
    sp.add_argument("name", help="dataset name")
    sp.add_argument("--path", default=None, help="local source file or folder")
    sp.add_argument("--data-dir", default="data", help="where datasets live (default: data)")
    sp.add_argument("--force", action="store_true", help="rebuild even if up to date")
    common(sp)
    sp.set_defaults(func=cmd_prepare)

    from .config import PRESETS

    sp = sub.add_parser(
        "train", help="train a model", allow_abbrev=False,
        description="Train. Presets: " + ", ".join(PRESETS) + ". Override any config key with "
        "--section.key=value (e.g. --model.n_layer=8 --train.lr=3e-4).",
    )  # fmt: skip
    sp.add_argument("--preset", default=None, help="named configuration")
    sp.add_argument("--out", required=True, help="run directory (checkpoints, metrics.jsonl)")
    sp.add_argument("--data-dir", default=None, help="where datasets live (data.data_dir)")
    sp.add_argument("--dataset", default=None, help="prepared dataset name (data.dataset)")
    sp.add_argument("--resume", action="store_true", help="continue from the latest checkpoint")
    sp.add_argument("--json", action="store_true", help="print the final metrics as JSON")
    common(sp)
    sp.set_defaults(func=cmd_train)

    sp = sub.add_parser(
        "eval", help="bits per byte on a split", allow_abbrev=False,
        description="Bits per byte (bits per dim for images) of a trained model over a whole "
        "split of its dataset, every byte scored once. Works from any folder: the dataset is "
        "found where the run was trained (or pass --data-dir).",
    )  # fmt: skip
    sp.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    sp.add_argument("--split", default="val", choices=["val", "test", "train"])
    sp.add_argument("--min-context", type=int, default=0, help="score only tokens with >= M "
                    "context; windows advance by ctx - M (paper Table 3)")  # fmt: skip
    sp.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    run_options(sp)
    sp.add_argument("--json", action="store_true", help="print one JSON object")
    common(sp)
    sp.set_defaults(func=cmd_eval)

    sp = sub.add_parser(
        "sample", help="generate text, images (PNG grid) or audio (WAV) from a model",
        allow_abbrev=False,
        description="Text models print their samples; image models write a PNG grid "
        "(DATASET-samples.png, or DATASET-completions.png with --complete N) and audio models "
        "WAV files (DATASET-sample-K.wav) into --out (default: samples/ in the run directory).",
    )  # fmt: skip
    sp.add_argument("--checkpoint", required=True, help="run directory or checkpoint directory")
    sp.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    sp.add_argument("--length", type=int, default=None,
                    help="new bytes per sample (text, audio); images are always whole")  # fmt: skip
    sp.add_argument("--temperature", type=float, default=None)
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--num", type=int, default=None,
                    help="samples drawn in parallel: texts, images, clips; with --complete, "
                    "completions per image (default 3)")  # fmt: skip
    sp.add_argument("--complete", type=int, default=None, metavar="N",
                    help="images: complete N real test images from their top half")  # fmt: skip
    sp.add_argument("--out", default=None, help="write the samples into this folder")
    run_options(sp)
    common(sp)
    sp.set_defaults(func=cmd_sample)

    sp = sub.add_parser(
        "patterns", help="draw an attention pattern (paper Fig. 3)", allow_abbrev=False,
        description="Draw a sparse attention pattern: each head and the merged head, on top the "
        "receptive field of one query on a grid of width = stride (the paper's Figure 3), below "
        "the connectivity matrix of the first --n positions.",
    )  # fmt: skip
    sp.add_argument("--pattern", required=True, help="dense | local | strided | fixed")
    sp.add_argument("--stride", type=int, required=True, help="l")
    sp.add_argument("--c", type=int, default=None, help="fixed: summary width")
    sp.add_argument("--n", type=int, required=True, help="sequence length drawn")
    sp.add_argument("--out", required=True, help="image file (.png/.svg/.pdf)")
    sp.add_argument("--query", type=int, default=None, help="query position to highlight")
    sp.add_argument("--mode", default="merged", choices=["merged", "interleaved", "multihead"])
    sp.set_defaults(func=cmd_patterns)
    return p


def _user_errors() -> tuple[type[BaseException], ...]:
    from .locking import BusyError

    return (UsageError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, BusyError)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _os_error_message(e: OSError, command: str | None) -> str:
    """One line for a failure to read or write a file, with what to do about it."""
    import errno

    from .checkpoint import CheckpointWriteError

    if isinstance(e, CheckpointWriteError) or not e.strerror:
        return _one_line(e)
    where = f" {e.filename}" if e.filename else ""
    again = {"train": "continue the run with --resume", "prepare": "run prepare again"}.get(
        command or "", "run the command again"
    )
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        advice = f"free some space, then {again}"
    elif e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        flag = {"train": "--out", "prepare": "--data-dir", "sample": "--out"}.get(command or "")
        advice = "choose a folder you can write to" + (f" ({flag})" if flag else "")
    elif e.errno in (errno.EEXIST, errno.ENOTDIR, errno.EISDIR):
        advice = "a file or folder of that name is in the way; choose another path"
    else:
        advice = again
    return f"cannot access{where}: {e.strerror}; {advice}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``sparse-transformer`` and ``python -m sparse_transformer``.

    Exit status: 0 success, 2 bad input (flags, files, a busy run directory), 1 a failure while
    running (a full disk, a read-only folder, a diverged run, a failed download), 130
    interrupted; every failure is one ``error: ...`` line on stderr.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    command = None
    try:
        parser = build_parser()
        args, extras = parser.parse_known_args(argv)
        command = args.command
        setup_logging(-1 if args.quiet else args.verbose)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        return int(args.func(args, extras) or 0)
    except _user_errors() as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    except FloatingPointError as e:  # a diverged run (non-finite loss)
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 1
    except OSError as e:  # a full disk, a read-only folder ...
        print(f"error: {_os_error_message(e, command)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        from .data import FetchError

        if isinstance(e, FetchError):
            print(f"error: {_one_line(e)}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
