"""Type checks for the tables of ``pulsewire.toml``: a value of the wrong type (``port =
"abc"``, ``history_size = "10"``) is refused when the file is read, with its table, its key
and what was expected, rather than failing later (a ``TypeError`` on every publish)."""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Collection, Mapping
from typing import Any

__all__ = ["check_types", "field_types", "unknown_keys"]


def field_types(cls: type) -> dict[str, Any]:
    """The type of each field of the dataclass ``cls``, resolved."""
    return typing.get_type_hints(cls)


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, member) for member in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):  # tuple[str, ...], list[str]: a TOML array
        (item, *_) = typing.get_args(hint) or (Any,)
        return isinstance(value, (list, tuple)) and all(_matches(v, item) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True  # nothing TOML could hold: the constructor checks it


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        members = [m for m in typing.get_args(hint) if m is not type(None)]
        return " or ".join(_describe(m) for m in members)
    if origin in (tuple, list):
        (item, *_) = typing.get_args(hint) or (Any,)
        return f"a list of {_describe(item)[2:]}s" if item is not Any else "a list"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(hint, "a table" if origin is dict or hint is dict else str(hint))


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f'the string "{value}"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def check_types(table: Mapping[str, Any], hints: Mapping[str, Any], where: str) -> None:
    """Raise ValueError for the first key of ``table`` whose value does not fit its type in
    ``hints`` (keys without a hint are not checked), e.g. ``[server] port must be an
    integer, got the string "abc"``. An ``int`` is accepted for a ``float``."""
    for key, value in table.items():
        hint = hints.get(key)
        if hint is not None and not _matches(value, hint):
            raise ValueError(f"{where} {key} must be {_describe(hint)}, got {_shown(value)}")


def unknown_keys(unknown: Collection[str], known: Collection[str]) -> str:
    """``a, b`` with a suggestion for a near miss: ``histroy_size (did you mean
    history_size?)``."""
    names = []
    for name in sorted(unknown):
        close = difflib.get_close_matches(name, list(known), n=1)
        names.append(f"{name} (did you mean {close[0]}?)" if close else name)
    return ", ".join(names)
