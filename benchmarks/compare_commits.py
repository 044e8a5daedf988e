#!/usr/bin/env python3
"""Before/after benchmark of two commits, side by side in one run, interleaved.

    .venv/bin/python benchmarks/compare_commits.py BEFORE AFTER          # 5-8 minutes
    .venv/bin/python benchmarks/compare_commits.py 25ca3b0 HEAD --rounds 3 --no-aa

Each commit is exported (``git archive``, into a temporary directory) and its C accelerator
built in place with this interpreter (``setup.py build_ext --inplace``). With ``--aa`` (the
default) BEFORE is exported and built a second time as a third arm, A2: A2/A is the noise
floor, measured in the same run under the same conditions.

Every server runs this interpreter with ``PYTHONPATH`` set to its tree's ``src`` and first
prints which ``pulsewire`` and which ``_speedups`` it imported; the run stops if either is not
the tree's own. The load generators are this checkout's (``build/loadgen``, the hub client of
``fanout_hub.py``), the same for every arm; the echo server script is each tree's own
``benchmarks/servers/pulsewire_echo.py`` (this checkout's if the tree has none).

Two phases, each with the servers of all arms up at once (pinned to core 0, load generators
on core 1, as in ``run.py``); each phase runs ``--rounds`` rounds, and in each round every
arm once, in alternating order (A B A2, then A2 B A, ...), so drift in the machine's load
falls on every arm alike:

1. **Echo** (``run.py``'s scenarios, by default ``tp_1x100_32``, ``tp_50x10_32`` and
   ``tp_10x4_64k``): echoed messages per second over ``--duration`` s after ``--warmup`` s.
2. **Hub fan-out**: one ``pulsewire serve`` (memory engine) per arm with ``--subscribers``
   WebSocket subscribers on one channel (4 client processes); per round and arm,
   ``--publications`` publications through the HTTP API (after one warm-up publication per
   arm): the time until the first and the last subscriber had it, and deliveries per second
   (subscribers / time until the last one had it); the round's value is the median over its
   publications. And the node's CPU time per delivery, from each publication to its last
   receipt (from ``/proc/PID/task/*/schedstat``, in nanoseconds: it holds on a busy machine
   where the latencies do not).

Prints a markdown table (median over the rounds and the range, after/before of the medians,
the range of the per-round after/before ratios, A2/A) and writes it with every raw value to
``benchmarks/results/compare-BEFORE-AFTER.{md,json}`` (or ``--out-dir``).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import ModuleType
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
DEFAULT_SCENARIOS = ("tp_1x100_32", "tp_50x10_32", "tp_10x4_64k")
CHANNEL = "fan:compare"
BUSY_PERCENT = 25.0  # other processes' CPU above this (median): the machine was busy

# Run first in every server process: say which pulsewire and accelerator were imported.
IDENTIFY = """\
import importlib, os, runpy, sys
import pulsewire
with __import__("contextlib").suppress(ImportError):
    importlib.import_module("pulsewire.protocol.frames")
_sp = [getattr(m, "__file__", "") for n, m in list(sys.modules.items())
       if n.startswith("pulsewire.") and n.endswith("._speedups")]
print("PULSEWIRE_TREE", pulsewire.__file__, (_sp or ["-"])[0], file=sys.stderr, flush=True)
"""
RUN_SCRIPT = """\
script = sys.argv.pop(1)
sys.argv[0] = script
sys.path.insert(0, os.path.dirname(script))
runpy.run_path(script, run_name="__main__")
"""
RUN_CLI = "from {module} import {function}\nsys.exit({function}())\n"


def load(name: str) -> ModuleType:
    """Load ``benchmarks/<name>.py`` (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench = load("run")
hub = load("fanout_hub")


def log(message: str) -> None:
    print(f"[compare {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------- trees


@dataclass
class Arm:
    """One tree under test: a label (A, B, A2), its commit and where it was exported."""

    label: str
    role: str  # "before", "after", "before again"
    commit: str
    tree: Path
    identity: str = ""

    @property
    def src(self) -> Path:
        return self.tree / "src"

    def python(self, code: str) -> list[str]:
        """A command running ``code`` with this interpreter on this tree's ``src``."""
        env = ["env", "-u", "PULSEWIRE_NO_EXTENSIONS", f"PYTHONPATH={self.src}"]
        return [*env, sys.executable, "-c", IDENTIFY + code]

    def cli_code(self) -> str:
        """Code running the tree's ``pulsewire`` command (its ``[project.scripts]`` entry)."""
        try:
            import tomllib
        except ImportError:  # Python 3.10
            import tomli as tomllib
        entry = "pulsewire.cli:main"
        with contextlib.suppress(OSError, KeyError, ValueError):
            project = tomllib.loads((self.tree / "pyproject.toml").read_text())["project"]
            entry = project["scripts"]["pulsewire"]
        module, _, function = entry.partition(":")
        return RUN_CLI.format(module=module, function=function)

    def echo_script(self) -> Path:
        own = self.tree / "benchmarks" / "servers" / "pulsewire_echo.py"
        return own if own.exists() else BENCH / "servers" / "pulsewire_echo.py"

    def check_identity(self, log_text: str, where: str) -> None:
        """Stop unless the server imported this tree's pulsewire and its C accelerator."""
        lines = [ln for ln in log_text.splitlines() if ln.startswith("PULSEWIRE_TREE ")]
        if not lines:
            raise RuntimeError(f"{where}: no PULSEWIRE_TREE line in its log:\n{log_text[-1500:]}")
        _, module, speedups = lines[0].split(" ", 2)
        src = str(self.src.resolve())
        if not module.startswith(src + os.sep):
            raise RuntimeError(f"{where} imported {module}, not the tree's ({src})")
        if not speedups.startswith(src + os.sep):
            raise RuntimeError(f"{where}: C accelerator not from the tree ({speedups})")
        base = self.tree.parent
        self.identity = f"{Path(module).relative_to(base)} + {Path(speedups).relative_to(base)}"


def resolve(commit: str) -> str:
    out = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--verify", f"{commit}^{{commit}}"],
        capture_output=True,
        text=True,
    )
    if out.returncode:
        raise SystemExit(f"not a commit: {commit}: {out.stderr.strip()}")
    return out.stdout.strip()


def export(commit: str, tree: Path) -> None:
    """The commit's files in ``tree`` (``git archive``: no worktree to register or clean up)."""
    tree.mkdir(parents=True)
    archive = subprocess.Popen(
        ["git", "-C", str(ROOT), "archive", "--format=tar", commit], stdout=subprocess.PIPE
    )
    subprocess.run(["tar", "-x", "-C", str(tree)], stdin=archive.stdout, check=True)
    assert archive.stdout is not None
    archive.stdout.close()
    if archive.wait():
        raise RuntimeError(f"git archive {commit} failed")


# Builds the extensions the tree's setup.py declares, in place, without the packaging
# metadata (pyproject.toml may need a newer setuptools than this interpreter has).
BUILD_EXTENSIONS = """\
import runpy, setuptools
declared = {}
setuptools.setup = lambda **kw: declared.update(kw)
runpy.run_path("setup.py", run_name="__main__")
dist = setuptools.Distribution(
    {"ext_modules": declared.get("ext_modules", []), "package_dir": {"": "src"}}
)
command = dist.get_command_obj("build_ext")
command.inplace = 1
dist.run_command("build_ext")
"""


def build(tree: Path) -> None:
    """The tree's C accelerator, in place, with this interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "PULSEWIRE_NO_EXTENSIONS"}
    out = subprocess.run(
        [sys.executable, "-c", BUILD_EXTENSIONS],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if out.returncode or not list((tree / "src").rglob("_speedups*.so")):
        detail = (out.stdout + out.stderr)[-2000:]
        raise RuntimeError(f"building the accelerator in {tree} failed:\n{detail}")


def round_order(arms: list[Arm], number: int) -> list[Arm]:
    """Every arm once per round; the order is reversed every other round."""
    return arms if number % 2 == 0 else arms[::-1]


# ---------------------------------------------------------------------- measurements


@dataclass
class Metric:
    """One measured quantity: its values per arm label, one per round."""

    key: str
    title: str
    unit: str
    higher_is_better: bool
    values: dict[str, list[float]] = field(default_factory=dict)

    def add(self, label: str, value: float) -> None:
        self.values.setdefault(label, []).append(value)


@dataclass
class Settings:
    rounds: int = 5
    aa: bool = True
    scenarios: tuple[str, ...] = DEFAULT_SCENARIOS
    duration: float = 3.0
    warmup: float = 1.0
    subscribers: int = 10_000
    publications: int = 4
    echo: bool = True
    fanout: bool = True
    nice: int = 0


def on_cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` so far: ``schedstat`` counts nanoseconds, where
    ``/proc/PID/stat`` counts 10 ms ticks (too coarse for one round of publications)."""
    total = 0
    for stat in Path(f"/proc/{pid}/task").glob("*/schedstat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            total += int(stat.read_text().split()[0])
    return total / 1e9


class OtherCpu:
    """CPU used by processes other than ``ours`` since construction, in % of one core."""

    def __init__(self, ours: list[int]) -> None:
        self.ours = ours
        self.t0, self.other0 = time.monotonic(), self._other()

    def _other(self) -> float:
        return hub.machine_cpu_seconds() - sum(hub.cpu_seconds(pid) for pid in self.ours)

    def percent(self) -> float:
        wall = time.monotonic() - self.t0
        return round(max(0.0, 100 * (self._other() - self.other0) / wall), 1) if wall else 0.0


def echo_phase(
    arms: list[Arm], settings: Settings, logdir: Path, busy: list[float]
) -> list[Metric]:
    """Every arm's echo server up; per round, each scenario against each arm. Appends to
    ``busy`` the CPU other processes used during each measured run (% of one core)."""
    bench.build_c()
    run_settings = replace(
        bench.Settings(), duration=settings.duration, warmup=settings.warmup, nice=settings.nice
    )
    scenarios = [bench.SCENARIO_BY_KEY[key] for key in settings.scenarios]
    metrics = {s.key: Metric(f"echo {s.key}", f"echo: {s.title}", "msg/s", True) for s in scenarios}
    servers: dict[str, Any] = {}
    try:
        for arm in arms:
            command = [*arm.python(RUN_SCRIPT), str(arm.echo_script())]
            spec = bench.ServerSpec(f"echo-{arm.role.replace(' ', '-')}", arm.label, "", command)
            servers[arm.label] = server = bench.start_server(spec, run_settings, logdir)
            arm.check_identity(
                server.log_path.read_text(errors="replace"), f"echo server {arm.label}"
            )
        for number in range(settings.rounds):
            for scenario in scenarios:
                for arm in round_order(arms, number):
                    server = servers[arm.label]
                    if not server.alive():
                        raise RuntimeError(f"echo server {arm.label} died:\n{server.log_tail()}")
                    result = bench.run_loadgen(scenario, run_settings, server)
                    if not result.get("ok", True) or result.get("msg_per_s") is None:
                        raise RuntimeError(f"loadgen failed against {arm.label}: {result}")
                    metrics[scenario.key].add(arm.label, float(result["msg_per_s"]))
                    other = float(result.get("other_cpu_percent", 0.0))
                    busy.append(other)
                    log(
                        f"round {number + 1} {scenario.key} {arm.label}: "
                        f"{result['msg_per_s']:,.0f} msg/s (other CPU {other:.0f}%)"
                    )
    finally:
        for server in servers.values():
            bench.stop_server(server)
    return list(metrics.values())


@dataclass
class HubNode:
    """One arm's hub node and the client processes holding its subscribers."""

    arm: Arm
    node: Any
    port: int
    clients: list[Any]
    lines: Any
    published: int = 0

    def publish_and_wait(self, subscribers: int) -> dict[str, float]:
        """Publish one publication; first/last receipt (ms) and deliveries per second."""
        self.published += 1
        api = hub.ApiClient(self.port)
        try:
            t0 = time.monotonic()
            data = {"round": self.published, "t0": t0}
            api.post("publish", {"channel": CHANNEL, "data": data})
            deltas: list[float] = []
            for i in range(len(self.clients)):
                line = self.lines.take(i, f"ROUND {self.published} ", 60)
                deltas.extend(json.loads(line.split(" ", 2)[2]))
        finally:
            api.close()
        if len(deltas) != subscribers:
            raise RuntimeError(f"{self.arm.label}: {len(deltas)} of {subscribers} received")
        first, last = min(deltas), max(deltas)
        return {"first_ms": first, "last_ms": last, "deliveries_per_s": subscribers / last * 1e3}


def start_hub(arm: Arm, settings: Settings, directory: Path) -> HubNode:
    """Start the arm's hub node and the client processes that connect its subscribers
    (without waiting for them: ``wait_ready``)."""
    hub_settings = hub.Settings(
        subscribers=settings.subscribers, server_command=tuple(arm.python(arm.cli_code()))
    )
    name = f"hub-{arm.role.replace(' ', '-')}"
    node, port = hub.start_node(directory, name, "memory", "compare", hub_settings)
    started = HubNode(arm, node, port, [], None)
    try:
        arm.check_identity(node.log.read_text(errors="replace"), f"hub {arm.label}")
        shares = hub.client_shares(settings.subscribers, hub_settings.client_procs)
        for i, (count, addresses) in enumerate(shares):
            args = [
                f"--port={port}",
                f"--count={count}",
                f"--addresses={','.join(addresses)}",
                f"--token={hub.make_token(f'sub-{i}')}",
                f"--channel={CHANNEL}",
            ]
            log_path = directory / f"{name}-client-{i}.log"
            started.clients.append(hub.spawn_client("fanout", args, hub_settings, log_path))
        started.lines = hub.LineReader(started.clients)
    except BaseException:
        stop_hub(started)
        raise
    return started


def wait_ready(node: HubNode, since: float, subscribers: int) -> None:
    """Wait until all of the node's subscribers are connected and subscribed."""
    for i in range(len(node.clients)):
        node.lines.take(i, "READY", 300)
    took = time.monotonic() - since
    log(f"hub {node.arm.label}: {subscribers} subscribers connected after {took:.1f} s")


def stop_hub(node: HubNode) -> None:
    for client in node.clients:
        with contextlib.suppress(OSError):
            if client.popen.stdin is not None:
                client.popen.stdin.close()
    for client in node.clients:
        hub.stop(client)
    hub.stop(node.node)


def fanout_phase(
    arms: list[Arm], settings: Settings, directory: Path, busy: list[float]
) -> list[Metric]:
    """Every arm's hub node up with its subscribers; per round, publications to each arm.
    Appends to ``busy`` the CPU other processes used during each round (% of one core)."""
    metrics = {
        "first_ms": Metric("fanout first_ms", "hub fan-out: first subscriber", "ms", False),
        "last_ms": Metric("fanout last_ms", "hub fan-out: last subscriber", "ms", False),
        "deliveries_per_s": Metric(
            "fanout deliveries_per_s", "hub fan-out: deliveries", "deliveries/s", True
        ),
        "cpu_us": Metric(
            "fanout server_cpu_us_per_delivery", "hub fan-out: node CPU per delivery", "µs", False
        ),
    }
    nodes: list[HubNode] = []
    try:
        since = time.monotonic()
        for arm in arms:  # all connecting at once
            nodes.append(start_hub(arm, settings, directory))
        for node in nodes:
            wait_ready(node, since, settings.subscribers)
        for node in nodes:  # warm-up
            node.publish_and_wait(settings.subscribers)
        by_label = {node.arm.label: node for node in nodes}
        ours = [os.getpid()] + [p.pid for node in nodes for p in (node.node, *node.clients)]
        for number in range(settings.rounds):
            window = OtherCpu(ours)
            for arm in round_order(arms, number):
                node = by_label[arm.label]
                results = []
                for _ in range(settings.publications):
                    # from the publication to the last receipt: the node's keepalive and
                    # presence timers in the pauses between publications are not counted
                    cpu0 = on_cpu_seconds(node.node.pid)
                    result = node.publish_and_wait(settings.subscribers)
                    cpu = on_cpu_seconds(node.node.pid) - cpu0
                    results.append({**result, "cpu_us": cpu * 1e6 / settings.subscribers})
                    time.sleep(0.1)
                for key, metric in metrics.items():
                    metric.add(arm.label, statistics.median(r[key] for r in results))
                log(
                    f"round {number + 1} fan-out {arm.label}: last "
                    f"{metrics['last_ms'].values[arm.label][-1]:.1f} ms, first "
                    f"{metrics['first_ms'].values[arm.label][-1]:.1f} ms"
                )
            busy.append(window.percent())
            log(f"round {number + 1} fan-out: other CPU {busy[-1]:.0f}%")
    finally:
        for node in nodes:
            stop_hub(node)
    return list(metrics.values())


# ------------------------------------------------------------------------------ report


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value < 10 else f"{value:.1f}"


def cell(values: list[float]) -> str:
    median = statistics.median(values)
    spread = (max(values) - min(values)) / median * 100 if median else float("nan")
    return f"{fmt(median)} [{fmt(min(values))}..{fmt(max(values))}] ±{spread / 2:.0f}%"


def ratio(after: list[float], before: list[float]) -> float:
    return statistics.median(after) / statistics.median(before)


def paired(after: list[float], before: list[float]) -> str:
    ratios = [a / b for a, b in zip(after, before, strict=True)]
    return f"{min(ratios):.3f}..{max(ratios):.3f}"


MIN_ROUNDS_FOR_VERDICT = 5  # all 5 on one side by chance: 2/32, about 6 %


def noise_floor(metric: Metric) -> float:
    """How far from 1 the same code's ratio went in this run: the largest per-round
    |A2/A - 1| with A2 measured, else half of A's range relative to its median."""
    before = metric.values["A"]
    if "A2" in metric.values:
        return max(abs(x / a - 1) for x, a in zip(metric.values["A2"], before, strict=True))
    return (max(before) - min(before)) / 2 / statistics.median(before)


def verdict(metric: Metric) -> str:
    """ "B better"/"B worse" when, over at least ``MIN_ROUNDS_FOR_VERDICT`` rounds, every
    round's B/A points the same way and the median B/A differs from 1 by more than the
    noise floor; else "within noise"."""
    before, after = metric.values["A"], metric.values["B"]
    ratios = [a / b for a, b in zip(after, before, strict=True)]
    change = ratio(after, before) - 1
    one_side = all(r > 1 for r in ratios) or all(r < 1 for r in ratios)
    if len(ratios) < MIN_ROUNDS_FOR_VERDICT:
        return f"(fewer than {MIN_ROUNDS_FOR_VERDICT} rounds)"
    if abs(change) <= noise_floor(metric) or not one_side:
        return "within noise"
    better = (change > 0) == metric.higher_is_better
    return f"B {'better' if better else 'worse'} ({change * 100:+.1f}%)"


def markdown(result: dict[str, Any], metrics: list[Metric]) -> str:
    arms = result["arms"]
    aa = any(a["label"] == "A2" for a in arms)
    lines = [
        "# Before/after benchmark",
        "",
        f"`benchmarks/compare_commits.py {result['before'][:12]} {result['after'][:12]}`, "
        f"{result['date']}, {result['seconds']:.0f} s; {result['rounds']} rounds, arms "
        "interleaved (order alternating each round); echo "
        f"{result['duration']} s after {result['warmup']} s warm-up per run; fan-out "
        f"{result['subscribers']:,} subscribers, median of {result['publications']} "
        "publications per round. Cells: median over the rounds [min..max] ±half the range.",
        "",
    ]
    lines += [
        f"- **{a['label']}** ({a['role']}): `{a['commit'][:12]}` — {a['identity']}" for a in arms
    ]
    lines.append(
        f"- load average before/after: {result['loadavg_before']} / {result['loadavg_after']}"
    )
    for phase, values in result["other_cpu_percent"].items():
        if values:
            lines.append(
                f"- CPU used by other processes during the {phase} runs: median "
                f"{statistics.median(values):.0f}%, max {max(values):.0f}% of one core"
            )
    if any(v and statistics.median(v) > BUSY_PERCENT for v in result["other_cpu_percent"].values()):
        lines.append(
            f"- **the machine was busy** (other processes above {BUSY_PERCENT:.0f}% of a core): "
            "expect a wide spread; rerun on a quiet machine before drawing conclusions"
        )
    lines.append("")
    header = ["benchmark", "unit", "A (before)", "B (after)", "B/A", "B/A per round"]
    if aa:
        header += ["A2 (before again)", "A2/A", "A2/A per round"]
    header.append("verdict")
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in metrics:
        a, b = metric.values["A"], metric.values["B"]
        unit = metric.unit + (" ↑" if metric.higher_is_better else " ↓")
        row = [metric.title, unit, cell(a), cell(b), f"{ratio(b, a):.3f}", paired(b, a)]
        if aa:
            a2 = metric.values["A2"]
            row += [cell(a2), f"{ratio(a2, a):.3f}", paired(a2, a)]
        row.append(verdict(metric))
        lines.append("| " + " | ".join(row) + " |")
    lines += [
        "",
        f"↑ higher is better, ↓ lower is better. Verdict (from {MIN_ROUNDS_FOR_VERDICT} rounds "
        "on): B better/worse only when every round's B/A points the same way and the median "
        "B/A differs from 1 by more than the noise floor: the largest per-round |A2/A - 1| "
        "(without A2: half of A's range over its median).",
    ]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- main


@contextlib.contextmanager
def workdir(keep: bool, base: Path | None) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="pw-compare-", dir=base))
    try:
        yield path
    finally:
        if keep:
            log(f"kept {path}")
        else:
            shutil.rmtree(path, ignore_errors=True)


def compare(before: str, after: str, settings: Settings, keep: bool = False) -> dict[str, Any]:
    """Run the comparison; returns the raw values, the markdown table and the metadata."""
    started = time.time()
    load_before = hub.loadavg()
    commits = {"before": resolve(before), "after": resolve(after)}
    with workdir(keep, None) as tmp:
        plan = [("A", "before", commits["before"]), ("B", "after", commits["after"])]
        if settings.aa:
            plan.append(("A2", "before again", commits["before"]))
        arms = []
        for label, role, commit in plan:
            tree = tmp / role.replace(" ", "-")
            log(f"{label}: exporting {commit[:12]} to {tree} and building the accelerator")
            export(commit, tree)
            build(tree)
            arms.append(Arm(label, role, commit, tree))
        metrics: list[Metric] = []
        busy: dict[str, list[float]] = {"echo": [], "fan-out": []}
        if settings.echo:
            (tmp / "logs").mkdir()
            metrics += echo_phase(arms, settings, tmp / "logs", busy["echo"])
        if settings.fanout:
            metrics += fanout_phase(arms, settings, tmp, busy["fan-out"])
    result: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(started)),
        "before": commits["before"],
        "after": commits["after"],
        "arms": [
            {"label": a.label, "role": a.role, "commit": a.commit, "identity": a.identity}
            for a in arms
        ],
        "rounds": settings.rounds,
        "duration": settings.duration,
        "warmup": settings.warmup,
        "subscribers": settings.subscribers,
        "publications": settings.publications,
        "loadavg_before": load_before,
        "loadavg_after": hub.loadavg(),
        "other_cpu_percent": busy,
        "metrics": [
            {"key": m.key, "title": m.title, "unit": m.unit, "values": m.values} for m in metrics
        ],
    }
    result["seconds"] = round(time.time() - started, 1)
    result["markdown"] = markdown(result, metrics)
    return result


def main(argv: list[str] | None = None) -> int:
    defaults = Settings()
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("before", help="the commit before the change")
    parser.add_argument("after", help="the commit after it")
    parser.add_argument("--rounds", type=int, default=defaults.rounds)
    parser.add_argument(
        "--aa",
        action=argparse.BooleanOptionalAction,
        default=defaults.aa,
        help="also run BEFORE a second time (A2) for the noise floor (default: on)",
    )
    parser.add_argument(
        "--scenarios",
        default=",".join(defaults.scenarios),
        help=f"echo scenarios of run.py (default {','.join(defaults.scenarios)})",
    )
    parser.add_argument("--duration", type=float, default=defaults.duration)
    parser.add_argument("--warmup", type=float, default=defaults.warmup)
    parser.add_argument("--subscribers", type=int, default=defaults.subscribers)
    parser.add_argument("--publications", type=int, default=defaults.publications)
    parser.add_argument("--no-echo", action="store_true", help="skip the echo benchmark")
    parser.add_argument("--no-fanout", action="store_true", help="skip the hub fan-out")
    parser.add_argument("--nice", type=int, default=0, help="nice value of servers and loadgen")
    parser.add_argument("--keep", action="store_true", help="keep the exported trees and logs")
    parser.add_argument("--out-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    scenarios = tuple(s for s in args.scenarios.split(",") if s)
    unknown = [s for s in scenarios if s not in bench.SCENARIO_BY_KEY]
    if unknown or any(bench.SCENARIO_BY_KEY[s].mode != "throughput" for s in scenarios):
        parser.error(
            f"--scenarios: throughput scenarios of run.py only, not {unknown or scenarios}"
        )
    settings = Settings(
        rounds=args.rounds,
        aa=args.aa,
        scenarios=scenarios,
        duration=args.duration,
        warmup=args.warmup,
        subscribers=args.subscribers,
        publications=args.publications,
        echo=not args.no_echo,
        fanout=not args.no_fanout,
        nice=args.nice,
    )
    result = compare(args.before, args.after, settings, keep=args.keep)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = f"compare-{result['before'][:8]}-{result['after'][:8]}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out_dir / f"{stem}.md").write_text(result["markdown"])
    print(result["markdown"])
    log(f"written to {args.out_dir / stem}.{{md,json}} in {result['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
