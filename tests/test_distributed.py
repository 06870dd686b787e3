"""Data parallelism on CPU processes (gloo): DDP and FSDP2 match one process on the same global batch."""

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from sparse_transformer import distributed as D

STEPS, GLOBAL_BATCH, WORLD = 10, 8, 2


class Toy(nn.Module):
    """A stand-in with the model's shape: residual blocks in ``.blocks``."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(16), nn.Linear(16, 16)) for _ in range(3))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        for b in self.blocks:
            x = x + b(x)
        return self.head(x)


def batches():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(GLOBAL_BATCH, 16, generator=g), torch.randn(GLOBAL_BATCH, 4, generator=g)) for _ in range(STEPS)]


def train(model, info, micro: int):
    """Global-batch mean loss; each rank takes its share, split into micro-batches."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    share = GLOBAL_BATCH // info.world_size
    for x, y in batches():
        x = x[info.rank * share : (info.rank + 1) * share]
        y = y[info.rank * share : (info.rank + 1) * share]
        n_micro = share // micro
        for m in range(n_micro):
            D.set_gradient_sync(model, m == n_micro - 1)
            xs, ys = x[m * micro : (m + 1) * micro], y[m * micro : (m + 1) * micro]
            loss = nn.functional.mse_loss(model(xs), ys) / n_micro
            loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


def _worker(rank, port, mode, micro, out):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(WORLD), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = D.init_distributed(mode, "cpu")
    model = D.apply_parallel(Toy(), mode, info)
    opt = train(model, info, micro)
    state = D.full_model_state(model)
    optim = D.full_optimizer_state(model, opt)
    if info.is_main:
        torch.save({"model": state, "optim": optim}, out)
    del model, opt, state, optim  # the process group goes with the last reference (D.cleanup)
    D.cleanup()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single():
    model = Toy()
    train(model, D.DistInfo(), micro=GLOBAL_BATCH)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("mode,micro", [("ddp", 4), ("ddp", 2), ("fsdp", 4), ("fsdp", 2)])
def test_two_processes_match_one(tmp_path, single, mode, micro):
    out = tmp_path / "state.pt"
    mp.spawn(_worker, args=(free_port(), mode, micro, str(out)), nprocs=WORLD, join=True)
    got = torch.load(out, weights_only=True)
    worst = max((got["model"][k] - v).abs().max().item() for k, v in single.items())
    print(f"{mode} micro={micro}: max |param diff| vs one process = {worst:.2e}")
    assert worst < 1e-5  # fp32; reductions in a different order
    # The full state loads into a plain single-process model and optimizer.
    model = Toy()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    D.load_full_state(model, got["model"], opt, got["optim"])
    assert torch.equal(model.head.weight, got["model"]["head.weight"])
    assert len(opt.state) == len(list(model.parameters()))


def test_single_process_defaults(monkeypatch):
    for k in ("RANK", "WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    info = D.init_distributed("ddp", "cpu")
    assert (info.rank, info.world_size, info.is_main, info.enabled) == (0, 1, True, False)
    model = Toy()
    assert D.apply_parallel(model, "ddp", info) is model
    with pytest.raises(ValueError, match="unknown train.distributed 'mpi'"):
        D.init_distributed("mpi")
