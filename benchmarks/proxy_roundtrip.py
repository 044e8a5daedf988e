#!/usr/bin/env python3
"""What the backend proxy costs: round trips through a ``pulsewire serve`` node whose hooks a
FastAPI backend under uvicorn answers (the tests' ``tests/deploy/proxy_backend.py``).

    .venv/bin/python benchmarks/proxy_roundtrip.py [--count 2000]

Prints the p50/p99 of ``ping`` (no backend call) and ``rpc`` (one proxied call) round trips
of one client, sequential, and the rate of sequential connect + close (one proxied connect
each). One client at a time: this is the latency a call adds, not the node's capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

import pulsewire

ROOT = Path(__file__).resolve().parents[1]
BACKEND = ROOT / "tests" / "deploy" / "proxy_backend.py"
PULSEWIRE = Path(sys.executable).parent / "pulsewire"
BOB = [("Authorization", "Bearer bob")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_up(*urls: str) -> None:
    deadline = time.monotonic() + 30
    async with httpx.AsyncClient() as client:
        for url in urls:
            while True:
                try:
                    await client.get(url)
                    break
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        raise SystemExit(f"{url} did not answer in 30 s") from None
                    await asyncio.sleep(0.1)


async def measure(count: int, node_port: int) -> None:
    url = f"ws://127.0.0.1:{node_port}/connection/websocket"
    ws = await pulsewire.connect(url, additional_headers=BOB)
    await ws.send(json.dumps({"id": 1, "method": "connect", "params": {}}))
    await ws.recv()
    ids = iter(range(2, 10**9))

    async def round_trip(method: str) -> float:
        params = {"method": "add", "data": [1, 2]}
        started = time.perf_counter()
        await ws.send(json.dumps({"id": next(ids), "method": method, "params": params}))
        await ws.recv()
        return time.perf_counter() - started

    for method in ("ping", "rpc"):
        for _ in range(count // 10):  # warm up (connections pooled, code paths hot)
            await round_trip(method)
        times = sorted([await round_trip(method) for _ in range(count)])
        p50, p99 = statistics.median(times), times[int(0.99 * len(times))]
        print(f"{method:5} n={count} p50={p50 * 1e3:.2f} ms p99={p99 * 1e3:.2f} ms")
    await ws.close()
    started, connects = time.perf_counter(), count // 10
    for _ in range(connects):
        client = await pulsewire.connect(url, additional_headers=BOB)
        await client.send(json.dumps({"id": 1, "method": "connect", "params": {}}))
        await client.recv()
        await client.close()
    rate = connects / (time.perf_counter() - started)
    print(f"connect+close (proxied connect), sequential: {rate:.0f}/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=2000)
    args = parser.parse_args()
    backend_port, node_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "pulsewire.toml"
        config.write_text(
            "[hub]\nclient_commands_per_second = 1e6\nclient_commands_burst = 1e6\n"
            "auth_failures_burst = 0\n\n"
            f'[proxy]\nurl = "http://127.0.0.1:{backend_port}/pw/"\n'
            'include_headers = ["authorization"]\n[proxy.connect]\n[proxy.rpc]\n'
        )
        backend = subprocess.Popen([sys.executable, str(BACKEND), str(backend_port)])
        node = subprocess.Popen(
            [str(PULSEWIRE), "serve", "--port", str(node_port), "--config", str(config)],
            stdout=subprocess.DEVNULL,
        )
        try:
            asyncio.run(
                wait_up(
                    f"http://127.0.0.1:{backend_port}/calls",
                    f"http://127.0.0.1:{node_port}/health",
                )
            )
            asyncio.run(measure(args.count, node_port))
        finally:
            for proc in (node, backend):
                proc.kill()
                proc.wait()


if __name__ == "__main__":
    main()
