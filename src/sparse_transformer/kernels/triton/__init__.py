"""The ``triton`` backend: fused block-sparse attention in Triton, forward and backward, one kernel family
for every pattern (the plan is data). Modules :mod:`.policy`, :mod:`.tables`, :mod:`.launcher`,
:mod:`.kernels`, :mod:`.attention`, one concern each (``docs/kernels.md``); importing this package does
not import Triton, the first launch does.
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
