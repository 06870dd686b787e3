"""Configuration: one frozen dataclass per concern, named presets, dotted overrides.

    cfg = get_preset("shakespeare")
    cfg = apply_overrides(cfg, ["--model.n_layer=6", "--train.lr", "3e-4"])
    config_to_dict(cfg)  # JSON-ready; config_from_dict() is its inverse

``Config`` holds ``model`` (:class:`~sparse_transformer.model.ModelConfig`, owned by the model),
``data`` (:class:`DataConfig`), ``train`` (:class:`TrainConfig`) and ``sample``
(:class:`SampleConfig`). Presets live in :data:`PRESETS` (name -> ``Config``); later work adds its
own with :func:`register_preset`. Every bad value raises ``ValueError``/``TypeError`` naming the
value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .compilation import COMPILE, COMPILE_MODES
from .model import ModelConfig

__all__ = [
    "PRESETS",
    "Config",
    "DataConfig",
    "SampleConfig",
    "TrainConfig",
    "apply_overrides",
    "config_from_dict",
    "config_to_dict",
    "config_to_json",
    "get_preset",
    "parse_override_args",
    "register_preset",
]

PRECISIONS = ("fp32", "bf16", "fp16")
DISTRIBUTED = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class DataConfig:
    dataset: str = "shakespeare"  # a prepared dataset: data_dir / dataset
    data_dir: str = "data"

    def __post_init__(self) -> None:
        for name in ("dataset", "data_dir"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v:
                raise ValueError(f"data.{name} must be a non-empty string, got {v!r}")


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 1000  # optimizer updates; the cosine schedule reaches 0 here
    batch_size: int = 16  # global batch (sequences per update, over all ranks)
    lr: float = 1e-3  # peak learning rate
    warmup: int = 100  # linear warm-up updates
    weight_decay: float = 0.01  # decoupled (AdamW), on tensors of rank >= 2 only
    grad_clip: float = 1.0  # global gradient norm; 0 turns clipping off
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    seed: int = 0
    eval_interval: int = 200  # updates between validations (0: only at the end)
    eval_batches: int = 16  # random val batches per validation; 0 = the whole split
    log_interval: int = 10  # updates per log line
    ckpt_interval: int = 200  # updates between checkpoints (0: only at the end)
    keep_last: int = 3  # checkpoints kept besides the best
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int = 0  # torch CPU threads (0: torch's default)
    # Infrastructure applied from outside the model (precision.py, distributed.py).
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds loss scaling)
    recompute: bool = False  # recompute each residual block in the backward pass
    distributed: str = "none"  # none | ddp | fsdp (under torchrun)
    micro_batch_size: int = 0  # per-rank micro-batch for gradient accumulation; 0 = no split
    compile: str = "auto"  # auto (on CUDA) | true | false: torch.compile each residual block
    compile_mode: str = "auto"  # torch.compile mode; auto: reduce-overhead (CUDA graphs) where measured faster

    def __post_init__(self) -> None:
        for name, lo in (
            ("max_steps", 1),
            ("batch_size", 1),
            ("warmup", 0),
            ("seed", 0),
            ("eval_interval", 0),
            ("eval_batches", 0),
            ("log_interval", 1),
            ("ckpt_interval", 0),
            ("keep_last", 1),
            ("threads", 0),
            ("micro_batch_size", 0),
        ):
            _check_int(f"train.{name}", getattr(self, name), lo)
        for name in ("lr", "weight_decay", "grad_clip", "eps"):
            _check_float(f"train.{name}", getattr(self, name), 0.0)
        for name in ("beta1", "beta2"):
            v = getattr(self, name)
            _check_float(f"train.{name}", v, 0.0)
            if not v < 1.0:
                raise ValueError(f"train.{name} must be in [0, 1), got {v!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown train.precision {self.precision!r}; choose from {', '.join(PRECISIONS)}"
            )
        if self.distributed not in DISTRIBUTED:
            raise ValueError(
                f"unknown train.distributed {self.distributed!r}; "
                f"choose from {', '.join(DISTRIBUTED)}"
            )
        if self.compile not in COMPILE:
            raise ValueError(
                f"unknown train.compile {self.compile!r}; choose from {', '.join(COMPILE)}"
            )
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(
                f"unknown train.compile_mode {self.compile_mode!r}; "
                f"choose from {', '.join(COMPILE_MODES)}"
            )
        if not isinstance(self.recompute, bool):
            raise TypeError(f"train.recompute must be true or false, got {self.recompute!r}")
        dev = self.device
        if not isinstance(dev, str) or not (
            dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())
        ):
            raise ValueError(f"train.device must be auto, cpu, cuda, cuda:N or mps, got {dev!r}")


@dataclass(frozen=True)
class SampleConfig:
    length: int = 400  # new bytes per sample
    temperature: float = 1.0  # 0 = greedy
    prompt: str = "\n"  # default prompt (the model has no start token of its own)
    seed: int = 0
    num: int = 1  # samples drawn in parallel

    def __post_init__(self) -> None:
        _check_int("sample.length", self.length, 0)
        _check_float("sample.temperature", self.temperature, 0.0)
        _check_int("sample.seed", self.seed, 0)
        _check_int("sample.num", self.num, 1)
        if not isinstance(self.prompt, str):
            raise TypeError(f"sample.prompt must be a string, got {self.prompt!r}")


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
}


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_float(name: str, value: object, minimum: float) -> None:
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < minimum
    ):
        raise ValueError(f"{name} must be a finite number >= {minimum}, got {value!r}")


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------

#: Preset name -> resolved ``Config``. Later issues add theirs with :func:`register_preset`.
PRESETS: dict[str, Config] = {}


def register_preset(name: str, cfg: Config) -> Config:
    if not isinstance(cfg, Config):
        raise TypeError(f"preset {name!r} must be a Config, got {type(cfg).__name__}")
    PRESETS[name] = cfg
    return cfg


def get_preset(name: str) -> Config:
    """The preset ``name``, or ValueError listing the valid ones."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}") from None


# Seconds on a CPU: the CLI tests and smoke runs.
register_preset(
    "tiny-cpu",
    Config(
        model=ModelConfig(
            ctx=64, n_layer=2, n_head=2, d_model=32, pattern="strided", stride=8, c=2,
            mode="merged", backend="torch",
        ),
        data=DataConfig(dataset="shakespeare"),
        train=TrainConfig(
            max_steps=20, batch_size=8, lr=3e-3, warmup=5, eval_interval=10, eval_batches=2,
            log_interval=5, ckpt_interval=10, keep_last=2, threads=1,
        ),
        sample=SampleConfig(length=32),
    ),
)  # fmt: skip

# `make train`: a few minutes on a 2-core CPU, below gzip -9 (2.97 bits/byte) on the val split.
# Many small updates (1,024 tokens each) learn faster per second here than few large ones; one
# torch thread, as two collapse (4-10x slower per update) whenever anything else runs.
# Measured on this 2-core machine (2026-12-03, W_out drawn N(0, 0.02), another CPU job running):
# `make train` from a fresh clone, set-up included, 5m57s; 1500 updates in 267 s; val 2.395
# bits/byte on the whole split (2.885 with the zero W_out before). Variants run the same day
# (1500 updates each, whole val split): GPT-2 init 2.411, lr 3e-3 2.391, GPT-2 init + lr 3e-3
# 2.402, ctx 128 x batch 8 2.411, dense 2.547: none clearly better, so the preset is unchanged.
register_preset(
    "shakespeare",
    Config(
        model=ModelConfig(
            ctx=256, n_layer=4, n_head=4, d_model=128, pattern="strided", stride=16, c=4,
            mode="merged", backend="torch",
        ),
        data=DataConfig(dataset="shakespeare"),
        train=TrainConfig(
            max_steps=1500, batch_size=4, lr=2e-3, beta2=0.99, warmup=100, eval_interval=250,
            eval_batches=16, log_interval=50, ckpt_interval=500, keep_last=2, threads=1,
        ),
        sample=SampleConfig(length=400, temperature=0.8),
    ),
)  # fmt: skip

# The paper's EnWik8 model (spec section 8.2): 30 layers, 8 heads, d 512, context 12,288, fixed
# pattern l=128 c=32 with merged heads, residual dropout 0.4 (95M parameters). The paper does not
# state the batch or the learning rate: 16 sequences (2 per GPU on 8 GPUs), lr 3.5e-4 (the
# authors' CIFAR rate), 5000 warm-up updates, and 36,600 updates, about 80 passes over the
# 90M training bytes. bf16 autocast instead of the paper's fp16 with loss scaling.
register_preset(
    "enwik8",
    Config(
        model=ModelConfig(
            ctx=12288, n_layer=30, n_head=8, d_model=512, pattern="fixed", stride=128, c=32,
            mode="merged", dropout=0.4,
        ),
        data=DataConfig(dataset="enwik8"),
        train=TrainConfig(
            max_steps=36_600, batch_size=16, lr=3.5e-4, warmup=5000, eval_interval=1000,
            eval_batches=32, log_interval=50, ckpt_interval=1000, keep_last=3, precision="bf16",
        ),
        sample=SampleConfig(length=1000, temperature=1.0),
    ),
)  # fmt: skip

# --- audio presets (issue 5: long sequences) ---------------------------------------------------
# The paper's raw-audio models (spec section 8.2, Table 4): strided, 152M / 25M / 3M parameters at
# 65,536 / 262,144 / 1,048,576 steps, each the largest that fit one 16 GB V100. The paper states
# only the parameter counts; our choices where it is silent:
# * layers/heads/width: audio-65k copies the ImageNet 152M model (48 L, 16 H, d 512: 151.8M);
#   audio-262k 32 L, 8 H, d 256 (25.7M); audio-1m 14 L, 4 H, d 128 (3.1M). Every head is 32 wide.
# * stride l = sqrt(ctx) (256 / 512 / 1024), the paper's "close to sqrt(n)"; positions are
#   factorized as (ctx / l, l). Heads split half local, half strided ("multihead").
# * bf16 autocast and recomputation of every residual block (the paper's fp16 + recompute);
#   one sequence per micro-batch (a rank accumulates the rest of its share of the batch).
# * global batch 8, 2000 updates with 200 warm-up, lr 1.5e-4 for the 152M model (the authors'
#   ImageNet 150M rate), 3.5e-4 / 5e-4 for the smaller ones; residual dropout 0.01 for the 152M
#   model (the paper's ImageNet value), none for the others. The data is music-on-hold
#   (``moh-music``, 8 kHz, 6M training bytes), far less than the paper's: expect over-fitting;
#   audio-1m needs splits of at least 1,048,577 bytes (moh-music's val split has 584,771 at 8 kHz:
#   prepare it with ``--sample-rate 16000`` or train on your own ``audio --path`` data).
_AUDIO = {  # name: (ctx, layers, heads, d, lr, dropout, eval batches)
    "audio-65k": (65_536, 48, 16, 512, 1.5e-4, 0.01, 4),
    "audio-262k": (262_144, 32, 8, 256, 3.5e-4, 0.0, 2),
    "audio-1m": (1_048_576, 14, 4, 128, 5e-4, 0.0, 1),
}
for _name, (_ctx, _layers, _heads, _d, _lr, _drop, _evals) in _AUDIO.items():
    register_preset(
        _name,
        Config(
            model=ModelConfig(
                ctx=_ctx, n_layer=_layers, n_head=_heads, d_model=_d, pattern="strided",
                stride=math.isqrt(_ctx), mode="multihead", dropout=_drop,
            ),
            data=DataConfig(dataset="moh-music"),
            train=TrainConfig(
                max_steps=2000, batch_size=8, micro_batch_size=1, lr=_lr, warmup=200,
                eval_interval=200, eval_batches=_evals, log_interval=10, ckpt_interval=200,
                keep_last=2, precision="bf16", recompute=True,
            ),
            sample=SampleConfig(length=_ctx // 16, temperature=1.0),
        ),
    )  # fmt: skip
# --- end of audio presets ------------------------------------------------------------------------


# --- image presets (issue 6) ----------------------------------------------------------------
# Images are bytes in raster order, channels of a pixel adjacent; each record is preceded by the
# start byte 0, so ctx = H * W * C and position embeddings are per (row, column, channel).

# CPU in minutes (2 cores): a 0.9M-parameter strided model whose heads split between the local
# row (l = 28 = one image row) and the column above. One torch thread: on a shared 2-core machine
# it measured 1.2-1.5 s per update against 1.7-13 s with two. docs/images.md gives its figures.
register_preset(
    "fashion-mnist",
    Config(
        model=ModelConfig(
            ctx=784, n_layer=4, n_head=4, d_model=128, pattern="strided", stride=28,
            mode="multihead", data_shape=(28, 28, 1), backend="torch",
        ),
        data=DataConfig(dataset="fashion-mnist"),
        train=TrainConfig(
            max_steps=400, batch_size=8, lr=2e-3, warmup=20, eval_interval=50, eval_batches=8,
            log_interval=10, ckpt_interval=100, keep_last=2, threads=1,
        ),
        sample=SampleConfig(num=16, temperature=1.0),
    ),
)  # fmt: skip

# The paper's CIFAR-10 model (spec section 8.2): 128 layers, 2 heads, d 256, half-size
# feed-forward and q/k (59M parameters), strided l = 96 (one row of 32 RGB pixels) interleaved
# 3:1 as the authors' code ('bT,b,b,b': one strided layer, then three local ones), residual
# dropout 0.25, lr 3.5e-4. Not stated in the paper: batch 16 (2 per GPU on 8 GPUs, the authors'
# config), 5000 warm-up updates, 360,000 updates (120 epochs of 48,000 images), bf16 autocast.
register_preset(
    "cifar10",
    Config(
        model=ModelConfig(
            ctx=3072, n_layer=128, n_head=2, d_model=256, pattern="strided", stride=96,
            mode="interleaved", layers="strided,local,local,local", half_size=True,
            dropout=0.25, data_shape=(32, 32, 3),
        ),
        data=DataConfig(dataset="cifar10"),
        train=TrainConfig(
            max_steps=360_000, batch_size=16, lr=3.5e-4, warmup=5000, eval_interval=3000,
            eval_batches=32, log_interval=100, ckpt_interval=3000, keep_last=3,
            precision="bf16", recompute=True,
        ),
        sample=SampleConfig(num=16, temperature=1.0),
    ),
)  # fmt: skip

# The paper's ImageNet 64x64 model (spec section 8.2): 48 layers, 16 heads, d 512 (152M
# parameters), strided l = 128, context 12,288, residual dropout 0.01. Where the paper is silent:
# layers interleaved 'local,strided,local,local' (the authors' 'b,bT,b,b'), lr 1.5e-4 and a batch
# of 128 (their 150M config: 4 per GPU on 32 GPUs), 5000 warm-up updates, 700,000 updates (70
# epochs of 1.28M images), recomputation and bf16 autocast.
register_preset(
    "imagenet64",
    Config(
        model=ModelConfig(
            ctx=12288, n_layer=48, n_head=16, d_model=512, pattern="strided", stride=128,
            mode="interleaved", layers="local,strided,local,local", dropout=0.01,
            data_shape=(64, 64, 3),
        ),
        data=DataConfig(dataset="imagenet64"),
        train=TrainConfig(
            max_steps=700_000, batch_size=128, lr=1.5e-4, warmup=5000, eval_interval=5000,
            eval_batches=16, log_interval=100, ckpt_interval=5000, keep_last=3,
            precision="bf16", recompute=True,
        ),
        sample=SampleConfig(num=4, temperature=1.0),
    ),
)  # fmt: skip

# --- small audio preset (issue 6) -------------------------------------------------------------
# CPU-sized raw audio: `prepare moh-music` (8 kHz mu-law, 18.5 min of music); context 4096
# (half a second) with attention embeddings (row, column) of width l = 64. `sample` writes WAVs.
register_preset(
    "moh-music",
    Config(
        model=ModelConfig(
            ctx=4096, n_layer=4, n_head=4, d_model=128, pattern="strided", stride=64,
            mode="multihead", backend="torch",
        ),
        data=DataConfig(dataset="moh-music"),
        train=TrainConfig(
            max_steps=300, batch_size=4, lr=2e-3, warmup=20, eval_interval=100, eval_batches=8,
            log_interval=10, ckpt_interval=100, keep_last=2,
        ),
        sample=SampleConfig(length=4095, num=2, temperature=1.0),
    ),
)  # fmt: skip

# --- Table 2 at small scale (issue 9: benchmarks/reproduce.py, docs/reproduction.md) ----------
# One model size per table half, trained with `model.pattern` = dense, fixed and strided for the
# same number of updates on one GPU in about two minutes each. Text: GCIDE (`prepare gcide`) at
# context 8,192, l = 128 (the paper's EnWik8 l), c = 32; images: Fashion-MNIST (28 x 28 grey,
# 784 bytes), l = 28 (one image row, as the paper's CIFAR l = 96 is one row of 32 RGB pixels),
# c = 4. Heads merged for both sparse patterns; no dropout (far below one epoch of images and a
# few passes over the text: under-fitting, not over-fitting, is the regime); bf16 autocast.
# `benchmarks/reproduce.py` may lower max_steps to fit its time budget (the same for all three).
# Text uses GPT-2's initialisation: with the paper's, dense attention sat on a plateau (H200, 1,203
# updates: dense 2.041 bits/byte against fixed 1.525 and strided 1.374; with GPT-2's in issue 20's
# run: dense 1.604, fixed 1.530, strided 1.399; docs/reproduction.md).
_TABLE2_TRAIN = TrainConfig(
    max_steps=2000, batch_size=8, lr=1e-3, beta2=0.99, warmup=100, eval_interval=200,
    eval_batches=4, log_interval=20, ckpt_interval=0, keep_last=1, precision="bf16",
)  # fmt: skip
register_preset(
    "table2-text",
    Config(
        model=ModelConfig(
            ctx=8192, n_layer=8, n_head=4, d_model=256, pattern="fixed", stride=128, c=32,
            mode="merged", init="gpt2",
        ),
        data=DataConfig(dataset="gcide"),
        train=_TABLE2_TRAIN,
        sample=SampleConfig(length=1000, temperature=0.8),
    ),
)  # fmt: skip
register_preset(
    "table2-images",
    Config(
        model=ModelConfig(
            ctx=784, n_layer=8, n_head=4, d_model=256, pattern="strided", stride=28, c=4,
            mode="merged", data_shape=(28, 28, 1),
        ),
        data=DataConfig(dataset="fashion-mnist"),
        train=dataclasses.replace(_TABLE2_TRAIN, max_steps=3000, batch_size=32, eval_interval=300),
        sample=SampleConfig(num=16, temperature=1.0),
    ),
)  # fmt: skip


# --------------------------------------------------------------------------------------------
# (De)serialisation
# --------------------------------------------------------------------------------------------


def config_to_dict(cfg: Config) -> dict[str, dict[str, Any]]:
    """``{"model": {...}, "data": {...}, "train": {...}, "sample": {...}}``, JSON-ready."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_to_json(cfg: Config, indent: int | None = 2) -> str:
    return json.dumps(config_to_dict(cfg), indent=indent, sort_keys=False)


def config_from_dict(d: dict[str, Any]) -> Config:
    """Inverse of :func:`config_to_dict`. Unknown sections or keys raise ValueError; missing keys
    take their defaults (so configs written by older versions still load)."""
    if not isinstance(d, dict):
        raise TypeError(f"a config must be a JSON object, got {type(d).__name__}")
    unknown = sorted(set(d) - set(SECTIONS))
    if unknown:
        raise ValueError(
            f"unknown config section(s) {', '.join(unknown)}; choose from {', '.join(SECTIONS)}"
        )
    parts = {}
    for section, cls in SECTIONS.items():
        values = d.get(section, {})
        if not isinstance(values, dict):
            raise TypeError(f"config section {section!r} must be an object, got {values!r}")
        hints = _field_types(cls)
        bad = sorted(set(values) - set(hints))
        if bad:
            raise ValueError(
                f"unknown key(s) {', '.join(f'{section}.{k}' for k in bad)}; "
                f"choose from {', '.join(f'{section}.{k}' for k in hints)}"
            )
        kw = {k: _coerce_json(v, hints[k]) for k, v in values.items()}
        parts[section] = cls(**kw)
    return Config(**parts)


def _coerce_json(value: Any, tp: Any) -> Any:
    if _is_tuple(tp) and isinstance(value, list):
        return tuple(value)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# --------------------------------------------------------------------------------------------
# Overrides
# --------------------------------------------------------------------------------------------


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _is_tuple(tp: Any) -> bool:
    return typing.get_origin(tp) is tuple or tp is tuple


def valid_keys() -> list[str]:
    return [f"{s}.{k}" for s, cls in SECTIONS.items() for k in _field_types(cls)]


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_value(key: str, text: str, tp: Any) -> Any:
    """Parse ``text`` as the type ``tp`` of field ``key`` (bool, int, float, str, tuple)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if text.lower() in ("none", "null") and len(args) < len(typing.get_args(tp)):
            return None
        tp = args[0]
    try:
        if tp is bool:
            low = text.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError
        if tp is int:
            return int(text.replace("_", "").replace(",", ""))
        if tp is float:
            v = float(text)
            return v
        if tp is str:
            return text
        if _is_tuple(tp):
            args = typing.get_args(tp)
            item = args[0] if args else str
            body = text.strip().strip("()[]").strip()
            if not body:
                return ()
            return tuple(parse_value(key, p.strip(), item) for p in body.split(",") if p.strip())
    except ValueError:
        pass
    else:
        raise TypeError(f"{key}: unsupported field type {tp!r}")
    name = getattr(tp, "__name__", str(tp))
    if _is_tuple(tp):
        name = "comma-separated list"
    if tp is bool:
        name = "bool (true/false)"
    raise ValueError(f"{key}={text!r} is not a valid {name}")


def parse_override_args(args: list[str]) -> list[tuple[str, str]]:
    """``["--model.n_layer=8", "--train.lr", "3e-4"]`` -> ``[("model.n_layer", "8"),
    ("train.lr", "3e-4")]``. Anything else raises ValueError."""
    out: list[tuple[str, str]] = []
    i = 0
    while i < len(args):
        a = args[i]
        if not a.startswith("--") or "." not in a.split("=", 1)[0]:
            raise ValueError(
                f"unexpected argument {a!r}; overrides look like --section.key=value "
                "(e.g. --model.n_layer=8)"
            )
        body = a[2:]
        if "=" in body:
            key, value = body.split("=", 1)
        else:
            if i + 1 >= len(args):
                raise ValueError(f"override --{body} needs a value (--{body}=VALUE)")
            key, value = body, args[i + 1]
            i += 1
        out.append((key, value))
        i += 1
    return out


def apply_overrides(
    cfg: Config, overrides: list[str] | list[tuple[str, str]] | dict[str, Any]
) -> Config:
    """A new Config with dotted overrides applied.

    ``overrides``: command-line strings (``["--model.n_layer=8"]``), ``(key, text)`` pairs, or a
    dict ``{"model.n_layer": 8}`` of already-typed values. Unknown keys raise ValueError listing
    the valid ones; text that does not parse as the field's type raises ValueError.
    """
    if isinstance(overrides, dict):
        pairs: list[tuple[str, Any]] = list(overrides.items())
        typed = True
    elif overrides and isinstance(overrides[0], str):
        pairs = list(parse_override_args(list(overrides)))  # type: ignore[arg-type]
        typed = False
    else:
        pairs = list(overrides)  # type: ignore[arg-type]
        typed = False
    changes: dict[str, dict[str, Any]] = {}
    for key, raw in pairs:
        section, _, name = key.partition(".")
        cls = SECTIONS.get(section)
        hints = _field_types(cls) if cls is not None else {}
        if name not in hints:
            raise ValueError(f"unknown config key {key!r}; choose from {', '.join(valid_keys())}")
        value = raw if typed else parse_value(key, str(raw), hints[name])
        changes.setdefault(section, {})[name] = value
    parts = {}
    for section in SECTIONS:
        current = getattr(cfg, section)
        parts[section] = (
            dataclasses.replace(current, **changes[section]) if section in changes else current
        )
    return Config(**parts)
