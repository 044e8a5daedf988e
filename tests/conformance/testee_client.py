"""Client testee for Autobahn|Testsuite's ``wstest -m fuzzingserver``.

Asks the fuzzing server for its case count, runs each case as an echo client (every message is
sent back unchanged, with the same type, until the connection closes), then asks the server to
write its reports::

    python testee_client.py --port 9001 [--cases 1-10,42] [--library websockets]

The client is pulsewire's asyncio client; ``--library websockets`` (or the environment variable
``PULSEWIRE_AUTOBAHN_STANDIN=websockets``) swaps in the ``websockets`` library as a reference.

Exit status: 0 when every case ran and ended normally or with a connection error (those are
judged by the suite, not here); 2 when some case raised an exception other than the library's
``ConnectionClosed``, ``OSError`` or a timeout (reported on stderr); 1 on a harness error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any

LIBRARIES = ("pulsewire", "websockets")


@dataclass(frozen=True)
class Library:
    """What the testee needs from a WebSocket client library."""

    name: str
    connect: Callable[[str], AbstractAsyncContextManager[Any]]
    closed: type[BaseException]


def load_library(name: str) -> Library:
    """Import the client library called ``name``."""
    if name == "pulsewire":
        import pulsewire

        def connect(uri: str) -> AbstractAsyncContextManager[Any]:
            # No limits on message size or fragment count (9.3.1 and 9.4.1 send 4 MiB in 64-byte
            # frames, 65536 of them), no keepalive pings (they would show up in the case logs).
            manager: AbstractAsyncContextManager[Any] = pulsewire.connect(
                uri, compression="deflate", max_size=None, max_fragments=None, ping_interval=None
            )
            return manager

        return Library(name, connect, pulsewire.ConnectionClosed)
    if name == "websockets":
        # Like max_size=None, lift websockets' cap on fragments per message (4096 by default,
        # too few for cases 9.3.1 and 9.4.1: 4 MiB in 64-byte frames). Read at import time.
        os.environ.setdefault("WEBSOCKETS_MAX_FRAGMENTS", str(1 << 20))
        from websockets.asyncio.client import connect as ws_connect
        from websockets.exceptions import ConnectionClosed

        def connect(uri: str) -> AbstractAsyncContextManager[Any]:
            return ws_connect(
                uri, compression="deflate", max_size=None, proxy=None, ping_interval=None
            )

        return Library(name, connect, ConnectionClosed)
    raise ValueError(f"unknown library {name!r}; expected one of {LIBRARIES}")


def parse_selection(text: str, count: int) -> list[int]:
    """Turn ``"1-5,9"`` into ``[1, 2, 3, 4, 5, 9]``, keeping numbers within ``1..count``."""
    selected: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, _, last = part.partition("-")
        selected.update(range(int(first), int(last or first) + 1))
    return sorted(n for n in selected if 1 <= n <= count)


async def read_all(lib: Library, uri: str) -> list[str | bytes]:
    """Connect to ``uri`` and collect messages until the server closes."""
    messages: list[str | bytes] = []
    async with lib.connect(uri) as ws:
        async for message in ws:
            messages.append(message)
    return messages


async def echo(lib: Library, uri: str) -> None:
    """Echo every message received on ``uri`` until the connection closes."""
    async with lib.connect(uri) as ws:
        async for message in ws:
            await ws.send(message)


async def run(
    lib: Library, base: str, agent: str, selection: str | None, case_timeout: float
) -> int:
    """Run the selected cases, update the reports and return the exit status."""
    messages = await asyncio.wait_for(read_all(lib, f"{base}/getCaseCount"), 30)
    count = int(json.loads(messages[0]))
    cases = parse_selection(selection, count) if selection else list(range(1, count + 1))
    print(f"testee ({lib.name}): running {len(cases)} of {count} cases", flush=True)

    unexpected = 0
    started = time.monotonic()
    for case in cases:
        uri = f"{base}/runCase?case={case}&agent={agent}"
        try:
            await asyncio.wait_for(echo(lib, uri), case_timeout)
        except (lib.closed, OSError):
            pass  # connection errors are expected in many cases; the suite judges them
        except asyncio.TimeoutError:
            print(f"case {case}: no close after {case_timeout:g} s, gave up", file=sys.stderr)
        except Exception:
            unexpected += 1
            print(f"case {case}: unexpected exception", file=sys.stderr)
            traceback.print_exc()

    await asyncio.wait_for(read_all(lib, f"{base}/updateReports?agent={agent}"), 60)
    elapsed = time.monotonic() - started
    print(
        f"testee ({lib.name}): {len(cases)} cases in {elapsed:.1f} s, "
        f"{unexpected} unexpected exceptions",
        flush=True,
    )
    return 2 if unexpected else 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="fuzzing server host (loopback)")
    parser.add_argument("--port", type=int, default=9001, help="fuzzing server port")
    parser.add_argument("--cases", help="case numbers to run, e.g. '1-10,42' (default: all)")
    parser.add_argument("--agent", default="pulsewire", help="agent name in the reports")
    parser.add_argument(
        "--library",
        choices=LIBRARIES,
        default=os.environ.get("PULSEWIRE_AUTOBAHN_STANDIN") or "pulsewire",
        help="client library under test (default: pulsewire, or $PULSEWIRE_AUTOBAHN_STANDIN)",
    )
    parser.add_argument(
        "--case-timeout",
        type=float,
        default=600.0,  # above the suite's own longest case timeout (480 s), so it decides first
        help="seconds before giving up on a case",
    )
    args = parser.parse_args(argv)
    lib = load_library(args.library)
    base = f"ws://{args.host}:{args.port}"
    try:
        return asyncio.run(run(lib, base, args.agent, args.cases, args.case_timeout))
    except (lib.closed, OSError, asyncio.TimeoutError, ValueError, IndexError) as exc:
        print(f"testee: cannot talk to the fuzzing server at {base}: {exc!r}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
