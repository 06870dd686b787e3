"""The Triton kernels behind :mod:`.triton_attention` (imported lazily: importing this imports Triton).

Helpers first (tile rows, element masks), then the kernels: ``fwd_kernel``, ``merge_kernel``
(log-sum-exp merge of segment slots), ``delta_kernel`` (rowsum(dO * O); for long-walk plans only,
short walks compute it inside the backward), ``bwd_kernel`` (dK/dV and dQ programs in one launch) and ``add_slots_kernel`` (slot reduction). Tables and their meaning:
:mod:`.triton_attention`. Scores live in the log2 domain (``qk_scale = scale * log2(e)``, exp2);
the saved log-sum-exp is log2-based too.
"""

from __future__ import annotations

import triton
import triton.language as tl

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


@triton.jit
def _rows_from(start, shift, s_in, s_out, pos_row, c0, R: tl.constexpr):
    """Original positions of a tile's rows c0 .. c0+R-1: two-level arithmetic progression, or
    gathered from the tile's position-table row (start < 0)."""
    offs = c0 + tl.arange(0, R)
    ap = start + (offs >> shift) * s_out + (offs & ((1 << shift) - 1)) * s_in
    g = tl.load(pos_row + offs, mask=(offs * 0 + start) < 0, other=-1)
    return tl.where(start >= 0, ap, g)


@triton.jit
def _tile_rows(desc, pos, t, BLOCK: tl.constexpr):
    dp = desc + t * 5
    return _rows_from(tl.load(dp), tl.load(dp + 1), tl.load(dp + 2), tl.load(dp + 3), pos + t * BLOCK, 0, BLOCK)


@triton.jit
def _visit_rows(vis, pos, e, c0, BLOCK: tl.constexpr, R: tl.constexpr):
    """Rows c0 .. c0+R-1 of the tile named by visit ``e`` (its descriptor is stored inline in the
    visit; c0 = 0, R = BLOCK: the whole tile)."""
    vp = vis + e * 6
    return _rows_from(tl.load(vp + 2), tl.load(vp + 3), tl.load(vp + 4), tl.load(vp + 5),
                      pos + tl.load(vp) * BLOCK, c0, R)


@triton.jit
def _visit_rows_ap(vis, e, c0, R: tl.constexpr):
    """Rows c0 .. c0+R-1 of a fast visit's tile: always a progression, no table gather."""
    vp = vis + e * 6
    offs = c0 + tl.arange(0, R)
    shift = tl.load(vp + 3)
    return tl.load(vp + 2) + (offs >> shift) * tl.load(vp + 5) + (offs & ((1 << shift) - 1)) * tl.load(vp + 4)


@triton.jit
def _visit_rows_contig(vis, e, c0, R: tl.constexpr):
    """Rows c0 .. c0+R-1 of a contiguous visit's tile: start + c0 + 0..R-1, start a multiple of 16
    (checked on the host) and c0 a multiple of R, so the compiler knows the loads are contiguous
    and aligned (vector loads, less address arithmetic)."""
    return tl.multiple_of(tl.load(vis + e * 6 + 2), 16) + c0 + tl.arange(0, R)


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
def _kv_tile(kb, vb, kj, skn, svn, od, odv, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr,
             BDV: tl.constexpr, ROWMASK: tl.constexpr):
    """The K and V rows ``kj`` of one key tile."""
    return _load_rows(kb, kj, skn, od, D, BD, ROWMASK), _load_rows(vb, kj, svn, odv, DV, BDV, ROWMASK)


@triton.jit
def _walk_bounds(ptr, split, t):
    """A tile's visit list: [e0, e1), with the ends of its contiguous fast, other fast, causal and
    mask-tile visits (the gathered ones run from the last to e1)."""
    e0 = tl.load(ptr + t)
    sp = split + 4 * t
    return (e0, tl.load(ptr + t + 1), e0 + tl.load(sp), e0 + tl.load(sp + 1), e0 + tl.load(sp + 2),
            e0 + tl.load(sp + 3))


@triton.jit
def _outer(x, y, TRANS: tl.constexpr):
    """(x_i, y_j) -> full (queries, keys) shape, or (keys, queries) with TRANS; x per query, y per key."""
    if TRANS:
        return x[None, :], y[:, None]
    else:
        return x[:, None], y[None, :]


@triton.jit
def _mask_bits(masks, code, c0, BLOCK: tl.constexpr, TRANS: tl.constexpr, R: tl.constexpr):
    """Columns c0 .. c0+R-1 (R = BLOCK: all) of mask tile ``code`` from its bit words ((M, 2,
    BLOCK, W) int64, row r's column c at bit c % 64 of word c // 64; R <= 64 columns lie in one
    word): one word load per row, then shifts in the score tile's own layout."""
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
def _allowed(masks, code, qi, kj, c0, BLOCK: tl.constexpr, TRANS: tl.constexpr, R: tl.constexpr):
    """Element mask of a gathered visit, (queries, keys) or (keys, queries) with TRANS, the visited
    tile's rows c0 .. c0+R-1. ``code``: -1 every pair, -2 causal, m >= 0 the plan's mask tile m
    (padding and causality included); padding rows (-1) are masked for codes -1/-2."""
    if code >= 0:
        ok = _mask_bits(masks, code, c0, BLOCK, TRANS, R)
    else:
        x, y = _outer(qi, kj, TRANS)
        ok = ((y <= x) | (code == -1)) & (x >= 0) & (y >= 0)
    return ok


@triton.jit
def _causal(qi, kj, TRANS: tl.constexpr):
    x, y = _outer(qi, kj, TRANS)
    return y <= x


@triton.jit
def _softmax_step(q, k, v, m_i, l_i, acc, ok, qk_scale, MASKED: tl.constexpr):
    """One visit of the forward: scores, online softmax update (log2 domain; the scale is applied
    inside the exponent's multiply-add, not as a separate pass over the scores)."""
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


# ---------------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------------


@triton.jit
def fwd_kernel(
    Q, K, V, O, LSE, OS, LSES,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn,
    H, N, SROWS, qk_scale,
    qdesc, qpos, kpos, fvis, fptr, fsplit, masks, items,
    BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    KSUB: tl.constexpr,
):
    """A query tile's output and log2-sum-exp: online softmax over its visit list, each visited key
    tile in steps of KSUB rows (KSUB = BLOCK: whole tiles)."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.load(items + 2 * pid).to(tl.int64)
    t = tl.load(items + 2 * pid + 1)
    bh = b * H + h
    offs = tl.arange(0, BLOCK)
    od = tl.arange(0, BD)
    odv = tl.arange(0, BDV)
    qi = _tile_rows(qdesc, qpos, t, BLOCK)
    q = _load_rows(Q + b * sqb + h * sqh, qi, sqn, od, D, BD, True)
    kb = K + b * skb + h * skh
    vb = V + b * svb + h * svh
    m_i = tl.full([BLOCK], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK], tl.float32)
    acc = tl.zeros([BLOCK, BDV], tl.float32)
    e0, e1, e_c, ef, ec, em = _walk_bounds(fptr, fsplit, t)
    # Step i: visit i // NSUB, its key rows c0 .. c0+KSUB-1.
    NSUB: tl.constexpr = BLOCK // KSUB
    # Fast visits: every pair allowed, tile rows an arithmetic progression: no mask, no gather.
    # Contiguous key tiles first (vector loads), then the other progressions.
    for i in range(e0 * NSUB, e_c * NSUB):
        kj = _visit_rows_contig(fvis, i // NSUB, (i % NSUB) * KSUB, KSUB)
        k, v = _kv_tile(kb, vb, kj, skn, svn, od, odv, D, DV, BD, BDV, False)
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, 0, qk_scale, False)
    for i in range(e_c * NSUB, ef * NSUB):
        kj = _visit_rows_ap(fvis, i // NSUB, (i % NSUB) * KSUB, KSUB)
        k, v = _kv_tile(kb, vb, kj, skn, svn, od, odv, D, DV, BD, BDV, False)
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, 0, qk_scale, False)
    # Causal visits (the diagonal), then mask-tile visits: progressions under an element mask.
    for i in range(ef * NSUB, ec * NSUB):
        kj = _visit_rows_ap(fvis, i // NSUB, (i % NSUB) * KSUB, KSUB)
        k, v = _kv_tile(kb, vb, kj, skn, svn, od, odv, D, DV, BD, BDV, False)
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, _causal(qi, kj, False), qk_scale, True)
    for i in range(ec * NSUB, em * NSUB):
        e = i // NSUB
        c0 = (i % NSUB) * KSUB
        kj = _visit_rows_ap(fvis, e, c0, KSUB)
        k, v = _kv_tile(kb, vb, kj, skn, svn, od, odv, D, DV, BD, BDV, False)
        ok = _mask_bits(masks, tl.load(fvis + e * 6 + 1), c0, BLOCK, False, KSUB)
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, ok, qk_scale, True)
    # Gathered visits (padding or position-table rows): the general path.
    for i in range(em * NSUB, e1 * NSUB):
        e = i // NSUB
        c0 = (i % NSUB) * KSUB
        kj = _visit_rows(fvis, kpos, e, c0, BLOCK, KSUB)
        k, v = _kv_tile(kb, vb, kj, skn, svn, od, odv, D, DV, BD, BDV, True)
        ok = _allowed(masks, tl.load(fvis + e * 6 + 1), qi, kj, c0, BLOCK, False, KSUB)
        m_i, l_i, acc = _softmax_step(q, k, v, m_i, l_i, acc, ok, qk_scale, True)
    l_ok = l_i > 0
    l_safe = tl.where(l_ok, l_i, 1.0)
    o = acc / l_safe[:, None]
    lse = tl.where(l_ok, m_i + tl.math.log2(l_safe), float("-inf"))
    valid = qi >= 0
    slot = tl.load(qdesc + t * 5 + 4)
    if slot < 0:
        rows = qi.to(tl.int64)
        tl.store(O + bh * N * DV + rows[:, None] * DV + odv[None, :], o.to(O.dtype.element_ty),
                 mask=valid[:, None] & (odv < DV)[None, :])
        tl.store(LSE + bh * N + rows, lse, mask=valid)
    else:
        rows = (slot * BLOCK + offs).to(tl.int64)
        tl.store(OS + bh * SROWS * DV + rows[:, None] * DV + odv[None, :], o,
                 mask=valid[:, None] & (odv < DV)[None, :])
        tl.store(LSES + bh * SROWS + rows, lse, mask=valid)


@triton.jit
def merge_kernel(
    O, LSE, OS, LSES, H, N, SROWS, qdesc, qpos, items,
    BLOCK: tl.constexpr, DV: tl.constexpr, BDV: tl.constexpr,
):
    """Fold one slot segment into (O, LSE): log-sum-exp weighted sum of the two partial outputs."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.load(items + 2 * pid).to(tl.int64)
    t = tl.load(items + 2 * pid + 1)
    bh = b * H + h
    offs = tl.arange(0, BLOCK)
    odv = tl.arange(0, BDV)
    qi = _tile_rows(qdesc, qpos, t, BLOCK)
    valid = qi >= 0
    rows = qi.to(tl.int64)
    srow = (tl.load(qdesc + t * 5 + 4) * BLOCK + offs).to(tl.int64)
    mask2 = valid[:, None] & (odv < DV)[None, :]
    l0 = tl.load(LSE + bh * N + rows, mask=valid, other=float("-inf"))
    l1 = tl.load(LSES + bh * SROWS + srow, mask=valid, other=float("-inf"))
    m = tl.maximum(l0, l1)
    m = tl.where(m == float("-inf"), 0.0, m)
    w0 = tl.math.exp2(l0 - m)
    w1 = tl.math.exp2(l1 - m)
    tot = w0 + w1
    optr = O + bh * N * DV + rows[:, None] * DV + odv[None, :]
    o0 = tl.load(optr, mask=mask2, other=0.0).to(tl.float32)
    o1 = tl.load(OS + bh * SROWS * DV + srow[:, None] * DV + odv[None, :], mask=mask2, other=0.0)
    tot_safe = tl.where(tot > 0, tot, 1.0)
    o = (o0 * w0[:, None] + o1 * w1[:, None]) / tot_safe[:, None]
    tl.store(optr, o.to(O.dtype.element_ty), mask=mask2)
    tl.store(LSE + bh * N + rows, tl.where(tot > 0, m + tl.math.log2(tot_safe), float("-inf")), mask=valid)


# ---------------------------------------------------------------------------------------------
# Backward
# ---------------------------------------------------------------------------------------------


@triton.jit
def delta_kernel(O, DO, DELTA, H, N, sdb, sdh, sdn, BLOCK: tl.constexpr, DV: tl.constexpr, BDV: tl.constexpr):
    """delta[i] = sum_d dO[i, d] * O[i, d] (float32)."""
    pid = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    b = bh // H
    h = bh % H
    rows = (pid * BLOCK + tl.arange(0, BLOCK)).to(tl.int64)
    odv = tl.arange(0, BDV)
    mask = (rows < N)[:, None] & (odv < DV)[None, :]
    o = tl.load(O + bh * N * DV + rows[:, None] * DV + odv[None, :], mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdn + odv[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * N + rows, tl.sum(o * do, 1), mask=rows < N)


@triton.jit
def _query_side(qb, dob, ob, lb, db, qi, sqn, sdn, od, odv,
                D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
                ROWMASK: tl.constexpr, INLINE_DELTA: tl.constexpr):
    """A query tile's q, dO, log-sum-exp and delta = rowsum(dO * O) (inline, or from the pre-pass)."""
    q = _load_rows(qb, qi, sqn, od, D, BD, ROWMASK)
    do = _load_rows(dob, qi, sdn, odv, DV, BDV, ROWMASK)
    if ROWMASK:
        lse = tl.load(lb + qi, mask=qi >= 0, other=0.0)
    else:
        lse = tl.load(lb + qi)
    if INLINE_DELTA:
        o = _load_rows(ob, qi, DV, odv, DV, BDV, ROWMASK)
        dl = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    elif ROWMASK:
        dl = tl.load(db + qi, mask=qi >= 0, other=0.0)
    else:
        dl = tl.load(db + qi)
    return q, do, lse, dl


@triton.jit
def _dkdv_step(k, v, q, do, lse, dl, dk, dv, ok, qk_scale, MASKED: tl.constexpr,
               dqa, qi, od, scale, D: tl.constexpr, ATOMIC_DQ: tl.constexpr):
    """One visit of a key tile's walk: accumulate dK (unscaled) and dV, in (keys, queries) layout.
    ATOMIC_DQ: also add this step's share of dQ (scaled, float32) into ``dqa`` rows ``qi``, so no
    dQ program recomputes the scores (5 matrix products per pair instead of 7)."""
    pT = tl.math.exp2(tl.dot(k, tl.trans(q)) * qk_scale - lse[None, :])
    if MASKED:
        pT = tl.where(ok, pT, 0.0)
    dv += tl.dot(pT.to(do.dtype), do)
    dsT = pT * (tl.dot(v, tl.trans(do)) - dl[None, :])
    ds16 = dsT.to(q.dtype)
    dk += tl.dot(ds16, q)
    if ATOMIC_DQ:
        dq = tl.dot(tl.trans(ds16), k) * scale
        tl.atomic_add(dqa + qi.to(tl.int64)[:, None] * D + od[None, :], dq,
                      mask=(qi >= 0)[:, None] & (od < D)[None, :], sem="relaxed")
    return dk, dv


@triton.jit
def _dq_step(q, do, k, v, lse, dl, dq, ok, qk_scale, MASKED: tl.constexpr):
    """One visit of a query tile's walk: accumulate dQ (unscaled)."""
    p = tl.math.exp2(tl.dot(q, tl.trans(k)) * qk_scale - lse[:, None])
    if MASKED:
        p = tl.where(ok, p, 0.0)
    ds = p * (tl.dot(do, tl.trans(v)) - dl[:, None])
    dq += tl.dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def _bwd_dkdv(
    Q, K, V, DO, O, DQ, DK, DV_, LSE, DELTA, DKS, DVS,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
    b, h, bh, N, KROWS, kt,
    qpos, kdesc, kpos, bvis, bptr, bsplit, masks,
    scale, qk_scale,
    BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    INLINE_DELTA: tl.constexpr, QSUB: tl.constexpr, ATOMIC_DQ: tl.constexpr,
):
    """dK, dV of key tile ``kt``: walk the query tiles that see it (transposed visit list; fast,
    masked, gathered visits as in the forward). INLINE_DELTA: rowsum(dO * O) of each visited query
    tile computed here (short walks) instead of read from the ``delta_kernel`` pre-pass.
    ATOMIC_DQ: dQ added here too, into the float32 rows of DQ (no dQ programs run)."""
    offs = tl.arange(0, BLOCK)
    od = tl.arange(0, BD)
    odv = tl.arange(0, BDV)
    kj = _tile_rows(kdesc, kpos, kt, BLOCK)
    k = _load_rows(K + b * skb + h * skh, kj, skn, od, D, BD, True)
    v = _load_rows(V + b * svb + h * svh, kj, svn, odv, DV, BDV, True)
    qb = Q + b * sqb + h * sqh
    dob = DO + b * sdb + h * sdh
    lb = LSE + bh * N
    db = DELTA + bh * N
    ob = O + bh * N * DV
    dqa = DQ + bh * N * D
    dk = tl.zeros([BLOCK, BD], tl.float32)
    dv = tl.zeros([BLOCK, BDV], tl.float32)
    e0, e1, e_c, ef, ec, em = _walk_bounds(bptr, bsplit, kt)
    # Each visited query tile in NSUB steps of QSUB rows: smaller (keys, queries) score tiles, so the
    # walk fits the register cap without spills. Step i: visit i // NSUB, its rows c0 .. c0+QSUB-1.
    NSUB: tl.constexpr = BLOCK // QSUB
    for i in range(e0 * NSUB, e_c * NSUB):
        e = i // NSUB
        c0 = (i % NSUB) * QSUB
        qi = _visit_rows_contig(bvis, e, c0, QSUB)
        q, do, lse, dl = _query_side(qb, dob, ob, lb, db, qi, sqn, sdn, od, odv, D, DV, BD, BDV, False, INLINE_DELTA)
        dk, dv = _dkdv_step(k, v, q, do, lse, dl, dk, dv, 0, qk_scale, False, dqa, qi, od, scale, D, ATOMIC_DQ)
    for i in range(e_c * NSUB, ef * NSUB):
        e = i // NSUB
        c0 = (i % NSUB) * QSUB
        qi = _visit_rows_ap(bvis, e, c0, QSUB)
        q, do, lse, dl = _query_side(qb, dob, ob, lb, db, qi, sqn, sdn, od, odv, D, DV, BD, BDV, False, INLINE_DELTA)
        dk, dv = _dkdv_step(k, v, q, do, lse, dl, dk, dv, 0, qk_scale, False, dqa, qi, od, scale, D, ATOMIC_DQ)
    for i in range(ef * NSUB, ec * NSUB):
        e = i // NSUB
        c0 = (i % NSUB) * QSUB
        qi = _visit_rows_ap(bvis, e, c0, QSUB)
        q, do, lse, dl = _query_side(qb, dob, ob, lb, db, qi, sqn, sdn, od, odv, D, DV, BD, BDV, False, INLINE_DELTA)
        dk, dv = _dkdv_step(k, v, q, do, lse, dl, dk, dv, _causal(qi, kj, True), qk_scale, True, dqa, qi, od,
                            scale, D, ATOMIC_DQ)
    for i in range(ec * NSUB, em * NSUB):
        e = i // NSUB
        c0 = (i % NSUB) * QSUB
        qi = _visit_rows_ap(bvis, e, c0, QSUB)
        q, do, lse, dl = _query_side(qb, dob, ob, lb, db, qi, sqn, sdn, od, odv, D, DV, BD, BDV, False, INLINE_DELTA)
        ok = _mask_bits(masks, tl.load(bvis + e * 6 + 1), c0, BLOCK, True, QSUB)
        dk, dv = _dkdv_step(k, v, q, do, lse, dl, dk, dv, ok, qk_scale, True, dqa, qi, od, scale, D, ATOMIC_DQ)
    for i in range(em * NSUB, e1 * NSUB):
        e = i // NSUB
        c0 = (i % NSUB) * QSUB
        qi = _visit_rows(bvis, qpos, e, c0, BLOCK, QSUB)
        q, do, lse, dl = _query_side(qb, dob, ob, lb, db, qi, sqn, sdn, od, odv, D, DV, BD, BDV, True, INLINE_DELTA)
        ok = _allowed(masks, tl.load(bvis + e * 6 + 1), qi, kj, c0, BLOCK, True, QSUB)
        dk, dv = _dkdv_step(k, v, q, do, lse, dl, dk, dv, ok, qk_scale, True, dqa, qi, od, scale, D, ATOMIC_DQ)
    dk = dk * scale
    valid = kj >= 0
    slot = tl.load(kdesc + kt * 5 + 4)
    if slot < 0:
        rows = kj.to(tl.int64)
        tl.store(DK + bh * N * D + rows[:, None] * D + od[None, :], dk.to(DK.dtype.element_ty),
                 mask=valid[:, None] & (od < D)[None, :])
        tl.store(DV_ + bh * N * DV + rows[:, None] * DV + odv[None, :], dv.to(DV_.dtype.element_ty),
                 mask=valid[:, None] & (odv < DV)[None, :])
    else:
        rows = (slot * BLOCK + offs).to(tl.int64)
        tl.store(DKS + bh * KROWS * D + rows[:, None] * D + od[None, :], dk,
                 mask=valid[:, None] & (od < D)[None, :])
        tl.store(DVS + bh * KROWS * DV + rows[:, None] * DV + odv[None, :], dv,
                 mask=valid[:, None] & (odv < DV)[None, :])


@triton.jit
def _bwd_dq(
    Q, K, V, DO, O, DQ, LSE, DELTA, DQS,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
    b, h, bh, N, QROWS, t,
    qdesc, qpos, kpos, fvis, fptr, fsplit, masks,
    scale, qk_scale,
    BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    INLINE_DELTA: tl.constexpr, KSUB: tl.constexpr,
):
    """dQ of query tile ``t``: walk its visit list again, each visited key tile in steps of KSUB
    rows (as the dK/dV walk's query steps)."""
    offs = tl.arange(0, BLOCK)
    od = tl.arange(0, BD)
    odv = tl.arange(0, BDV)
    qi = _tile_rows(qdesc, qpos, t, BLOCK)
    qv = qi >= 0
    q, do, lse, dl = _query_side(Q + b * sqb + h * sqh, DO + b * sdb + h * sdh, O + bh * N * DV, LSE + bh * N,
                                 DELTA + bh * N, qi, sqn, sdn, od, odv, D, DV, BD, BDV, True, INLINE_DELTA)
    kb = K + b * skb + h * skh
    vb = V + b * svb + h * svh
    dq = tl.zeros([BLOCK, BD], tl.float32)
    e0, e1, e_c, ef, ec, em = _walk_bounds(fptr, fsplit, t)
    # Step i: visit i // NSUB, its key rows c0 .. c0+KSUB-1.
    NSUB: tl.constexpr = BLOCK // KSUB
    for i in range(e0 * NSUB, e_c * NSUB):
        e = i // NSUB
        kj = _visit_rows_contig(fvis, e, (i % NSUB) * KSUB, KSUB)
        k, v = _kv_tile(kb, vb, kj, skn, svn, od, odv, D, DV, BD, BDV, False)
        dq = _dq_step(q, do, k, v, lse, dl, dq, 0, qk_scale, False)
    for i in range(e_c * NSUB, ef * NSUB):
        e = i // NSUB
        kj = _visit_rows_ap(fvis, e, (i % NSUB) * KSUB, KSUB)
        k, v = _kv_tile(kb, vb, kj, skn, svn, od, odv, D, DV, BD, BDV, False)
        dq = _dq_step(q, do, k, v, lse, dl, dq, 0, qk_scale, False)
    for i in range(ef * NSUB, ec * NSUB):
        e = i // NSUB
        kj = _visit_rows_ap(fvis, e, (i % NSUB) * KSUB, KSUB)
        k, v = _kv_tile(kb, vb, kj, skn, svn, od, odv, D, DV, BD, BDV, False)
        dq = _dq_step(q, do, k, v, lse, dl, dq, _causal(qi, kj, False), qk_scale, True)
    for i in range(ec * NSUB, em * NSUB):
        e = i // NSUB
        c0 = (i % NSUB) * KSUB
        kj = _visit_rows_ap(fvis, e, c0, KSUB)
        k, v = _kv_tile(kb, vb, kj, skn, svn, od, odv, D, DV, BD, BDV, False)
        ok = _mask_bits(masks, tl.load(fvis + e * 6 + 1), c0, BLOCK, False, KSUB)
        dq = _dq_step(q, do, k, v, lse, dl, dq, ok, qk_scale, True)
    for i in range(em * NSUB, e1 * NSUB):
        e = i // NSUB
        c0 = (i % NSUB) * KSUB
        kj = _visit_rows(fvis, kpos, e, c0, BLOCK, KSUB)
        k, v = _kv_tile(kb, vb, kj, skn, svn, od, odv, D, DV, BD, BDV, True)
        ok = _allowed(masks, tl.load(fvis + e * 6 + 1), qi, kj, c0, BLOCK, False, KSUB)
        dq = _dq_step(q, do, k, v, lse, dl, dq, ok, qk_scale, True)
    dq = dq * scale
    slot = tl.load(qdesc + t * 5 + 4)
    if slot < 0:
        rows = qi.to(tl.int64)
        tl.store(DQ + bh * N * D + rows[:, None] * D + od[None, :], dq.to(DQ.dtype.element_ty),
                 mask=qv[:, None] & (od < D)[None, :])
    else:
        rows = (slot * BLOCK + offs).to(tl.int64)
        tl.store(DQS + bh * QROWS * D + rows[:, None] * D + od[None, :], dq,
                 mask=qv[:, None] & (od < D)[None, :])


@triton.jit
def bwd_kernel(
    Q, K, V, DO, O, DQ, DK, DV_, LSE, DELTA, DQS, DKS, DVS,
    sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
    H, N, QROWS, KROWS, scale, qk_scale,
    qdesc, qpos, kdesc, kpos, fvis, fptr, fsplit, bvis, bptr, bsplit, masks, items,
    BLOCK: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, BD: tl.constexpr, BDV: tl.constexpr,
    INLINE_DELTA: tl.constexpr, QSUB: tl.constexpr, KSUB: tl.constexpr, ATOMIC_DQ: tl.constexpr,
):
    """One launch: item kind 0 computes a key tile's dK, dV (walking its query tiles in steps of
    QSUB rows); kind 1 a query tile's dQ (its key tiles in steps of KSUB rows). O is the forward
    output (contiguous); with INLINE_DELTA, DELTA is not read (no pre-pass ran). With ATOMIC_DQ
    the work list holds only kind 0 and DQ is a zeroed float32 buffer the dK/dV programs add to."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.load(items + 3 * pid).to(tl.int64)
    tile = tl.load(items + 3 * pid + 1)
    kind = tl.load(items + 3 * pid + 2)
    bh = b * H + h
    if kind == 0:
        _bwd_dkdv(
            Q, K, V, DO, O, DQ, DK, DV_, LSE, DELTA, DKS, DVS,
            sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
            b, h, bh, N, KROWS, tile,
            qpos, kdesc, kpos, bvis, bptr, bsplit, masks,
            scale, qk_scale, BLOCK, D, DV, BD, BDV, INLINE_DELTA, QSUB, ATOMIC_DQ,
        )
    else:
        _bwd_dq(
            Q, K, V, DO, O, DQ, LSE, DELTA, DQS,
            sqb, sqh, sqn, skb, skh, skn, svb, svh, svn, sdb, sdh, sdn,
            b, h, bh, N, QROWS, tile,
            qdesc, qpos, kpos, fvis, fptr, fsplit, masks,
            scale, qk_scale, BLOCK, D, DV, BD, BDV, INLINE_DELTA, KSUB,
        )


@triton.jit
def add_slots_kernel(
    X, XS, Y, YS, H, N, SROWS, desc, pos, items,
    BLOCK: tl.constexpr, D: tl.constexpr, BD: tl.constexpr, DV: tl.constexpr, BDV: tl.constexpr,
    TWO: tl.constexpr,
):
    """X[rows] += XS[slot rows] (and Y, YS with TWO) for one round of slot tiles."""
    pid = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    h = tl.load(items + 2 * pid).to(tl.int64)
    t = tl.load(items + 2 * pid + 1)
    bh = b * H + h
    offs = tl.arange(0, BLOCK)
    rows_pos = _tile_rows(desc, pos, t, BLOCK)
    valid = rows_pos >= 0
    rows = rows_pos.to(tl.int64)
    srow = (tl.load(desc + t * 5 + 4) * BLOCK + offs).to(tl.int64)
    od = tl.arange(0, BD)
    m = valid[:, None] & (od < D)[None, :]
    xp = X + bh * N * D + rows[:, None] * D + od[None, :]
    x = tl.load(xp, mask=m, other=0.0).to(tl.float32)
    x += tl.load(XS + bh * SROWS * D + srow[:, None] * D + od[None, :], mask=m, other=0.0)
    tl.store(xp, x.to(X.dtype.element_ty), mask=m)
    if TWO:
        odv = tl.arange(0, BDV)
        mv = valid[:, None] & (odv < DV)[None, :]
        yp = Y + bh * N * DV + rows[:, None] * DV + odv[None, :]
        y = tl.load(yp, mask=mv, other=0.0).to(tl.float32)
        y += tl.load(YS + bh * SROWS * DV + srow[:, None] * DV + odv[None, :], mask=mv, other=0.0)
        tl.store(yp, y.to(Y.dtype.element_ty), mask=mv)
