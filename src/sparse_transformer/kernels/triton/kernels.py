"""The ``@triton.jit`` kernels of the Triton backend (importing this imports Triton): ``fwd_kernel``,
``delta_kernel`` and ``bwd_kernel``, each walk one helper called once per visit kind (a compile-time
parameter). Scores and the saved log-sum-exp are in the log2 domain (``qk_scale = scale * log2(e)``).
Design: ``docs/kernels.md``; table layouts: :mod:`.tables`.
"""

from __future__ import annotations

import triton
import triton.language as tl

# Visit kinds, in the order of each visit list (VISIT_KINDS in tables.py).
CONTIGUOUS = tl.constexpr(0)  # every pair allowed, the visited tile contiguous and 16-aligned
FAST = tl.constexpr(1)  # every pair allowed, both tiles' rows progressions
CAUSAL_TILE = tl.constexpr(2)  # progressions, plain causality
MASK_TILE = tl.constexpr(3)  # progressions under a mask of the plan's bank
GATHERED = tl.constexpr(4)  # padding or position-table rows: the general path

# --- Tile rows and element masks ---


@triton.jit
def _rows_from(start, shift, step_in, step_out, pos_row, c0, R: tl.constexpr):
    """Positions of a tile's rows c0 .. c0+R-1: its descriptor's progression, or its position-table row (start < 0)."""
    offs = c0 + tl.arange(0, R)
    progression = start + (offs >> shift) * step_out + (offs & ((1 << shift) - 1)) * step_in
    gathered = tl.load(pos_row + offs, mask=(offs * 0 + start) < 0, other=-1)
    return tl.where(start >= 0, progression, gathered)


@triton.jit
def _work_item(items, H, WIDTH: tl.constexpr):
    """This program's (batch, head, tile, batch * H + head): batch from grid axis 1, (head, tile) from the work list."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.load(items + WIDTH * pid).to(tl.int64)
    return b, h, tl.load(items + WIDTH * pid + 1), b * H + h


@triton.jit
def _tile_rows(desc, pos, t, BLOCK: tl.constexpr):
    """The rows of the program's own tile ``t`` (descriptor table ``desc``, position table ``pos``)."""
    dp = desc + t * 5
    return _rows_from(tl.load(dp), tl.load(dp + 1), tl.load(dp + 2), tl.load(dp + 3), pos + t * BLOCK, 0, BLOCK)


@triton.jit
def _visited_rows(vis, pos, e, c0, BLOCK: tl.constexpr, R: tl.constexpr, KIND: tl.constexpr):
    """Rows c0 .. c0+R-1 of the tile named by visit ``e`` (descriptor inline in the visit), in the
    cheapest form its kind allows (contiguous and 16-aligned, a progression, or the general form)."""
    vp = vis + e * 6
    if KIND == CONTIGUOUS:
        rows = tl.multiple_of(tl.load(vp + 2), 16) + c0 + tl.arange(0, R)
    elif KIND == GATHERED:
        rows = _rows_from(tl.load(vp + 2), tl.load(vp + 3), tl.load(vp + 4), tl.load(vp + 5),
                          pos + tl.load(vp) * BLOCK, c0, R)
    else:
        offs = c0 + tl.arange(0, R)
        shift = tl.load(vp + 3)
        rows = tl.load(vp + 2) + (offs >> shift) * tl.load(vp + 5) + (offs & ((1 << shift) - 1)) * tl.load(vp + 4)
    return rows


@triton.jit
def _load_rows(base, rows, stride, offs_d, D: tl.constexpr, BD: tl.constexpr, ROWMASK: tl.constexpr):
    ptrs = base + rows.to(tl.int64)[:, None] * stride + offs_d[None, :]
    if ROWMASK:
        if BD == D:
            x = tl.load(ptrs, mask=(rows >= 0)[:, None], other=0.0)
        else:
            x = tl.load(ptrs, mask=(rows >= 0)[:, None] & (offs_d < D)[None, :], other=0.0)
    else:
        if BD == D:
            x = tl.load(ptrs)
        else:
            x = tl.load(ptrs, mask=(offs_d < D)[None, :], other=0.0)
    return x


@triton.jit
def _query_key(own, rows, TRANS: tl.constexpr):
    """(query, key) positions broadcast to a visit's score tile: (queries, keys), or (keys, queries) with TRANS."""
    if TRANS:
        return rows[None, :], own[:, None]
    else:
        return own[:, None], rows[None, :]


@triton.jit
def _mask_bits(masks, code, c0, BLOCK: tl.constexpr, TRANS: tl.constexpr, R: tl.constexpr):
    """Columns c0 .. c0+R-1 of mask tile ``code`` from its (M, 2, BLOCK, W) int64 bit words: one
    word load per row, then shifts in the score tile's own layout."""
    offs = tl.arange(0, BLOCK)
    if BLOCK <= 64:
        word = tl.load(masks + (code * 2 + TRANS) * BLOCK + offs)
        bits = (word[:, None] >> (c0 + tl.arange(0, R)).to(tl.int64)[None, :]) & 1
    elif R <= 64:
        W2: tl.constexpr = BLOCK // 64
        word = tl.load(masks + (code * 2 + TRANS) * BLOCK * W2 + offs * W2 + c0 // 64)
        bits = (word[:, None] >> ((c0 % 64) + tl.arange(0, R)).to(tl.int64)[None, :]) & 1
    else:
        W: tl.constexpr = BLOCK // 64
        base = masks + (code * 2 + TRANS) * BLOCK * W + offs * W
        sh = (offs & 63).to(tl.int64)
        bits = tl.zeros([BLOCK, BLOCK], tl.int64)
        for w in tl.static_range(W):
            part = (tl.load(base + w)[:, None] >> sh[None, :]) & 1
            bits = tl.where(((offs >> 6) == w)[None, :], part, bits)
    return bits != 0


@triton.jit
def _visit_mask(vis, masks, e, own, rows, c0, BLOCK: tl.constexpr, R: tl.constexpr, KIND: tl.constexpr,
                TRANS: tl.constexpr):
    """Element mask of visit ``e`` (visited rows ``rows``, own rows ``own``; (keys, queries) with TRANS),
    0 for the fast kinds. Codes: -1 every pair, -2 causal, m >= 0 mask tile m; padding rows masked."""
    if KIND < CAUSAL_TILE:
        ok = 0
    elif KIND == CAUSAL_TILE:
        x, y = _query_key(own, rows, TRANS)
        ok = y <= x
    elif KIND == MASK_TILE:
        ok = _mask_bits(masks, tl.load(vis + e * 6 + 1), c0, BLOCK, TRANS, R)
    else:
        code = tl.load(vis + e * 6 + 1)
        if code >= 0:
            ok = _mask_bits(masks, code, c0, BLOCK, TRANS, R)
        else:
            x, y = _query_key(own, rows, TRANS)
            ok = ((y <= x) | (code == -1)) & (x >= 0) & (y >= 0)
    return ok


@triton.jit
def _kind_range(ptr, split, t, KIND: tl.constexpr, NSUB: tl.constexpr):
    """Steps [lo, hi) of tile ``t``'s visits of kind KIND, NSUB steps a visit (CSR ``ptr``, ``split``)."""
    first = tl.load(ptr + t)
    if KIND == 0:
        lo = first
    else:
        lo = first + tl.load(split + 4 * t + KIND - 1)
    if KIND < GATHERED:
        hi = first + tl.load(split + 4 * t + KIND)
    else:
        hi = tl.load(ptr + t + 1)
    return lo * NSUB, hi * NSUB


@triton.jit
def _store_rows(x_base, stride_xn, x, rows, add, offs_d, D: tl.constexpr, FOLD: tl.constexpr):
    """A tile's float32 result rows to their positions, padding rows skipped; with FOLD, added to the
    rows whose ``add`` flag marks an earlier round's partial sum."""
    mask = (rows >= 0)[:, None] & (offs_d < D)[None, :]
    ptrs = x_base + rows.to(tl.int64)[:, None] * stride_xn + offs_d[None, :]
    if FOLD:
        x += tl.load(ptrs, mask=mask & (add != 0)[:, None], other=0.0).to(tl.float32)
    tl.store(ptrs, x.to(x_base.dtype.element_ty), mask=mask)


# --- Forward ---


@triton.jit
def _softmax_step(q, k, v, m_i, l_i, acc, ok, qk_scale, MASKED: tl.constexpr):
    """One visit of the forward: scores, online softmax update (log2 domain, scale in the exponent)."""
    s = tl.dot(q, tl.trans(k))
    if MASKED:
        s = tl.where(ok, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_use = tl.where(m_new == float("-inf"), 0.0, m_new)  # a row with nothing allowed yet
    else:
        m_new = tl.maximum(m_i, tl.max(s, 1) * qk_scale)
        m_use = m_new
    alpha = tl.math.exp2(m_i - m_use)
    p = tl.math.exp2(s * qk_scale - m_use[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
    return m_new, l_i, acc


@triton.jit
def _fwd_walk(m_i, l_i, acc, q, qi, k_base, v_base, stride_kn, stride_vn, fvis, kpos, masks, lo, hi, qk_scale,
              offs_d, offs_dv, BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
              BDV: tl.constexpr, KIND: tl.constexpr):
    """A query tile's visits lo .. hi-1 of one kind: online softmax over their key tiles."""
    for e in range(lo, hi):
        kj = _visited_rows(fvis, kpos, e, 0, BLOCK, BLOCK, KIND)
        k = _load_rows(k_base, kj, stride_kn, offs_d, D, BD, KIND == GATHERED)
        v = _load_rows(v_base, kj, stride_vn, offs_dv, DV, BDV, KIND == GATHERED)
        ok = _visit_mask(fvis, masks, e, qi, kj, 0, BLOCK, BLOCK, KIND, False)
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, ok, qk_scale, KIND >= CAUSAL_TILE)
    return m_i, l_i, acc


@triton.jit
def fwd_kernel(
    Q, K, V, O, LSE,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_ob, stride_oh, stride_on, H, N, qk_scale,
    qdesc, qpos, qadd, kpos, fvis, fptr, fsplit, masks, items,
    BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    FOLD: tl.constexpr,
):
    """A query tile's output and log2-sum-exp over its visit list; with FOLD, merged with earlier rounds'."""
    b, h, t, bh = _work_item(items, H, 2)
    offs = tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    qi = _tile_rows(qdesc, qpos, t, BLOCK)
    q = _load_rows(Q + b * stride_qb + h * stride_qh, qi, stride_qn, offs_d, D, BD, True)
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BDV], tl.float32)
    for kind in tl.static_range(5):
        lo, hi = _kind_range(fptr, fsplit, t, kind, 1)
        m_i, l_i, acc = _fwd_walk(m_i, l_i, acc, q, qi, k_base, v_base, stride_kn, stride_vn, fvis, kpos, masks,
                                  lo, hi, qk_scale, offs_d, offs_dv, BLOCK, D, DV, BD, BDV, kind)
    l_ok = l_i > 0
    l_safe = tl.where(l_ok, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse = tl.where(l_ok, m_i + tl.math.log2(l_safe), float("-inf"))
    valid = qi >= 0
    lse_ptrs = LSE + bh * N + qi.to(tl.int64)
    if FOLD:  # fold in the earlier rounds' (output, log-sum-exp) of these rows
        add = (tl.load(qadd + t * BLOCK + offs) != 0) & valid
        l0 = tl.load(lse_ptrs, mask=add, other=float("-inf"))
        o0 = tl.load(O + b * stride_ob + h * stride_oh + qi.to(tl.int64)[:, None] * stride_on + offs_dv[None, :],
                     mask=add[:, None] & (offs_dv < DV)[None, :], other=0.0).to(tl.float32)
        m = tl.maximum(l0, lse)
        m = tl.where(m == float("-inf"), 0.0, m)
        w0 = tl.math.exp2(l0 - m)
        w1 = tl.math.exp2(lse - m)
        tot = w0 + w1
        tot_safe = tl.where(tot > 0, tot, 1.0)
        o = (o0 * w0[:, None] + o * w1[:, None]) / tot_safe[:, None]
        lse = tl.where(tot > 0, m + tl.math.log2(tot_safe), float("-inf"))
    _store_rows(O + b * stride_ob + h * stride_oh, stride_on, o, qi, 0, offs_dv, DV, False)
    tl.store(lse_ptrs, lse, mask=valid)


# --- Backward ---


@triton.jit
def delta_kernel(O, DO, DELTA, H, N, stride_ob, stride_oh, stride_on, stride_dob, stride_doh, stride_don,
                 BLOCK: tl.constexpr, DV: tl.constexpr, BDV: tl.constexpr):
    """delta[i] = sum_d dO[i, d] * O[i, d] (float32)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    offs_dv = tl.arange(0, BDV)
    mask = (rows < N)[:, None] & (offs_dv < DV)[None, :]
    o = tl.load(O + b * stride_ob + h * stride_oh + rows[:, None] * stride_on + offs_dv[None, :], mask=mask,
                other=0.0).to(tl.float32)
    do = tl.load(DO + b * stride_dob + h * stride_doh + rows[:, None] * stride_don + offs_dv[None, :], mask=mask,
                 other=0.0).to(tl.float32)
    tl.store(DELTA + bh * N + rows, tl.sum(o * do, 1), mask=rows < N)


@triton.jit
def _query_side(q_base, do_base, o_base, lse_base, delta_base, qi, stride_qn, stride_don, stride_on, offs_d, offs_dv,
                D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                ROWMASK: tl.constexpr, INLINE_DELTA: tl.constexpr):
    """A query tile's q, dO, log-sum-exp and delta = rowsum(dO * O) (inline, or from the pre-pass)."""
    q = _load_rows(q_base, qi, stride_qn, offs_d, D, BD, ROWMASK)
    do = _load_rows(do_base, qi, stride_don, offs_dv, DV, BDV, ROWMASK)
    if ROWMASK:
        lse = tl.load(lse_base + qi, mask=qi >= 0, other=0.0)
    else:
        lse = tl.load(lse_base + qi)
    if INLINE_DELTA:
        o = _load_rows(o_base, qi, stride_on, offs_dv, DV, BDV, ROWMASK)
        delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    elif ROWMASK:
        delta = tl.load(delta_base + qi, mask=qi >= 0, other=0.0)
    else:
        delta = tl.load(delta_base + qi)
    return q, do, lse, delta


@triton.jit
def _dkdv_walk(dk, dv, k, v, kj, q_base, do_base, o_base, lse_base, delta_base, stride_qn, stride_don, stride_on,
               bvis, qpos, masks, lo, hi, qk_scale, offs_d, offs_dv,
               BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
               INLINE_DELTA: tl.constexpr, QSUB: tl.constexpr, KIND: tl.constexpr):
    """A key tile's steps lo .. hi-1 (QSUB query rows each) of one kind: dK (unscaled) and dV."""
    NSUB: tl.constexpr = BLOCK // QSUB
    for i in range(lo, hi):
        e = i // NSUB
        c0 = (i % NSUB) * QSUB
        qi = _visited_rows(bvis, qpos, e, c0, BLOCK, QSUB, KIND)
        q, do, lse, delta = _query_side(q_base, do_base, o_base, lse_base, delta_base, qi, stride_qn, stride_don,
                                        stride_on, offs_d, offs_dv, D, DV, BD, BDV, KIND == GATHERED, INLINE_DELTA)
        ok = _visit_mask(bvis, masks, e, kj, qi, c0, BLOCK, QSUB, KIND, True)
        p_t = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
        if KIND >= CAUSAL_TILE:
            p_t = tl.where(ok, p_t, 0.0)
        dv += tl.dot(p_t.to(do.dtype), do)
        ds_t = p_t * (tl.dot(v, tl.trans(do)) - delta[None, :])
        dk += tl.dot(ds_t.to(q.dtype), q)
    return dk, dv


@triton.jit
def _dq_walk(dq, q, do, lse, delta, qi, k_base, v_base, stride_kn, stride_vn, fvis, kpos, masks, lo, hi, qk_scale,
             offs_d, offs_dv, BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
             BDV: tl.constexpr, KSUB: tl.constexpr, KIND: tl.constexpr):
    """A query tile's steps lo .. hi-1 (KSUB key rows each) of one kind: dQ (unscaled)."""
    NSUB: tl.constexpr = BLOCK // KSUB
    for i in range(lo, hi):
        e = i // NSUB
        c0 = (i % NSUB) * KSUB
        kj = _visited_rows(fvis, kpos, e, c0, BLOCK, KSUB, KIND)
        k = _load_rows(k_base, kj, stride_kn, offs_d, D, BD, KIND == GATHERED)
        v = _load_rows(v_base, kj, stride_vn, offs_dv, DV, BDV, KIND == GATHERED)
        ok = _visit_mask(fvis, masks, e, qi, kj, c0, BLOCK, KSUB, KIND, False)
        p = tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
        if KIND >= CAUSAL_TILE:
            p = tl.where(ok, p, 0.0)
        ds = p * (tl.dot(do, tl.trans(v)) - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def _dkdv_program(k_base, v_base, dk_base, dv_base, q_base, do_base, o_base, lse_base, delta_base,
                  stride_kn, stride_vn, stride_qn, stride_don, stride_on, stride_dkn, stride_dvn,
                  tile, qpos, kdesc, kpos, kadd, bvis, bptr, bsplit, masks, scale, qk_scale,
                  BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                  INLINE_DELTA: tl.constexpr, QSUB: tl.constexpr, FOLD: tl.constexpr):
    """dK, dV of key tile ``tile``: its transposed visit list, kind by kind, in steps of QSUB rows."""
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    kj = _tile_rows(kdesc, kpos, tile, BLOCK)
    k = _load_rows(k_base, kj, stride_kn, offs_d, D, BD, True)
    v = _load_rows(v_base, kj, stride_vn, offs_dv, DV, BDV, True)
    dk = tl.zeros([BLOCK, BD], tl.float32)
    dv = tl.zeros([BLOCK, BDV], tl.float32)
    for kind in tl.static_range(5):
        lo, hi = _kind_range(bptr, bsplit, tile, kind, BLOCK // QSUB)
        dk, dv = _dkdv_walk(dk, dv, k, v, kj, q_base, do_base, o_base, lse_base, delta_base, stride_qn, stride_don,
                            stride_on, bvis, qpos, masks, lo, hi, qk_scale, offs_d, offs_dv,
                            BLOCK, D, DV, BD, BDV, INLINE_DELTA, QSUB, kind)
    add = 0
    if FOLD:
        add = tl.load(kadd + tile * BLOCK + tl.arange(0, BLOCK))
    _store_rows(dk_base, stride_dkn, dk * scale, kj, add, offs_d, D, FOLD)
    _store_rows(dv_base, stride_dvn, dv, kj, add, offs_dv, DV, FOLD)


@triton.jit
def _dq_program(k_base, v_base, dq_base, q_base, do_base, o_base, lse_base, delta_base,
                stride_kn, stride_vn, stride_qn, stride_don, stride_on, stride_dqn,
                tile, qdesc, qpos, qadd, kpos, fvis, fptr, fsplit, masks, scale, qk_scale,
                BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                INLINE_DELTA: tl.constexpr, KSUB: tl.constexpr, FOLD: tl.constexpr):
    """dQ of query tile ``tile``: its visit list again, kind by kind, in steps of KSUB rows."""
    offs_d = tl.arange(0, BD)
    offs_dv = tl.arange(0, BDV)
    qi = _tile_rows(qdesc, qpos, tile, BLOCK)
    q, do, lse, delta = _query_side(q_base, do_base, o_base, lse_base, delta_base, qi, stride_qn, stride_don,
                                    stride_on, offs_d, offs_dv, D, DV, BD, BDV, True, INLINE_DELTA)
    dq = tl.zeros([BLOCK, BD], tl.float32)
    for kind in tl.static_range(5):
        lo, hi = _kind_range(fptr, fsplit, tile, kind, BLOCK // KSUB)
        dq = _dq_walk(dq, q, do, lse, delta, qi, k_base, v_base, stride_kn, stride_vn, fvis, kpos, masks,
                      lo, hi, qk_scale, offs_d, offs_dv, BLOCK, D, DV, BD, BDV, KSUB, kind)
    add = 0
    if FOLD:
        add = tl.load(qadd + tile * BLOCK + tl.arange(0, BLOCK))
    _store_rows(dq_base, stride_dqn, dq * scale, qi, add, offs_d, D, FOLD)


@triton.jit
def bwd_kernel(
    Q, K, V, DO, O, DQ, DK, DV_, LSE, DELTA,
    stride_qb, stride_qh, stride_qn, stride_kb, stride_kh, stride_kn, stride_vb, stride_vh, stride_vn,
    stride_dob, stride_doh, stride_don, stride_ob, stride_oh, stride_on,
    stride_dqb, stride_dqh, stride_dqn, stride_dkb, stride_dkh, stride_dkn, stride_dvb, stride_dvh, stride_dvn,
    H, N, scale, qk_scale,
    qdesc, qpos, qadd, kdesc, kpos, kadd, fvis, fptr, fsplit, bvis, bptr, bsplit, masks, items,
    BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    INLINE_DELTA: tl.constexpr, QSUB: tl.constexpr, KSUB: tl.constexpr, FOLD: tl.constexpr,
):
    """One launch: work item kind 0 computes a key tile's dK, dV, kind 1 a query tile's dQ. With
    INLINE_DELTA, DELTA is not read. DV_ points to dV (DV is its head dim)."""
    b, h, tile, bh = _work_item(items, H, 3)
    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    do_base = DO + b * stride_dob + h * stride_doh
    o_base = O + b * stride_ob + h * stride_oh
    lse_base = LSE + bh * N
    delta_base = DELTA + bh * N
    if tl.load(items + 3 * tl.program_id(0) + 2) == 0:
        _dkdv_program(k_base, v_base, DK + b * stride_dkb + h * stride_dkh, DV_ + b * stride_dvb + h * stride_dvh,
                      q_base, do_base, o_base, lse_base, delta_base,
                      stride_kn, stride_vn, stride_qn, stride_don, stride_on, stride_dkn, stride_dvn,
                      tile, qpos, kdesc, kpos, kadd, bvis, bptr, bsplit, masks, scale, qk_scale,
                      BLOCK, D, DV, BD, BDV, INLINE_DELTA, QSUB, FOLD)
    else:
        _dq_program(k_base, v_base, DQ + b * stride_dqb + h * stride_dqh, q_base, do_base, o_base, lse_base,
                    delta_base, stride_kn, stride_vn, stride_qn, stride_don, stride_on, stride_dqn,
                    tile, qdesc, qpos, qadd, kpos, fvis, fptr, fsplit, masks, scale, qk_scale,
                    BLOCK, D, DV, BD, BDV, INLINE_DELTA, KSUB, FOLD)
