"""The Sparse Transformer model: causality, shapes, initialisation, parameter count, config checks."""

import math

import pytest
import torch
import torch.nn.functional as F
from model_cases import small_config

from sparse_transformer.model import ModelConfig, SparseTransformer
from sparse_transformer.precision import apply_recompute

MODES = ["interleaved", "merged", "multihead"]
PATTERNS = ["dense", "strided", "fixed"]


def small(**kw):
    return small_config(**kw)


def randomized(cfg, seed=0):
    """A model with random (not zero) output weights, so logits depend on the input."""
    torch.manual_seed(seed)
    m = SparseTransformer(cfg).eval()
    with torch.no_grad():
        m.lm_head.weight.normal_(0, 0.5)
        for b in m.blocks:
            b.attn.out_proj.weight.mul_(10)
            b.mlp.proj.weight.mul_(10)
    return m


@pytest.mark.parametrize("backend", ["torch", "reference"])
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("mode", MODES)
def test_causality_whole_model(mode, pattern, backend):
    """Changing token t changes no logits before t (and does change some at or after t)."""
    m = randomized(small(mode=mode, pattern=pattern, backend=backend, n_layer=3))
    T, ts = 53, (0, 17, 40, 52)
    x = torch.randint(0, 256, (1, T), generator=torch.Generator().manual_seed(1))
    batch = x.repeat(len(ts) + 1, 1)  # row 0 as is, row k+1 changed at ts[k]: one forward
    for r, t in enumerate(ts, 1):
        batch[r, t] = (batch[r, t] + r) % 256
    out = m(batch)
    for r, t in enumerate(ts, 1):
        before = (out[r, :t] - out[0, :t]).abs().max().item() if t else 0.0
        after = (out[r, t:] - out[0, t:]).abs().max().item()
        print(f"t={t}: max change before {before:.2e}, at/after {after:.2e}")
        assert before == 0.0
        assert after > 1e-4


@pytest.mark.parametrize("T", [1, 7, 8, 37, 64])
def test_shapes_any_length(T):
    m = SparseTransformer(small(pattern="fixed", mode="merged"))
    out = m(torch.randint(0, 256, (3, T)))
    assert out.shape == (3, T, 256) and out.dtype == torch.float32


def test_prefix_consistency_ragged():
    """Logits of a prefix equal the first logits of the longer sequence (ragged lengths)."""
    m = randomized(small(pattern="strided", mode="merged"))
    x = torch.randint(0, 256, (2, 64))
    full = m(x)
    for T in (1, 13, 37):
        torch.testing.assert_close(m(x[:, :T]), full[:, :T], atol=1e-5, rtol=1e-5)


def test_backends_agree():
    cfg = small(pattern="fixed", mode="multihead")
    a = randomized(cfg)
    b = SparseTransformer(small(pattern="fixed", mode="multihead", backend="reference"))
    b.load_state_dict(a.state_dict())
    x = torch.randint(0, 256, (2, 45))
    torch.testing.assert_close(a(x), b(x), atol=1e-5, rtol=1e-5)


def test_init_statistics_and_default_output_layer():
    """The paper's standard deviations; W_out drawn N(0, 0.02) by default (issue 20)."""
    cfg = small(n_layer=4, d_model=64, n_head=4)
    torch.manual_seed(0)
    m = SparseTransformer(cfg)
    d, N = cfg.d_model, cfg.n_layer
    b = m.blocks[1]

    def std(t):
        return t.std().item()

    assert std(b.attn.in_proj.weight) == pytest.approx(math.sqrt(0.125 / d), rel=0.05)
    assert std(b.mlp.fc.weight) == pytest.approx(math.sqrt(0.125 / d), rel=0.05)
    assert std(b.attn.out_proj.weight) == pytest.approx(math.sqrt(0.125 / d / (2 * N)), rel=0.1)
    assert std(b.mlp.proj.weight) == pytest.approx(math.sqrt(0.125 / (4 * d) / (2 * N)), rel=0.05)
    assert std(m.wte.weight) == pytest.approx(0.125 / math.sqrt(d), rel=0.05)
    assert std(m.wpe[1].weight) == pytest.approx(0.125 / math.sqrt(2 * d), rel=0.2)
    assert (
        torch.count_nonzero(b.attn.in_proj.bias) == 0 and torch.count_nonzero(b.mlp.proj.bias) == 0
    )
    w = m.lm_head.weight
    print(f"W_out: std {std(w):.4f}, mean {w.mean().item():.5f}, zeros {int((w == 0).sum())}")
    assert torch.count_nonzero(w) == w.numel()
    assert std(w) == pytest.approx(0.02, rel=0.05) and abs(w.mean().item()) < 2e-3
    # Logits depend on the input from the start (std 0.02 * sqrt(d): the final LayerNorm's
    # output has unit variance), and every parameter gets a gradient at once.
    x = torch.randint(0, 256, (4, 64))
    logits = m(x)
    print(f"logits std {logits.std().item():.4f} (0.02 * sqrt(d) = {0.02 * math.sqrt(d):.4f})")
    assert logits.std().item() == pytest.approx(0.02 * math.sqrt(d), rel=0.2)
    F.cross_entropy(logits.reshape(-1, 256), x.reshape(-1)).backward()
    for n, p in m.named_parameters():
        assert p.grad.abs().sum() > 0, n


def test_zero_logits_option_uniform_prediction():
    """``zero_logits=True``: the authors' zero W_out, a uniform first prediction (loss ln 256);
    W_out still gets a gradient, but no weight below it does on the first update."""
    torch.manual_seed(0)
    m = SparseTransformer(small(n_layer=4, d_model=64, n_head=4, zero_logits=True))
    x = torch.randint(0, 256, (4, 64))
    logits = m(x)
    assert torch.count_nonzero(logits) == 0
    y = torch.randint(0, 256, (4, 64))
    loss = F.cross_entropy(logits.reshape(-1, 256), y.reshape(-1))
    assert abs(loss.item() - math.log(256)) < 1e-6
    loss.backward()
    assert m.lm_head.weight.grad.abs().sum() > 0
    below = [n for n, p in m.named_parameters() if n != "lm_head.weight"]
    assert all(torch.count_nonzero(m.get_parameter(n).grad) == 0 for n in below)
    # The rest of the initialisation is the same as the default's (same seed, same draws).
    torch.manual_seed(0)
    default = SparseTransformer(small(n_layer=4, d_model=64, n_head=4))
    for (n, a), (_, b) in zip(m.named_parameters(), default.named_parameters()):
        if n != "lm_head.weight":
            assert torch.equal(a, b), n


def test_gpt2_init():
    cfg = small(n_layer=4, d_model=64, n_head=4, init="gpt2")
    torch.manual_seed(0)
    m = SparseTransformer(cfg)
    b = m.blocks[1]
    assert b.attn.in_proj.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert b.mlp.proj.weight.std().item() == pytest.approx(0.02 / math.sqrt(8), rel=0.05)
    assert m.wte.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert m.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.05)
    zero = SparseTransformer(small(n_layer=4, d_model=64, n_head=4, init="gpt2", zero_logits=True))
    assert torch.count_nonzero(zero.lm_head.weight) == 0
    with pytest.raises(ValueError, match="model.init"):
        small(init="xavier")


def test_enwik8_parameter_count():
    """The paper's EnWik8 model (30 L, 8 H, d 512, FF 4d, ctx 12288, l 128): 95M (spec 5.4)."""
    cfg = ModelConfig(
        ctx=12288, n_layer=30, n_head=8, d_model=512, pattern="fixed", stride=128, c=32
    )
    m = SparseTransformer(cfg)
    n = m.num_params()
    print(f"enwik8 model: {n} parameters")
    assert n == 94_949_376  # spec 5.4's 94.95M (untied W_out, biases, 96 + 128 position rows)
    assert [t.num_embeddings for t in m.wpe] == [96, 128]
    assert m.num_params(exclude_embeddings=True) == n - 256 * 512 - (96 + 128) * 512


def test_half_size_widths():
    m = SparseTransformer(small(half_size=True, d_model=32, n_head=4))
    b = m.blocks[0]
    assert b.mlp.fc.out_features == 64  # 2d
    assert b.attn.in_proj.out_features == 16 + 16 + 32  # q, k of d/2; v of d
    assert m(torch.randint(0, 256, (1, 30))).shape == (1, 30, 256)


def test_position_embeddings_factorized():
    m = SparseTransformer(small(ctx=20, stride=8))  # default data_shape (3, 8)
    assert [t.num_embeddings for t in m.wpe] == [3, 8]
    assert m.position_coords(19, 1)[0].tolist() == [2, 3]
    img = SparseTransformer(small(ctx=48, data_shape=(4, 4, 3)))  # images: (H, W, C)
    assert [t.num_embeddings for t in img.wpe] == [4, 4, 3]
    assert img.position_coords(47, 1)[0].tolist() == [3, 3, 2]
    assert img.position_coords(0, 48)[13].tolist() == [1, 0, 1]
    assert [k for k in img.state_dict() if k.startswith("wpe")] == [
        f"wpe.{j}.weight" for j in range(3)
    ]


def test_blocks_interface_and_recompute():
    cfg = small(dropout=0.2)
    torch.manual_seed(0)
    a = SparseTransformer(cfg).train()
    with torch.no_grad():
        a.lm_head.weight.normal_()
    b = SparseTransformer(cfg).train()
    b.load_state_dict(a.state_dict())
    apply_recompute(b)
    x = torch.randint(0, 256, (2, 40))
    for m, seed in ((a, 3), (b, 3)):
        torch.manual_seed(seed)
        m(x).square().mean().backward()
    for (n, pa), (_, pb) in zip(a.named_parameters(), b.named_parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, msg=n)
    h = a.embed(x)
    assert a.blocks[0](h).shape == h.shape


def test_dropout_only_in_training():
    m = randomized(small(dropout=0.5))
    x = torch.randint(0, 256, (2, 30))
    torch.testing.assert_close(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))


def test_layer_patterns_exposed():
    m = SparseTransformer(small(pattern="strided", mode="multihead", n_layer=3))
    pats = m.layer_patterns()
    assert len(pats) == 3 and all(len(row) == 4 for row in pats)


@pytest.mark.parametrize(
    "kw, match",
    [
        (
            {"pattern": "strid"},
            "unknown model.pattern 'strid'; choose from dense, fixed, local, strided",
        ),
        ({"mode": "mixed"}, "unknown model.mode 'mixed'"),
        ({"backend": "cuda"}, "unknown model.backend 'cuda'"),
        ({"d_model": 30}, "d_model=30 must be a multiple of model.n_head=4"),
        ({"d_model": 36, "half_size": True}, "half_size"),
        ({"n_layer": 0}, "n_layer must be an integer >= 1"),
        ({"stride": 0}, "stride"),
        ({"c": 0}, "model.c"),
        ({"c": 16, "pattern": "fixed"}, "c=16 .* <= model.stride=8"),
        ({"ctx": 80}, "ctx=80 exceeds"),  # data_shape given, too small
        ({"data_shape": (0, 8)}, "data_shape"),
        ({"dropout": 1.0}, "dropout"),
        ({"ctx": 1.5}, "ctx"),
        ({"mode": "multihead", "pattern": "fixed", "n_head": 3, "d_model": 48}, "multiple of 2"),
        ({"layers": "local,foo"}, "only used by mode 'interleaved'"),
        ({"mode": "interleaved", "layers": "local,foo"}, "unknown layer component 'foo'"),
    ],
)
def test_bad_config_raises(kw, match):
    base = {"ctx": 64, "n_layer": 2, "n_head": 4, "d_model": 32, "stride": 8, "c": 2}
    if kw.get("ctx") == 80:
        base["data_shape"] = (8, 8)
    base.update(kw)
    with pytest.raises(ValueError, match=match):
        ModelConfig(**base)


def test_bad_inputs_raise():
    m = SparseTransformer(small())
    with pytest.raises(ValueError, match="outside the context"):
        m(torch.zeros(1, 65, dtype=torch.long))
    with pytest.raises(ValueError, match="integer"):
        m(torch.zeros(1, 5))
    with pytest.raises(ValueError, match=r"\(batch, time\)"):
        m(torch.zeros(5, dtype=torch.long))
    with pytest.raises(TypeError):
        SparseTransformer({"ctx": 64})
    with pytest.raises(TypeError, match="head_offsets"):
        small(head_offsets="yes")


def test_config_json_round_trip():
    import dataclasses
    import json

    cfg = small(data_shape=(8, 8))
    back = ModelConfig(**json.loads(json.dumps(dataclasses.asdict(cfg))))
    assert back == cfg and isinstance(back.data_shape, tuple)


def test_autocast_bf16_forward_backward():
    m = randomized(small(pattern="fixed", mode="merged")).train()
    x = torch.randint(0, 256, (2, 40))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(x)
    ref = m(x)
    err = (out.float() - ref).abs().max().item()
    print(f"bf16 autocast max err {err:.3f} (scale {ref.abs().max():.2f})")
    assert err < 0.1 * ref.abs().max().item()
    out.float().square().mean().backward()
    assert all(p.grad is not None for p in m.parameters())


def test_meta_device_construction_then_init():
    """FSDP-style: build on the meta device, materialise, then initialise."""
    cfg = small(zero_logits=True)
    with torch.device("meta"):
        m = SparseTransformer(cfg)
    m.to_empty(device="cpu")
    m.init_weights()
    assert torch.count_nonzero(m(torch.randint(0, 256, (1, 20)))) == 0
    assert m.blocks[0].ln1.weight.eq(1).all()
    with torch.device("meta"):
        m = SparseTransformer(small())
    m.to_empty(device="cpu")
    m.init_weights()
    assert m.lm_head.weight.std().item() == pytest.approx(0.02, rel=0.05)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("backend", ["auto", "torch", "flex"])
@pytest.mark.parametrize("mode", MODES)
def test_cuda_backends_match_reference(mode, backend):
    """The whole model on CUDA (auto = Triton) against the float32 reference backend: values,
    gradients, causality, and bf16 autocast."""
    from sparse_transformer.kernels import backend_available

    if not backend_available("triton" if backend == "auto" else backend, "cuda"):
        pytest.skip(f"{backend} unavailable")
    kw = {"ctx": 512, "n_layer": 2, "n_head": 4, "d_model": 128, "stride": 32, "c": 8}
    ref = randomized(small(mode=mode, pattern="fixed", backend="reference", **kw)).cuda()
    m = SparseTransformer(small(mode=mode, pattern="fixed", backend=backend, **kw)).cuda().eval()
    m.load_state_dict(ref.state_dict())
    x = torch.randint(0, 256, (2, 300), device="cuda")  # ragged
    out, want = m(x), ref(x)
    err = (out - want).abs().max().item()
    print(f"{backend}/{mode}: max err {err:.2e} (scale {want.abs().max():.2f})")
    assert err < 1e-2 * want.abs().max().item()
    out.square().mean().backward()
    want.square().mean().backward()
    for (n, a), (_, b) in zip(m.named_parameters(), ref.named_parameters()):
        gerr = (a.grad - b.grad).abs().max().item()
        assert gerr <= 2e-2 * b.grad.abs().max().item() + 1e-6, (n, gerr)
    y = x.clone()
    y[:, 150] = (y[:, 150] + 1) % 256
    with torch.no_grad():
        both = m(torch.cat([x, y]))  # one call: the same compiled kernel sees both
        assert torch.equal(both[:2, :150], both[2:, :150])
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lo = m(x).float()
    assert (lo - want).abs().max().item() < 0.1 * want.abs().max().item()
