"""ByteDataset: batches, evaluation windows, rank slicing, meta and idempotency."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from data_fixtures import make_text_file

from sparse_transformer.data import ByteDataset, load_meta, prepare
from sparse_transformer.data.store import (
    SplitWriter,
    begin_dataset,
    finish_dataset,
    pick_split_items,
    split_sizes,
)


def make_store(root: Path, splits: dict[str, bytes], kind: str = "text", **extra) -> Path:
    out = begin_dataset(root / "ds")
    writers = {}
    for s, data in splits.items():
        with SplitWriter(out, s) as w:
            w.write(data)
        writers[s] = w
    finish_dataset(out, writers, name="ds", kind=kind, source="test", licence="none",
                   params={}, **extra)  # fmt: skip
    return out


def counting_store(tmp_path: Path, n: int) -> Path:
    data = bytes(i % 251 for i in range(n))
    return make_store(tmp_path, {"train": data, "val": data, "test": data[:7]})


def image_store(tmp_path: Path, n: int = 5, shape=(2, 3, 3)) -> tuple[Path, np.ndarray]:
    rng = np.random.default_rng(0)
    imgs = rng.integers(1, 256, (n, *shape), dtype=np.uint8)  # no zero pixels: start byte shows
    d = make_store(tmp_path, {"train": imgs.tobytes(), "val": imgs[:2].tobytes(), "test": b""},
                   kind="image", image_shape=list(shape))  # fmt: skip
    return d, imgs.reshape(n, -1)


def test_meta_and_memmap(tmp_path: Path) -> None:
    d = counting_store(tmp_path, 1000)
    meta = load_meta(d)
    assert meta["kind"] == "text" and meta["splits"] == {"train": 1000, "val": 1000, "test": 7}
    assert set(meta["sha256"]) == {"train", "val", "test"}
    ds = ByteDataset(d, "train")
    assert len(ds) == 1000 and ds.data.dtype == np.uint8 and isinstance(ds.data, np.memmap)
    ds.verify()
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        ByteDataset(d, "dev")
    with pytest.raises(ValueError, match="not a prepared dataset"):
        load_meta(tmp_path / "nothing")


def test_get_batch_shift_and_determinism(tmp_path: Path) -> None:
    d = counting_store(tmp_path, 1000)
    ds = ByteDataset(d, "train")
    x1, y1 = ds.get_batch(4, 16, torch.Generator().manual_seed(3))
    x2, y2 = ds.get_batch(4, 16, torch.Generator().manual_seed(3))
    x3, _ = ds.get_batch(4, 16, torch.Generator().manual_seed(4))
    assert x1.shape == y1.shape == (4, 16) and x1.dtype == y1.dtype == torch.long
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and not torch.equal(x1, x3)
    assert torch.equal(x1[:, 1:], y1[:, :-1])  # y is x shifted by one
    data = torch.from_numpy(np.asarray(ds.data).astype(np.int64))
    for row_x, row_y in zip(x1, y1, strict=True):
        start = int(row_x[0])  # data[i] = i % 251, so the window starting at byte value v matches
        assert torch.equal(data[start : start + 16], row_x)
        assert torch.equal(data[start + 1 : start + 17], row_y)


def test_get_batch_reaches_the_last_byte(tmp_path: Path) -> None:
    d = make_store(tmp_path, {"train": bytes(range(10)), "val": b"", "test": b""})
    ds = ByteDataset(d, "train")
    x, y = ds.get_batch(64, 9, torch.Generator().manual_seed(0))
    assert torch.equal(x, torch.arange(9).expand(64, 9)) and int(y.max()) == 9
    with pytest.raises(ValueError, match="fewer than ctx"):
        ds.get_batch(1, 10, torch.Generator())
    with pytest.raises(ValueError, match="batch_size"):
        ds.get_batch(0, 4, torch.Generator())


def test_rank_slicing(tmp_path: Path) -> None:
    ds = ByteDataset(counting_store(tmp_path, 5000), "train")
    full_x, full_y = ds.get_batch(8, 12, torch.Generator().manual_seed(1))
    parts = [ds.get_batch(8, 12, torch.Generator().manual_seed(1), rank=r, world_size=4)
             for r in range(4)]  # fmt: skip
    assert all(p[0].shape == (2, 12) for p in parts)
    assert torch.equal(torch.cat([p[0] for p in parts]), full_x)
    assert torch.equal(torch.cat([p[1] for p in parts]), full_y)
    # the generator advances identically on every rank
    g0, g1 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    ds.get_batch(8, 12, g0, rank=0, world_size=4)
    ds.get_batch(8, 12, g1, rank=3, world_size=4)
    assert torch.equal(g0.get_state(), g1.get_state())
    with pytest.raises(ValueError, match="not divisible by world_size 3"):
        ds.get_batch(8, 12, torch.Generator(), rank=0, world_size=3)
    with pytest.raises(ValueError, match="rank"):
        ds.get_batch(8, 12, torch.Generator(), rank=4, world_size=4)


def test_image_windows_are_whole_records_with_start_byte(tmp_path: Path) -> None:
    d, recs = image_store(tmp_path)
    ds = ByteDataset(d, "train")
    assert ds.kind == "image" and ds.record_size == 18 and ds.n_records == 5
    x, y = ds.get_batch(6, 18, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (6, 18)
    assert torch.all(x[:, 0] == 0)
    for row_x, row_y in zip(x, y, strict=True):
        matches = [i for i in range(5) if np.array_equal(recs[i], row_y.numpy())]
        assert len(matches) == 1  # y is exactly one whole record
        assert np.array_equal(row_x[1:].numpy(), recs[matches[0]][:-1])
    with pytest.raises(ValueError, match="ctx == record size 18"):
        ds.get_batch(2, 17, torch.Generator())


def check_eval_cover(ds: ByteDataset, ctx: int, min_context: int, batch_size: int = 3) -> None:
    """Every target position 1..n-1 scored exactly once, with the right value and context."""
    data = np.asarray(ds.data).astype(np.int64)
    n = len(data)
    scored = np.zeros(n, dtype=int)
    plan = ds.eval_windows(ctx, min_context)
    rows = []
    for x, y, m in ds.iter_eval_windows(ctx, min_context, batch_size=batch_size):
        assert x.shape == y.shape == m.shape and x.shape[1] == ctx and m.dtype == torch.bool
        assert x.shape[0] <= batch_size
        rows.extend(zip(x, y, m, strict=True))
    assert len(rows) == len(plan) == ds.n_eval_windows(ctx, min_context)
    for k, ((start, _, _), (x, y, m)) in enumerate(zip(plan, rows, strict=True)):
        for j in np.flatnonzero(m.numpy()):
            t = start + 1 + j
            scored[t] += 1
            assert int(y[j]) == data[t] and int(x[j]) == data[t - 1]
            assert np.array_equal(x[: j + 1].numpy(), data[start:t])  # inputs = true prefix
            if k > 0:
                assert j >= min_context  # target sees j + 1 > min_context bytes of context
    assert scored[0] == 0 and np.all(scored[1:] == 1), scored


@pytest.mark.parametrize(
    ("n", "ctx", "min_context"),
    [(20, 5, 0), (20, 5, 2), (21, 5, 4), (6, 5, 0), (7, 5, 3), (4, 5, 0), (97, 16, 8), (2, 3, 1)],
)
def test_eval_windows_cover_every_target_once(tmp_path, n, ctx, min_context) -> None:
    d = counting_store(tmp_path, n)
    check_eval_cover(ByteDataset(d, "train"), ctx, min_context)


def test_eval_windows_by_hand(tmp_path: Path) -> None:
    # 12 bytes -> targets 1..11; ctx 4, min_context 2 -> stride 2.
    d = make_store(tmp_path, {"train": bytes(range(12)), "val": b"", "test": b""})
    ds = ByteDataset(d, "train")
    assert ds.eval_windows(4, 2) == [(0, 0, 4), (2, 2, 4), (4, 2, 4), (6, 2, 4), (7, 3, 4)]
    batches = list(ds.iter_eval_windows(4, 2, batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 1]
    x, y, m = batches[0]
    assert x[1].tolist() == [2, 3, 4, 5] and y[1].tolist() == [3, 4, 5, 6]
    assert m.tolist() == [[True] * 4, [False, False, True, True], [False, False, True, True],
                          [False, False, True, True]]  # fmt: skip
    x, y, m = batches[1]
    assert x.tolist() == [[7, 8, 9, 10]] and m.tolist() == [[False, False, False, True]]
    # a split shorter than ctx + 1: one padded window
    assert ds.eval_windows(20, 0) == [(0, 0, 11)]
    x, y, m = next(ds.iter_eval_windows(20))
    assert int(m.sum()) == 11 and y[0, 10] == 11 and not m[0, 11:].any()
    with pytest.raises(ValueError, match="min_context"):
        ds.eval_windows(4, 4)


def test_eval_windows_ranks_partition_the_plan(tmp_path: Path) -> None:
    ds = ByteDataset(counting_store(tmp_path, 200), "train")
    plan = ds.eval_windows(10, 3)
    got = []
    for r in range(3):
        for x, _, _ in ds.iter_eval_windows(10, 3, batch_size=2, rank=r, world_size=3):
            got.extend(int(row[0]) for row in x)
    assert sorted(got) == sorted(int(ds.data[s]) for s, _, _ in plan)


def test_image_eval_windows(tmp_path: Path) -> None:
    d, recs = image_store(tmp_path)
    ds = ByteDataset(d, "train")
    out = list(ds.iter_eval_windows(18, batch_size=2))
    assert [b[0].shape[0] for b in out] == [2, 2, 1]
    y = torch.cat([b[1] for b in out])
    x = torch.cat([b[0] for b in out])
    assert torch.all(torch.cat([b[2] for b in out]))
    assert np.array_equal(y.numpy(), recs) and torch.all(x[:, 0] == 0)


def test_split_helpers() -> None:
    assert split_sizes(100) == {"train": 90, "val": 5, "test": 5}
    assert split_sizes(100_000_000) == {"train": 90_000_000, "val": 5_000_000, "test": 5_000_000}
    assert sum(split_sizes(12345).values()) == 12345
    for n in (0, 1, 2, 3, 5, 20, 41, 100):
        parts = pick_split_items(n)
        assert sorted(parts["train"] + parts["val"] + parts["test"]) == list(range(n))
        if n >= 3:
            assert len(parts["val"]) == len(parts["test"]) == max(1, n // 20)


def test_prepare_is_idempotent_and_atomic(tmp_path: Path) -> None:
    src = make_text_file(tmp_path)
    d = prepare("text", tmp_path / "data", path=src, progress=False)
    assert d == tmp_path / "data" / "corpus"
    meta_file = d / "meta.json"
    stamp = meta_file.stat().st_mtime_ns
    prepare("text", tmp_path / "data", path=src, progress=False)
    assert meta_file.stat().st_mtime_ns == stamp  # skipped
    prepare("text", tmp_path / "data", path=src, progress=False, force=True)
    assert meta_file.stat().st_mtime_ns != stamp
    assert not [p for p in d.iterdir() if p.name.endswith(".tmp")]
    # a damaged split file makes the next run rebuild
    (d / "val.bin").write_bytes(b"x")
    prepare("text", tmp_path / "data", path=src, progress=False)
    assert (d / "val.bin").stat().st_size == json.loads(meta_file.read_text())["splits"]["val"]


def test_split_writer_leaves_nothing_on_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), SplitWriter(tmp_path, "train") as w:
        w.write(b"abc")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="uint8"), SplitWriter(tmp_path, "train") as w:
        w.write(np.zeros(3, np.int32))


def test_size_mismatch_is_reported(tmp_path: Path) -> None:
    d = counting_store(tmp_path, 100)
    (d / "train.bin").write_bytes(b"short")
    with pytest.raises(ValueError, match="size differs"):
        ByteDataset(d, "train")


def test_prepare_expands_home_in_path(tmp_path, monkeypatch):
    from sparse_transformer.data import prepare

    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "corpus.txt").write_bytes(b"abc " * 500)
    out = prepare("text", tmp_path / "data", path="~/corpus.txt", progress=False)
    assert (out / "train.bin").stat().st_size > 0
