"""The ``pulsewire`` command line: ``echo`` (a test server), ``connect`` (a wscat-like client),
``subscribe`` (prints a hub channel's publications), ``serve`` (the hub). The commands
themselves are in :mod:`pulsewire.commands` and :mod:`pulsewire.server.main`; this module
builds the parser and dispatches."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .aio.loop import run
from .commands.args import (
    CommandError,
    Parser,
    non_negative_seconds,
    port,
    positive_int,
    say,
    size,
)
from .commands.connect import connect as run_connect
from .commands.echo import echo as run_echo
from .commands.subscribe import add_arguments as subscribe_arguments
from .commands.subscribe import subscribe as run_subscribe

if TYPE_CHECKING:
    from .server.settings import ServeOptions

__all__ = ["main", "serve_options"]


def _build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="pulsewire", description="Real-time WebSockets for Python.")
    parser.add_argument("--version", action="version", version=f"pulsewire {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    echo = sub.add_parser("echo", help="run an echo server (a test tool: any Origin is accepted)")
    echo.add_argument("--host", default="127.0.0.1", help="address to listen on")
    echo.add_argument("--port", type=port, default=8765, help="port, 0 for any free one")
    echo.add_argument("--no-compression", action="store_true", help="disable permessage-deflate")
    echo.add_argument("--tls-cert", help="certificate chain (PEM) to serve wss://")
    echo.add_argument("--tls-key", help="private key (PEM) for --tls-cert")
    echo.add_argument(
        "--max-size",
        type=size,
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
        type=non_negative_seconds,
        default=0.5,
        help="after end of input, wait this long for replies before closing (default 0.5 s)",
    )
    subscribe_arguments(
        sub.add_parser(
            "subscribe",
            help="print a hub channel's publications as JSON lines (reconnects and recovers)",
        )
    )
    srv = sub.add_parser(
        "serve", help="run the real-time hub (WebSocket endpoint, HTTP API, demos)"
    )
    srv.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    srv.add_argument("--port", type=port, default=None, help="port (default 8000)")
    srv.add_argument(
        "--engine",
        default=None,
        help="memory (default), redis://HOST:PORT/DB, "
        "redis+shards://HOST:PORT,HOST:PORT[,...][/DB], "
        "redis+sentinel://HOST:PORT[,HOST:PORT...]/MASTER[/DB], "
        "redis+cluster://HOST:PORT[,HOST:PORT...] or "
        "nats://HOST:PORT[,HOST:PORT...][?replicas=N]",
    )
    srv.add_argument(
        "--config", help="a pulsewire.toml file ([server], [hub], [channel], [namespaces.*])"
    )
    srv.add_argument("--node-name", help="this node's name (default: random)")
    srv.add_argument(
        "--api-key",
        help="key for the /api/ endpoints (Authorization: apikey KEY); default: none, the "
        "HTTP API is off",
    )
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
        type=positive_int,
        metavar="N",
        default=None,
        help="run N worker processes on one port (SO_REUSEPORT) under a supervisor; "
        "more than one needs a shared engine (redis:// or nats://) (default: one process)",
    )
    srv.add_argument(
        "--drain-timeout",
        type=non_negative_seconds,
        default=None,
        metavar="SECONDS",
        help="on SIGTERM/SIGINT, clients are told to reconnect elsewhere (WebSocket close "
        "1012); connections still open after this long are aborted (default 10)",
    )
    srv.add_argument(
        "--overload-lag",
        type=non_negative_seconds,
        default=None,
        metavar="SECONDS",
        help="backpressure: when a node is this far behind on delivery, publishers to what it "
        "is behind on wait (0: off) (default 0.5)",
    )
    srv.add_argument(
        "--overload-wait",
        type=non_negative_seconds,
        default=None,
        metavar="SECONDS",
        help="backpressure: a publish waits at most this long for a node to catch up, then "
        "is refused with error 115 (default 2)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``pulsewire ARGS``; returns the exit status: 0, 1 (a runtime error) or 2 (a usage
    error), each error one line on stderr (see :mod:`pulsewire.commands.args`)."""
    args = _build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except CommandError as exc:
        say(args.command, exc.message)
        return exc.status
    except OSError as exc:
        say(args.command, str(exc))
        return 1
    except KeyboardInterrupt:  # Ctrl-C before the command's own signal handlers
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "echo":
        return run(run_echo(args))
    if args.command == "connect":
        return run(run_connect(args))
    if args.command == "subscribe":
        return run(run_subscribe(args))
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
        overload_lag=args.overload_lag,
        overload_wait=args.overload_wait,
    )


if __name__ == "__main__":
    sys.exit(main())
