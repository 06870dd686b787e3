"""How the Triton backend launches its kernels: one frozen :class:`LaunchPolicy`.

:func:`default_policy` holds the measured defaults (``docs/kernels.md`` has the figures behind each
entry). Tests and benchmarks that try another setting build their own policy with
``dataclasses.replace(default_policy(), ...)`` and pass it to :func:`~.tables.kernel_tables` (the
tables carry it to every launch); nothing here is patched at run time.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, eq=False)
class LaunchPolicy:
    """Tile sizes, launch configurations and walk settings of the Triton backend.

    * ``configs``: per (kernel ``"fwd"``/``"bwd"``, tile rows): (num_warps, num_stages for long
      walks, num_stages for short ones). Deep software pipelines pay off only when a program walks
      many tiles (the fixed pattern's summary columns); for the local/strided band (1-5 tiles per
      query tile) the prologue costs more than it hides.
    * ``maxnreg``: per (kernel, tile rows): ptxas register cap for head dims <= 64 (absent: no cap,
      which lets a program take 255 registers, two 4-warp programs per multiprocessor).
    * ``bwd_steps``: per (tile rows, long walk): (query rows per step of a key tile's dK/dV walk,
      key rows per step of a query tile's dQ walk); absent: whole tiles. Smaller steps shrink the
      score and dS tiles so the walk fits the register cap without spills.
    * ``fwd_block_long``: per plan tile size: the tile size the forward of long-walk plans runs on
      (it keeps only O and the softmax state per row, so larger tiles fit where the backward's do
      not, and each key tile loaded serves more query rows). Absent: the plan's own tiles.
    * ``long_walk``: mean visits per query tile from which a plan list counts as a long walk
      (deeper pipelines, longest walks first, the delta pre-pass); short walks run in position
      order so that programs running together share their neighbours' tiles in L2.
    * ``inline_delta_max_rows``: short walks compute rowsum(dO * O) inside the backward (one launch
      less) while the call has fewer query rows (batch * heads * n) than this; 0: always the
      pre-pass.
    * ``direct_launch``: launch cached compiled kernels through Triton's low-level launcher
      (:mod:`.launcher`) instead of ``kernel[grid](...)`` where the Triton version allows it.
    """

    configs: Mapping[tuple[str, int], tuple[int, int, int]]
    maxnreg: Mapping[tuple[str, int], int]
    bwd_steps: Mapping[tuple[int, bool], tuple[int, int]]
    fwd_block_long: Mapping[int, int]
    long_walk: float = 8
    inline_delta_max_rows: int = 2**20
    direct_launch: bool = True

    def launch_config(self, kernel: str, block: int, head_dim: int, long_walk: bool) -> tuple[int, int, int | None]:
        """(num_warps, num_stages, maxnreg) of ``kernel`` on ``block``-row tiles."""
        warps, long_stages, short_stages = self.configs.get((kernel, block), (4, 2, 1))
        cap = self.maxnreg.get((kernel, block)) if head_dim <= 64 else None
        return warps, long_stages if long_walk else short_stages, cap

    def steps(self, block: int, long_walk: bool) -> tuple[int, int]:
        """(dK/dV walk query rows, dQ walk key rows) per step on ``block``-row tiles."""
        return self.bwd_steps.get((block, long_walk), (block, block))

    def inline_delta(self, long_walk: bool, rows: int) -> bool:
        """Whether the backward computes rowsum(dO * O) itself (no pre-pass launch)."""
        return not long_walk and rows < self.inline_delta_max_rows


@functools.cache
def default_policy() -> LaunchPolicy:
    """The measured defaults (H100/H200 kernel sweeps, ``docs/kernels.md``): 64-row tiles with 4
    warps; 64-row programs capped at 168 registers in the backward (three per multiprocessor) and
    128 in the forward (four); short dK/dV walks in half-tile steps; the fixed pattern's forward on
    128-row tiles (8 warps, 64-row steps in the backward's walks at that size)."""
    return LaunchPolicy(
        configs=MappingProxyType({
            ("fwd", 16): (2, 2, 2), ("fwd", 32): (4, 2, 2), ("fwd", 64): (4, 3, 1), ("fwd", 128): (8, 2, 2),
            ("bwd", 16): (2, 2, 1), ("bwd", 32): (4, 2, 1), ("bwd", 64): (4, 2, 1), ("bwd", 128): (8, 2, 1),
        }),
        maxnreg=MappingProxyType({("fwd", 64): 128, ("bwd", 64): 168, ("fwd", 128): 128}),
        bwd_steps=MappingProxyType({(64, False): (32, 64), (128, True): (64, 64), (128, False): (64, 64)}),
        fwd_block_long=MappingProxyType({64: 128}),
    )
