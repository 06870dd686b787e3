"""benchmarks/reproduce.py (issue 9): the Table-2 script end to end on tiny CPU models."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from data_fixtures import make_fashion_deb, prepared_corpus

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import reproduce


def test_text_half_three_models(tmp_path):
    (tmp_path / "data").mkdir()
    data = prepared_corpus(tmp_path / "data", 30_000)
    out = tmp_path / "out"
    rc = reproduce.main([
        "--half", "text", "--device", "cpu", "--smoke", "--data-dir", str(data), "--out", str(out),
        "--set", "data.dataset=corpus", "--budget-s", "3", "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "reproduce-text.json").read_text())
    assert [r["pattern"] for r in doc["rows"]] == ["dense", "fixed", "strided"]
    assert set(doc["probe_ms"]) == {"dense", "fixed", "strided"}
    steps = doc["steps"]
    assert 1 <= steps <= 2000
    params = {r["params"] for r in doc["rows"]}
    assert len(params) == 1  # same model size for the three patterns
    for r in doc["rows"]:
        assert r["steps"] == steps
        assert 0 < r["val_bits"] < 9
        assert r["val_tokens"] == 1499  # the whole val split: 5% of 30,000 bytes, minus one target
        assert any(e["event"] == "eval" for e in r["curves"])
    md = (out / "reproduce-text.md").read_text()
    assert "fixed (l=16, c=4, merged)" in md and "paper" in md and "Command:" in md
    assert (out / "reproduce-text.png").stat().st_size > 1000


def test_images_half_fixed_steps(tmp_path):
    deb, _, _ = make_fashion_deb(tmp_path)
    from sparse_transformer.data import prepare

    prepare("fashion-mnist", tmp_path / "data", path=deb, progress=False)
    out = tmp_path / "out"
    rc = reproduce.main([
        "--half", "images", "--device", "cpu", "--smoke", "--data-dir", str(tmp_path / "data"),
        "--out", str(out), "--steps", "2", "--patterns", "dense", "strided", "--no-progress",
    ])  # fmt: skip
    assert rc == 0
    doc = json.loads((out / "reproduce-images.json").read_text())
    assert doc["steps"] == 2 and "probe_ms" not in doc
    assert [r["pattern"] for r in doc["rows"]] == ["dense", "strided"]
    assert set(doc["time_ratio_to_dense"]) == {"dense", "strided"}
    assert "bits/dim" in (out / "reproduce-images.md").read_text()


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    rc = reproduce.main([
        "--half", "text", "--device", "cpu", "--data-dir", str(tmp_path), "--out", str(tmp_path),
    ])  # fmt: skip
    assert rc == 2
    assert "prepare gcide" in capsys.readouterr().err


def test_choose_steps_and_step_time():
    assert reproduce.choose_steps({"a": 100.0, "b": 100.0}, 100, cap=10_000) == 425
    assert reproduce.choose_steps({"a": 1.0}, 100, cap=50) == 50
    with pytest.raises(ValueError, match="positive"):
        reproduce.choose_steps({"a": 0.0}, 10, cap=5)
    events = [{"event": "train", "ms_per_step": v} for v in (900, 500, 10, 12, 11)]
    events.insert(2, {"event": "eval", "val_bpb": 3.0})
    assert reproduce.step_time_ms(events) == 11
    assert reproduce.step_time_ms([]) is None


def test_replot_rewrites_table_and_figure(tmp_path):
    doc = {
        "half": "images", "dataset": "fashion-mnist", "ctx": 784, "batch": 2, "steps": 2,
        "command": "x", "env": {"device": "cpu"},
        "rows": [{"pattern": "dense", "label": "dense", "params": 1, "val_bits": 3.0,
                  "val_tokens": 10, "ms_per_step": 2.0,
                  "curves": [{"event": "train", "step": 1, "bpb": 8.0, "elapsed_s": 0.1},
                             {"event": "eval", "step": 2, "val_bpb": 7.0},
                             {"event": "train", "step": 2, "bpb": 7.5, "elapsed_s": 0.2}]}],
    }  # fmt: skip
    path = tmp_path / "r.json"
    path.write_text(json.dumps(doc))
    assert reproduce.main(["--replot", str(path)]) == 0
    assert "| dense | 3.000 | 2.0 | 1.00 |" in (tmp_path / "r.md").read_text()
    assert (tmp_path / "r.png").stat().st_size > 1000
    assert reproduce.main(["--replot", str(tmp_path / "missing.json")]) == 2
