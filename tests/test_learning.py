"""Learning: a tiny fixed-pattern model must learn within a few dozen CPU updates (issue 20).

The test that would have caught the zero output layer: with W_out = 0 no weight below it gets a
gradient on the first update, and on this corpus the model stays near the unigram level (about
3.6 nats) where the default init reaches about 2.6 nats in 40 updates of 4 x 128 bytes.
"""

import functools

import pytest
import torch
import torch.nn.functional as F
from data_fixtures import text_bytes

from sparse_transformer.config import TrainConfig
from sparse_transformer.model import ModelConfig, SparseTransformer
from sparse_transformer.train import configure_optimizer, lr_at

CTX, BATCH, UPDATES = 128, 4, 40
TARGET = 3.0  # nats: mean training loss of the last 5 updates (uniform: ln 256 = 5.55)
# Measured (seeds 0-2, one thread): paper init 2.49-2.66, gpt2 2.26-2.32; the same models with
# zero_logits=True 3.58-3.60 (paper: stuck at the unigram level) and 3.19-3.26 (gpt2).


def tiny_config(**kw) -> ModelConfig:
    """Fixed pattern l=16, c=4, heads merged with per-head summary offsets, 2 layers, d 64."""
    return ModelConfig(**{
        "ctx": CTX, "n_layer": 2, "n_head": 4, "d_model": 64, "pattern": "fixed", "stride": 16,
        "c": 4, "mode": "merged", "head_offsets": True, "backend": "torch", **kw,
    })  # fmt: skip


def corpus() -> torch.Tensor:
    """20 kB of generated play-like text (data_fixtures.text_bytes): learnable structure."""
    return torch.tensor(list(text_bytes(20_000)), dtype=torch.long)


def batches(data: torch.Tensor, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        i = torch.randint(0, len(data) - CTX - 1, (BATCH,), generator=g).tolist()
        x = torch.stack([data[j : j + CTX] for j in i])
        y = torch.stack([data[j + 1 : j + CTX + 1] for j in i])
        yield x, y


@functools.cache  # the zero-W_out test reuses the default run of the parametrized test
def train_losses(cfg: ModelConfig, updates: int = UPDATES, seed: int = 0) -> tuple[float, ...]:
    """Training losses (nats) of ``updates`` AdamW updates (lr 3e-3, 5 warm-up, cosine, clip 1)."""
    torch.manual_seed(seed)
    model = SparseTransformer(cfg)
    t = TrainConfig(lr=3e-3, warmup=5, max_steps=updates, beta2=0.99)
    opt = configure_optimizer(model, t)
    losses = []
    with _one_thread():
        for step, (x, y) in enumerate(batches(corpus(), updates, seed), 1):
            for group in opt.param_groups:
                group["lr"] = lr_at(step, t)
            loss = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            losses.append(loss.item())
    return tuple(losses)


class _one_thread:
    def __enter__(self):
        self.n = torch.get_num_threads()
        torch.set_num_threads(1)

    def __exit__(self, *exc):
        torch.set_num_threads(self.n)


def tail(losses: tuple[float, ...]) -> float:
    return sum(losses[-5:]) / 5


@pytest.mark.parametrize("init", ["paper", "gpt2"])
def test_default_init_learns_in_a_few_dozen_updates(init):
    losses = train_losses(tiny_config(init=init))
    print(f"{init}: loss every 5 updates", " ".join(f"{v:.2f}" for v in losses[4::5]))
    print(f"{init}: mean of the last 5 updates {tail(losses):.3f} nats (target < {TARGET})")
    assert tail(losses) < TARGET


def test_zero_output_layer_misses_the_target():
    """The threshold separates: the same model with the authors' zero W_out stays above it."""
    default = tail(train_losses(tiny_config()))
    zero = tail(train_losses(tiny_config(zero_logits=True)))
    print(f"last 5 updates: default W_out {default:.3f}, zero W_out {zero:.3f} nats")
    assert default < TARGET < zero
    assert zero - default > 0.5


def test_every_parameter_gets_a_gradient_on_the_first_two_updates():
    """No parameter tensor has an all-zero gradient on update 1 or 2. (With zero_logits=True
    every tensor but W_out fails on update 1; on update 2 all pass, since W_out has moved.)"""
    torch.manual_seed(0)
    model = SparseTransformer(tiny_config())
    opt = configure_optimizer(model, TrainConfig(lr=1e-3))
    for update, (x, y) in enumerate(batches(corpus(), 2), 1):
        F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1)).backward()
        dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
        print(f"update {update}: {len(dead)} parameter tensors with an all-zero gradient {dead}")
        assert not dead
        opt.step()
        opt.zero_grad(set_to_none=True)
