"""``PULSEWIRE_*`` environment variables: every key of pulsewire.toml, for containers and
systemd units that configure by environment.

- ``[hub]`` and ``[server]`` keys by their name in upper case: ``PULSEWIRE_API_KEY``,
  ``PULSEWIRE_ENGINE``, ``PULSEWIRE_PORT``, ``PULSEWIRE_TOKEN_HMAC_SECRET``
  (``PULSEWIRE_HUB__ENGINE``, ``PULSEWIRE_SERVER__PORT`` also work).
- Nested tables with ``__`` between the names: ``PULSEWIRE_CHANNEL__PRESENCE``,
  ``PULSEWIRE_NAMESPACES__CHAT__HISTORY_SIZE`` (the namespace ``chat``: names are read in
  lower case), ``PULSEWIRE_PROXY__URL``, ``PULSEWIRE_PROXY__CONNECT__TIMEOUT``.
- Values are parsed by the key's type (:func:`~pulsewire.hub.config_types.parse_text`):
  numbers, ``true``/``false``/``1``/``0``, lists comma-separated or JSON, a whole table as a
  JSON object (``PULSEWIRE_PROXY__CONNECT='{}'`` enables a route). An empty variable counts
  as unset.

The environment wins over the config file, command-line flags over both. A value that does
not parse is an error naming the variable; a ``PULSEWIRE_*`` variable that names no key is
only reported (:attr:`Environment.unknown`: other tools may set some).
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..hub.config_types import ConfigError, field_types, parse_text

__all__ = ["OTHER_VARIABLES", "PREFIX", "Environment", "config_variables", "read_environment"]

PREFIX = "PULSEWIRE_"
OTHER_VARIABLES = frozenset(
    {
        "PULSEWIRE_NO_EXTENSIONS",
        "PULSEWIRE_NO_UVLOOP",
        "PULSEWIRE_LOG_FORMAT",
        "PULSEWIRE_LOG_LEVEL",
    }
)
"""Variables read elsewhere (the protocol's accelerator, the event loop, logging)."""
FLAT = ("hub", "server")
"""The tables whose keys are also set by their bare name."""
_Path = tuple[str, ...]


def _keys(hint: Any) -> Mapping[str, Any] | None:
    """The keys of a table type and their types (None: any key; not a table: KeyError)."""
    if isinstance(hint, Mapping):
        return hint
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return field_types(hint)
    if typing.get_origin(hint) is dict:
        return None
    raise KeyError(hint)


def _is_table(hint: Any) -> bool:
    try:
        _keys(hint)
    except KeyError:
        return False
    return True


@dataclass(frozen=True)
class Environment:
    """What the ``PULSEWIRE_*`` variables set: :meth:`over` lays it over a config file."""

    document: dict[str, Any]
    """The values, as tables like a parsed pulsewire.toml's."""
    sources: dict[_Path, str]
    """The variable behind each (table..., key) or table set."""
    unknown: tuple[str, ...] = ()
    """Variables that set nothing, with a suggestion: ``PULSEWIRE_PROT (did you mean
    PULSEWIRE_PORT?)``."""

    @property
    def used(self) -> tuple[str, ...]:
        """The variables that set something."""
        return tuple(sorted(set(self.sources.values())))

    def over(self, document: dict[str, Any]) -> dict[str, Any]:
        """``document`` (a parsed config file) with the environment's values laid over it."""
        return _merge(document, self.document)

    def source(self, error: ConfigError, file: str | None) -> str:
        """Where the value ``error`` is about came from: ``PULSEWIRE_X (environment)`` or
        the file (``environment`` when there is neither)."""
        path = (*error.table, error.key) if error.key else error.table
        while path:
            if path in self.sources:
                return f"{self.sources[path]} (environment)"
            path = path[:-1]
        return file or "environment"


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        elif not isinstance(value, dict) or key not in merged:
            merged[key] = value
        # else: the file has a value where a table belongs: kept, and refused by name
    return merged


def _target(name: str, tables: Mapping[str, Any]) -> tuple[_Path, Any] | list[str]:
    """The (table..., key) path a variable's name (without the prefix) sets, and its type;
    or, for a name that sets nothing, the names it may have meant to write."""
    parts = name.lower().split("__")
    flat = {k: t for t in FLAT for k in _keys(tables[t]) or {}}
    path: _Path
    if parts[0] in tables:
        path, hint, rest = (parts[0],), tables[parts[0]], parts[1:]
    elif parts[0] in flat:
        path, hint, rest = (flat[parts[0]],), tables[flat[parts[0]]], parts
    else:
        return [*tables, *flat]
    written = [parts[0]]
    for part in rest:
        keys = _keys(hint) if _is_table(hint) else {}
        if keys is None:
            hint = typing.get_args(hint)[1]
        elif part in keys:
            hint = keys[part]
        else:
            return ["__".join([*written, key]) for key in keys]
        path = (*path, part)
        written.append(part)
    return path, hint


def read_environment(environ: Mapping[str, str], tables: Mapping[str, Any]) -> Environment:
    """The config values the ``PULSEWIRE_*`` variables of ``environ`` set, in ``tables``
    (table name: a dataclass, ``dict[str, X]`` or a mapping of key to type); ValueError
    naming the variable if a value does not parse."""
    document: dict[str, Any] = {}
    sources: dict[_Path, str] = {}
    unknown = []
    for var in sorted(environ):
        if not var.startswith(PREFIX) or var in OTHER_VARIABLES or not environ[var]:
            continue
        target = _target(var[len(PREFIX) :], tables)
        if isinstance(target, list):
            known = [PREFIX + name.upper() for name in target]
            close = difflib.get_close_matches(var, known, n=1)
            unknown.append(f"{var} (did you mean {close[0]}?)" if close else var)
            continue
        path, hint = target
        if _is_table(hint):
            hint = dict[str, Any]  # a table given whole: its keys are checked with the file's
        value = parse_text(environ[var], hint, var)
        table = document
        for step in path[:-1]:
            table = table.setdefault(step, {})
        table[path[-1]] = value
        sources[path] = var
    return Environment(document, sources, tuple(unknown))


def config_variables(environ: Mapping[str, str], tables: Mapping[str, Any]) -> list[str]:
    """The names of the variables of ``environ`` that set a config key (values unread)."""
    return [
        var
        for var in environ
        if var.startswith(PREFIX)
        and var not in OTHER_VARIABLES
        and not isinstance(_target(var[len(PREFIX) :], tables), list)
    ]
