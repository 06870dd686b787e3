"""Early learning speed on the CPU: training loss of a small model over the first updates.

Used in docs/reproduction.md to compare initialisations and patterns cheaply: a 4-layer, 4-head,
d 128 model (torch backend, heads merged) on a prepared byte dataset, AdamW (lr 1e-3 after a
50-update linear warm-up, beta2 0.99, clipping 1.0), one torch thread, prints the loss of the
current batch every 50 updates. The model is built with the paper's initialisation, then the
variant re-draws in place (so runs of one seed share the data order):

* ``paper``: as built;
* ``emb02``: token and position embeddings re-drawn with std 0.02;
* ``gpt2``: ``emb02`` plus every block weight with std 0.02 and W_p, W_2 with 0.02/sqrt(2N)
  (the standard deviations of ``model.init=gpt2``).

    PYTHONPATH=src python benchmarks/early_learning.py --variant gpt2 --pattern fixed \\
        --ctx 2048 --stride 64 --c 16 --batch 4 --steps 250
"""

from __future__ import annotations

import argparse
import math
import sys
import time

import torch
import torch.nn.functional as F


def reinit(model, variant: str) -> None:
    n_layer = len(model.blocks)
    with torch.no_grad():
        if variant in ("emb02", "gpt2"):
            torch.nn.init.normal_(model.wte.weight, std=0.02)
            for table in model.wpe:
                torch.nn.init.normal_(table.weight, std=0.02)
        if variant == "gpt2":
            deep = 0.02 / math.sqrt(2 * n_layer)
            for b in model.blocks:
                for lin, std in ((b.attn.in_proj, 0.02), (b.attn.out_proj, deep), (b.mlp.fc, 0.02),
                                 (b.mlp.proj, deep)):  # fmt: skip
                    torch.nn.init.normal_(lin.weight, std=std)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", choices=["paper", "emb02", "gpt2"], default="paper")
    ap.add_argument("--pattern", default="dense")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--stride", type=int, default=32)
    ap.add_argument("--c", type=int, default=8)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--data", default="data/gcide", help="a prepared dataset folder")
    args = ap.parse_args(argv)

    from sparse_transformer.config import TrainConfig
    from sparse_transformer.data import ByteDataset
    from sparse_transformer.model import ModelConfig, SparseTransformer
    from sparse_transformer.train import configure_optimizer

    torch.set_num_threads(1)
    cfg = ModelConfig(ctx=args.ctx, n_layer=4, n_head=4, d_model=128, pattern=args.pattern,
                      stride=args.stride, c=args.c, mode="merged", backend="torch")  # fmt: skip
    torch.manual_seed(0)
    model = SparseTransformer(cfg)
    reinit(model, args.variant)
    opt = configure_optimizer(model, TrainConfig(lr=1e-3, beta2=0.99))
    ds = ByteDataset(args.data, "train")
    g = torch.Generator().manual_seed(0)
    t0 = time.time()
    for s in range(1, args.steps + 1):
        for pg in opt.param_groups:
            pg["lr"] = 1e-3 * min(1, s / 50)
        x, y = ds.get_batch(args.batch, args.ctx, g)
        loss = F.cross_entropy(model(x).reshape(-1, 256), y.reshape(-1))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s % 50 == 0:
            print(f"{args.variant:8s} {args.pattern:8s} step {s} loss {loss.item():.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
