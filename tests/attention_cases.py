"""Shared helpers for backend equivalence tests (the flash-attention tolerance rule)."""

from __future__ import annotations

import torch

from sparse_transformer import patterns as P
from sparse_transformer import sparse_attention

PATTERN_KINDS = ("local", "strided", "block", "summary", "fixed", "stridedpair", "dense", "heads")


def draw_pattern(data, kind: str, size: int, heads: int = 1):
    """A pattern (or, for kind 'heads', a per-head list) drawn with hypothesis' ``data``."""
    from hypothesis import strategies as st

    if kind in ("summary", "fixed"):
        c = data.draw(st.integers(1, size))
        off = data.draw(st.integers(0, size // c - 1))
        s = P.summary(size, c, off)
        return s if kind == "summary" else P.union(P.block(size), s)
    if kind == "stridedpair":
        return P.union(*P.factorized("strided", size))
    if kind == "dense":
        return P.dense()
    if kind == "heads":
        return [data.draw(st.sampled_from([P.local(size), P.strided(size), P.block(size)])) for _ in range(heads)]
    return {"local": P.local, "strided": P.strided, "block": P.block}[kind](size)


def run(q, k, v, pattern, backend, grad_out, **kw):
    """Output and gradients of ``backend`` (a name, or a callable ``backend(q, k, v, pattern, **kw)``)."""
    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    if callable(backend):
        out = backend(q, k, v, pattern, **kw)
    else:
        out = sparse_attention(q, k, v, pattern, backend=backend, **kw)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return [out.detach(), *grads]


def reference_lowprec(q, k, v, pattern, grad_out):
    """The reference computed in the inputs' own dtype (no upcast): the rule's ref_lowprec."""
    from sparse_transformer.kernels import reference

    q, k, v = (x.detach().clone().requires_grad_(True) for x in (q, k, v))
    pats = pattern if isinstance(pattern, (list, tuple)) else [pattern] * q.shape[1]
    outs = [
        reference.attention(q[:, h : h + 1], k[:, h : h + 1], v[:, h : h + 1], pats[h], upcast=False)
        for h in range(q.shape[1])
    ]
    out = torch.cat(outs, 1)
    grads = torch.autograd.grad(out, (q, k, v), grad_out)
    return [out.detach(), *grads]


def assert_close_to_reference(q, k, v, pattern, backend, atol=None, **kw):
    """max|fast - ref64| <= 2 max|ref_lowprec - ref64| + atol, for the output and dq, dk, dv."""
    dtype = q.dtype
    grad_out = torch.randn_like(q if v.shape == q.shape else v)
    ref64 = run(q.double(), k.double(), v.double(), pattern, "reference", grad_out.double(), **kw)
    fast = run(q, k, v, pattern, backend, grad_out, **kw)
    if dtype == torch.float64:
        low = [r.clone() for r in ref64]
        atol = 1e-10 if atol is None else atol
    else:
        low = reference_lowprec(q, k, v, pattern, grad_out)
        atol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1e-2}[dtype] if atol is None else atol
    for name, f, r, lo in zip(("out", "dq", "dk", "dv"), fast, ref64, low):
        assert torch.isfinite(f).all(), f"{name}: non-finite values"
        err = (f.double() - r).abs().max().item()
        base = (lo.double() - r).abs().max().item()
        print(f"{getattr(backend, '__name__', backend)} {name}: max err {err:.3e} (ref_lowprec {base:.3e}, mean {(f.double() - r).abs().mean().item():.3e})")
        assert err <= 2 * base + atol, f"{name}: {err:.3e} > 2*{base:.3e} + {atol:.1e}"
