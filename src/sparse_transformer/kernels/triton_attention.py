"""Fused block-sparse attention in Triton, forward and backward, driven by block plans.

One kernel family serves every pattern: the plan is data (tile position tables, a visit list per
tile, element masks), not code. Layout after Triton's ``06-fused-attention`` tutorial, split in
two files so that importing this module does not import Triton:

1. here: plan -> kernel tables (:class:`KernelTables`, cached on the plans) and launch configs,
2. :mod:`.triton_kernels`: the ``@triton.jit`` helpers (tile rows, element masks) and the
   kernels: forward, the log-sum-exp merge of segments, the backward pre-pass (delta), the fused
   backward (dK/dV programs and dQ programs in one launch), the slot reduction,
3. here: the ``torch.autograd.Function`` and the public wrappers.

Design notes and H100 measurements: ``docs/kernels.md``.

How a plan becomes work
-----------------------
* A tile's rows are original positions, read through a *descriptor* ``(start, shift, step_in,
  step_out)``: row r lives at ``start + (r >> shift) * step_out + (r & (2**shift - 1)) * step_in``.
  That covers contiguous tiles (step 1), strided-transpose tiles (step l: the kernel loads the rows
  of one residue class directly, no permutation pass), several residue classes per tile and the
  gathered summary columns (runs of c contiguous rows, one run per l-block). Other tiles (ragged
  tails) fall back to a per-row index table (``start = -1``).
* Each query tile has a visit list (CSR) of key tiles, in kinds that each kernel walks with a loop
  of its own: *fast* visits (every pair allowed, both tiles progressions: no mask, no gather, the
  loads pipeline; contiguous visited tiles first), *causal* visits, *mask-tile* visits and
  *gathered* ones (padding rows or position-table rows). A visit's mask code is ``-1`` none, ``-2``
  causal, ``m >= 0`` tile m of the plan's mask bank (:class:`_MaskBank`: each distinct element
  mask once, as bit words, evaluated on the host from the plan's predicate).
  The upper triangle is never visited: the plans list only causal tiles.
* Forward: one program per (head, query tile), online softmax in float32 (exp2), output and
  log-sum-exp written once; no score matrix in memory.
* Backward (FlashAttention-2 style, from the saved log-sum-exp): one launch holds the dK/dV programs
  (one per key tile, walking the transposed visit list: the query tiles that see it) and the dQ
  programs (one per query tile), longest walks first.
* Several heads with different plans (the paper's multi-head mode) run in the same launches: each
  program reads its (head, tile) from a work list.
* Segments of one plan have disjoint (query, key) pair sets but share positions. The first segment's
  query tiles and the first key tile holding a position *own* it and write straight to the output;
  other tiles write float32 *slots* that a small pass merges (forward: log-sum-exp merge; backward:
  addition). The target cases (one segment per head) need no slots; the fixed merged head's summary
  key tiles share rows with the natural key tiles, so their dK/dV go through slots.
"""

from __future__ import annotations

import functools
import logging
import math
import operator
from dataclasses import dataclass
from typing import ClassVar

import torch

from ..patterns import BlockPlan

__all__ = ["CONFIGS", "attention", "attention_multihead", "attention_tables", "available", "backward_tables",
           "forward_tables", "kernel_tables", "launch_stats"]

log = logging.getLogger(__name__)

LOG2E = 1.4426950408889634
FULL, CAUSAL = -1, -2  # visit mask codes besides mask-tile ids >= 0

# Launch configurations per kernel and tile size: (num_warps, num_stages for long visit lists,
# num_stages for short ones). Deep pipelines pay off only when a program walks many tiles (the fixed
# pattern's summary columns); for the local/strided band (1-5 tiles per query tile) the prologue
# costs more than it hides. Measured on the H100 (docs/kernels.md); overridable.
CONFIGS: dict[tuple[str, int], tuple[int, int, int]] = {
    ("fwd", 16): (2, 2, 2),
    ("fwd", 32): (4, 2, 2),
    ("fwd", 64): (4, 3, 1),
    ("fwd", 128): (8, 2, 2),
    ("bwd", 16): (2, 2, 1),
    ("bwd", 32): (4, 2, 1),
    ("bwd", 64): (4, 2, 1),
    ("bwd", 128): (8, 2, 1),
}
# Register cap per (kernel, tile size) for head dims <= 64 (ptxas ``maxnreg``; absent: Triton's
# default, which lets ptxas take all 255 registers and so fits only two 4-warp programs on a
# multiprocessor). 168 fits three: 1.1-1.3x faster forward and backward at 64-row tiles on the H100
# for both short and long walks (benchmarks/kernel_sweep.py, docs/kernels.md); 128 spills in the
# backward. The 64-row forward (short walks; long ones run on FWD_BLOCK_LONG's tiles) at 128 fits
# four programs: strided pair at N=65,536, 0.191 vs 0.204 ms (kernel sweep run 6). 128-row forward
# tiles (8 warps): 128 fits two programs (fixed pattern at N=65,536: 2.8 ms against 4.4 at 168,
# one program). Wider head dims keep the default (not measured).
MAXNREG: dict[tuple[str, int], int | None] = {("fwd", 64): 128, ("bwd", 64): 168, ("fwd", 128): 128}
# Rows per step of the backward's two walks, per (tile size, long walk): (query rows per step of a
# key tile's dK/dV walk, key rows per step of a query tile's dQ walk); absent: whole tiles. A
# program holds its own tile's rows and accumulators for its whole walk; smaller steps shrink the
# score and dS tiles of each step, so the walk fits the register cap without spills. Short walks
# at 64-row tiles: dK/dV in half tiles (strided pair at N=16,384, backward 0.098 vs 0.107 ms; long
# walks at 64 rows measured faster whole: fixed pattern at N=65,536, 8.69 vs 9.18 ms; kernel
# sweep runs 5-7). 128-row tiles (8 warps) step 64 rows in both walks: each warpgroup's step is
# then the 64-row tile's.
BWD_STEPS: dict[tuple[int, bool], tuple[int, int]] = {(64, False): (32, 64), (128, True): (64, 64),
                                                      (128, False): (64, 64)}
# Key rows per step of the forward's walk, per (tile size, long walk) (absent: whole tiles): as
# the backward's steps, smaller score tiles per step, fewer registers.
FWD_STEPS: dict[tuple[int, bool], int] = {}
# Backward tile size for long-walk plans, per plan tile size (absent: the plan's). As the forward
# (FWD_BLOCK_LONG), the backward reads O and the log-sum-exp by position, so it can run on tables
# of its own tile size.
BWD_BLOCK_LONG: dict[int, int] = {}
# Long-walk backwards: the dK/dV programs also add each step's dQ share into a float32 buffer
# (atomic adds), and no dQ program walks the visits again: 5 matrix products per pair instead of 7,
# for 4 bytes of atomic traffic per pair (per 64 keys of a tile).
ATOMIC_DQ_LONG = False
# Forward tile size for long-walk plans (the fixed pattern's summary columns), per backward tile
# size: the forward keeps only O and the softmax state per query row, so 128-row tiles (8 warps, two
# warpgroups) fit where the backward's do not, and halve the key-tile loads per query row. The
# backward stays at the plan's tile. Absent: the forward uses the backward's tables.
FWD_BLOCK_LONG: dict[int, int] = {64: 128}
# Work order of short-walk plans: "position" (by head and tile; for the backward, each tile's dK/dV
# and dQ programs side by side), so programs running together share their neighbours' tiles in
# L2, or "longest" (longest walks first, as long-walk plans always are: they would finish last).
SHORT_WALK_ORDER = "position"
LONG_WALK = 8  # mean visits per query tile from which a plan list counts as "long"
INLINE_DELTA = True  # short-walk plans: rowsum(dO * O) inside the backward (no delta pre-pass) ...
# ... while the backward has fewer query rows (batch * heads * n) than this. Inline saves a launch
# (host time, which decides small calls); the pre-pass saves reloading O per visit (GPU time, which
# decides large ones). With the work in position order (SHORT_WALK_ORDER) the reloaded O tiles hit
# L2: strided pair at 8 x 65,536 rows, backward 0.495 ms inline vs 0.508 with the pre-pass (kernel
# sweep run 6; with the old longest-first order the pre-pass won, 0.588 vs 0.615). Larger calls
# keep the pre-pass (not measured).
INLINE_DELTA_MAX_ROWS = 2**20


_CAPABLE: dict[int, bool] = {}  # device index -> compute capability >= 8.0 (asked once)


def available(device: torch.device | str) -> bool:
    """CUDA with compute capability >= 8.0 and Triton importable, or the Triton interpreter."""
    import os

    device = torch.device(device)
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return device.type in ("cpu", "cuda")
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _CAPABLE:
        _CAPABLE[index] = torch.cuda.get_device_capability(index)[0] >= 8
    return _CAPABLE[index]


# ---------------------------------------------------------------------------------------------
# 1. Plans -> kernel tables
# ---------------------------------------------------------------------------------------------


def _descriptors(tiles: torch.Tensor) -> torch.Tensor:
    """(T, 4) int64 (start, shift, step_in, step_out) of each tile, start = -1 where no two-level
    arithmetic progression fits (then the kernel gathers the rows from the position table)."""
    t, b = tiles.shape
    r = torch.arange(b)
    start = tiles[:, 0]
    full = (tiles >= 0).all(1)
    out = torch.full((t, 4), -1, dtype=torch.int64)
    out[:, 1:] = 0
    done = ~full
    # Try the longest runs first: shift = log2(b) is a plain arithmetic progression.
    for shift in range(b.bit_length() - 1, -1, -1):
        run = 1 << shift
        step_in = (tiles[:, 1] - start) if run > 1 else torch.zeros_like(start)
        step_out = (tiles[:, run] - start) if run < b else torch.zeros_like(start)
        pred = start[:, None] + (r >> shift)[None, :] * step_out[:, None] + (r & (run - 1))[None, :] * step_in[:, None]
        ok = ~done & (pred == tiles).all(1)
        out[ok, 0] = start[ok]
        out[ok, 1] = shift
        out[ok, 2] = step_in[ok]
        out[ok, 3] = step_out[ok]
        done |= ok
    return out


class _MaskBank:
    """The distinct element masks of a plan's partial visits, each stored once.

    A visit whose pairs are not all allowed gets a mask code: ``CAUSAL`` or ``FULL`` (kept as cheap
    in-kernel comparisons: plain causality, or only the padding rows masked), otherwise the id of
    its (block, block) mask in the bank. The masks of the paper's patterns repeat (every local
    window's first tile, every fixed block's own-summary tile, ...), so the bank stays small: the
    kernel reads one 64-bit word per row from L2 instead of evaluating the predicate per element.
    """

    def __init__(self):
        self.ids: dict[bytes, int] = {}
        self.tiles: list[torch.Tensor] = []

    def codes(self, seg, t: torch.Tensor, kt: torch.Tensor, p: int) -> torch.Tensor:
        """Mask codes of the visits (t[v], kt[v]) under the segment's predicate p."""
        out = torch.empty(t.numel(), dtype=torch.int64)
        pred = seg.preds[p]
        for lo in range(0, t.numel(), 1024):
            qi = seg.q_tiles[t[lo : lo + 1024]][:, :, None]
            kj = seg.k_tiles[kt[lo : lo + 1024]][:, None, :]
            valid = (kj >= 0) & (qi >= 0)
            m = pred(qi, kj)
            causal = ((m == (valid & (kj <= qi))).all(2).all(1))
            full = (m == valid).all(2).all(1)
            chunk = torch.where(causal, CAUSAL, torch.where(full, FULL, -3))
            rest = torch.nonzero(chunk == -3).squeeze(1)
            if rest.numel():
                uniq, inverse = torch.unique(m[rest], dim=0, return_inverse=True)
                ids = torch.tensor([self._id(u) for u in uniq], dtype=torch.int64)
                chunk[rest] = ids[inverse]
            out[lo : lo + 1024] = chunk
        return out

    def _id(self, mask: torch.Tensor) -> int:
        key = mask.numpy().tobytes()
        i = self.ids.get(key)
        if i is None:
            i = self.ids[key] = len(self.tiles)
            self.tiles.append(mask.clone())
        return i

    def stacked(self, block: int) -> torch.Tensor:
        """(M, block, block) bool."""
        if not self.tiles:
            return torch.zeros(0, block, block, dtype=torch.bool)
        return torch.stack(self.tiles)


@dataclass
class _PlanTables:
    """One plan's tables on the CPU (int64), local ids; concatenated by :func:`_combine`."""

    qdesc: torch.Tensor  # (TQ, 5): start, shift, step_in, step_out, slot (-1: owner)
    qpos: torch.Tensor  # (TQ, B)
    kdesc: torch.Tensor  # (TK, 5)
    kpos: torch.Tensor  # (TK, B)
    fvis: torch.Tensor  # (V, 2): key tile, mask code; by query tile, then kind (see _plan_tables)
    fptr: torch.Tensor  # (TQ + 1,)
    fsplit: torch.Tensor  # (TQ, 4): visits before the other fast ones, the causal, mask-tile, gathered ones
    bvis: torch.Tensor  # (V, 2): query tile, mask code; by key tile, the same kinds
    bptr: torch.Tensor  # (TK + 1,)
    bsplit: torch.Tensor  # (TK, 4)
    masks: torch.Tensor  # (M, B, B) bool: the distinct element masks (mask codes >= 0 index them)
    q_rounds: list  # lists of query-tile ids whose slots merge in one pass
    k_rounds: list
    n_qslots: int
    n_kslots: int
    zero_dkv: bool  # some key position has no owner tile: dK/dV start from zeros


def _plan_tables(plan: BlockPlan) -> _PlanTables:
    n = plan.n
    qdesc, qpos, kdesc, kpos, vis_t, vis_k, vis_m = [], [], [], [], [], [], []
    bank = _MaskBank()
    q_rounds, k_rounds, k_round_sets = [], [], []
    q_off = k_off = 0
    n_qslots = n_kslots = 0
    owned = torch.zeros(n, dtype=torch.bool)
    for level, seg in enumerate(plan.segments):
        seg = seg.to("cpu")
        tq, tk = seg.q_tiles.shape[0], seg.k_tiles.shape[0]
        # Queries: the first segment owns every position (each segment tiles all queries once).
        qd = torch.cat([_descriptors(seg.q_tiles), torch.full((tq, 1), -1, dtype=torch.int64)], 1)
        if level > 0:
            qd[:, 4] = torch.arange(n_qslots, n_qslots + tq)
            n_qslots += tq
            q_rounds.append(list(range(q_off, q_off + tq)))
        # Keys: a tile owns its rows when none of them is owned yet; otherwise it writes a slot.
        kd = torch.cat([_descriptors(seg.k_tiles), torch.full((tk, 1), -1, dtype=torch.int64)], 1)
        for i in range(tk):
            rows = seg.k_tiles[i]
            rows = rows[rows >= 0]
            if not bool(owned[rows].any()):
                owned[rows] = True
                continue
            kd[i, 4] = n_kslots
            n_kslots += 1
            for rnd, used in zip(k_rounds, k_round_sets):
                if not bool(used[rows].any()):
                    break
            else:
                rnd, used = [], torch.zeros(n, dtype=torch.bool)
                k_rounds.append(rnd)
                k_round_sets.append(used)
            rnd.append(k_off + i)
            used[rows] = True
        qdesc.append(qd)
        qpos.append(seg.q_tiles)
        kdesc.append(kd)
        kpos.append(seg.k_tiles)
        # Visits with their mask codes.
        sel = seg.layout >= 0
        t = torch.arange(tq)[:, None].expand_as(seg.layout)[sel]
        kt = seg.layout[sel]
        ep = seg.entry_pred[sel]
        code = torch.full_like(ep, FULL)
        for p in range(len(seg.preds)):
            m = torch.nonzero(ep == p).squeeze(1)
            if m.numel():
                code[m] = bank.codes(seg, t[m], kt[m], p)
        vis_t.append(t + q_off)
        vis_k.append(kt + k_off)
        vis_m.append(code)
        q_off += tq
        k_off += tk
    vt, vk, vm = torch.cat(vis_t), torch.cat(vis_k), torch.cat(vis_m)
    qd_all, kd_all = torch.cat(qdesc), torch.cat(kdesc)
    # Five kinds of visit, in this order in each list: fast (no mask, both tiles' rows a
    # progression: the key loads depend on one level of table loads only, which Triton's pipeliner
    # overlaps), first those whose visited tile is contiguous and 16-aligned (vector loads), then the
    # others; causal and mask-tile (progressions under that element mask; no row checks); gathered
    # (a tile with padding or rows from the position table: the general path).
    ap = (qd_all[vt, 0] >= 0) & (kd_all[vk, 0] >= 0)
    kind = torch.where(ap, torch.where(vm == FULL, 1, torch.where(vm == CAUSAL, 2, 3)), 4)
    shift = plan.block.bit_length() - 1

    def contiguous(desc):
        return (desc[:, 0] >= 0) & (desc[:, 0] % 16 == 0) & (desc[:, 1] == shift) & (desc[:, 2] == 1)

    f_kind = torch.where((kind == 1) & contiguous(kd_all)[vk], 0, kind)  # forward lists visit key tiles
    b_kind = torch.where((kind == 1) & contiguous(qd_all)[vt], 0, kind)  # backward lists, query tiles

    def csr(major, minor, count, kind):
        key = (major * 5 + kind) * (q_off + k_off + 1) + minor
        order = torch.argsort(key, stable=True)
        ptr = torch.zeros(count + 1, dtype=torch.int64)
        ptr[1:] = torch.cumsum(torch.bincount(major, minlength=count), 0)
        ends = [torch.bincount(major[kind <= c], minlength=count) for c in range(4)]
        return torch.stack([minor[order], vm[order]], 1), ptr, torch.stack(ends, 1)

    fvis, fptr, fsplit = csr(vt, vk, q_off, f_kind)
    bvis, bptr, bsplit = csr(vk, vt, k_off, b_kind)
    return _PlanTables(
        qd_all, torch.cat(qpos), kd_all, torch.cat(kpos), fvis, fptr, fsplit,
        bvis, bptr, bsplit, bank.stacked(plan.block), q_rounds, k_rounds, n_qslots, n_kslots,
        not bool(owned.all()),
    )


@dataclass(frozen=True, eq=False)
class KernelTables:
    """Device tables for a list of per-head plans sharing (n, block); built once, cached."""

    n: int
    block: int
    heads: int
    qdesc: torch.Tensor  # (TQ, 5) int32
    qpos: torch.Tensor  # (TQ, B) int32
    kdesc: torch.Tensor
    kpos: torch.Tensor
    fvis: torch.Tensor  # (V, 6) int32: key tile, mask code, key tile descriptor (4)
    fptr: torch.Tensor
    fsplit: torch.Tensor  # (TQ, 4) int32
    bvis: torch.Tensor  # (V, 6) int32: query tile, mask code, query tile descriptor (4)
    bptr: torch.Tensor
    bsplit: torch.Tensor
    masks: torch.Tensor  # (M, 2, B, W) int64: element masks as bit words (column c: bit c % 64 of
    # word c // 64); [m, 0] rows = queries, [m, 1] transposed (rows = keys)
    fwd_items: torch.Tensor  # (I, 2) int32: head, query tile
    bwd_items: torch.Tensor  # (J, 3) int32: head, tile, kind (0: dK/dV of a key tile, 1: dQ)
    q_round_items: tuple  # per round: (I, 2) int32 (head, query tile) of slot tiles
    k_round_items: tuple
    n_qslots: int
    n_kslots: int
    zero_dkv: bool
    long_walk: bool  # mean visits per query tile >= LONG_WALK: deeper software pipelines
    plans: tuple = ()  # the per-head plans (their patterns give the forward's own tables)

    @functools.cached_property
    def fwd_tables(self) -> KernelTables:
        """The tables the forward runs on: these, or for long walks the same patterns' plans at
        ``FWD_BLOCK_LONG[block]`` (built on first use)."""
        return self._long_walk_tables(FWD_BLOCK_LONG)

    @functools.cached_property
    def bwd_tables(self) -> KernelTables:
        """The tables the backward runs on: these, or for long walks the same patterns' plans at
        ``BWD_BLOCK_LONG[block]`` (the forward's tables when the tile sizes agree: both come from
        the cache of :func:`kernel_tables`)."""
        return self._long_walk_tables(BWD_BLOCK_LONG)

    def _long_walk_tables(self, blocks: dict[int, int]) -> KernelTables:
        block = blocks.get(self.block) if self.long_walk else None
        if not block or block == self.block or any(p.pattern is None for p in self.plans):
            return self
        device = self.qdesc.device
        return kernel_tables([p.pattern.plan(self.n, block, device) for p in self.plans], device)

    @functools.cached_property
    def fwd_static(self) -> tuple:
        """The forward kernel's table arguments (one tuple object: launchers key it once)."""
        return (self.qdesc, self.qpos, self.kpos, self.fvis, self.fptr, self.fsplit, self.masks, self.fwd_items)

    @functools.cached_property
    def bwd_static(self) -> tuple:
        return (self.qdesc, self.qpos, self.kdesc, self.kpos, self.fvis, self.fptr, self.fsplit,
                self.bvis, self.bptr, self.bsplit, self.masks, self.bwd_items)

    @functools.cached_property
    def bwd_static_atomic(self) -> tuple:
        """As :attr:`bwd_static`, the work list holding the dK/dV programs only (atomic dQ)."""
        items = self.bwd_items[self.bwd_items[:, 2] == 0].contiguous()
        return (*self.bwd_static[:-1], items)


def _combine(plans: list[BlockPlan], device) -> KernelTables:
    distinct: list[BlockPlan] = []
    for p in plans:
        if not any(p is d for d in distinct):
            distinct.append(p)
    parts = [_plan_tables_cached(p) for p in distinct]
    q_off = k_off = m_off = qs_off = ks_off = 0
    acc: dict[str, list] = {k: [] for k in ("qdesc", "qpos", "kdesc", "kpos", "fvis", "bvis", "fptr",
                                             "bptr", "fsplit", "bsplit", "masks")}
    offsets = []
    v_f = v_b = 0
    for pt in parts:
        qd, kd = pt.qdesc.clone(), pt.kdesc.clone()
        qd[:, 4] = torch.where(qd[:, 4] >= 0, qd[:, 4] + qs_off, -1)
        kd[:, 4] = torch.where(kd[:, 4] >= 0, kd[:, 4] + ks_off, -1)
        fv, bv = pt.fvis.clone(), pt.bvis.clone()
        fv[:, 0] += k_off
        bv[:, 0] += q_off
        fv[:, 1] = torch.where(fv[:, 1] >= 0, fv[:, 1] + m_off, fv[:, 1])
        bv[:, 1] = torch.where(bv[:, 1] >= 0, bv[:, 1] + m_off, bv[:, 1])
        acc["qdesc"].append(qd)
        acc["kdesc"].append(kd)
        acc["qpos"].append(pt.qpos)
        acc["kpos"].append(pt.kpos)
        acc["fvis"].append(fv)
        acc["bvis"].append(bv)
        acc["fptr"].append(pt.fptr[:-1] + v_f)
        acc["bptr"].append(pt.bptr[:-1] + v_b)
        acc["fsplit"].append(pt.fsplit)
        acc["bsplit"].append(pt.bsplit)
        acc["masks"].append(pt.masks)
        offsets.append((q_off, k_off, pt))
        q_off += pt.qdesc.shape[0]
        k_off += pt.kdesc.shape[0]
        m_off += pt.masks.shape[0]
        qs_off += pt.n_qslots
        ks_off += pt.n_kslots
        v_f += pt.fvis.shape[0]
        v_b += pt.bvis.shape[0]
    cat = {k: torch.cat(v) if v else torch.zeros(0, dtype=torch.int64) for k, v in acc.items()}
    fptr = torch.cat([cat["fptr"], torch.tensor([v_f])])
    bptr = torch.cat([cat["bptr"], torch.tensor([v_b])])
    qdesc, kdesc = cat["qdesc"], cat["kdesc"]
    fvis = torch.cat([cat["fvis"], kdesc[cat["fvis"][:, 0], :4]], 1)
    bvis = torch.cat([cat["bvis"], qdesc[cat["bvis"][:, 0], :4]], 1)
    blk = distinct[0].block
    masks = cat["masks"] if m_off else torch.zeros(1, blk, blk, dtype=torch.bool)
    masks = _bit_words(torch.stack([masks, masks.transpose(1, 2)], 1))
    # Work lists, longest walks first (they finish last otherwise).
    fwd, bwd, qr, kr = [], [], {}, {}
    fwork = fptr[1:] - fptr[:-1]
    bwork = bptr[1:] - bptr[:-1]
    for h, p in enumerate(plans):
        q0, k0, pt = next(o for o in offsets if o[2] is _plan_tables_cached(p))
        tq, tk = pt.qdesc.shape[0], pt.kdesc.shape[0]
        tiles_q = torch.arange(q0, q0 + tq)
        tiles_k = torch.arange(k0, k0 + tk)
        fwd.append(torch.stack([torch.full_like(tiles_q, h), tiles_q, fwork[tiles_q]], 1))
        bwd.append(torch.stack([torch.full_like(tiles_k, h), tiles_k, torch.zeros_like(tiles_k),
                                bwork[tiles_k] * 4], 1))
        bwd.append(torch.stack([torch.full_like(tiles_q, h), tiles_q, torch.ones_like(tiles_q),
                                fwork[tiles_q] * 3], 1))
        for i, rnd in enumerate(pt.q_rounds):
            qr.setdefault(i, []).extend((h, q0 + t) for t in rnd)
        for i, rnd in enumerate(pt.k_rounds):
            kr.setdefault(i, []).extend((h, k0 + t) for t in rnd)
    fwd_items = torch.cat(fwd)
    bwd_items = torch.cat(bwd)
    long_walk = bool(fwd_items.shape[0]) and float(fwd_items[:, 2].float().mean()) >= LONG_WALK
    if long_walk or SHORT_WALK_ORDER == "longest":
        fwd_items = fwd_items[torch.argsort(-fwd_items[:, 2], stable=True)]
        bwd_items = bwd_items[torch.argsort(-bwd_items[:, 3], stable=True)]
    else:  # by head and tile; a tile's dK/dV and dQ programs next to each other
        kinds = bwd_items[:, 2]
        rank = torch.empty_like(kinds)  # place among the items of its kind
        for c in (0, 1):
            rank[kinds == c] = torch.arange(int((kinds == c).sum()))
        bwd_items = bwd_items[torch.argsort(rank * 2 + kinds, stable=True)]
    fwd_items, bwd_items = fwd_items[:, :2], bwd_items[:, :3]

    def dev(x):
        return x.to(torch.int32).contiguous().to(device)

    return KernelTables(
        n=distinct[0].n, block=distinct[0].block, heads=len(plans),
        qdesc=dev(qdesc), qpos=dev(cat["qpos"]), kdesc=dev(kdesc), kpos=dev(cat["kpos"]),
        fvis=dev(fvis), fptr=dev(fptr), fsplit=dev(cat["fsplit"]),
        bvis=dev(bvis), bptr=dev(bptr), bsplit=dev(cat["bsplit"]),
        masks=masks.contiguous().to(device),
        fwd_items=dev(fwd_items), bwd_items=dev(bwd_items),
        q_round_items=tuple(dev(torch.tensor(qr[i])) for i in sorted(qr)),
        k_round_items=tuple(dev(torch.tensor(kr[i])) for i in sorted(kr)),
        n_qslots=qs_off, n_kslots=ks_off, zero_dkv=any(pt.zero_dkv for pt in parts),
        long_walk=long_walk, plans=tuple(plans),
    )


def _bit_words(masks: torch.Tensor) -> torch.Tensor:
    """(..., B, B) bool -> (..., B, max(1, B // 64)) int64, column c at bit c % 64 of word c // 64."""
    b = masks.shape[-1]
    w = max(1, b // 64)
    cols = masks.reshape(*masks.shape[:-1], w, b // w).to(torch.int64)
    return (cols << torch.arange(b // w, dtype=torch.int64)).sum(-1)


def _plan_tables_cached(plan: BlockPlan) -> _PlanTables:
    pt = plan.__dict__.get("_triton_tables")
    if pt is None:
        pt = _plan_tables(plan)
        object.__setattr__(plan, "_triton_tables", pt)
    return pt


def kernel_tables(plans: list[BlockPlan], device) -> KernelTables:
    """The device tables for per-head ``plans`` (cached on the first plan, keyed by the list)."""
    first = plans[0]
    cache = first.__dict__.get("_triton_combined")
    if cache is None:
        cache = {}
        object.__setattr__(first, "_triton_combined", cache)
    key = (tuple(map(id, plans)), device)  # per call: cheap; ids checked against the kept plans
    hit = cache.get(key)
    if hit is None or not all(map(operator.is_, hit[0], plans)):
        hit = (list(plans), _combine(list(plans), device))
        cache[key] = hit
    return hit[1]


# ---------------------------------------------------------------------------------------------
# 2-4. Kernels (defined lazily: Triton is imported on first use)
# ---------------------------------------------------------------------------------------------

# Triton versions whose low-level launch this module calls directly (read from their
# runtime/jit.py and compiler/compiler.py): ``CompiledKernel.run(grid_x, grid_y, grid_z, stream,
# function, packed_metadata, launch_metadata, enter_hook, exit_hook, *all_arguments)``, arguments
# in signature order, constexprs included. Other versions always take ``kernel[grid](...)``.
DIRECT_LAUNCH_VERSIONS = ((3, 6),)
DIRECT_LAUNCH = True  # set False to launch every call through Triton's binder (benchmarks compare)

_INT64 = (-(2**63), 2**63)


def spec_key(args) -> tuple:
    """What Triton specializes a compiled kernel on, for the non-constexpr ``args`` of one launch.

    Per argument: a tensor -> (dtype, data pointer 16-byte aligned); a bool -> ("i1", value); an
    int -> (integer type by range, == 1, divisible by 16); a float -> "fp"; None -> None. Anything
    else (not expected here) by type and value. Two launches with equal keys (and equal constexprs,
    warps, stages and device) run the same compiled kernel. The key is at least as fine as Triton's
    own specialization, never coarser.
    """
    return _spec(args)[0]


def _spec(args) -> tuple[tuple, tuple]:
    """(:func:`spec_key` of ``args``, ``args`` with every tensor replaced by its data pointer).

    The compiled kernel's launcher takes an int for a pointer argument as it is; a tensor it asks
    for ``data_ptr()`` and checks with the driver (``cuPointerGetAttribute``), per argument and per
    launch. Passing the pointers read here for the alignment check skips both.
    """
    key = []
    flat = []
    add = key.append
    put = flat.append
    tensor = torch.Tensor
    for a in args:  # one loop, no call per argument: this runs on every launch
        t = type(a)
        if t is int:
            kind = "i32" if -2147483648 <= a < 2147483648 else "i64" if _INT64[0] <= a < _INT64[1] else "u64"
            add((kind, a == 1, a % 16 == 0))
            put(a)
        elif t is float:
            add("fp")
            put(a)
        elif isinstance(a, tensor):
            ptr = a.data_ptr()
            add((a.dtype, ptr % 16 == 0))
            put(ptr)
        else:
            add(_other_key(a))
            put(a)
    return tuple(key), tuple(flat)


def _other_key(a):
    if type(a) is bool:
        return ("i1", a)
    if a is None:
        return None
    if isinstance(a, int):  # int subclasses other than bool
        return spec_key((int(a),))[0]
    if isinstance(a, float):
        return "fp"
    return (type(a).__name__, a)


def _direct_launch_supported(triton_module) -> tuple[bool, str]:
    """(usable, why not) for the direct launch path with this Triton."""
    import os

    if os.environ.get("TRITON_INTERPRET") == "1":
        return False, "TRITON_INTERPRET=1"
    try:
        version = tuple(int(x) for x in triton_module.__version__.split(".")[:2])
    except ValueError:
        return False, f"unparsed triton version {triton_module.__version__!r}"
    if version not in DIRECT_LAUNCH_VERSIONS:
        return False, f"triton {triton_module.__version__} is not among the versions coded for {DIRECT_LAUNCH_VERSIONS}"
    try:
        from triton.compiler.compiler import CompiledKernel
        from triton.knobs import runtime
        from triton.runtime.driver import driver
    except ImportError as e:
        return False, f"triton internals moved ({e})"
    if not (isinstance(getattr(CompiledKernel, "run", None), property) and hasattr(runtime, "launch_enter_hook")
            and hasattr(driver.active, "get_current_stream")):
        return False, "CompiledKernel.run / knobs.runtime hooks / driver stream API differ"
    return True, ""


class _Launcher:
    """Launches one ``@triton.jit`` kernel: ``launcher(grid, args, consts, warps, stages[, maxnreg, static])``.

    The first launch of each specialization goes through Triton (``kernel[grid](*args, *consts,
    ...)``: binding, specialization, cache lookup or compile). Its compiled kernel is kept under
    (constexprs, warps, stages, register cap, device, :func:`spec_key` of ``args`` and of
    ``static``), and later launches with the same key call the compiled kernel's launcher directly,
    skipping Triton's per-call binder, with every tensor passed as its data pointer (no per-argument
    ``data_ptr()`` call and driver check in the launcher). ``consts`` are the kernel's trailing
    constexpr parameters, positional, in signature order; ``static`` the arguments just before them.

    Off (every launch through Triton) under ``TRITON_INTERPRET=1``, for Triton versions other than
    :data:`DIRECT_LAUNCH_VERSIONS`, when ``DIRECT_LAUNCH`` is False, while a launch hook is set (a
    profiler), and for good after any mismatch (logged once).
    """

    state: ClassVar[dict] = {}  # shared by all launchers: "ok" (bool), "reason"; filled on first use

    def __init__(self, fn):
        self.fn = fn
        self.compiled: dict = {}
        self.static_cache: dict = {}  # id(static tuple) -> (tuple, key, pointers)
        self.n_direct = 0
        self.n_triton = 0

    @classmethod
    def _ok(cls) -> bool:
        st = cls.state
        if "ok" not in st:
            import triton

            st["ok"], st["reason"] = _direct_launch_supported(triton)
            if not st["ok"]:
                log.info("direct Triton launches off: %s; launching through kernel[grid]", st["reason"])
            else:
                from triton.knobs import runtime
                from triton.runtime.driver import driver

                st["runtime"], st["stream"] = runtime, driver.active.get_current_stream
        return st["ok"] and DIRECT_LAUNCH

    @classmethod
    def _disable(cls, why: str) -> None:
        cls.state["ok"], cls.state["reason"] = False, why
        log.warning("direct Triton launches off: %s; launching through kernel[grid] from now on", why)

    def _check_signature(self, n_args: int, n_consts: int) -> bool:
        params = getattr(self.fn, "params", None)
        if params is None or len(params) != n_args + n_consts:
            return False
        return all(bool(getattr(p, "is_constexpr", False)) == (i >= n_args) for i, p in enumerate(params))

    def __call__(self, grid: tuple, args: tuple, consts: tuple, num_warps: int, num_stages: int,
                 maxnreg: int | None = None, static: tuple = ()) -> None:
        """``static``: trailing arguments that stay the same across calls (the plan's tables), as one
        tuple object kept by the caller: its key and pointers are computed once per tuple."""
        key = None
        if self._ok():
            st = self.state
            rt = st["runtime"]
            if _hooks_idle(rt.launch_enter_hook) and _hooks_idle(rt.launch_exit_hook):
                device = torch.cuda.current_device()
                dyn_key, flat = _spec(args)
                static_key, static_flat = self._static(static)
                key = (consts, num_warps, num_stages, maxnreg, device, dyn_key, static_key)
                k = self.compiled.get(key)
                if k is not None:
                    try:
                        k.run(*grid, *(1,) * (3 - len(grid)), st["stream"](device), k.function, k.packed_metadata,
                              None, None, None, *flat, *static_flat, *consts)
                        self.n_direct += 1
                        return
                    except Exception as e:  # noqa: BLE001  (any mismatch: fall back for good)
                        self._disable(f"direct launch of {self.fn.__name__} failed ({type(e).__name__}: {e})")
                        key = None
        extra = {} if maxnreg is None else {"maxnreg": maxnreg}
        k = self.fn[grid](*args, *static, *consts, num_warps=num_warps, num_stages=num_stages, **extra)
        self.n_triton += 1
        if key is not None and self._ok():
            usable = all(hasattr(k, a) for a in ("function", "packed_metadata", "run")) and k.function is not None
            if not usable or not self._check_signature(len(args) + len(static), len(consts)):
                self._disable(f"{self.fn.__name__}: compiled kernel or signature not as coded "
                              f"({type(k).__name__}, {len(args) + len(static)} + {len(consts)} arguments)")
            else:
                self.compiled[key] = k

    def _static(self, static: tuple) -> tuple:
        """(key, pointers) of a static argument tuple, cached by the tuple's identity."""
        if not static:
            return (), ()
        hit = self.static_cache.get(id(static))
        if hit is None or hit[0] is not static:
            if len(self.static_cache) > 64:
                self.static_cache.clear()
            hit = self.static_cache[id(static)] = (static, *_spec(static))
        return hit[1], hit[2]


def _hooks_idle(hook) -> bool:
    """No launch hook set (triton 3.6: an empty HookChain; older: None)."""
    if hook is None:
        return True
    calls = getattr(hook, "calls", None)
    return isinstance(calls, list) and not calls


class _Kernels:
    """The kernels of :mod:`.triton_kernels`, each behind a :class:`_Launcher`."""

    def __init__(self, module):
        self.module = module
        for name in ("fwd_kernel", "merge_kernel", "delta_kernel", "bwd_kernel", "add_slots_kernel"):
            setattr(self, name, _Launcher(getattr(module, name)))

    def stats(self) -> dict:
        """Per kernel: launches through Triton, direct launches, cached specializations."""
        return {name: {"triton": ln.n_triton, "direct": ln.n_direct, "cached": len(ln.compiled)}
                for name, ln in vars(self).items() if isinstance(ln, _Launcher)}


_K = None


def _kernels() -> _Kernels:
    global _K
    if _K is None:
        from . import triton_kernels

        _K = _Kernels(triton_kernels)
    return _K


def launch_stats() -> dict:
    """Launch counts per kernel (direct vs through Triton) and the direct path's state."""
    if _K is None:
        return {}
    st = _Launcher.state
    return {"direct_ok": bool(st.get("ok")) and DIRECT_LAUNCH, "reason": st.get("reason", ""), **_K.stats()}


def _config(kind: str, tabs: KernelTables, head_dim: int, long_walk: bool) -> tuple[int, int, int | None]:
    """(num_warps, num_stages, maxnreg) for a kernel over these tables (``long_walk``: of the plans'
    own tables, which the derived tables of another tile size keep)."""
    warps, long_stages, short_stages = CONFIGS.get((kind, tabs.block), (4, 2, 1))
    cap = MAXNREG.get((kind, tabs.block)) if head_dim <= 64 else None
    return warps, long_stages if long_walk else short_stages, cap


def _strides3(x: torch.Tensor) -> tuple[int, int, int]:
    return x.stride()[:3]


def _last_contiguous(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


def _forward(q, k, v, tabs: KernelTables, scale: float):
    kern = _kernels()
    bsz, h, n, d = q.shape
    dv = v.shape[-1]
    blk = tabs.block
    o = torch.empty(bsz, h, n, dv, device=q.device, dtype=q.dtype)
    lse = torch.empty(bsz, h, n, device=q.device, dtype=torch.float32)
    rows = max(tabs.n_qslots, 1) * blk
    if tabs.n_qslots:
        o_s = torch.empty(bsz, h, rows, dv, device=q.device, dtype=torch.float32)
        lse_s = torch.empty(bsz, h, rows, device=q.device, dtype=torch.float32)
    else:
        o_s, lse_s = o, lse  # never written (no slot tiles)
    warps, stages, maxnreg = _config("fwd", tabs, max(d, dv), tabs.long_walk)
    grid = (tabs.fwd_items.shape[0], bsz)
    kern.fwd_kernel(
        grid,
        (q, k, v, o, lse, o_s, lse_s,
         *_strides3(q), *_strides3(k), *_strides3(v),
         h, n, rows, scale * LOG2E),
        (blk, d, dv, _pow2(d), _pow2(dv), FWD_STEPS.get((blk, tabs.long_walk), blk)),  # BLOCK D DV BD BDV KSUB
        warps, stages, maxnreg, tabs.fwd_static,
    )
    for items in tabs.q_round_items:
        kern.merge_kernel(
            (items.shape[0], bsz),
            (o, lse, o_s, lse_s, h, n, rows, tabs.qdesc, tabs.qpos, items),
            (blk, dv, _pow2(dv)),  # BLOCK, DV, BDV
            4, 3,
        )
    return o, lse


def _backward(q, k, v, o, lse, do, tabs: KernelTables, scale: float):
    """dQ, dK, dV for the plans' tables ``tabs`` (run on ``tabs.bwd_tables``)."""
    kern = _kernels()
    bsz, h, n, d = q.shape
    dv = v.shape[-1]
    long_walk = tabs.long_walk
    tabs = tabs.bwd_tables
    blk = tabs.block
    # Short walks (each query tile visited by few key tiles): rowsum(dO * O) is computed inside the
    # backward programs, one launch less. Long walks (the fixed pattern's summary columns) would
    # recompute it for every visit, so they keep the pre-pass.
    inline_delta = INLINE_DELTA and not long_walk and bsz * h * n < INLINE_DELTA_MAX_ROWS
    if inline_delta:
        delta = lse  # not read
    else:
        delta = torch.empty_like(lse)
        kern.delta_kernel(
            (triton_cdiv(n, 128), bsz * h), (o, do, delta, h, n, *_strides3(do)), (128, dv, _pow2(dv)), 4, 3,
        )
    atomic_dq = ATOMIC_DQ_LONG and long_walk
    if atomic_dq:
        dq = torch.zeros(bsz, h, n, d, device=q.device, dtype=torch.float32)
    else:
        dq = torch.empty(bsz, h, n, d, device=q.device, dtype=q.dtype)
    alloc = torch.zeros if tabs.zero_dkv else torch.empty
    dk = alloc(bsz, h, n, d, device=q.device, dtype=k.dtype)
    dvv = alloc(bsz, h, n, dv, device=q.device, dtype=v.dtype)
    qrows = max(tabs.n_qslots, 1) * blk
    krows = max(tabs.n_kslots, 1) * blk
    dq_s = torch.empty(bsz, h, qrows, d, device=q.device, dtype=torch.float32) if tabs.n_qslots and not atomic_dq else dq
    if tabs.n_kslots:
        dk_s = torch.empty(bsz, h, krows, d, device=q.device, dtype=torch.float32)
        dv_s = torch.empty(bsz, h, krows, dv, device=q.device, dtype=torch.float32)
    else:
        dk_s, dv_s = dk, dvv
    args = (q, k, v, do, o, dq, dk, dvv, lse, delta, dq_s, dk_s, dv_s,
            *_strides3(q), *_strides3(k), *_strides3(v), *_strides3(do),
            h, n, qrows, krows, scale, scale * LOG2E)
    qsub, ksub = BWD_STEPS.get((blk, long_walk), (blk, blk))
    consts = (blk, d, dv, _pow2(d), _pow2(dv), inline_delta, qsub, ksub, atomic_dq)  # ... QSUB KSUB ATOMIC_DQ
    warps, stages, maxnreg = _config("bwd", tabs, max(d, dv), long_walk)
    static = tabs.bwd_static_atomic if atomic_dq else tabs.bwd_static
    kern.bwd_kernel((static[-1].shape[0], bsz), args, consts, warps, stages, maxnreg, static)
    if atomic_dq:
        dq = dq.to(q.dtype)  # every segment added into the same float32 rows: no dQ slots
    else:
        for items in tabs.q_round_items:  # BLOCK, D, BD, DV, BDV, TWO
            kern.add_slots_kernel(
                (items.shape[0], bsz), (dq, dq_s, dq, dq_s, h, n, qrows, tabs.qdesc, tabs.qpos, items),
                (blk, d, _pow2(d), d, _pow2(d), False), 4, 3,
            )
    for items in tabs.k_round_items:
        kern.add_slots_kernel(
            (items.shape[0], bsz), (dk, dk_s, dvv, dv_s, h, n, krows, tabs.kdesc, tabs.kpos, items),
            (blk, d, _pow2(d), dv, _pow2(dv), True), 4, 3,
        )
    return dq, dk, dvv


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _pow2(x: int) -> int:
    return max(16, 1 << (int(x) - 1).bit_length())


def forward_tables(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tabs: KernelTables, scale: float):
    """(out, lse) over prepared :func:`kernel_tables`: out (batch, heads, seq, head_dim_v) in q's
    dtype, lse (batch, heads, seq) float32. q, k, v may be strided views (last dim contiguous)."""
    if q.shape[1] != tabs.heads or q.shape[2] != tabs.n:
        raise ValueError(f"tables built for {tabs.heads} heads and n={tabs.n}, inputs have "
                         f"{q.shape[1]} heads and n={q.shape[2]}")
    _check_tensors(q, v)
    q, k, v = (_last_contiguous(x) for x in (q, k, v))
    return _forward(q, k, v, tabs.fwd_tables, scale)


def backward_tables(q, k, v, o, lse, do, tabs: KernelTables, scale: float):
    """dQ, dK, dV of :func:`forward_tables` from its output and log-sum-exp."""
    q, k, v, do = (_last_contiguous(x) for x in (q, k, v, do))
    return _backward(q, k, v, o, lse, do, tabs, scale)


def forward(q, k, v, plan: BlockPlan, scale: float):
    """:func:`forward_tables` for one plan shared by the heads (its tables are cached)."""
    return forward_tables(q, k, v, kernel_tables([plan] * q.shape[1], q.device), scale)


def backward(q, k, v, o, lse, do, plan: BlockPlan, scale: float):
    """:func:`backward_tables` for one plan shared by the heads."""
    return backward_tables(q, k, v, o, lse, do, kernel_tables([plan] * q.shape[1], q.device), scale)


@dataclass(frozen=True)
class _TablesRoute:
    """Prepared tables as a route for :class:`~sparse_transformer.kernels.op.RouteFunction`."""

    tabs: KernelTables

    def forward(self, q, k, v, scale: float):
        return forward_tables(q, k, v, self.tabs, scale)

    def backward(self, q, k, v, o, lse, do, scale: float):
        return backward_tables(q, k, v, o, lse, do, self.tabs, scale)


_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def _check_tensors(q, v) -> None:
    if q.dtype not in _DTYPES:
        raise ValueError(f"the triton backend takes float16, bfloat16 or float32, got {q.dtype}")
    d, dv = q.shape[-1], v.shape[-1]
    if d > 256 or dv > 256:
        raise ValueError(f"the triton backend supports head dims up to 256, got {d} and {dv}")


def _check_plans(n: int, plans: list[BlockPlan]) -> None:
    for p in plans:
        if p.n != n:
            raise ValueError(f"plan built for n={p.n}, inputs have n={n}")
        b = p.block
        if b < 16 or b & (b - 1):
            raise ValueError(f"the triton backend needs a power-of-two plan block >= 16, got {b}")


def attention_tables(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tabs: KernelTables, scale: float):
    """Differentiable attention over prepared :func:`kernel_tables` (checks the tensors against
    the tables, then :func:`forward_tables`; the backward is :func:`backward_tables`)."""
    from .op import RouteFunction

    return RouteFunction.apply(q, k, v, _TablesRoute(tabs), scale)


def attention_multihead(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plans: list[BlockPlan], scale: float | None = None
) -> torch.Tensor:
    """Block-sparse attention with one plan per head, all heads in the same launches.

    q, k: (batch, heads, seq, head_dim); v: (batch, heads, seq, head_dim_v); ``plans``: ``heads``
    plans of one sequence length (``pattern.plan(seq, block, device)``). Returns (batch, heads, seq,
    head_dim_v) in q's dtype; differentiable in q, k and v. float16, bfloat16, float32 (tf32 dots).
    """
    if len(plans) != q.shape[1]:
        raise ValueError(f"got {len(plans)} plans for {q.shape[1]} heads")
    _check_tensors(q, v)
    _check_plans(q.shape[2], plans)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    blocks = sorted({p.block for p in plans})
    if len(blocks) > 1:  # one launch family per tile size
        out = q.new_empty(*q.shape[:3], v.shape[-1])
        parts = []
        for b in blocks:
            idx = [h for h, p in enumerate(plans) if p.block == b]
            sel = torch.tensor(idx, device=q.device)
            parts.append((sel, attention_multihead(q[:, sel], k[:, sel], v[:, sel], [plans[h] for h in idx], scale)))
        return out.index_copy(1, torch.cat([s for s, _ in parts]), torch.cat([o for _, o in parts], 1))
    return attention_tables(q, k, v, kernel_tables(plans, q.device), scale)


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, plan: BlockPlan, scale: float | None = None
) -> torch.Tensor:
    """Block-sparse attention for one plan shared by all heads.

    q, k: (batch, heads, seq, head_dim); v: (batch, heads, seq, head_dim_v); ``plan`` from
    ``pattern.plan(seq, block, device)`` (block a power of two >= 16). Returns (batch, heads, seq,
    head_dim_v) in q's dtype; differentiable in q, k and v. float16, bfloat16, float32 (tf32 dots).
    """
    return attention_multihead(q, k, v, [plan] * q.shape[1], scale)
