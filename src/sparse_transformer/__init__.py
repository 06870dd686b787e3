"""sparse-transformer: OpenAI's Sparse Transformer (Child et al., 2019) as a maintained library.

Public API:
    patterns                      the attention patterns (local, strided, block, summary, dense, union)
    sparse_attention(q, k, v, p)  causal sparse attention with pluggable backends
    load_model(dir)               a trained model from a run or checkpoint directory
"""

from . import patterns
from .checkpoint import load_model
from .kernels import sparse_attention

__all__ = ["load_model", "patterns", "sparse_attention"]
__version__ = "0.1.0"
