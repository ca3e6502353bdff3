"""Import a package's heavy names on first use, so that importing the package stays light."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping

__all__ = ["lazy_getattr"]


def lazy_getattr(package: str, names: Mapping[str, str]) -> Callable[[str], object]:
    """Return a module ``__getattr__`` (PEP 562) that imports each of ``names`` on first use.

    ``names`` maps a name to the module that defines it, relative to ``package``. The
    name is imported once and then kept in ``package``'s namespace; any other name
    raises ``AttributeError``. A package lists the names for type checkers too::

        if TYPE_CHECKING:
            from ._server import FileTimerServer

        __getattr__ = lazy_getattr(__name__, {"FileTimerServer": "._server"})
    """
    modules = dict(names)

    def load(name: str) -> object:
        if name not in modules:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        import importlib

        value = getattr(importlib.import_module(modules[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return load
