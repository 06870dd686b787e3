"""Backend dispatch: ``sparse_attention(q, k, v, pattern, backend=...)`` over the backends ``reference``
(the dense oracle), ``torch`` (pure PyTorch, block-sparse), ``triton`` (fused kernels) and ``flex``
(FlexAttention); ``auto`` picks ``triton`` on CUDA, else ``torch``, and causal SDPA for all-dense heads on
CUDA. Backends, routes and the registered operator: ``docs/kernels.md`` ("Dispatch and the registered operator").
"""

from __future__ import annotations

import importlib
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..patterns import Block, Dense, Pattern, Summary
from . import op

log = logging.getLogger(__name__)

BACKENDS = ("auto", "reference", "torch", "triton", "flex")
_MODULES = {"reference": "reference", "torch": "torch_sparse", "triton": "triton", "flex": "flex_attention"}
# Tile size each backend's plans use (measured choices: docs/kernels.md).
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
    interp = name == "triton" and os.environ.get("TRITON_INTERPRET") == "1"
    if name in ("triton", "flex") and device.type != "cuda" and not interp:
        return False
    try:
        mod = _module(name)
    except ImportError:
        return False
    check = getattr(mod, "available", None)
    return bool(check(device)) if check else True


_RESOLVED: dict[tuple, str] = {}


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """The concrete backend for a request ('auto' resolved), or ValueError; cached per backend, device and
    TRITON_INTERPRET setting."""
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
        available = ", ".join(b for b in BACKENDS[1:] if backend_available(b, device))
        raise ValueError(f"backend {backend!r} is not available on device {device.type!r} here; available: {available}")
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
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pattern: Pattern | Sequence[Pattern], *,
    backend: str = "auto", scale: float | None = None,
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

    Under ``torch.compile``, build the key once with :func:`pattern_key` and call :func:`keyed_attention`.
    """
    _check_inputs(q, k, v)
    if q.shape[2] == 0:
        return q.new_zeros(*q.shape[:3], v.shape[-1])
    return keyed_attention(q, k, v, pattern_key(pattern, q.shape[1], backend), scale)


@dataclass(frozen=True, eq=False)
class PatternKey:
    """A (backend, per-head patterns) pair prepared for :func:`keyed_attention`: ``key`` names it for the
    registered operator; ``direct`` backends (flex) and SDPA are called without it."""

    key: int
    backend: str
    all_dense: bool
    direct: bool

    def uses_sdpa(self, device: torch.device) -> bool:
        """All-dense heads under ``auto`` on CUDA: PyTorch's causal SDPA, not the operator."""
        return self.all_dense and self.backend == "auto" and device.type == "cuda"


_PATTERN_KEYS: dict[tuple, tuple[object, PatternKey]] = {}


def pattern_key(pattern: Pattern | Sequence[Pattern], heads: int, backend: str = "auto") -> PatternKey:
    """The :class:`PatternKey` of ``pattern`` (one for every head, or one per head) and ``backend``;
    ValueError for an unknown backend or a pattern list of the wrong length. Cached by identity."""
    ids = _identity(pattern)
    cache = (backend, heads, ids)
    hit = _PATTERN_KEYS.get(cache) if ids is not None else None
    if hit is not None and _same_objects(hit[0], pattern):
        return hit[1]
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    pats = _head_patterns(pattern, heads)
    src = pats[0] if len(set(pats)) == 1 else tuple(pats)
    key = op.register(backend, src)
    pk = PatternKey(key=key, backend=backend, all_dense=all(isinstance(p, Dense) for p in pats),
                    direct=backend == "flex")
    if ids is not None:
        if len(_PATTERN_KEYS) >= _MAX_ROUTES:
            _PATTERN_KEYS.clear()
        _PATTERN_KEYS[cache] = (pattern if isinstance(pattern, Pattern) else tuple(pattern), pk)
    return pk


def keyed_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pk: PatternKey, scale: float | None = None
) -> torch.Tensor:
    """:func:`sparse_attention` for a prepared :class:`PatternKey`; what ``torch.compile`` traces
    into one node (the registered operator, or SDPA for all-dense heads on CUDA)."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if pk.uses_sdpa(q.device):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
    if pk.direct:
        return _route(pk.key, q.shape[1], q.shape[2], q.device).run(q, k, v, scale)
    return op.attention(q, k, v, pk.key, float(scale))


def keyed_attention_qkv(
    qkv: torch.Tensor, pk: PatternKey, heads: int, qk_width: int, scale: float | None = None
) -> torch.Tensor:
    """:func:`keyed_attention` on the fused projection ``qkv`` (batch, seq, 2 * qk_width + d_v), q, k, v side
    by side; returns (batch, seq, d_v), heads side by side. Through the registered ``attention_qkv``
    operator (SDPA and flex: :func:`keyed_attention` on views)."""
    if not isinstance(qkv, torch.Tensor) or qkv.dim() != 3 or qkv.dtype not in _DTYPES:
        raise ValueError(f"qkv must be a (batch, seq, 2 * qk_width + d_v) float tensor, got "
                         f"{getattr(qkv, 'shape', type(qkv).__name__)} {getattr(qkv, 'dtype', '')}")
    if qkv.shape[-1] <= 2 * qk_width or qk_width % heads or (qkv.shape[-1] - 2 * qk_width) % heads:
        raise ValueError(f"qkv width {qkv.shape[-1]} does not split into 2 x qk_width={qk_width} and a value "
                         f"width, each a multiple of heads={heads}")
    q, k, v = op.split_qkv(qkv, heads, qk_width)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    if pk.direct or pk.uses_sdpa(qkv.device):
        return op.merge_heads(keyed_attention(q, k, v, pk, scale))
    return op.attention_qkv(qkv, pk.key, float(scale), heads, qk_width)


class _Route:
    """What one (backend, per-head patterns, n, device) call needs besides the tensors, built once: the
    resolved backend and ``units``, (head index tensor or None, plan or kernel tables) run one after the
    other. ``forward`` / ``backward`` serve the registered operator, ``run`` the direct flex backend."""

    def __init__(self, backend: str, source, heads: int, n: int, device: torch.device):
        pats = _head_patterns(source, heads)
        self.name = name = resolve_backend(backend, device)
        self.mod = mod = _module(name)
        distinct = list(dict.fromkeys(pats))
        plans = list(distinct) if name == "reference" else [p.plan(n, plan_block(name, p), device) for p in distinct]
        self._forward, self._backward = getattr(mod, "forward", None), getattr(mod, "backward", None)
        head_plans = [plans[distinct.index(p)] for p in pats]
        if name == "triton" and len({p.block for p in head_plans}) == 1:
            tables = mod.kernel_tables(head_plans, device)
            tables.fwd_tables.fwd_static, tables.bwd_static  # noqa: B018  (built now, not in a graph)
            self._forward, self._backward = mod.forward_tables, mod.backward_tables
            self.units = [(None, tables)]
        elif len(distinct) == 1:
            self.units = [(None, plans[0])]
        else:
            index = [[h for h, p in enumerate(pats) if p == d] for d in distinct]
            self.units = [(torch.tensor(idx, device=device), plan) for idx, plan in zip(index, plans)]
            order = torch.tensor([h for idx in index for h in idx])
            inverse = torch.empty_like(order)
            inverse[order] = torch.arange(len(order))
            self.inverse = inverse.to(device)

    def _merge(self, parts: list[tuple]) -> tuple:
        """Per-unit results (each a tuple of head-split tensors) back in head order."""
        return tuple(torch.cat(xs, dim=1)[:, self.inverse].contiguous() for xs in zip(*parts))

    def forward(self, q, k, v, scale: float):
        if q.dtype == torch.float64 and self.name not in ("reference", "torch"):
            raise ValueError(f"float64 runs on the reference and torch backends, not {self.name!r}")
        if len(self.units) == 1:
            return self._forward(q, k, v, self.units[0][1], scale)
        return self._merge([self._forward(q[:, s], k[:, s], v[:, s], plan, scale) for s, plan in self.units])

    def backward(self, q, k, v, o, lse, do, scale: float, grads=None):
        """dq, dk, dv; the Triton kernels write them into ``grads`` (views) when given."""
        if len(self.units) == 1:
            if grads is not None and self.name == "triton":
                return self._backward(q, k, v, o, lse, do, self.units[0][1], scale, grads)
            return self._backward(q, k, v, o, lse, do, self.units[0][1], scale)
        return self._merge([self._backward(q[:, s], k[:, s], v[:, s], o[:, s], lse[:, s], do[:, s], plan, scale)
                            for s, plan in self.units])

    def run(self, q, k, v, scale: float):
        """The direct (flex) backend, differentiable on its own: one call per unit."""
        if len(self.units) == 1:
            return self.mod.attention(q, k, v, self.units[0][1], scale)
        return self._merge([(self.mod.attention(q[:, s], k[:, s], v[:, s], plan, scale),)
                            for s, plan in self.units])[0]


def _identity(pattern):
    """The cache key of a pattern argument: its id, or the ids of a list (None: not cacheable)."""
    if isinstance(pattern, Pattern):
        return id(pattern)
    if isinstance(pattern, Sequence) and not isinstance(pattern, str):
        return tuple(map(id, pattern))
    return None


def _same_objects(stored, given) -> bool:
    """Whether ``given`` is the very pattern (or list of patterns) ``stored`` was made from."""
    if isinstance(given, Pattern) or isinstance(stored, Pattern):
        return stored is given
    return len(stored) == len(given) and all(a is b for a, b in zip(stored, given))


_ROUTES: dict[tuple, _Route] = {}
_MAX_ROUTES = 256


def _route(key: int, heads: int, n: int, device: torch.device) -> _Route:
    """The cached :class:`_Route` of a registered key (:func:`pattern_key`) at (heads, n, device), looked
    up by plain values (equal patterns in other objects share it)."""
    lookup = (key, n, heads, device.type, device.index, os.environ.get("TRITON_INTERPRET"))
    route = _ROUTES.get(lookup)
    if route is None:
        if len(_ROUTES) >= _MAX_ROUTES:
            _ROUTES.clear()
        route = _ROUTES[lookup] = _Route(*op.source(key), heads, n, device)
    return route


def prepare_route(pk: PatternKey, heads: int, n: int, device: torch.device | str) -> None:
    """Build the route of ``pk`` for sequence length ``n`` (plans, kernel tables) now, outside any CUDA
    graph warm-up (why: ``docs/kernels.md``)."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    if not pk.direct and not pk.uses_sdpa(device):
        _route(pk.key, heads, n, device)
