"""Training: schedule, optimizer groups, log line and metrics, exact resume."""

import itertools
import json
import logging
import math
import re

import pytest
import torch
from data_fixtures import corpus_config, prepared_corpus

from sparse_transformer import checkpoint as C
from sparse_transformer.config import TrainConfig, apply_overrides, get_preset
from sparse_transformer.model import ModelConfig, SparseTransformer
from sparse_transformer.train import (
    DataNotPreparedError,
    configure_optimizer,
    lr_at,
    train,
)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_corpus(tmp_path_factory.mktemp("data"), 30_000)


def tiny(data_dir, **over):
    """tiny-cpu on the generated corpus, with dropout so the torch RNG matters on resume."""
    longer = {
        "model.dropout": 0.1,
        "train.max_steps": 20,
        "train.warmup": 3,
        "train.eval_interval": 5,
        "train.log_interval": 5,
        "train.ckpt_interval": 10,
    }
    return corpus_config(data_dir, {**longer, **over})


def test_lr_schedule():
    t = TrainConfig(lr=1.0, warmup=10, max_steps=110)
    assert lr_at(1, t) == pytest.approx(0.1)
    assert lr_at(10, t) == pytest.approx(1.0)  # peak at the end of warm-up
    assert lr_at(60, t) == pytest.approx(0.5)  # half-way through the cosine
    assert lr_at(110, t) == pytest.approx(0.0, abs=1e-12)  # 0 at the last update
    values = [lr_at(s, t) for s in range(10, 111)]
    assert all(a >= b for a, b in itertools.pairwise(values))
    assert lr_at(5, TrainConfig(lr=2.0, warmup=0, max_steps=10)) == pytest.approx(
        2.0 * 0.5 * (1 + math.cos(math.pi * 0.5))
    )


def test_weight_decay_only_on_matrices():
    model = SparseTransformer(ModelConfig(ctx=16, n_layer=1, n_head=2, d_model=8, stride=4, c=2))
    opt = configure_optimizer(model, TrainConfig(weight_decay=0.01))
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"])
    assert all(p.dim() < 2 for p in no_decay["params"])
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_log_line_metrics_and_checkpoints(data_dir, tmp_path, caplog):
    cfg = tiny(data_dir)
    with caplog.at_level(logging.INFO, logger="sparse_transformer"):
        result = train(cfg, tmp_path / "run", progress=False)
    msgs = [r.getMessage() for r in caplog.records if r.name.startswith("sparse_transformer.train")]
    # The resolved config is the first log line.
    assert msgs[0].startswith("config {")
    assert json.loads(msgs[0][len("config ") :])["model"]["ctx"] == 32
    lines = [m for m in msgs if m.startswith("step ")]
    pattern = r"step \d+ \| loss \d+\.\d{4} \| bpb \d+\.\d{3} \| lr \S+ \| \d+ ms \| \d+\.\dk tok/s"
    assert len(lines) == 4 and all(re.fullmatch(pattern, m) for m in lines), lines
    events = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "train"] == [5, 10, 15, 20]
    assert [e["step"] for e in events if e["event"] == "eval"] == [5, 10, 15, 20]
    assert result["step"] == 20 and result["val_bpb"] is not None
    assert result["val_bpb"] < 8.0  # learnt something from uniform
    ckpts = C.list_checkpoints(tmp_path / "run")
    assert [p.name for p in ckpts] == ["ckpt-000010", "ckpt-000020"]
    assert C.latest_checkpoint(tmp_path / "run").name == "ckpt-000020"
    ts = torch.load(ckpts[-1] / "trainer.pt", weights_only=True)
    assert ts["step"] == 20 and set(ts["rng"]) >= {"python", "numpy", "torch", "data"}


def _params(run):
    return C.load_model_state(run)


def test_resume_equivalence(data_dir, tmp_path):
    """20 updates straight == 10 updates, stop, resume for 10: identical parameters."""
    cfg = tiny(data_dir)
    train(cfg, tmp_path / "straight", progress=False)
    train(cfg, tmp_path / "split", progress=False, stop_at=10)
    assert C.latest_checkpoint(tmp_path / "split").name == "ckpt-000010"
    train(cfg, tmp_path / "split", progress=False, resume=True)
    a, b = _params(tmp_path / "straight"), _params(tmp_path / "split")
    assert a.keys() == b.keys()
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print("max |straight - resumed| =", diff)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ta = C.load_trainer_state(tmp_path / "straight")
    tb = C.load_trainer_state(tmp_path / "split")
    assert torch.equal(ta["rng"]["data"], tb["rng"]["data"])
    assert torch.equal(ta["rng"]["torch"], tb["rng"]["torch"])
    # metrics.jsonl holds each step once
    ev = [json.loads(x) for x in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in ev if e["event"] == "train"] == [5, 10, 15, 20]


def test_resume_to_new_max_steps(data_dir, tmp_path):
    cfg = tiny(data_dir, **{"train.max_steps": 10})
    train(cfg, tmp_path / "run", progress=False)
    more = apply_overrides(cfg, {"train.max_steps": 14})
    r = train(more, tmp_path / "run", progress=False, resume=True)
    assert r["step"] == 14
    assert C.latest_checkpoint(tmp_path / "run").name == "ckpt-000014"
    assert C.load_config(tmp_path / "run").train.max_steps == 14
    # Resuming at max_steps does nothing.
    r = train(more, tmp_path / "run", progress=False, resume=True)
    assert r["step"] == 14


def test_refuses_existing_run_and_changed_model(data_dir, tmp_path):
    cfg = tiny(data_dir, **{"train.max_steps": 2, "train.eval_interval": 0})
    train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train(cfg, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match=r"different model \(model\.d_model: 32 -> 64"):
        train(apply_overrides(cfg, {"model.d_model": 64}), tmp_path / "run", resume=True)


def test_missing_data_says_how_to_prepare(tmp_path):
    cfg = apply_overrides(get_preset("tiny-cpu"), {"data.data_dir": str(tmp_path / "nodata")})
    with pytest.raises(
        DataNotPreparedError, match="sparse-transformer prepare shakespeare --data-dir"
    ):
        train(cfg, tmp_path / "run", progress=False)


def test_gradient_accumulation_matches_full_batch(data_dir, tmp_path):
    """micro_batch_size splits the batch without changing the update (no dropout, fp32)."""
    cfg = tiny(data_dir, **{"model.dropout": 0.0, "train.max_steps": 3, "train.eval_interval": 0})
    train(cfg, tmp_path / "full", progress=False)
    train(apply_overrides(cfg, {"train.micro_batch_size": 2}), tmp_path / "micro", progress=False)
    a, b = _params(tmp_path / "full"), _params(tmp_path / "micro")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    print("max |full - accumulated| =", diff)
    # Summing two half-batch losses reorders float32 sums (~1e-7 relative in the gradients); Adam
    # divides by sqrt(v), so on near-zero gradient elements this grows towards lr (3e-3) per
    # update. Since W_out starts non-zero, every weight gets a gradient from update 1: 3.5e-5 seen.
    assert diff < 2e-4


def test_one_trainer_per_run_directory(data_dir, tmp_path):
    from sparse_transformer.locking import BusyError

    cfg = tiny(data_dir, **{"train.max_steps": 2, "train.eval_interval": 0})
    with C.lock_run_dir(tmp_path / "run"), pytest.raises(BusyError, match="is in use"):
        train(cfg, tmp_path / "run", progress=False)
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a run directory"):
        train(cfg, tmp_path / "afile", progress=False)


def test_resume_with_another_max_steps_says_what_the_schedule_does(data_dir, tmp_path, caplog):
    cfg = tiny(data_dir, **{"train.max_steps": 10, "train.eval_interval": 0})
    train(cfg, tmp_path / "run", progress=False)
    more = apply_overrides(cfg, {"train.max_steps": 20})
    with caplog.at_level(logging.INFO, logger="sparse_transformer"):
        train(more, tmp_path / "run", progress=False, resume=True)
    msg = [r.getMessage() for r in caplog.records if "schedule changed" in r.getMessage()]
    print(msg)
    assert len(msg) == 1
    assert f"to {lr_at(11, more.train):.2e} at step 11" in msg[0] and "0 at step 20" in msg[0]
    assert f"from {lr_at(10, cfg.train):.2e} at step 10" in msg[0]
