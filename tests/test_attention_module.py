"""The attention nn.Module and the per-layer / per-head pattern assignment (spec section 4)."""

import math

import pytest
import torch
from model_cases import small_config

from sparse_transformer import patterns as P
from sparse_transformer.attention import SparseSelfAttention


def cfg(**kw):
    return small_config(**{"n_layer": 4, **kw})


def test_interleaved_cycles_components():
    t = cfg(pattern="strided", mode="interleaved", n_layer=5).layer_patterns()
    assert [row[0] for row in t] == [P.local(8), P.strided(8)] * 2 + [P.local(8)]
    assert all(len(set(row)) == 1 and len(row) == 4 for row in t)
    t = cfg(pattern="fixed", mode="interleaved", head_offsets=False).layer_patterns()
    assert [row[0] for row in t] == [P.block(8), P.summary(8, 2)] * 2


def test_interleaved_explicit_layers_cycle():
    t = cfg(mode="interleaved", layers="local, local,local,strided", n_layer=6).layer_patterns()
    assert [row[0] for row in t] == [P.local(8)] * 3 + [P.strided(8)] + [P.local(8)] * 2
    t = cfg(mode="interleaved", layers="dense,block", n_layer=2).layer_patterns()
    assert [row[0] for row in t] == [P.dense(), P.block(8)]


def test_merged_is_union_and_head_offsets():
    t = cfg(pattern="strided", mode="merged").layer_patterns()
    assert all(hp == P.union(P.local(8), P.strided(8)) for row in t for hp in row)
    t = cfg(pattern="fixed", mode="merged", n_head=8, d_model=64).layer_patterns()
    # stride 8, c 2: four distinct summary sub-blocks, head h reads sub-block h mod 4.
    assert t[0] == [P.union(P.block(8), P.summary(8, 2, h % 4)) for h in range(8)]
    t = cfg(pattern="fixed", mode="merged", head_offsets=False).layer_patterns()
    assert all(hp == P.union(P.block(8), P.summary(8, 2)) for hp in t[0])


def test_multihead_splits_heads_evenly():
    t = cfg(pattern="strided", mode="multihead", n_head=4).layer_patterns()
    assert t[0] == [P.local(8), P.local(8), P.strided(8), P.strided(8)]
    t = cfg(pattern="fixed", mode="multihead", n_head=4).layer_patterns()
    assert t[0] == [P.block(8), P.block(8), P.summary(8, 2, 0), P.summary(8, 2, 1)]
    t = cfg(pattern="dense", mode="multihead", n_head=2, d_model=16).layer_patterns()
    assert t[0] == [P.dense(), P.dense()]


def test_patterns_interned_across_layers():
    t = cfg(pattern="fixed", mode="merged", n_layer=3).layer_patterns()
    for r in range(1, 3):
        for h in range(4):
            assert t[r][h] is t[0][h]  # one object: plans cached on it are shared


@pytest.mark.parametrize(
    "kw, match",
    [
        ({"mode": "multihead", "pattern": "strided", "n_head": 3, "d_model": 33}, "multiple of 2"),
        ({"mode": "interleaved", "layers": "local,stridd"}, "stridd.*choose from"),
        ({"mode": "merged", "layers": "local,strided"}, "only used by mode 'interleaved'"),
        ({"mode": "mixed"}, "unknown model.mode 'mixed'.*interleaved, merged, multihead"),
        ({"pattern": "strid"}, "unknown model.pattern 'strid'"),
    ],
)
def test_bad_assignments_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        cfg(**kw)


def _manual(x, mod: SparseSelfAttention):
    """The module by hand in float64: per-head masked softmax attention."""
    _B, T, d = x.shape
    H = mod.n_head
    w, b = mod.in_proj.weight.double(), mod.in_proj.bias.double()
    qkv = x.double() @ w.T + b
    q, k, v = qkv.split([mod.qk_width, mod.qk_width, d], -1)
    outs = []
    for h, pat in enumerate(mod.patterns):
        dq, dv = mod.qk_width // H, d // H
        qh, kh, vh = (
            q[..., h * dq : (h + 1) * dq],
            k[..., h * dq : (h + 1) * dq],
            v[..., h * dv : (h + 1) * dv],
        )
        s = qh @ kh.transpose(-1, -2) / math.sqrt(dq)
        m = pat.mask(T)
        s = s.masked_fill(~m, float("-inf"))
        p = torch.softmax(s, -1).nan_to_num(0.0)
        outs.append(p @ vh)
    y = torch.cat(outs, -1)
    return y @ mod.out_proj.weight.double().T + mod.out_proj.bias.double()


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize(
    "pats",
    [
        [P.union(P.local(8), P.strided(8))] * 4,
        [P.local(8), P.local(8), P.strided(8), P.strided(8)],
        [P.union(P.block(8), P.summary(8, 2, h)) for h in range(4)],
        [P.block(8), P.block(8), P.summary(8, 2, 0), P.summary(8, 2, 1)],
    ],
    ids=["merged", "multihead-strided", "merged-offsets", "multihead-fixed"],
)
@pytest.mark.parametrize("qk_width", [32, 16])
def test_module_matches_manual(backend, pats, qk_width):
    torch.manual_seed(0)
    mod = SparseSelfAttention(32, pats, qk_width=qk_width, backend=backend)
    x = torch.randn(2, 43, 32)  # ragged: not a multiple of the stride
    got = mod(x).double()
    want = _manual(x, mod)
    err = (got - want).abs().max().item()
    print(f"max err {err:.2e}")
    assert err < 1e-5


def test_single_pattern_passed_when_heads_agree():
    same = SparseSelfAttention(16, [P.local(4)] * 2)
    assert same.kernel_pattern == P.local(4)
    diff = SparseSelfAttention(16, [P.local(4), P.strided(4)])
    assert diff.kernel_pattern == (P.local(4), P.strided(4))


def test_attend_hook_replaces_kernel():
    mod = SparseSelfAttention(16, [P.dense()] * 2)
    seen = {}

    def attend(q, k, v):
        seen["shapes"] = (q.shape, k.shape, v.shape)
        return torch.zeros_like(v)

    out = mod(torch.randn(3, 5, 16), attend)
    assert seen["shapes"] == ((3, 2, 5, 8),) * 3
    torch.testing.assert_close(out, mod.out_proj.bias.expand(3, 5, 16))


def test_module_rejects_bad_widths():
    with pytest.raises(ValueError, match="multiples"):
        SparseSelfAttention(30, [P.dense()] * 4)
    with pytest.raises(ValueError, match="multiples"):
        SparseSelfAttention(32, [P.dense()] * 4, qk_width=6)
