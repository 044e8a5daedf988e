"""``pulsewire subscribe URL CHANNEL``: a hub channel's publications as JSON lines on stdout.

On :mod:`pulsewire.client`, which reconnects and recovers; this module prints each
publication, says on stderr what changed (one line per change), and turns how it ended into
the exit status: 0 on SIGINT/SIGTERM or after ``--count``, 1 when the hub refused for good,
2 for a usage error (docs/client.md, "On the command line"). The client is imported only
when the command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from .args import USAGE, CommandError, os_reason, positive_int, say

if TYPE_CHECKING:
    from ..client import Client, Publication, StateChange, Subscribed, Unsubscribed

__all__ = ["add_arguments", "subscribe"]


def _position(text: str) -> tuple[int, str]:
    """Parse ``--since OFFSET:EPOCH``."""
    offset, sep, epoch = text.partition(":")
    if not sep or not epoch or not offset.isdigit():
        raise argparse.ArgumentTypeError(f"expected OFFSET:EPOCH (e.g. 41:9f1c2e3d), got {text!r}")
    return int(offset), epoch


def add_arguments(cmd: argparse.ArgumentParser) -> None:
    """Add the command's arguments and options to its (sub)parser ``cmd``."""
    cmd.add_argument(
        "url",
        metavar="URL",
        help="the hub's WebSocket URL, e.g. ws://HOST:8000/connection/websocket",
    )
    cmd.add_argument("channel", metavar="CHANNEL", help="the channel, e.g. chat:lobby")
    cmd.add_argument(
        "--url",
        dest="more_urls",
        action="append",
        default=[],
        metavar="URL",
        help="another node of the same hub (repeatable): connections rotate through them",
    )
    token = cmd.add_mutually_exclusive_group()
    token.add_argument("--token", help="the connection token (a JWT)")
    token.add_argument(
        "--token-file",
        metavar="FILE",
        help="read the connection token from this file (not shown by ps; read again to refresh it)",
    )
    cmd.add_argument(
        "--since",
        type=_position,
        metavar="OFFSET:EPOCH",
        help="start after this position of the channel's stream (what history still holds "
        "after it comes first)",
    )
    cmd.add_argument("--count", type=positive_int, metavar="N", help="exit after N publications")
    cmd.add_argument(
        "--msgpack",
        action="store_true",
        help="use the MessagePack subprotocol",
    )


def _say(text: str) -> None:
    say("subscribe", text)


async def subscribe(args: argparse.Namespace) -> int:
    """Run ``pulsewire subscribe`` with the parsed ``args``; returns the exit status (raises
    :class:`CommandError` for a usage error)."""
    urls = [args.url, *args.more_urls]
    bad = [url for url in urls if not url.startswith(("ws://", "wss://"))]
    if bad:
        raise CommandError(f"expected a ws:// or wss:// URL, got {bad[0]!r}", USAGE)
    if args.token_file is not None:
        _read_token(args.token_file, USAGE)
    return await _subscribe(args, urls)


def _read_token(path: str, status: int = 1) -> str:
    try:
        with open(path, encoding="utf-8") as file:
            token = file.read().strip()
    except OSError as exc:
        raise CommandError(f"cannot read --token-file {path}: {os_reason(exc)}", status) from None
    except UnicodeDecodeError:
        raise CommandError(f"--token-file {path} is not UTF-8 text", status) from None
    if not token:
        raise CommandError(f"--token-file {path} is empty", status)
    return token


async def _subscribe(args: argparse.Namespace, urls: list[str]) -> int:
    """Run until SIGINT/SIGTERM (0), ``--count`` publications (0), or a failure for good (1)."""
    loop = asyncio.get_running_loop()
    status = _Status(static_token=args.token is not None)
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, status.finish, 0)
    stream = loop.create_task(_stream(args, urls, status))
    await asyncio.wait({stream, status.outcome}, return_when=asyncio.FIRST_COMPLETED)
    if stream.done():
        return stream.result()
    stream.cancel()  # leaves `async with connect(...)`: the client closes (1000)
    await asyncio.wait({stream}, timeout=5)
    return status.outcome.result()


async def _stream(args: argparse.Namespace, urls: list[str], status: _Status) -> int:
    from ..client import (
        ClientClosed,
        ClientError,
        ClientTimeout,
        Publication,
        Subscribed,
        Unsubscribed,
        connect,
    )

    token_file = args.token_file
    options: dict[str, Any] = {
        "codec": "msgpack" if args.msgpack else "json",
        "on_state": status.state_changed,
    }
    if token_file is not None:  # read again when the token expires: a fresh one is used
        options["get_token"] = lambda: _read_token(token_file)
    else:
        options["token"] = args.token
    written = 0
    ended: Unsubscribed | None = None
    try:
        while True:
            connecting = connect(urls, **options)
            status.client = connecting.client
            try:
                client = await connecting
            except ClientTimeout:
                continue  # not reachable yet: said once by on_state; keep trying
            break
        async with client:
            sub = await client.subscribe(args.channel, since=args.since)
            async for event in sub.events():
                if isinstance(event, Publication):
                    if not _write_line(_publication_line(event)):
                        return 0  # the reader went away (`| head`): nothing left to do
                    written += 1
                    if args.count is not None and written >= args.count:
                        return 0
                elif isinstance(event, Subscribed):
                    status.subscribed(event)
                elif isinstance(event, Unsubscribed):
                    ended = event  # iteration ends, or raises when the client stopped
    except ClientClosed as exc:
        what = "disconnected for good" if status.was_connected else "connection refused"
        _say(f"{what}: {exc.reason or 'no reason'} ({exc.code})")
        return 1
    except ClientError as exc:
        _say(f"subscribing to {args.channel} failed: {exc.message} ({exc.code})")
        return 1
    why = f"{ended.reason} ({ended.code})" if ended is not None else "no reason given"
    _say(f"unsubscribed from {args.channel}: {why}")
    return 1


class _Status:
    """Says on stderr what changed, one line per change (not per reconnect attempt); ends
    the command with :meth:`finish` (a signal, or a failure the client would retry)."""

    def __init__(self, *, static_token: bool) -> None:
        self.static_token = static_token
        self.client: Client | None = None
        self.outcome: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.was_connected = False
        self.down = False

    def finish(self, code: int) -> None:
        if not self.outcome.done():
            self.outcome.set_result(code)

    def state_changed(self, change: StateChange) -> None:
        from ..hub.errors import DisconnectCode

        if change.state == "connected":
            client = self.client
            node = f" (node {client.node})" if client is not None and client.node else ""
            url = f" to {client.url}" if client is not None and client.url else ""
            _say(f"{'reconnected' if self.was_connected else 'connected'}{url}{node}")
            self.was_connected = True
            self.down = False
        elif change.state == "disconnected":
            if change.code == DisconnectCode.TOKEN_EXPIRED and self.static_token:
                _say(f"token expired ({change.code}): run again with a fresh --token")
                self.finish(1)
            elif not self.down:
                why = f"{change.code} {change.reason}".strip() if change.code else "unknown"
                client = self.client
                if self.was_connected:
                    _say(f"connection lost ({why}), retrying with backoff")
                else:
                    if client is not None and isinstance(client.last_error, OSError):
                        why = os_reason(client.last_error)
                    where = client.url if client is not None and client.url else "the hub"
                    _say(f"cannot connect to {where}: {why}, retrying with backoff")
                self.down = True

    def subscribed(self, event: Subscribed) -> None:
        where = "(no history)"
        if event.position is not None:
            where = f"at {event.position.offset}:{event.position.epoch}"
        if event.recovering:
            recovered = "true" if event.recovered else "false: publications were missed"
            _say(f"subscribed to {event.channel} {where}, recovered {recovered}")
        else:
            _say(f"subscribed to {event.channel} {where}")


def _publication_line(pub: Publication) -> str:
    """``{"channel","offset","data"}`` plus ``info``/``tags`` when present, compact."""
    line: dict[str, Any] = {"channel": pub.channel, "offset": pub.offset, "data": pub.data}
    if pub.info is not None:
        info: dict[str, Any] = {"client": pub.info.client, "user": pub.info.user}
        if pub.info.conn_info is not None:
            info["conn_info"] = pub.info.conn_info
        if pub.info.chan_info is not None:
            info["chan_info"] = pub.info.chan_info
        line["info"] = info
    if pub.tags:
        line["tags"] = pub.tags
    return json.dumps(line, separators=(",", ":"))  # data is JSON: the hub sees to it


def _write_line(line: str) -> bool:
    """Write and flush one line; False when stdout is closed (a pipe's reader exited)."""
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain when it flushes stdout at exit: point it at /dev/null.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return False
    return True
