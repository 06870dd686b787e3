"""Patterns: element masks against brute force from the paper's formulas; plans cover the mask."""

import pytest
import torch
from attention_cases import PATTERN_KINDS, draw_pattern
from hypothesis import given, settings
from hypothesis import strategies as st

from sparse_transformer import patterns as P


def brute_force(kind: str, n: int, a: int = 0, c: int = 0, m: int = 0) -> torch.Tensor:
    """Written straight from the issue's formulas, one pair at a time."""
    mask = torch.zeros(n, n, dtype=torch.bool)
    for i in range(n):
        for j in range(i + 1):
            if kind == "dense":
                ok = True
            elif kind == "local":
                ok = i - a < j
            elif kind == "strided":
                ok = (i - j) % a == 0
            elif kind == "block":
                ok = j // a == i // a
            elif kind == "summary":
                ok = a - (m + 1) * c <= j % a <= a - m * c - 1
            mask[i, j] = ok
    return mask


CASES = [
    (P.dense(), ("dense",)),
    (P.local(1), ("local", 1)),
    (P.local(7), ("local", 7)),
    (P.strided(1), ("strided", 1)),
    (P.strided(5), ("strided", 5)),
    (P.block(6), ("block", 6)),
    (P.summary(8, 2), ("summary", 8, 2, 0)),
    (P.summary(8, 2, offset=3), ("summary", 8, 2, 3)),
    (P.summary(9, 4, offset=1), ("summary", 9, 4, 1)),
]


@pytest.mark.parametrize("pattern,spec", CASES, ids=[str(p) for p, _ in CASES])
@pytest.mark.parametrize("n", [1, 2, 23, 64])
def test_masks_match_brute_force(pattern, spec, n):
    assert torch.equal(pattern.mask(n), brute_force(spec[0], n, *spec[1:]))


def test_union_and_factorized():
    n = 50
    loc, strd = P.factorized("strided", 6)
    assert (loc, strd) == (P.local(6), P.strided(6))
    assert torch.equal(P.union(loc, strd).mask(n), brute_force("local", n, 6) | brute_force("strided", n, 6))
    blk, summ = P.factorized("fixed", 8, 2)
    assert (blk, summ) == (P.block(8), P.summary(8, 2))
    assert torch.equal((blk | summ).mask(n), brute_force("block", n, 8) | brute_force("summary", n, 8, 2))
    # The paper's local window (l+1 keys) and the code's (l keys) give the same merged head.
    paper_local = brute_force("local", n, 7)
    assert torch.equal(P.union(loc, strd).mask(n), paper_local | brute_force("strided", n, 6))


def test_rows_match_masks():
    for p, _ in CASES + [(P.union(P.block(8), P.summary(8, 2, 1)), None)]:
        m = p.mask(40)
        for i in (0, 1, 7, 8, 39):
            assert torch.equal(p.row(i), m[i].nonzero().flatten()), (p, i)


@pytest.mark.parametrize(
    "bad",
    [
        lambda: P.strided(0),
        lambda: P.local(-1),
        lambda: P.block(0),
        lambda: P.summary(8, 9),
        lambda: P.summary(8, 2, offset=4),
        lambda: P.summary(8, 0),
        lambda: P.factorized("nope", 4),
        lambda: P.factorized("fixed", 4),
        lambda: P.from_name("strid", 4),
        lambda: P.union(),
        lambda: P.dense().plan(0, 16),
        lambda: P.dense().plan(8, 0),
    ],
)
def test_bad_parameters_raise_value_error(bad):
    with pytest.raises(ValueError):
        bad()


def test_error_names_value_and_allowed():
    with pytest.raises(ValueError, match="strid.*dense, fixed, local, strided"):
        P.from_name("strid", 4)
    with pytest.raises(ValueError, match="offset 4 out of range; allowed 0..3"):
        P.summary(8, 2, offset=4)


PLAN_PATTERNS = [
    P.dense(),
    P.local(5),
    P.local(33),
    P.strided(4),
    P.strided(11),
    P.block(8),
    P.block(20),
    P.summary(8, 2),
    P.summary(16, 4, 2),
    P.union(P.local(8), P.strided(8)),
    P.union(P.block(8), P.summary(8, 3, 1)),
    P.union(P.strided(8), P.local(8)),
    P.union(P.summary(16, 4), P.block(16), P.local(3)),
]


@pytest.mark.parametrize("pattern", PLAN_PATTERNS, ids=str)
@pytest.mark.parametrize("n", [1, 17, 64, 97])
@pytest.mark.parametrize("block", [4, 16])
def test_plan_covers_mask_exactly(pattern, n, block):
    """Every allowed pair computed exactly once, nothing disallowed, 'full' visits truly full."""
    plan = pattern.plan(n, block)
    assert torch.equal(plan.coverage(), pattern.mask(n).long())


def test_strided_plan_is_the_transpose():
    n, l = 64, 8
    seg = P.strided(l).plan(n, 8).segments[0]
    order = seg.order
    # p(i) = (i % l) * (n / l) + i // l  (spec section 2.3)
    i = torch.arange(n)
    assert torch.equal(order[(i % l) * (n // l) + i // l], i)
    assert bool((seg.k_ap[:, 1] == l).all())  # every tile is one residue class, step l


def test_plans_are_sparse_at_scale():
    n = 16384
    assert P.strided(128).plan(n, 128).block_fraction() < 0.02
    assert P.local(128).plan(n, 128).block_fraction() < 0.035
    fixed = P.union(*P.factorized("fixed", 128, 32))
    assert fixed.plan(n, 128).block_fraction() < 0.28
    assert len(fixed.plan(n, 128).segments) == 1  # one pass: own block + gathered summaries


def test_plan_cached_per_key():
    p = P.local(4)
    assert p.plan(32, 8) is p.plan(32, 8)
    assert p.plan(32, 8) is not p.plan(33, 8)


@settings(max_examples=25, deadline=None)
@given(
    kind=st.sampled_from(PATTERN_KINDS[:-1]),
    size=st.integers(1, 12),
    n=st.integers(1, 70),
    block=st.sampled_from([1, 2, 4, 8, 16]),
    data=st.data(),
)
def test_random_plans_cover_masks(kind, size, n, block, data):
    p = draw_pattern(data, kind, size)
    assert torch.equal(p.plan(n, block).coverage(), p.mask(n).long())
