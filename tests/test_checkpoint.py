"""Checkpoints: round trip, pointers, pruning, damaged files, and SIGKILL at any moment."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import text_bytes

import sparse_transformer
from sparse_transformer import checkpoint as C
from sparse_transformer.config import apply_overrides, config_to_dict, get_preset
from sparse_transformer.data import prepare
from sparse_transformer.model import SparseTransformer
from sparse_transformer.train import configure_optimizer

REPO = Path(__file__).resolve().parents[1]


def small_cfg(**over):
    base = {"model.ctx": 32, "model.stride": 8, "data.dataset": "corpus"}
    base.update(over)
    return apply_overrides(get_preset("tiny-cpu"), base)


def trained_state(cfg, steps=2):
    torch.manual_seed(0)
    model = SparseTransformer(cfg.model)
    opt = configure_optimizer(model, cfg.train)
    for _ in range(steps):
        x = torch.randint(0, 256, (2, cfg.model.ctx))
        torch.nn.functional.cross_entropy(model(x).reshape(-1, 256), x.reshape(-1)).backward()
        opt.step()
        opt.zero_grad()
    ts = {
        "optimizer": opt.state_dict(),
        "rng": C.get_rng_state(torch.Generator()),
        "best_val_bpb": None,
    }
    return model, ts


def test_round_trip(tmp_path):
    cfg = small_cfg()
    model, ts = trained_state(cfg)
    d = C.save_checkpoint(tmp_path / "run", 7, cfg, model.state_dict(), ts, val_bpb=3.5)
    assert d.name == "ckpt-000007"
    assert sorted(p.name for p in d.iterdir()) == ["config.json", "model.safetensors", "trainer.pt"]
    assert (tmp_path / "run" / "latest").read_text() == "ckpt-000007\n"
    assert (tmp_path / "run" / "best").read_text() == "ckpt-000007\n"
    assert json.loads((d / "config.json").read_text()) == config_to_dict(cfg)
    # trainer.pt loads with weights_only=True
    ts2 = torch.load(d / "trainer.pt", weights_only=True)
    assert ts2["step"] == 7 and ts2["best_val_bpb"] == 3.5
    assert torch.equal(ts2["rng"]["torch"], ts["rng"]["torch"])
    assert ts2["optimizer"]["param_groups"][0]["weight_decay"] == cfg.train.weight_decay
    # load_model from the run directory (latest) and from the checkpoint directory
    x = torch.randint(0, 256, (2, 32))
    model.eval()
    for path in (tmp_path / "run", d):
        loaded = sparse_transformer.load_model(path)
        assert loaded.cfg == cfg.model and loaded.run_config == cfg
        assert not loaded.training
        for k, v in model.state_dict().items():
            assert torch.equal(v, loaded.state_dict()[k])
        with torch.no_grad():
            assert torch.equal(model(x), loaded(x))


def test_checkpoint_from_before_zero_logits_loads(tmp_path):
    """A config.json written before ``model.zero_logits`` existed (issue 20) still loads: the key
    takes its default, and the stored weights (W_out included) are used as they are."""
    cfg = small_cfg()
    model, ts = trained_state(cfg)
    d = C.save_checkpoint(tmp_path / "run", 2, cfg, model.state_dict(), ts)
    raw = json.loads((d / "config.json").read_text())
    del raw["model"]["zero_logits"]
    (d / "config.json").write_text(json.dumps(raw))
    assert C.load_config(d).model.zero_logits is False
    loaded = sparse_transformer.load_model(tmp_path / "run")
    for k, v in model.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    x = torch.randint(0, 256, (2, 32))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_rng_state_round_trip():
    g = torch.Generator().manual_seed(3)
    state = C.get_rng_state(g)
    a = (random.random(), float(torch.rand(1)), torch.randint(0, 9, (4,), generator=g))
    na = np.random.rand()
    C.set_rng_state(state, g)
    b = (random.random(), float(torch.rand(1)), torch.randint(0, 9, (4,), generator=g))
    assert a[:2] == b[:2] and torch.equal(a[2], b[2]) and np.random.rand() == na


def test_keep_last_and_best(tmp_path):
    cfg = small_cfg()
    model, ts = trained_state(cfg, steps=1)
    run = tmp_path / "run"
    for step, bpb in [(1, 5.0), (2, 3.0), (3, 4.0), (4, 4.5), (5, 6.0)]:
        C.save_checkpoint(run, step, cfg, model.state_dict(), ts, val_bpb=bpb, keep_last=2)
        ts = C.load_trainer_state(run)  # carries best_val_bpb forward as train.py does
    assert [p.name for p in C.list_checkpoints(run)] == [
        "ckpt-000002",
        "ckpt-000004",
        "ckpt-000005",
    ]
    assert C.best_checkpoint(run).name == "ckpt-000002"
    assert C.latest_checkpoint(run).name == "ckpt-000005"
    assert not any(p.suffix in (".tmp", ".del") for p in run.iterdir())


def test_leftovers_and_missing_pointer(tmp_path):
    cfg = small_cfg()
    model, ts = trained_state(cfg, steps=1)
    run = tmp_path / "run"
    C.save_checkpoint(run, 1, cfg, model.state_dict(), ts)
    C.save_checkpoint(run, 2, cfg, model.state_dict(), ts)
    # a half-written checkpoint and a stale pointer, as a SIGKILL could leave them
    (run / "ckpt-000003.tmp").mkdir()
    (run / "ckpt-000003.tmp" / "config.json").write_text("{")
    (run / "latest").write_text("ckpt-000009\n")
    assert C.latest_checkpoint(run).name == "ckpt-000002"
    (run / "latest").unlink()
    assert C.latest_checkpoint(run).name == "ckpt-000002"
    assert sparse_transformer.load_model(run).cfg == cfg.model
    C.clean_leftovers(run)
    assert not (run / "ckpt-000003.tmp").exists()


def test_truncated_safetensors(tmp_path):
    cfg = small_cfg()
    model, ts = trained_state(cfg, steps=1)
    d = C.save_checkpoint(tmp_path / "run", 1, cfg, model.state_dict(), ts)
    f = d / "model.safetensors"
    data = f.read_bytes()
    for cut in (len(data) // 2, 5, 0):
        f.write_bytes(data[:cut])
        with pytest.raises(ValueError, match="model.safetensors is unreadable"):
            sparse_transformer.load_model(d)


def test_checkpoint_from_a_different_config(tmp_path):
    cfg = small_cfg()
    model, ts = trained_state(cfg, steps=1)
    d = C.save_checkpoint(tmp_path / "run", 1, cfg, model.state_dict(), ts)
    other = apply_overrides(cfg, {"model.d_model": 64})
    (d / "config.json").write_text(json.dumps(config_to_dict(other)))
    with pytest.raises(ValueError, match="does not match the model of config.json"):
        sparse_transformer.load_model(d)
    other = apply_overrides(cfg, {"model.n_layer": 3})
    (d / "config.json").write_text(json.dumps(config_to_dict(other)))
    with pytest.raises(ValueError, match="missing blocks.2"):
        sparse_transformer.load_model(d)
    (d / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        sparse_transformer.load_model(d)


def test_bad_paths(tmp_path):
    with pytest.raises(FileNotFoundError):
        sparse_transformer.load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no checkpoint"):
        sparse_transformer.load_model(tmp_path / "empty")
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="not a directory"):
        sparse_transformer.load_model(tmp_path / "f")


# --------------------------------------------------------------------------------------------
# SIGKILL at any moment
# --------------------------------------------------------------------------------------------


def _last_logged_step(run: Path) -> int:
    steps = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            ev = json.loads(line)
        except json.JSONDecodeError:
            continue
        if ev.get("event") == "train":
            steps.append(ev["step"])
    return max(steps, default=0)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_never_leaves_run_unloadable(tmp_path):
    """kill -9 a training process (a checkpoint every update) at random moments, several times:
    the run always loads, at most the steps since the last checkpoint are lost, and --resume
    carries on from there."""
    src = tmp_path / "corpus.txt"
    src.write_bytes(text_bytes(20_000))
    prepare("text", tmp_path / "data", path=src, progress=False)
    run = tmp_path / "run"
    cmd = [
        sys.executable, "-m", "sparse_transformer", "-q", "train", "--preset", "tiny-cpu",
        "--out", str(run), "--data-dir", str(tmp_path / "data"), "--dataset", "corpus",
        "--no-progress", "--resume", "--model.ctx=32", "--train.max_steps=100000",
        "--train.ckpt_interval=1", "--train.log_interval=1", "--train.eval_interval=0",
        "--train.eval_batches=1", "--train.keep_last=2", "--train.threads=1",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    rng = random.Random(0)
    last_step = 0
    for _ in range(4):
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        # wait until this process has written a checkpoint past the previous one
        while time.time() < deadline and proc.poll() is None:
            d = C.latest_checkpoint(run)
            if d is not None and int(d.name.split("-")[1]) > last_step:
                break
            time.sleep(0.02)
        assert proc.poll() is None, proc.stderr.read().decode()
        time.sleep(rng.uniform(0.0, 0.4))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        d = C.latest_checkpoint(run)
        model = sparse_transformer.load_model(run)  # never unloadable
        ts = C.load_trainer_state(run)
        step = ts["step"]
        assert d.name == f"ckpt-{step:06d}" and model.cfg.ctx == 32
        # at most the steps since the last checkpoint are lost (one per update here)
        assert step >= _last_logged_step(run) - 1
        assert step >= last_step
        last_step = step
    # a final resume runs to a new max_steps and finishes cleanly
    done = subprocess.run(
        [*cmd, f"--train.max_steps={last_step + 2}"],
        check=False,
        env=env,
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    assert C.load_trainer_state(run)["step"] == last_step + 2
    assert not any(p.name.endswith((".tmp", ".del")) for p in run.iterdir())
    assert _last_logged_step(run) == last_step + 2


# --------------------------------------------------------------------------------------------
# Write failures, file modes, data.json, readers racing a trainer (issue 17)
# --------------------------------------------------------------------------------------------


def test_failed_write_leaves_no_tmp_and_keeps_latest(tmp_path, monkeypatch):
    import errno

    cfg = small_cfg()
    model, ts = trained_state(cfg, steps=1)
    C.save_checkpoint(tmp_path, 1, cfg, model.state_dict(), ts)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(C.torch, "save", full)
    with pytest.raises(C.CheckpointWriteError) as e:
        C.save_checkpoint(tmp_path, 2, cfg, model.state_dict(), ts)
    print(e.value)
    assert e.value.errno == errno.ENOSPC and "\n" not in str(e.value)
    assert "ckpt-000001 stays the latest checkpoint" in str(e.value)
    assert "free some space, then continue the run with --resume" in str(e.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-000001", "latest"]
    assert C.latest_checkpoint(tmp_path).name == "ckpt-000001"


def test_every_file_gets_the_umask_mode(tmp_path):
    from sparse_transformer.locking import new_file_mode

    cfg = small_cfg()
    model, ts = trained_state(cfg, steps=1)
    d = C.save_checkpoint(tmp_path, 1, cfg, model.state_dict(), ts, data={"kind": "text"})
    modes = {p.name: p.stat().st_mode & 0o777 for p in d.iterdir()}
    print(modes)
    assert set(modes) == {"config.json", "data.json", "model.safetensors", "trainer.pt"}
    assert set(modes.values()) == {new_file_mode()}


def test_data_record_and_old_checkpoints(tmp_path):
    cfg = small_cfg(**{"data.data_dir": "data"})
    model, ts = trained_state(cfg, steps=1)
    meta = {"name": "corpus", "kind": "audio", "sample_rate": 8000, "encoding": "mu-law-8",
            "splits": {"train": 9}, "params": {"path": "/somewhere"}, "files": ["a.wav"]}  # fmt: skip
    run = tmp_path / "runs" / "a"
    rec = C.data_record(meta, tmp_path / "data" / "corpus", run)
    assert rec["dataset_dir_from_run"] == "../../data/corpus" and "params" not in rec
    d = C.save_checkpoint(run, 1, cfg, model.state_dict(), ts, data=rec)
    assert C.load_data_record(run) == rec
    with pytest.raises(C.DataMovedError, match="pass --data-dir DIR"):
        C.locate_data_dir(cfg, d)
    (tmp_path / "data" / "corpus").mkdir(parents=True)
    (tmp_path / "data" / "corpus" / "meta.json").write_text("{}")
    assert Path(C.locate_data_dir(cfg, d)).resolve() == (tmp_path / "data").resolve()
    assert C.locate_data_dir(cfg, d, "elsewhere") == "elsewhere"  # --data-dir wins
    # an old checkpoint: no data.json, data_dir relative to where `train` ran (a parent here)
    (d / "data.json").unlink()
    assert C.load_data_record(d) is None
    assert Path(C.locate_data_dir(cfg, d)).resolve() == (tmp_path / "data").resolve()
    sparse_transformer.load_model(run)  # still loads


def test_reader_takes_the_new_latest_when_its_checkpoint_is_pruned(tmp_path, monkeypatch):
    cfg = small_cfg()
    model, ts = trained_state(cfg, steps=1)
    C.save_checkpoint(tmp_path, 1, cfg, model.state_dict(), ts)
    real = C.resolve_checkpoint
    calls = []

    def racing(path):  # the first pick is pruned by a trainer before it is read
        calls.append(path)
        return tmp_path / "ckpt-000000" if len(calls) == 1 else real(path)

    monkeypatch.setattr(C, "resolve_checkpoint", racing)
    m = C.load_model(tmp_path)
    assert m.checkpoint_dir.name == "ckpt-000001" and len(calls) > 1
