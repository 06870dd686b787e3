"""Pictures (need matplotlib: the `plots` extra): attention patterns like the paper's Figure 3, and
training curves of several runs side by side.

For each head of a named pattern (and their union, the merged head) the figure shows
* top: the receptive field of one query position on a 2-D grid of width ``stride`` (the query in
  dark, the keys it attends in light), as the paper draws it;
* bottom: the (n, n) connectivity matrix (rows: queries, columns: keys).
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import patterns as P

log = logging.getLogger(__name__)


def heads_for(pattern: str, stride: int, c: int | None, mode: str = "merged") -> list[tuple[str, P.Pattern]]:
    """(title, pattern) panels to draw: each factorized head, plus the union in merged mode."""
    comps = P.from_name(pattern, stride, c)
    panels = [(str(p), p) for p in comps]
    if len(comps) > 1 and mode == "merged":
        panels.append((f"merged: {pattern}", P.union(*comps)))
    elif mode not in ("merged", "interleaved", "multihead"):
        raise ValueError(f"unknown mode {mode!r}; choose from interleaved, merged, multihead")
    return panels


def pattern_figure(
    pattern: str,
    stride: int,
    c: int | None,
    n: int,
    out: str | Path,
    query: int | None = None,
    mode: str = "merged",
) -> Path:
    """Draw ``pattern`` (dense | local | strided | fixed) at length ``n`` into ``out`` (PNG/SVG/PDF).

    ``query`` is the position whose receptive field is drawn (default: the last position of the
    second-to-last grid row, so both heads' structure is visible).
    """
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    if not isinstance(n, int) or n <= 0:
        raise ValueError(f"n must be a positive integer, got {n!r}")
    if n > 4096:
        raise ValueError(f"n={n} is too large to draw element by element; use n <= 4096")
    stride = stride if stride is not None else max(1, round(n**0.5))
    panels = heads_for(pattern, stride, c, mode)
    width = stride
    rows = -(-n // width)
    if query is None:
        query = min(n - 1, max(0, (rows - 1) * width - 1 + width // 2))
    if not 0 <= query < n:
        raise ValueError(f"query {query} out of range 0..{n - 1}")

    cmap = ListedColormap(["#f4f4f4", "#7fb2e5", "#08306b"])
    fig, axes = plt.subplots(2, len(panels), figsize=(3.2 * len(panels), 6.6), squeeze=False)
    for col, (title, p) in enumerate(panels):
        grid = torch.zeros(rows * width)
        grid[p.row(query)] = 1
        grid[query] = 2
        grid[n:] = float("nan")
        ax = axes[0, col]
        ax.imshow(grid.view(rows, width).numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(f"{title}\nquery {query}: {len(p.row(query))} keys", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        m = p.mask(n).float()
        m[torch.arange(n), torch.arange(n)] = torch.where(m.diagonal() > 0, 2.0, 0.0)
        ax = axes[1, col]
        ax.imshow(m.numpy(), cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
        ax.set_title(f"density {p.density(n):.3f} of causal", fontsize=9)
        ax.set_xlabel("key j")
        if col == 0:
            ax.set_ylabel("query i")
    desc = f"{pattern} pattern, stride {stride}" + (f", c {c}" if pattern == "fixed" else "") + f", n {n}"
    fig.suptitle(desc + f"  (top: receptive field on a grid of width {width})", fontsize=10)
    return _save(fig, out)


def curves_figure(runs: dict[str, list[dict]], out: str | Path, *, unit: str = "bits/byte",
                  title: str = "") -> Path:
    """Training curves of several runs into ``out``: bits against updates (left) and against
    training seconds (right); thin lines the training loss, markers the validation estimates.

    ``runs`` maps a label to the run's ``metrics.jsonl`` events (dicts with ``event`` "train"
    (``step``, ``bpb``, ``elapsed_s``) or "eval" (``step``, ``val_bpb``)).
    """
    import numpy as np

    plt = _pyplot()
    if not runs:
        raise ValueError("curves_figure needs at least one run")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for i, (label, events) in enumerate(runs.items()):
        color = f"C{i}"
        train = [e for e in events if e.get("event") == "train"]
        evals = [e for e in events if e.get("event") == "eval"]
        axes[0].plot([e["step"] for e in train], [e["bpb"] for e in train], color=color, lw=0.8,
                     alpha=0.6)  # fmt: skip
        axes[0].plot([e["step"] for e in evals], [e["val_bpb"] for e in evals], "o-", color=color,
                     ms=4, label=label)  # fmt: skip
        axes[1].plot([e["elapsed_s"] for e in train], [e["bpb"] for e in train], color=color,
                     lw=0.8, alpha=0.6)  # fmt: skip
        # An evaluation's time: interpolated between the training log events around it.
        steps, secs = [e["step"] for e in train], [e["elapsed_s"] for e in train]
        timed = [(float(np.interp(e["step"], steps, secs)), e["val_bpb"]) for e in evals if steps]
        axes[1].plot([t for t, _ in timed], [v for _, v in timed], "o-", color=color, ms=4,
                     label=label)  # fmt: skip
    vals = [e["val_bpb"] for ev in runs.values() for e in ev if e.get("event") == "eval"]
    if vals:  # the start (8 bits) would flatten the part worth seeing
        top = sorted(vals)[len(vals) // 2] if len(vals) > 2 else max(vals)
        lo = min(vals)
        for ax in axes:
            ax.set_ylim(lo - 0.05 * (top - lo + 0.1), top + 0.25 * (top - lo + 0.1))
    axes[0].set_xlabel("update")
    axes[1].set_xlabel("seconds since the start of training")
    for ax in axes:
        ax.set_ylabel(unit)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title + "  (lines: training loss; markers: validation)", fontsize=10)
    return _save(fig, out)


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ValueError("drawing needs matplotlib: pip install 'sparse-transformer[plots]'") from e
    return plt


def _save(fig, out: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.stem + ".tmp" + out.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(out)
    log.info("wrote %s", out)
    return out
