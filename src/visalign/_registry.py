"""Lazy name -> class tables (renderers, rewards): modules are imported on first use, so a heavy or
optional backend costs nothing until it is asked for."""

from __future__ import annotations

import importlib
from typing import Any


def load(table: dict[str, tuple[str, str]], name: str, what: str) -> Any:
    """The object registered under ``name`` in ``table`` (``name -> (module, attribute)``).

    Example:
        >>> load({"path": ("os", "path")}, "path", "thing").__name__
        'posixpath'
    """
    try:
        module, attr = table[name]
    except KeyError:
        raise ValueError(f"unknown {what} {name!r}; choose one of {sorted(table)}") from None
    return getattr(importlib.import_module(module), attr)
