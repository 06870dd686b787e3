"""Shared helpers for the model, attention-module and sampling tests."""

from sparse_transformer.model import ModelConfig

SMALL = {"ctx": 64, "n_layer": 2, "n_head": 4, "d_model": 32, "stride": 8, "c": 2, "backend": "torch"}


def small_config(**overrides) -> ModelConfig:
    """A tiny model config (64 tokens, 2 layers, 4 heads, d 32, stride 8, c 2, torch backend)."""
    return ModelConfig(**{**SMALL, **overrides})
