"""A restricted unpickler for data files such as the CIFAR-10 python batches.

``pickle.load`` can run arbitrary code: a pickle names any importable callable (``os.system``...)
and calls it. :func:`safe_load` allows only the globals needed to rebuild plain containers and
numpy arrays:

* ``builtins``: ``dict``, ``list``, ``tuple``, ``bytes``, ``bytearray``, ``str``, ``int``,
  ``float``, ``set``, ``frozenset``;
* numpy's array reconstruction: ``numpy.core.multiarray._reconstruct`` (and the numpy 2 path
  ``numpy._core.multiarray._reconstruct``), ``numpy.ndarray``, ``numpy.dtype``, and
  ``numpy._core.numeric._frombuffer`` / ``numpy.core.numeric._frombuffer`` (how numpy pickles
  arrays with protocol 5);
* ``_codecs.encode``, which Python 3 uses to pickle ``bytes`` with protocols 0-2.

Anything else raises :class:`UnsafePickleError` *before* the global is looked up, so nothing in the
file runs. Persistent ids are refused too.
"""

from __future__ import annotations

import importlib
import io
import pickle
from typing import IO, Any

__all__ = ["ALLOWED_GLOBALS", "RestrictedUnpickler", "UnsafePickleError", "safe_load", "safe_loads"]

ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    {("builtins", n) for n in ("dict", "list", "tuple", "bytes", "bytearray", "str", "int",
                               "float", "set", "frozenset")}
    | {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.numeric", "_frombuffer"),
        ("numpy._core.numeric", "_frombuffer"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }
)  # fmt: skip

# Python 2 pickles name the builtins module `__builtin__`.
_MODULE_ALIASES = {"__builtin__": "builtins", "copy_reg": "copyreg"}


class UnsafePickleError(pickle.UnpicklingError, ValueError):
    """The pickle asked for a global outside :data:`ALLOWED_GLOBALS` (or a persistent id)."""


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` admits only :data:`ALLOWED_GLOBALS`."""

    def find_class(self, module: str, name: str) -> Any:
        mod = _MODULE_ALIASES.get(module, module)
        if (mod, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"refusing to load global {module}.{name} from a pickle: only plain containers "
                "and numpy arrays are allowed in data files"
            )
        if mod.startswith("numpy"):
            # Resolve numpy's private paths for whichever numpy is installed (1.x or 2.x).
            if name == "_reconstruct":
                mod = _numpy_private("multiarray")
            elif name == "_frombuffer":
                mod = _numpy_private("numeric")
        return getattr(importlib.import_module(mod), name)

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError(f"refusing persistent id {pid!r} in a data pickle")


def _numpy_private(sub: str) -> str:
    import numpy as np

    return f"numpy._core.{sub}" if int(np.__version__.split(".")[0]) >= 2 else f"numpy.core.{sub}"


def safe_load(file: IO[bytes], *, encoding: str = "bytes") -> Any:
    """Unpickle from a binary file with :class:`RestrictedUnpickler`.

    ``encoding="bytes"`` keeps Python 2 ``str`` objects as ``bytes``, as the CIFAR-10 batches
    expect (their keys are ``b"data"``, ``b"labels"``...). Raises :class:`UnsafePickleError`
    for a forbidden global and ``ValueError`` for a corrupt or truncated pickle.
    """
    try:
        return RestrictedUnpickler(file, encoding=encoding).load()
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise ValueError(f"corrupt or truncated pickle ({type(e).__name__}: {e})") from e


def safe_loads(data: bytes, *, encoding: str = "bytes") -> Any:
    """:func:`safe_load` for a ``bytes`` object."""
    return safe_load(io.BytesIO(data), encoding=encoding)
