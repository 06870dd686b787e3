"""Backend dispatch: ``sparse_attention(q, k, v, pattern, backend=...)``.

Backends (each a module with ``attention(q, k, v, plan, scale)`` for one plan shared by the heads):

* ``reference``: dense masked O(N^2), float64-capable: the oracle.
* ``torch``: pure PyTorch, block-sparse from the plan, O(N·sqrt(N)); CPU and CUDA.
* ``triton``: fused Triton kernels (CUDA; or the Triton interpreter with TRITON_INTERPRET=1).
* ``flex``: the same plans fed to PyTorch's FlexAttention (CUDA).

``auto`` picks ``triton`` on CUDA when Triton is importable, otherwise ``torch``; when every head is
``dense`` on CUDA it calls PyTorch's causal ``scaled_dot_product_attention`` (FlashAttention) instead:
the best dense kernel is the fair baseline, and a dense plan gains nothing from our tables.
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..patterns import Block, Dense, Pattern, Summary

log = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "torch", "triton", "flex")
_MODULES = {
    "reference": "reference",
    "torch": "torch_sparse",
    "triton": "triton_attention",
    "flex": "flex_attention",
}
# Tile size each backend's plans use (measured: the torch backend on 2 CPU cores is fastest at 64
# for local/strided heads and at 128 for the FLOP-heavier fixed heads).
PLAN_BLOCK = {"torch": 64, "triton": 64, "flex": 128}
PLAN_BLOCK_FIXED = {"torch": 128}


def plan_block(backend: str, pattern: Pattern) -> int:
    """The tile size ``backend`` uses for ``pattern``'s plan."""
    if backend in PLAN_BLOCK_FIXED and any(isinstance(p, (Block, Summary)) for p in pattern.parts()):
        return PLAN_BLOCK_FIXED[backend]
    return PLAN_BLOCK[backend]
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_warned: set[str] = set()


def _module(name: str):
    return importlib.import_module(f"{__name__}.{_MODULES[name]}")


def backend_available(name: str, device: torch.device | str = "cpu") -> bool:
    """Whether ``name`` can run on ``device`` here (imports lazily; never raises)."""
    device = torch.device(device)
    if name in ("reference", "torch"):
        return True
    if name == "triton":
        interp = os.environ.get("TRITON_INTERPRET") == "1"
        if device.type != "cuda" and not interp:
            return False
    if name == "flex" and device.type != "cuda":
        return False
    try:
        mod = _module(name)
    except ImportError:
        return False
    check = getattr(mod, "available", None)
    return bool(check(device)) if check else True


_RESOLVED: dict[tuple, str] = {}


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend for a request ('auto' resolved), or ValueError. Cached per backend,
    device and TRITON_INTERPRET setting (the answer costs imports and CUDA queries)."""
    device = torch.device(device)
    key = (backend, device.type, device.index, os.environ.get("TRITON_INTERPRET"))
    name = _RESOLVED.get(key)
    if name is None:
        name = _RESOLVED[key] = _resolve_backend(backend, device)
    return name


def _resolve_backend(backend: str, device: torch.device) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    if backend == "auto":
        if device.type == "cuda" and backend_available("triton", device):
            return "triton"
        if device.type == "cuda" and "auto" not in _warned:
            _warned.add("auto")
            log.warning("Triton kernels unavailable on %s; falling back to the torch backend", device)
        return "torch"
    if not backend_available(backend, device):
        raise ValueError(
            f"backend {backend!r} is not available on device {device.type!r} here; "
            f"available: {', '.join(b for b in BACKENDS[1:] if backend_available(b, device))}"
        )
    return backend


def _check_inputs(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
    for name, x in (("q", q), ("k", k), ("v", v)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4:
            raise ValueError(f"{name} must be (batch, heads, seq, head_dim), got shape {tuple(x.shape)}")
        if x.dtype not in _DTYPES:
            raise ValueError(f"{name} has dtype {x.dtype}; allowed: float16, bfloat16, float32, float64")
    if q.shape != k.shape:
        raise ValueError(f"q and k shapes differ: {tuple(q.shape)} vs {tuple(k.shape)}")
    if v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v's (batch, heads, seq) {tuple(v.shape[:3])} differ from q's {tuple(q.shape[:3])}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v devices differ: {q.device}, {k.device}, {v.device}")


def _head_patterns(pattern, heads: int) -> list[Pattern]:
    if isinstance(pattern, Pattern):
        return [pattern] * heads
    if isinstance(pattern, Sequence) and not isinstance(pattern, str):
        pats = list(pattern)
        if len(pats) != heads:
            raise ValueError(f"got {len(pats)} patterns for {heads} heads; pass one, or one per head")
        for p in pats:
            if not isinstance(p, Pattern):
                raise TypeError(f"pattern list holds {p!r}, which is not a Pattern")
        return pats
    raise ValueError(f"pattern must be a Pattern or a sequence of one per head, got {pattern!r}")


def sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    pattern: Pattern | Sequence[Pattern],
    *,
    backend: str = "auto",
    scale: float | None = None,
) -> torch.Tensor:
    """Causal sparse attention: each query attends the keys its pattern allows.

    Args:
        q, k: (batch, heads, seq, head_dim); v: (batch, heads, seq, head_dim_v).
            float16, bfloat16, float32 (float64 on ``reference`` and ``torch``).
        pattern: one pattern for every head, or a sequence of ``heads`` patterns (multi-head mode).
        backend: ``auto``, ``reference``, ``torch``, ``triton`` or ``flex``.
        scale: score scale, default 1/sqrt(head_dim).
    Returns:
        (batch, heads, seq, head_dim_v) in q's dtype. Softmax statistics are kept in float32.
        A query whose pattern row is empty (``summary`` alone, early positions) gets zeros.
    """
    _check_inputs(q, k, v)
    heads, n = q.shape[1], q.shape[2]
    pats = _head_patterns(pattern, heads)
    if backend == "auto" and q.is_cuda and all(isinstance(p, Dense) for p in pats):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    name = resolve_backend(backend, q.device)
    if q.dtype == torch.float64 and name not in ("reference", "torch"):
        raise ValueError(f"float64 runs on the reference and torch backends, not {name!r}")
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if n == 0:
        return q.new_zeros(*q.shape[:3], v.shape[-1])
    mod = _module(name)
    route = _route(name, pats, n, q.device)
    if len(route.distinct) == 1:
        return mod.attention(q, k, v, route.plans[0], scale)
    multi = getattr(mod, "attention_multihead", None)
    if multi is not None:
        return multi(q, k, v, [route.plans[i] for i in route.head_plan], scale)
    # Group the heads by pattern, run each group, put the heads back in order.
    outs = [
        mod.attention(q[:, sel], k[:, sel], v[:, sel], plan, scale)
        for sel, plan in zip(route.groups, route.plans)
    ]
    return torch.cat(outs, dim=1)[:, route.inverse]


class _Route:
    """What one (backend, per-head patterns, n, device) call needs besides the tensors: the
    distinct patterns, their plans, each head's plan, and the head groups as index tensors on the
    device (built once: no per-call host-to-device copies, so calls can be graph-captured)."""

    def __init__(self, name: str, pats: list[Pattern], n: int, device: torch.device):
        self.patterns = tuple(pats)
        self.distinct = list(dict.fromkeys(pats))
        if name == "reference":
            self.plans = list(self.distinct)
        else:
            self.plans = [p.plan(n, plan_block(name, p), device) for p in self.distinct]
        slot = {p: i for i, p in enumerate(self.distinct)}
        self.head_plan = [slot[p] for p in pats]
        index = [[h for h, i in enumerate(self.head_plan) if i == g] for g in range(len(self.distinct))]
        self.groups = [torch.tensor(idx, device=device) for idx in index]
        order = torch.tensor([h for idx in index for h in idx])
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(order))
        self.inverse = inverse.to(device)


_ROUTES: dict[tuple, _Route] = {}
_MAX_ROUTES = 256


def _route(name: str, pats: list[Pattern], n: int, device: torch.device) -> _Route:
    """The cached :class:`_Route` (keyed by the patterns' identities, checked on a hit)."""
    key = (name, n, str(device), tuple(map(id, pats)))
    hit = _ROUTES.get(key)
    if hit is not None and all(a is b for a, b in zip(hit.patterns, pats)):
        return hit
    if len(_ROUTES) >= _MAX_ROUTES:
        _ROUTES.clear()
    route = _ROUTES[key] = _Route(name, pats, n, device)
    return route
