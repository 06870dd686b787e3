"""The ``flex`` backend (block plans fed to FlexAttention) against the float64 reference.

FlexAttention's backward and its compiled kernels need CUDA: those tests are ``gpu``-marked. The
BlockMask construction and the forward also run eagerly on the CPU (FlexAttention's unfused path).
"""

import pytest
import torch
from attention_cases import assert_close_to_reference

from sparse_transformer import patterns as P

flex_mod = pytest.importorskip("torch.nn.attention.flex_attention")

from sparse_transformer.kernels import flex_attention as FA
from sparse_transformer.kernels import reference

PATTERNS = [
    P.local(64),
    P.strided(64),
    P.union(*P.factorized("fixed", 128, 32)),
    P.union(*P.factorized("strided", 64)),
    P.summary(128, 32, 1),
    P.dense(),
]


@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_forward_cpu_eager(pattern):
    n = 300
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, n, 32, generator=g) for _ in range(3))
    out = FA.attention(q, k, v, pattern.plan(n, 128))
    ref = reference.attention(q.double(), k.double(), v.double(), pattern)
    err = (out.double() - ref).abs().max().item()
    print(f"flex forward max err {err:.3e}")
    assert err < 1e-5


def test_rejects_small_blocks():
    q = torch.randn(1, 1, 64, 16)
    with pytest.raises(ValueError, match="multiple of 128"):
        FA.attention(q, q, q, P.local(8).plan(64, 64))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("pattern", PATTERNS, ids=str)
def test_gpu_values_and_grads(pattern):
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(1, 2, 1000, 64, generator=g).to(torch.bfloat16).cuda() for _ in range(3))
    assert_close_to_reference(q, k, v, pattern, "flex")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_per_head_patterns():
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(1, 4, 1000, 64, generator=g).to(torch.bfloat16).cuda() for _ in range(3))
    assert_close_to_reference(q, k, v, [P.local(32), P.strided(32)] * 2, "flex")
