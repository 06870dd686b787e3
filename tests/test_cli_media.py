"""Images and audio through the command line: prepare -> train (a step or two of a tiny model) ->
sample PNG grids, completions and WAVs, on generated fixtures; and the one-line errors."""

import io
import pickle
import tarfile
import wave
from pathlib import Path

import numpy as np
import pytest
from cli_cases import _restore_logging_and_threads, run  # noqa: F401  (autouse fixture)
from data_fixtures import (
    float_wav_bytes,
    make_cifar_tar,
    make_imagenet_dir,
    make_png_dir,
    make_wav_dir,
    wav_bytes,
)

from sparse_transformer.data import load_meta
from sparse_transformer.media import HIDDEN_GREY

Image = pytest.importorskip("PIL.Image")

# A model of seconds: any preset shrunk to 2 layers of width 16, 2 updates, fp32, one thread.
TINY = [
    "--model.n_layer=2", "--model.n_head=2", "--model.d_model=16", "--model.backend=torch",
    "--model.dropout=0", "--train.max_steps=2", "--train.batch_size=2", "--train.warmup=0",
    "--train.eval_batches=1", "--train.eval_interval=0", "--train.ckpt_interval=0",
    "--train.log_interval=1", "--train.precision=fp32", "--train.recompute=false",
    "--train.threads=1",
]  # fmt: skip


def assert_one_line_error(result, match):
    code, _, err = result
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert match in lines[0], lines[0]


def prepare_and_train(capsys, tmp_path, name, src, preset, *extra_prepare, train_args=()):
    data = tmp_path / "data"
    code, out, err = run(capsys, "prepare", name, "--path", src, "--data-dir", data,
                         "--no-progress", *extra_prepare)  # fmt: skip
    assert code == 0, err
    dataset = Path(out.strip()).name
    run_dir = tmp_path / "run"
    code, out, err = run(capsys, "train", "--preset", preset, "--out", run_dir, "--data-dir", data,
                         "--dataset", dataset, "--no-progress", *TINY, *train_args)  # fmt: skip
    assert code == 0, err
    return data / dataset, run_dir, out


def tiles(png: Path, size: int, scale: int, pad: int = 2) -> np.ndarray:
    """Cut a grid written by the sampler back into (rows, cols, H, W, C) images."""
    with Image.open(png) as im:
        arr = np.asarray(im)
    if arr.ndim == 2:
        arr = arr[..., None]
    step = size * scale + pad
    rows, cols = (arr.shape[0] + pad) // step, (arr.shape[1] + pad) // step
    out = np.stack([
        np.stack([arr[r * step : r * step + size * scale : scale,
                      c * step : c * step + size * scale : scale] for c in range(cols)])
        for r in range(rows)
    ])  # fmt: skip
    return out


def test_cifar_tarball_to_png_grid_and_completions(tmp_path, capsys):
    tar, _, test = make_cifar_tar(tmp_path, per_batch=5, n_test=4)
    ds_dir, run_dir, out = prepare_and_train(capsys, tmp_path, "cifar10", tar, "cifar10")
    assert "val bits/dim" in out
    assert load_meta(ds_dir)["image_shape"] == [32, 32, 3]

    code, out, err = run(capsys, "sample", "--checkpoint", run_dir, "--num", "1", "--out",
                         tmp_path / "s", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert out.strip() == str(tmp_path / "s" / "cifar10-samples.png")
    assert "sampled 1 images of 3072 bytes" in err and "tokens/s" in err
    with Image.open(tmp_path / "s" / "cifar10-samples.png") as im:  # one 32 px image x 3
        assert im.size == (96, 96) and im.mode == "RGB"

    code, out, err = run(capsys, "sample", "--checkpoint", run_dir, "--complete", "2", "--num",
                         "1", "--out", tmp_path / "s", "--no-progress", "--seed", "4")  # fmt: skip
    assert code == 0, err
    assert "2 x 1 completions of 1536 bytes" in err
    grid = tiles(tmp_path / "s" / "cifar10-completions.png", 32, 3)
    assert grid.shape == (2, 3, 32, 32, 3)  # per row: given half, completion, original
    for row in grid:
        seen, done, original = row[0], row[1:2], row[2]
        assert any(np.array_equal(original, t) for t in test)  # a real test image
        np.testing.assert_array_equal(seen[:16], original[:16])
        assert (seen[16:] == HIDDEN_GREY).all()
        for d in done:  # the top half is the real one, only the bottom half was sampled
            np.testing.assert_array_equal(d[:16], original[:16])
    code, out, err = run(capsys, "eval", "--checkpoint", run_dir, "--split", "test",
                         "--no-progress")  # fmt: skip
    assert code == 0 and out.startswith("test bits/dim ") and "over 12,288 dims" in out


def test_imagenet_npz_to_png_grid(tmp_path, capsys):
    folder, _, _ = make_imagenet_dir(tmp_path / "imagenet", side=8)
    shape = ["--model.ctx=192", "--model.data_shape=8,8,3", "--model.stride=24"]
    _, run_dir, out = prepare_and_train(capsys, tmp_path, "imagenet64", folder, "imagenet64",
                                        train_args=shape)  # fmt: skip
    assert "val bits/dim" in out
    code, out, err = run(capsys, "sample", "--checkpoint", run_dir, "--num", "4", "--out",
                         tmp_path / "s", "--no-progress", "--temperature", "0.9")  # fmt: skip
    assert code == 0, err
    # 8 px tiles x 12 in a 2 x 2 grid
    with Image.open(tmp_path / "s" / "imagenet64-samples.png") as im:
        assert im.size == (2 * 96 + 2, 2 * 96 + 2) and im.mode == "RGB"
    # without --out the grid goes to the run directory
    code, out, err = run(capsys, "sample", "--checkpoint", run_dir, "--num", "1", "--no-progress")
    assert code == 0, err
    assert Path(out.strip()) == run_dir / "samples" / "imagenet64-samples.png"


def test_png_folder_greyscale_to_png_grid(tmp_path, capsys):
    folder = make_png_dir(tmp_path / "pics", n=6)
    shape = ["--model.ctx=64", "--model.data_shape=8,8,1", "--model.stride=8"]
    ds_dir, run_dir, _ = prepare_and_train(capsys, tmp_path, "images", folder, "fashion-mnist",
                                           "--size", "8", "--channels=1", train_args=shape)  # fmt: skip
    assert load_meta(ds_dir)["image_shape"] == [8, 8, 1]
    code, _, err = run(capsys, "sample", "--checkpoint", run_dir, "--num", "3", "--out",
                       tmp_path / "s", "--no-progress")  # fmt: skip
    assert code == 0, err
    grid = tiles(tmp_path / "s" / "images-samples.png", 8, 12)
    assert grid.shape == (2, 2, 8, 8, 1)  # 3 images in a 2 x 2 grid, the 4th tile empty
    assert (grid[1, 1] == 255).all()
    code, _, err = run(capsys, "sample", "--checkpoint", run_dir, "--complete", "1", "--num", "2",
                       "--out", tmp_path / "s", "--no-progress")  # fmt: skip
    assert code == 0, err
    (row,) = tiles(tmp_path / "s" / "images-completions.png", 8, 12)
    assert row.shape == (4, 8, 8, 1)  # given half, 2 completions, original
    for k in (1, 2):
        np.testing.assert_array_equal(row[k, :4], row[3, :4])


def test_8_and_16_bit_wavs_to_wav_samples(tmp_path, capsys):
    folder = make_wav_dir(tmp_path / "wavs")  # 8-bit mono, 16-bit stereo, 16-bit mono
    ds_dir, run_dir, out = prepare_and_train(
        capsys, tmp_path, "audio", folder, "moh-music", "--sample-rate", "8000",
        train_args=["--model.ctx=64", "--model.stride=8"],
    )  # fmt: skip
    meta = load_meta(ds_dir)
    assert meta["sample_rate"] == 8000 and meta["kind"] == "audio" and "val bits/byte" in out
    code, out, err = run(capsys, "sample", "--checkpoint", run_dir, "--num", "2", "--length", "64",
                         "--out", tmp_path / "s", "--no-progress")  # fmt: skip
    assert code == 0, err
    assert "sampled 2 clips of 64 samples (0.01 s at 8000 Hz)" in err
    paths = [Path(p) for p in out.split()]
    assert [p.name for p in paths] == ["audio-sample-0.wav", "audio-sample-1.wav"]
    for p in paths:
        with wave.open(str(p)) as w:
            assert (w.getframerate(), w.getnframes(), w.getnchannels(), w.getsampwidth()) == (
                8000, 64, 1, 2,
            )  # fmt: skip
    assert_one_line_error(
        run(capsys, "sample", "--checkpoint", run_dir, "--length", "65", "--out", tmp_path),
        "--length must be in 1..64",
    )
    assert_one_line_error(
        run(capsys, "sample", "--checkpoint", run_dir, "--complete", "1", "--out", tmp_path),
        "--complete is for image models",
    )


def test_image_sampling_usage_errors(tmp_path, capsys):
    folder, _, _ = make_imagenet_dir(tmp_path / "imagenet", side=4)
    shape = ["--model.ctx=48", "--model.data_shape=4,4,3", "--model.stride=12"]
    _, run_dir, _ = prepare_and_train(capsys, tmp_path, "imagenet64", folder, "imagenet64",
                                      train_args=shape)  # fmt: skip
    s = ["sample", "--checkpoint", run_dir, "--out", tmp_path / "s", "--no-progress"]
    assert_one_line_error(run(capsys, *s, "--prompt", "hi"), "--prompt is for text models")
    assert_one_line_error(run(capsys, *s, "--length", "10"), "whole 4x4x3 images (48 bytes)")
    assert_one_line_error(run(capsys, *s, "--complete", "4"), "--complete must be in 1..3")
    assert_one_line_error(run(capsys, *s, "--num", "0"), "--num must be >= 1")
    assert run(capsys, *s, "--length", "48", "--num", "1")[0] == 0


def _tar_with(folder: Path, members: dict[str, bytes]) -> Path:
    p = folder / "cifar-10-python.tar.gz"
    with tarfile.open(p, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return p


class _Evil:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_wrong_or_corrupt_files_give_one_line_errors(tmp_path, capsys):
    data = ["--data-dir", tmp_path / "data", "--no-progress"]
    garbage = tmp_path / "cifar-10-python.tar.gz"
    garbage.write_bytes(b"this is not a tarball at all")
    assert_one_line_error(run(capsys, "prepare", "cifar10", "--path", garbage, *data), "")

    evil_dir = tmp_path / "evil"
    evil_dir.mkdir()
    evil = _tar_with(evil_dir, {f"data_batch_{i}": pickle.dumps({b"data": _Evil()})
                                for i in range(1, 6)} | {"test_batch": b""})  # fmt: skip
    assert_one_line_error(run(capsys, "prepare", "cifar10", "--path", evil, *data), "")
    assert "pwned" not in capsys.readouterr().out

    npz = tmp_path / "npz"
    npz.mkdir()
    (npz / "train_data_batch_1.npz").write_bytes(b"PK\x03\x04 truncated zip")
    (npz / "val_data.npz").write_bytes(b"not a zip")
    assert_one_line_error(run(capsys, "prepare", "imagenet64", "--path", npz, *data), "")

    pics = make_png_dir(tmp_path / "pics", n=3)
    (pics / "broken.png").write_bytes(b"\x89PNG not really")
    assert_one_line_error(run(capsys, "prepare", "images", "--path", pics, "--size", "8", *data),
                          "broken.png: not a readable image")  # fmt: skip
    assert_one_line_error(run(capsys, "prepare", "images", "--path", pics, "--size", "big", *data),
                          "is not a valid int")  # fmt: skip

    wavs = tmp_path / "wavs"
    wavs.mkdir()
    (wavs / "float.wav").write_bytes(float_wav_bytes())
    assert_one_line_error(run(capsys, "prepare", "audio", "--path", wavs, *data), "float.wav")
    (wavs / "float.wav").unlink()
    (wavs / "cut.wav").write_bytes(wav_bytes(np.zeros(100), 8000)[:30])
    assert_one_line_error(run(capsys, "prepare", "audio", "--path", wavs, *data), "cut.wav")
