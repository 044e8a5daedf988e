"""The ``pulsewire`` command line: ``echo`` (a test server), ``connect`` (a wscat-like client)."""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import ssl
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .aio import connect, serve
from .aio.connection import Connection
from .aio.loop import run
from .protocol.errors import ConnectionClosed, InvalidHandshake

if TYPE_CHECKING:
    from .server.settings import ServeOptions

__all__ = ["main", "serve_options"]


def _size(text: str) -> int | None:
    """Parse 1048576, 64KiB, 16MiB or 'none'."""
    text = text.strip().lower()
    if text in ("none", "0", "unlimited"):
        return None
    for suffix, factor in (
        ("kib", 1024),
        ("mib", 1024**2),
        ("gib", 1024**3),
        ("k", 1024),
        ("m", 1024**2),
    ):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * factor)
    return int(text)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pulsewire", description="Real-time WebSockets for Python."
    )
    parser.add_argument("--version", action="version", version=f"pulsewire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    echo = sub.add_parser("echo", help="run an echo server (a test tool: any Origin is accepted)")
    echo.add_argument("--host", default="127.0.0.1")
    echo.add_argument("--port", type=int, default=8765)
    echo.add_argument("--no-compression", action="store_true", help="disable permessage-deflate")
    echo.add_argument("--tls-cert", help="certificate chain (PEM) to serve wss://")
    echo.add_argument("--tls-key", help="private key (PEM) for --tls-cert")
    echo.add_argument(
        "--max-size",
        type=_size,
        default=1024**2,
        help="largest message accepted after inflation, e.g. 16MiB or none (default 1MiB, as "
        "pulsewire.serve); the memory budget of each connection and address follows it",
    )

    cli = sub.add_parser("connect", help="interactive client: lines you type are sent as text")
    cli.add_argument("url", help="ws:// or wss:// URL")
    cli.add_argument(
        "--subprotocol", action="append", default=[], help="offer a subprotocol (repeatable)"
    )
    cli.add_argument(
        "--header", action="append", default=[], help="extra header 'Name: value' (repeatable)"
    )
    cli.add_argument("--origin", help="send this Origin header")
    cli.add_argument(
        "--insecure", action="store_true", help="do not verify the server's TLS certificate"
    )
    cli.add_argument("--cafile", help="trust this CA bundle (PEM) for wss://")
    cli.add_argument(
        "--no-compression", action="store_true", help="do not offer permessage-deflate"
    )
    cli.add_argument(
        "--linger",
        type=float,
        default=0.5,
        help="after end of input, wait this long for replies before closing (default 0.5 s)",
    )
    srv = sub.add_parser(
        "serve", help="run the real-time hub (WebSocket endpoint, HTTP API, demos)"
    )
    srv.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=int, default=None, help="port (default 8000)")
    srv.add_argument(
        "--engine", default=None, help="memory (default), redis://HOST:PORT/DB or nats://HOST:PORT"
    )
    srv.add_argument(
        "--config", help="a pulsewire.toml file ([server], [hub], [channel], [namespaces.*])"
    )
    srv.add_argument("--node-name", help="this node's name (default: random)")
    srv.add_argument("--api-key", help="key for the /api/ endpoints (Authorization: apikey KEY)")
    srv.add_argument("--token-secret", help="HMAC secret of HS256 connection tokens")
    srv.add_argument(
        "--token-jwks-url",
        help="identity provider's JWKS URL: RS256/ES256 tokens are verified with its key "
        "named by their kid (rotation followed)",
    )
    srv.add_argument("--allow-anonymous", action="store_true", help="admit clients without a token")
    srv.add_argument(
        "--allowed-origin",
        action="append",
        default=None,
        help="also accept WebSocket handshakes from this Origin (repeatable; '*' patterns)",
    )
    srv.add_argument(
        "--demo",
        action="store_true",
        help="demo namespaces, /demo/token and the demo producers (loopback only)",
    )
    srv.add_argument("--tls-cert", help="certificate chain (PEM) to serve https:// and wss://")
    srv.add_argument("--tls-key", help="private key (PEM) for --tls-cert")
    srv.add_argument(
        "--log-format",
        choices=("text", "json"),
        default=None,
        help="log lines as text (default) or one JSON object per line",
    )
    srv.add_argument("--log-level", default=None, help="DEBUG, INFO (default), WARNING, ERROR")
    srv.add_argument(
        "--workers",
        type=int,
        metavar="N",
        default=None,
        help="run N worker processes on one port (SO_REUSEPORT) under a supervisor; "
        "more than one needs a shared engine (redis:// or nats://)",
    )
    srv.add_argument(
        "--drain-timeout",
        type=float,
        default=None,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, clients are told to reconnect elsewhere (WebSocket close "
        "1012); connections still open after this long are aborted (default 10)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "echo":
        return run(_echo(args))
    if args.command == "connect":
        return run(_connect(args))
    if args.command == "serve":
        from .server.main import serve_main

        return serve_main(serve_options(args))
    raise AssertionError(args.command)


def serve_options(args: argparse.Namespace) -> ServeOptions:
    """The ``serve`` flags as the node runner's :class:`ServeOptions` (the only translation)."""
    from .server.settings import ServeOptions

    return ServeOptions(
        config=args.config,
        host=args.host,
        port=args.port,
        engine=args.engine,
        node_name=args.node_name,
        api_key=args.api_key,
        token_secret=args.token_secret,
        token_jwks_url=args.token_jwks_url,
        allow_anonymous=args.allow_anonymous,
        allowed_origins=None if args.allowed_origin is None else tuple(args.allowed_origin),
        demo=args.demo,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        log_format=args.log_format,
        log_level=args.log_level,
        workers=args.workers,
        drain_timeout=args.drain_timeout,
    )


# ------------------------------------------------------------------------------------ echo


async def _echo_handler(ws: Connection) -> None:
    async for message in ws:
        await ws.send(message)


async def _echo(args: argparse.Namespace) -> int:
    context = None
    if args.tls_cert:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.tls_cert, args.tls_key)
    elif args.tls_key:
        print("pulsewire echo: --tls-key needs --tls-cert", file=sys.stderr)
        return 2
    server = serve(
        _echo_handler,
        args.host,
        args.port,
        ssl=context,
        compression=None if args.no_compression else "deflate",
        max_size=args.max_size,
        max_fragments=None,  # Autobahn sends 4 MiB in 64-byte fragments
        max_queue=64,
    )
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    scheme = "wss" if context else "ws"
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"listening on {scheme}://{host}:{server.port}/", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()
    return 0


# --------------------------------------------------------------------------------- connect


def _show(message: str | bytes, interactive: bool) -> None:
    if isinstance(message, bytes):
        text = f"[binary, {len(message)} bytes] {message[:64].hex()}" + (
            "…" if len(message) > 64 else ""
        )
    else:
        text = message
    print(f"< {text}" if interactive else text, flush=True)


async def _connect(args: argparse.Namespace) -> int:
    headers = []
    for item in args.header:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            print(
                f"pulsewire connect: invalid header {item!r} (expected 'Name: value')",
                file=sys.stderr,
            )
            return 2
        headers.append((name.strip(), value.strip()))
    context: ssl.SSLContext | None = None
    if args.url.startswith("wss://"):
        context = ssl.create_default_context(cafile=args.cafile)
        if args.insecure:
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
    interactive = sys.stdin.isatty()
    try:
        ws = await connect(
            args.url,
            subprotocols=args.subprotocol,
            additional_headers=headers,
            origin=args.origin,
            ssl=context,
            compression=None if args.no_compression else "deflate",
            max_size=None,
        )
    except (OSError, InvalidHandshake, ValueError, asyncio.TimeoutError) as exc:
        print(f"pulsewire connect: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    if interactive:
        extra = f" (subprotocol {ws.subprotocol})" if ws.subprotocol else ""
        print(
            f"connected to {args.url}{extra}; type a line to send it, Ctrl-D to close", flush=True
        )

    received = asyncio.Event()

    async def reader() -> None:
        async for message in ws:
            _show(message, interactive)
            received.set()

    read_task = asyncio.create_task(reader())
    stdin = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(stdin), os.fdopen(os.dup(0), "rb")
    )
    status = 0
    try:
        while not read_task.done():
            line_task = asyncio.create_task(stdin.readline())
            done, _ = await asyncio.wait(
                {line_task, read_task}, return_when=asyncio.FIRST_COMPLETED
            )
            if line_task not in done:
                line_task.cancel()
                break
            line = line_task.result()
            if not line:  # end of input
                await _linger(received, read_task, args.linger)
                break
            await ws.send(line.decode("utf-8", "replace").rstrip("\r\n"))
        await ws.close()
        await asyncio.wait({read_task}, timeout=ws.close_timeout)
    except ConnectionClosed:
        pass
    if read_task.done() and not read_task.cancelled() and read_task.exception() is not None:
        failure = read_task.exception()
        print(f"pulsewire connect: connection closed: {failure}", file=sys.stderr)
        status = 1
    elif interactive:
        print(f"closed: {ws.close_code} {ws.close_reason or ''}".rstrip(), flush=True)
    read_task.cancel()
    return status


async def _linger(received: asyncio.Event, read_task: asyncio.Task[None], seconds: float) -> None:
    """Wait for replies to what was sent: until ``seconds`` pass without a new message."""
    while not read_task.done():
        received.clear()
        try:
            await asyncio.wait_for(received.wait(), seconds)
        except asyncio.TimeoutError:
            return


if __name__ == "__main__":
    sys.exit(main())
