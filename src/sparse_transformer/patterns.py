"""The paper's attention patterns as data: element masks (the oracle) and block plans (for kernels).

Every pattern is causal (key j <= query i) and 0-indexed. The atoms (spec section 13):

    local(w)              i - w < j <= i                          the strided pattern's first head
    strided(l)            (i - j) % l == 0                        the strided pattern's second head
    block(l)              j // l == i // l                        the fixed pattern's first head
    summary(l, c, m)      l-(m+1)c <= j % l <= l-m*c-1            the fixed pattern's second head
    dense()               every j <= i
    union(*ps)            any of ps                               the merged head

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
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = [
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
    "local",
    "strided",
    "summary",
    "union",
]

# Term kinds (integer codes of the atomic terms the predicates are built from).
DENSE, LOCAL, STRIDED, BLOCK, SUMMARY = 0, 1, 2, 3, 4
PATTERN_NAMES = ("dense", "fixed", "local", "strided")


def _positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------
# Patterns
# --------------------------------------------------------------------------------------------


class Pattern:
    """Base class: a causal attention pattern. Subclasses are frozen dataclasses."""

    def terms(self) -> tuple[tuple[int, int, int, int], ...]:
        """The pattern as an OR of atomic terms (kind, a, b, c); causality is implied."""
        raise NotImplementedError

    def parts(self) -> tuple[Pattern, ...]:
        """The atoms whose union this pattern is."""
        return (self,)

    def allowed(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        """Element-level definition: True where query i may attend key j (broadcasts)."""
        return _eval_terms(self.terms(), i, j) & (j <= i) & (j >= 0) & (i >= 0)

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

    def terms(self):
        return ((DENSE, 0, 0, 0),)

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

    def terms(self):
        return ((LOCAL, self.window, 0, 0),)

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

    def terms(self):
        return ((STRIDED, self.stride, 0, 0),)

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

    def terms(self):
        return ((BLOCK, self.size, 0, 0),)

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

    def terms(self):
        return ((SUMMARY, self.size, self.lo, self.hi),)

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

    def terms(self):
        return tuple(t for p in self.parts() for t in p.terms())

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
    if name == "dense":
        return (dense(),)
    if name == "local":
        return (local(_positive_int("stride", stride)),)
    if name in ("strided", "fixed"):
        return factorized(name, _positive_int("stride", stride), c)
    raise ValueError(f"unknown pattern {name!r}; choose from {', '.join(PATTERN_NAMES)}")


# --------------------------------------------------------------------------------------------
# Element predicates (shared by the oracle, the plans and the torch backend)
# --------------------------------------------------------------------------------------------


def _eval_term(term: tuple[int, int, int, int], i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    kind, a, b, c = term
    if kind == DENSE:
        return torch.ones(torch.broadcast_shapes(i.shape, j.shape), dtype=torch.bool, device=i.device)
    if kind == LOCAL:
        return (i - j) < a
    if kind == STRIDED:
        return torch.remainder(i - j, a) == 0
    if kind == BLOCK:
        return torch.div(i, a, rounding_mode="floor") == torch.div(j, a, rounding_mode="floor")
    if kind == SUMMARY:
        r = torch.remainder(j, a)
        return (r >= b) & (r <= c)
    raise AssertionError(f"unknown term kind {kind}")


def _eval_terms(terms, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
    out = None
    for t in terms:
        m = _eval_term(t, i, j)
        out = m if out is None else (out | m)
    return out


@dataclass(frozen=True)
class Predicate:
    """Causal AND (any ``include`` term) AND NOT (any ``exclude`` term), element by element."""

    include: tuple[tuple[int, int, int, int], ...]
    exclude: tuple[tuple[int, int, int, int], ...] = ()

    def __call__(self, i: torch.Tensor, j: torch.Tensor) -> torch.Tensor:
        m = (j <= i) & (j >= 0) & (i >= 0) & _eval_terms(self.include, i, j)
        if self.exclude:
            m = m & ~_eval_terms(self.exclude, i, j)
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


def _natural_tiles(n: int, block: int) -> torch.Tensor:
    t = -(-n // block)
    pos = torch.arange(t * block)
    return torch.where(pos < n, pos, -1).view(t, block)


def _band_layout(lo_tile: torch.Tensor, hi_tile: torch.Tensor) -> torch.Tensor:
    """Rows of consecutive tile ids lo..hi (inclusive), -1 padded to the widest row."""
    width = max(1, int((hi_tile - lo_tile).max()) + 1) if lo_tile.numel() else 1
    ids = lo_tile[:, None] + torch.arange(width)[None, :]
    return torch.where(ids <= hi_tile[:, None], ids, -1)


def _strided_tiles(n: int, stride: int, block: int) -> torch.Tensor:
    """The transpose order: residue class r = i % stride laid out contiguously.

    Each class holds up to L = ceil(n / stride) positions; L is padded to a multiple of ``block``
    (L >= block) or to a power of two dividing ``block`` (L < block), so no tile straddles
    classes unevenly; padding slots hold -1.
    """
    length = -(-n // stride)
    if length >= block:
        lp = -(-length // block) * block
    else:
        lp = 1 << max(0, (length - 1).bit_length())
    t = torch.arange(lp)
    r = torch.arange(stride)
    pos = r[:, None] + stride * t[None, :]  # (stride, lp)
    pos = torch.where((t[None, :] < length) & (pos < n), pos, -1).reshape(-1)
    total = -(-pos.numel() // block) * block
    pos = torch.cat([pos, pos.new_full((total - pos.numel(),), -1)])
    return pos.view(-1, block), lp


def _candidates(atom: Pattern, n: int, block: int):
    """(q_tiles, k_tiles, layout) for one atom: a superset of the visits it needs."""
    if isinstance(atom, Strided) and atom.stride > 1:
        tiles, lp = _strided_tiles(n, atom.stride, block)
        tq = tiles.shape[0]
        t = torch.arange(tq)
        if lp >= block:  # several tiles per class: causal band from the class's first tile
            first = (t * block // lp) * (lp // block)
        else:  # several classes per tile: only the diagonal tile
            first = t
        return tiles, tiles, _band_layout(first, t)
    q = _natural_tiles(n, block)
    tq = q.shape[0]
    t = torch.arange(tq)
    if isinstance(atom, Summary):
        j = torch.arange(n)
        r = j % atom.size
        cols = j[(r >= atom.lo) & (r <= atom.hi)]
        tk = max(1, -(-cols.numel() // block))
        k = torch.cat([cols, cols.new_full((tk * block - cols.numel(),), -1)]).view(tk, block)
        # query tile t needs summary columns <= its last position.
        last = torch.clamp(t * block + block - 1, max=n - 1)
        need = torch.searchsorted(cols, last, right=True)  # number of columns <= last
        hi = torch.div(need - 1, block, rounding_mode="floor")
        lo = torch.zeros_like(hi)
        lay = _band_layout(lo, torch.clamp(hi, min=-1))
        lay = torch.where((need[:, None] > 0) & (lay >= 0), lay, -1)
        return q, k, lay
    if isinstance(atom, Local):
        w = atom.window
        lo = torch.clamp(torch.div(t * block - w + 1, block, rounding_mode="floor"), min=0)
        return q, q, _band_layout(lo, t)
    if isinstance(atom, Block):
        lo = torch.div((t * block // atom.size) * atom.size, block, rounding_mode="floor")
        return q, q, _band_layout(lo, t)
    if isinstance(atom, (Dense, Strided)):  # strided(1) is dense
        return q, q, _band_layout(torch.zeros_like(t), t)
    raise AssertionError(f"no plan for {atom}")


# --- generic classification of visits from tile bounds -----------------------------------------


def _tile_stats(tiles: torch.Tensor):
    valid = tiles >= 0
    big = torch.iinfo(torch.int64).max
    lo = torch.where(valid, tiles, big).min(1).values
    hi = torch.where(valid, tiles, -1).max(1).values
    padded = ~valid.all(1)
    return lo, hi, padded, valid.any(1)


def _term_bounds(term, q_tiles, k_tiles, qi, ki):
    """For visits (qi[e], ki[e]): (nowhere, everywhere) booleans of one term, conservative."""
    kind, a, b, c = term
    qlo, qhi, _, _ = _tile_stats(q_tiles)
    klo, khi, _, _ = _tile_stats(k_tiles)
    qlo, qhi, klo, khi = qlo[qi], qhi[qi], klo[ki], khi[ki]
    false = torch.zeros_like(qi, dtype=torch.bool)
    if kind == DENSE:
        return false, ~false
    if kind == LOCAL:
        return (qlo - khi) >= a, (qhi - klo) < a
    if kind == BLOCK:
        nowhere = torch.div(khi, a, rounding_mode="floor") < torch.div(
            qlo, a, rounding_mode="floor"
        )
        nowhere |= torch.div(klo, a, rounding_mode="floor") > torch.div(
            qhi, a, rounding_mode="floor"
        )
        everywhere = (torch.div(klo, a, rounding_mode="floor") == torch.div(
            qhi, a, rounding_mode="floor"
        )) & (torch.div(khi, a, rounding_mode="floor") == torch.div(qlo, a, rounding_mode="floor"))
        return nowhere, everywhere
    if kind in (STRIDED, SUMMARY):
        # Exact per-tile residue sets are cheap enough to test directly.
        qv, kv = q_tiles[qi], k_tiles[ki]  # (E, B)
        if kind == STRIDED:
            qr = torch.where(qv >= 0, qv % a, -1)
            kr = torch.where(kv >= 0, kv % a, -2)
            same = qr[:, :, None] == kr[:, None, :]
            valid = (qv >= 0)[:, :, None] & (kv >= 0)[:, None, :]
            return ~same.any((1, 2)), (same | ~valid).all((1, 2))
        r = kv % a
        ok = (r >= b) & (r <= c)
        return ~(ok & (kv >= 0)).any(1), (ok | (kv < 0)).all(1)
    raise AssertionError(kind)


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
    inc_none = torch.ones_like(qi, dtype=torch.bool)
    inc_all = torch.zeros_like(qi, dtype=torch.bool)
    for t in include:
        nw, ew = _term_bounds(t, q_tiles, k_tiles, qi, ki)
        inc_none &= nw
        inc_all |= ew
    exc_none = torch.ones_like(qi, dtype=torch.bool)
    exc_all = torch.zeros_like(qi, dtype=torch.bool)
    for t in exclude:
        nw, ew = _term_bounds(t, q_tiles, k_tiles, qi, ki)
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
    done: list[tuple[int, int, int, int]] = []  # terms of earlier atoms: excluded from later ones
    for atom in atoms:
        q, k, lay = _candidates(atom, n, block)
        pred = Predicate(tuple(atom.terms()), tuple(done))
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
        done.extend(atom.terms())
    return BlockPlan(n, block, tuple(segments), pattern)
