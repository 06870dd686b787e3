"""The pattern pictures (Figure 3 style) render for every named pattern."""

import pytest

pytest.importorskip("matplotlib")

from sparse_transformer.plots import heads_for, pattern_figure


@pytest.mark.parametrize("name,c", [("strided", None), ("fixed", 2), ("dense", None), ("local", None)])
def test_pattern_figure_writes_png(tmp_path, name, c):
    out = pattern_figure(name, 8, c, 64, tmp_path / f"{name}.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_merged_panel_and_errors(tmp_path):
    assert [t for t, _ in heads_for("fixed", 8, 2)][-1] == "merged: fixed"
    assert len(heads_for("strided", 8, None, mode="multihead")) == 2
    with pytest.raises(ValueError, match="unknown pattern"):
        pattern_figure("strid", 8, None, 64, tmp_path / "x.png")
    with pytest.raises(ValueError, match="query 99 out of range"):
        pattern_figure("strided", 8, None, 64, tmp_path / "x.png", query=99)
