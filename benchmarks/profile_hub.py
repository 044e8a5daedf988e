#!/usr/bin/env python3
"""Where a pulsewire node's time goes while it fans out: py-spy samples of the server.

The same set-up as ``hub_peers.py`` (a ``pulsewire serve`` on the memory engine pinned to
core 0, N raw-WebSocket subscribers of one channel in client processes on core 1); once every
subscriber is ready, ``py-spy record --native`` samples the server for ``--seconds`` while the
driver publishes round after round (one publication, wait until every subscriber has it, a
short pause). Samples are grouped by the frame they were taken in (the leaf):

* ``write(2)``: libc's ``write``/``writev``/``send``: the kernel's TCP send. Over loopback
  the sender's core also runs the receiving side's TCP processing, so this is both ends'
  kernel work, which every server pays per delivery whatever its language;
* ``hub``: pulsewire/hub (the fan-out loop, sessions);
* ``transport, aio, protocol``: pulsewire's send path below the hub;
* ``event loop``: uvloop/libuv, asyncio;
* ``waiting (epoll)``: the loop's wait for events, not work;
* ``interpreter, other``.

    .venv/bin/python benchmarks/profile_hub.py                    # 5,000 subscribers, 10 s
    .venv/bin/python benchmarks/profile_hub.py --subscribers 10000 --seconds 20

Writes ``benchmarks/results/hub_profile.json`` (read by ``hub_report.py``) and prints a
table. Needs ``py-spy`` (in the dev extra) and the right to trace the server (root, or
``kernel.yama.ptrace_scope`` 0).
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:  # run as a script or loaded from a file by the tests
    sys.path.insert(0, str(BENCH))

import fanout_hub as hub  # noqa: E402
import hub_peers  # noqa: E402

WRITE_CALLS = ("write", "writev", "send", "sendmsg", "__libc_write", "__write", "__send")
WAIT_CALLS = ("epoll_wait", "epoll_pwait", "epoll_pwait2")
GROUPS = (
    "write(2)",
    "hub",
    "transport, aio, protocol",
    "event loop",
    "waiting (epoll)",
    "interpreter, other",
)


def group(leaf: str) -> str:
    """The group of a py-spy raw frame (``function (file:line)``, or ``function (lib.so)``)."""
    name, _, where = leaf.partition(" (")
    if name in WRITE_CALLS and "libc" in where:
        return "write(2)"
    if name in WAIT_CALLS:
        return "waiting (epoll)"
    if "pulsewire/hub/" in where:
        return "hub"
    if any(f"pulsewire/{part}/" in where for part in ("transports", "aio", "protocol")):
        return "transport, aio, protocol"
    if "loop.c" in where or "libuv" in where or "asyncio/" in where or "uvloop" in where:
        return "event loop"
    return "interpreter, other"


def summarize(raw: str, top: int = 15) -> dict[str, Any]:
    """Shares of the samples by :func:`group` (of all, and of the busy ones: not waiting) and
    the ``top`` leaf frames, from py-spy's ``--format raw`` output."""
    groups: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in raw.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        leaf = stack.split(";")[-1]
        groups[group(leaf)] += n
        leaves[leaf] += n
        total += n
    busy = total - groups["waiting (epoll)"]
    return {
        "samples": total,
        "busy_samples": busy,
        "percent_of_busy": {
            g: round(100 * groups[g] / busy, 1) if busy else 0.0
            for g in GROUPS
            if g != "waiting (epoll)"
        },
        "percent_waiting": round(100 * groups["waiting (epoll)"] / total, 1) if total else 0.0,
        "top_leaves": [
            {"frame": leaf, "percent_of_busy": round(100 * n / busy, 1) if busy else 0.0}
            for leaf, n in leaves.most_common(top)
            if group(leaf) != "waiting (epoll)"
        ],
    }


def find_py_spy() -> str | None:
    """py-spy on PATH or beside this interpreter (the project's .venv), else None."""
    beside = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(beside) if beside.exists() else None)


def profile(settings: hub_peers.Settings, seconds: float, rate: int) -> dict[str, Any]:
    """Start the node and its subscribers, sample the node while rounds run, summarize."""
    py_spy = find_py_spy()
    if py_spy is None:
        raise SystemExit("profile_hub.py: py-spy is not installed (pip install py-spy)")
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="pw-hub-profile-") as tmp:
        directory = Path(tmp)
        begun = hub_peers.start_server(directory, "pulsewire", settings)
        assert not isinstance(begun, str), begun
        server, port = begun
        with hub.stopping([server]):
            shares = hub.client_shares(settings.subscribers, settings.client_procs)
            clients = [
                hub_peers.spawn_client(
                    "pulsewire",
                    [
                        f"--port={port}",
                        f"--count={count}",
                        f"--addresses={','.join(addresses)}",
                        f"--token={hub.make_token(f'sub-{i}')}",
                    ],
                    settings,
                    directory / f"client-{i}.log",
                )
                for i, (count, addresses) in enumerate(shares)
            ]
            with hub.stopping(clients):
                lines = hub.LineReader(clients)
                for i in range(len(clients)):
                    lines.take(i, "READY", settings.timeout)
                out = directory / "raw.txt"
                sampler = subprocess.Popen(
                    [
                        *(py_spy, "record", "--native", "--format", "raw", "-o", str(out)),
                        *("-p", str(server.pid), "-d", str(int(seconds)), "-r", str(rate)),
                    ],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
                api = hub.ApiClient(port)
                cpu0 = hub.cpu_seconds(server.pid)
                rounds = 0
                while sampler.poll() is None:
                    rounds += 1
                    data = {"round": rounds, "t0": time.monotonic()}
                    api.post("publish", {"channel": hub_peers.CHANNEL, "data": data})
                    for i in range(len(clients)):
                        lines.take(i, f"ROUND {rounds} ", settings.timeout)
                    time.sleep(settings.round_pause)
                cpu = hub.cpu_seconds(server.pid) - cpu0
                api.close()
                _, errors = sampler.communicate()
                if sampler.returncode != 0 or not out.exists():
                    raise SystemExit(f"profile_hub.py: py-spy failed: {errors.decode()[-500:]}")
                summary = summarize(out.read_text())
    return {
        "benchmark": "hub_profile",
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "command": " ".join(["benchmarks/profile_hub.py", *sys.argv[1:]]),
        "settings": asdict(settings),
        "seconds": seconds,
        "rate_hz": rate,
        "rounds": rounds,
        "server_cpu_us_per_delivery": round(cpu * 1e6 / (rounds * settings.subscribers), 2),
        "machine": hub.machine(),
        "loadavg": hub.loadavg(),
        **summary,
    }


def markdown(result: dict[str, Any]) -> str:
    n = result["settings"]["subscribers"]
    lines = [
        f"Where the node's time goes fanning out to {n:,} subscribers "
        f"(`{result['command']}`, {result['date']}, {result['rounds']} rounds, "
        f"{result['busy_samples']} busy samples; "
        f"{result['server_cpu_us_per_delivery']} µs of CPU per delivery):",
        "",
        "| where | share of the busy samples |",
        "|---|---|",
    ]
    lines += [f"| {g} | {p} % |" for g, p in result["percent_of_busy"].items()]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--subscribers", type=int, default=5_000)
    parser.add_argument("--client-procs", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=10.0, help="sampling time")
    parser.add_argument("--rate", type=int, default=200, help="samples per second")
    parser.add_argument("--no-pin", action="store_true", help="do not pin with taskset")
    parser.add_argument("--out", type=Path, default=hub.RESULTS / "hub_profile.json")
    args = parser.parse_args(argv)
    if args.seconds < 1 or args.subscribers < 1:
        parser.error("--seconds and --subscribers must be at least 1")
    settings = replace(
        hub_peers.Settings(),
        subscribers=args.subscribers,
        client_procs=args.client_procs,
        pin=not args.no_pin,
    )
    result = profile(settings, args.seconds, args.rate)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(markdown(result))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
