"""The Triton kernels against the float64 reference: values and all three gradients.

Without CUDA the kernels run in Triton's interpreter (``TRITON_INTERPRET=1``, set here before Triton
is first imported), on tiny shapes: small tiles (16) so that every code path is hit — fast and
masked visits, gathered tiles, ragged tails, segment rounds (later launches fold into earlier ones), per-head plan lists. On a CUDA
machine the same cases run compiled, plus the ``gpu``-marked cases at real sizes.
"""

import dataclasses
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

triton = pytest.importorskip("triton")

from attention_cases import assert_close_to_reference

from sparse_transformer import patterns as P
from sparse_transformer import sparse_attention
from sparse_transformer.kernels import triton as TA
from sparse_transformer.kernels.triton import launcher, tables

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Compiled fp32 dots use tf32 (about 1e-3 relative, docs/kernels.md); the interpreter computes fp32
# exactly and meets the strict fp32 rule.
FP32_ATOL = 2e-2 if DEVICE == "cuda" else None
if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
    pytest.skip("no CUDA and TRITON_INTERPRET is not 1", allow_module_level=True)


def qkv(b, h, n, d, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(b, h, n, d, generator=g).to(dtype).to(DEVICE) for _ in range(3)]


def with_policy(policy, block=16):
    """The triton backend under ``policy`` on ``block``-row plans, as a backend for
    ``assert_close_to_reference``."""

    def run(q, k, v, pattern, scale=None):
        pats = pattern if isinstance(pattern, list) else [pattern] * q.shape[1]
        plans = [p.plan(q.shape[2], block, q.device) for p in pats]
        return TA.attention_multihead(q, k, v, plans, scale, policy=policy)

    return run


def policy(**changes):
    return dataclasses.replace(TA.default_policy(), **changes)


class _Block16:
    """Run the dispatcher with 16-row tiles (many tiles at tiny n)."""

    def __enter__(self):
        from sparse_transformer import kernels

        self.saved = kernels.PLAN_BLOCK["triton"]
        kernels.PLAN_BLOCK["triton"] = 16

    def __exit__(self, *exc):
        from sparse_transformer import kernels

        kernels.PLAN_BLOCK["triton"] = self.saved


CASES = [
    (P.local(16), 97),
    (P.strided(16), 130),  # strided rows loaded in place (tile = one residue class, step 16)
    (P.strided(5), 97),  # ragged classes: gathered tiles
    (P.union(*P.factorized("fixed", 32, 8)), 130),  # merged head: summary columns gathered, two rounds
    (P.union(*P.factorized("strided", 16)), 97),  # two segments: log-sum-exp merge
    (P.summary(32, 8, 1), 97),  # rows with no key at all
    (P.dense(), 61),
]


@pytest.mark.parametrize("pattern,n", CASES, ids=lambda x: str(x))
def test_patterns_fp32(pattern, n):
    q, k, v = qkv(1, 2, n, 32, torch.float32, seed=n)
    with _Block16():
        assert_close_to_reference(q, k, v, pattern, "triton", atol=FP32_ATOL)


@pytest.mark.parametrize("n", [97, 130])
def test_fp16_ragged_and_batch(n):
    q, k, v = qkv(2, 2, n, 32, torch.float16, seed=1)
    with _Block16():
        assert_close_to_reference(q, k, v, P.union(*P.factorized("fixed", 32, 8)), "triton")


def test_per_head_list_one_launch():
    """Multi-head mode: local, strided, fixed and merged strided heads in the same launches (heads
    with one round and with two: the second launches carry only some heads' tiles)."""
    heads = [P.local(16), P.strided(16), P.union(P.block(32), P.summary(32, 8, 1)), P.union(*P.factorized("strided", 16))]
    q, k, v = qkv(1, 4, 97, 32, torch.float16, seed=2)
    with _Block16():
        assert_close_to_reference(q, k, v, heads, "triton")


def test_three_part_union_and_head_dim_padding():
    """Three segments (two merge rounds) and a head dim that is not a power of two."""
    q, k, v = qkv(1, 1, 70, 24, torch.float32, seed=3)
    with _Block16():
        assert_close_to_reference(q, k, v, P.union(P.local(8), P.strided(16), P.block(32)), "triton",
                                  atol=FP32_ATOL)


@pytest.mark.parametrize("inline", [True, False], ids=["delta-inline", "delta-prepass"])
def test_backward_delta_inline_or_prepass(inline):
    """rowsum(dO * O) inside the backward programs (short walks) or from the delta pre-pass."""
    run = with_policy(policy(inline_delta_max_rows=2**20 if inline else 0))
    q, k, v = qkv(1, 2, 97, 32, torch.float32, seed=8)
    assert_close_to_reference(q, k, v, P.union(*P.factorized("fixed", 32, 8)), run, atol=FP32_ATOL)
    assert_close_to_reference(q, k, v, [P.local(16), P.strided(16)], run, atol=FP32_ATOL)


@pytest.mark.parametrize("block", [64, 128])
def test_mask_tiles_wide_blocks(block):
    """Mask tiles as bit words at the real tile sizes: 64 (bit 63 of one word), 128 (two words);
    local windows and the fixed merged head give masks that are neither causal nor full."""
    q, k, v = qkv(1, 2, 300, 16, torch.float32, seed=9)
    heads = [P.local(100), P.union(*P.factorized("fixed", 96, 24))]
    tabs = TA.kernel_tables([p.plan(300, block, DEVICE) for p in heads], DEVICE)
    assert tabs.masks.shape[1:] == (2, block, max(1, block // 64)) and tabs.masks.shape[0] >= 2
    from sparse_transformer import kernels

    saved = kernels.PLAN_BLOCK["triton"]
    kernels.PLAN_BLOCK["triton"] = block
    try:
        assert_close_to_reference(q, k, v, heads, "triton", atol=FP32_ATOL)
    finally:
        kernels.PLAN_BLOCK["triton"] = saved


@pytest.mark.parametrize("pattern", [P.strided(6), P.union(*P.factorized("strided", 6))], ids=str)
def test_packed_residue_classes(pattern):
    """Residue classes longer than a tile and not a multiple of it (24 positions, 16-row tiles) are
    packed without padding: a tile holding the end of one class and the start of the next is one
    two-level progression, not a gathered tile; values and gradients as the reference, alone and
    merged with the local band."""
    n = 144
    plan = P.strided(6).plan(n, 16)
    assert plan.segments[0].q_tiles.shape[0] == n // 16  # padding each class to 32 would take 12
    tabs = TA.kernel_tables([plan.to(DEVICE)], DEVICE)
    assert bool((tabs.qdesc[:, 0] >= 0).all())  # every tile a progression
    q, k, v = qkv(1, 2, n, 32, torch.float32, seed=13)
    with _Block16():
        assert_close_to_reference(q, k, v, pattern, "triton", atol=FP32_ATOL)


def test_every_visit_kind():
    """One launch whose lists hold all five visit kinds, both directions: fast on contiguous tiles
    (local), fast on strided progressions (strided(8): two 16-row tiles per residue class), causal,
    mask tile (local windows, fixed blocks) and gathered (strided(5): ragged classes)."""
    n = 250
    heads = [P.strided(8), P.local(32), P.union(*P.factorized("fixed", 32, 8)), P.strided(5)]
    tabs = TA.kernel_tables([p.plan(n, 16, DEVICE) for p in heads], DEVICE)
    for split, ptr in ((tabs.fsplit, tabs.fptr), (tabs.bsplit, tabs.bptr)):
        ends = split.long().cpu()
        total = (ptr[1:] - ptr[:-1]).long().cpu()
        counts = [ends[:, 0], ends[:, 1] - ends[:, 0], ends[:, 2] - ends[:, 1], ends[:, 3] - ends[:, 2],
                  total - ends[:, 3]]
        assert all(int(c.sum()) > 0 for c in counts), [int(c.sum()) for c in counts]
    q, k, v = qkv(1, 4, n, 32, torch.float32, seed=11)
    with _Block16():
        assert_close_to_reference(q, k, v, heads, "triton", atol=FP32_ATOL)


@pytest.mark.parametrize("block,qsub,ksub", [(32, 16, 32), (64, 32, 16), (128, 64, 64), (128, 32, 64)])
def test_walks_in_steps(block, qsub, ksub):
    """The dK/dV walk in steps of part of a query tile and the dQ walk in steps of part of a key
    tile (``LaunchPolicy.bwd_steps``), over every visit kind: rows from the middle of contiguous,
    strided and gathered tiles, and mask columns from inside a bit word (64-row tiles) or from the
    second word (128-row tiles)."""
    run = with_policy(policy(bwd_steps={(block, False): (qsub, ksub)}, long_walk=10**6), block)
    n = 300
    heads = [P.strided(16), P.local(100), P.union(*P.factorized("fixed", 96, 24)), P.strided(7)]
    q, k, v = qkv(1, 4, n, 16, torch.float32, seed=12)
    assert_close_to_reference(q, k, v, heads, run, atol=FP32_ATOL)


def test_long_walk_forward_on_its_own_tiles():
    """Long-walk plans run the forward on ``fwd_block_long``'s tiles and the backward on the plan's:
    the backward reads the forward's output and log-sum-exp by position, whatever the tiling."""
    pol = policy(long_walk=1, fwd_block_long={16: 32})
    pattern = P.union(*P.factorized("fixed", 32, 8))
    tabs = TA.kernel_tables([pattern.plan(130, 16, DEVICE)], DEVICE, pol)
    assert tabs.long_walk and tabs.fwd_tables.block == 32 and tabs.fwd_tables.fwd_tables is tabs.fwd_tables
    assert tabs.fwd_tables.policy is pol
    q, k, v = qkv(1, 2, 130, 32, torch.float32, seed=13)
    assert_close_to_reference(q, k, v, pattern, with_policy(pol), atol=FP32_ATOL)


def test_long_walk_two_segment_heads():
    """The long-walk backward (delta pre-pass, longest-first work) on a fixed merged head and a
    two-segment strided head in the same launches (two rounds each way)."""
    heads = [P.union(*P.factorized("fixed", 32, 8)), P.union(*P.factorized("strided", 16))]
    q, k, v = qkv(1, 2, 97, 32, torch.float32, seed=16)
    assert_close_to_reference(q, k, v, heads, with_policy(policy(long_walk=1)), atol=FP32_ATOL)


def test_short_walk_position_order():
    """Short-walk plans list every (head, tile) program once, in position order: each tile's dK/dV
    program next to its dQ program."""
    heads = [P.local(16), P.strided(16)]
    tabs = TA.kernel_tables([p.plan(97, 16, DEVICE) for p in heads], DEVICE)
    assert not tabs.long_walk
    assert len(tabs.bwd_rounds) == 1  # one segment per head: one launch
    bwd = tabs.bwd_rounds[0].long().cpu()
    assert len({tuple(r) for r in bwd.tolist()}) == bwd.shape[0] == 2 * tabs.qdesc.shape[0]
    assert bwd[0::2, 2].eq(0).all() and bwd[1::2, 2].eq(1).all()
    q, k, v = qkv(1, 2, 97, 32, torch.float32, seed=14)
    with _Block16():
        assert_close_to_reference(q, k, v, heads, "triton", atol=FP32_ATOL)


def test_rounds_fold_into_earlier_writes():
    """Tiles that share rows run in later rounds (launches) and fold into what earlier rounds wrote:
    a two-segment strided head takes two rounds each way; the fixed merged head's long-walk summary
    key tiles go first, the natural key tiles that hold summary rows second, adding on those rows only."""
    tabs = TA.kernel_tables([P.union(*P.factorized("strided", 16)).plan(97, 16)], "cpu")
    assert len(tabs.fwd_rounds) == 2 and len(tabs.bwd_rounds) == 2
    tabs = TA.kernel_tables([P.union(*P.factorized("fixed", 32, 8)).plan(128, 16)], "cpu")
    assert len(tabs.fwd_rounds) == 1 and len(tabs.bwd_rounds) == 2 and not tabs.zero_dkv
    later = tabs.kdesc[:, 4] == 1
    rows, add = tabs.kpos[later].long(), tabs.kadd[later].bool()
    assert later.any() and bool((rows[add] % 32 >= 24).all()) and int(add.sum()) == 8 * int(later.sum())
    first_rows = tabs.kpos[~later].long()
    assert first_rows[first_rows >= 0].unique().numel() < 128  # rows first written in round 1 are stored


def test_policy_defaults_and_tables_per_policy():
    """The default policy is one frozen object; tables are cached per (plans, device, policy)."""
    pol = TA.default_policy()
    assert pol is TA.default_policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        pol.long_walk = 1
    with pytest.raises(TypeError):
        pol.configs[("fwd", 64)] = (1, 1, 1)
    assert pol.launch_config("bwd", 64, 64, False) == (4, 1, 168)
    assert pol.launch_config("bwd", 64, 128, True) == (4, 2, None)  # wide heads: no register cap
    assert pol.steps(64, False) == (32, 64) and pol.steps(16, True) == (16, 16)
    plans = [P.local(16).plan(97, 16, DEVICE)]
    other = policy(long_walk=1)
    assert TA.kernel_tables(plans, DEVICE) is TA.kernel_tables(plans, DEVICE, pol)
    assert TA.kernel_tables(plans, DEVICE, other).policy is other and TA.kernel_tables(plans, DEVICE, other).long_walk


def test_mask_bank_dedups():
    """The mask bank stores each distinct tile once: local windows repeat one first-tile mask."""
    tabs = TA.kernel_tables([P.local(128).plan(4096, 64)], "cpu")
    codes = tabs.fvis[:, 1]
    assert int((codes >= 0).sum()) > 50 and tabs.masks.shape[0] == 1


def test_default_block_and_scale():
    q, k, v = qkv(1, 2, 80, 32, torch.float32, seed=4)
    assert_close_to_reference(q, k, v, P.union(*P.factorized("strided", 16)), "triton", scale=0.3,
                              atol=FP32_ATOL)


def test_causality():
    n, t = 80, 45
    q, k, v = qkv(1, 1, n, 32, torch.float32, seed=5)
    with _Block16():
        out = sparse_attention(q, k, v, P.union(*P.factorized("fixed", 16, 4)), backend="triton")
        k2, v2 = k.clone(), v.clone()
        k2[:, :, t:] += 1.0
        v2[:, :, t:] -= 1.0
        out2 = sparse_attention(q, k2, v2, P.union(*P.factorized("fixed", 16, 4)), backend="triton")
    assert torch.equal(out[:, :, :t], out2[:, :, :t])


def test_descriptors():
    """Tile rows as two-level progressions: contiguous, strided, summary runs; gather otherwise."""
    tiles = torch.tensor([
        [0, 1, 2, 3],
        [3, 19, 35, 51],
        [12, 13, 28, 29],
        [0, 1, 2, -1],
        [0, 5, 1, 7],
    ])
    d = tables._descriptors(tiles)
    r = torch.arange(4)
    for i in range(3):
        start, shift, s_in, s_out = d[i].tolist()
        assert start >= 0
        assert torch.equal(start + (r >> shift) * s_out + (r & ((1 << shift) - 1)) * s_in, tiles[i])
    assert d[3, 0] == -1 and d[4, 0] == -1


def test_bad_inputs():
    q, k, v = qkv(1, 1, 40, 32, torch.float32)
    with pytest.raises(ValueError, match="power-of-two"):
        TA.attention(q, k, v, P.local(8).plan(40, 24))
    with pytest.raises(ValueError, match="plan built for n"):
        TA.attention(q, k, v, P.local(8).plan(41, 16))
    with pytest.raises(ValueError, match="float16, bfloat16 or float32"):
        TA.attention(q.double(), k.double(), v.double(), P.local(8).plan(40, 16))


# ------------------------------------------------------------------------------------------
# Launches: the cache key and the direct path (pure Python, fakes for Triton's objects)
# ------------------------------------------------------------------------------------------


def test_spec_key_follows_triton_specialization():
    a = torch.zeros(64, dtype=torch.float16)
    b = torch.ones(64, dtype=torch.float16)
    key = launcher.spec_key
    assert key((a, 32, 17, 0.5)) == key((b, 48, 19, 2.0))  # same dtype/alignment, same int classes
    assert key((a,)) != key((a.float(),))  # dtype
    assert key((a,)) != key((a[1:],))  # pointer no longer 16-byte aligned
    assert key((16,)) != key((17,))  # divisible by 16
    assert key((1,)) != key((3,))  # == 1 (Triton makes it a constant)
    assert key((2**31 + 16,)) != key((16,))  # int64 vs int32
    assert key((2**63 + 16,)) != key((2**31 + 16,))  # uint64 vs int64
    assert key((True,)) != key((1,)) and key((True,)) != key((False,))
    assert key((None,)) != key((0,))


class _FakeParam:
    def __init__(self, constexpr):
        self.is_constexpr = constexpr


class _FakeCompiled:
    def __init__(self, log, fail=False):
        self.log, self.fail = log, fail
        self.function, self.packed_metadata = object(), (4, 1, 0)

    def run(self, gx, gy, gz, stream, function, meta, launch_meta, enter, exit_, *args):
        if self.fail:
            raise TypeError("launcher signature differs")
        self.log.append(("direct", (gx, gy, gz), stream, args))


class _FakeKernel:
    """Stands in for a JITFunction: ``kernel[grid](*args, num_warps=, num_stages=)``."""

    __name__ = "fake_kernel"

    def __init__(self, n_args, n_consts, fail_direct=False):
        self.params = [_FakeParam(i >= n_args) for i in range(n_args + n_consts)]
        self.log, self.fail_direct, self.compiled = [], fail_direct, 0

    def __getitem__(self, grid):
        def launch(*args, num_warps, num_stages):
            self.log.append(("triton", grid, args, num_warps, num_stages))
            self.compiled += 1
            return _FakeCompiled(self.log, self.fail_direct)

        return launch


class _Hooks:
    def __init__(self):
        self.calls = []


class _Runtime:
    launch_enter_hook = _Hooks()
    launch_exit_hook = _Hooks()


@pytest.fixture
def direct_path(monkeypatch):
    """The launchers' state as on a CUDA machine with a supported Triton (stream 7, device 0)."""
    monkeypatch.setattr(launcher.Launcher, "state", {"ok": True, "reason": "", "runtime": _Runtime(),
                                                     "stream": lambda device: 7})
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)


def test_launcher_direct_after_first_launch(direct_path):
    fake = _FakeKernel(3, 2)
    launch = launcher.Launcher(fake)
    x = torch.zeros(32)
    launch((4, 2), (x,), (64, 0.5), (64, True), 4, 2)
    y = torch.ones(32)
    launch((5, 2), (y,), (80, 0.25), (64, True), 4, 2)  # same specialization
    assert [e[0] for e in fake.log] == ["triton", "direct"]
    assert fake.log[1][1] == (5, 2, 1) and fake.log[1][2] == 7
    # Arguments then constexprs, in order; tensors as their data pointers.
    assert fake.log[1][3] == (y.data_ptr(), 80, 0.25, 64, True)
    # Anything that changes the specialization goes through Triton again.
    for tensors, scalars, consts, warps, stages in [
        ((x,), (65, 0.5), (64, True), 4, 2),  # int no longer divisible by 16
        ((x,), (64, 0.5), (128, True), 4, 2),  # constexpr
        ((x,), (64, 0.5), (64, True), 8, 2),  # warps
        ((x,), (64, 0.5), (64, True), 4, 3),  # stages
        ((x.half(),), (64, 0.5), (64, True), 4, 2),  # dtype
        ((x,), (64.0, 0.5), (64, True), 4, 2),  # 64.0 == 64, but a float
    ]:
        n = len(fake.log)
        launch((1,), tensors, scalars, consts, warps, stages)
        assert fake.log[n][0] == "triton", (tensors, scalars, consts, warps, stages)
    assert launch.n_direct == 1 and len(launch.compiled) == 7


def test_launcher_static_arguments(direct_path):
    """Static trailing arguments (the tables): keyed once per tuple object, passed as pointers."""
    fake = _FakeKernel(3, 1)
    launch = launcher.Launcher(fake)
    x, table = torch.zeros(8), torch.zeros(16, dtype=torch.int32)
    static = (table,)
    launch((1,), (x,), (16,), (4,), 4, 1, None, static)
    launch((1,), (x,), (32,), (4,), 4, 1, None, static)
    assert [e[0] for e in fake.log] == ["triton", "direct"]
    assert fake.log[0][2] == (x, 16, table, 4)  # through Triton: the tensors themselves
    assert fake.log[1][3] == (x.data_ptr(), 32, table.data_ptr(), 4)
    launch((1,), (x,), (32,), (4,), 4, 1, None, (table.to(torch.int64),))  # other dtype: Triton again
    assert fake.log[2][0] == "triton" and len(launch.static_cache) == 2


def test_launcher_falls_back_for_good_on_mismatch(direct_path):
    fake = _FakeKernel(2, 1, fail_direct=True)
    launch = launcher.Launcher(fake)
    for _ in range(3):
        launch((1,), (torch.zeros(4),), (16,), (8,), 4, 1)
    assert [e[0] for e in fake.log] == ["triton"] * 3  # the failed direct call re-ran through Triton
    assert launcher.Launcher.state["ok"] is False and "failed" in launcher.Launcher.state["reason"]


def test_launcher_checks_constexpr_positions(direct_path):
    fake = _FakeKernel(2, 1)  # kernel has 2 arguments + 1 constexpr; called with 1 + 2
    launch = launcher.Launcher(fake)
    launch((1,), (torch.zeros(4),), (), (16, 8), 4, 1)
    launch((1,), (torch.zeros(4),), (), (16, 8), 4, 1)
    assert [e[0] for e in fake.log] == ["triton"] * 2
    assert launcher.Launcher.state["ok"] is False


def test_launcher_off_without_support(monkeypatch):
    class Fake:
        __version__ = "9.9.0"

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert launcher.direct_launch_supported(Fake()) == (False, "TRITON_INTERPRET=1")
    monkeypatch.delenv("TRITON_INTERPRET")
    ok, why = launcher.direct_launch_supported(Fake())
    assert not ok and "9.9.0" in why
    # Hooks set (a profiler): launch through Triton.
    assert launcher._hooks_idle(None) and launcher._hooks_idle(_Hooks())
    busy = _Hooks()
    busy.calls = [print]
    assert not launcher._hooks_idle(busy)


# ------------------------------------------------------------------------------------------
# Real sizes, real GPU
# ------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("d", [32, 64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_targets_shapes(d, dtype):
    n = 1500  # ragged against every tile size
    q, k, v = qkv(1, 4, n, d, dtype, seed=d)
    heads = [P.local(32), P.strided(32)] * 2
    assert_close_to_reference(q, k, v, heads, "triton")
    assert_close_to_reference(q, k, v, P.union(*P.factorized("fixed", 128, 32)), "triton")
    assert_close_to_reference(q, k, v, P.union(*P.factorized("strided", 32)), "triton")  # two rounds each way


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_auto_picks_triton():
    from sparse_transformer.kernels import resolve_backend

    assert resolve_backend("auto", "cuda") == "triton"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_direct_launch_same_results():
    """Direct launches of the cached compiled kernels give bit-identical outputs and gradients."""
    q, k, v = (x.requires_grad_(True) for x in qkv(1, 4, 1500, 64, torch.bfloat16, seed=7))
    heads = [P.local(32), P.strided(32), P.union(*P.factorized("fixed", 128, 32)), P.local(32)]
    results = []
    plans = [p.plan(1500, 64, DEVICE) for p in heads]
    for direct in (False, True, True):
        out = TA.attention_multihead(q, k, v, plans, policy=policy(direct_launch=direct))
        results.append([out, *torch.autograd.grad(out, (q, k, v), torch.ones_like(out))])
    for a, b in zip(results[0], results[2]):
        assert torch.equal(a, b)
    stats = TA.launch_stats()
    print(stats)
    if stats["direct_ok"]:
        assert stats["fwd_kernel"]["direct"] >= 1 and stats["bwd_kernel"]["direct"] >= 1


def test_fused_qkv_in_the_interpreter():
    """The kernels read q, k, v as strided views of one fused projection and write its gradient in
    place (attention_qkv), and write the output in the (batch, seq, heads, d) layout."""
    from sparse_transformer.kernels import keyed_attention_qkv, op, pattern_key

    heads, qk_width = 2, 32
    pats = [P.local(16), P.union(*P.factorized("fixed", 32, 8))]
    qkv = torch.randn(1, 97, 2 * qk_width + 48, device=DEVICE, requires_grad=True)
    with _Block16():
        out = keyed_attention_qkv(qkv, pattern_key(pats, heads, "triton"), heads, qk_width)
        g = torch.randn_like(out)
        (grad,) = torch.autograd.grad(out, qkv, g)
    x = qkv.detach().double().requires_grad_()
    ref = op.merge_heads(sparse_attention(*op.split_qkv(x, heads, qk_width), pats, backend="reference"))
    (want,) = torch.autograd.grad(ref, x, g.double())
    tol = FP32_ATOL or 1e-5
    assert (out.double() - ref).abs().max() < tol and (grad.double() - want).abs().max() < tol


def test_flattened_walk_probe_matches_the_library():
    """benchmarks/lab/flattened_walk_probe.py (issue 19's flattened short-walk forward, a lab probe built on
    this package's private kernel helpers) still matches the library's forward in the interpreter."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, str(root / "benchmarks" / "lab" / "flattened_walk_probe.py"), "--dry"],
                         check=False, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "TRITON_INTERPRET": "1"})
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.count('"ok": true') == 6, res.stdout
