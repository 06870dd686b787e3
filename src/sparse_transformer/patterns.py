"""The paper's attention patterns as data: element masks (the oracle) and block plans (for kernels).

Every pattern is causal (key j <= query i) and 0-indexed. The atoms (spec section 13):

    local(w)              i - w < j <= i                          the strided pattern's first head
    strided(l)            (i - j) % l == 0                        the strided pattern's second head
    block(l)              j // l == i // l                        the fixed pattern's first head
    summary(l, c, m)      l-(m+1)c <= j % l <= l-m*c-1            the fixed pattern's second head
    dense()               every j <= i
    union(*ps)            any of ps                               the merged head

Each atom owns everything that is particular to it, in one class: its element term (``term``), the
same term in a form FlexAttention's ``mask_mod`` can trace (``flex_term``), the key tiles a query
tile may visit (``candidates``) and conservative per-visit bounds of the term (``bounds``). Adding
an atom means adding one class; the plan builder and the backends only call these methods.

A pattern answers two questions:

* ``pattern.mask(n)``: the (n, n) boolean matrix, True where query i attends key j. Slow, exact.
* ``pattern.plan(n, block)``: a :class:`BlockPlan` that kernels consume. A plan is a list of
  :class:`Segment` s. A segment tiles the queries into ``q_tiles`` (rows of ``block`` positions, in an
  order that makes the sparsity block-aligned: natural order, or the strided transpose
  ``p(i) = (i % l) * (n / l) + i // l``), names key tiles ``k_tiles`` (contiguous blocks, strided
  blocks, or gathered summary columns) and lists, for each query tile, the key tiles it visits
  (``layout``) and how to mask each visit (``entry_pred``: -1 for "every pair allowed", otherwise
  an index into ``preds``, the predicates evaluated element by element). Positions are always
  *original* positions; -1 marks padding. The key sets of different segments are disjoint, so a
  backend computes each segment's output and log-sum-exp and merges them.

Plans are cached on the pattern object per (n, block, device).

:func:`layer_patterns` assigns the named patterns to the heads of every layer (spec section 4);
it takes plain arguments, so the model's config stays in ``model.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import torch

__all__ = [
    "COMPONENT_NAMES",
    "MODES",
    "PATTERN_NAMES",
    "Block",
    "BlockPlan",
    "Dense",
    "Local",
    "Pattern",
    "Predicate",
    "Segment",
    "Strided",
    "Summary",
    "Union",
    "block",
    "dense",
    "factorized",
    "from_name",
    "layer_patterns",
    "local",
    "strided",
    "summary",
    "union",
]

PATTERN_NAMES = ("dense", "fixed", "local", "strided")
MODES = ("interleaved", "merged", "multihead")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_choice(what: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(allowed)}")


# --------------------------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------------------------


class Pattern:
    """Base class: a causal attention pattern. Subclasses are frozen dataclasses."""

    def parts(self) -> tuple[Pattern, ...]:
        """The atoms whose union this pattern is."""
        return (self,)

    def term(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """The pattern's own condition on (i, j), broadcasting; causality is left to the caller."""
        return _any(self.parts(), i, j)

    def flex_term(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """:meth:`term` as FlexAttention's ``mask_mod`` traces it (i, j of one shape)."""
        return self.term(i, j)

    def candidates(self, n: int, block: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Atoms: (q_tiles, k_tiles, layout) in the atom's own tiling, a superset of the visits
        it needs (see :class:`Segment` for the three tensors)."""
        raise NotImplementedError(f"{self} is not an atom; plan its parts()")

    def bounds(self, v: _Visits) -> tuple[torch.Tensor, torch.Tensor]:
        """Atoms: per visit of ``v``, (nowhere, everywhere) booleans of :meth:`term`; both may
        be False when unsure (conservative), never wrongly True."""
        raise NotImplementedError(f"{self} is not an atom; bound its parts()")

    def with_summary_offset(self, offset: int) -> Pattern:
        """This pattern with every summary part reading sub-block ``offset`` (modulo the number
        of sub-blocks); other parts unchanged."""
        return self

    def allowed(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Element-level definition: True where query i may attend key j (broadcasts)."""
        return self.term(i, j) & (j <= i) & (j >= 0) & (i >= 0)

    def mask(self, n: int, device: torch.device | str | None = None) -> torch.Tensor:
        """The (n, n) boolean connectivity matrix: ``mask[i, j]`` is True when i attends j."""
        n = int(n)
        if n < 0:
            raise ValueError(f"sequence length must be >= 0, got {n}")
        idx = torch.arange(n, device=device)
        return self.allowed(idx[:, None], idx[None, :])

    def row(self, i: int) -> torch.Tensor:
        """Key positions query ``i`` attends, ascending (what a cached sampler needs)."""
        raise NotImplementedError

    def plan(self, n: int, block: int = 128, device: torch.device | str | None = None) -> BlockPlan:
        """The block plan at this block size, cached on the pattern per (n, block, device)."""
        n = int(n)
        block = _positive_int("block", block)
        if n <= 0:
            raise ValueError(f"sequence length must be positive, got {n}")
        device = torch.device(device) if device is not None else torch.device("cpu")
        cache = _plan_cache(self)
        key = (n, block, str(device))
        if key not in cache:
            cache[key] = _build_plan(self, n, block).to(device)
        return cache[key]

    def density(self, n: int) -> float:
        """Fraction of the causal (lower-triangle) pairs that the pattern keeps."""
        return float(sum(len(self.row(i)) for i in range(n))) / (n * (n + 1) / 2)

    def __or__(self, other: Pattern) -> Pattern:
        return union(self, other)


def _plan_cache(p: Pattern) -> dict:
    cache = p.__dict__.get("_plans")
    if cache is None:
        cache = {}
        object.__setattr__(p, "_plans", cache)
    return cache


@dataclass(frozen=True)
class Dense(Pattern):
    """Full causal attention: every j <= i."""

    def term(self, i, j):
        return torch.ones(torch.broadcast_shapes(i.shape, j.shape), dtype=torch.bool, device=i.device)

    def flex_term(self, i, j):
        return i >= 0  # no new tensor: mask_mod is traced on scalars

    def candidates(self, n, block):
        q, t = _natural_tiles(n, block)
        return q, q, _band_layout(torch.zeros_like(t), t)

    def bounds(self, v):
        return v.never(), ~v.never()

    def row(self, i: int) -> torch.Tensor:
        return torch.arange(i + 1)

    def __str__(self) -> str:
        return "dense()"


@dataclass(frozen=True)
class Local(Pattern):
    """A causal sliding window of ``window`` keys including the query: i - window < j <= i."""

    window: int

    def __post_init__(self):
        _positive_int("local window", self.window)

    def term(self, i, j):
        return (i - j) < self.window

    def candidates(self, n, block):
        q, t = _natural_tiles(n, block)
        lo = torch.div(t * block - self.window + 1, block, rounding_mode="floor")
        return q, q, _band_layout(torch.clamp(lo, min=0), t)

    def bounds(self, v):
        return (v.qlo - v.khi) >= self.window, (v.qhi - v.klo) < self.window

    def row(self, i: int) -> torch.Tensor:
        return torch.arange(max(0, i - self.window + 1), i + 1)

    def __str__(self) -> str:
        return f"local({self.window})"


@dataclass(frozen=True)
class Strided(Pattern):
    """Every ``stride``-th key going back from the query: (i - j) % stride == 0."""

    stride: int

    def __post_init__(self):
        _positive_int("stride", self.stride)

    def term(self, i, j):
        return torch.remainder(i - j, self.stride) == 0

    def candidates(self, n, block):
        if self.stride == 1:  # strided(1) is dense
            return Dense().candidates(n, block)
        tiles, lp = _strided_tiles(n, self.stride, block)
        t = torch.arange(tiles.shape[0])
        if lp >= block:  # several tiles per class: causal band from the tile of the class's first slot
            first = (t * block // lp) * lp // block
        else:  # several classes per tile: only the diagonal tile
            first = t
        return tiles, tiles, _band_layout(first, t)

    def bounds(self, v):
        # Exact per-tile residue sets are cheap enough to test directly.
        qv, kv = v.q, v.k  # (E, B)
        qr = torch.where(qv >= 0, qv % self.stride, -1)
        kr = torch.where(kv >= 0, kv % self.stride, -2)
        same = qr[:, :, None] == kr[:, None, :]
        valid = (qv >= 0)[:, :, None] & (kv >= 0)[:, None, :]
        return ~same.any((1, 2)), (same | ~valid).all((1, 2))

    def row(self, i: int) -> torch.Tensor:
        return torch.arange(i % self.stride, i + 1, self.stride)

    def __str__(self) -> str:
        return f"strided({self.stride})"


@dataclass(frozen=True)
class Block(Pattern):
    """The query's own aligned block of ``size`` positions: j // size == i // size."""

    size: int

    def __post_init__(self):
        _positive_int("block size", self.size)

    def term(self, i, j):
        return _floor(i, self.size) == _floor(j, self.size)

    def candidates(self, n, block):
        q, t = _natural_tiles(n, block)
        lo = _floor((t * block // self.size) * self.size, block)
        return q, q, _band_layout(lo, t)

    def bounds(self, v):
        a = self.size
        nowhere = (_floor(v.khi, a) < _floor(v.qlo, a)) | (_floor(v.klo, a) > _floor(v.qhi, a))
        everywhere = (_floor(v.klo, a) == _floor(v.qhi, a)) & (_floor(v.khi, a) == _floor(v.qlo, a))
        return nowhere, everywhere

    def row(self, i: int) -> torch.Tensor:
        return torch.arange((i // self.size) * self.size, i + 1)

    def __str__(self) -> str:
        return f"block({self.size})"


@dataclass(frozen=True)
class Summary(Pattern):
    """The fixed pattern's summary columns: size-(offset+1)c <= j % size <= size-offset*c-1.

    ``offset`` picks which c-wide sub-block of each block this head reads (the paper gives each
    head a distinct one); 0 is the last c positions of every block.
    """

    size: int
    c: int
    offset: int = 0

    def __post_init__(self):
        _positive_int("block size", self.size)
        _positive_int("summary width c", self.c)
        if self.c > self.size:
            raise ValueError(f"summary width c={self.c} must be <= block size {self.size}")
        n_off = self.size // self.c
        if isinstance(self.offset, bool) or not isinstance(self.offset, int) or not (
            0 <= self.offset < n_off
        ):
            raise ValueError(
                f"summary offset {self.offset!r} out of range; allowed 0..{n_off - 1} "
                f"for size {self.size} and c {self.c}"
            )

    @property
    def lo(self) -> int:
        return self.size - (self.offset + 1) * self.c

    @property
    def hi(self) -> int:
        return self.size - self.offset * self.c - 1

    def term(self, i, j):
        r = torch.remainder(j, self.size)
        return (r >= self.lo) & (r <= self.hi)

    def candidates(self, n, block):
        q, t = _natural_tiles(n, block)
        j = torch.arange(n)
        r = j % self.size
        cols = j[(r >= self.lo) & (r <= self.hi)]
        tk = max(1, -(-cols.numel() // block))
        k = torch.cat([cols, cols.new_full((tk * block - cols.numel(),), -1)]).view(tk, block)
        # query tile t needs summary columns <= its last position.
        last = torch.clamp(t * block + block - 1, max=n - 1)
        need = torch.searchsorted(cols, last, right=True)  # number of columns <= last
        hi = _floor(need - 1, block)
        lay = _band_layout(torch.zeros_like(hi), torch.clamp(hi, min=-1))
        lay = torch.where((need[:, None] > 0) & (lay >= 0), lay, -1)
        return q, k, lay

    def bounds(self, v):
        r = v.k % self.size
        ok = (r >= self.lo) & (r <= self.hi)
        return ~(ok & (v.k >= 0)).any(1), (ok | (v.k < 0)).all(1)

    def with_summary_offset(self, offset: int) -> Pattern:
        return Summary(self.size, self.c, offset % (self.size // self.c))

    def row(self, i: int) -> torch.Tensor:
        j = torch.arange(i + 1)
        r = j % self.size
        return j[(r >= self.lo) & (r <= self.hi)]

    def __str__(self) -> str:
        return f"summary({self.size}, {self.c}, offset={self.offset})"


@dataclass(frozen=True)
class Union(Pattern):
    """The merged head: a key is attended if any part allows it."""

    members: tuple[Pattern, ...] = field(default=())

    def __post_init__(self):
        if not self.members:
            raise ValueError("union() needs at least one pattern")
        for p in self.members:
            if not isinstance(p, Pattern):
                raise TypeError(f"union() takes patterns, got {p!r}")

    def parts(self) -> tuple[Pattern, ...]:
        out: list[Pattern] = []
        for p in self.members:
            for q in p.parts():
                if q not in out:
                    out.append(q)
        return tuple(out)

    def with_summary_offset(self, offset: int) -> Pattern:
        return union(*(m.with_summary_offset(offset) for m in self.members))

    def row(self, i: int) -> torch.Tensor:
        return torch.unique(torch.cat([p.row(i) for p in self.parts()]))

    def __str__(self) -> str:
        return "union(" + ", ".join(str(p) for p in self.members) + ")"


# Factories: the public names users and tests rely on.
def dense() -> Dense:
    """Full causal attention."""
    return Dense()


def local(window: int) -> Local:
    """``window`` keys ending at the query (the authors' code: i - window < j <= i)."""
    return Local(window)


def strided(stride: int) -> Strided:
    """Keys at distances that are multiples of ``stride``: (i - j) % stride == 0."""
    return Strided(stride)


def block(size: int) -> Block:
    """The query's aligned block: j // size == i // size."""
    return Block(size)


def summary(size: int, c: int, offset: int = 0) -> Summary:
    """Summary columns of every block: size-(offset+1)c <= j % size <= size-offset*c-1."""
    return Summary(size, c, offset)


def union(*patterns: Pattern) -> Pattern:
    """The merged head: the union of the given patterns (a single pattern is returned as is)."""
    if len(patterns) == 1 and isinstance(patterns[0], Pattern):
        return patterns[0]
    return Union(tuple(patterns))


def factorized(name: str, stride: int, c: int | None = None) -> tuple[Pattern, Pattern]:
    """The paper's two factorized heads.

    ``factorized("strided", l)`` -> ``(local(l), strided(l))``;
    ``factorized("fixed", l, c)`` -> ``(block(l), summary(l, c))``.
    """
    if name == "strided":
        return (local(stride), strided(stride))
    if name == "fixed":
        if c is None:
            raise ValueError("the fixed pattern needs c (summary width)")
        return (block(stride), summary(stride, c))
    raise ValueError(f"unknown factorized pattern {name!r}; choose from fixed, strided")


def from_name(name: str, stride: int | None = None, c: int | None = None) -> tuple[Pattern, ...]:
    """The components of a named pattern: dense -> (dense,), strided/fixed -> their two heads,
    local -> (local(stride),)."""
    _check_choice("pattern", name, PATTERN_NAMES)
    return _components(name, stride, c)


def _components(name: str, stride: int | None, c: int | None) -> tuple[Pattern, ...]:
    if name == "dense":
        return (dense(),)
    if name == "local":
        return (local(_positive_int("stride", stride)),)
    return factorized(name, _positive_int("stride", stride), c)


# --------------------------------------------------------------------------------------------
# Patterns per layer and head (spec section 4)
# --------------------------------------------------------------------------------------------

#: The atoms an explicit interleaved layer list may name, from the stride l and summary width c.
COMPONENTS = {
    "block": lambda stride, c: block(stride),
    "dense": lambda stride, c: dense(),
    "local": lambda stride, c: local(stride),
    "strided": lambda stride, c: strided(stride),
    "summary": lambda stride, c: summary(stride, c),
}
COMPONENT_NAMES = tuple(COMPONENTS)


def layer_patterns(
    pattern: str,
    mode: str,
    layers: str,
    n_layer: int,
    n_head: int,
    stride: int,
    c: int,
    head_offsets: bool,
    *,
    prefix: str = "",
) -> list[list[Pattern]]:
    """Per layer, per head: the pattern that head attends with.

    - ``interleaved``: layer r uses component ``r mod p`` of the named pattern (p = 2 for strided
      and fixed), or ``layers``, an explicit comma list of :data:`COMPONENT_NAMES` cycled over the
      layers (``"local,local,local,strided"`` is the authors' 3:1 CIFAR stack); every head of a
      layer shares the pattern;
    - ``merged``: every head attends to the union of the components (the paper's EnWik8 model);
    - ``multihead``: the heads are split into p contiguous groups, group m attending component m.

    With ``head_offsets`` every ``summary`` component reads a per-head c-wide sub-block: head h
    (counted within the heads that read a summary in that layer) gets offset ``h mod (stride //
    c)``, so different heads summarise different parts of each block (paper section 4.3).

    Equal patterns are interned (one object per distinct pattern in the table), so the block plans
    the kernels cache on a pattern are built once and shared by every layer that uses it.

    Raises ValueError for a bad pattern, mode, layer list or head count, naming the value and the
    allowed set; ``prefix`` goes in front of the argument names (``"model."`` from a config).
    """
    _check_choice(f"{prefix}mode", mode, MODES)
    _check_choice(f"{prefix}pattern", pattern, PATTERN_NAMES)
    layers_spec = layers.strip()
    if layers_spec and mode != "interleaved":
        raise ValueError(
            f"{prefix}layers={layers!r} is only used by mode 'interleaved', not {mode!r}; "
            "leave it empty"
        )
    if layers_spec:
        names = [s.strip() for s in layers_spec.split(",")]
        for s in names:
            if s not in COMPONENTS:
                raise ValueError(
                    f"unknown layer component {s!r} in {prefix}layers={layers!r}; "
                    f"choose from {', '.join(COMPONENT_NAMES)}"
                )
        comps = tuple(COMPONENTS[s](stride, c) for s in names)
    else:
        comps = _components(pattern, stride, c)
    p = len(comps)

    table: list[list[Pattern]] = []
    for r in range(n_layer):
        if mode == "interleaved":
            heads = [comps[r % p]] * n_head
        elif mode == "merged":
            heads = [union(*comps)] * n_head
        else:  # multihead
            if n_head % p:
                raise ValueError(
                    f"mode 'multihead' splits n_head={n_head} evenly among the {p} components of "
                    f"pattern {pattern!r}; n_head must be a multiple of {p}"
                )
            heads = [comps[h * p // n_head] for h in range(n_head)]
        if head_offsets:
            rank = 0
            for h, hp in enumerate(heads):
                if any(isinstance(q, Summary) for q in hp.parts()):
                    heads[h] = hp.with_summary_offset(rank)
                    rank += 1
        table.append(heads)

    # Intern: one object per distinct pattern, so plans cached on it are shared across layers.
    seen: dict[Pattern, Pattern] = {}
    return [[seen.setdefault(hp, hp) for hp in heads] for heads in table]


# --------------------------------------------------------------------------------------------
# Element predicates (shared by the oracle, the plans and the backends)
# --------------------------------------------------------------------------------------------


def _floor(x: torch.Tensor, a: int) -> torch.Tensor:
    return torch.div(x, a, rounding_mode="floor")


def _any(atoms, i: torch.Tensor, j: torch.Tensor, flex: bool = False) -> torch.Tensor:
    out = None
    for a in atoms:
        m = a.flex_term(i, j) if flex else a.term(i, j)
        out = m if out is None else (out | m)
    return out


@dataclass(frozen=True)
class Predicate:
    """Causal AND (any ``include`` atom) AND NOT (any ``exclude`` atom), element by element."""

    include: tuple[Pattern, ...]
    exclude: tuple[Pattern, ...] = ()

    def __call__(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        m = (j <= i) & (j >= 0) & (i >= 0) & _any(self.include, i, j)
        if self.exclude:
            m = m & ~_any(self.exclude, i, j)
        return m

    def flex_terms(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """The include/exclude part (no causality) from the atoms' ``flex_term``: traceable
        inside FlexAttention's ``mask_mod``."""
        m = _any(self.include, i, j, flex=True)
        if self.exclude:
            m = m & ~_any(self.exclude, i, j, flex=True)
        return m


# --------------------------------------------------------------------------------------------
# Block plans
# --------------------------------------------------------------------------------------------


def _ap_info(tiles: torch.Tensor) -> torch.Tensor:
    """(T, 2) int64 (start, step) when a tile is a full arithmetic progression, else (-1, 0)."""
    _t, b = tiles.shape
    start = tiles[:, 0]
    if b == 1:
        ok = start >= 0
        step = torch.ones_like(start)
    else:
        step = tiles[:, 1] - tiles[:, 0]
        ok = (tiles >= 0).all(1) & (step > 0)
        ok &= (tiles == start[:, None] + step[:, None] * torch.arange(b)).all(1)
    return torch.stack([torch.where(ok, start, -1), torch.where(ok, step, 0)], 1)


@dataclass(frozen=True, eq=False)
class Segment:
    """One block-sparse attention problem; see the module docstring.

    q_tiles:    (Tq, block) int64 query positions, -1 for padding slots.
    k_tiles:    (Tk, block) int64 key positions, -1 for padding slots.
    layout:     (Tq, M) int64 key-tile ids each query tile visits, -1 padding at the end.
    entry_pred: (Tq, M) int64, -1: every pair of the visit is allowed (no element mask);
                p >= 0: mask with ``preds[p]``. Padding entries hold -1 too (layout == -1).
    preds:      the element predicates.
    """

    q_tiles: torch.Tensor
    k_tiles: torch.Tensor
    layout: torch.Tensor
    entry_pred: torch.Tensor
    preds: tuple[Predicate, ...]

    @property
    def block(self) -> int:
        return self.q_tiles.shape[1]

    @property
    def order(self) -> torch.Tensor:
        """The query order the segment works in (original positions, -1 = padding slot)."""
        return self.q_tiles.reshape(-1)

    @property
    def counts(self) -> torch.Tensor:
        """(Tq,) number of key tiles each query tile visits."""
        return (self.layout >= 0).sum(1)

    @property
    def q_ap(self) -> torch.Tensor:
        """(Tq, 2) (start, step) of each query tile when it is an arithmetic progression."""
        return _ap_info(self.q_tiles)

    @property
    def k_ap(self) -> torch.Tensor:
        """(Tk, 2) (start, step) of each key tile when it is an arithmetic progression."""
        return _ap_info(self.k_tiles)

    def to(self, device: torch.device | str) -> Segment:
        return Segment(
            self.q_tiles.to(device),
            self.k_tiles.to(device),
            self.layout.to(device),
            self.entry_pred.to(device),
            self.preds,
        )

    def visits(self) -> int:
        return int((self.layout >= 0).sum())


@dataclass(frozen=True, eq=False)
class BlockPlan:
    """A pattern's plan at sequence length ``n`` and tile size ``block``: disjoint segments."""

    n: int
    block: int
    segments: tuple[Segment, ...]
    pattern: Pattern | None = None

    def to(self, device: torch.device | str) -> BlockPlan:
        segs = tuple(s.to(device) for s in self.segments)
        return BlockPlan(self.n, self.block, segs, self.pattern)

    def visits(self) -> int:
        """Number of (query tile, key tile) visits: the kernel's work in tiles."""
        return sum(s.visits() for s in self.segments)

    def pairs(self) -> int:
        """Number of (query, key) pairs the pattern allows: the useful work (FLOPs = 4·pairs·D)."""
        total = 0
        for s in self.segments:
            s = s.to("cpu")
            sel = s.layout >= 0
            total += int(((s.entry_pred < 0) & sel).sum()) * s.block * s.block
            for p, pred in enumerate(s.preds):
                ti, ei = torch.nonzero(sel & (s.entry_pred == p), as_tuple=True)
                for lo in range(0, ti.numel(), 4096):
                    t, e = ti[lo : lo + 4096], ei[lo : lo + 4096]
                    q = s.q_tiles[t][:, :, None]
                    k = s.k_tiles[s.layout[t, e]][:, None, :]
                    total += int(pred(q, k).sum())
        return total

    def block_fraction(self) -> float:
        """Visited tiles over the tiles of dense causal attention at the same block size."""
        t = -(-self.n // self.block)
        return self.visits() / (t * (t + 1) / 2)

    def coverage(self) -> torch.Tensor:
        """(n, n) int counts: how many times the plan computes each (i, j) pair (tests: == mask)."""
        n = self.n
        cov = torch.zeros(n, n, dtype=torch.int64)
        for s in self.segments:
            s = s.to("cpu")
            for t in range(s.layout.shape[0]):
                q = s.q_tiles[t]
                for e in range(s.layout.shape[1]):
                    kt = int(s.layout[t, e])
                    if kt < 0:
                        continue
                    k = s.k_tiles[kt]
                    p = int(s.entry_pred[t, e])
                    qi, kj = q[:, None], k[None, :]
                    if p < 0:
                        m = (qi >= 0) & (kj >= 0) & (kj <= qi)
                        if not bool(m.all()):  # a "full" visit must really be full
                            cov -= 1000
                        m = torch.ones_like(m)
                    else:
                        m = s.preds[p](qi, kj)
                    ii, jj = torch.nonzero(m, as_tuple=True)
                    cov.index_put_((q[ii], k[jj]), torch.ones_like(ii), accumulate=True)
        return cov


# --- candidate key tiles per atom, in the atom's own tiling -----------------------------------


def _natural_tiles(n: int, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Natural-order tiles (T, block), -1 padded, and the tile ids 0..T-1."""
    t = -(-n // block)
    pos = torch.arange(t * block)
    return torch.where(pos < n, pos, -1).view(t, block), torch.arange(t)


def _band_layout(lo_tile: torch.Tensor, hi_tile: torch.Tensor) -> torch.Tensor:
    """Rows of consecutive tile ids lo..hi (inclusive), -1 padded to the widest row."""
    width = max(1, int((hi_tile - lo_tile).max()) + 1) if lo_tile.numel() else 1
    ids = lo_tile[:, None] + torch.arange(width)[None, :]
    return torch.where(ids <= hi_tile[:, None], ids, -1)


def _strided_tiles(n: int, stride: int, block: int) -> torch.Tensor:
    """The transpose order: residue class r = i % stride laid out contiguously.

    Each class holds up to L = ceil(n / stride) positions. With L >= block the classes follow one
    another unpadded, so a tile may hold the end of one class and the start of the next (two
    progressions: still a tile descriptor, and fewer tiles than padding each class to a multiple
    of ``block``: enwik8's 96-position classes at block 64 take 192 tiles, not 256, and 320 visits,
    not 384). With L < block, L is padded to a power of two dividing ``block``, so a tile holds
    whole classes. Padding slots hold -1. Returns the tiles and the slots per class.
    """
    length = -(-n // stride)
    if length >= block:
        lp = length
    else:
        lp = 1 << max(0, (length - 1).bit_length())
    t = torch.arange(lp)
    r = torch.arange(stride)
    pos = r[:, None] + stride * t[None, :]  # (stride, lp)
    pos = torch.where((t[None, :] < length) & (pos < n), pos, -1).reshape(-1)
    total = -(-pos.numel() // block) * block
    pos = torch.cat([pos, pos.new_full((total - pos.numel(),), -1)])
    return pos.view(-1, block), lp


# --- generic classification of visits from tile bounds -----------------------------------------


def _tile_stats(tiles: torch.Tensor):
    valid = tiles >= 0
    big = torch.iinfo(torch.int64).max
    lo = torch.where(valid, tiles, big).min(1).values
    hi = torch.where(valid, tiles, -1).max(1).values
    padded = ~valid.all(1)
    return lo, hi, padded, valid.any(1)


class _Visits:
    """Visits ``(q_tiles[qi[e]], k_tiles[ki[e]])`` as the atoms' ``bounds`` see them: each
    tile's lowest and highest position (``qlo`` ... ``khi``, per visit) and, on demand, the
    visited tiles' positions ``q``, ``k`` (E, block)."""

    def __init__(self, q_tiles, k_tiles, qi, ki):
        self.q_tiles, self.k_tiles, self.qi, self.ki = q_tiles, k_tiles, qi, ki
        qlo, qhi, _, _ = _tile_stats(q_tiles)
        klo, khi, _, _ = _tile_stats(k_tiles)
        self.qlo, self.qhi, self.klo, self.khi = qlo[qi], qhi[qi], klo[ki], khi[ki]

    def never(self) -> torch.Tensor:
        return torch.zeros_like(self.qi, dtype=torch.bool)

    @cached_property
    def q(self) -> torch.Tensor:
        return self.q_tiles[self.qi]

    @cached_property
    def k(self) -> torch.Tensor:
        return self.k_tiles[self.ki]


def _classify(q_tiles, k_tiles, layout, include, exclude):
    """Per visit: keep (some pair may be allowed) and full (every pair allowed, no padding)."""
    tq, m = layout.shape
    qi = torch.arange(tq)[:, None].expand(tq, m)
    sel = layout >= 0
    qi, ki = qi[sel], layout[sel]
    qlo, qhi, qpad, qany = _tile_stats(q_tiles)
    klo, khi, kpad, kany = _tile_stats(k_tiles)
    causal_none = klo[ki] > qhi[qi]
    causal_all = khi[ki] <= qlo[qi]
    visits = _Visits(q_tiles, k_tiles, qi, ki)
    inc_none = torch.ones_like(qi, dtype=torch.bool)
    inc_all = torch.zeros_like(qi, dtype=torch.bool)
    for atom in include:
        nw, ew = atom.bounds(visits)
        inc_none &= nw
        inc_all |= ew
    exc_none = torch.ones_like(qi, dtype=torch.bool)
    exc_all = torch.zeros_like(qi, dtype=torch.bool)
    for atom in exclude:
        nw, ew = atom.bounds(visits)
        exc_none &= nw
        exc_all |= ew
    empty = causal_none | inc_none | exc_all | ~qany[qi] | ~kany[ki]
    full = causal_all & inc_all & exc_none & ~qpad[qi] & ~kpad[ki]
    keep = torch.zeros(tq, m, dtype=torch.bool)
    fullm = torch.zeros(tq, m, dtype=torch.bool)
    keep[sel] = ~empty
    fullm[sel] = full & ~empty
    return keep, fullm


def _compact(layout: torch.Tensor, keep: torch.Tensor, *cols: torch.Tensor):
    """Drop visits that are not kept, shifting the kept ones left; returns new tensors."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    width = max(1, int(keep.sum(1).max())) if keep.numel() else 1
    order = order[:, :width]
    kept = torch.gather(keep, 1, order)
    out = [torch.where(kept, torch.gather(layout, 1, order), -1)]
    for c in cols:
        out.append(torch.where(kept, torch.gather(c, 1, order), -1))
    return out


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a == b).all())


def _build_plan(pattern: Pattern, n: int, block: int) -> BlockPlan:
    atoms = pattern.parts()
    segments: list[Segment] = []
    done: list[Pattern] = []  # earlier atoms: excluded from later ones
    for atom in atoms:
        q, k, lay = atom.candidates(n, block)
        pred = Predicate((atom,), tuple(done))
        keep, full = _classify(q, k, lay, pred.include, pred.exclude)
        entry = torch.where(full, -1, 0)
        lay, entry = _compact(lay, keep, entry)
        # Merge into an earlier segment that has the same query tiling: one pass, one softmax.
        for idx, seg in enumerate(segments):
            if _same(seg.q_tiles, q):
                if _same(seg.k_tiles, k):
                    k_off, k_all = 0, seg.k_tiles
                else:
                    k_off, k_all = seg.k_tiles.shape[0], torch.cat([seg.k_tiles, k])
                p_off = len(seg.preds)
                lay2 = torch.where(lay >= 0, lay + k_off, -1)
                ent2 = torch.where(entry >= 0, entry + p_off, -1)
                new_layout = torch.cat([seg.layout, lay2], 1)
                new_entry = torch.cat([seg.entry_pred, ent2], 1)
                new_layout, new_entry = _compact(new_layout, new_layout >= 0, new_entry)
                segments[idx] = Segment(seg.q_tiles, k_all, new_layout, new_entry, seg.preds + (pred,))
                break
        else:
            segments.append(Segment(q, k, lay, entry, (pred,)))
        done.append(atom)
    return BlockPlan(n, block, tuple(segments), pattern)
