"""Values checked against type hints, as TOML or JSON gives them: is a value a finite number,
does it fit a hint, and how a message shows the hint. Config tables, components' options and
run directories are all checked with these."""

from __future__ import annotations

import collections.abc
import math
import types
import typing
from pathlib import Path
from typing import Any


def is_number(value: Any) -> bool:
    """True for a finite int or float (not a bool).

    Example:
        >>> is_number(1.5), is_number(True), is_number(float("nan"))
        (True, False, False)
    """
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def type_name(hint: Any) -> str:
    """A type hint as a message shows it.

    Example:
        >>> from collections.abc import Mapping
        >>> type_name(int), type_name(Mapping[str, int] | None)
        ('int', 'Mapping[str, int] | None')
    """
    if isinstance(hint, type) and not typing.get_args(hint):
        return hint.__name__
    return str(hint).replace("collections.abc.", "").replace("typing.", "")


def fits_type(value: Any, hint: Any, *, paths: bool = False) -> bool:
    """True when ``value``, as TOML or JSON gives it, is of type ``hint``: a union (``None``
    only where it holds ``None``), a ``list`` / ``tuple`` / ``Sequence`` as a list or tuple of
    fitting items (a string is no sequence), a ``Literal``'s values, a ``dict`` / ``Mapping``
    of fitting keys and values, ``Any``, and ``float`` taking an int (a bool is no number).
    With ``paths``, as settings given in Python are checked, a `Path` is also a ``str``.

    Example:
        >>> from collections.abc import Sequence
        >>> fits_type([32, 64], Sequence[int]), fits_type(True, int), fits_type(None, int | None)
        (True, False, True)
    """
    def fits(item: Any, item_hint: Any) -> bool:
        return fits_type(item, item_hint, paths=paths)

    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return any(fits(value, h) for h in typing.get_args(hint))
    if origin is typing.Literal:
        return value in typing.get_args(hint)
    if origin in (list, tuple, collections.abc.Sequence):
        args = typing.get_args(hint)
        if not isinstance(value, list | tuple):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(
                fits(v, a) for v, a in zip(value, args, strict=True))
        return all(fits(v, args[0] if args else Any) for v in value)
    if origin in (dict, collections.abc.Mapping):
        args = typing.get_args(hint)
        return isinstance(value, dict) and (not args or all(
            fits(k, args[0]) and fits(v, args[1]) for k, v in value.items()))
    if hint is Any:
        return True
    if hint is None or hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is str and paths:
        return isinstance(value, str | Path)
    if origin is not None:  # another generic (Callable[...], os.PathLike[str]): its class
        return isinstance(value, origin)
    return isinstance(value, hint)
