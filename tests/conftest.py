"""Test-session settings shared by every test file."""

import os

import torch

# Without CUDA the Triton kernels run in Triton's interpreter (test_triton.py and others). Set it
# before any test module is imported: a module that imports torch._dynamo first (test_compile.py)
# makes Triton settle its interpreter setting early, and kernels built afterwards then fail with
# "Cannot call @triton.jit'd outside of the scope of a kernel" (Triton 3.6; seen 2026-12-03).
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
