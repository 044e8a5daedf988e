#!/usr/bin/env python3
"""The hub side by side with what users pick instead: fan-out of one publication to N rooms'
subscribers on pulsewire, python-socketio and Node Socket.IO 4, in one run.

Each server in turn (pinned to core 0 with ``taskset``): ``pulsewire serve`` (memory engine),
python-socketio (an ASGI app under uvicorn, benchmarks/servers/socketio_hub.py) and Node
Socket.IO (benchmarks/servers/node_socketio_hub.js). N WebSocket subscribers (client processes
pinned to core 1) subscribe to one channel / join one room; each round publishes one message
through the server's HTTP endpoint (``POST /api/publish``: pulsewire's API, the peers' scripts
copy it) with its send time in the data, and every subscriber records when it got it.

One client driver speaks both protocols over raw WebSockets (fanout_hub.py's ``HubConn``):
pulsewire's hub protocol (``connect`` with ``subs``), and Socket.IO v5 over Engine.IO v4's
WebSocket transport (``40`` connect, ``421["join",ROOM]`` acknowledged by ``431[...]``, events
``42["pub",DATA]``, ping ``2`` answered by pong ``3``).

Per server: first and last receipt (p50 / p99 over rounds), deliveries/s (N / p50 of the last
receipt), server memory per subscribed connection (RSS delta / N), server CPU per delivery
(/proc, the median round), the driver's own CPU use while a round is delivered (near 100 %: the
driver, not the server, is the limit), the load average and other processes' CPU use (flagged
when the machine was busy). Ratios: pulsewire / peer.

    .venv/bin/python benchmarks/hub_peers.py                # N = 1,000, 20 rounds
    .venv/bin/python benchmarks/hub_peers.py --subscribers 10000
    .venv/bin/python benchmarks/hub_peers.py --smoke        # 100 subscribers, 2 rounds

Writes ``benchmarks/results/hub_peers.json`` (smoke: ``hub_peers_smoke.json``).
"""

import argparse
import asyncio
import base64
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # run as a script or loaded from a file by the tests
    sys.path.insert(0, str(BENCH))

import fanout_hub as hub  # noqa: E402

SERVERS = BENCH / "servers"
NODE_DIR = BENCH / "node"
CHANNEL = "fan:bench"  # pulsewire's channel; the Socket.IO room has the same name
SATURATED_PERCENT = 90.0  # driver CPU above this while delivering: the driver is the limit
PEERS = ("pulsewire", "python-socketio", "node-socketio")


@dataclass(frozen=True)
class Settings:
    subscribers: int = 1_000
    client_procs: int = 2
    rounds: int = 20
    warmup_rounds: int = 1
    round_pause: float = 0.2
    pin: bool = True
    smoke: bool = False
    timeout: float = 120.0  # for the subscribers to be ready, and again for each round
    ping_interval: float = 0.0  # Socket.IO pings (and ping timeout), seconds; 0: the default


# a lost round fails the smoke test in seconds, not minutes; pings every 0.5 s check that the
# driver answers them (a client that does not is dropped before the rounds)
SMOKE = Settings(
    subscribers=100, client_procs=1, rounds=2, smoke=True, timeout=15.0, ping_interval=0.5
)


# ---------------------------------------------------------------- the Socket.IO client


class SocketIOConn(hub.HubConn):
    """A Socket.IO v5 client on Engine.IO v4's WebSocket transport that joins one room.

    Written by hand (not python-socketio's client) so that all three servers face the same
    raw-asyncio driver; ``hello`` is the room to join."""

    TEXT_PING, TEXT_PONG = b"2", b"3"  # Engine.IO ping and pong, answered while draining too

    def __init__(self, owner: Any, port: int, hello: bytes, tag: int = 0) -> None:
        join = json.dumps(["join", hello.decode()]).encode()
        super().__init__(owner, port, b"40", tag)  # HubConn sends ``hello`` once upgraded
        self.join = b"421" + join  # event with ack id 1

    def request(self) -> bytes:
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: {hub.HOST}:{self.port}"
            f"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def text(self, payload: bytes, now: float) -> None:
        if payload == b"2":  # Engine.IO ping: answer, or the server drops us
            self.send(b"3")
        elif self.ready.done():
            if payload.startswith(b"42"):
                self.owner.message(self, payload, now)
        elif payload.startswith(b"40"):  # connected to the namespace: join the room
            self.send(self.join)
        elif payload.startswith(b"431"):  # the join's ack
            self.ready.set_result(None)
        elif payload.startswith((b"44", b"41")):
            self.ready.set_exception(RuntimeError(payload.decode()))
        # ``0{...}``: Engine.IO's open packet, nothing to do


def socketio_data(payload: bytes) -> Any:
    """``42["pub",DATA]`` -> DATA."""
    return json.loads(payload[2:])[1]


async def subscribers_client(args: argparse.Namespace) -> None:
    """A client process: ``--count`` subscribers; prints READY, then ROUND lines."""
    conn_class: type[hub.HubConn]
    if args.client == "socketio":
        swarm = hub.FanoutSwarm(args.count, socketio_data)
        hello, conn_class = CHANNEL.encode(), SocketIOConn
    else:
        swarm = hub.FanoutSwarm(args.count)
        hello, conn_class = hub.connect_command(args.token, CHANNEL), hub.HubConn
    started = time.monotonic()
    conns = await hub.open_conns(
        swarm, args.port, [hello] * args.count, args.addresses.split(","), conn_class=conn_class
    )
    hub.say(f"READY {len(conns)} {time.monotonic() - started:.3f}")
    done = asyncio.Event()
    hub.watch_stdin(asyncio.get_running_loop(), done)
    await done.wait()
    for conn in conns:
        if conn.transport is not None:
            conn.transport.abort()


# ------------------------------------------------------------------------- servers


def hub_settings(settings: Settings) -> "hub.Settings":
    return hub.Settings(pin=settings.pin)


def peer_command(name: str, settings: Settings) -> list[str] | str:
    """The command line of a peer server, or why it cannot run."""
    ping = ["--ping-interval", str(settings.ping_interval)] if settings.ping_interval else []
    if name == "python-socketio":
        try:
            import socketio  # type: ignore[import-untyped]  # noqa: F401
            import uvicorn  # noqa: F401
        except ImportError as exc:
            return f"python-socketio / uvicorn not installed ({exc}): pip install -e '.[dev]'"
        return [sys.executable, str(SERVERS / "socketio_hub.py"), "--port", "0", *ping]
    node = shutil.which("node")
    if node is None:
        return "node is not installed"
    if not (NODE_DIR / "node_modules" / "socket.io").exists():
        with contextlib.suppress(Exception):
            import run  # benchmarks/run.py: npm ci in benchmarks/node

            run.ensure_node_peers()
    if not (NODE_DIR / "node_modules" / "socket.io").exists():
        return "socket.io is not installed in benchmarks/node (npm ci there; needs npm)"
    return [node, str(SERVERS / "node_socketio_hub.js"), "--port", "0", *ping]


def start_peer(
    directory: Path, name: str, command: list[str], settings: Settings
) -> tuple[hub.Proc, int]:
    """Start a peer server; returns it and its port once it printed its listening line."""
    out, log = directory / f"{name}.out", directory / f"{name}.log"
    with open(out, "wb") as stdout, open(log, "wb") as stderr:
        popen = subprocess.Popen(
            hub.pinned(command, hub.SERVER_CORE, hub_settings(settings)),
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=stderr,
        )
    proc = hub.Proc(name, popen, log)
    deadline = time.monotonic() + 60
    while True:
        match = hub.LISTENING.search(out.read_text(errors="replace"))
        if match:
            return proc, int(match.group(1))
        if popen.poll() is not None or time.monotonic() > deadline:
            hub.stop(proc)
            raise RuntimeError(f"{name} did not start:\n{proc.tail()}")
        time.sleep(0.02)


def start_server(directory: Path, name: str, settings: Settings) -> tuple[hub.Proc, int] | str:
    """One of PEERS started, with its port; or why it cannot run."""
    if name == "pulsewire":
        return hub.start_node(directory, name, "memory", "bench", hub_settings(settings))
    command = peer_command(name, settings)
    if isinstance(command, str):
        return command
    return start_peer(directory, name, command, settings)


# ------------------------------------------------------------------------ measuring


def measure(
    settings: Settings, directory: Path, name: str, server: hub.Proc, port: int
) -> dict[str, Any]:
    """Fan-out rounds against one running server."""
    protocol = "pulsewire" if name == "pulsewire" else "socketio"
    shares = hub.client_shares(settings.subscribers, settings.client_procs)
    procs = len(shares)
    time.sleep(hub.IDLE_SETTLE)
    rss_before = hub.rss_bytes(server.pid)
    clients: list[hub.Proc] = []
    try:
        for i, (count, addresses) in enumerate(shares):
            args = [
                f"--port={port}",
                f"--count={count}",
                f"--addresses={','.join(addresses)}",
                f"--token={hub.make_token(f'sub-{i}')}",
            ]
            clients.append(spawn_client(protocol, args, settings, directory / f"{name}-{i}.log"))
        lines = hub.LineReader(clients)
        started = time.monotonic()
        ready = [lines.take(i, "READY", settings.timeout) for i in range(procs)]
        connect_seconds = time.monotonic() - started
        assert sum(int(r.split()[1]) for r in ready) == settings.subscribers
        time.sleep(hub.IDLE_SETTLE)
        rss_subscribed = hub.rss_bytes(server.pid)
        api = hub.ApiClient(port)
        client_pids = [c.pid for c in clients]
        load_before = hub.loadavg()
        window: hub.CpuWindow | None = None
        rounds: list[dict[str, float]] = []
        for number in range(1, settings.warmup_rounds + settings.rounds + 1):
            if number == settings.warmup_rounds + 1:
                window = hub.CpuWindow({"server": [server.pid], "clients": client_pids}, server.pid)
            cpu0 = hub.cpu_seconds(server.pid)
            driver0 = sum(hub.cpu_seconds(p) for p in client_pids)
            t0 = time.monotonic()
            api.post("publish", {"channel": CHANNEL, "data": {"round": number, "t0": t0}})
            deltas: list[float] = []
            for i in range(procs):
                deltas.extend(
                    json.loads(lines.take(i, f"ROUND {number} ", settings.timeout).split(" ", 2)[2])
                )
            wall = time.monotonic() - t0
            cpu1 = hub.cpu_seconds(server.pid)
            driver1 = sum(hub.cpu_seconds(p) for p in client_pids)
            if number > settings.warmup_rounds:
                deltas.sort()
                rounds.append(
                    {
                        "first_ms": deltas[0],
                        "last_ms": deltas[-1],
                        "server_cpu_ms": round((cpu1 - cpu0) * 1000, 1),
                        "driver_cpu_ms": round((driver1 - driver0) * 1000, 1),
                        "wall_ms": round(wall * 1000, 1),
                    }
                )
            time.sleep(settings.round_pause)
        assert window is not None
        cpu = window.stop()
        api.close()
    finally:
        for client in clients:
            with contextlib.suppress(OSError):
                if client.popen.stdin is not None:
                    client.popen.stdin.close()
        for client in clients:
            hub.stop(client)
    last = hub.summary([r["last_ms"] for r in rounds])
    # /proc counts CPU time in 10 ms steps, about one round's worth: totals over all rounds
    total = {
        key: sum(r[key] for r in rounds) for key in ("server_cpu_ms", "driver_cpu_ms", "wall_ms")
    }
    driver = round(100 * total["driver_cpu_ms"] / total["wall_ms"], 1)
    return {
        "status": "ok",
        "connect_subscribe_seconds": round(connect_seconds, 2),
        "first_receipt_ms": hub.summary([r["first_ms"] for r in rounds]),
        "last_receipt_ms": last,
        "deliveries_per_second": round(settings.subscribers / (last["p50"] / 1000)),
        "server_rss_mib_before": round(rss_before / 2**20, 1),
        "server_rss_mib_subscribed": round(rss_subscribed / 2**20, 1),
        "memory_per_connection_kib": round(
            (rss_subscribed - rss_before) / 1024 / settings.subscribers, 2
        ),
        "server_cpu_us_per_delivery": round(
            total["server_cpu_ms"] * 1000 / (settings.subscribers * len(rounds)), 2
        ),
        # the driver's CPU from publish until the last receipt (all its processes, one core)
        "driver_cpu_percent": driver,
        "driver_saturated": driver >= SATURATED_PERCENT,
        "per_round": rounds,
        "loadavg_before": load_before,
        "loadavg_after": hub.loadavg(),
        **cpu,
    }


def spawn_client(protocol: str, args: list[str], settings: Settings, log: Path) -> hub.Proc:
    return hub.spawn_client(protocol, args, hub_settings(settings), log, script=Path(__file__))


# Ratio pulsewire / peer of each headline figure (below 1 is better for all but deliveries/s).
RATIOS: dict[str, Callable[[dict[str, Any]], float]] = {
    "first_receipt_p50": lambda r: r["first_receipt_ms"]["p50"],
    "last_receipt_p50": lambda r: r["last_receipt_ms"]["p50"],
    "deliveries_per_second": lambda r: r["deliveries_per_second"],
    "memory_per_connection": lambda r: r["memory_per_connection_kib"],
    "server_cpu_per_delivery": lambda r: r["server_cpu_us_per_delivery"],
}


def ratios(servers: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    ours = servers.get("pulsewire", {})
    out: dict[str, dict[str, float | None]] = {}
    for name, result in servers.items():
        if name == "pulsewire" or result.get("status") != "ok" or ours.get("status") != "ok":
            continue
        out[name] = {}
        for key, figure in RATIOS.items():
            peer = figure(result)
            out[name][key] = round(figure(ours) / peer, 2) if peer else None
    return out


def run(settings: Settings, only: tuple[str, ...] = PEERS) -> dict[str, Any]:
    """Every server in ``only`` in turn; returns the results (nothing is written)."""
    started = time.time()
    servers: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="pw-hub-peers-") as tmp:
        for name in only:
            begun = start_server(Path(tmp), name, settings)
            if isinstance(begun, str):
                servers[name] = {"status": "missing", "reason": begun}
                continue
            server, port = begun
            with hub.stopping([server]):
                servers[name] = measure(settings, Path(tmp), name, server, port)
    results: dict[str, Any] = {
        "benchmark": "hub_peers",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "seconds": round(time.time() - started, 1),
        "settings": asdict(settings),
        "machine": hub.machine(),
        "versions": versions(),
        "servers": servers,
        "ratios_pulsewire_over_peer": ratios(servers),
    }
    busy = [n for n, s in servers.items() if s.get("other_cpu_percent", 0) > hub.BUSY_PERCENT]
    saturated = [n for n, s in servers.items() if s.get("driver_saturated")]
    warnings = []
    if busy:
        warnings.append(
            f"the machine was busy with other work while measuring {', '.join(busy)} "
            f"(other_cpu_percent > {hub.BUSY_PERCENT}): those numbers are pessimistic"
        )
    if saturated:
        warnings.append(
            f"the driver was saturated (>= {SATURATED_PERCENT} % CPU) against "
            f"{', '.join(saturated)}: their receipt times are the driver's limit"
        )
    if warnings:
        results["warnings"] = warnings
    return results


def versions() -> dict[str, str]:
    import importlib.metadata as metadata

    out: dict[str, str] = {}
    for dist in ("pulsewire", "python-socketio", "python-engineio", "uvicorn", "websockets"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    with contextlib.suppress(OSError, KeyError, ValueError):
        meta = json.loads((NODE_DIR / "node_modules" / "socket.io" / "package.json").read_text())
        out["node socket.io"] = meta["version"]
    node = shutil.which("node")
    if node:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            answer = subprocess.run([node, "--version"], capture_output=True, text=True, timeout=30)
            out["node"] = answer.stdout.strip().lstrip("v")
    return out


def markdown(results: dict[str, Any], command: str) -> str:
    """A short section: one row per server, ratios pulsewire / peer."""
    n = results["settings"]["subscribers"]
    lines = [
        f"### Fan-out to {n:,} subscribers: pulsewire and its peers",
        "",
        f"`{command}` ({results['date']}, {results['machine'].get('cpu_model', '?')}; server "
        "pinned to one core, the driver to the other). p50 over "
        f"{results['settings']['rounds']} rounds.",
        "",
        "| server | first receipt | last receipt | deliveries/s | KiB / connection "
        "| CPU µs / delivery | driver CPU | other CPU / loadavg |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["servers"].items():
        if r.get("status") != "ok":
            lines.append(f"| {name} | missing: {r.get('reason')} |||||||")
            continue
        lines.append(
            f"| {name} | {r['first_receipt_ms']['p50']:.1f} ms | {r['last_receipt_ms']['p50']:.1f}"
            f" ms | {r['deliveries_per_second']:,} | {r['memory_per_connection_kib']} "
            f"| {r['server_cpu_us_per_delivery']} | {r['driver_cpu_percent']} % "
            f"| {r['other_cpu_percent']} % / {r['loadavg_before']} |"
        )
    lines += [
        "",
        "Ratios pulsewire / peer (below 1 is better, except deliveries/s):",
        "",
        "| peer | " + " | ".join(RATIOS) + " |",
        "|---|" + "---|" * len(RATIOS),
    ]
    for name, part in results["ratios_pulsewire_over_peer"].items():
        lines.append(f"| {name} | " + " | ".join(str(part[k]) for k in RATIOS) + " |")
    lines += [f"\nNote: {w}." for w in results.get("warnings", [])]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ main


def client_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hub_peers.py --client PROTOCOL")
    parser.add_argument("--client", choices=["pulsewire", "socketio"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--addresses", required=True)
    args = parser.parse_args(argv)
    hub.run_loop(subscribers_client(args))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--client" in argv:
        return client_main(argv)
    defaults = Settings()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--smoke", action="store_true", help="100 subscribers, 2 rounds")
    parser.add_argument("--subscribers", type=int, default=defaults.subscribers)
    parser.add_argument("--client-procs", type=int, default=defaults.client_procs)
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument("--only", choices=PEERS, action="append", help="these servers only")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--out", type=Path, help="results file (default: benchmarks/results/)")
    args = parser.parse_args(argv)
    settings = (
        SMOKE
        if args.smoke
        else Settings(
            subscribers=args.subscribers, client_procs=args.client_procs, rounds=args.rounds
        )
    )
    settings = Settings(**{**asdict(settings), "pin": not args.no_pin})
    results = run(settings, tuple(args.only or PEERS))
    results["command"] = "benchmarks/hub_peers.py " + " ".join(argv)
    out = args.out or hub.RESULTS / ("hub_peers_smoke.json" if args.smoke else "hub_peers.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results, "benchmarks/hub_peers.py " + " ".join(argv)))
    print(f"written to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
