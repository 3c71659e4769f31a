"""Discovery of the one-file-per-entry packages (stages, scoring methods, models).

A package whose modules each register one entry (a stage, a scoring method, an
encoder) is imported module by module the first time its registry is read, so
adding an entry is adding a file.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterable

__all__ = ["import_submodules", "discover_once"]

_discovered: set[str] = set()


def import_submodules(package: str, skip: Iterable[str] = ("base",)) -> list[str]:
    """Import every module of ``package`` except ``skip`` and private (``_x``) ones.

    Args:
        package: dotted package name (``"ich3d.stages"``).
        skip: module names not to import (the registry's own module).

    Returns:
        The dotted names imported, in file-name order.
    """
    pkg = importlib.import_module(package)
    skipped = set(skip)
    names = []
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda i: i.name):
        if info.name in skipped or info.name.startswith("_"):
            continue
        importlib.import_module(f"{package}.{info.name}")
        names.append(f"{package}.{info.name}")
    return names


def discover_once(package: str, skip: Iterable[str] = ("base",)) -> None:
    """:func:`import_submodules` the first time a registry of ``package`` is read.

    The package is marked before its modules are imported, so a module that reads
    its own registry while it registers (a stage starting from another) does not
    start the discovery again.
    """
    if package in _discovered:
        return
    _discovered.add(package)
    import_submodules(package, skip)
