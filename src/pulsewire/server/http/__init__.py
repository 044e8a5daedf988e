"""A small HTTP/1.1 server on httptools: the front door of ``pulsewire serve``.

:mod:`~.limits` (sizes and deadlines), :mod:`~.routing` (routes and the answers no handler
gives), :mod:`~.reader` (the httptools parser and the request being
received), :mod:`~.deadlines` (head, body and idle deadlines), :mod:`~.flow` (waiting for
the peer to take the output), :mod:`~.answering` (the waiting requests and the worker that
answers them: responses, streams), :mod:`~.connection` (one connection: input, memory
budget, the WebSocket hand-over, closing), :mod:`~.server`
(routes, admission, accounts and the open connections). The
request and response types are :mod:`pulsewire.transports.http_types`' (re-exported here).
"""

from __future__ import annotations

from ...transports.http_types import (
    Handler,
    HttpRequest,
    HttpResponse,
    StreamResponse,
    json_response,
)
from .connection import HttpProtocol
from .limits import CLOSE_DEADLINE, SLICE, HttpLimits
from .routing import Route, Router
from .server import HttpServer

__all__ = [
    "CLOSE_DEADLINE",
    "SLICE",
    "Handler",
    "HttpLimits",
    "HttpProtocol",
    "HttpRequest",
    "HttpResponse",
    "HttpServer",
    "Route",
    "Router",
    "StreamResponse",
    "json_response",
]
