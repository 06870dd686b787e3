"""Triton vs the torch backend on the attention of a model layer, on the GPU (values and grads).

The attention call of the ``table2-text`` fixed model (4 heads with per-head summary offsets,
l = 128, c = 32, head dim 64) at N = 8192 with batch 8 and 1, and N = 2048 with batch 8, in fp32
and bf16, with the direct kernel launches on and off. Prints the max absolute error of the output
and of dq, dk, dv against the torch backend in fp32 (itself tested against the float64 reference).

    PYTHONPATH=src python benchmarks/model_attention_check.py
"""

import torch

from sparse_transformer.kernels import sparse_attention
from sparse_transformer.kernels import triton_attention as TA
from sparse_transformer.model import ModelConfig


def run(n, B, backend, dtype, pats, seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    q, k, v, do = (torch.randn(B, 4, n, 64, device="cuda", generator=g) for _ in range(4))
    q, k, v = (t.to(dtype).requires_grad_(True) for t in (q, k, v))
    out = sparse_attention(q, k, v, pats, backend=backend)
    out.backward(do.to(dtype))
    return [t.float() for t in (out, q.grad, k.grad, v.grad)]


def main() -> None:
    for n, B in ((8192, 8), (8192, 1), (2048, 8)):
        cfg = ModelConfig(ctx=n, n_layer=1, n_head=4, d_model=256, pattern="fixed", stride=128,
                          c=32, mode="merged")  # fmt: skip
        pats = cfg.layer_patterns()[0]
        ref = run(n, B, "torch", torch.float32, pats)
        for direct in (True, False):
            TA.DIRECT_LAUNCH = direct
            for dt in (torch.float32, torch.bfloat16):
                got = run(n, B, "triton", dt, pats)
                errs = " ".join(f"{(a - b).abs().max().item():.2e}" for a, b in zip(got, ref))
                scale = " ".join(f"{b.abs().max().item():.1e}" for b in ref)
                print(f"n={n} B={B} direct={direct} {str(dt)[6:]:9s} max err out/dq/dk/dv {errs}"
                      f"  (ref max {scale})", flush=True)  # fmt: skip
    print(TA.launch_stats())


if __name__ == "__main__":
    main()
