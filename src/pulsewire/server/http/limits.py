"""The front door's sizes and deadlines (:class:`HttpLimits`) and its fixed bounds."""

from __future__ import annotations

from dataclasses import dataclass

from ...protocol.handshake import HeadLimits

__all__ = ["CLOSE_DEADLINE", "SLICE", "HttpLimits"]

CLOSE_DEADLINE = 5.0
"""Seconds a closing connection may take to flush its buffer before it is aborted."""

SLICE = 8192
"""The most bytes fed to the parser at once: where a request ends inside a slice that is not
cut at a head or ``Content-Length`` boundary (chunked bodies), the next request's first bytes
are parsed with it, so per-request head counts are exact to within this many bytes."""


@dataclass
class HttpLimits:
    """Sizes and deadlines of the front door (mutable: tests and reloads adjust them)."""

    max_target: int = HeadLimits().max_target
    """Longest request target (414)."""
    max_headers: int = HeadLimits().max_headers
    """Most header fields (431)."""
    max_head: int = HeadLimits().max_head
    """Largest request head, request line included (431)."""
    max_body: int = 1 << 20
    """Largest request body (413)."""
    head_timeout: float = 10.0
    """Seconds from a request's first byte (or the connection's start) to its complete head."""
    body_timeout: float = 30.0
    """Seconds from a complete head to the complete body (408)."""
    body_min_rate: int = 1024
    """Bytes per second a body must keep up over each window (408); 0: no minimum."""
    body_rate_window: float = 5.0
    """Seconds over which ``body_min_rate`` is measured."""
    idle_timeout: float = 75.0
    """Seconds a keep-alive connection may wait for its next request."""
    send_timeout: float = 30.0
    """Seconds the peer may leave a response or stream chunk untaken (the connection is
    aborted)."""
