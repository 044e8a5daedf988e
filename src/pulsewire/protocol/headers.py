"""Parsing of the WebSocket-specific header values that no HTTP parser splits for us.

httptools gives us header names and raw values; the grammars below (RFC 7230 lists of tokens,
RFC 6455 section 9.1 extension lists with quoted-string parameters) are small, and no
well-kept library exposes them on their own, so they are written here, strictly: anything
outside the grammar raises ValueError and the caller turns that into a 400 or a failed handshake.
"""

from __future__ import annotations

import re

__all__ = [
    "ExtensionOffer",
    "format_extension",
    "parse_extension_list",
    "parse_token_list",
    "parse_upgrade_list",
]

ExtensionOffer = tuple[str, list[tuple[str, "str | None"]]]

_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_TOKEN_RE = re.compile(_TOKEN)
_OWS = re.compile(r"[ \t]*")
_QUOTED_RE = re.compile(r'"((?:[^"\\]|\\.)*)"')
_ESCAPE_RE = re.compile(r"\\(.)")


def parse_token_list(value: str) -> list[str]:
    """Split ``"a, b,,c"`` into tokens (empty elements are allowed by RFC 7230's #rule)."""
    result = []
    for item in value.split(","):
        item = item.strip(" \t")
        if not item:
            continue
        if not _TOKEN_RE.fullmatch(item):
            raise ValueError(f"invalid token {item!r}")
        result.append(item)
    return result


def parse_upgrade_list(value: str) -> list[str]:
    """Protocol names of an Upgrade header (``websocket, HTTP/2.0`` -> websocket, http)."""
    names = []
    for item in value.split(","):
        item = item.strip(" \t")
        if not item:
            continue
        name, _, version = item.partition("/")
        if not _TOKEN_RE.fullmatch(name) or (version and not _TOKEN_RE.fullmatch(version)):
            raise ValueError(f"invalid protocol {item!r}")
        names.append(name.lower())
    return names


def parse_extension_list(value: str) -> list[ExtensionOffer]:
    """Parse Sec-WebSocket-Extensions into ``[(name, [(param, value or None), ...]), ...]``."""
    pos, end = 0, len(value)
    result: list[ExtensionOffer] = []

    def skip_ows(p: int) -> int:
        m = _OWS.match(value, p)
        return m.end() if m else p

    while True:
        pos = skip_ows(pos)
        if pos == end:
            break
        if value[pos] == ",":  # empty list element
            pos += 1
            continue
        m = _TOKEN_RE.match(value, pos)
        if not m:
            raise ValueError(f"expected an extension name at {pos} in {value!r}")
        name, pos = m.group(), m.end()
        params: list[tuple[str, str | None]] = []
        while True:
            pos = skip_ows(pos)
            if pos == end or value[pos] == ",":
                pos += 1
                break
            if value[pos] != ";":
                raise ValueError(f"expected ';' or ',' at {pos} in {value!r}")
            pos = skip_ows(pos + 1)
            m = _TOKEN_RE.match(value, pos)
            if not m:
                raise ValueError(f"expected a parameter name at {pos} in {value!r}")
            pname, pos = m.group(), m.end()
            pos = skip_ows(pos)
            pvalue: str | None = None
            if pos < end and value[pos] == "=":
                pos = skip_ows(pos + 1)
                if pos < end and value[pos] == '"':
                    q = _QUOTED_RE.match(value, pos)
                    if not q:
                        raise ValueError(f"unterminated quoted string in {value!r}")
                    pvalue, pos = _ESCAPE_RE.sub(r"\1", q.group(1)), q.end()
                    # RFC 6455 9.1: a quoted value must still be a valid token once unquoted.
                    if not _TOKEN_RE.fullmatch(pvalue):
                        raise ValueError(f"quoted parameter value {pvalue!r} is not a token")
                else:
                    m = _TOKEN_RE.match(value, pos)
                    if not m:
                        raise ValueError(f"expected a parameter value at {pos} in {value!r}")
                    pvalue, pos = m.group(), m.end()
            params.append((pname, pvalue))
        result.append((name, params))
        if pos >= end:
            break
    return result


def format_extension(name: str, params: list[tuple[str, str | None]]) -> str:
    """The inverse of one element of :func:`parse_extension_list`."""
    return "; ".join([name, *(p if v is None else f"{p}={v}" for p, v in params)])
