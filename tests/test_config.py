"""Config: presets, dotted overrides (key exists, type parses), JSON round trip, validation."""

import dataclasses
import json

import pytest

from sparse_transformer.config import (
    PRESETS,
    Config,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    config_to_dict,
    get_preset,
    parse_override_args,
)
from sparse_transformer.model import SparseTransformer


def test_presets_registered_and_valid():
    for name in ("tiny-cpu", "shakespeare", "enwik8"):
        cfg = get_preset(name)
        assert isinstance(cfg, Config)
        assert config_from_dict(config_to_dict(cfg)) == cfg
    assert PRESETS["tiny-cpu"].data.dataset == "shakespeare"
    assert PRESETS["shakespeare"].data.dataset == "shakespeare"


def test_enwik8_preset_matches_paper():
    m = get_preset("enwik8").model
    assert (m.n_layer, m.n_head, m.d_model, m.ctx) == (30, 8, 512, 12288)
    assert (m.pattern, m.stride, m.c, m.mode, m.dropout) == ("fixed", 128, 32, "merged", 0.4)
    assert get_preset("enwik8").data.dataset == "enwik8"
    t = get_preset("enwik8").train
    assert (t.weight_decay, t.grad_clip) == (0.01, 1.0)


def test_tiny_preset_builds_small_model():
    model = SparseTransformer(get_preset("tiny-cpu").model)
    assert model.num_params() < 100_000


def test_unknown_preset_lists_valid():
    with pytest.raises(ValueError, match="unknown preset 'nope'; choose from .*tiny-cpu.*enwik8"):
        get_preset("nope")


def test_overrides_parse_by_type():
    cfg = apply_overrides(
        get_preset("tiny-cpu"),
        [
            "--model.n_layer=3",
            "--model.pattern",
            "fixed",
            "--model.c=4",
            "--train.lr=3e-4",
            "--train.recompute=true",
            "--train.max_steps",
            "1_000",
            "--model.data_shape=8,8",
            "--sample.prompt=ROMEO:",
            "--model.dropout=0",
        ],
    )
    assert cfg.model.n_layer == 3 and cfg.model.pattern == "fixed" and cfg.model.c == 4
    assert cfg.train.lr == 3e-4 and isinstance(cfg.train.lr, float)
    assert cfg.train.recompute is True
    assert cfg.train.max_steps == 1000
    assert cfg.model.data_shape == (8, 8)
    assert cfg.sample.prompt == "ROMEO:"
    assert cfg.model.dropout == 0.0
    # the original preset is untouched (frozen dataclasses, new objects)
    assert get_preset("tiny-cpu").model.n_layer == 2


def test_overrides_typed_dict_and_pairs():
    cfg = apply_overrides(get_preset("tiny-cpu"), {"train.seed": 5, "data.data_dir": "/x"})
    assert cfg.train.seed == 5 and cfg.data.data_dir == "/x"
    cfg = apply_overrides(cfg, [("train.batch_size", "4")])
    assert cfg.train.batch_size == 4


@pytest.mark.parametrize("value", ["false", "0", "no", "off", "False"])
def test_bool_false_spellings(value):
    assert (
        apply_overrides(get_preset("tiny-cpu"), [f"--train.recompute={value}"]).train.recompute
        is False
    )


def test_unknown_key_lists_valid_keys():
    with pytest.raises(
        ValueError, match=r"unknown config key 'model\.nlayer'; choose from .*model\.n_layer"
    ):
        apply_overrides(get_preset("tiny-cpu"), ["--model.nlayer=3"])
    with pytest.raises(ValueError, match="unknown config key 'optim.lr'"):
        apply_overrides(get_preset("tiny-cpu"), ["--optim.lr=3"])


@pytest.mark.parametrize(
    "arg, match",
    [
        ("--model.n_layer=x", r"model\.n_layer='x' is not a valid int"),
        ("--model.n_layer=2.5", "not a valid int"),
        ("--train.lr=fast", "not a valid float"),
        ("--train.recompute=maybe", "not a valid bool"),
        ("--model.data_shape=8,x", "not a valid"),
        ("--model.pattern=strid", "unknown model.pattern 'strid'"),
        ("--model.n_layer=0", "model.n_layer must be an integer >= 1"),
        ("--train.precision=fp8", "unknown train.precision 'fp8'; choose from fp32, bf16, fp16"),
        ("--train.distributed=mpi", "unknown train.distributed"),
        ("--train.lr=-1", "train.lr must be a finite number >= 0"),
        ("--train.device=tpu", "train.device"),
    ],
)
def test_bad_values(arg, match):
    with pytest.raises((ValueError, TypeError), match=match):
        apply_overrides(get_preset("tiny-cpu"), [arg])


@pytest.mark.parametrize("args", [["model.n_layer=3"], ["--n_layer=3"], ["--model.n_layer"]])
def test_bad_override_syntax(args):
    with pytest.raises(ValueError):
        parse_override_args(args)


def test_json_round_trip_and_unknown_keys():
    cfg = apply_overrides(get_preset("shakespeare"), ["--model.data_shape=16,32", "--train.lr=1"])
    d = json.loads(json.dumps(config_to_dict(cfg)))
    back = config_from_dict(d)
    assert back == cfg and back.model.data_shape == (16, 32) and isinstance(back.train.lr, float)
    d["train"]["bogus"] = 1
    with pytest.raises(ValueError, match=r"unknown key\(s\) train\.bogus"):
        config_from_dict(d)
    with pytest.raises(ValueError, match="unknown config section"):
        config_from_dict({"optim": {}})
    # missing keys take defaults
    assert config_from_dict({"train": {"max_steps": 7}}).train == TrainConfig(max_steps=7)


def test_frozen():
    cfg = get_preset("tiny-cpu")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 1.0  # type: ignore[misc]
