"""Long sequences (issue 5) on the CPU: recomputation with the real model, memory growth of a
training step with N, fp16 loss scaling and non-finite losses inside the real training loop,
bf16 training, and the audio presets."""

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from data_fixtures import corpus_config, prepared_corpus

from sparse_transformer import checkpoint as C
from sparse_transformer import precision
from sparse_transformer import train as T
from sparse_transformer.config import get_preset
from sparse_transformer.model import ModelConfig, SparseTransformer
from sparse_transformer.precision import apply_recompute


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return prepared_corpus(tmp_path_factory.mktemp("data"), 20_000)


def tiny(data_dir, **over):
    return corpus_config(data_dir, {"train.threads": 1, **over})


def events(run, kind="train"):
    lines = (run / T.METRICS_FILE).read_text().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == kind]


# --------------------------------------------------------------------------------------------
# Recomputation with the real model
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ff_chunk", [None, 100])
def test_recompute_gives_the_same_gradients_with_dropout(ff_chunk, monkeypatch):
    """fp32, dropout 0.2, strided multihead model on the torch backend: gradients with and
    without recomputation agree to 1e-6 (relative); the recomputed blocks really run twice and
    the dropout masks really matter (another seed gives other gradients). ``ff_chunk=100``: the
    feed-forward networks also run in recomputed chunks of 100 of the 256 positions."""
    if ff_chunk is not None:
        monkeypatch.setattr(precision, "FF_CHUNK_TOKENS", ff_chunk)
    cfg = ModelConfig(
        ctx=128, n_layer=3, n_head=2, d_model=32, pattern="strided", stride=16,
        mode="multihead", dropout=0.2, backend="torch",
    )  # fmt: skip
    torch.manual_seed(0)
    plain = SparseTransformer(cfg)
    torch.nn.init.normal_(plain.lm_head.weight, std=0.05)  # larger gradients than 0.02
    recomputed = SparseTransformer(cfg)
    recomputed.load_state_dict(plain.state_dict())
    apply_recompute(recomputed)
    x = torch.randint(0, 256, (2, 128), generator=torch.Generator().manual_seed(1))

    def grads(model, seed):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(seed)
        logits = model(x)
        F.cross_entropy(logits[:, :-1].reshape(-1, 256), x[:, 1:].reshape(-1)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    calls = []
    hooks = [b.register_forward_pre_hook(lambda *_: calls.append(1)) for b in recomputed.blocks]
    g_plain, g_rec = grads(plain, 5), grads(recomputed, 5)
    for h in hooks:
        h.remove()
    assert len(calls) == cfg.n_layer  # the module is called once ...
    assert all(b._recompute for b in recomputed.blocks)  # ... and recomputed in backward
    assert g_plain.keys() == g_rec.keys()
    for name in g_plain:
        ref, got = g_plain[name], g_rec[name]
        assert ref.abs().max() > 0, name
        err = (got - ref).norm() / ref.norm()
        assert err <= 1e-6, (name, float(err))
    other = grads(plain, 6)  # dropout is live: another mask, other gradients
    assert not torch.allclose(other["blocks.0.mlp.fc.weight"], g_plain["blocks.0.mlp.fc.weight"])


# --------------------------------------------------------------------------------------------
# Memory of a training step against N
# --------------------------------------------------------------------------------------------

_PROBE = textwrap.dedent(
    """
    import math, os, sys
    import torch, torch.nn.functional as F
    from sparse_transformer.model import ModelConfig, SparseTransformer
    N = int(sys.argv[1])
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = ModelConfig(ctx=N, n_layer=2, n_head=2, d_model=64, pattern="strided",
                      stride=math.isqrt(N), mode="multihead", backend="torch")
    model = SparseTransformer(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randint(0, 256, (1, N + 1))
    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    def hwm():  # peak resident set (VmHWM), bytes
        with open("/proc/self/status") as f:
            return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmHWM"))
    try:  # reset the peak to the current resident set (Linux >= 4.0), so earlier peaks don't count
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    before = rss()
    logits = model(x[:, :-1])
    F.cross_entropy(logits.reshape(-1, 256), x[:, 1:].reshape(-1)).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    print(hwm() - before)
    """
)


def step_memory(n: int) -> int:
    """Bytes a fresh process's peak resident set (VmHWM, reset just before the step) exceeds its
    resident set before one training step at length n (glibc's mmap threshold fixed at 64 KiB, so
    freed tensors go back to the system)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", OMP_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(n)], capture_output=True, text=True, env=env,
        timeout=300, check=True,
    )  # fmt: skip
    return int(out.stdout.split()[-1])


def test_step_memory_grows_subquadratically():
    """One full training step (fwd, bwd, AdamW) of a 2-layer strided model, l = sqrt(N), torch
    backend, fp32: N x4 (4096 -> 16384) costs far less than x16 (dense attention's growth) and
    less than x8 in peak resident memory."""
    small, large = step_memory(4096), step_memory(16384)
    ratio = large / small
    print(
        f"step memory: N=4096 {small / 2**20:.1f} MiB, N=16384 {large / 2**20:.1f} MiB, x{ratio:.2f}"
    )
    assert large > small > 0
    assert ratio < 8.0, ratio


# --------------------------------------------------------------------------------------------
# Mixed precision inside the real training loop
# --------------------------------------------------------------------------------------------


def _hook_model(monkeypatch, transform):
    """Make train() build its model with ``transform(model)`` applied (hooks for injection)."""
    build = T.build_model

    def patched(cfg):
        return transform(build(cfg))

    monkeypatch.setattr(T, "build_model", patched)


def test_fp16_loss_scaling_recovers_from_an_injected_inf_gradient(
    data_dir, tmp_path, monkeypatch, caplog
):
    """An inf gradient in update 4: that update is skipped (weights unchanged), the scale halves
    (2^16 -> 2^15, logged), and training carries on to the end with finite losses."""
    seen = {"backward": 0, "steps": []}

    def inject(model):
        def hook(grad):
            seen["backward"] += 1
            if seen["backward"] == 4:
                return torch.full_like(grad, math.inf)
            return grad

        model.blocks[0].mlp.fc.weight.register_hook(hook)
        return model

    _hook_model(monkeypatch, inject)
    # Record which updates reach the optimizer: the bad one must not (its weights stay).
    step_fn = torch.optim.AdamW.step

    def step(self, *a, **k):
        out = step_fn(self, *a, **k)
        seen["steps"].append(seen["backward"])
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    cfg = tiny(data_dir, **{"train.precision": "fp16", "train.max_steps": 8})
    run = tmp_path / "fp16"
    with caplog.at_level("INFO"):
        result = T.train(cfg, run, progress=False)
    assert result["step"] == 8 and math.isfinite(result["train_loss"])
    assert "step skipped, loss scale lowered to 32768" in caplog.text
    assert "| loss scale 65536" in caplog.text and "| loss scale 32768" in caplog.text  # logged
    scales = [e["loss_scale"] for e in events(run)]
    assert scales[:3] == [65536.0] * 3 and scales[3:] == [32768.0] * 5, scales
    assert all(math.isfinite(e["loss"]) for e in events(run))
    assert seen["steps"] == [1, 2, 3, 5, 6, 7, 8]  # opt.step ran for every update but the 4th
    ts = C.load_trainer_state(C.latest_checkpoint(run))
    assert ts["scaler"] == {"scale": 32768.0, "good_steps": 4, "skipped": 1}


def test_bf16_with_recompute_trains(data_dir, tmp_path):
    cfg = tiny(
        data_dir, **{"train.precision": "bf16", "train.recompute": True, "model.dropout": 0.1}
    )
    result = T.train(cfg, tmp_path / "bf16", progress=False)
    losses = [e["loss"] for e in events(tmp_path / "bf16")]
    assert result["step"] == 12 and all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0]  # it learns
    assert "loss_scale" not in events(tmp_path / "bf16")[0]  # no scaling in bf16


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path, monkeypatch):
    """NaN logits in update 9 (after the checkpoint at 6): FloatingPointError naming the step;
    the step-6 checkpoint stays the latest, loads, and the run resumes from it."""
    calls = {"n": 0}

    def poison(model):
        forward = model.forward

        def wrapped(idx):
            out = forward(idx)
            if model.training:
                calls["n"] += 1
                if calls["n"] == 9:
                    return out * math.nan
            return out

        model.forward = wrapped
        return model

    _hook_model(monkeypatch, poison)
    run = tmp_path / "nan"
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 9.*last good checkpoint"):
        T.train(tiny(data_dir), run, progress=False)
    latest = C.latest_checkpoint(run)
    assert latest is not None and latest.name == "ckpt-000006"
    model = C.load_model(latest)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    monkeypatch.undo()
    result = T.train(tiny(data_dir), run, resume=True, progress=False)
    assert result["step"] == 12 and math.isfinite(result["train_loss"])


# --------------------------------------------------------------------------------------------
# Audio presets
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ctx", "params"),
    [("audio-65k", 65_536, 152e6), ("audio-262k", 262_144, 25e6), ("audio-1m", 1_048_576, 3e6)],
)
def test_audio_presets(name, ctx, params):
    cfg = get_preset(name)
    m, t = cfg.model, cfg.train
    assert m.ctx == ctx and m.pattern == "strided" and m.stride == math.isqrt(ctx)
    assert m.position_shape == (ctx // m.stride, m.stride)
    assert cfg.data.dataset == "moh-music"
    assert t.precision == "bf16" and t.recompute and t.micro_batch_size == 1
    with torch.device("meta"):
        n = SparseTransformer(m).num_params()
    assert abs(n - params) / params < 0.05, n  # the paper's 152M / 25M / 3M within 5%
