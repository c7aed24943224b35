"""The argument checks the library functions share (settings and replies are validated at the edges,
in config.py and replies.py; these guard the library's own entry points against programming errors)."""

from __future__ import annotations

import numbers
from collections.abc import Collection
from typing import Any


def integer(name: str, value: Any, minimum: int | None = None) -> int:
    """`value` as an int; a bool is refused (True experts is a bug, not a count)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (minimum is not None and value < minimum):
        bound = f" >= {minimum}" if minimum is not None else ""
        raise ValueError(f"{name} must be an integer{bound}, got {value!r}")
    return int(value)


def integers(name: str, values: Any) -> list[int]:
    """Every element of `values` as an int (expert ids and the like)."""
    items = list(values)
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise ValueError(f"{name} must be integers, got {item!r} in {items!r}")
    return [int(item) for item in items]


def choice(name: str, value: Any, allowed: Collection[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {tuple(allowed)}, got {value!r}")
    return str(value)
