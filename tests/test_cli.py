"""The command line end to end on a tiny generated text dataset, and its one-line errors."""

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import text_bytes

from sparse_transformer import checkpoint as C
from sparse_transformer.cli import main

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--model.ctx=32",
    "--train.max_steps=6",
    "--train.ckpt_interval=3",
    "--train.log_interval=3",
]


@pytest.fixture(autouse=True)
def _restore_logging():
    logger = logging.getLogger("sparse_transformer")
    handlers, level, propagate = list(logger.handlers), logger.level, logger.propagate
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)
    logger.propagate = propagate


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    src = root / "corpus.txt"
    src.write_bytes(text_bytes(20_000))
    return root, src


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, match):
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    assert match in lines[0], lines[0]


def test_end_to_end(corpus, tmp_path, capsys):
    _root, src = corpus
    data = tmp_path / "data"
    code, out, _ = run(
        capsys, "prepare", "text", "--path", src, "--data-dir", data, "--no-progress"
    )
    assert code == 0 and out.strip().endswith("corpus")
    assert (data / "corpus" / "meta.json").is_file()
    # prepare again: up to date, still fine
    assert (
        run(capsys, "prepare", "text", "--path", src, "--data-dir", data, "--no-progress")[0] == 0
    )

    out_dir = tmp_path / "run"
    code, out, err = run(
        capsys, "train", "--preset", "tiny-cpu", "--out", out_dir, "--data-dir", data,
        "--dataset", "corpus", "--no-progress", *TINY, "--json",
    )  # fmt: skip
    assert code == 0, err
    result = json.loads(out)
    assert result["step"] == 6 and result["val_bpb"] < 8.0
    assert "step 3 | loss" in err and err.splitlines()[0].startswith("config {")
    cfg = C.load_config(out_dir)
    assert cfg.model.ctx == 32 and cfg.data.dataset == "corpus"

    # resume to a new max_steps (the run's own config; --preset not needed)
    code, out, err = run(
        capsys, "train", "--out", out_dir, "--resume", "--train.max_steps", "8", "--no-progress"
    )
    assert code == 0, err
    assert "trained to step 8" in out
    assert C.latest_checkpoint(out_dir).name == "ckpt-000008"

    code, out, err = run(capsys, "eval", "--checkpoint", out_dir, "--json", "--no-progress")
    assert code == 0, err
    r = json.loads(out)
    assert set(r) >= {"bits_per_byte", "tokens"} and r["tokens"] == 999  # 5% of 20,000 - 1
    assert 0 < r["bits_per_byte"] < 8.0
    code, out, _ = run(
        capsys, "eval", "--checkpoint", out_dir / "ckpt-000006", "--split", "test",
        "--min-context", "16", "--json", "--no-progress",
    )  # fmt: skip
    assert code == 0 and json.loads(out)["tokens"] == 999
    code, out, _ = run(capsys, "eval", "--checkpoint", out_dir, "--no-progress")
    assert code == 0 and out.startswith("val bits/byte ")

    code, out, err = run(
        capsys, "sample", "--checkpoint", out_dir, "--prompt", "ROMEO:", "--length", "10",
        "--seed", "1", "--num", "2", "--out", tmp_path / "samples", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert out.count("ROMEO:") == 2 and "tokens/s" in err
    texts = sorted((tmp_path / "samples").glob("sample-*.txt"))
    assert len(texts) == 2 and all(len(p.read_bytes()) == 16 for p in texts)
    # past the context (ctx 32) by a sliding window
    code, _, err = run(
        capsys, "sample", "--checkpoint", out_dir, "--prompt", "ROMEO:", "--length", "70",
        "--out", tmp_path / "long", "--no-progress",
    )  # fmt: skip
    assert code == 0, err
    assert len((tmp_path / "long" / "sample-0.txt").read_bytes()) == 76
    # the same seed gives the same sample
    code, out2, _ = run(
        capsys, "sample", "--checkpoint", out_dir, "--prompt", "ROMEO:", "--length", "10",
        "--seed", "1", "--num", "2", "--no-progress",
    )  # fmt: skip
    assert out2 == out


def test_patterns_command(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    code, _out, err = run(
        capsys, "patterns", "--pattern", "fixed", "--stride", "4", "--c", "1", "--n", "16",
        "--out", tmp_path / "p.png",
    )  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "p.png").stat().st_size > 0


def _trained_run(corpus, tmp_path, capsys):
    _root, src = corpus
    data = tmp_path / "data"
    run(capsys, "prepare", "text", "--path", src, "--data-dir", data, "--no-progress")
    out_dir = tmp_path / "run"
    code, _, err = run(
        capsys, "train", "--preset", "tiny-cpu", "--out", out_dir, "--data-dir", data,
        "--dataset", "corpus", "--no-progress", "--model.ctx=32", "--train.max_steps=1",
    )  # fmt: skip
    assert code == 0, err
    return data, out_dir


def test_bad_inputs_one_line_exit_2(corpus, tmp_path, capsys):
    data, out_dir = _trained_run(corpus, tmp_path, capsys)
    cases = [
        (["train", "--preset", "tiny-cpu", "--out", tmp_path / "r1", "--data-dir", tmp_path / "none"],
         "sparse-transformer prepare shakespeare --data-dir"),
        (["train", "--preset", "nope", "--out", tmp_path / "r2"], "unknown preset 'nope'; choose from"),
        (["train", "--preset", "tiny-cpu", "--out", tmp_path / "r3", "--model.nlayer=3"],
         "unknown config key 'model.nlayer'; choose from"),
        (["train", "--preset", "tiny-cpu", "--out", tmp_path / "r3", "--model.n_layer=two"],
         "is not a valid int"),
        (["train", "--preset", "tiny-cpu", "--out", tmp_path / "r3", "stray"], "unexpected argument"),
        (["train", "--out", tmp_path / "r4"], "train needs --preset"),
        (["train", "--preset", "tiny-cpu", "--out", out_dir, "--data-dir", data,
          "--dataset", "corpus", "--model.ctx=32"], "already holds a run"),
        (["eval", "--checkpoint", tmp_path / "missing"], "does not exist"),
        (["eval", "--checkpoint", out_dir, "--min-context", "32"], "min_context must be in"),
        (["eval", "--checkpoint", out_dir, "--data-dir", tmp_path / "none"], "prepare corpus"),
        (["eval", "--checkpoint", out_dir, "--split", "dev"], "invalid choice"),
        (["eval"], "--checkpoint"),
        (["sample", "--checkpoint", out_dir, "--length", "3", "--temperature", "-1"],
         "temperature must be"),
        (["prepare", "nope"], "unknown dataset 'nope'"),
        (["prepare", "text", "--data-dir", tmp_path], "needs --path"),
        (["prepare", "text", "--path", corpus[1], "--bogus=1"], "unknown option --bogus"),
        (["bogus-command"], "invalid choice"),
    ]  # fmt: skip
    for argv, match in cases:
        code, _, err = run(capsys, *argv)
        assert_one_line_error(code, err, match)


def test_damaged_checkpoints_exit_2(corpus, tmp_path, capsys):
    _, out_dir = _trained_run(corpus, tmp_path, capsys)
    ckpt = C.latest_checkpoint(out_dir)
    # a checkpoint directory from a different config
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["model"]["d_model"] = 64
    other = tmp_path / "other"
    other.mkdir()
    for f in ("model.safetensors", "trainer.pt"):
        (other / f).write_bytes((ckpt / f).read_bytes())
    (other / "config.json").write_text(json.dumps(cfg))
    for cmd in (["eval"], ["sample", "--length", "4"]):
        code, _, err = run(capsys, *cmd, "--checkpoint", other)
        assert_one_line_error(code, err, "does not match the model of config.json")
    # resuming a run whose latest checkpoint does not fit its own config
    original = (ckpt / "config.json").read_text()
    (ckpt / "config.json").write_text(json.dumps(cfg))
    code, _, err = run(capsys, "train", "--out", out_dir, "--resume", "--no-progress")
    assert_one_line_error(code, err, "does not match the model of config.json")
    (ckpt / "config.json").write_text(original)
    # truncated model.safetensors
    f = ckpt / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    for cmd in (["eval"], ["sample", "--length", "4"]):
        code, _, err = run(capsys, *cmd, "--checkpoint", out_dir)
        assert_one_line_error(code, err, "model.safetensors is unreadable")
    code, _, err = run(capsys, "train", "--out", out_dir, "--resume", "--no-progress")
    assert_one_line_error(code, err, "model.safetensors is unreadable")


def test_python_dash_m_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO / "src"))
    r = subprocess.run(
        [sys.executable, "-m", "sparse_transformer", "train", "--preset", "nope", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, check=False,
    )  # fmt: skip
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "error: unknown preset 'nope'; choose from " + r.stderr.split("choose from ")[1].strip()
    ]
    r = subprocess.run(
        [sys.executable, "-m", "sparse_transformer", "--help"], capture_output=True, text=True,
        env=env, check=False,
    )  # fmt: skip
    assert r.returncode == 0 and "prepare" in r.stdout and "train" in r.stdout
