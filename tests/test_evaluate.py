"""Evaluation: bits per byte over a whole split and the minimum-context procedure (Table 3)."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from sparse_transformer.data import ByteDataset
from sparse_transformer.data.store import SplitWriter, begin_dataset, finish_dataset
from sparse_transformer.evaluate import estimate_loss, evaluate
from sparse_transformer.model import ModelConfig, SparseTransformer


def make_dataset(root, val: bytes, train: bytes = b"x" * 64):
    out = begin_dataset(root / "ds")
    writers = {}
    for split, data in (("train", train), ("val", val), ("test", val)):
        with SplitWriter(out, split) as w:
            w.write(data)
        writers[split] = w
    finish_dataset(out, writers, name="ds", kind="text", source="test", licence="-", params={})
    return out


class ColumnModel(nn.Module):
    """A fake model with known per-position probabilities: at column t of a window it gives the
    true next byte of a counting sequence (x + 1) probability 2^-(t+1), so scoring column t costs
    exactly t + 1 bits."""

    def __init__(self, ctx):
        super().__init__()
        self.cfg = ModelConfig(ctx=ctx, n_layer=1, n_head=1, d_model=8, pattern="dense", stride=2)
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        B, T = x.shape
        q = 2.0 ** -(torch.arange(T, dtype=torch.float64) + 1)  # (T,)
        probs = ((1 - q) / 255)[None, :, None].expand(B, T, 256).clone()
        probs.scatter_(2, ((x + 1) % 256)[..., None], q[None, :, None].expand(B, T, 1).clone())
        return probs.log().float()


def test_min_context_procedure_by_hand(tmp_path):
    # Split of 11 bytes 0..10: targets are positions 1..10; ctx = 4.
    ds = ByteDataset(make_dataset(tmp_path, bytes(range(11))), "val")
    model = ColumnModel(ctx=4)
    # M = 0: windows start 0 (columns 0-3, targets 1-4), start 4 (0-3, targets 5-8), and the
    # last window aligned to the end, start 6, scoring only columns 2-3 (targets 9, 10):
    # bits = (1+2+3+4) + (1+2+3+4) + (3+4) = 27 over 10 targets.
    r = evaluate(model, ds, min_context=0, batch_size=2, progress=False)
    assert r["tokens"] == 10
    assert r["bits_per_byte"] == pytest.approx(2.7, abs=1e-6)
    # M = 2: windows advance by ctx - M = 2: start 0 scores columns 0-3 (targets 1-4), then
    # starts 2, 4, 6 score columns 2-3 only (targets 5-6, 7-8, 9-10), each with >= 2 bytes of
    # context: bits = (1+2+3+4) + 3 * (3+4) = 31 over 10 targets.
    r = evaluate(model, ds, min_context=2, batch_size=3, progress=False)
    assert r["tokens"] == 10
    assert r["bits_per_byte"] == pytest.approx(3.1, abs=1e-6)
    # M = 3: advance by 1; start 0 scores 1+2+3+4, starts 1..6 score column 3 (4 bits) each.
    r = evaluate(model, ds, min_context=3, progress=False)
    assert r["tokens"] == 10
    assert r["bits_per_byte"] == pytest.approx((10 + 6 * 4) / 10, abs=1e-6)


def test_untrained_model_is_uniform_8_bits(tmp_path):
    """The zero W_out option (``zero_logits``): exactly 8 bits per byte on every target."""
    rng = np.random.default_rng(0)
    ds = ByteDataset(
        make_dataset(tmp_path, rng.integers(0, 256, 300, dtype=np.uint8).tobytes()), "val"
    )
    cfg = ModelConfig(
        ctx=32, n_layer=1, n_head=2, d_model=16, pattern="strided", stride=8, backend="torch",
        zero_logits=True,
    )  # fmt: skip
    model = SparseTransformer(cfg)
    for m in (0, 5, 31):
        r = evaluate(model, ds, min_context=m, batch_size=4, progress=False)
        assert r["tokens"] == 299
        assert r["bits_per_byte"] == pytest.approx(8.0, abs=1e-5)


def test_evaluate_matches_direct_sum(tmp_path):
    """M = 0 on a split of exactly two windows equals the mean loss of those two windows."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    data = rng.integers(0, 256, 2 * 16 + 1, dtype=np.uint8).tobytes()
    ds = ByteDataset(make_dataset(tmp_path, data), "val")
    cfg = ModelConfig(
        ctx=16, n_layer=1, n_head=2, d_model=16, pattern="dense", stride=4, backend="torch"
    )
    model = SparseTransformer(cfg)
    nn.init.normal_(model.lm_head.weight, std=0.5)
    model.eval()
    t = torch.tensor(list(data))
    x = torch.stack([t[0:16], t[16:32]])
    y = torch.stack([t[1:17], t[17:33]])
    with torch.no_grad():
        want = nn.functional.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1)).item()
    r = evaluate(model, ds, progress=False)
    assert r["tokens"] == 32
    assert r["bits_per_byte"] == pytest.approx(want / math.log(2), rel=1e-5)


def test_bad_min_context(tmp_path):
    ds = ByteDataset(make_dataset(tmp_path, bytes(range(20))), "val")
    model = ColumnModel(ctx=4)
    with pytest.raises(ValueError, match="min_context must be in 0..3"):
        evaluate(model, ds, min_context=4, progress=False)
    with pytest.raises(ValueError):
        evaluate(model, ds, min_context=-1, progress=False)


def test_estimate_loss_is_repeatable_and_leaves_rng(tmp_path):
    ds = ByteDataset(make_dataset(tmp_path, bytes(range(200))), "val")
    cfg = ModelConfig(
        ctx=16, n_layer=1, n_head=2, d_model=16, pattern="strided", stride=4, backend="torch"
    )
    model = SparseTransformer(cfg)
    nn.init.normal_(model.lm_head.weight, std=0.5)
    state = torch.get_rng_state()
    a = estimate_loss(model, ds, batches=2, batch_size=3, ctx=16, seed=1)
    b = estimate_loss(model, ds, batches=2, batch_size=3, ctx=16, seed=1)
    assert a["loss"] == b["loss"] and a["tokens"] == 2 * 3 * 16
    assert torch.equal(state, torch.get_rng_state())
    assert model.training  # restored
