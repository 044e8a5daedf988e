"""Channel names: namespaces, user-limited channels, and the options that apply to each."""

from __future__ import annotations

import re
from dataclasses import dataclass

from .config import ChannelOptions, HubConfig
from .errors import ErrorCode, HubError

__all__ = ["MAX_CHANNEL_LENGTH", "ChannelName", "parse_channel"]

MAX_CHANNEL_LENGTH = 255
# Printable ASCII without spaces, quotes or backslashes: safe in Redis keys, NATS subjects
# (where '.', '*' and '>' are escaped by the engine) and URLs.
_VALID = re.compile(r"[A-Za-z0-9_\-:#,.@=+/!~$]{1,255}")


@dataclass(frozen=True, slots=True)
class ChannelName:
    name: str
    namespace: str
    options: ChannelOptions
    users: frozenset[str] | None
    """For ``ns:#42,17``: only these user ids may subscribe."""


def parse_channel(name: object, config: HubConfig) -> ChannelName:
    """Validate ``name`` and resolve its namespace; raises HubError for bad or unknown names."""
    if not isinstance(name, str) or not name:
        raise HubError(ErrorCode.BAD_REQUEST, "channel must be a non-empty string")
    if len(name) > MAX_CHANNEL_LENGTH or not _VALID.fullmatch(name):
        raise HubError(ErrorCode.BAD_REQUEST, f"invalid channel name {name[:64]!r}")
    namespace = name.split(":", 1)[0] if ":" in name else ""
    if namespace:
        options = config.namespaces.get(namespace)
        if options is None:
            raise HubError(ErrorCode.UNKNOWN_CHANNEL, f"unknown namespace {namespace!r}")
    else:
        options = config.channel
    users = None
    if "#" in name:
        users = frozenset(u for u in name.rsplit("#", 1)[1].split(",") if u)
    return ChannelName(name, namespace, options, users)
