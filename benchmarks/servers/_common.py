"""Command line shared by the Python echo servers: ``--host --port [--no-compression]``.

Every server prints ``listening on ws://HOST:PORT/`` on stdout once it accepts connections; the
runner waits for that line. Routes: ``/`` echoes, ``/fanout`` receives broadcasts, and every
message sent on ``/trigger`` is broadcast to all ``/fanout`` connections.
"""

from __future__ import annotations

import argparse

MAX_SIZE = 16 * 1024 * 1024  # largest message accepted; the biggest benchmark message is 64 KiB


def parse_args(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument(
        "--no-compression",
        action="store_true",
        help="do not negotiate permessage-deflate (it is enabled by default where supported)",
    )
    return parser.parse_args()


def announce(host: str, port: int) -> None:
    """Print the ready line the runner waits for."""
    print(f"listening on ws://{host}:{port}/", flush=True)
