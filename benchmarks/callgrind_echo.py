#!/usr/bin/env python3
"""Instructions per echoed message, counted by callgrind on the echo server process.

Wall-clock throughput on a shared machine moves with whatever else runs; instruction counts
do not. For each selected server (the same commands as ``run.py``), this runs the server under
``valgrind --tool=callgrind`` twice, driving ``--messages`` echoes and then twice as many
through the same connections, and reports ``(Ir(2N) - Ir(N)) / N``: start-up, handshakes and
shutdown cancel out, what is left is the cost of one echo in user space (the kernel's copies
and system calls are not counted; the number of reads and writes is, through their
user-space side).

    python benchmarks/callgrind_echo.py --size 65536 --conns 10 --inflight 4
    python benchmarks/callgrind_echo.py --size 32 --text --conns 1 --inflight 100 --messages 20000
    python benchmarks/callgrind_echo.py --servers pulsewire --keep /tmp/cg   # keep the profiles

The driver is a plain asyncio client (not measured): pre-masked frames, ``--inflight`` per
connection, each echo checked for its length and first bytes. Under callgrind the server is
~50x slower than the client, so its reads are full: with several 64 KiB messages in flight a
read holds whole frames and the start of the next one, as on a loaded server.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import run

HOST = "127.0.0.1"


def frame(payload: bytes, text: bool) -> bytes:
    """One masked client frame, sent again and again (the server unmasks each copy anew)."""
    mask = os.urandom(4)
    n = len(payload)
    first = 0x81 if text else 0x82
    if n < 126:
        header = bytes((first, 0x80 | n))
    elif n < 65536:
        header = bytes((first, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, 0x80 | 127)) + n.to_bytes(8, "big")
    key = int.from_bytes(mask * (n // 4) + mask[: n % 4], "big")
    masked = (int.from_bytes(payload, "big") ^ key).to_bytes(n, "big") if n else b""
    return header + mask + masked


async def drive(port: int, conns: int, inflight: int, messages: int, size: int, text: bool) -> None:
    """Open ``conns`` connections and echo ``messages`` messages over them in all."""
    payload = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    data = frame(payload, text)

    async def one(count: int) -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        key = base64.b64encode(os.urandom(16)).decode()
        writer.write(
            (
                f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise SystemExit(f"handshake refused: {head!r}")
        sent = 0
        for _ in range(min(inflight, count)):
            writer.write(data)
            sent += 1
        for _ in range(count):
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            echoed = await reader.readexactly(n)
            if b0 != (0x81 if text else 0x82) or n != size or echoed[:16] != payload[:16]:
                raise SystemExit(f"bad echo: opcode {b0:#x}, {n} bytes")
            if sent < count:
                writer.write(data)
                sent += 1
        writer.write(b"\x88\x82" + b"\0\0\0\0" + (1000).to_bytes(2, "big"))  # Close 1000
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            await reader.read()
        writer.close()

    share, extra = divmod(messages, conns)
    await asyncio.gather(*(one(share + (i < extra)) for i in range(conns)))


def wait_ready(log: Path, proc: subprocess.Popen[bytes]) -> int:
    deadline = time.monotonic() + 300  # Python's start-up under callgrind takes a while
    while time.monotonic() < deadline:
        found = re.search(r"listening on ws://[^:]+:(\d+)/", log.read_text(errors="replace"))
        if found:
            return int(found.group(1))
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.1)
    raise SystemExit("server not ready after 300 s")


def instructions(spec: run.ServerSpec, args: argparse.Namespace, messages: int, out: Path) -> int:
    """Ir of the whole server process for one run with ``messages`` echoes."""
    port = run.free_port()
    stem = out / f"{spec.name}-{messages}"
    log = stem.with_suffix(".log")
    cmd = [
        "valgrind",
        "--tool=callgrind",
        f"--callgrind-out-file={stem}.callgrind",
        *spec.command,
        "--host",
        HOST,
        "--port",
        str(port),
        "--no-compression",
    ]
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            cmd, stdout=sink, stderr=subprocess.STDOUT, cwd=run.SERVERS_DIR, start_new_session=True
        )
    try:
        wait_ready(log, proc)
        asyncio.run(drive(port, args.conns, args.inflight, messages, args.size, args.text))
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for line in Path(f"{stem}.callgrind").read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise SystemExit(f"no totals in {stem}.callgrind")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", default="pulsewire,pulsewire-callbacks,picows,c-echo")
    parser.add_argument("--size", type=int, default=65536)
    kind = parser.add_mutually_exclusive_group()
    kind.add_argument("--text", action="store_true", help="text messages (default: binary)")
    kind.add_argument("--binary", dest="text", action="store_false")
    parser.add_argument("--conns", type=int, default=10)
    parser.add_argument("--inflight", type=int, default=4)
    parser.add_argument("--messages", type=int, default=2000, help="N: runs of N and 2N echoes")
    parser.add_argument("--keep", type=Path, help="keep the callgrind files in this directory")
    args = parser.parse_args()
    run.build_c()
    specs = run.server_specs()
    names = args.servers.split(",")
    unknown = [name for name in names if name not in specs]
    if unknown:
        parser.error(f"unknown servers: {', '.join(unknown)} (known: {', '.join(specs)})")
    with tempfile.TemporaryDirectory() as tmp:
        out = args.keep or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        kind_name = "text" if args.text else "binary"
        print(
            f"{args.size} B {kind_name}, {args.conns} conns x {args.inflight} in flight, "
            f"N={args.messages}: instructions per echo, (Ir(2N) - Ir(N)) / N"
        )
        for name in names:
            small = instructions(specs[name], args, args.messages, out)
            large = instructions(specs[name], args, 2 * args.messages, out)
            per = (large - small) / args.messages
            print(f"{name:22} {per:12,.0f} Ir/echo", flush=True)


if __name__ == "__main__":
    main()
