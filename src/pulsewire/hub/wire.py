"""The hub's wire protocol (docs/protocol.md), version 1: JSON or MessagePack.

Client to server, one command per message (JSON clients may send several, one per line)::

    {"id": 1, "method": "subscribe", "params": {"channel": "chat:lobby"}}

Replies carry the command's id and either ``result`` or ``error`` ({code, message}).
Server pushes carry no id and name their kind in ``push``::

    {"push": "publication", "channel": "chat:lobby", "data": {...}, "offset": 7, "info": {...}}

The subprotocol picks the encoding: ``pulsewire.v1.json`` (text messages, the default when
none is offered) or ``pulsewire.v1.msgpack`` (binary messages).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from .errors import ErrorCode, HubError

__all__ = [
    "MAX_DEPTH",
    "PROTOCOL_VERSION",
    "SUBPROTOCOLS",
    "Codec",
    "JsonCodec",
    "MsgpackCodec",
    "codec_for",
    "too_deep",
]

PROTOCOL_VERSION = 1
JSON_SUBPROTOCOL = "pulsewire.v1.json"
MSGPACK_SUBPROTOCOL = "pulsewire.v1.msgpack"
SUBPROTOCOLS = (JSON_SUBPROTOCOL, MSGPACK_SUBPROTOCOL)


MAX_DEPTH = 128
"""Deepest nesting of arrays and objects accepted from a peer (commands, API bodies).

Python's JSON encoder and decoder recurse: a value that decodes near the interpreter's
recursion limit (1000) fails again, with a RecursionError, when it is re-encoded deeper in
the stack (for delivery, for the engine). A fixed limit far below it turns every such value
into a clean "bad request" where it enters, whatever the call depth later on."""


def too_deep(value: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether ``value`` nests lists/dicts more than ``limit`` levels (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children: Any = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))
    return False


def _check_depth(command: Any, text: str | None = None) -> None:
    # Counting brackets is a C-speed scan; only a message with more of them than the limit
    # can be too deep, so ordinary commands never pay for the walk.
    if text is not None and text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    if too_deep(command):
        raise HubError(
            ErrorCode.BAD_REQUEST, f"invalid command: nested more than {MAX_DEPTH} levels deep"
        )


class Codec(Protocol):
    name: str
    binary: bool

    def decode_commands(self, data: str | bytes) -> list[dict[str, Any]]: ...

    def encode(self, message: dict[str, Any]) -> str | bytes: ...


_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


class JsonCodec:
    name = "json"
    binary = False

    def decode_commands(self, data: str | bytes) -> list[dict[str, Any]]:
        if isinstance(data, bytes):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError:
                raise HubError(ErrorCode.BAD_REQUEST, "commands must be UTF-8 JSON") from None
        commands = []
        for line in data.split("\n"):
            if not line.strip():
                continue
            try:
                command = json.loads(line)
            except ValueError as exc:
                raise HubError(ErrorCode.BAD_REQUEST, f"invalid JSON: {exc}") from None
            except RecursionError:
                raise HubError(ErrorCode.BAD_REQUEST, "invalid JSON: nested too deeply") from None
            if not isinstance(command, dict):
                raise HubError(ErrorCode.BAD_REQUEST, "a command is a JSON object")
            _check_depth(command, line)
            commands.append(command)
        return commands

    def encode(self, message: dict[str, Any]) -> str:
        return _encoder.encode(message)


class MsgpackCodec:
    name = "msgpack"
    binary = True

    def __init__(self) -> None:
        import msgpack

        self._packb = msgpack.packb
        self._unpacker = msgpack.Unpacker

    def decode_commands(self, data: str | bytes) -> list[dict[str, Any]]:
        if isinstance(data, str):
            raise HubError(ErrorCode.BAD_REQUEST, "msgpack commands are binary messages")
        unpacker = self._unpacker(raw=False, max_buffer_size=len(data) + 1, strict_map_key=False)
        unpacker.feed(data)
        commands = []
        try:
            for command in unpacker:
                if not isinstance(command, dict):
                    raise HubError(ErrorCode.BAD_REQUEST, "a command is a map")
                if len(data) > MAX_DEPTH:  # shorter input cannot nest that deep
                    _check_depth(command)
                commands.append(command)
        except HubError:
            raise
        except Exception as exc:
            raise HubError(ErrorCode.BAD_REQUEST, f"invalid msgpack: {exc}") from None
        return commands

    def encode(self, message: dict[str, Any]) -> bytes:
        return self._packb(message, use_bin_type=True)  # type: ignore[no-any-return]


JSON = JsonCodec()


def codec_for(subprotocol: str | None) -> Codec:
    if subprotocol == MSGPACK_SUBPROTOCOL:
        return MsgpackCodec()
    return JSON
