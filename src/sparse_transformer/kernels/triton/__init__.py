"""The ``triton`` backend: fused block-sparse attention in Triton, forward and backward, driven by
block plans. One kernel family serves every pattern: the plan is data (tile position tables, a visit
list per tile, element masks), not code.

One concern per module (importing this package does not import Triton; the first launch does):

* :mod:`.policy`: :class:`LaunchPolicy`, tile sizes and launch settings, :func:`default_policy`;
* :mod:`.tables`: plans -> :class:`KernelTables` (host only);
* :mod:`.launcher`: launching compiled kernels (the direct fast path and its fallback);
* :mod:`.kernels`: the ``@triton.jit`` kernels (one visit loop per walk, the visit kind a
  compile-time parameter);
* :mod:`.attention`: forward/backward over the tables and the public wrappers.

Design notes and measurements: ``docs/kernels.md``.
"""

from .attention import (
    attention,
    attention_multihead,
    attention_tables,
    available,
    backward,
    backward_tables,
    forward,
    forward_tables,
)
from .launcher import launch_stats
from .policy import LaunchPolicy, default_policy
from .tables import KernelTables, kernel_tables

__all__ = ["KernelTables", "LaunchPolicy", "attention", "attention_multihead", "attention_tables", "available",
           "backward", "backward_tables", "default_policy", "forward", "forward_tables", "kernel_tables",
           "launch_stats"]
