"""Launching the ``@triton.jit`` kernels: cached compiled kernels called through Triton's low-level
launcher, with the public ``kernel[grid](...)`` launch as the fallback (``docs/kernels.md``, "Launches").
"""

from __future__ import annotations

import logging
import os
from typing import ClassVar

import torch

__all__ = ["DIRECT_LAUNCH_VERSIONS", "Launcher", "direct_launch_supported", "kernels", "launch_stats", "spec_key"]

log = logging.getLogger(__name__)

# Triton versions whose ``CompiledKernel.run(grid_x, grid_y, grid_z, stream, function, packed_metadata,
# launch_metadata, enter_hook, exit_hook, *all_arguments)`` this module calls; others use kernel[grid].
DIRECT_LAUNCH_VERSIONS = ((3, 6),)

_INT64 = (-(2**63), 2**63)


def spec_key(args) -> tuple:
    """What Triton specializes a compiled kernel on, for the non-constexpr ``args`` of one launch (at least
    as fine as Triton's own specialization): per tensor (dtype, 16-byte aligned); per bool ("i1", value);
    per int (type by range, == 1, divisible by 16); "fp" per float; None; else (type name, value)."""
    return _spec(args)[0]


def _spec(args) -> tuple[tuple, tuple]:
    """(:func:`spec_key` of ``args``, ``args`` with every tensor replaced by its data pointer, which
    spares the launcher's ``data_ptr()`` call and driver check per tensor)."""
    key, flat = [], []
    add = key.append
    put = flat.append
    tensor = torch.Tensor
    for a in args:  # one loop, no call per argument: this runs on every launch
        t = type(a)
        if t is int:
            kind = "i32" if -2147483648 <= a < 2147483648 else "i64" if _INT64[0] <= a < _INT64[1] else "u64"
            add((kind, a == 1, a % 16 == 0))
            put(a)
        elif t is float:
            add("fp")
            put(a)
        elif isinstance(a, tensor):
            ptr = a.data_ptr()
            add((a.dtype, ptr % 16 == 0))
            put(ptr)
        else:
            add(_other_key(a))
            put(a)
    return tuple(key), tuple(flat)


def _other_key(a):
    if type(a) is bool:
        return ("i1", a)
    if a is None:
        return None
    if isinstance(a, int):  # int subclasses other than bool
        return spec_key((int(a),))[0]
    if isinstance(a, float):
        return "fp"
    return (type(a).__name__, a)


def direct_launch_supported(triton_module) -> tuple[bool, str]:
    """(usable, why not) for the direct launch path with this Triton."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return False, "TRITON_INTERPRET=1"
    try:
        version = tuple(int(x) for x in triton_module.__version__.split(".")[:2])
    except ValueError:
        return False, f"unparsed triton version {triton_module.__version__!r}"
    if version not in DIRECT_LAUNCH_VERSIONS:
        return False, f"triton {triton_module.__version__} is not among the versions coded for {DIRECT_LAUNCH_VERSIONS}"
    try:
        from triton.compiler.compiler import CompiledKernel
        from triton.knobs import runtime
        from triton.runtime.driver import driver
    except ImportError as e:
        return False, f"triton internals moved ({e})"
    if not (isinstance(getattr(CompiledKernel, "run", None), property) and hasattr(runtime, "launch_enter_hook")
            and hasattr(driver.active, "get_current_stream")):
        return False, "CompiledKernel.run / knobs.runtime hooks / driver stream API differ"
    return True, ""


class Launcher:
    """Launches one ``@triton.jit`` kernel: ``launcher(grid, tensors, scalars, consts, warps, stages[, maxnreg,
    static, direct])``, the arguments in signature order: tensors, scalars, ``static`` (the tables), then
    ``consts``, the trailing constexpr parameters. The first launch of a specialization goes through ``kernel[grid]``,
    later ones call its compiled kernel directly (when and why: ``docs/kernels.md``, "Launches")."""

    state: ClassVar[dict] = {}  # shared by all launchers: "ok" (bool), "reason"; filled on first use

    def __init__(self, fn):
        self.fn = fn
        self.compiled: dict = {}
        self.static_cache: dict = {}  # id(static tuple) -> (tuple, key, pointers)
        self.scalar_cache: dict = {}  # scalars -> (their types, their key)
        self.n_direct = self.n_triton = 0

    @classmethod
    def _ok(cls) -> bool:
        st = cls.state
        if "ok" not in st:
            import triton

            st["ok"], st["reason"] = direct_launch_supported(triton)
            if not st["ok"]:
                log.info("direct Triton launches off: %s; launching through kernel[grid]", st["reason"])
            else:
                from triton.knobs import runtime
                from triton.runtime.driver import driver

                st["runtime"], st["stream"] = runtime, driver.active.get_current_stream
        return st["ok"]

    @classmethod
    def _disable(cls, why: str) -> None:
        cls.state["ok"], cls.state["reason"] = False, why
        log.warning("direct Triton launches off: %s; launching through kernel[grid] from now on", why)

    def _check_signature(self, n_args: int, n_consts: int) -> bool:
        params = getattr(self.fn, "params", None)
        if params is None or len(params) != n_args + n_consts:
            return False
        return all(bool(getattr(p, "is_constexpr", False)) == (i >= n_args) for i, p in enumerate(params))

    def __call__(self, grid: tuple, tensors: tuple, scalars: tuple, consts: tuple, num_warps: int, num_stages: int,
                 maxnreg: int | None = None, static: tuple = (), direct: bool = True) -> None:
        """Arguments in signature order: ``tensors`` (new every call), ``scalars`` (ints and floats, mostly
        the same from call to call: their key is looked up by value), ``static`` (arguments that stay the
        same across calls, the tables: one tuple object kept by the caller, keyed once), ``consts`` (the
        trailing constexprs). ``direct=False``: through Triton (the policy's switch)."""
        key = None
        if direct and self._ok():
            st = self.state
            rt = st["runtime"]
            if _hooks_idle(rt.launch_enter_hook) and _hooks_idle(rt.launch_exit_hook):
                device = torch.cuda.current_device()
                tensor_key, flat = _spec(tensors)
                types = tuple(map(type, scalars))  # 1 == 1.0 == True: equal tuples may differ in type
                hit = self.scalar_cache.get(scalars)
                if hit is None or hit[0] != types:
                    if len(self.scalar_cache) > 256:
                        self.scalar_cache.clear()
                    hit = self.scalar_cache[scalars] = (types, _spec(scalars)[0])
                scalar_key = hit[1]
                static_key, static_flat = self._static(static)
                key = (consts, num_warps, num_stages, maxnreg, device, tensor_key, scalar_key, static_key)
                k = self.compiled.get(key)
                if k is not None:
                    try:
                        k.run(*grid, *(1,) * (3 - len(grid)), st["stream"](device), k.function, k.packed_metadata,
                              None, None, None, *flat, *scalars, *static_flat, *consts)
                        self.n_direct += 1
                        return
                    except Exception as e:  # noqa: BLE001  (any mismatch: fall back for good)
                        self._disable(f"direct launch of {self.fn.__name__} failed ({type(e).__name__}: {e})")
                        key = None
        extra = {} if maxnreg is None else {"maxnreg": maxnreg}
        k = self.fn[grid](*tensors, *scalars, *static, *consts, num_warps=num_warps, num_stages=num_stages, **extra)
        self.n_triton += 1
        if key is not None and self._ok():
            n_args = len(tensors) + len(scalars) + len(static)
            usable = all(hasattr(k, a) for a in ("function", "packed_metadata", "run")) and k.function is not None
            if not usable or not self._check_signature(n_args, len(consts)):
                self._disable(f"{self.fn.__name__}: compiled kernel or signature not as coded "
                              f"({type(k).__name__}, {n_args} + {len(consts)} arguments)")
            else:
                self.compiled[key] = k

    def _static(self, static: tuple) -> tuple:
        """(key, pointers) of a static argument tuple, cached by the tuple's identity."""
        if not static:
            return (), ()
        hit = self.static_cache.get(id(static))
        if hit is None or hit[0] is not static:
            if len(self.static_cache) > 64:
                self.static_cache.clear()
            hit = self.static_cache[id(static)] = (static, *_spec(static))
        return hit[1], hit[2]


def _hooks_idle(hook) -> bool:
    """No launch hook set (triton 3.6: an empty HookChain; older: None)."""
    if hook is None:
        return True
    calls = getattr(hook, "calls", None)
    return isinstance(calls, list) and not calls


class _Kernels:
    """The kernels of :mod:`.kernels`, each behind a :class:`Launcher`."""

    def __init__(self, module):
        for name in ("fwd_kernel", "delta_kernel", "bwd_kernel"):
            setattr(self, name, Launcher(getattr(module, name)))

    def stats(self) -> dict:
        """Per kernel: launches through Triton, direct launches, cached specializations."""
        return {name: {"triton": ln.n_triton, "direct": ln.n_direct, "cached": len(ln.compiled)}
                for name, ln in vars(self).items() if isinstance(ln, Launcher)}


_K = None


def kernels() -> _Kernels:
    """The kernels behind their launchers (the first call imports Triton and :mod:`.kernels`)."""
    global _K
    if _K is None:
        from . import kernels as module

        _K = _Kernels(module)
    return _K


def launch_stats() -> dict:
    """Launch counts per kernel (direct vs through Triton) and the direct path's state."""
    if _K is None:
        return {}
    st = Launcher.state
    return {"direct_ok": bool(st.get("ok")), "reason": st.get("reason", ""), **_K.stats()}
