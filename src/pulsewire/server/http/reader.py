"""The request side of one front-door connection: the httptools parser, its callbacks, and
the request being received (head and body so far), checked against the size limits.

:class:`RequestReader` is fed slices (:meth:`~RequestReader.slice`) that end where a request
head ends (``CRLF CRLF``) or where a ``Content-Length`` body ends, at most
:data:`~.limits.SLICE` bytes, so that parsing stops exactly at a request boundary. What it
finds goes to its
:class:`ReaderOwner` (the connection): complete requests, an upgrade request, a
refusal; the request's deadlines are armed and cancelled on its :class:`~.deadlines.Deadlines`.
"""

from __future__ import annotations

from typing import Protocol

import httptools

from ...protocol.handshake import Headers, target_error
from ...transports.http_types import HttpRequest
from .deadlines import Deadlines
from .limits import SLICE, HttpLimits

__all__ = ["ReaderOwner", "RequestReader"]

_HEAD_END = b"\r\n\r\n"


class ReaderOwner(Protocol):
    """What a :class:`RequestReader` reports to (:class:`~.connection.HttpProtocol`)."""

    def request_received(self, request: HttpRequest, size: int) -> None:
        """A complete request of ``size`` bytes (head and body)."""
        ...

    def upgrade_requested(self, trailing: bytes) -> None:
        """An Upgrade request is complete; ``trailing`` followed it in the slice."""
        ...

    def refuse(self, status: int, reason: str) -> None:
        """Refuse the request being received (its input is not parsed further)."""
        ...


class _Refusal(Exception):
    """Raised by a parser callback to refuse the request (httptools then stops parsing)."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def _refusal_of(exc: httptools.HttpParserCallbackError) -> tuple[int, str]:
    """The status and reason of a callback's refusal. Only plain values leave this function:
    the refusal's traceback holds the callback's frame, whose caller is the frame that
    caught it, so keeping the exception in a local there would make a reference cycle."""
    cause = exc.__context__
    if isinstance(cause, _Refusal):
        return cause.status, cause.reason
    return 400, f"malformed HTTP request: {exc}"


class RequestReader:
    """Parses the requests of one connection, one slice at a time.

    Public attributes read by the connection: ``parser`` (None once closed), ``url``,
    ``headers`` and ``body`` of the request being received, ``in_message`` (one is being
    received), ``head_done`` (its head is complete), ``head_bytes`` (its head's size so far).
    ``remote`` and ``secure`` are set by the connection when it is made.
    """

    __slots__ = (
        "body",
        "body_left",
        "deadlines",
        "head_bytes",
        "head_done",
        "head_tail",
        "headers",
        "in_message",
        "limits",
        "owner",
        "parser",
        "remote",
        "secure",
        "url",
    )

    def __init__(self, owner: ReaderOwner, deadlines: Deadlines, limits: HttpLimits) -> None:
        self.owner: ReaderOwner | None = owner
        self.deadlines = deadlines
        self.limits = limits
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.remote = ""
        self.secure = False
        self.url = bytearray()
        self.headers: list[tuple[str, str]] = []
        self.body = bytearray()
        self.in_message = False
        self.head_done = False
        self.head_bytes = 0
        self.head_tail = b""
        self.body_left: int | None = None

    def close(self) -> None:
        """Parse nothing more, and let go of the parser and the owner (no reference cycle
        is left: the connection is freed by reference counting)."""
        self.parser = None
        self.owner = None
        self.drop_message()

    def slice(self, buf: bytes, start: int) -> int:
        """How many bytes to feed next: up to the end of a head, or of a known-length body."""
        limit = min(len(buf) - start, SLICE)
        if not self.head_done:
            tail = self.head_tail
            if tail:  # the head end may straddle the previous slice
                found = (tail + buf[start : start + 3]).find(_HEAD_END)
                if found >= 0:
                    return found + 4 - len(tail)
            found = buf.find(_HEAD_END, start, start + limit)
            return found + 4 - start if found >= 0 else limit
        if self.body_left:
            return min(self.body_left, limit)
        return limit

    def feed(self, buf: bytes, start: int, end: int) -> bool:
        """Parse ``buf[start:end]`` (a :meth:`slice`); False when parsing must stop here (a
        refusal or an upgrade, already reported to the owner)."""
        parser = self.parser
        owner = self.owner
        assert parser is not None and owner is not None
        in_head = not self.head_done
        if in_head:
            self.head_bytes += end - start
            if self.head_bytes > self.limits.max_head:
                owner.refuse(431, f"request head larger than {self.limits.max_head} bytes")
                return False
        try:
            parser.feed_data(memoryview(buf)[start:end])
        except httptools.HttpParserUpgrade as exc:
            owner.upgrade_requested(buf[start + int(exc.args[0]) :])
            return False
        except httptools.HttpParserCallbackError as exc:
            owner.refuse(*_refusal_of(exc))
            return False
        except httptools.HttpParserError as exc:
            owner.refuse(400, f"malformed HTTP request: {exc}")
            return False
        if in_head and self.in_message and not self.head_done:
            # The head goes on in the next slice: its end may straddle the two.
            self.head_tail = (self.head_tail + buf[max(start, end - 3) : end])[-3:]
        return True

    def drop_message(self) -> None:
        """Forget the request being received (its bytes are no longer held)."""
        self.url = bytearray()
        self.headers = []
        self.body = bytearray()
        self.in_message = False
        self.head_done = False
        self.head_bytes = 0
        self.head_tail = b""
        self.body_left = None

    # -- httptools callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        """httptools: a request begins."""
        self.in_message = True
        self.deadlines.arm_head()

    def on_url(self, url: bytes) -> None:
        """httptools: (part of) the request target."""
        self.url += url
        if len(self.url) > self.limits.max_target:
            raise _Refusal(414, f"request target longer than {self.limits.max_target} bytes")

    def on_header(self, name: bytes, value: bytes) -> None:
        """httptools: one header field."""
        self.headers.append((name.decode("latin-1"), value.decode("latin-1")))
        if len(self.headers) > self.limits.max_headers:
            raise _Refusal(431, f"more than {self.limits.max_headers} header fields")

    def on_headers_complete(self) -> None:
        """httptools: the head is complete (checked here: target, body size)."""
        self.head_done = True
        self.head_tail = b""
        parser = self.parser
        assert parser is not None
        problem = target_error(
            parser.get_method().decode("ascii", "replace"), self.url.decode("latin-1")
        )
        if problem is not None:  # e.g. "GET *": no resource to route, upgrade or not
            raise _Refusal(400, problem)
        length: int | None = None
        chunked = False
        for name, value in self.headers:
            lowered = name.lower()
            if lowered == "content-length":
                length = int(value)  # llhttp has checked it (digits, one value)
            elif lowered == "transfer-encoding":
                chunked = True
        max_body = self.limits.max_body
        if length is not None and length > max_body:
            raise _Refusal(413, f"request body larger than {max_body} bytes")
        self.body_left = None if chunked else length
        if chunked or length:
            self.deadlines.arm_body(len(self.body))
        # (without a body the request is complete now, and its head deadline cancelled)

    def on_body(self, body: bytes) -> None:
        """httptools: (part of) the body."""
        if len(self.body) + len(body) > self.limits.max_body:
            raise _Refusal(413, f"request body larger than {self.limits.max_body} bytes")
        self.body += body
        if self.body_left is not None:
            self.body_left -= len(body)

    def on_message_complete(self) -> None:
        """httptools: the request is complete (an upgrade is reported by :meth:`feed`)."""
        parser = self.parser
        owner = self.owner
        assert parser is not None and owner is not None
        self.deadlines.cancel()
        if parser.should_upgrade():
            return  # handled by HttpParserUpgrade, which follows
        request = HttpRequest(
            method=parser.get_method().decode("ascii", "replace"),
            target=self.url.decode("latin-1"),
            headers=Headers(self.headers),
            body=bytes(self.body),
            remote_address=self.remote,
            version=parser.get_http_version(),
            keep_alive=parser.should_keep_alive(),
            secure=self.secure,
        )
        size = self.head_bytes + len(self.body)
        self.drop_message()
        owner.request_received(request, size)
