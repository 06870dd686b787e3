"""Cached, pattern-aware sampling: same logits as the full forward, reads only pattern rows."""

import logging

import pytest
import torch
from model_cases import small_config

from sparse_transformer.model import SparseTransformer
from sparse_transformer.sample import KVCache, generate, incremental_logits, prefill, step


def model(seed=0, **kw):
    torch.manual_seed(seed)
    m = SparseTransformer(small_config(**kw)).eval()
    with torch.no_grad():  # non-trivial logits
        m.lm_head.weight.normal_(0, 0.5)
        for b in m.blocks:
            b.attn.out_proj.weight.mul_(10)
            b.mlp.proj.weight.mul_(10)
    return m


CASES = [
    {"mode": mode, "pattern": pattern}
    for mode in ("interleaved", "merged", "multihead")
    for pattern in ("dense", "strided", "fixed")
] + [
    {"mode": "interleaved", "layers": "local,summary,strided", "n_layer": 3},
    {"mode": "merged", "pattern": "fixed", "head_offsets": False, "half_size": True},
    {"mode": "merged", "pattern": "fixed", "n_head": 8, "d_model": 64},
]


@pytest.mark.parametrize("kw", CASES, ids=lambda kw: "-".join(str(v) for v in kw.values()))
def test_cached_logits_match_forward(kw):
    m = model(**kw)
    x = torch.randint(0, 256, (2, 45))  # ragged: 45 is not a multiple of the stride 8
    want = m(x)
    for prefill_len in (0, 1, 13):
        got = incremental_logits(m, x, prefill_len=prefill_len)
        err = (got - want).abs().max().item()
        print(
            f"prefill {prefill_len}: max |cached - forward| = {err:.2e} (scale {want.abs().max():.2f})"
        )
        assert err < 1e-4


@pytest.mark.parametrize("mode", ["multihead", "merged"])
def test_step_reads_only_the_pattern_row(mode):
    """Poison every cached key/value outside the new position's pattern row: the step is unchanged."""
    m = model(pattern="fixed", mode=mode, n_head=8, d_model=64)
    x = torch.randint(0, 256, (1, 40))
    i = 37
    cache = KVCache(m, 1, 40)
    prefill(m, x[:, :i], cache)
    clean = [(k.clone(), v.clone()) for k, v in zip(cache.k, cache.v)]
    want = step(m, x[:, i], cache)
    for r, pats in enumerate(cache.head_patterns):
        cache.k[r].copy_(clean[r][0])
        cache.v[r].copy_(clean[r][1])
        for h, pat in enumerate(pats):
            outside = torch.ones(40, dtype=torch.bool)
            outside[pat.row(i)] = False
            cache.k[r][:, h, outside] = float("nan")
            cache.v[r][:, h, outside] = float("nan")
    cache.n = i
    got = step(m, x[:, i], cache)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want)


def test_generate_shapes_determinism_and_greedy():
    m = model(pattern="strided", mode="merged")
    prompt = torch.tensor([[10, 20, 30], [40, 50, 60]])
    a = generate(m, prompt, 20, generator=torch.Generator().manual_seed(3), progress=False)
    b = generate(m, prompt, 20, generator=torch.Generator().manual_seed(3), progress=False)
    assert a.shape == (2, 23) and a.dtype == torch.long
    assert torch.equal(a, b) and torch.equal(a[:, :3], prompt)
    one = generate(m, torch.tensor([10, 20]), 5, progress=False)
    assert one.shape == (7,)
    greedy = generate(m, prompt, 10, temperature=0.0, progress=False)
    # Greedy samples are the argmax of the full forward on the generated prefix.
    full = m(greedy[:, :-1])
    assert torch.equal(full[:, 2:].argmax(-1), greedy[:, 3:])
    assert torch.equal(generate(m, prompt, 0, progress=False), prompt)


def test_generate_up_to_ctx_stats_and_mode_restored(caplog):
    m = model(pattern="fixed", mode="merged", ctx=32).train()
    stats = {}
    with caplog.at_level(logging.INFO, logger="sparse_transformer.sample"):
        out = generate(m, torch.tensor([[1]]), 31, stats=stats, progress=False)
    assert out.shape == (1, 32)
    assert stats["tokens"] == 31 and stats["tokens_per_s"] > 0
    assert "tokens/s" in caplog.text
    assert m.training


@pytest.mark.parametrize(
    "args, kw, match",
    [
        ((torch.tensor([[1, 2]]), 63), {}, "exceeds the context ctx=64.*sliding window"),
        ((torch.zeros(1, 0, dtype=torch.long), 5), {}, "at least one token"),
        ((torch.tensor([1.0]), 5), {}, "integer"),
        ((torch.tensor([256]), 5), {}, "0..255"),
        ((torch.tensor([1]), -1), {}, "length"),
        ((torch.tensor([1]), 5), {"temperature": -1.0}, "temperature"),
    ],
)
def test_generate_bad_inputs(args, kw, match):
    m = model()
    with pytest.raises(ValueError, match=match):
        generate(m, *args, progress=False, **kw)


def test_cached_logits_bfloat16_model():
    """A bfloat16 model samples with q·k in float32; logits stay close to its own forward."""
    m = model(pattern="fixed", mode="merged").to(torch.bfloat16)
    x = torch.randint(0, 256, (1, 30))
    want = m(x).float()
    got = incremental_logits(m, x, prefill_len=4).float()
    err = (got - want).abs().max().item()
    print(f"bf16: max |cached - forward| = {err:.3f} (scale {want.abs().max():.2f})")
    assert got.dtype == torch.float32 and err < 0.05 * want.abs().max().item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("mode", ["interleaved", "merged", "multihead"])
def test_cached_sampling_cuda(mode):
    m = model(
        pattern="fixed", mode=mode, ctx=256, d_model=64, stride=16, c=4, backend="auto"
    ).cuda()
    x = torch.randint(0, 256, (2, 150), device="cuda")
    want = m(x)
    got = incremental_logits(m, x, prefill_len=37)
    err = (got - want).abs().max().item()
    print(f"cuda {mode}: max |cached - forward| = {err:.2e}")
    assert err < 1e-2 * want.abs().max().item()
    g = torch.Generator(device="cuda").manual_seed(0)
    out = generate(m, x[:, :10], 100, generator=g, progress=False)
    assert out.device.type == "cuda" and out.shape == (2, 110)
    cpu_gen = generate(m, x[:, :10], 5, generator=torch.Generator().manual_seed(0), progress=False)
    assert cpu_gen.shape == (2, 15)


def test_generate_past_ctx_by_a_sliding_window():
    """With ``window``, each pass after the first re-encodes the last ``window`` tokens: the same
    as chaining single-pass calls by hand."""
    m = model(pattern="strided", mode="interleaved", ctx=32)
    prompt = torch.tensor([[1, 2, 3]])
    out = generate(m, prompt, 50, window=16, temperature=0.0, progress=False)
    assert out.shape == (1, 53)
    first = generate(m, prompt, 29, temperature=0.0, progress=False)
    assert torch.equal(out[:, :32], first)
    second = generate(m, out[:, 16:32], 16, temperature=0.0, progress=False)
    assert torch.equal(out[:, 32:48], second[:, 16:])
    third = generate(m, out[:, 32:48], 5, temperature=0.0, progress=False)
    assert torch.equal(out[:, 48:], third[:, 16:])
    with pytest.raises(ValueError, match="window must be an integer in 1..31"):
        generate(m, prompt, 50, window=32, progress=False)
