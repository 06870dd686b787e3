"""The command line under failure (issue 17): a busy run directory, write failures (full disk,
read-only folder, a file in the way), unchecked values, killed runs' metrics, and runs used from
another working directory. Every failure is one ``error: ...`` line, never a traceback."""

import errno
import json
import os
import shutil
import subprocess
import sys
import wave
from pathlib import Path
from types import SimpleNamespace

import pytest
from cli_cases import _restore_logging_and_threads, run  # noqa: F401  (autouse fixture)
from data_fixtures import make_wav_dir, text_bytes

from sparse_transformer import checkpoint as C
from sparse_transformer.cli import main

TINY = [
    "--model.ctx=32", "--train.max_steps=4", "--train.ckpt_interval=2", "--train.log_interval=1",
    "--train.eval_batches=1", "--train.threads=1",
]  # fmt: skip


# An audio model of seconds (as tests/test_cli_media.py).
AUDIO = [
    "--model.n_layer=2", "--model.n_head=2", "--model.d_model=16", "--model.backend=torch",
    "--model.dropout=0", "--model.ctx=64", "--model.stride=8", "--train.max_steps=1",
    "--train.batch_size=2", "--train.warmup=0", "--train.eval_batches=1",
    "--train.eval_interval=0", "--train.ckpt_interval=0", "--train.precision=fp32",
    "--train.recompute=false", "--train.threads=1",
]  # fmt: skip


def one_line_error(result, match, code=2):
    got, _, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert got == code, err
    assert lines and lines[-1].startswith("error: ") and "Traceback" not in err, err
    assert [ln for ln in lines if ln.startswith("error: ")] == [lines[-1]], err
    assert match in lines[-1], lines[-1]
    return lines[-1]


def train_args(data: Path, out: Path, *extra):
    return ["train", "--preset", "tiny-cpu", "--out", out, "--data-dir", data, "--dataset",
            "corpus", "--no-progress", *TINY, *extra]  # fmt: skip


@pytest.fixture
def data(tmp_path, capsys):
    src = tmp_path / "corpus.txt"
    src.write_bytes(text_bytes(20_000))
    d = tmp_path / "data"
    assert run(capsys, "prepare", "text", "--path", src, "--data-dir", d, "--no-progress")[0] == 0
    return d


def visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))


# --------------------------------------------------------------------------------------------
# 1. The run lock
# --------------------------------------------------------------------------------------------


def test_second_trainer_on_a_busy_run_is_refused(data, tmp_path, capsys):
    out = tmp_path / "run"
    with C.lock_run_dir(out):  # another trainer holds the run
        line = one_line_error(run(capsys, *train_args(data, out)), "is in use by another process")
        assert f"(pid {os.getpid()})" in line and "choose another --out" in line
        assert visible(out) == []  # the refused trainer wrote nothing
        # readers need no lock
    code, _, err = run(capsys, *train_args(data, out))
    assert code == 0, err


def test_lock_of_a_killed_process_does_not_block_resume(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, *train_args(data, out))[0] == 0
    holder = subprocess.Popen(
        [sys.executable, "-c",
         (f"import fcntl, os, time\nfd = os.open({str(out / '.lock')!r}, os.O_RDWR)\n"
          "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        one_line_error(run(capsys, "train", "--out", out, "--resume"), "is in use")
    finally:
        holder.kill()  # SIGKILL: the lock file stays, the lock dies with the process
        holder.wait()
    assert (out / ".lock").exists()
    code, res, err = run(capsys, "train", "--out", out, "--resume", "--train.max_steps=6",
                         "--no-progress")  # fmt: skip
    assert code == 0 and "trained to step 6" in res, err


def test_refused_run_leaves_no_empty_folder(tmp_path, capsys):
    out = tmp_path / "runs" / "new"
    one_line_error(
        run(capsys, "train", "--preset", "tiny-cpu", "--out", out, "--data-dir", tmp_path / "none"),
        "sparse-transformer prepare shakespeare",
    )
    assert not out.exists()


# --------------------------------------------------------------------------------------------
# 2. Write failures
# --------------------------------------------------------------------------------------------


def test_full_disk_while_checkpointing(data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real = C._save_safetensors
    calls = []

    def full_disk(state, path, meta):  # the second checkpoint hits a full disk
        calls.append(path)
        if len(calls) == 2:
            path.write_bytes(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(state, path, meta)

    monkeypatch.setattr(C, "_save_safetensors", full_disk)
    line = one_line_error(run(capsys, *train_args(data, out)), "cannot write checkpoint", code=1)
    assert "ckpt-000004" in line and "No space left on device" in line
    assert "ckpt-000002 stays the latest checkpoint" in line and "--resume" in line
    assert visible(out) == ["best", "ckpt-000002", "latest", "metrics.jsonl"]
    assert not [p for p in out.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    # torch.save reports a full disk as a RuntimeError (inline_container.cc)
    monkeypatch.setattr(C, "_save_safetensors", real)

    def torch_full(*a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:626] . unexpected pos 64 vs 0")

    monkeypatch.setattr(C.torch, "save", torch_full)
    monkeypatch.setattr(C.shutil, "disk_usage", lambda p: SimpleNamespace(free=1 << 20))
    line = one_line_error(run(capsys, "train", "--out", out, "--resume", "--no-progress"),
                          "cannot write checkpoint ckpt-000004", code=1)  # fmt: skip
    assert "the disk is full (1 MiB free; [enforce fail at inline_container.cc" in line
    assert visible(out) == ["best", "ckpt-000002", "latest", "metrics.jsonl"]
    monkeypatch.undo()
    code, res, err = run(capsys, "train", "--out", out, "--resume", "--no-progress", "--json")
    assert code == 0 and json.loads(res)["step"] == 4, err
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()
             if json.loads(x)["event"] == "train"]  # fmt: skip
    assert steps == [1, 2, 3, 4]


def test_read_only_folders(data, tmp_path, capsys, monkeypatch):
    def read_only(path, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(path))

    monkeypatch.setattr(C, "exclusive_lock", read_only)
    line = one_line_error(run(capsys, *train_args(data, tmp_path / "ro")), "Read-only", code=1)
    assert "choose a folder you can write to (--out)" in line
    from sparse_transformer.data import store

    monkeypatch.setattr(store, "exclusive_lock", read_only)
    src = tmp_path / "other.txt"
    src.write_bytes(text_bytes(3000))
    line = one_line_error(
        run(capsys, "prepare", "text", "--path", src, "--data-dir", data), "Read-only", code=1
    )
    assert "(--data-dir)" in line


def test_a_file_in_the_way(data, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    one_line_error(run(capsys, *train_args(data, f)), "--out")
    one_line_error(run(capsys, "prepare", "text", "--path", f, "--data-dir", f), "is a file")
    out = tmp_path / "run"
    assert run(capsys, *train_args(data, out))[0] == 0
    code, res, err = run(capsys, "sample", "--checkpoint", out, "--length", "4", "--out", f)
    one_line_error((code, res, err), "--out")
    assert res == ""  # refused before sampling: nothing printed


# --------------------------------------------------------------------------------------------
# 4. Unchecked values
# --------------------------------------------------------------------------------------------


def test_bad_values_one_line(data, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(capsys, *train_args(data, out))[0] == 0
    cases = [
        (["eval", "--checkpoint", out, "--batch-size", "0"], "--batch-size must be >= 1, got 0"),
        (["eval", "--checkpoint", out, "--device", "bogus"], "unknown device 'bogus'; choose"),
        (["sample", "--checkpoint", out, "--device", "cuda:x"], "unknown device 'cuda:x'"),
        (["train", "--preset", "tiny-cpu", "--out", ""], "--out must name a run directory"),
        (["sample", "--checkpoint", out, "--out", " "], "--out must name a folder"),
        (["prepare", "shakespeare", "--data-dir", ""], "--data-dir must name a folder"),
        (["patterns", "--pattern", "fixed", "--stride", "4", "--n", "8", "--out", ""],
         "--out must name an image file"),
    ]  # fmt: skip
    for argv, match in cases:
        one_line_error(run(capsys, *argv), match)
    assert not list(Path.cwd().glob("ckpt-*"))


def test_help_describes_every_command(capsys):
    for cmd in ("prepare", "train", "eval", "sample", "patterns"):
        with pytest.raises(SystemExit) as e:
            main([cmd, "--help"])
        assert e.value.code == 0
        _usage, _, rest = capsys.readouterr().out.partition("\n\n")
        assert rest and not rest.startswith(("options:", "positional")), (cmd, rest)


# --------------------------------------------------------------------------------------------
# 5. metrics.jsonl after an early kill
# --------------------------------------------------------------------------------------------


def test_metrics_of_a_run_killed_before_its_first_checkpoint(data, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    killed = [{"event": "train", "step": s, "loss": 5.0} for s in (1, 2, 3)]
    (out / "metrics.jsonl").write_text("".join(json.dumps(e) + "\n" for e in killed) + '{"ev')
    code, _, err = run(capsys, *train_args(data, out), "--resume")
    assert code == 0, err
    events = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [e["step"] for e in events if e["event"] == "train"]
    assert steps == [1, 2, 3, 4] and all(e.get("loss") != 5.0 for e in events)


# --------------------------------------------------------------------------------------------
# 6. Runs from any working directory
# --------------------------------------------------------------------------------------------


def test_eval_and_sample_from_another_folder_and_after_a_move(data, tmp_path, capsys, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    shutil.move(str(data), proj / "data")
    monkeypatch.chdir(proj)
    assert run(capsys, *train_args(Path("data"), Path("runs/a")))[0] == 0  # relative, as typed
    rec = json.loads((C.latest_checkpoint(proj / "runs/a") / "data.json").read_text())
    assert rec["kind"] == "text" and rec["dataset_dir_from_run"] == "../../data/corpus"
    assert Path(rec["dataset_dir"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    code, res, err = run(capsys, "eval", "--checkpoint", proj / "runs/a", "--json", "--no-progress")
    assert code == 0, err
    expected = json.loads(res)["bits_per_byte"]
    code, res, err = run(capsys, "sample", "--checkpoint", proj / "runs/a", "--length", "8")
    assert code == 0 and res.strip(), err
    # resume from elsewhere too
    code, res, err = run(capsys, "train", "--out", proj / "runs/a", "--resume",
                         "--train.max_steps=5", "--no-progress")  # fmt: skip
    assert code == 0 and "trained to step 5" in res, err
    # the whole project moves: the run-relative location finds the data
    moved = tmp_path / "moved"
    shutil.move(str(proj), moved)
    code, res, err = run(capsys, "eval", "--checkpoint", moved / "runs/a/ckpt-000004", "--json",
                         "--no-progress")  # fmt: skip
    assert code == 0 and json.loads(res)["bits_per_byte"] == expected, err
    # the data is gone: a clear message
    shutil.rmtree(moved / "data")
    line = one_line_error(run(capsys, "eval", "--checkpoint", moved / "runs/a"), "is not where")
    assert "pass --data-dir DIR" in line and "prepare corpus" in line


def test_audio_model_writes_wavs_from_anywhere(tmp_path, capsys, monkeypatch):
    folder = make_wav_dir(tmp_path / "wavs")
    data, out = tmp_path / "data", tmp_path / "run"
    assert run(capsys, "prepare", "audio", "--path", folder, "--data-dir", data,
               "--sample-rate", "8000", "--no-progress")[0] == 0  # fmt: skip
    code, _, err = run(capsys, "train", "--preset", "moh-music", "--out", out, "--data-dir", data,
                       "--dataset", "audio", "--no-progress", *AUDIO)  # fmt: skip
    assert code == 0, err
    shutil.rmtree(data)  # sampling needs no data: the checkpoint knows it is 8 kHz audio
    monkeypatch.chdir(tmp_path / "wavs")
    code, res, err = run(capsys, "sample", "--checkpoint", out, "--length", "16", "--num", "1",
                         "--no-progress")  # fmt: skip
    assert code == 0, err
    paths = [Path(p) for p in res.split()]
    assert [p.name for p in paths] == ["audio-sample-0.wav"] and paths[0].parent == out / "samples"
    with wave.open(str(paths[0])) as w:
        assert (w.getframerate(), w.getnframes()) == (8000, 16)


def test_checkpoint_without_data_json_falls_back(tmp_path, capsys, monkeypatch):
    """Checkpoints written before data.json: the kind comes from the prepared dataset (said in
    the log); without it, a warning says the model is taken for text."""
    folder = make_wav_dir(tmp_path / "wavs")
    proj = tmp_path / "proj"
    proj.mkdir()
    monkeypatch.chdir(proj)
    assert run(capsys, "prepare", "audio", "--path", folder, "--sample-rate", "8000",
               "--no-progress")[0] == 0  # fmt: skip
    code, _, err = run(capsys, "train", "--preset", "moh-music", "--out", "runs/a", "--dataset",
                       "audio", "--no-progress", "--data.data_dir=data", *AUDIO)  # fmt: skip
    assert code == 0, err
    ckpt = C.latest_checkpoint(proj / "runs/a")
    (ckpt / "data.json").unlink()  # as written by an older version, with data_dir as typed
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["data"]["data_dir"] = "data"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    monkeypatch.chdir(tmp_path)
    code, res, err = run(capsys, "sample", "--checkpoint", proj / "runs/a", "--length", "8",
                         "--no-progress")  # fmt: skip
    assert code == 0 and "has no data.json" in err and "'audio'" in err, err
    assert res.strip().endswith(".wav")
    shutil.rmtree(proj / "data")
    code, res, err = run(capsys, "sample", "--checkpoint", proj / "runs/a", "--length", "8",
                         "--no-progress")  # fmt: skip
    assert code == 0 and "treating the model as text" in err, err
