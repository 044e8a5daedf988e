#!/usr/bin/env python3
"""Side-by-side WebSocket echo server benchmarks (see benchmarks/README.md).

Builds the C load generator and C echo server, makes sure the peers are installed, then for
every selected server and scenario: starts the server pinned to core 0, waits for its
``listening on ws://...`` line, runs ``build/loadgen`` pinned to core 1, and takes the median
of the repeats. Writes ``benchmarks/results/latest.json``, ``docs/benchmarks.md`` and
``docs/benchmarks.png`` (or everything into a temporary directory with ``--smoke``).

Standard library only, plus matplotlib for the chart.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import resource
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
BUILD = BENCH / "build"
SERVERS_DIR = BENCH / "servers"
NODE_DIR = BENCH / "node"
VENV = ROOT / ".venv"
VENV_PY = VENV / "bin" / "python"
LOADGEN = BUILD / "loadgen"
C_ECHO = BUILD / "c_echo"
HOST = "127.0.0.1"
SERVER_CORE, LOADGEN_CORE = "0", "1"
NODE_PACKAGES = ("ws", "socket.io")  # benchmarks/node/package.json
PYTHON_PEERS = ("websockets", "aiohttp", "picows", "uvloop", "matplotlib")
TIMES, MICRO = "\u00d7", "\u00b5"  # multiplication sign, micro sign


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Settings:
    duration: float = 5.0
    warmup: float = 1.0
    repeats: int = 3
    idle_conns: int = 5000
    idle_settle: float = 1.0  # seconds between the last handshake and reading VmRSS
    fanout_conns: int = 10000
    fanout_rounds: int = 20
    fanout_warmup_rounds: int = 2
    compression: bool = True
    smoke: bool = False
    # On a shared machine: before each run wait (at most quiet_wait s) until other processes
    # use less than QUIET_PERCENT of a core, and redo a run that was disturbed anyway.
    quiet_wait: float = 60.0
    noisy_retries: int = 1
    nice: int = 0  # scheduling priority of servers and loadgen (negative needs root)


QUIET_PERCENT = 15.0

SMOKE = Settings(
    duration=0.5,
    warmup=0.2,
    repeats=1,
    idle_conns=200,
    idle_settle=0.3,
    fanout_conns=200,
    fanout_rounds=5,
    fanout_warmup_rounds=1,
    smoke=True,
    quiet_wait=0.0,
    noisy_retries=0,
)


OURS = ("pulsewire", "pulsewire-callbacks")  # our rows: idiomatic asyncio API, callback API


@dataclass(frozen=True)
class ServerSpec:
    name: str
    label: str
    short: str  # for the chart
    command: tuple[str, ...]  # --host/--port (and --no-compression) are appended
    note: str = ""


def server_specs() -> dict[str, ServerSpec]:
    py, node = str(VENV_PY), shutil.which("node") or "node"

    def script(name: str) -> str:
        return str(SERVERS_DIR / name)

    specs = [
        ServerSpec("pulsewire", "pulsewire", "pulsewire", (py, script("pulsewire_echo.py"))),
        ServerSpec(
            "pulsewire-callbacks",
            "pulsewire (callback API)",
            "pulsewire callbacks",
            (py, script("pulsewire_callbacks_echo.py")),
        ),
        ServerSpec("websockets", "websockets", "websockets", (py, script("websockets_echo.py"))),
        ServerSpec("aiohttp", "aiohttp", "aiohttp", (py, script("aiohttp_echo.py"))),
        ServerSpec(
            "picows",
            "picows (core API)",
            "picows core",
            (py, script("picows_echo.py")),
            "no permessage-deflate",
        ),
        ServerSpec(
            "picows-websockets",
            "picows (websockets API)",
            "picows websockets-API",
            (py, script("picows_websockets_echo.py")),
        ),
        ServerSpec("node-ws", "Node ws + bufferutil", "node ws", (node, script("node_ws_echo.js"))),
        ServerSpec(
            "c-echo",
            "C epoll echo (ceiling)",
            "C echo (ceiling)",
            (str(C_ECHO),),
            "no permessage-deflate",
        ),
    ]
    return {s.name: s for s in specs}


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str  # the column header in docs/benchmarks.md
    mode: str  # loadgen --mode
    args: tuple[str, ...]
    metrics: tuple[str, ...]  # medians over the repeats are taken of these
    primary: str  # the metric used for ratios and the chart
    unit: str
    higher_is_better: bool


SCENARIOS: tuple[Scenario, ...] = (
    Scenario(
        "tp_1x100_32",
        f"1 conn {TIMES} 100 in flight, 32 B",
        "throughput",
        ("--conns", "1", "--inflight", "100", "--size", "32", "--text"),
        ("msg_per_s", "mb_per_s"),
        "msg_per_s",
        "msg/s",
        True,
    ),
    Scenario(
        "tp_50x10_32",
        f"50 conns {TIMES} 10 in flight, 32 B",
        "throughput",
        ("--conns", "50", "--inflight", "10", "--size", "32", "--text"),
        ("msg_per_s", "mb_per_s"),
        "msg_per_s",
        "msg/s",
        True,
    ),
    Scenario(
        "tp_10x4_64k",
        f"10 conns {TIMES} 4, 64 KiB",
        "throughput",
        ("--conns", "10", "--inflight", "4", "--size", "65536", "--binary"),
        ("gb_per_s", "msg_per_s"),
        "gb_per_s",
        "GB/s",
        True,
    ),
    Scenario(
        "latency",
        "latency p50/p99",
        "latency",
        ("--size", "32"),
        ("p50_us", "p99_us", "p999_us"),
        "p50_us",
        f"{MICRO}s",
        False,
    ),
    Scenario(
        "handshakes",
        "handshakes/s",
        "handshakes",
        ("--concurrency", "32"),
        ("handshakes_per_s",),
        "handshakes_per_s",
        "handshakes/s",
        True,
    ),
    Scenario(
        "deflate",
        "deflate 1 KiB",
        "deflate",
        ("--conns", "10", "--inflight", "10", "--size", "1024"),
        ("msg_per_s", "mb_per_s"),
        "msg_per_s",
        "msg/s",
        True,
    ),
    Scenario(
        "fanout",
        "fan-out 10k (p50/p99)",
        "fanout",
        ("--size", "32"),
        ("p50_ms", "p99_ms"),
        "p50_ms",
        "ms",
        False,
    ),
    Scenario(
        "idle",
        "idle memory per connection",
        "idle",
        (),
        ("bytes_per_conn",),
        "bytes_per_conn",
        "bytes",
        False,
    ),
)
SCENARIO_BY_KEY = {s.key: s for s in SCENARIOS}


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- setup


def build_c() -> None:
    """Compile loadgen and c_echo with gcc -O2 when their sources are newer than the binaries."""
    BUILD.mkdir(parents=True, exist_ok=True)
    header = BENCH / "loadgen" / "ws_util.h"
    targets = [
        (LOADGEN, BENCH / "loadgen" / "loadgen.c", ["-lz", "-lm"]),
        (C_ECHO, SERVERS_DIR / "c_echo.c", []),
    ]
    for binary, source, libs in targets:
        newest = max(source.stat().st_mtime, header.stat().st_mtime)
        if binary.exists() and binary.stat().st_mtime >= newest:
            continue
        cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(binary), str(source), *libs]
        log(" ".join(cmd))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            hint = ""
            if "zlib.h" in proc.stderr:
                hint = "\nzlib headers missing: apt-get update && apt-get install -y zlib1g-dev"
            raise SystemExit(f"building {binary.name} failed:\n{proc.stderr}{hint}")


def ensure_python_peers() -> None:
    """Create .venv if needed and pip install the Python peers that are missing from it."""
    if not VENV_PY.exists():
        log(f"creating {VENV}")
        subprocess.run(["python3.11", "-m", "venv", str(VENV)], check=True, timeout=300)
    check = "import " + ", ".join(PYTHON_PEERS)
    if subprocess.run([str(VENV_PY), "-c", check], capture_output=True, timeout=60).returncode:
        log(f"installing {' '.join(PYTHON_PEERS)} into {VENV}")
        pip = [str(VENV / "bin" / "pip"), "install", "-q", *PYTHON_PEERS]
        subprocess.run(pip, check=True, timeout=900)


def ensure_node_peers() -> None:
    """npm install benchmarks/node's packages (ws, bufferutil, socket.io; node_modules is
    gitignored) unless they are there."""
    installed = all((NODE_DIR / "node_modules" / p).exists() for p in NODE_PACKAGES)
    if installed or not shutil.which("npm"):
        return
    log("npm install in benchmarks/node")
    cmd = ["npm", "ci" if (NODE_DIR / "package-lock.json").exists() else "install"]
    subprocess.run([*cmd, "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True, timeout=600)


def library_versions() -> dict[str, str]:
    names = [*PYTHON_PEERS, "pulsewire"]
    code = (
        "import json, importlib.metadata as m\n"
        "def v(n):\n"
        "    try:\n        return m.version(n)\n"
        "    except m.PackageNotFoundError:\n        return 'not installed'\n"
        f"print(json.dumps({{n: v(n) for n in {names!r}}}))"
    )
    versions: dict[str, str] = {}
    with contextlib.suppress(Exception):
        out = subprocess.run([str(VENV_PY), "-c", code], capture_output=True, text=True, timeout=60)
        versions.update(json.loads(out.stdout))
        py = subprocess.run([str(VENV_PY), "--version"], capture_output=True, text=True, timeout=30)
        versions["python"] = py.stdout.split()[-1]
    for pkg in ("ws", "bufferutil"):
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((NODE_DIR / "node_modules" / pkg / "package.json").read_text())
            versions[f"node {pkg}"] = meta["version"]
    with contextlib.suppress(Exception):
        node = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=30)
        versions["node"] = node.stdout.strip().lstrip("v")
    with contextlib.suppress(Exception):
        versions["pulsewire git"] = pulsewire_revision()
    with contextlib.suppress(Exception):
        gcc = subprocess.run(
            ["gcc", "-dumpfullversion"], capture_output=True, text=True, timeout=30
        )
        versions["gcc"] = gcc.stdout.strip()
    return versions


def pulsewire_revision() -> str:
    """The commit the pulsewire sources are at, and whether src/ has uncommitted changes."""
    git = ["git", "-C", str(ROOT)]
    head = subprocess.run(
        [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=30
    )
    dirty = subprocess.run(
        [*git, "status", "--porcelain", "--", "src"], capture_output=True, text=True, timeout=30
    )
    rev = head.stdout.strip() or "no commit"
    return rev + (" + uncommitted changes" if dirty.stdout.strip() else "")


def machine_info() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem_kib = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        mem_kib = int(Path("/proc/meminfo").read_text().split("\n")[0].split()[1])
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "kernel": platform.release(),
        "memory_gib": round(mem_kib / 2**20, 1),
    }


def loadavg() -> float:
    with contextlib.suppress(OSError, ValueError):
        return float(Path("/proc/loadavg").read_text().split()[0])
    return float("nan")


# --------------------------------------------------------------------------- processes


class ServerStartError(Exception):
    """The server exited or never printed its ready line."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def pinned(core: str, cmd: list[str]) -> list[str]:
    """Prefix with taskset (which execs, so the PID stays the program's own)."""
    return ["taskset", "-c", core, *cmd] if shutil.which("taskset") else cmd


def child_setup(nice: int) -> Callable[[], None]:
    """What a server or loadgen process does before exec: as many sockets as the hard limit
    permits, and the requested scheduling priority.

    Children are started in a session of their own; with the kernel's autogroup scheduling
    (sched_autogroup_enabled) a process's nice value only counts inside its session's group,
    so the group's nice (/proc/self/autogroup) is set as well.
    """

    def setup() -> None:
        _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        if nice:
            os.setpriority(os.PRIO_PROCESS, 0, nice)
            with contextlib.suppress(OSError), open("/proc/self/autogroup", "w") as f:
                f.write(str(nice))

    return setup


@dataclass
class RunningServer:
    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def alive(self) -> bool:
        return self.proc.poll() is None

    def log_tail(self, lines: int = 12) -> str:
        with contextlib.suppress(OSError):
            text = self.log_path.read_text(errors="replace").strip().splitlines()
            return "\n".join(text[-lines:])
        return ""


def start_server(spec: ServerSpec, settings: Settings, logdir: Path) -> RunningServer:
    port = free_port()
    cmd = [*spec.command, "--host", HOST, "--port", str(port)]
    if not settings.compression:
        cmd.append("--no-compression")
    log_path = logdir / f"{spec.name}-{port}.log"
    with log_path.open("wb") as out:  # stdout and stderr both; the child keeps its own handle
        proc = subprocess.Popen(
            pinned(SERVER_CORE, cmd),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=SERVERS_DIR,
            preexec_fn=child_setup(settings.nice),
            start_new_session=True,  # its own process group, so stop_server can end all of it
        )
    server = RunningServer(spec, proc, port, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if "listening on ws://" in log_path.read_text(errors="replace"):
            return server
        if not server.alive():
            tail = server.log_tail()
            raise ServerStartError(f"exited with code {proc.returncode}: {tail or '(no output)'}")
        time.sleep(0.02)
    stop_server(server)
    raise ServerStartError(f"no ready line within 30 s: {server.log_tail() or '(no output)'}")


def stop_server(server: RunningServer) -> None:
    """SIGTERM the server's process group, SIGKILL it if it is still there after 3 s."""
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        if server.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.proc.wait(timeout=wait)


@contextlib.contextmanager
def running(spec: ServerSpec, settings: Settings, logdir: Path) -> Iterator[RunningServer]:
    server = start_server(spec, settings, logdir)
    try:
        yield server
    finally:
        stop_server(server)


def proc_rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def proc_wait_seconds(pid: int) -> float:
    """Time a process spent runnable but waiting for a CPU (/proc/PID/schedstat, 2nd field)."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    return float("nan")


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) from /proc/PID/stat."""
    with contextlib.suppress(OSError, IndexError, ValueError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return float("nan")


# --------------------------------------------------------------------------- load generator


def loadgen_cmd(scenario: Scenario, settings: Settings, port: int, *extra: str) -> list[str]:
    cmd = [str(LOADGEN), "--mode", scenario.mode, "--host", HOST, "--port", str(port)]
    cmd += ["--duration", str(settings.duration), "--warmup", str(settings.warmup)]
    cmd += [*scenario.args, *extra]
    if scenario.mode == "fanout":
        cmd += ["--conns", str(settings.fanout_conns), "--rounds", str(settings.fanout_rounds)]
        cmd += ["--warmup-rounds", str(settings.fanout_warmup_rounds)]
    return pinned(LOADGEN_CORE, cmd)


def loadgen_timeout(scenario: Scenario, settings: Settings) -> float:
    if scenario.mode == "fanout":
        rounds = settings.fanout_rounds + settings.fanout_warmup_rounds
        return 60 + settings.fanout_conns / 200 + rounds * 12
    if scenario.mode == "idle":
        return 60 + settings.idle_conns / 200
    return 60 + settings.warmup + settings.duration


def parse_loadgen_output(stdout: str, stderr: str, returncode: int) -> dict[str, Any]:
    lines = [ln for ln in stdout.strip().splitlines() if ln.startswith("{")]
    if returncode != 0 or not lines:
        raise RuntimeError(f"loadgen exited {returncode}: {stderr.strip()[-500:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def proc_stat() -> dict[str, list[int]]:
    """The cpu lines of /proc/stat (jiffies): {"cpu": [...], "cpu0": [...], ...}."""
    lines = Path("/proc/stat").read_text().splitlines()
    return {ln.split()[0]: [int(x) for x in ln.split()[1:]] for ln in lines if ln.startswith("cpu")}


def stat_delta(a: dict[str, list[int]], b: dict[str, list[int]], cpu: str, wall: float) -> float:
    """Percent of one core that `cpu` was busy (anything but idle and iowait) between a and b."""
    if cpu not in a or cpu not in b or wall <= 0:
        return float("nan")
    d = [y - x for x, y in zip(a[cpu], b[cpu], strict=False)]
    return 100 * (sum(d[:8]) - d[3] - d[4]) / os.sysconf("SC_CLK_TCK") / wall


def process_cpu_seconds(a: dict[str, list[int]], b: dict[str, list[int]]) -> float:
    """CPU time all processes used (user, nice, system, steal), without irq/softirq time, which
    this kernel does not charge to processes (loopback TCP does much of its work in softirq)."""
    d = [y - x for x, y in zip(a["cpu"], b["cpu"], strict=False)]
    return (d[0] + d[1] + d[2] + d[7]) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_loadgen(scenario: Scenario, settings: Settings, server: RunningServer) -> dict[str, Any]:
    """One measured loadgen run against a running server.

    Besides loadgen's JSON (with its own and the server's CPU use over the measured window),
    records how busy each core was (kernel softirq work included) and ``other_cpu_percent``:
    CPU time used by processes other than these two, to flag runs disturbed by other work.
    """
    cmd = loadgen_cmd(scenario, settings, server.port, "--server-pid", str(server.proc.pid))
    stat0, srv0, kids0 = proc_stat(), proc_cpu_seconds(server.proc.pid), children_cpu_seconds()
    wait0 = proc_wait_seconds(server.proc.pid)
    t0 = time.monotonic()
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=loadgen_timeout(scenario, settings),
        preexec_fn=child_setup(settings.nice),
        start_new_session=True,
    )
    wall = time.monotonic() - t0
    stat1, srv1, kids1 = proc_stat(), proc_cpu_seconds(server.proc.pid), children_cpu_seconds()
    wait1 = proc_wait_seconds(server.proc.pid)
    result = parse_loadgen_output(proc.stdout, proc.stderr, proc.returncode)
    other = process_cpu_seconds(stat0, stat1) - (srv1 - srv0) - (kids1 - kids0)
    result["other_cpu_percent"] = round(max(0.0, 100 * other / wall), 1)
    # The share of the run the server was ready to run but had no CPU: interference.
    result["server_wait_percent"] = round(100 * (wait1 - wait0) / wall, 1)
    result["server_core_busy_percent"] = round(
        stat_delta(stat0, stat1, f"cpu{SERVER_CORE}", wall), 1
    )
    result["loadgen_core_busy_percent"] = round(
        stat_delta(stat0, stat1, f"cpu{LOADGEN_CORE}", wall), 1
    )
    if result.get("mb_per_s") is not None:
        result["gb_per_s"] = result["mb_per_s"] / 1000
    return result


def read_line_with_timeout(stream: Any, timeout: float) -> str:
    """One line from a pipe without blocking forever (raw reads, the pipe is ours alone)."""
    fd, buf, deadline = stream.fileno(), b"", time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            raise TimeoutError("loadgen did not report READY in time")
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")


def run_idle(scenario: Scenario, settings: Settings, server: RunningServer) -> dict[str, Any]:
    """Server RSS before and while holding N idle connections; bytes per connection."""
    # Warm-up: a few connections open and close first, so that lazy imports and first-use
    # allocations in the server are not charged to the idle connections.
    warm = loadgen_cmd(scenario, settings, server.port, "--conns", "20", "--hold", "0")
    subprocess.run(warm, capture_output=True, timeout=60)
    time.sleep(0.2)
    before = proc_rss_bytes(server.proc.pid)
    cmd = loadgen_cmd(
        scenario, settings, server.port, "--conns", str(settings.idle_conns), "--hold", "120"
    )
    proc = subprocess.Popen(
        cmd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=child_setup(settings.nice),
        start_new_session=True,
    )
    try:
        ready = read_line_with_timeout(proc.stderr, loadgen_timeout(scenario, settings))
        time.sleep(settings.idle_settle)
        after = proc_rss_bytes(server.proc.pid)
        # communicate() closes stdin, which tells loadgen to close its connections and report
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    result = parse_loadgen_output(stdout.decode(), ready + stderr.decode(), proc.returncode)
    opened = int(result.get("opened") or 0)
    result.update(rss_before=before, rss_after=after)
    result["bytes_per_conn"] = (after - before) / opened if opened else None
    return result


# --------------------------------------------------------------------------- orchestration


@dataclass
class ScenarioResult:
    ok: bool = False
    values: dict[str, float] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "values": self.values, "error": self.error, "runs": self.runs}


def summarize(scenario: Scenario, runs: list[dict[str, Any]]) -> ScenarioResult:
    """Median of each metric over the successful runs."""
    good = [r for r in runs if r.get("ok") and r.get(scenario.primary) is not None]
    res = ScenarioResult(runs=runs)
    if not good:
        errors = [r.get("first_error") or r.get("error") or "no result" for r in runs]
        res.error = "; ".join(dict.fromkeys(str(e) for e in errors))
        return res
    res.ok = True
    extra = (
        "loadgen_cpu_percent",
        "server_cpu_percent",
        "server_core_busy_percent",
        "loadgen_core_busy_percent",
        "other_cpu_percent",
        "server_wait_percent",
    )
    for metric in (*scenario.metrics, *extra):
        vals = [float(r[metric]) for r in good if r.get(metric) is not None]
        if vals:
            res.values[metric] = statistics.median(vals)
    if len(good) < len(runs):
        res.error = f"{len(runs) - len(good)} of {len(runs)} runs failed"
    return res


def one_run(scenario: Scenario, settings: Settings, server: RunningServer) -> dict[str, Any]:
    try:
        if scenario.mode == "idle":
            return run_idle(scenario, settings, server)
        return run_loadgen(scenario, settings, server)
    except (RuntimeError, TimeoutError, subprocess.TimeoutExpired, OSError, ValueError) as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {exc}"}


def other_load_percent(exclude_pid: int | None, sample: float = 1.0) -> float:
    """CPU used by processes (not softirq) over `sample` seconds, less the server's own."""
    a, srv0 = proc_stat(), proc_cpu_seconds(exclude_pid) if exclude_pid else 0.0
    time.sleep(sample)
    b, srv1 = proc_stat(), proc_cpu_seconds(exclude_pid) if exclude_pid else 0.0
    return 100 * (process_cpu_seconds(a, b) - (srv1 - srv0)) / sample


def wait_until_quiet(settings: Settings, server_pid: int | None) -> None:
    """Wait, up to settings.quiet_wait seconds, until other processes leave the cores alone."""
    deadline = time.monotonic() + settings.quiet_wait
    waited = False
    while time.monotonic() < deadline:
        if other_load_percent(server_pid) < QUIET_PERCENT:
            break
        if not waited:
            log(f"waiting for other processes to quiet down (at most {settings.quiet_wait:.0f} s)")
            waited = True


def measured_run(scenario: Scenario, settings: Settings, server: RunningServer) -> dict[str, Any]:
    """one_run, after waiting for a quiet machine; redone if other processes disturbed it."""
    result: dict[str, Any] = {}
    for attempt in range(1 + settings.noisy_retries):
        if settings.quiet_wait > 0:
            wait_until_quiet(settings, server.proc.pid)
        result = one_run(scenario, settings, server)
        noise = result.get("other_cpu_percent", 0.0)
        if noise < 2 * QUIET_PERCENT or attempt == settings.noisy_retries:
            break
        log(f"{scenario.key}: other processes used {noise:.0f}% of a core meanwhile; again")
    return result


class ServerSession:
    """Keeps one server process for the non-idle scenarios; restarts it if it died."""

    def __init__(self, spec: ServerSpec, settings: Settings, logdir: Path) -> None:
        self.spec, self.settings, self.logdir = spec, settings, logdir
        self.server: RunningServer | None = None

    def get(self) -> RunningServer:
        if self.server is None or not self.server.alive():
            self.server = start_server(self.spec, self.settings, self.logdir)
        return self.server

    def close(self) -> None:
        if self.server is not None:
            stop_server(self.server)
            self.server = None


def bench_server(
    spec: ServerSpec, scenarios: list[Scenario], settings: Settings, logdir: Path
) -> dict[str, Any]:
    """All scenarios for one server, on one server process (restarted if it dies)."""
    entry: dict[str, Any] = {
        "label": spec.label,
        "short": spec.short,
        "note": spec.note,
        "status": "ok",
        "results": {},
    }
    session = ServerSession(spec, settings, logdir)
    try:
        for scenario in scenarios:
            try:
                runs = run_repeats(scenario, settings, session)
            except ServerStartError as exc:
                if not entry["results"]:  # it never started: the server is missing
                    entry.update(status="missing", reason=str(exc))
                    log(f"{spec.name}: failed to start: {exc}")
                    break
                runs = [{"ok": False, "error": f"server failed to restart: {exc}"}]
            result = summarize(scenario, runs).as_dict()
            entry["results"][scenario.key] = result
            log(f"{spec.name:18} {scenario.key:12} {format_cell(scenario, result)}")
    finally:
        session.close()
    return entry


def run_repeats(
    scenario: Scenario, settings: Settings, session: ServerSession
) -> list[dict[str, Any]]:
    """The repeats of one scenario. Idle memory gets a fresh server process for each."""
    runs: list[dict[str, Any]] = []
    for _ in range(settings.repeats):
        if scenario.mode == "idle":
            session.close()
            with running(session.spec, settings, session.logdir) as server:
                runs.append(measured_run(scenario, settings, server))
            continue
        server = session.get()
        runs.append(measured_run(scenario, settings, server))
        if not server.alive():
            runs[-1] = {"ok": False, "error": f"server died: {server.log_tail(4)}"}
    return runs


def run_benchmarks(
    server_names: list[str],
    scenario_keys: list[str],
    settings: Settings,
    setup: bool = True,
) -> dict[str, Any]:
    build_c()
    if setup:
        ensure_python_peers()
        ensure_node_peers()
    specs = server_specs()
    scenarios = [SCENARIO_BY_KEY[k] for k in scenario_keys]
    started = time.monotonic()
    results: dict[str, Any] = {
        "meta": {
            "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "machine": machine_info(),
            "versions": library_versions(),
            "settings": settings.__dict__,
            "pinning": {"server_core": SERVER_CORE, "loadgen_core": LOADGEN_CORE},
            "loadavg_before": loadavg(),
        },
        "scenarios": [s.__dict__ for s in scenarios],
        "servers": {},
    }
    with tempfile.TemporaryDirectory(prefix="pulsewire-bench-logs-") as logdir:
        for name in server_names:
            results["servers"][name] = bench_server(specs[name], scenarios, settings, Path(logdir))
    results["meta"]["loadavg_after"] = loadavg()
    results["meta"]["runtime_s"] = round(time.monotonic() - started, 1)
    return results


# --------------------------------------------------------------------------- report


def fmt_rate(v: float, unit: str) -> str:
    if v >= 1e6:
        return f"{v / 1e6:.2f}M {unit}"
    if v >= 1e4:
        return f"{v / 1e3:.0f}k {unit}"
    if v >= 1e3:
        return f"{v / 1e3:.1f}k {unit}"
    return f"{v:.0f} {unit}"


def format_cell(scenario: Scenario, result: dict[str, Any] | None) -> str:
    if not result:
        return "-"
    if not result.get("ok"):
        return "n/a" if "did not negotiate" in result.get("error", "") else "failed"
    v = result["values"]
    if scenario.key == "tp_10x4_64k":
        return f"{v['gb_per_s']:.2f} GB/s"
    if scenario.mode == "latency":
        return f"{v['p50_us']:.0f} / {v['p99_us']:.0f} {MICRO}s"
    if scenario.mode == "fanout":
        return f"{v['p50_ms']:.1f} / {v['p99_ms']:.1f} ms"
    if scenario.mode == "idle":
        return f"{v['bytes_per_conn'] / 1024:.1f} KiB"
    if scenario.mode == "handshakes":
        return f"{v['handshakes_per_s']:,.0f}/s"
    return fmt_rate(v["msg_per_s"], "msg/s")


def ratio_cell(scenario: Scenario, mine: dict[str, Any] | None, peer: dict[str, Any] | None) -> str:
    if not (mine and peer and mine.get("ok") and peer.get("ok")):
        return "-"
    a, b = mine["values"], peer["values"]
    keys = {"latency": ("p50_us", "p99_us"), "fanout": ("p50_ms", "p99_ms")}.get(scenario.mode)
    if keys:
        return " / ".join(f"{a[k] / b[k]:.2f}" if b.get(k) else "-" for k in keys)
    p = scenario.primary
    return f"{a[p] / b[p]:.2f}" if b.get(p) else "-"


def md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def scenarios_of(results: dict[str, Any]) -> list[Scenario]:
    return [SCENARIO_BY_KEY[s["key"]] for s in results["scenarios"]]


def results_table(results: dict[str, Any]) -> list[str]:
    scenarios = scenarios_of(results)
    rows = []
    for name, entry in results["servers"].items():
        label = f"**{entry['label']}**" if name in OURS else entry["label"]
        if entry["status"] != "ok":
            rows.append([label] + ["missing"] * len(scenarios))
            continue
        rows.append([label] + [format_cell(s, entry["results"].get(s.key)) for s in scenarios])
    return md_table(["echo server"] + [s.title for s in scenarios], rows)


def ratio_table(results: dict[str, Any]) -> list[str]:
    """One row per (pulsewire API, peer): the idiomatic asyncio API, then the callback API."""
    scenarios = scenarios_of(results)
    mine = results["servers"].get("pulsewire")
    if not mine or mine["status"] != "ok":
        reason = (mine or {}).get("reason", "not selected")
        return [f"pulsewire did not run, so there are no ratios: {reason}"]
    rows = []
    for ours in OURS:
        own = results["servers"].get(ours)
        if not own or own["status"] != "ok":
            continue
        for name, entry in results["servers"].items():
            if name in OURS or entry["status"] != "ok":
                continue
            cells = [
                ratio_cell(s, own["results"].get(s.key), entry["results"].get(s.key))
                for s in scenarios
            ]
            rows.append([f"{own['label']} / {entry['label']}", *cells])
    return md_table(["ratio"] + [s.title for s in scenarios], rows)


CPU_COLUMNS = (
    "loadgen_cpu_percent",
    "server_cpu_percent",
    "loadgen_core_busy_percent",
    "server_core_busy_percent",
    "other_cpu_percent",
)


def cpu_table(results: dict[str, Any]) -> list[str]:
    scenarios = [s for s in scenarios_of(results) if s.mode != "idle"]
    rows = []
    for entry in results["servers"].values():
        if entry["status"] != "ok":
            continue
        cells = []
        for s in scenarios:
            v = (entry["results"].get(s.key) or {}).get("values", {})
            nums = [v.get(k) for k in CPU_COLUMNS]
            cells.append(" / ".join("-" if n is None else f"{n:.0f}" for n in nums))
        rows.append([entry["label"], *cells])
    return md_table(["CPU %"] + [s.title for s in scenarios], rows)


def median_server_wait(results: dict[str, Any]) -> float:
    """Median share of a run that the server was runnable but had no CPU."""
    values = [
        res["values"]["server_wait_percent"]
        for entry in results["servers"].values()
        if entry["status"] == "ok"
        for res in entry["results"].values()
        if "server_wait_percent" in res.get("values", {})
    ]
    return statistics.median(values) if values else float("nan")


def busiest_other_cpu(results: dict[str, Any]) -> float:
    """The largest median CPU use by the rest of the machine in any cell (percent of a core)."""
    values = [
        res["values"].get("other_cpu_percent", 0.0)
        for entry in results["servers"].values()
        if entry["status"] == "ok"
        for res in entry["results"].values()
    ]
    return max(values, default=0.0)


def problems(results: dict[str, Any]) -> list[str]:
    out = []
    for entry in results["servers"].values():
        if entry["status"] != "ok":
            reason = " ".join(entry.get("reason", "").split())[:400]
            out.append(f"- **{entry['label']}** is missing: failed to start: `{reason}`")
            continue
        for key, res in entry["results"].items():
            if res.get("error"):
                err = " ".join(res["error"].split())[:300]
                out.append(f"- {entry['label']}, {SCENARIO_BY_KEY[key].title}: {err}")
    return out


def render_markdown(results: dict[str, Any], chart_name: str | None) -> str:
    meta, machine, st = results["meta"], results["meta"]["machine"], results["meta"]["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in meta["versions"].items())
    busy = busiest_other_cpu(results) > 30 or meta["loadavg_before"] > 1.0
    lines = [
        "# Benchmarks",
        "",
        "Echo servers measured side by side on one machine by `benchmarks/run.py` "
        "(`make bench`). The numbers are made on this machine; compare rows, not absolute values.",
        "",
        f"- date: {meta['date']}"
        + ("  (smoke run: tiny counts, not real numbers)" if st["smoke"] else ""),
        f"- machine: {machine['cpu_model']}, {machine['cores']} cores, "
        f"{machine['memory_gib']} GiB, Linux {machine['kernel']}",
        f"- server pinned to core {meta['pinning']['server_core']}, load generator (C, epoll, "
        f"one thread) to core {meta['pinning']['loadgen_core']}; loopback only"
        + (f"; both at nice {st['nice']}" if st.get("nice") else ""),
        f"- each cell is the median of {st['repeats']} runs of {st['duration']} s after "
        f"{st['warmup']} s of warm-up; idle memory holds {st['idle_conns']:,} connections, "
        f"fan-out uses {st['fanout_conns']:,} connections and {st['fanout_rounds']} rounds",
        f"- load average before/after: {meta['loadavg_before']:.2f} / "
        f"{meta.get('loadavg_after', float('nan')):.2f}; most CPU used by other processes "
        f"during a cell: {busiest_other_cpu(results):.0f}% of a core; the server waited for "
        f"a CPU {median_server_wait(results):.0f}% of the time (median over the cells)"
        + ("  **(the machine was busy: treat these numbers with care)**" if busy else ""),
        f"- versions: {versions}",
        "",
        "## Results",
        "",
        *results_table(results),
        "",
        "Throughput columns are echoed messages per second (64 KiB: payload GB/s received). "
        f"Latency is the round trip of one 32 B message ({MICRO}s, p50 / p99). Handshakes are "
        "full cycles (TCP connect, upgrade, close handshake, TCP close) with 32 in progress. "
        "Deflate sends 1 KiB JSON-like text with permessage-deflate, 10 conns "
        f"{TIMES} 10 in flight. Fan-out is the time from the trigger message until the last "
        "connection has received the broadcast (p50 / p99 over the rounds). Idle memory is the "
        "growth of the server's VmRSS divided by the connections held (KiB = 1024 bytes).",
        "",
        "## pulsewire relative to each peer",
        "",
        *ratio_table(results),
        "",
        "Each cell is pulsewire's value divided by the peer's. Above 1 is better for the "
        "throughput, handshake and deflate columns; below 1 is better for latency, fan-out and "
        "memory.",
        "",
    ]
    if chart_name:
        lines += [f"![benchmark chart]({chart_name})", ""]
    lines += [
        "## CPU use",
        "",
        "Each cell: loadgen process / server process / loadgen core / server core / other "
        "processes, in % of one core. The process figures (getrusage, /proc/PID/stat) are over "
        "the measured window and leave out the kernel's softirq time, where loopback TCP does "
        "much of its work; the core figures (/proc/stat, over the whole loadgen run, connecting "
        "and warm-up included) count it. A server core near 100% with the load generator's core "
        "below it means the server side is the bottleneck, as intended; 'other' is CPU used by "
        "unrelated processes meanwhile, which should be near 0.",
        "",
        *cpu_table(results),
        "",
    ]
    notes = problems(results)
    if notes:
        lines += ["## Missing servers and failed runs", "", *notes, ""]
    lines += [
        "## Method",
        "",
        "- Every server echoes on `/` and broadcasts on `/fanout` + `/trigger`, using the "
        "library's own broadcast helper where it has one (`websockets.broadcast`, "
        "`picows.websockets.broadcast`, `pulsewire.broadcast`); aiohttp, picows' core API, "
        "Node ws and the C server loop over the connections. permessage-deflate is enabled on "
        "every server that supports it (picows' core API and the C server don't); the load "
        "generator only offers it in the deflate column.",
        "- The load generator verifies every echo (opcode, length, content; sampled for "
        "64 KiB) and inflates the compressed ones, so a broken server can't look fast.",
        "- Two pulsewire rows: `pulsewire` is the idiomatic asyncio server "
        "(`async for message in ws: await ws.send(message)`), `pulsewire (callback API)` the "
        "same server on `pulsewire.Listener` callbacks (`on_message` replying with "
        "`send_nowait`).",
        "- Sources: `benchmarks/loadgen/loadgen.c`, `benchmarks/servers/`, "
        "`benchmarks/run.py`; raw numbers in `benchmarks/results/latest.json`.",
        "",
        "The hub's own benchmarks (one publication to 10,000 subscribers, cross-node "
        "throughput on Redis) are in [benchmarks-hub.md](benchmarks-hub.md), written by "
        "`benchmarks/fanout_hub.py` (the second half of `make bench`).",
        "",
    ]
    return "\n".join(lines)


def fmt_number(v: float) -> str:
    if v >= 1000:
        return f"{v:,.0f}"
    return f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}"


CHART_SCALE = {"bytes_per_conn": (1 / 1024, "KiB"), "msg_per_s": (1 / 1000, "k msg/s")}


def chart_panel(ax: Any, scenario: Scenario, servers: list[tuple[str, dict[str, Any]]]) -> None:
    """Horizontal bars, one per server, value written beside each bar. The C ceiling's bar is
    clipped so that it doesn't flatten the others; its label still shows the real value."""
    scale, unit = CHART_SCALE.get(scenario.primary, (1.0, scenario.unit))
    labels, values = [], []
    for _, entry in servers:
        res = entry["results"].get(scenario.key) or {}
        value = res.get("values", {}).get(scenario.primary) if res.get("ok") else None
        labels.append(entry.get("short", entry["label"]))
        values.append(None if value is None else value * scale)
    others = [v for (name, _), v in zip(servers, values, strict=True) if v and name != "c-echo"]
    limit = max(others, default=0) * 1.45 or max((v or 0 for v in values), default=1) * 1.45 or 1
    for i, ((name, _), value) in enumerate(zip(servers, values, strict=True)):
        color = (
            "#d9480f"
            if name == "pulsewire"
            else "#f08c00"
            if name == "pulsewire-callbacks"
            else "#868e96"
            if name == "c-echo"
            else "#4c6ef5"
        )
        if value is None:
            ax.text(0, i, " n/a", va="center", fontsize=7, color="#868e96")
            continue
        ax.barh(i, min(value, limit), color=color)
        text = fmt_number(value) + (" \u25b6" if value > limit else "")
        ax.text(min(value, limit), i, " " + text, va="center", fontsize=7)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlim(0, limit * 1.2)
    ax.invert_yaxis()
    better = "higher" if scenario.higher_is_better else "lower"
    shown = ", p50 shown" if scenario.mode in ("latency", "fanout") else ""
    ax.set_title(f"{scenario.title}\n({unit}, {better} is better{shown})", fontsize=9)
    ax.tick_params(labelsize=7)


def render_chart(results: dict[str, Any], path: Path) -> bool:
    """One small bar chart per scenario, pulsewire highlighted. Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return chart_in_venv(results, path)
    scenarios = scenarios_of(results)
    servers = [(n, e) for n, e in results["servers"].items() if e["status"] == "ok"]
    cols = 4
    rows = (len(scenarios) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.2 * rows), squeeze=False)
    for ax, scenario in zip(axes.flat, scenarios, strict=False):
        chart_panel(ax, scenario, servers)
    for ax in list(axes.flat)[len(scenarios) :]:
        ax.axis("off")
    fig.suptitle(f"WebSocket echo servers, {results['meta']['date']}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def chart_in_venv(results: dict[str, Any], path: Path) -> bool:
    """This interpreter has no matplotlib: draw the chart with the project's .venv instead."""
    if not VENV_PY.exists() or Path(sys.executable).resolve() == VENV_PY.resolve():
        log("matplotlib is not installed: no chart")
        return False
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as tmp:
        json.dump(results, tmp)
    try:
        cmd = [str(VENV_PY), __file__, "--chart-from", tmp.name, "--chart-to", str(path)]
        return subprocess.run(cmd, timeout=120).returncode == 0
    finally:
        os.unlink(tmp.name)


def write_outputs(results: dict[str, Any], json_path: Path, md_path: Path) -> None:
    json_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=1) + "\n")
    png_path = md_path.with_suffix(".png")
    chart = png_path.name if render_chart(results, png_path) else None
    md_path.write_text(render_markdown(results, chart))
    log(f"wrote {json_path}, {md_path}" + (f", {png_path}" if chart else ""))


# --------------------------------------------------------------------------- entry points


def run_smoke(
    tmpdir: str | os.PathLike[str], servers: list[str] | None = None, setup: bool = True
) -> dict[str, Any]:
    """Every scenario against every server with tiny counts (~0.5 s each), written to tmpdir.

    Returns the results dict (also in tmpdir/latest.json, with benchmarks.md/.png beside it):
    ``results["servers"][name]["status"]`` is "ok" or "missing" (with "reason"), and
    ``results["servers"][name]["results"][scenario_key]["ok"]`` tells whether a scenario ran.
    """
    out = Path(tmpdir)
    names = servers or list(server_specs())
    results = run_benchmarks(names, [s.key for s in SCENARIOS], SMOKE, setup=setup)
    write_outputs(results, out / "latest.json", out / "benchmarks.md")
    return results


def parse_list(value: str | None, known: list[str], what: str) -> list[str]:
    if not value:
        return known
    chosen = [v.strip() for v in value.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in known]
    if unknown:
        raise SystemExit(f"unknown {what}: {', '.join(unknown)} (known: {', '.join(known)})")
    return chosen


def main(argv: list[str] | None = None) -> int:
    servers, scenarios = list(server_specs()), [s.key for s in SCENARIOS]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny counts, ~0.5 s each, temp dir")
    p.add_argument("--servers", help="comma-separated: " + ",".join(servers))
    p.add_argument("--scenarios", help="comma-separated: " + ",".join(scenarios))
    p.add_argument("--duration", type=float, help="measured seconds per run (5)")
    p.add_argument("--warmup", type=float, help="warm-up seconds per run (1)")
    p.add_argument("--repeats", type=int, help="runs per cell, the median is reported (3)")
    p.add_argument("--idle-conns", type=int, help="connections held for idle memory (5000)")
    p.add_argument("--fanout-conns", type=int, help="fan-out receivers (10000)")
    p.add_argument("--fanout-rounds", type=int, help="measured fan-out rounds (20)")
    p.add_argument(
        "--quiet-wait",
        type=float,
        help="longest wait for other processes to go quiet before each run (60; smoke 0)",
    )
    p.add_argument("--noisy-retries", type=int, help="redo a disturbed run this often (1)")
    p.add_argument(
        "--nice",
        type=int,
        help="run servers and loadgen at this nice value, e.g. -10 on a shared machine (0)",
    )
    p.add_argument("--no-compression", action="store_true", help="start servers without deflate")
    p.add_argument("--no-setup", action="store_true", help="skip pip/npm installs")
    p.add_argument("--out-dir", type=Path, help="write latest.json, benchmarks.md/.png here")
    p.add_argument("--chart-from", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--chart-to", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # Ctrl-C (even when started in the background) and SIGTERM unwind through the finally
    # blocks that stop the servers.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    if args.chart_from:  # internal: chart_in_venv() re-runs us under .venv's python
        return 0 if render_chart(json.loads(args.chart_from.read_text()), args.chart_to) else 1

    settings = SMOKE if args.smoke else Settings()
    overrides = {
        "duration": args.duration,
        "warmup": args.warmup,
        "repeats": args.repeats,
        "idle_conns": args.idle_conns,
        "fanout_conns": args.fanout_conns,
        "fanout_rounds": args.fanout_rounds,
        "quiet_wait": args.quiet_wait,
        "noisy_retries": args.noisy_retries,
        "nice": args.nice,
    }
    settings = replace(settings, **{k: v for k, v in overrides.items() if v is not None})
    if args.no_compression:
        settings = replace(settings, compression=False)
    chosen_servers = parse_list(args.servers, servers, "servers")
    chosen_scenarios = parse_list(args.scenarios, scenarios, "scenarios")

    if args.out_dir:
        json_path, md_path = args.out_dir / "latest.json", args.out_dir / "benchmarks.md"
    elif args.smoke:
        tmp_path = Path(tempfile.mkdtemp(prefix="pulsewire-bench-smoke-"))
        json_path, md_path = tmp_path / "latest.json", tmp_path / "benchmarks.md"
    elif chosen_servers != servers or chosen_scenarios != scenarios:
        # A partial run must not overwrite the published docs.
        json_path = BENCH / "results" / "partial.json"
        md_path = BENCH / "results" / "partial.md"
    else:
        json_path, md_path = BENCH / "results" / "latest.json", ROOT / "docs" / "benchmarks.md"

    results = run_benchmarks(chosen_servers, chosen_scenarios, settings, setup=not args.no_setup)
    write_outputs(results, json_path, md_path)
    print("\n".join(results_table(results)))
    log(f"finished in {results['meta']['runtime_s']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
