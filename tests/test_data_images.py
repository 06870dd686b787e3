"""Image preparers, the IDX reader, the restricted unpickler and the PNG writer."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import (
    cifar_batch_pickle,
    cifar_images,
    idx_bytes,
    make_cifar_tar,
    make_fashion_deb,
    make_imagenet_dir,
    make_mnist_dir,
    make_png_dir,
    py2_batch_pickle,
)

from sparse_transformer.data import (
    ByteDataset,
    UnsafePickleError,
    load_meta,
    prepare,
    read_idx,
    safe_load,
    write_png_grid,
)
from sparse_transformer.data.images import hwc_from_planar
from sparse_transformer.data.pickle_safe import safe_loads

Image = pytest.importorskip("PIL.Image")


def records(d: Path, split: str) -> np.ndarray:
    meta = load_meta(d)
    return np.fromfile(d / f"{split}.bin", dtype=np.uint8).reshape(-1, *meta["image_shape"])


# ------------------------------------------------------------------------------- IDX / MNIST


def test_read_idx_round_trip_and_errors(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    for compress in (True, False):
        assert np.array_equal(read_idx(idx_bytes(arr, compress)), arr)
    labels = np.array([3, 1, 4], np.uint8)
    raw = idx_bytes(labels, compress=False)
    assert raw[:4] == b"\x00\x00\x08\x01" and np.array_equal(read_idx(raw), labels)
    assert idx_bytes(arr, compress=False)[:4] == b"\x00\x00\x08\x03"
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(b"hello world", name="x.idx")
    with pytest.raises(ValueError, match=r"need 24 data bytes, found 20 \(truncated"):
        read_idx(idx_bytes(arr, compress=False)[:-4], name="x.idx")
    with pytest.raises(ValueError, match="type code 0x0d"):
        read_idx(b"\x00\x00\x0d\x01\x00\x00\x00\x01" + b"\x00" * 4)
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(b"\x1f\x8b\x08\x00garbage")


def test_mnist_folder(tmp_path: Path) -> None:
    folder, train, test = make_mnist_dir(tmp_path / "mnist", compress=False)
    d = prepare("mnist", tmp_path / "data", path=folder, progress=False)
    meta = load_meta(d)
    assert meta["kind"] == "image" and meta["image_shape"] == [28, 28, 1]
    assert meta["records"] == {"train": 22, "val": 2, "test": 6}  # val = last n // 12
    assert np.array_equal(records(d, "train")[..., 0], train[:22])
    assert np.array_equal(records(d, "val")[..., 0], train[22:])
    assert np.array_equal(records(d, "test")[..., 0], test)
    with pytest.raises(ValueError, match="no train-images-idx3-ubyte"):
        prepare("mnist", tmp_path / "data", path=tmp_path / "data", progress=False, force=True)


def test_fashion_mnist_from_fake_deb(tmp_path: Path) -> None:
    deb, train, test = make_fashion_deb(tmp_path)
    d = prepare("fashion-mnist", tmp_path / "data", fetch=lambda p, dest: deb, progress=False)
    assert np.array_equal(records(d, "train")[..., 0], train[:22])
    assert np.array_equal(records(d, "test")[..., 0], test)
    assert "MIT" in load_meta(d)["licence"]
    ds = ByteDataset(d, "train")
    x, y = ds.get_batch(3, 784, torch.Generator().manual_seed(0))
    assert x.shape == (3, 784) and torch.all(x[:, 0] == 0)
    assert any(np.array_equal(y[0].numpy(), r) for r in train[:22].reshape(22, -1))
    # the same from a folder of IDX files
    folder, _, _ = make_mnist_dir(tmp_path / "fm")
    d2 = prepare("fashion-mnist", tmp_path / "data", path=folder, progress=False, out_name="fm2")
    assert (d2 / "train.bin").read_bytes() == (d / "train.bin").read_bytes()


# ------------------------------------------------------------------------------- CIFAR-10


def test_cifar10_tar_round_trip(tmp_path: Path) -> None:
    tar, train, test = make_cifar_tar(tmp_path, per_batch=5, n_test=4)
    d = prepare("cifar10", tmp_path / "data", path=tar, progress=False)
    meta = load_meta(d)
    assert meta["image_shape"] == [32, 32, 3]
    assert meta["records"] == {"train": 24, "val": 1, "test": 4}  # val = last n // 25
    got = np.concatenate([records(d, "train"), records(d, "val")])
    assert np.array_equal(got, train) and np.array_equal(records(d, "test"), test)
    # HWC interleaved: bytes 0..2 of a record are pixel (0, 0)'s r, g, b
    raw = (d / "train.bin").read_bytes()
    assert list(raw[:3]) == train[0, 0, 0].tolist() and list(raw[3:6]) == train[0, 0, 1].tolist()
    # a PNG grid of a batch's targets opens with the right size
    ds = ByteDataset(d, "test")
    _, y = ds.get_batch(4, 3072, torch.Generator().manual_seed(0))
    png = write_png_grid(y.numpy().astype(np.uint8).reshape(4, 32, 32, 3), tmp_path / "g.png")
    with Image.open(png) as im:
        assert im.size == (64, 64) and im.mode == "RGB"


def test_cifar10_extracted_folder(tmp_path: Path) -> None:
    tar, train, _ = make_cifar_tar(tmp_path, per_batch=2, n_test=1)
    with tarfile.open(tar) as t:
        t.extractall(tmp_path / "x", filter="data")
    d = prepare("cifar10", tmp_path / "data", path=tmp_path / "x", progress=False)
    assert np.array_equal(records(d, "train"), train[: len(train) - len(train) // 25])


def test_cifar10_missing_batch_and_bad_pickle(tmp_path: Path) -> None:
    p = tmp_path / "partial.tar.gz"
    with tarfile.open(p, "w:gz") as t:
        data = cifar_batch_pickle(cifar_images(2, 0))
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(data)
        t.addfile(info, io.BytesIO(data))
    with pytest.raises(ValueError, match="missing CIFAR-10 batch.*data_batch_2"):
        prepare("cifar10", tmp_path / "data", path=p, progress=False)
    (tmp_path / "junk.tar.gz").write_bytes(b"nope")
    with pytest.raises(ValueError, match="not a readable tar"):
        prepare("cifar10", tmp_path / "data", path=tmp_path / "junk.tar.gz", progress=False)
    with pytest.raises(ValueError, match="truncated or damaged"):  # a partial archive is said to be one
        prepare("cifar10", tmp_path / "data", path=p, progress=False)
    full = tmp_path / "full.tar"
    with tarfile.open(full, "w") as t:
        for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            data = cifar_batch_pickle(cifar_images(2, 0))
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(ValueError, match="not a readable tar|truncated or damaged"):
        prepare("cifar10", tmp_path / "data", path=cut, progress=False)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


class _EvilMarker:
    """Pickles as a call of the builtin `print`: harmless, but observable if it ran."""

    def __reduce__(self):
        return (print, ("UNPICKLED-AND-RAN",))


def test_restricted_unpickler_rejects_code(tmp_path: Path, capsys) -> None:
    evil = pickle.dumps({b"data": _Evil()}, protocol=2)
    assert b"system" in evil
    with pytest.raises(UnsafePickleError, match=r"refusing to load global (posix|os|nt)\.system"):
        safe_loads(evil)
    marker = pickle.dumps([_EvilMarker()])
    with pytest.raises(pickle.UnpicklingError, match="builtins.print"):
        safe_loads(marker)
    assert "UNPICKLED-AND-RAN" not in capsys.readouterr().out  # never called
    assert issubclass(UnsafePickleError, ValueError)
    # in a CIFAR tar: a clear ValueError naming the member
    tar, _, _ = make_cifar_tar(tmp_path, per_batch=2, n_test=1)
    bad = tmp_path / "evil.tar.gz"
    with tarfile.open(tar) as src, tarfile.open(bad, "w:gz") as dst:
        for m in src:
            data = src.extractfile(m).read()
            if m.name.endswith("data_batch_3"):
                data = evil
                m.size = len(data)
            dst.addfile(m, io.BytesIO(data))
    with pytest.raises(ValueError, match=r"evil.tar.gz:data_batch_3: refusing to load global"):
        prepare("cifar10", tmp_path / "data", path=bad, progress=False)


def test_restricted_unpickler_reads_python2_cifar_pickles() -> None:
    planar = np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072)
    got = safe_loads(py2_batch_pickle(planar, [3, 7]))
    assert set(got) == {b"data", b"labels"} and got[b"labels"] == [3, 7]
    assert got[b"data"].dtype == np.uint8 and np.array_equal(got[b"data"], planar)


def test_restricted_unpickler_loads_arrays() -> None:
    arr = np.arange(12, dtype=np.uint8).reshape(3, 4)
    for protocol in (2, 4, 5):
        got = safe_loads(pickle.dumps({"a": arr, "b": [1, 2.5, "s", b"x", (3,)]}, protocol))
        assert np.array_equal(got["a"], arr) and got["a"].dtype == np.uint8
        assert got["b"] == [1, 2.5, "s", b"x", (3,)]
    with pytest.raises(ValueError, match="corrupt or truncated"):
        safe_loads(pickle.dumps(arr, 2)[:-10])
    assert safe_load(io.BytesIO(pickle.dumps(7))) == 7


# ------------------------------------------------------------------------------- ImageNet64


def test_imagenet_npz_folder(tmp_path: Path) -> None:
    folder, train, val = make_imagenet_dir(tmp_path / "in", side=8, per_batch=3, n_val=5)
    d = prepare("imagenet64", tmp_path / "data", path=folder, progress=False)
    meta = load_meta(d)
    assert meta["image_shape"] == [8, 8, 3]
    assert meta["records"] == {"train": 9, "val": 2, "test": 3}
    assert np.array_equal(records(d, "train"), train)  # batches 1, 2, 10 in numeric order
    assert np.array_equal(records(d, "val"), val[:2])
    assert np.array_equal(records(d, "test"), val[2:])
    (folder / "val_data.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="not a readable npz"):
        prepare("imagenet64", tmp_path / "data", path=folder, progress=False, force=True)
    with pytest.raises(ValueError, match="need train_data_batch"):
        prepare("imagenet64", tmp_path / "data", path=tmp_path / "data", progress=False)


def test_hwc_from_planar() -> None:
    img = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)  # HWC
    planar = img.transpose(2, 0, 1).reshape(1, -1)
    assert np.array_equal(hwc_from_planar(planar)[0], img)
    with pytest.raises(ValueError, match="not 3 x S x S"):
        hwc_from_planar(np.zeros((1, 10), np.uint8))


# ------------------------------------------------------------------------------- folders


def test_png_folder(tmp_path: Path) -> None:
    folder = make_png_dir(tmp_path / "pics", n=6)
    d = prepare("images", tmp_path / "data", path=folder, size=8, progress=False)
    meta = load_meta(d)
    assert meta["image_shape"] == [8, 8, 3] and sum(meta["records"].values()) == 6
    assert meta["records"] == {"train": 4, "val": 1, "test": 1}
    g = prepare("images", tmp_path / "data", path=folder, size=5, channels=1, crop=False,
                out_name="grey", progress=False)  # fmt: skip
    assert load_meta(g)["image_shape"] == [5, 5, 1]
    ds = ByteDataset(g, "train")
    _, y = ds.get_batch(2, 25, torch.Generator().manual_seed(0))
    png = write_png_grid(y.numpy().astype(np.uint8).reshape(2, 5, 5, 1), tmp_path / "g.png",
                         ncols=1, scale=3)  # fmt: skip
    with Image.open(png) as im:
        assert im.size == (15, 30) and im.mode == "L"
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"broken.png: not a readable image"):
        prepare("images", tmp_path / "data", path=folder, size=8, progress=False)
    with pytest.raises(ValueError, match="channels must be 1"):
        prepare("images", tmp_path / "data", path=folder, channels=2, progress=False)
    with pytest.raises(ValueError, match="no .png/.jpg/.jpeg files"):
        prepare("images", tmp_path / "data", path=tmp_path / "data" / "grey", progress=False)


def test_png_grid_layout(tmp_path: Path) -> None:
    imgs = np.stack([np.full((2, 3, 3), 50 * i, np.uint8) for i in range(5)])
    p = write_png_grid(imgs, tmp_path / "grid.png", pad=1)
    with Image.open(p) as im:
        arr = np.asarray(im)
    assert arr.shape == (2 * 2 + 1, 3 * 3 + 2, 3)  # ceil(sqrt(5)) = 3 columns, 2 rows
    assert arr[0, 0, 0] == 0 and arr[0, 4, 0] == 50 and arr[3, 0, 0] == 150 and arr[2, 0, 0] == 0
    with pytest.raises(ValueError, match="1 or 3 channels"):
        write_png_grid(np.zeros((1, 2, 2, 2), np.uint8), tmp_path / "x.png")
    with pytest.raises(ValueError, match="uint8 images"):
        write_png_grid(np.zeros((1, 2, 2, 3), np.float32), tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _flip_bytes(p: Path, n: int = 64) -> None:
    b = bytearray(p.read_bytes())
    for i in range(len(b) // 3, min(len(b), len(b) // 3 + n)):
        b[i] ^= 0x5A
    p.write_bytes(bytes(b))


def test_corrupted_packages_and_archives_are_refused(tmp_path: Path) -> None:
    """Issue 17: corrupted compressed data (xz in a .deb, deflate in an npz) is a one-line
    ValueError naming the file, and no dataset appears."""
    (tmp_path / "f").mkdir()
    deb, _, _ = make_fashion_deb(tmp_path / "f")
    _flip_bytes(deb)
    with pytest.raises(ValueError, match="damaged package"):
        prepare("fashion-mnist", tmp_path / "data", path=deb, progress=False)
    folder = tmp_path / "npz"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, n in (("train_data_batch_1.npz", 20), ("val_data.npz", 6)):
        np.savez_compressed(folder / name, data=rng.integers(0, 256, (n, 192), dtype=np.uint8))
        _flip_bytes(folder / name)
    with pytest.raises(ValueError, match="val_data.npz"):
        prepare("imagenet64", tmp_path / "data", path=folder, progress=False)
    assert not (tmp_path / "data").exists()  # refused before anything was written
