"""Autoregressive sampling with a cache that knows the attention pattern (spec section 10).

The prompt is run once through the ordinary (sparse) forward pass, which fills the cache. After
that each new token runs through the blocks alone: at position i every head projects its query,
key and value, appends the key and value to the cache, and attends only to the keys of its pattern
row ``pattern.row(i)``, gathered from the cache. A token thus costs O(|row| · d) attention work per
layer (plus the position-wise projections and feed-forward), never a re-run of the prefix. The
q·k products and the softmax run in float32 whatever the model's dtype (the paper casts queries
and keys to fp32 when sampling, as fp16 q·k can overflow).

What is cached. The authors' sampler (distribution_augmentation) caches each layer's *input* h and
recomputes K and V from it at every step, to save memory on 16 GB GPUs. Recomputing the keys and
values of a pattern row costs O(|row| · d²) per layer and token (a fixed-pattern row at EnWik8
settings holds up to 3168 keys), so here we cache the keys and values themselves: twice the memory
of caching h (2 · n_layer · ctx · d numbers per sequence: 1.5 GB in float32 for the 95M EnWik8
model at ctx 12,288) for a step that only gathers. Cached keys and values keep the model's dtype.

:func:`generate` is the one sampling loop: text (the CLI), images and audio
(:mod:`sparse_transformer.media`) all call it.

Limits. One cached pass stops at the model's context: ``T0 + length <= ctx`` (``ctx + 1`` with
``start_token``: the last sampled token is never fed back), a ValueError otherwise unless a
sliding ``window`` is given: past the context, each further pass re-encodes the last ``window``
tokens as its prompt (a fresh cache, positions from 0) and samples until the context is full
again. The prompt must hold at least one token (``T0 >= 1``): the model has no start-of-sequence
token of its own, so the caller chooses one (the image data layer uses byte 0, a text caller
might use b"\\n").
"""

from __future__ import annotations

import logging
import math
import time

import torch
from tqdm.auto import tqdm

from .model import SparseTransformer
from .patterns import Pattern

log = logging.getLogger(__name__)

__all__ = ["KVCache", "generate", "incremental_logits", "pick_token", "prefill", "step"]


def _unwrap(model) -> SparseTransformer:
    while not isinstance(model, SparseTransformer) and hasattr(model, "module"):
        model = model.module  # DDP and similar wrappers
    model = getattr(model, "_orig_mod", model)  # torch.compile
    if not isinstance(model, SparseTransformer):
        raise TypeError(f"expected a SparseTransformer, got {type(model).__name__}")
    return model


class KVCache:
    """Keys and values of every past position, per layer: ``k[r]`` (B, H, capacity, d_qk/H),
    ``v[r]`` (B, H, capacity, d/H); ``n`` positions are filled.

    Also holds each layer's per-head patterns (``head_patterns[r]``); a step builds the key rows
    once per distinct tuple of head patterns (layers usually share one) and gathers all heads'
    keys in one indexing operation.
    """

    def __init__(
        self,
        model: SparseTransformer,
        batch: int,
        capacity: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        model = _unwrap(model)
        cfg = model.cfg
        if not 1 <= capacity <= cfg.ctx:
            raise ValueError(f"cache capacity {capacity} must be in 1..ctx={cfg.ctx}")
        p = next(model.parameters())
        device = p.device if device is None else torch.device(device)
        dtype = p.dtype if dtype is None else dtype
        H = cfg.n_head
        self.capacity, self.n = capacity, 0
        self.k = [
            torch.zeros(batch, H, capacity, cfg.qk_width // H, device=device, dtype=dtype)
            for _ in model.blocks
        ]
        self.v = [
            torch.zeros(batch, H, capacity, cfg.d_model // H, device=device, dtype=dtype)
            for _ in model.blocks
        ]
        self.head_patterns = [tuple(block.attn.patterns) for block in model.blocks]
        self.heads = torch.arange(H, device=device)[:, None]  # (H, 1) for per-head gathers
        self.scale = 1.0 / math.sqrt(cfg.qk_width // H)


def _fp32(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def prefill(model: SparseTransformer, idx: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Run ``idx`` (B, T) at positions ``cache.n``.. with the full sparse forward pass
    (``cache.n`` must be 0), storing every layer's keys and values; returns (B, T, vocab)."""
    model = _unwrap(model)
    T = idx.shape[1]
    if cache.n != 0:
        raise ValueError("prefill starts from an empty cache")
    if T > cache.capacity:
        raise ValueError(f"prompt of {T} tokens exceeds the cache capacity {cache.capacity}")

    def attend_for(r: int, attn):
        def attend(q, k, v):
            cache.k[r][:, :, :T] = k
            cache.v[r][:, :, :T] = v
            y = attn.attend(_fp32(q), _fp32(k), _fp32(v))  # q·k in fp32
            return y.to(v.dtype)

        return attend

    x = model.embed(idx)
    for r, block in enumerate(model.blocks):
        x = block(x, attend_for(r, block.attn))
    cache.n = T
    return model.logits(x)


def step(model: SparseTransformer, token: torch.Tensor, cache: KVCache) -> torch.Tensor:
    """Feed one token per sequence, ``token`` (B,), at position ``cache.n``; returns the
    next-token logits (B, vocab). Each head attends only to its pattern row, gathered from the
    cache."""
    model = _unwrap(model)
    i = cache.n
    if i >= cache.capacity:
        raise ValueError(f"the cache is full ({cache.capacity} positions)")
    device = cache.k[0].device
    layouts: dict[tuple[Pattern, ...], tuple[torch.Tensor, torch.Tensor | None]] = {}

    def layout(pats: tuple[Pattern, ...]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Key positions per head for query i: (1, R) shared by all heads, valid None; or
        (H, R) padded to the longest row, with the (H, R) mask of real entries."""
        if pats not in layouts:
            rows = {p: p.row(i) for p in dict.fromkeys(pats)}
            if len(rows) == 1:
                layouts[pats] = (rows[pats[0]][None].to(device), None)
            else:
                width = max(len(r) for r in rows.values())
                idx = torch.zeros(len(pats), width, dtype=torch.long)
                valid = torch.zeros(len(pats), width, dtype=torch.bool)
                for h, p in enumerate(pats):
                    idx[h, : len(rows[p])] = rows[p]
                    valid[h, : len(rows[p])] = True
                layouts[pats] = (idx.to(device), valid.to(device))
        return layouts[pats]

    def attend_for(r: int):
        def attend(q, k, v):  # (B, H, 1, ·)
            kc, vc = cache.k[r], cache.v[r]
            kc[:, :, i] = k[:, :, 0]
            vc[:, :, i] = v[:, :, 0]
            idx, valid = layout(cache.head_patterns[r])
            if idx.shape[1] == 0:  # no key at all (a summary-only layer before any summary)
                return torch.zeros_like(v)
            if valid is None:  # one row for every head
                kk, vv = kc.index_select(2, idx[0]), vc.index_select(2, idx[0])
            else:
                kk, vv = kc[:, cache.heads, idx], vc[:, cache.heads, idx]  # (B, H, R, ·)
            s = torch.matmul(_fp32(q), _fp32(kk).transpose(-1, -2)) * cache.scale  # (B, H, 1, R)
            if valid is not None:
                s = s.masked_fill(~valid[:, None, :], float("-inf"))
            p = torch.softmax(s, dim=-1)
            vv = _fp32(vv)
            if valid is not None:  # padding reads nothing; heads with an empty row get zeros
                p = p.masked_fill(~valid[:, None, :], 0.0)
                vv = vv.masked_fill(~valid[None, :, :, None], 0.0)
            return torch.matmul(p, vv).to(v.dtype)

        return attend

    x = model.embed(token.view(-1, 1), start=i)
    for r, block in enumerate(model.blocks):
        x = block(x, attend_for(r))
    cache.n = i + 1
    return model.logits(x)[:, 0]


@torch.no_grad()
def incremental_logits(
    model: SparseTransformer, idx: torch.Tensor, *, prefill_len: int = 1
) -> torch.Tensor:
    """Logits (B, T, vocab) for every position of ``idx`` (B, T), computed as the sampler does:
    the first ``prefill_len`` tokens by :func:`prefill`, the rest one :func:`step` at a time.
    Equal to ``model(idx)`` up to rounding (the tests check this)."""
    net = _unwrap(model)
    B, T = idx.shape
    if not 0 <= prefill_len <= T:
        raise ValueError(f"prefill_len must be in 0..{T}, got {prefill_len}")
    cache = KVCache(net, B, T, device=idx.device)
    out = []
    if prefill_len:
        out.append(prefill(net, idx[:, :prefill_len], cache))
    for t in range(prefill_len, T):
        out.append(step(net, idx[:, t], cache)[:, None])
    return torch.cat(out, dim=1)


def pick_token(
    logits: torch.Tensor, temperature: float, generator: torch.Generator | None
) -> torch.Tensor:
    """The next token of each row: argmax at temperature 0, else a draw from softmax(logits / T)
    (with ``generator``, on the generator's device)."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if generator is not None and generator.device != probs.device:
        return torch.multinomial(probs.to(generator.device), 1, generator=generator)[:, 0].to(
            logits.device
        )
    return torch.multinomial(probs, 1, generator=generator)[:, 0]


def generate(
    model: SparseTransformer,
    prompt: torch.Tensor,
    length: int,
    *,
    temperature: float = 1.0,
    generator: torch.Generator | None = None,
    progress: bool = True,
    stats: dict | None = None,
    start_token: bool = False,
    window: int | None = None,
    desc: str = "sample",
) -> torch.Tensor:
    """Sample ``length`` bytes after ``prompt`` with the pattern-aware cache: the one sampling
    loop (text, images and audio all use it).

    Args:
        model: a :class:`SparseTransformer` (or a DDP/compiled wrapper of one); put in eval mode
            for the call and restored afterwards.
        prompt: (B, T0) or (T0,) integer token ids, T0 >= 1 (the caller picks a start token).
        length: number of new tokens, >= 0, with T0 + length <= ctx (see ``start_token`` and
            ``window``).
        temperature: softmax temperature (> 0; 0 means greedy argmax).
        generator: torch.Generator for reproducible sampling.
        progress: show a tqdm bar (titled ``desc``, with the running tokens/s).
        stats: if given, filled with ``tokens``, ``batch``, ``seconds``, ``prefill_seconds`` and
            ``tokens_per_s`` (new tokens, all B sequences together, over the call's wall time,
            prefill included).
        start_token: the prompt's first token is a start token in front of the data (the image
            and audio layers' start byte), so T0 + length may reach ``ctx + 1``: the last sampled
            token is never fed back, and a whole image (start byte + ``ctx`` pixels) fits.
        window: sample past the context by a sliding window: once the sequence fills the
            context, each further pass re-encodes (prefills) the last ``window`` tokens, 1 <=
            window < the tokens one pass holds, and samples until the context is full again.
            Tokens then see at most the last ctx tokens, at positions counted from the window's
            start. None (the default): a ValueError past the context.
    Returns:
        (B, T0 + length) int64 on the model's device (1-D if the prompt was 1-D): the prompt
        followed by the samples.
    """
    net = _unwrap(model)
    cfg = net.cfg
    if not isinstance(prompt, torch.Tensor) or prompt.dim() not in (1, 2):
        raise ValueError("prompt must be a 1-D or 2-D tensor of token ids")
    if prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool:
        raise ValueError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
    squeeze = prompt.dim() == 1
    idx = prompt[None] if squeeze else prompt
    B, T0 = idx.shape
    if T0 < 1:
        raise ValueError("the prompt must hold at least one token (e.g. a start byte)")
    if isinstance(length, bool) or not isinstance(length, int) or length < 0:
        raise ValueError(f"length must be an integer >= 0, got {length!r}")
    limit = cfg.ctx + 1 if start_token else cfg.ctx  # tokens one cached pass holds
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or not 1 <= window < limit
    ):
        raise ValueError(f"window must be an integer in 1..{limit - 1}, got {window!r}")
    if window is None and T0 + length > limit:
        raise ValueError(
            f"prompt ({T0}) + length ({length}) exceeds the context ctx={cfg.ctx}: "
            f"{T0 + length - limit + cfg.ctx} positions, more than the model's context; "
            "pass window=K to sample past it by a sliding window over the last K tokens"
        )
    if not isinstance(temperature, (int, float)) or not temperature >= 0 or math.isinf(temperature):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if B and (int(idx.min()) < 0 or int(idx.max()) >= cfg.vocab_size):
        raise ValueError(f"prompt token ids must be in 0..{cfg.vocab_size - 1}")
    device = next(net.parameters()).device
    idx = idx.to(device=device, dtype=torch.long)
    if length == 0:
        return idx[0] if squeeze else idx

    out = torch.empty(B, T0 + length, dtype=torch.long, device=device)
    out[:, :T0] = idx
    was_training = net.training
    net.eval()
    t0 = time.perf_counter()
    t_prefill, prefilled, done, keep = 0.0, 0, T0, min(T0, limit - 1)
    try:
        bar = tqdm(total=length, disable=not progress, unit="tok", desc=desc)
        with torch.no_grad(), bar:
            while done < T0 + length:  # one pass; more only with a sliding window
                n = min(T0 + length - done, limit - keep)
                t1 = time.perf_counter()
                cache = KVCache(net, B, keep + n - 1)
                logits = prefill(net, out[:, done - keep : done], cache)[:, -1]
                t_prefill, prefilled = t_prefill + time.perf_counter() - t1, prefilled + keep
                for s in range(n):
                    tok = pick_token(logits, temperature, generator)
                    out[:, done + s] = tok
                    if s + 1 < n:
                        logits = step(net, tok, cache)
                    bar.update(1)
                    made = done - T0 + s + 1  # new tokens so far
                    if progress and (made % 64 == 0 or made == length):
                        bar.set_postfix_str(f"{B * made / (time.perf_counter() - t0):.0f} tok/s")
                done, keep = done + n, window
    finally:
        net.train(was_training)
    seconds = time.perf_counter() - t0
    rate = B * length / seconds if seconds > 0 else float("inf")
    log.info(
        "sampled %d x %d tokens in %.2f s (prefill %d tokens %.2f s): %.1f tokens/s",
        B, length, seconds, prefilled, t_prefill, rate,
    )  # fmt: skip
    if stats is not None:
        stats.update(
            tokens=length, batch=B, seconds=seconds, prefill_seconds=t_prefill, tokens_per_s=rate
        )
    return out[0] if squeeze else out
