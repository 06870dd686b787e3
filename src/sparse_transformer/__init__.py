"""sparse-transformer: OpenAI's Sparse Transformer (Child et al., 2019) as a maintained library.

Public API:
    patterns                      the attention patterns (local, strided, block, summary, dense, union)
    sparse_attention(q, k, v, p)  causal sparse attention with pluggable backends
    SparseTransformer, ModelConfig  the model and its configuration
    load_model(dir)               a trained model from a run or checkpoint directory
    generate(model, prompt, n)    cached, pattern-aware sampling
"""

from . import patterns
from .checkpoint import load_model
from .kernels import sparse_attention
from .model import ModelConfig, SparseTransformer
from .sample import generate

__all__ = ["ModelConfig", "SparseTransformer", "generate", "load_model", "patterns", "sparse_attention"]
__version__ = "0.1.0"
