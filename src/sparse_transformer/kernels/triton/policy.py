"""How the Triton backend launches its kernels: one frozen :class:`LaunchPolicy`; :func:`default_policy`
holds the measured defaults. Another setting: ``dataclasses.replace(default_policy(), ...)`` passed to
:func:`~.tables.kernel_tables`. Each field and the figures behind it: ``docs/kernels.md``.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType


@dataclass(frozen=True, eq=False)
class LaunchPolicy:
    """Tile sizes, launch configurations and walk settings of the Triton backend (``docs/kernels.md``)."""

    configs: Mapping[tuple[str, int], tuple[int, int, int]]  # ("fwd"/"bwd", rows): warps, stages long/short
    maxnreg: Mapping[tuple[str, int], int]  # (kernel, rows): register cap for head dims <= 64; absent: none
    bwd_steps: Mapping[tuple[int, bool], tuple[int, int]]  # (rows, long walk): dK/dV query, dQ key rows a step
    fwd_block_long: Mapping[int, int]  # plan tile size -> the long-walk forward's tile size
    long_walk: float = 8  # mean visits per query tile from which plans count as long walks
    inline_delta_max_rows: int = 2**20  # short walks compute delta in the backward below this many query rows
    direct_launch: bool = True  # launch cached compiled kernels directly (.launcher) where Triton allows

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
    """The measured defaults (kernel sweeps in ``docs/kernels.md``): 4-warp 64-row tiles capped at 168
    registers (backward) and 128 (forward), half-tile short dK/dV steps, long-walk forwards on 128 rows."""
    return LaunchPolicy(
        configs=MappingProxyType({
            ("fwd", 16): (2, 2, 2), ("fwd", 32): (4, 2, 2), ("fwd", 64): (4, 3, 1), ("fwd", 128): (8, 2, 2),
            ("bwd", 16): (2, 2, 1), ("bwd", 32): (4, 2, 1), ("bwd", 64): (4, 2, 1), ("bwd", 128): (8, 2, 1),
        }),
        maxnreg=MappingProxyType({("fwd", 64): 128, ("bwd", 64): 168, ("fwd", 128): 128}),
        bwd_steps=MappingProxyType({(64, False): (32, 64), (128, True): (64, 64), (128, False): (64, 64)}),
        fwd_block_long=MappingProxyType({64: 128}),
    )
