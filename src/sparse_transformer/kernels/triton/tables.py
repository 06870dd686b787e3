"""Block plans -> kernel tables (host only: plain PyTorch, no Triton; tested on the CPU): tile
descriptors, CSR visit lists in five kinds with mask codes, the mask bank, work lists and rounds.
How a plan becomes work: ``docs/kernels.md`` ("Plan -> tables", "Segments and rounds").
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass

import torch

from ...patterns import BlockPlan
from .policy import LaunchPolicy, default_policy

__all__ = ["CAUSAL", "FULL", "VISIT_KINDS", "KernelTables", "kernel_tables"]

FULL, CAUSAL = -1, -2  # visit mask codes besides mask-tile ids >= 0
VISIT_KINDS = ("contiguous", "fast", "causal", "mask", "gathered")  # the order of each visit list


def _descriptors(tiles: torch.Tensor) -> torch.Tensor:
    """(T, 4) int64 (start, shift, step_in, step_out) of each tile; start = -1 where no progression fits."""
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
        out[ok] = torch.stack([start, torch.full_like(start, shift), step_in, step_out], 1)[ok]
        done |= ok
    return out


class _MaskBank:
    """The distinct element masks of a plan's partial visits, each stored once; a visit's mask code is
    ``CAUSAL``, ``FULL`` (only padding masked) or its mask's id (``docs/kernels.md``, "Mask bank")."""

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
        return torch.stack(self.tiles) if self.tiles else torch.zeros(0, block, block, dtype=torch.bool)


@dataclass
class _PlanTables:
    """One plan's tables on the CPU (int64), local ids; concatenated by :func:`_combine`."""

    qdesc: torch.Tensor  # (TQ, 5): start, shift, step_in, step_out, round
    qpos: torch.Tensor  # (TQ, B)
    qadd: torch.Tensor  # (TQ, B) bool: the row holds an earlier round's result (accumulate)
    kdesc: torch.Tensor  # (TK, 5)
    kpos: torch.Tensor  # (TK, B)
    kadd: torch.Tensor  # (TK, B)
    fvis: torch.Tensor  # (V, 2): key tile, mask code; by query tile, then kind (see _plan_tables)
    fptr: torch.Tensor  # (TQ + 1,)
    fsplit: torch.Tensor  # (TQ, 4): visits before the other fast ones, the causal, mask-tile, gathered ones
    bvis: torch.Tensor  # (V, 2): query tile, mask code; by key tile, the same kinds
    bptr: torch.Tensor  # (TK + 1,)
    bsplit: torch.Tensor  # (TK, 4)
    masks: torch.Tensor  # (M, B, B) bool: the distinct element masks (mask codes >= 0 index them)
    zero_dkv: bool  # some key position is in no key tile: dK/dV start from zeros


def _rounds(tiles: torch.Tensor, first: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(round of each tile, (T, B) bool: the row was written in an earlier round). Tiles are taken in
    the order ``first``, each into the first round holding none of its rows."""
    rnd = torch.zeros(tiles.shape[0], dtype=torch.int64)
    rows = tiles[tiles >= 0]
    if rows.numel() == 0 or int(torch.bincount(rows, minlength=n).max()) <= 1:  # no shared row: one round
        return rnd, torch.zeros(tiles.shape, dtype=torch.bool)
    used: list[torch.Tensor] = []
    for i in first.tolist():
        rows = tiles[i][tiles[i] >= 0]
        r = next((r for r, u in enumerate(used) if not bool(u[rows].any())), len(used))
        if r == len(used):
            used.append(torch.zeros(n, dtype=torch.bool))
        used[r][rows] = True
        rnd[i] = r
    written = torch.zeros(n + 1, dtype=torch.bool)  # index n: padding rows (-1)
    idx = torch.where(tiles >= 0, tiles, n)
    add = torch.zeros(tiles.shape, dtype=torch.bool)
    for r in range(len(used)):
        sel = rnd == r
        add[sel] = written[idx[sel]]
        written[:n] |= used[r]
    return rnd, add & (tiles >= 0)


def _plan_tables(plan: BlockPlan) -> _PlanTables:
    n = plan.n
    qpos, kpos, vis_t, vis_k, vis_m = [], [], [], [], []
    bank = _MaskBank()
    q_off = k_off = 0
    for seg in plan.segments:
        seg = seg.to("cpu")
        tq, tk = seg.q_tiles.shape[0], seg.k_tiles.shape[0]
        qpos.append(seg.q_tiles)
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
    qp_all, kp_all = torch.cat(qpos), torch.cat(kpos)
    qd_all, kd_all = _descriptors(qp_all), _descriptors(kp_all)
    # Rounds (segments share positions): query tiles in segment order, key tiles longest walk first.
    q_round, qadd = _rounds(qp_all, torch.arange(q_off), n)
    k_round, kadd = _rounds(kp_all, torch.argsort(-torch.bincount(vk, minlength=k_off), stable=True), n)
    qd_all = torch.cat([qd_all, q_round[:, None]], 1)
    kd_all = torch.cat([kd_all, k_round[:, None]], 1)
    covered = torch.zeros(n + 1, dtype=torch.bool)
    covered[torch.where(kp_all >= 0, kp_all, n)] = True
    # The five visit kinds (VISIT_KINDS), in this order in each list.
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
        qd_all, qp_all, qadd, kd_all, kp_all, kadd, fvis, fptr, fsplit, bvis, bptr, bsplit,
        bank.stacked(plan.block), not bool(covered[:n].all()),
    )


@dataclass(frozen=True, eq=False)
class KernelTables:
    """Device tables for per-head plans sharing (n, block), under one launch policy (:func:`kernel_tables`)."""

    n: int
    block: int
    heads: int
    qdesc: torch.Tensor  # (TQ, 5) int32
    qpos: torch.Tensor  # (TQ, B) int32
    kdesc: torch.Tensor
    kpos: torch.Tensor
    fvis: torch.Tensor  # (V, 6) int32: key tile, mask code, key tile descriptor (4)
    fptr: torch.Tensor
    fsplit: torch.Tensor  # (TQ, 4) int32: ends of the first four visit kinds
    bvis: torch.Tensor  # (V, 6) int32: query tile, mask code, query tile descriptor (4)
    bptr: torch.Tensor
    bsplit: torch.Tensor
    masks: torch.Tensor  # (M, 2, B, W) int64 bit words of the element masks; [m, 0] rows = queries, [m, 1] keys
    qadd: torch.Tensor  # (TQ, B) int8: row holds an earlier round's result (fold into it)
    kadd: torch.Tensor  # (TK, B) int8
    fwd_rounds: tuple  # per round (launch): (I, 2) int32 work items (head, query tile)
    bwd_rounds: tuple  # per round: (J, 3) int32 (head, tile, kind: 0 dK/dV of a key tile, 1 dQ)
    zero_dkv: bool  # some key position is in no key tile: dK/dV start from zeros
    long_walk: bool  # mean visits per query tile >= policy.long_walk
    policy: LaunchPolicy
    plans: tuple = ()  # the per-head plans (their patterns give the forward's own tables)

    @functools.cached_property
    def fwd_tables(self) -> KernelTables:
        """The tables the forward runs on: these, or for long walks the same patterns' plans at
        ``policy.fwd_block_long[block]`` (built on first use; the backward always runs on these)."""
        block = self.policy.fwd_block_long.get(self.block) if self.long_walk else None
        if not block or block == self.block or any(p.pattern is None for p in self.plans):
            return self
        device = self.qdesc.device
        return kernel_tables([p.pattern.plan(self.n, block, device) for p in self.plans], device, self.policy)

    @functools.cached_property
    def fwd_static(self) -> tuple:
        """Per round, the forward kernel's table arguments (one tuple object each: launchers key it once)."""
        return tuple((self.qdesc, self.qpos, self.qadd, self.kpos, self.fvis, self.fptr, self.fsplit, self.masks,
                      items) for items in self.fwd_rounds)

    @functools.cached_property
    def bwd_static(self) -> tuple:
        return tuple((self.qdesc, self.qpos, self.qadd, self.kdesc, self.kpos, self.kadd, self.fvis, self.fptr,
                      self.fsplit, self.bvis, self.bptr, self.bsplit, self.masks, items) for items in self.bwd_rounds)


def _combine(plans: list[BlockPlan], device, policy: LaunchPolicy) -> KernelTables:
    distinct = list({id(p): p for p in plans}.values())  # each plan object once, in first-seen order
    parts = [_plan_tables_cached(p) for p in distinct]
    cat = {name: torch.cat([getattr(pt, name) for pt in parts])
           for name in ("qdesc", "qpos", "qadd", "kdesc", "kpos", "kadd", "fsplit", "bsplit", "masks")}
    # Per part: where its query tiles, key tiles, masks, forward and backward visits start in the combined tables.
    offsets, end = [], (0, 0, 0, 0, 0)
    for pt in parts:
        offsets.append(end)
        end = tuple(o + len(x) for o, x in zip(end, (pt.qdesc, pt.kdesc, pt.masks, pt.fvis, pt.bvis)))

    def renumber(vis: torch.Tensor, tile_off: int, mask_off: int) -> torch.Tensor:
        """A part's visits (tile, mask code) with its tile and mask-tile ids offset."""
        return torch.stack([vis[:, 0] + tile_off, torch.where(vis[:, 1] >= 0, vis[:, 1] + mask_off, vis[:, 1])], 1)

    fptr = torch.cat([pt.fptr[:-1] + o[3] for pt, o in zip(parts, offsets)] + [torch.tensor([end[3]])])
    bptr = torch.cat([pt.bptr[:-1] + o[4] for pt, o in zip(parts, offsets)] + [torch.tensor([end[4]])])
    fvis = torch.cat([renumber(pt.fvis, o[1], o[2]) for pt, o in zip(parts, offsets)])
    bvis = torch.cat([renumber(pt.bvis, o[0], o[2]) for pt, o in zip(parts, offsets)])
    qdesc, kdesc = cat["qdesc"], cat["kdesc"]
    fvis = torch.cat([fvis, kdesc[fvis[:, 0], :4]], 1)
    bvis = torch.cat([bvis, qdesc[bvis[:, 0], :4]], 1)
    blk = distinct[0].block
    masks = cat["masks"] if end[2] else torch.zeros(1, blk, blk, dtype=torch.bool)
    masks = _bit_words(torch.stack([masks, masks.transpose(1, 2)], 1))
    # Work lists: (head, tile, [kind,] walk length, round) per program, one list per round.
    fwd, bwd = [], []
    fwork, bwork = fptr[1:] - fptr[:-1], bptr[1:] - bptr[:-1]
    for h, p in enumerate(plans):
        i = next(i for i, d in enumerate(distinct) if d is p)
        (q0, k0, *_), pt = offsets[i], parts[i]
        tq, tk = pt.qdesc.shape[0], pt.kdesc.shape[0]
        tiles_q, tiles_k = torch.arange(q0, q0 + tq), torch.arange(k0, k0 + tk)
        head_q, head_k = torch.full_like(tiles_q, h), torch.full_like(tiles_k, h)
        fwd.append(torch.stack([head_q, tiles_q, fwork[tiles_q], qdesc[tiles_q, 4]], 1))
        bwd.append(torch.stack([head_k, tiles_k, torch.zeros_like(tiles_k), bwork[tiles_k] * 4, kdesc[tiles_k, 4]], 1))
        bwd.append(torch.stack([head_q, tiles_q, torch.ones_like(tiles_q), fwork[tiles_q] * 3, qdesc[tiles_q, 4]], 1))
    fwd_items, bwd_items = torch.cat(fwd), torch.cat(bwd)
    long_walk = bool(fwd_items.shape[0]) and float(fwd_items[:, 2].float().mean()) >= policy.long_walk

    def order(items: torch.Tensor, width: int) -> torch.Tensor:
        """One round's items in launch order (column ``width``: the walk length)."""
        if long_walk:  # longest walks first: they would finish last otherwise
            return items[torch.argsort(-items[:, width], stable=True)]
        if width == 2:  # forward: position order as listed
            return items
        # Position order: by head and tile, a tile's dK/dV and dQ programs next to each other.
        kinds = items[:, 2]
        rank = torch.empty_like(kinds)  # place among the items of its kind
        for c in (0, 1):
            rank[kinds == c] = torch.arange(int((kinds == c).sum()))
        return items[torch.argsort(rank * 2 + kinds, stable=True)]

    def rounds(items: torch.Tensor, width: int) -> tuple:
        """Per round, its items' first ``width`` columns, as the kernels read them."""
        return tuple(dev(order(items[items[:, -1] == r], width)[:, :width])
                     for r in range(int(items[:, -1].max()) + 1 if items.shape[0] else 0))

    def dev(x):
        return x.to(torch.int32).contiguous().to(device)

    return KernelTables(
        n=distinct[0].n, block=distinct[0].block, heads=len(plans),
        qdesc=dev(qdesc), qpos=dev(cat["qpos"]), kdesc=dev(kdesc), kpos=dev(cat["kpos"]),
        fvis=dev(fvis), fptr=dev(fptr), fsplit=dev(cat["fsplit"]),
        bvis=dev(bvis), bptr=dev(bptr), bsplit=dev(cat["bsplit"]),
        masks=masks.contiguous().to(device),
        qadd=cat["qadd"].to(torch.int8).contiguous().to(device), kadd=cat["kadd"].to(torch.int8).contiguous().to(device),
        fwd_rounds=rounds(fwd_items, 2), bwd_rounds=rounds(bwd_items, 3),
        zero_dkv=any(pt.zero_dkv for pt in parts), long_walk=long_walk, policy=policy, plans=tuple(plans),
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


def kernel_tables(plans: list[BlockPlan], device, policy: LaunchPolicy | None = None) -> KernelTables:
    """The device tables for per-head ``plans`` under ``policy`` (default: :func:`default_policy`),
    cached on the first plan, keyed by the list and the policy."""
    policy = policy or default_policy()
    first = plans[0]
    cache = first.__dict__.get("_triton_combined")
    if cache is None:
        cache = {}
        object.__setattr__(first, "_triton_combined", cache)
    key = (tuple(map(id, plans)), device, id(policy))  # per call: cheap; ids checked against the kept objects
    hit = cache.get(key)
    if hit is None or hit[1].policy is not policy or not all(map(operator.is_, hit[0], plans)):
        hit = (list(plans), _combine(list(plans), device, policy))
        cache[key] = hit
    return hit[1]
