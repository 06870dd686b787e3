"""torch.compile: the registered attention operator, zero graph breaks, compiled == eager.

CPU: the ``torch`` (and ``reference``) backends through the operator; Dynamo's ``explain`` for every
pattern x mode with and without recomputation; values and gradients of compiled blocks against eager
(``aot_eager``, which runs the operator's fake and autograd registrations, for the whole matrix;
Inductor for one model); ``train.compile=true`` trains ``tiny-cpu``. GPU: the same on ``triton``.
"""

import pytest
import torch
import torch._dynamo as dynamo
from model_cases import small_config

from sparse_transformer import patterns as P
from sparse_transformer.compilation import apply_compile, should_compile
from sparse_transformer.kernels import pattern_key
from sparse_transformer.model import SparseTransformer
from sparse_transformer.precision import apply_recompute

PATTERNS = ["dense", "strided", "fixed", "local"]
MODES = ["interleaved", "merged", "multihead"]
CUDA = torch.cuda.is_available()
gpu = pytest.mark.skipif(not CUDA, reason="needs CUDA")


def _qkv(heads=4, n=48, d=16, dtype=torch.float32, device="cpu", seed=0):
    g = torch.Generator(device=device).manual_seed(seed)
    return [torch.randn(2, heads, n, d, generator=g, device=device, dtype=dtype).requires_grad_()
            for _ in range(3)]


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize(
    "pattern",
    [P.union(*P.factorized("fixed", 8, 2)), [P.local(8), P.strided(8)] * 2],
    ids=["fixed-merged", "strided-multihead"],
)
def test_opcheck(backend, pattern):
    q, k, v = _qkv()
    key = pattern_key(pattern, 4, backend).key
    r = torch.library.opcheck(torch.ops.sparse_transformer.attention.default, (q, k, v, key, 0.25))
    print(r)
    assert all(v == "SUCCESS" for v in r.values()), r
    o, lse = torch.ops.sparse_transformer.attention(q, k, v, key, 0.25)
    do = torch.randn_like(o)
    args = (q.detach(), k.detach(), v.detach(), o.detach(), lse, do, key, 0.25)
    r = torch.library.opcheck(torch.ops.sparse_transformer.attention_backward.default, args)
    assert all(v == "SUCCESS" for v in r.values()), r


BACKENDS_QKV = ["torch", "reference"] + (["triton"] if CUDA else [])


@pytest.mark.parametrize("backend", BACKENDS_QKV)
def test_fused_qkv_operator(backend):
    """attention_qkv on the fused projection: opcheck, and values and the projection's gradient
    equal to the float64 reference on its q, k, v views (out laid out as (batch, seq, heads * d))."""
    from sparse_transformer.kernels import keyed_attention_qkv, op, sparse_attention

    device = "cuda" if backend == "triton" else "cpu"
    pat = P.union(*P.factorized("fixed", 16, 4))
    heads, qk_width = 2, 32
    qkv = torch.randn(2, 70, 2 * qk_width + 48, device=device, dtype=torch.float32, requires_grad=True)
    pk = pattern_key(pat, heads, backend)
    out = keyed_attention_qkv(qkv, pk, heads, qk_width, 0.3)
    assert out.shape == (2, 70, 48) and out.is_contiguous()
    g = torch.randn_like(out)
    (grad,) = torch.autograd.grad(out, qkv, g)
    x = qkv.detach().double().requires_grad_()
    ref = op.merge_heads(sparse_attention(*op.split_qkv(x, heads, qk_width), pat, backend="reference", scale=0.3))
    (want,) = torch.autograd.grad(ref, x, g.double())
    tol = 2e-2 if backend == "triton" else 1e-5  # tf32 dots on the GPU
    assert (out.double() - ref).abs().max() < tol and (grad.double() - want).abs().max() < tol
    r = torch.library.opcheck(torch.ops.sparse_transformer.attention_qkv.default,
                              (qkv.detach().clone().requires_grad_(), pk.key, 0.3, heads, qk_width))
    assert all(v == "SUCCESS" for v in r.values()), r


def test_op_gradients_match_autograd_of_the_reference():
    """The reference backend's written-out backward equals autograd through its forward."""
    from sparse_transformer.kernels import reference, sparse_attention

    pat = P.union(*P.factorized("fixed", 8, 2))
    q, k, v = _qkv(dtype=torch.float64)
    out = sparse_attention(q, k, v, pat, backend="reference")
    do = torch.randn_like(out)
    grads = torch.autograd.grad(out, (q, k, v), do)
    ref = reference.attention(q, k, v, pat)
    want = torch.autograd.grad(ref, (q, k, v), do)
    assert torch.allclose(out, ref)
    for g, w in zip(grads, want):
        print((g - w).abs().max().item())
        assert torch.allclose(g, w, atol=1e-10)


def _model(pattern, mode, recompute, backend="torch", device="cpu", **kw):
    torch.manual_seed(0)
    cfg = small_config(pattern=pattern, mode=mode, backend=backend, n_head=2, **kw)
    m = SparseTransformer(cfg).to(device)
    return apply_recompute(m) if recompute else m


@pytest.mark.parametrize("recompute", [False, True], ids=["plain", "recompute"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_zero_graph_breaks(pattern, mode, recompute):
    m = _model(pattern, mode, recompute)
    x = torch.randint(0, 256, (2, 64))
    dynamo.reset()
    ex = dynamo.explain(m)(x)
    print(pattern, mode, recompute, ex.graph_count, ex.break_reasons)
    assert ex.graph_break_count == 0 and ex.graph_count == 1


def _compiled_vs_eager(pattern, mode, recompute, backend, device, compiler, dtype=torch.float32,
                       atol=1e-5):
    eager = _model(pattern, mode, recompute, backend=backend, device=device, dropout=0.0)
    comp = _model(pattern, mode, recompute, backend=backend, device=device, dropout=0.0)
    for block in comp.blocks:
        block.forward = torch.compile(block.forward, fullgraph=True, backend=compiler)
    x = torch.randint(0, 256, (2, 64), device=device)
    outs = []
    for m in (eager, comp):
        with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
            logits = m(x)
        logits.float().square().mean().backward()
        outs.append((logits.float(), [p.grad for p in m.parameters()]))
    (lo_e, g_e), (lo_c, g_c) = outs
    err = (lo_e - lo_c).abs().max().item()
    gerr = max(((a - b).abs().max() / (a.abs().max() + 1e-12)).item() for a, b in zip(g_e, g_c))
    print(f"{pattern} {mode} recompute={recompute}: logits {err:.2e}, grads (relative) {gerr:.2e}")
    assert err <= atol and gerr <= 100 * atol


@pytest.mark.parametrize("recompute", [False, True], ids=["plain", "recompute"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_compiled_equals_eager_aot(pattern, mode, recompute):
    dynamo.reset()
    _compiled_vs_eager(pattern, mode, recompute, "torch", "cpu", "aot_eager", atol=1e-6)


def test_compiled_equals_eager_inductor():
    dynamo.reset()
    _compiled_vs_eager("fixed", "multihead", True, "torch", "cpu", "inductor")


def test_apply_compile_shares_one_compilation_per_pattern():
    from torch._dynamo.utils import counters

    m = apply_recompute(_model("strided", "interleaved", False, n_layer=4))
    dynamo.reset()
    counters.clear()
    for block in m.blocks:
        block.forward = torch.compile(block.forward, fullgraph=True, backend="aot_eager")
    m(torch.randint(0, 256, (2, 64))).float().mean().backward()
    assert counters["stats"]["unique_graphs"] == 2  # local and strided layers, not 4


def test_apply_compile_compiles_the_embedding_and_output_layer():
    m = _model("strided", "interleaved", False, n_layer=2)
    apply_compile(m)
    first = (m.embed, m.logits)
    assert all(hasattr(f, "_torchdynamo_orig_callable") for f in first)
    apply_compile(m)  # idempotent: not compiled twice
    assert (m.embed, m.logits) == first
    plain = _model("strided", "interleaved", False, n_layer=2)
    assert set(m.state_dict()) == set(plain.state_dict())  # checkpoints unchanged


def test_cuda_graph_modes_build_the_routes_first():
    """With CUDA graphs the attention routes (plans, kernel tables) are built by apply_compile, not
    by the first call, which would run inside the graph tree's private memory pool."""
    from sparse_transformer import kernels

    m = _model("strided", "interleaved", False, n_layer=2)
    kernels._ROUTES.clear()
    apply_compile(m, "reduce-overhead", seq_len=48)
    assert {key[1] for key in kernels._ROUTES} == {48} and len(kernels._ROUTES) == 2  # local, strided
    kernels._ROUTES.clear()
    apply_compile(_model("strided", "interleaved", False, n_layer=2), "reduce-overhead")  # the model's ctx
    assert len(kernels._ROUTES) == 2
    # A second model with equal (not identical) patterns: its calls hit the routes built for it.
    again = _model("strided", "interleaved", False, n_layer=2)
    kernels._ROUTES.clear()
    apply_compile(again, "reduce-overhead", seq_len=48)
    prepared = set(kernels._ROUTES)
    for block in again.blocks:  # the blocks' eager forwards (nothing compiles on the first call here)
        block.forward = block.forward.__wrapped__ if hasattr(block.forward, "__wrapped__") else block.forward
    again(torch.randint(0, 256, (1, 48)))
    assert set(kernels._ROUTES) == prepared


def test_should_compile_and_bad_values():
    assert should_compile("auto", "cuda") and not should_compile("auto", "cpu")
    assert should_compile("true", "cpu") and not should_compile("false", "cuda")
    with pytest.raises(ValueError, match="train.compile"):
        should_compile("yes", "cpu")
    with pytest.raises(ValueError, match="compile_mode"):
        apply_compile(_model("fixed", "merged", False), "fastest")


def test_train_compile_true_trains_tiny_cpu(tmp_path):
    from data_fixtures import corpus_config, prepared_corpus

    from sparse_transformer.train import train

    (tmp_path / "data").mkdir()
    data = prepared_corpus(tmp_path / "data", 20_000)
    cfg = corpus_config(data, {"train.compile": "true"})
    dynamo.reset()
    r = train(cfg, tmp_path / "run", progress=False)
    print(r)
    assert r["step"] == 12 and r["val_bpb"] < 8.0


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("pattern", PATTERNS)
def test_triton_zero_graph_breaks_and_aot_equal_gpu(pattern, mode):
    m = _model(pattern, mode, False, backend="auto", device="cuda")
    dynamo.reset()
    ex = dynamo.explain(m)(torch.randint(0, 256, (2, 64), device="cuda"))
    assert ex.graph_break_count == 0
    dynamo.reset()
    _compiled_vs_eager(pattern, mode, False, "auto", "cuda", "aot_eager", atol=1e-5)


@gpu
@pytest.mark.gpu
@pytest.mark.parametrize("pattern,mode,recompute", [
    ("fixed", "merged", False), ("strided", "multihead", True), ("dense", "interleaved", False)])
def test_triton_compiled_equals_eager_inductor_gpu(pattern, mode, recompute):
    dynamo.reset()
    _compiled_vs_eager(pattern, mode, recompute, "auto", "cuda", "inductor", dtype=torch.bfloat16,
                       atol=5e-2)


def test_compile_mode_auto_resolution():
    """auto: CUDA graphs only on CUDA with Triton/SDPA attention, no recomputation, no DDP/FSDP."""
    from sparse_transformer.compilation import resolve_compile_mode

    m = _model("fixed", "merged", False)
    assert resolve_compile_mode("auto", m) == "default"  # CPU
    assert resolve_compile_mode("reduce-overhead", m) == "reduce-overhead"
    with pytest.raises(ValueError, match="compile_mode"):
        resolve_compile_mode("fastest", m)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_compile_mode_auto_on_cuda():
    from sparse_transformer.compilation import resolve_compile_mode

    m = _model("fixed", "merged", False, backend="auto", device="cuda")
    assert resolve_compile_mode("auto", m) == "reduce-overhead"
    assert resolve_compile_mode("auto", m, recompute=True) == "default"
    assert resolve_compile_mode("auto", m, distributed="ddp") == "default"
    slow = _model("fixed", "merged", False, backend="torch", device="cuda")
    assert resolve_compile_mode("auto", slow) == "default"
    with pytest.raises(ValueError, match="torch attention backend"):
        apply_compile(slow, "reduce-overhead", 48)


def test_fused_qkv_bad_inputs():
    from sparse_transformer.kernels import keyed_attention_qkv

    pk = pattern_key(P.local(8), 2, "torch")
    with pytest.raises(ValueError, match="float tensor"):
        keyed_attention_qkv(torch.zeros(1, 16, 96, dtype=torch.int64), pk, 2, 32)
    with pytest.raises(ValueError, match="does not split"):
        keyed_attention_qkv(torch.zeros(1, 16, 64), pk, 2, 32)
