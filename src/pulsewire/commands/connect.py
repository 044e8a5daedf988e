"""``pulsewire connect``: an interactive client like wscat (piped input: each line is sent,
replies are printed, end of input closes)."""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import sys
from urllib.parse import urlsplit

from ..aio import connect as ws_connect
from ..protocol.errors import ConnectionClosed, InvalidHandshake
from .args import USAGE, CommandError, os_reason

__all__ = ["connect"]

TLS_HINT = "use --cafile FILE to trust the server's CA, or --insecure to skip verification"


def _show(message: str | bytes, interactive: bool) -> None:
    if isinstance(message, bytes):
        text = f"[binary, {len(message)} bytes] {message[:64].hex()}" + (
            "…" if len(message) > 64 else ""
        )
    else:
        text = message
    print(f"< {text}" if interactive else text, flush=True)


def _headers(items: list[str]) -> list[tuple[str, str]]:
    headers = []
    for item in items:
        name, sep, value = item.partition(":")
        if not sep or not name.strip():
            raise CommandError(f"invalid header {item!r} (expected 'Name: value')", USAGE)
        headers.append((name.strip(), value.strip()))
    return headers


def _address(url: str) -> str:
    """``host:port`` of a ws:// or wss:// URL (usage error if it is neither)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise CommandError(f"invalid URL {url!r}: {exc}", USAGE) from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise CommandError(f"expected a ws:// or wss:// URL, got {url!r}", USAGE)
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return f"{host}:{port or (443 if parts.scheme == 'wss' else 80)}"


def _tls_context(url: str, cafile: str | None, insecure: bool) -> ssl.SSLContext | None:
    if not url.startswith("wss://"):
        return None
    try:
        context = ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        reason = os_reason(exc) if not isinstance(exc, ssl.SSLError) else str(exc.reason or exc)
        raise CommandError(f"cannot read --cafile {cafile}: {reason}", USAGE) from None
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def _failure(exc: BaseException, where: str) -> CommandError:
    """One line for a connection that could not be opened, naming the address."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        why = exc.verify_message or exc.reason or "certificate verify failed"
        return CommandError(f"TLS handshake with {where} failed: {why} ({TLS_HINT})")
    if isinstance(exc, ssl.SSLError):
        why = exc.reason or str(exc)
        return CommandError(f"TLS handshake with {where} failed: {why} (is it a wss:// server?)")
    if isinstance(exc, asyncio.TimeoutError):
        return CommandError(f"cannot connect to {where}: no answer within the open timeout")
    if isinstance(exc, OSError):
        return CommandError(f"cannot connect to {where}: {os_reason(exc)}")
    return CommandError(f"handshake with {where} failed: {exc or type(exc).__name__}")


async def connect(args: argparse.Namespace) -> int:
    """Connect, send stdin's lines, print what arrives; raises :class:`CommandError`."""
    headers = _headers(args.header)
    where = _address(args.url)
    context = _tls_context(args.url, args.cafile, args.insecure)
    interactive = sys.stdin.isatty()
    try:
        ws = await ws_connect(
            args.url,
            subprotocols=args.subprotocol,
            additional_headers=headers,
            origin=args.origin,
            ssl=context,
            compression=None if args.no_compression else "deflate",
            max_size=None,
        )
    except (OSError, InvalidHandshake, ValueError, asyncio.TimeoutError) as exc:
        raise _failure(exc, where) from None
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
