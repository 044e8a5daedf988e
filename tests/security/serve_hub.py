"""A hub node for the security tests: ``HubServer`` with the front-door settings that
``pulsewire serve`` does not expose (connection limits, the request-head deadline).

    python tests/security/serve_hub.py --config hub.toml --head-timeout 1.5 --max-per-ip 20

Prints ``listening on http://127.0.0.1:PORT/`` when ready; stops on SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from pulsewire.aio.loop import run
from pulsewire.hub import Hub, HubConfig
from pulsewire.hub.config import load_config
from pulsewire.server.app import HubServer
from pulsewire.server.limits import ConnectionLimits


async def main(args: argparse.Namespace) -> int:
    config = load_config(args.config)[0] if args.config else HubConfig()
    limits = ConnectionLimits(
        max_connections=args.max_connections,
        max_connections_per_ip=args.max_per_ip,
        connections_per_second_per_ip=args.rate_per_ip,
        connections_burst_per_ip=args.burst_per_ip,
    )
    server = HubServer(
        Hub(config),
        args.host,
        args.port,
        api_key=config.api_key,
        limits=limits,
        max_message_size=args.max_message_size,
    )
    server.http.limits.head_timeout = args.head_timeout
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"listening on {server.url}", flush=True)
    await stop.wait()
    await asyncio.wait_for(server.close(), 10)
    return 0


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--head-timeout", type=float, default=10.0)
    parser.add_argument("--max-connections", type=int, default=100_000)
    parser.add_argument("--max-per-ip", type=int, default=1_000)
    parser.add_argument("--rate-per-ip", type=float, default=50.0)
    parser.add_argument("--burst-per-ip", type=float, default=200.0)
    parser.add_argument("--max-message-size", type=int, default=65536)
    return parser.parse_args(argv)


if __name__ == "__main__":
    raise SystemExit(run(main(parse())))
