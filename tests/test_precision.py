"""Recomputation and mixed precision, applied from outside the model."""

import pytest
import torch
from torch import nn

from sparse_transformer.precision import (
    DynamicLossScaler,
    apply_recompute,
    autocast,
    check_finite_loss,
    compute_dtype,
)


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.ln, self.fc, self.drop = nn.LayerNorm(d), nn.Linear(d, d), nn.Dropout(0.3)

    def forward(self, x):
        return x + self.drop(torch.nn.functional.gelu(self.fc(self.ln(x))))


class Toy(nn.Module):
    def __init__(self, d=16, n=3):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(Block(d) for _ in range(n))

    def forward(self, x):
        for b in self.blocks:
            x = b(x)
        return x


def grads(model, x, seed):
    torch.manual_seed(seed)
    model.zero_grad()
    model(x).pow(2).sum().backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_recompute_same_gradients_with_dropout():
    x = torch.randn(4, 16)
    plain = grads(Toy().train(), x, seed=5)
    model = apply_recompute(Toy().train())
    names = [n for n, _ in model.named_parameters()]
    assert names == list(plain)  # parameter names unchanged: checkpoints are interchangeable
    recomputed = grads(model, x, seed=5)
    for n in plain:
        assert torch.equal(plain[n], recomputed[n]), n


def test_recompute_idempotent_and_needs_blocks():
    m = apply_recompute(apply_recompute(Toy()))
    assert all(b._recompute for b in m.blocks)
    with pytest.raises(ValueError, match="blocks"):
        apply_recompute(nn.Linear(2, 2))


def test_loss_scaler_recovers_from_injected_inf():
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = DynamicLossScaler(init_scale=2.0**10, growth_interval=2)
    x = torch.randn(4, 16)
    history = []
    for step in range(6):
        opt.zero_grad()
        scaler.scale(model(x).pow(2).mean()).backward()
        if step == 1:  # an overflow in one gradient
            next(model.parameters()).grad[0] = float("inf")
        before = [p.detach().clone() for p in model.parameters()]
        ok = scaler.unscale_(model.parameters())
        if ok:
            opt.step()
        scaler.update(ok)
        changed = any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
        history.append((ok, changed, scaler.scale_value))
    assert history[1] == (False, False, 2.0**9)  # skipped, parameters untouched, scale halved
    assert all(ok and changed for ok, changed, _ in history[2:])
    assert [h[2] for h in history[2:]] == [2.0**9, 2.0**10, 2.0**10, 2.0**11]  # x2 per 2 clean steps
    state = scaler.state_dict()
    fresh = DynamicLossScaler()
    fresh.load_state_dict(state)
    assert fresh.state_dict() == state


def test_bf16_and_fp16_autocast_run():
    model = Toy()
    x = torch.randn(4, 16)
    for precision in ("bf16", "fp16"):
        with autocast(precision, "cpu"):
            y = model.blocks[0].fc(x)
        assert y.dtype == compute_dtype(precision)
        with autocast(precision, "cpu"):
            loss = model(x).float().pow(2).mean()
        loss.backward()
        assert all(p.grad.dtype == torch.float32 for p in model.parameters())  # fp32 master weights
    with pytest.raises(ValueError, match="unknown train.precision 'fp8'"):
        compute_dtype("fp8")


def test_non_finite_loss_stops_with_message():
    check_finite_loss(torch.tensor(1.0), 3)
    with pytest.raises(FloatingPointError, match="loss is nan at step 7"):
        check_finite_loss(torch.tensor(float("nan")), 7)
