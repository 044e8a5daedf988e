"""Routing of the front door: handlers by exact path or prefix, WebSocket routes, and the
answers of a request no handler takes (404, 405, 426) or whose handler fails (500)."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ...aio.server import Server as WebSocketServer
from ...transports.http_types import Handler, HttpRequest, HttpResponse, StreamResponse

__all__ = ["Route", "Router"]

logger = logging.getLogger("pulsewire.server")


@dataclass
class Route:
    """A handler (with the methods it takes) or a WebSocket server, for a path or prefix."""

    handler: Handler | None = None
    websocket: WebSocketServer | None = None
    methods: tuple[str, ...] = ("GET",)
    prefix: bool = False


class Router:
    """Routes by exact path or prefix, and counts the requests refused, by status."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.prefixes: list[tuple[str, Route]] = []
        self.refusals: dict[int, int] = {}
        """Requests and connections refused at the front door, by HTTP status."""

    def add(
        self,
        path: str,
        handler: Handler,
        methods: tuple[str, ...] = ("GET", "HEAD"),
        *,
        prefix: bool = False,
    ) -> None:
        route = Route(handler=handler, methods=methods, prefix=prefix)
        if prefix:
            self.prefixes.append((path, route))
            self.prefixes.sort(key=lambda item: -len(item[0]))
        else:
            self.routes[path] = route

    def add_websocket(self, path: str, server: WebSocketServer) -> None:
        self.routes[path] = Route(websocket=server)

    def route(self, path: str) -> Route | None:
        route = self.routes.get(path)
        if route is not None:
            return route
        for prefix, candidate in self.prefixes:
            if path.startswith(prefix):
                return candidate
        return None

    async def dispatch(self, request: HttpRequest) -> HttpResponse | StreamResponse:
        """Route ``request``: 404, 426 (WebSocket path), 405, or the handler (500 if it fails)."""
        route = self.route(request.path)
        response: HttpResponse | StreamResponse
        try:
            if route is None or route.handler is None:
                if route is not None and route.websocket is not None:
                    response = HttpResponse(
                        426,
                        "this is a WebSocket endpoint: Upgrade: websocket is required\n",
                        [("Upgrade", "websocket")],
                    )
                else:
                    response = HttpResponse(404, f"not found: {request.path}\n")
            elif request.method not in route.methods:
                # HEAD runs the GET handler and drops the body, so only routes that list it
                # (plain pages) take it: on a stream or a long poll it would have effects.
                allowed = ", ".join(route.methods)
                response = HttpResponse(
                    405,
                    f"method {request.method} not allowed; use {allowed}\n",
                    [("Allow", allowed)],
                )
            else:
                response = await route.handler(request)
        except Exception:
            logger.exception("HTTP handler failed for %s %s", request.method, request.path)
            response = HttpResponse(500, "internal server error\n")
        if response.status >= 400:  # handlers refuse too (Origin 403, unknown session 404...)
            self.count_refusal(response.status)
        return response

    def count_refusal(self, status: int) -> None:
        self.refusals[status] = self.refusals.get(status, 0) + 1
