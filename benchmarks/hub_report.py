#!/usr/bin/env python3
"""docs/benchmarks-hub.md and docs/benchmarks-hub.png from the hub benchmarks' results files.

Reads ``benchmarks/results/``: ``hub_peers_N.json`` (benchmarks/hub_peers.py ``--subscribers N
--out ...``, one per N: fan-out against python-socketio and Node Socket.IO),
``backpressure.json`` (benchmarks/backpressure.py: cross-node, rate-limited publisher) and
``hub_fanout.json`` (benchmarks/fanout_hub.py: closed-loop cross-node throughput). A file that
is missing leaves its section out (and says so); nothing is measured here.

    .venv/bin/python benchmarks/hub_report.py        # after the runs, or: make bench-hub
"""

import argparse
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import backpressure  # noqa: E402
import fanout_hub as hub  # noqa: E402

DOCS = BENCH.parent / "docs"
PEERS = ("pulsewire", "python-socketio", "node-socketio")
COLORS = {"pulsewire": "#d9480f", "python-socketio": "#4c6ef5", "node-socketio": "#868e96"}
RUN_COLORS = {"pulsewire-off": "#f08c00", "pulsewire-on": "#d9480f", "python-socketio": "#4c6ef5"}
RUN_LABELS = {
    "pulsewire-off": "pulsewire, backpressure off",
    "pulsewire-on": "pulsewire, backpressure on",
    "python-socketio": "python-socketio, Redis manager",
}


def load(results: Path) -> dict[str, Any]:
    """The results files this page is made from (absent ones are left out)."""
    peers = []
    for path in results.glob("hub_peers_*.json"):
        if re.fullmatch(r"hub_peers_\d+\.json", path.name):
            peers.append(json.loads(path.read_text()))
    peers.sort(key=lambda r: r["settings"]["subscribers"])
    data: dict[str, Any] = {"peers": peers}
    for key, name in (
        ("backpressure", "backpressure.json"),
        ("fanout", "hub_fanout.json"),
        ("profile", "hub_profile.json"),
    ):
        path = results / name
        data[key] = json.loads(path.read_text()) if path.exists() else None
    return data


def fmt(value: float | None, digits: int = 1) -> str:
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    return f"{value:,.{digits}f}"


def ratio(x: float | None, y: float | None) -> str:
    """x / y to two significant digits."""
    return f"{x / y:.2g}" if x is not None and y else "-"


def ok(server: dict[str, Any] | None) -> bool:
    return bool(server) and server.get("status") == "ok"  # type: ignore[union-attr]


# ------------------------------------------------------------------------- sections


def header(data: dict[str, Any]) -> list[str]:
    runs = [*data["peers"], data["backpressure"], data["fanout"]]
    dates = sorted(r["date"] for r in runs if r)
    machine: dict[str, Any] = next((r["machine"] for r in runs if r), {})
    span = f"{dates[0][:16]} to {dates[-1][:16]}" if dates else "no run"
    return [
        "# Hub benchmarks",
        "",
        "The hub measured side by side with what users pick instead (python-socketio, an ASGI "
        "app under uvicorn; Node Socket.IO 4) by one client driver that speaks each protocol "
        "over raw WebSockets, and across two nodes on Redis with a rate-limited publisher. "
        "Every number below is from the results file of the run named in its section "
        f"({span}), on {machine.get('cpu_model', '?')}, {machine.get('cpus', '?')} cores, "
        f"Python {machine.get('python', '?')}; the page is written by "
        "`benchmarks/hub_report.py` (`make bench-hub` runs everything, then it). "
        "Servers are pinned to core 0, the driver to core 1 with `taskset`.",
        "",
        f"{busy_sentence(data)} Each table gives the 1-minute load average and the CPU used "
        "by other processes while it was measured; CPU per delivery (CPU time) holds on a "
        "busy machine where latencies and rates do not. Compare rows of one table, not "
        "absolute values.",
        "",
        "![hub benchmark chart](benchmarks-hub.png)",
        "",
    ]


def busy_sentence(data: dict[str, Any]) -> str:
    """How much CPU other processes took during the runs, from the results themselves."""
    others = [
        server["other_cpu_percent"]
        for result in data["peers"]
        for server in result["servers"].values()
        if "other_cpu_percent" in server
    ]
    if data["backpressure"]:
        others += [r["other_cpu_percent"] for r in data["backpressure"]["runs"].values() if ok(r)]
    if not others:
        return "How busy the machine was is not recorded."
    worst = max(others)
    if worst > hub.BUSY_PERCENT:
        return (
            f"**The machine was busy at times**: other processes used up to {worst:g} % of a "
            "core during a measurement."
        )
    return f"Other processes used at most {worst:g} % of a core during any measurement."


def fanout_section(peers: list[dict[str, Any]]) -> list[str]:
    lines = ["## Fan-out: one publication to N subscribers on one server", ""]
    if not peers:
        return [*lines, "No `hub_peers_N.json` in this run.", ""]
    lines += [
        "One publication through each server's `POST /api/publish` (pulsewire's HTTP API; the "
        "peers' scripts copy it) with its send time in the data, to N WebSocket subscribers "
        "of one channel / room; per round the time until the first and the last subscriber "
        "had it, p50 (p99) over the rounds. Deliveries/s is N over the last receipt's p50. "
        "Memory is the server's resident memory grown by the subscribed idle connections, "
        "over N. CPU is the server's CPU time over the measured rounds per 100,000 "
        "deliveries. Driver CPU is the client processes' CPU from publish to last receipt: "
        f"at {hub_peers_saturated()} % or more, the driver and not the server was the limit.",
        "",
    ]
    for result in peers:
        n = result["settings"]["subscribers"]
        command = result.get("command") or f"benchmarks/hub_peers.py --subscribers {n}"
        lines += [
            f"### {n:,} subscribers",
            "",
            f"`{command}`, {result['date']}, {result['settings']['rounds']} rounds.",
            "",
            "| server | first receipt | last receipt | deliveries/s | KiB / connection "
            "| CPU ms / 100k deliveries | driver CPU | other CPU, load |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in result["servers"].items():
            if not ok(r):
                lines.append(f"| {name} | not run: {r.get('reason')} |||||||")
                continue
            first, last = r["first_receipt_ms"], r["last_receipt_ms"]
            saturated = " (saturated)" if r.get("driver_saturated") else ""
            lines.append(
                f"| {name} | {fmt(first['p50'])} ({fmt(first['p99'])}) ms "
                f"| {fmt(last['p50'])} ({fmt(last['p99'])}) ms "
                f"| {r['deliveries_per_second']:,} | {fmt(r['memory_per_connection_kib'])} "
                f"| {fmt(r['server_cpu_us_per_delivery'] * 100, 0)} "
                f"| {r['driver_cpu_percent']} %{saturated} "
                f"| {r['other_cpu_percent']} %, {r['loadavg_before']} |"
            )
        limited = [n for n, r in result["servers"].items() if ok(r) and r["driver_saturated"]]
        lines += [
            "",
            "The driver was saturated (its CPU at or past "
            f"{hub_peers_saturated()} %) against: {', '.join(limited) or 'none'}.",
            "",
            *ratio_table(result),
            "",
        ]
        lines += [f"Note: {w}." for w in result.get("warnings", [])]
        if result.get("warnings"):
            lines.append("")
    return lines


def hub_peers_saturated() -> str:
    import hub_peers

    return f"{hub_peers.SATURATED_PERCENT:g}"


def ratio_table(result: dict[str, Any]) -> list[str]:
    """pulsewire / peer of each headline figure (from the raw values, two digits)."""
    import hub_peers

    servers = result["servers"]
    ours = servers.get("pulsewire")
    labels = {
        "first_receipt_p50": "first receipt",
        "last_receipt_p50": "last receipt",
        "deliveries_per_second": "deliveries/s",
        "memory_per_connection": "memory / connection",
        "server_cpu_per_delivery": "CPU / delivery",
    }
    peers = [n for n in PEERS[1:] if ok(servers.get(n))]
    if not ok(ours) or not peers:
        return []
    assert ours is not None
    lines = [
        "pulsewire / peer (below 1 is better, except deliveries/s):",
        "",
        "| peer | " + " | ".join(labels.values()) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for name in peers:
        cells = [
            ratio(figure(ours), figure(servers[name]))
            for figure in (hub_peers.RATIOS[k] for k in labels)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def targets_section(data: dict[str, Any]) -> list[str]:
    """Issue #15's targets against this run's numbers, and for each what the numbers say
    about why it is met or missed."""
    lines = ["## Targets", ""]
    peers = [r for r in data["peers"] if ok(r["servers"].get("pulsewire"))]
    rows: list[tuple[str, str, str, str]] = []
    if peers:
        largest = peers[-1]
        n = largest["settings"]["subscribers"]
        ours = largest["servers"]["pulsewire"]
        first = ours["first_receipt_ms"]["p50"]
        rows.append((f"first receipt ≤ 2 ms at {n:,}", f"{fmt(first, 2)} ms", met(first <= 2), ""))
        ratios = exact_ratios(largest)
        checks = (
            ("node-socketio", "last_receipt_p50", "last receipt ≤ 0.8x Node's", 0.8, False),
            ("node-socketio", "deliveries_per_second", "deliveries/s ≥ 5x Node's", 5, True),
            ("python-socketio", "deliveries_per_second", "deliveries/s ≥ 10x py-sio", 10, True),
            ("node-socketio", "memory_per_connection", "memory ≤ 0.7x Node's", 0.7, False),
        )
        for peer, key, label, bound, higher in checks:
            value = ratios.get(peer, {}).get(key)
            if value is None:
                rows.append((f"{label} at {n:,}", "not measured", "-", ""))
                continue
            good = value >= bound if higher else value <= bound
            why = "" if good else fanout_why(largest, peer, key, bound)
            rows.append((f"{label} at {n:,}", f"{value:.3g}x", met(good), why))
    bp = data["backpressure"]
    if bp:
        for name in ("pulsewire-off", "pulsewire-on"):
            r = bp["runs"].get(name, {})
            if not ok(r):
                rows.append((f"cross-node, {RUN_LABELS[name]}", "not run", "-", ""))
                continue
            rows.append(
                (
                    f"cross-node sustainable rate, {RUN_LABELS[name]}",
                    f"{r['sustainable_per_second']:g}/s, p99 {ms(r['sustainable_p99_ms'])}",
                    "reported",
                    bounded(r, bp["settings"]),
                )
            )
        on = bp["runs"].get("pulsewire-on", {})
        if ok(on):
            rows.append(latency_bound_row(on, bp["settings"]))
    if not rows:
        return [*lines, "Nothing measured.", ""]
    lines += ["| target | this run | | why |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return [*lines, ""]


def on_cpu(result: dict[str, Any]) -> float:
    """The share of its rounds' last receipt a server was on the CPU (median CPU per round
    over the median last receipt; /proc counts CPU in 10 ms steps)."""
    rounds = result["per_round"]
    cpu = statistics.median(r["server_cpu_ms"] for r in rounds)
    return float(cpu / statistics.median(r["last_ms"] for r in rounds))


def fanout_why(result: dict[str, Any], peer: str, key: str, bound: float) -> str:
    """What the fan-out run says about a missed target."""
    ours, theirs = result["servers"]["pulsewire"], result["servers"][peer]
    cpu_ratio = ours["server_cpu_us_per_delivery"] / theirs["server_cpu_us_per_delivery"]
    if key == "memory_per_connection":
        return (
            f"{fmt(ours['memory_per_connection_kib'])} KiB per subscribed idle connection "
            f"against {fmt(theirs['memory_per_connection_kib'])}; not profiled in this run"
        )
    share, peer_share = on_cpu(ours), on_cpu(theirs)
    text = (
        f"CPU per delivery {cpu_ratio:.2g}x the peer's; pulsewire was on the CPU "
        f"{100 * share:.0f} % of its last receipt (the peer {100 * peer_share:.0f} %; other "
        f"processes used {ours['other_cpu_percent']:g} % of a core meanwhile)"
    )
    if key == "deliveries_per_second":
        return text + f": {bound:g}x the deliveries needs about {1 / bound:.2g}x the CPU"
    return text + f"; on the CPU all the time it would be {cpu_ratio * peer_share:.2g}x"


def latency_bound_row(run: dict[str, Any], settings: dict[str, Any]) -> tuple[str, str, str, str]:
    """Backpressure on: did latency behind node A stay near ``overload_lag`` at every step?"""
    bound = 2 * settings["overload_lag"] * 1000
    worst = max(run["steps"], key=lambda st: st["after_accept_ms"].get("p99", 0))
    p99 = worst["after_accept_ms"].get("p99", 0)
    gate = worst.get("a_saw_overload_percent")
    why = ""
    if p99 > bound:
        pushed = worst["refused"] + worst["skipped"]
        why = (
            f"at {worst['offered_per_second']:g}/s node A held the publisher back ({pushed} "
            f"refused or held back; it saw node B overloaded {percent_text(gate)} of the "
            f"step), yet what it accepted waited {fmt(p99)} ms (p99) behind node B, which "
            f"delivered {fmt(worst['delivered_per_second'])} publications/s at "
            f"{worst.get('node_b_cpu_percent', '?')} % CPU"
        )
        lag = worst.get("b_reported_lag_ms")
        if lag is not None and lag < p99:
            why += (
                f"; B reported at most {fmt(lag)} ms of lag (what the gate follows): most of "
                "the wait is not in the lag B measures, so the gate opens while publications "
                "still queue (where exactly was not profiled in this run)"
            )
        else:
            why += "; where the wait is was not profiled in this run"
    return (
        f"latency bounded with backpressure on: p99 after node A's answer ≤ "
        f"2 x overload_lag ({fmt(bound)} ms) at every step",
        f"worst {fmt(p99)} ms at {worst['offered_per_second']:g}/s",
        met(p99 <= bound),
        why,
    )


def percent_text(value: float | None) -> str:
    return "an unknown share" if value is None else f"{value:g} %"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{fmt(value)} ms"


def exact_ratios(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    """pulsewire / peer of hub_peers' headline figures, unrounded."""
    import hub_peers

    servers = result["servers"]
    ours = servers.get("pulsewire")
    out: dict[str, dict[str, float]] = {}
    for name in PEERS[1:]:
        peer = servers.get(name)
        if ok(ours) and ok(peer):
            assert ours is not None and peer is not None
            out[name] = {
                key: figure(ours) / figure(peer)
                for key, figure in hub_peers.RATIOS.items()
                if figure(peer)
            }
    return out


def met(good: bool) -> str:
    return "met" if good else "**missed**"


def bounded(run: dict[str, Any], settings: dict[str, Any]) -> str:
    """Above the sustainable rate: was the publisher pushed back, and latency bounded?"""
    above = [s for s in run["steps"] if s["offered_per_second"] > run["sustainable_per_second"]]
    if not above:
        return "never overloaded"
    pushed = sum(s["refused"] + s["skipped"] for s in above)
    worst = max(s["latency_ms"].get("max", 0) for s in above)
    undelivered = sum(s["undelivered"] for s in above)
    text = f"above it: {pushed} refused or held back, worst latency {fmt(worst / 1000, 1)} s"
    if undelivered:
        text += f", {undelivered} not delivered by the end"
    if run.get("stopped"):
        text += "; stepping stopped (backlog)"
    return text


def cross_node_section(bp: dict[str, Any] | None) -> list[str]:
    lines = ["## Across nodes: a rate-limited publisher and backpressure", ""]
    if not bp:
        return [*lines, "No `backpressure.json` in this run.", ""]
    s = bp["settings"]
    rates = ", ".join(f"{r:g}" for r in s["rates"])
    sampled = (
        f"{s['sampled']} sampled subscribers (spread over the subscription order; the others "
        "only count what they get, so that the driver keeps up)"
        if "sampled" in s
        else "the S subscribers"
    )
    lines += [
        f"`{bp.get('command', 'benchmarks/backpressure.py')}`, {bp['date']}. A private "
        f"redis-server, node A and node B on it, {s['subscribers']:,} subscribers on B in "
        f"one channel / room (B's fan-out is the bottleneck), a publisher on A "
        f"(`POST /api/publish` over {s['in_flight']} keep-alive connections: at most "
        f"{s['in_flight']} publications in flight) offering {rates} publications/s, "
        f"{s['step_seconds']:g} s each, back to back. *Accepted*: answered 200; *refused*: "
        f"error 115 (backpressure); *skipped*: still waiting for a free connection when the "
        "step ended (the publisher was held back); *delivered/s*: deliveries that arrived at "
        "B's subscribers during the step, over S; latency: from the publisher's send until "
        f"the last of {sampled} had it, over the step's accepted publications "
        "(*undelivered*: not there by the end of the drain). Stepping stops once the newest "
        f"delivery is more than {s['give_up_ms'] / 1000:g} s late. Backpressure on: "
        f"`--overload-lag {s['overload_lag']:g} --overload-wait {s['overload_wait']:g}`; off: "
        "`--overload-lag 0`.",
        "",
        "| run | sustainable rate | its p99 | most delivered/s | refused | held back "
        "| worst latency | other CPU, load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, r in bp["runs"].items():
        if not ok(r):
            lines.append(f"| {RUN_LABELS.get(name, name)} | not run: {r.get('reason')} |||||||")
            continue
        steps = r["steps"]
        worst = max(st["latency_ms"].get("max", 0) for st in steps)
        lines.append(
            f"| {RUN_LABELS.get(name, name)} | {r['sustainable_per_second']:g}/s "
            f"| {ms(r['sustainable_p99_ms'])} | {fmt(r['saturation_delivered_per_second'])} "
            f"| {sum(st['refused'] for st in steps)} | {sum(st['skipped'] for st in steps)} "
            f"| {fmt(worst)} ms | {r['other_cpu_percent']} %, {r['loadavg_before']} |"
        )
    others = [r["other_cpu_percent"] for r in bp["runs"].values() if ok(r)]
    lines += [
        "",
        f"Sustainable: the highest step with every publication accepted and delivered and p99 "
        f"≤ {s['p99_bound_ms']:g} ms. The runs ran one after the other, and the CPU other "
        f"processes used during them ranged from {min(others, default=0):g} % to "
        f"{max(others, default=0):g} % of a core: that moves these numbers as much as the "
        "hubs' differences do (compare the steps' node B CPU).",
        "",
        *overload_summary(bp),
        *peer_ratios(bp),
        "### Per step",
        "",
        backpressure.markdown(bp),
    ]
    lines += [f"Note: {w}." for w in bp.get("warnings", [])]
    return [*lines, ""]


def overload_summary(bp: dict[str, Any]) -> list[str]:
    """What latency did past the highest rate both pulsewire runs kept up with."""
    off, on = bp["runs"].get("pulsewire-off"), bp["runs"].get("pulsewire-on")
    if not (ok(off) and ok(on)):
        return []
    assert off is not None and on is not None
    floor = min(off["sustainable_per_second"], on["sustainable_per_second"])

    def above(run: dict[str, Any]) -> list[dict[str, Any]]:
        return [st for st in run["steps"] if st["offered_per_second"] > floor]

    def p99s(run: dict[str, Any]) -> str:
        return ", ".join(
            f"{st['offered_per_second']:g}/s: {fmt(st['latency_ms'].get('p99'))} "
            f"({fmt(st.get('after_accept_ms', {}).get('p99'))}) ms"
            for st in above(run)
            if "p99" in st["latency_ms"]
        )

    pushed = sum(st["refused"] + st["skipped"] for st in above(on))
    return [
        f"Past {floor:g}/s, p99 by step (in parentheses: from node A's answer on) with "
        f"backpressure off: {p99s(off)}; on: {p99s(on)} ({pushed} publications refused or "
        "held back).",
        "",
    ]


def peer_ratios(bp: dict[str, Any]) -> list[str]:
    """pulsewire (off) against python-socketio at the first step's rate and at saturation."""
    ours, peer = bp["runs"].get("pulsewire-off"), bp["runs"].get("python-socketio")
    if not (ok(ours) and ok(peer)):
        return []
    assert ours is not None and peer is not None
    a, b = ours["steps"][0], peer["steps"][0]
    rows = [
        "pulsewire (backpressure off) against python-socketio, same driver:",
        "",
        "| | pulsewire | python-socketio | pulsewire / python-socketio |",
        "|---|---|---|---|",
    ]
    for label, key in (("p50", "p50"), ("p99", "p99")):
        x, y = a["latency_ms"].get(key), b["latency_ms"].get(key)
        rows.append(
            f"| latency at {a['offered_per_second']:g}/s, {label} | {fmt(x)} ms | {fmt(y)} ms "
            f"| {ratio(x, y)} |"
        )
    x, y = ours["saturation_delivered_per_second"], peer["saturation_delivered_per_second"]
    n = bp["settings"]["subscribers"]
    rows.append(
        f"| most publications/s delivered to {n:,} (deliveries/s) | {fmt(x)} ({x * n:,.0f}) "
        f"| {fmt(y)} ({y * n:,.0f}) | {ratio(x, y)} |"
    )

    def at_peak(run: dict[str, Any]) -> tuple[str, float | None, float | None]:
        step = run["steps"][run["saturation_step"] - 1]
        lat = step["latency_ms"]
        return f"{step['offered_per_second']:g}/s", lat.get("p50"), lat.get("p99")

    (rate_x, p50_x, p99_x), (rate_y, p50_y, p99_y) = at_peak(ours), at_peak(peer)
    rows.append(
        f"| latency p50 / p99 at that step (offered) | {fmt(p50_x)} / {fmt(p99_x)} ms "
        f"({rate_x}) | {fmt(p50_y)} / {fmt(p99_y)} ms ({rate_y}) | - (different rates) |"
    )
    return [*rows, ""]


def closed_loop_section(fanout: dict[str, Any] | None) -> list[str]:
    lines = ["## Across nodes: closed-loop throughput", ""]
    if not fanout:
        return [*lines, "No `hub_fanout.json` in this run.", ""]
    s = fanout["settings"]
    lines += [
        f"`benchmarks/fanout_hub.py`, {fanout['date']}: {s['publishers']} publisher "
        f"connections on node A, each keeping {s['window']} `publish` commands in flight on its "
        f"own channel, one subscriber per channel on node B, for {s['duration']:g} s.",
        "",
        "| channel | delivered / s | publish-to-receive p50 / p99 "
        "| CPU µs per publication: node A / node B / Redis | other CPU, load |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("plain", "without history"), ("hist", "with history (offsets)")):
        part = fanout["cross_node_redis"].get(name, {})
        lat = part.get("latency_ms", {})
        cpu = " / ".join(
            fmt(part.get(f"{node}_cpu_us_per_publication"))
            for node in ("node_a", "node_b", "redis")
        )
        lines.append(
            f"| {label} | {part.get('delivered_per_second', 0):,} | {fmt(lat.get('p50'))} / "
            f"{fmt(lat.get('p99'))} ms | {cpu} | {part.get('other_cpu_percent')} %, "
            f"{part.get('loadavg_before')} |"
        )
    return [*lines, ""]


def profile_section(profile: dict[str, Any] | None) -> list[str]:
    """Where the node's time goes while it fans out (benchmarks/profile_hub.py)."""
    lines = ["## Where the node's time goes", ""]
    if not profile:
        return [*lines, "No `hub_profile.json` in this run (`benchmarks/profile_hub.py`).", ""]
    n = profile["settings"]["subscribers"]
    shares = profile["percent_of_busy"]
    lines += [
        f"`{profile['command']}`, {profile['date']}: py-spy (`--native`) sampled "
        f"`pulsewire serve` for {profile['seconds']:g} s while it fanned {profile['rounds']} "
        f"publications out to {n:,} subscribers ({profile['busy_samples']:,} samples at work; "
        f"{profile['server_cpu_us_per_delivery']} µs of CPU per delivery; load "
        f"{profile['loadavg']}). Samples by the frame they were taken in:",
        "",
        "| where | share of the samples at work |",
        "|---|---|",
        *(f"| {where} | {share} % |" for where, share in shares.items()),
        "",
        "`write(2)` is libc's `write`: the kernel's TCP send, one per subscriber and batch. "
        "Over loopback the sending core also runs the receiving side's TCP processing, so it is "
        "the kernel work of both ends, which every server pays per delivery whatever its "
        "language. What is left to gain in pulsewire's own code is the other rows; more than "
        "that needs fewer system calls per delivery (several deliveries per write, as delivery "
        "does when a backlog builds up; io_uring) or more cores (several nodes or workers).",
        "",
        "The frames sampled most:",
        "",
        "| frame | share |",
        "|---|---|",
        *(f"| `{t['frame']}` | {t['percent_of_busy']} % |" for t in profile["top_leaves"][:8]),
        "",
    ]
    return lines


def reproduce() -> list[str]:
    return [
        "## Reproduce",
        "",
        "<!-- snippet: no-run -- about 20 minutes of benchmarks -->",
        "```sh",
        "make bench-hub",
        "```",
        "",
        "runs `benchmarks/hub_peers.py --subscribers N --client-procs 4 --out "
        "results/hub_peers_N.json` for N = 1,000, 5,000 and 10,000 (`HUB_SIZES`), "
        "`benchmarks/backpressure.py`, `benchmarks/fanout_hub.py`, "
        "`benchmarks/profile_hub.py --subscribers 10000`, then "
        "`benchmarks/hub_report.py`, which writes this page and its chart from "
        "`benchmarks/results/` (raw numbers, not committed). Each section above names the "
        "command of its run. The harnesses are described in `benchmarks/README.md`.",
        "",
    ]


def markdown(data: dict[str, Any]) -> str:
    lines = [
        *header(data),
        *targets_section(data),
        *fanout_section(data["peers"]),
        *cross_node_section(data["backpressure"]),
        *closed_loop_section(data["fanout"]),
        *profile_section(data.get("profile")),
        *reproduce(),
    ]
    return "\n".join(lines).rstrip() + "\n"


# ---------------------------------------------------------------------------- chart


def chart(data: dict[str, Any], path: Path) -> bool:
    """Fan-out by N per server, and latency against offered rate across nodes."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(2, 3, figsize=(13.2, 6.4), squeeze=False)
    panels = (
        (lambda r: r["first_receipt_ms"]["p50"], "First receipt, ms (p50, log, lower is better)"),
        (lambda r: r["last_receipt_ms"]["p50"], "Last receipt, ms (p50, log, lower is better)"),
        (lambda r: r["deliveries_per_second"] / 1000, "Deliveries/s, thousands (higher is better)"),
        (lambda r: r["memory_per_connection_kib"], "KiB per subscribed connection (lower)"),
        (lambda r: r["server_cpu_us_per_delivery"] * 100, "CPU ms per 100k deliveries (lower)"),
    )
    for i, (ax, (figure, title)) in enumerate(zip(axes.flat, panels, strict=False)):
        bars(ax, data["peers"], figure, title)
        if i < 2:  # python-socketio's receipts are 100x the others'
            ax.set_yscale("log")
    latency_panel(axes.flat[5], data["backpressure"])
    runs = [*data["peers"], data.get("backpressure")]
    dates = sorted(r["date"][:10] for r in runs if r)
    when = f", {dates[-1]}, one 2-core machine" if dates else ""
    fig.suptitle(f"Hub: pulsewire, python-socketio, Node Socket.IO (one driver){when}", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def bars(ax: Any, peers: list[dict[str, Any]], figure: Any, title: str) -> None:
    """Grouped bars: one group per N, one bar per server, value written above each bar."""
    width = 0.8 / len(PEERS)
    for j, name in enumerate(PEERS):
        for i, result in enumerate(peers):
            server = result["servers"].get(name)
            if not ok(server):
                continue
            value = figure(server)
            x = i + (j - (len(PEERS) - 1) / 2) * width
            ax.bar(x, value, width, color=COLORS[name], label=name if i == 0 else None)
            ax.text(x, value, fmt(value), ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(peers)), [f"{r['settings']['subscribers']:,}" for r in peers])
    ax.set_xlabel("subscribers", fontsize=7)
    ax.set_title(title, fontsize=9)
    ax.tick_params(labelsize=7)
    if peers:
        ax.legend(fontsize=6)


def latency_panel(ax: Any, bp: dict[str, Any] | None) -> None:
    """p99 publish-to-receive against offered rate, one line per run (log scale)."""
    ax.set_title("Across nodes: p99 latency, ms (log) by offered/s", fontsize=9)
    ax.tick_params(labelsize=7)
    if not bp:
        ax.axis("off")
        return
    for name, r in bp["runs"].items():
        if not ok(r):
            continue
        points = [
            (s["offered_per_second"], s["latency_ms"]["p99"])
            for s in r["steps"]
            if "p99" in s["latency_ms"]
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", color=RUN_COLORS[name], label=RUN_LABELS[name])
    bound = bp["settings"]["p99_bound_ms"]
    ax.axhline(bound, color="#adb5bd", linestyle="--", linewidth=0.8, label=f"{bound:g} ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    rates = bp["settings"]["rates"]
    ax.set_xticks(rates, [f"{r:g}" for r in rates])
    ax.minorticks_off()
    ax.set_xlabel(f"offered publications/s ({bp['settings']['subscribers']:,} subscribers)")
    ax.xaxis.label.set_size(7)
    ax.legend(fontsize=6)


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--results", type=Path, default=hub.RESULTS, help="results directory")
    parser.add_argument("--docs", type=Path, default=DOCS, help="where the page and chart go")
    args = parser.parse_args(argv)
    data = load(args.results)
    args.docs.mkdir(parents=True, exist_ok=True)
    (args.docs / "benchmarks-hub.md").write_text(markdown(data))
    drawn = chart(data, args.docs / "benchmarks-hub.png")
    print(f"written to {args.docs / 'benchmarks-hub.md'}" + (" and .png" if drawn else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
