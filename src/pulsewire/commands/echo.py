"""``pulsewire echo``: an echo server, a test tool (any Origin is accepted)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import ssl

from ..aio import serve
from ..aio.connection import Connection
from .args import USAGE, CommandError, os_reason

__all__ = ["echo"]


async def _echo_handler(ws: Connection) -> None:
    async for message in ws:
        await ws.send(message)


def _tls_context(cert: str | None, key: str | None) -> ssl.SSLContext | None:
    if not cert:
        if key:
            raise CommandError("--tls-key needs --tls-cert", USAGE)
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        files = " and ".join(filter(None, (cert, key)))
        raise CommandError(f"cannot load the TLS certificate from {files}: {exc}", USAGE) from None
    return context


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def echo(args: argparse.Namespace) -> int:
    """Serve until SIGINT/SIGTERM; every message is sent back, and a client's Close is
    answered with its code and reason. Raises :class:`CommandError` if it cannot start."""
    context = _tls_context(args.tls_cert, args.tls_key)
    server = serve(
        _echo_handler,
        args.host,
        args.port,
        ssl=context,
        compression=None if args.no_compression else "deflate",
        max_size=args.max_size,
        max_fragments=None,  # Autobahn sends 4 MiB in 64-byte fragments
        max_queue=64,
        echo_close_reason=True,
    )
    try:
        await server.start()
    except OSError as exc:  # a busy port, an address not of this host: one line, like serve
        where = _address(args.host, args.port)
        raise CommandError(f"cannot listen on {where}: {os_reason(exc)}") from None
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    scheme = "wss" if context else "ws"
    print(f"listening on {scheme}://{_address(args.host, server.port)}/", flush=True)
    await stop.wait()
    server.close()
    await server.wait_closed()
    return 0
