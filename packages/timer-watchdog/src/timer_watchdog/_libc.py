"""The C library of this process, for the calls Python's ``os`` lacks (``prctl``, ``tee``)."""

from __future__ import annotations

import ctypes
import functools
from typing import Any

__all__ = ["c_function"]


@functools.cache
def _library() -> ctypes.CDLL:
    # The process's own global symbols: the C library it runs on, found without
    # ctypes.util.find_library (which starts ldconfig or a compiler to look for it).
    return ctypes.CDLL(None, use_errno=True)


def c_function(name: str, argtypes: list[Any], restype: Any) -> Any:
    """Return the C library's function ``name`` with these types; raise ``OSError`` if none.

    Each call returns a function object of its own (``CDLL[name]``, not the attribute
    ``CDLL`` caches), so the types set here are never those another caller set.
    Failed calls set ``ctypes.get_errno()``.
    """
    try:
        function = _library()[name]
    except AttributeError:
        raise OSError(f"the C library has no {name}()") from None
    function.argtypes = argtypes
    function.restype = restype
    return function
