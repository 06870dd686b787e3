"""sparse-transformer: OpenAI's Sparse Transformer (Child et al., 2019) as a maintained library.

Public API:
    patterns                      the attention patterns (local, strided, block, summary, dense, union)
    sparse_attention(q, k, v, p)  causal sparse attention with pluggable backends
"""

from . import patterns
from .kernels import sparse_attention

__all__ = ["patterns", "sparse_attention"]
__version__ = "0.1.0"
