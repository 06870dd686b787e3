"""Every CPU backend against the float64 reference: values and all three gradients."""

import pytest
import torch
from attention_cases import PATTERN_KINDS, assert_close_to_reference, draw_pattern
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_transformer import patterns as P
from sparse_transformer import sparse_attention

FACTORIZED = [
    P.dense(),
    P.local(31),
    P.strided(32),
    P.block(32),
    P.summary(32, 8, 1),
    P.union(*P.factorized("strided", 32)),
    P.union(*P.factorized("fixed", 32, 8)),
]


def qkv(b, h, n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(dtype) for _ in range(3)]


@pytest.mark.parametrize("pattern", FACTORIZED, ids=str)
@pytest.mark.parametrize("n", [1, 97, 1000, 1025])
def test_torch_backend_float64(pattern, n):
    q, k, v = qkv(1, 3, n, 24, torch.float64, seed=n)
    assert_close_to_reference(q, k, v, pattern, "torch")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("d", [24, 64])
@pytest.mark.parametrize(
    "pattern", [P.union(*P.factorized("strided", 16)), P.union(*P.factorized("fixed", 16, 4))], ids=str
)
def test_torch_backend_dtypes(dtype, d, pattern):
    q, k, v = qkv(2, 3, 97, d, dtype, seed=d)
    assert_close_to_reference(q, k, v, pattern, "torch")


@pytest.mark.parametrize("n", [97, 1025])
def test_per_head_pattern_list(n):
    """The paper's multi-head mode: a different pattern in each head."""
    heads = [P.local(16), P.strided(16), P.local(16)]
    q, k, v = qkv(1, 3, n, 24, torch.float64, seed=1)
    assert_close_to_reference(q, k, v, heads, "torch")
    fixed_heads = [P.union(P.block(16), P.summary(16, 4, h)) for h in range(3)]
    assert_close_to_reference(q, k, v, fixed_heads, "torch")


@pytest.mark.parametrize("backend", ["reference", "torch"])
@pytest.mark.parametrize("pattern", FACTORIZED, ids=str)
def test_causality(backend, pattern):
    """Changing k/v at position t never changes outputs before t."""
    n, t = 200, 137
    q, k, v = qkv(1, 2, n, 16, torch.float32, seed=3)
    out = sparse_attention(q, k, v, pattern, backend=backend)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, t:] += torch.randn_like(k2[:, :, t:])
    v2[:, :, t:] += torch.randn_like(v2[:, :, t:])
    out2 = sparse_attention(q, k2, v2, pattern, backend=backend)
    assert torch.equal(out[:, :, :t], out2[:, :, :t])


def test_default_scale_and_explicit_scale():
    q, k, v = qkv(1, 1, 50, 16, torch.float64)
    p = P.local(8)
    a = sparse_attention(q, k, v, p, backend="torch")
    b = sparse_attention(q, k, v, p, backend="torch", scale=0.25)
    assert torch.allclose(a, b)
    c = sparse_attention(q, k, v, p, backend="torch", scale=0.5)
    assert not torch.allclose(a, c)
    assert_close_to_reference(q, k, v, p, "torch", scale=0.5)


def test_empty_rows_give_zeros():
    q, k, v = qkv(1, 1, 20, 8, torch.float64)
    out = sparse_attention(q, k, v, P.summary(8, 2), backend="torch")
    assert torch.equal(out[0, 0, :6], torch.zeros(6, 8, dtype=torch.float64))


def test_no_dense_score_matrix():
    """The torch backend's peak memory stays far under one N x N score matrix."""
    import tracemalloc  # noqa: F401  (CPU allocations go through the torch allocator; count tensors)

    n = 4096
    q, k, v = qkv(1, 1, n, 32, torch.float32)
    sizes = []
    real_matmul = torch.matmul

    def spy(a, b, *args, **kw):
        r = real_matmul(a, b, *args, **kw)
        sizes.append(r.numel())
        return r

    torch.matmul = spy
    try:
        sparse_attention(q, k, v, P.union(*P.factorized("strided", 64)), backend="torch")
    finally:
        torch.matmul = real_matmul
    assert max(sizes) < n * n / 4


@pytest.mark.parametrize(
    "args,match",
    [
        ({"backend": "nope"}, "unknown backend 'nope'"),
        ({"pattern": [P.local(4)] * 2}, "2 patterns for 3 heads"),
        ({"pattern": "local"}, "pattern must be a Pattern"),
    ],
)
def test_bad_arguments(args, match):
    q, k, v = qkv(1, 3, 10, 8, torch.float32)
    kw = {"pattern": P.local(4), "backend": "torch"}
    kw.update(args)
    with pytest.raises(ValueError, match=match):
        sparse_attention(q, k, v, kw.pop("pattern"), **kw)


def test_bad_shapes():
    q, k, v = qkv(1, 3, 10, 8, torch.float32)
    with pytest.raises(ValueError, match="batch, heads, seq, head_dim"):
        sparse_attention(q[0], k, v, P.local(4))
    with pytest.raises(ValueError, match="shapes differ"):
        sparse_attention(q, k[:, :, :5], v, P.local(4))
    with pytest.raises(ValueError, match="dtype"):
        sparse_attention(q.int(), k.int(), v.int(), P.local(4))


@settings(max_examples=20, deadline=None)
@given(
    kind=st.sampled_from(PATTERN_KINDS),
    size=st.integers(1, 20),
    n=st.integers(1, 150),
    h=st.integers(1, 3),
    d=st.sampled_from([4, 8, 24]),
    data=st.data(),
)
def test_random_patterns_and_shapes(kind, size, n, h, d, data):
    p = draw_pattern(data, kind, size, h)
    q, k, v = qkv(1, h, n, d, torch.float64, seed=n)
    assert_close_to_reference(q, k, v, p, "torch")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_torch_backend_under_autocast(dtype):
    """The kernel manages its own precision: autocast around it changes nothing."""
    q, k, v = (x.requires_grad_(True) for x in qkv(1, 2, 70, 16, dtype))
    p = P.union(*P.factorized("fixed", 16, 4))
    plain = sparse_attention(q, k, v, p, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        auto = sparse_attention(q, k, v, p, backend="torch")
    auto.sum().backward()
    assert torch.equal(plain, auto) and q.grad is not None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_auto_sends_dense_heads_to_sdpa_on_cuda(monkeypatch):
    import torch.nn.functional as F

    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(1) or sdpa(*a, **k))
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(1, 2, 300, 64, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(3))
    out = sparse_attention(q, k, v, P.dense())
    assert calls, "auto should call SDPA for all-dense heads"
    ref = sparse_attention(q.double(), k.double(), v.double(), P.dense(), backend="reference")
    assert (out.double() - ref).abs().max() < 2e-2


def test_dispatch_route_is_cached_and_checked():
    from sparse_transformer import kernels

    kernels._ROUTES.clear()
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 4, 70, 8, generator=g) for _ in range(3))
    pats = [P.local(8), P.strided(8), P.local(8), P.strided(8)]
    a = sparse_attention(q, k, v, pats, backend="torch")
    b = sparse_attention(q, k, v, pats, backend="torch")
    assert len(kernels._ROUTES) == 1 and torch.equal(a, b)
    # Equal patterns in new objects: a new route, the same answer (heads regrouped in order).
    c = sparse_attention(q, k, v, [P.local(8), P.strided(8), P.local(8), P.strided(8)], backend="torch")
    torch.testing.assert_close(a, c)
    ref = sparse_attention(q.double(), k.double(), v.double(), pats, backend="reference")
    torch.testing.assert_close(a.double(), ref, atol=1e-5, rtol=1e-5)
