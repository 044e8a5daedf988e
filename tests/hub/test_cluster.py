"""Two ``pulsewire serve`` processes on one engine act as one hub (Redis, and NATS).

Each node is a real subprocess of the ``pulsewire`` console script, on a free loopback port
(``--port 0``; the port is read from its ``listening on http://...`` line), with a config file
written here: a unique ``engine_prefix`` per engine, the same token secret and API key, the
namespaces below. The two nodes of an engine are started once for this module; every test
uses its own channels and users.

Scenarios: cross-node delivery (client and HTTP API publications, with and without history),
presence and join/leave across nodes, recovery on the *other* node after a dropped connection,
server-side disconnect / unsubscribe / send / subscribe of a user connected to the other
node (and a server-side subscription recovered there), and the node list of ``/api/info``.

Without the service (Redis at 127.0.0.1:6379, NATS with JetStream at 127.0.0.1:4222) the
engine's cases skip, and fail when ``CI=true``. The NATS cases also skip, with the reason,
while ``pulsewire.hub.engines.nats`` cannot be imported.

Two more tests (in-process nodes on the real engines, a publication or a subscription held
back to make a race deterministic) show bugs of the hub: see their docstrings. They drive the
hub one layer down (clients on fake transports, tests/hub/fakes.py): only the engine is real.

The process helpers (:func:`spawn_nodes`, :func:`stop_nodes`, :func:`http_json`...) are
reused by ``test_engine_faults.py``.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from .conftest import API_KEY, SECRET

pytestmark = pytest.mark.timeout(60)

HOST = "127.0.0.1"
REDIS_PORT = 6379
NATS_PORT = 4222
START_TIMEOUT = 30.0  # a busy 2-core machine takes ~2 s to import and start a node
_LISTENING = re.compile(rb"listening on http://127\.0\.0\.1:(\d+)/")

#: ``room``: everything on (history, presence, join/leave, client publishing);
#: ``live``: the same without history (the hub delivers locally, the engine to other nodes).
NAMESPACES_TOML = """
[namespaces.room]
presence = true
join_leave = true
history_size = 1000
history_ttl = 300
allow_publish = true

[namespaces.live]
presence = true
join_leave = true
allow_publish = true
"""


# ------------------------------------------------------------------------ node processes


def pulsewire_script() -> str:
    script = Path(sys.executable).with_name("pulsewire")
    if script.exists():
        return str(script)
    found = shutil.which("pulsewire")
    assert found, "the pulsewire console script is not installed"
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Node:
    """One ``pulsewire serve`` process."""

    name: str
    proc: subprocess.Popen[bytes]
    out_path: Path
    err_path: Path
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}/"

    def log(self) -> str:
        """What the node wrote to stderr (its log)."""
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""

    def alive(self) -> bool:
        return self.proc.poll() is None


def write_config(path: Path, *, name: str, engine: str, prefix: str, hub_extra: str = "") -> Path:
    path.write_text(
        f"""
[server]
host = "{HOST}"
drain_timeout = 1.0

[hub]
node_name = "{name}"
engine = "{engine}"
engine_prefix = "{prefix}"
token_hmac_secret = "{SECRET}"
api_key = "{API_KEY}"
presence_update_interval = 1.0
connect_timeout = 5.0
{hub_extra}
{NAMESPACES_TOML}
"""
    )
    return path


def spawn_nodes(
    directory: Path,
    *,
    engines: list[str],
    prefix: str,
    names: list[str],
    hub_extra: str = "",
    ports: list[int] | None = None,
) -> list[Node]:
    """Start one node per name (engine URL ``engines[i]``, port ``ports[i]`` or any free one)
    at once; wait for all to listen."""
    directory.mkdir(parents=True, exist_ok=True)
    nodes: list[Node] = []
    try:
        for i, (name, engine) in enumerate(zip(names, engines, strict=True)):
            config = write_config(
                directory / f"{name}.toml",
                name=name,
                engine=engine,
                prefix=prefix,
                hub_extra=hub_extra,
            )
            out_path, err_path = directory / f"{name}.out", directory / f"{name}.log"
            port = str(ports[i] if ports else 0)
            with open(out_path, "wb") as out, open(err_path, "wb") as err:
                proc = subprocess.Popen(
                    [pulsewire_script(), "serve", "--config", str(config), "--port", port],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                )
            nodes.append(Node(name, proc, out_path, err_path))
        deadline = time.monotonic() + START_TIMEOUT
        for node in nodes:
            while not node.port:
                match = _LISTENING.search(node.out_path.read_bytes())
                if match:
                    node.port = int(match.group(1))
                    break
                if not node.alive():
                    raise RuntimeError(
                        f"node {node.name} exited with {node.proc.returncode}:\n{node.log()}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"node {node.name} not listening in time:\n{node.log()}")
                time.sleep(0.02)
    except BaseException:
        stop_nodes(nodes)
        raise
    return nodes


def stop_nodes(nodes: list[Node]) -> None:
    """SIGTERM (the node drains in at most 1 s), then SIGKILL whatever is left."""
    for node in nodes:
        if node.alive():
            node.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 5.0
    for node in nodes:
        try:
            node.proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            node.proc.kill()
            node.proc.wait(5)


# ------------------------------------------------------------------------------- HTTP


async def http_json(
    port: int, method: str, path: str, body: Any = None, *, key: str | None = API_KEY
) -> tuple[int, Any]:
    """``(status, decoded JSON body)`` of one HTTP/1.1 request to a node."""
    payload = b"" if body is None else json.dumps(body).encode()
    lines = [
        f"{method} {path} HTTP/1.1",
        f"Host: {HOST}:{port}",
        "Connection: close",
        f"Content-Length: {len(payload)}",
    ]
    if body is not None:
        lines.append("Content-Type: application/json")
    if key is not None:
        lines.append(f"Authorization: apikey {key}")
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
    try:
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + payload)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = dict(h.lower().split(": ", 1) for h in header_lines if h)
        data = await asyncio.wait_for(reader.readexactly(int(headers["content-length"])), 5)
    finally:
        writer.close()
    return int(status_line.split(" ", 2)[1]), json.loads(data) if data else None


async def api(node: Node, method: str, params: dict[str, Any]) -> Any:
    """The ``result`` of an API call that must succeed."""
    status, body = await http_json(node.port, "POST", f"/api/{method}", params)
    assert status == 200, f"{node.name} /api/{method} {params}: {status} {body}"
    return body["result"]


async def health(node: Node) -> dict[str, Any]:
    status, body = await http_json(node.port, "GET", "/health", key=None)
    assert status == 200, body
    return body  # type: ignore[no-any-return]


async def eventually(
    check: Callable[[], Awaitable[bool] | bool],
    what: str | Callable[[], str],
    timeout: float = 8.0,
) -> None:
    """Poll ``check`` every 20 ms until it is true; fail after ``timeout`` seconds, saying
    ``what`` was awaited (a callable: computed then, e.g. to show the state reached)."""
    deadline = time.monotonic() + timeout
    while True:
        outcome = check()
        if not isinstance(outcome, bool):
            outcome = await outcome
        if outcome:
            return
        if time.monotonic() > deadline:
            text = what if isinstance(what, str) else what()
            raise AssertionError(f"timed out after {timeout} s waiting for {text}")
        await asyncio.sleep(0.02)


def pushes(client: Any, kind: str, channel: str) -> list[dict[str, Any]]:
    """Every push of ``kind`` in ``channel`` the client got so far (taken or not)."""
    return [m for m in client.log if m.get("push") == kind and m.get("channel") == channel]


def connect_result(client: Any) -> dict[str, Any]:
    """The result of the client's connect command (its first, id 1; its own join may come
    before it)."""
    return next(m["result"] for m in client.log if m.get("id") == 1)  # type: ignore[no-any-return]


def publication_data(client: Any, channel: str) -> list[Any]:
    return [m["data"] for m in pushes(client, "publication", channel)]


# ------------------------------------------------------------------------------ services


def service_missing(message: str) -> None:
    """Skip, or fail under CI (where every service must be there)."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def port_answers(port: int, probe: bytes | None, expect: bytes) -> bool:
    try:
        with socket.create_connection((HOST, port), 1.0) as sock:
            sock.settimeout(1.0)
            if probe:
                sock.sendall(probe)
            return sock.recv(64).startswith(expect)
    except OSError:
        return False


def redis_keys_cleanup(port: int, prefix: str) -> None:
    import redis

    client = redis.Redis(host=HOST, port=port, socket_timeout=2)
    try:
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    except redis.RedisError:
        pass
    finally:
        client.close()


async def _nats_cleanup(prefix: str) -> None:
    import nats

    nc = await nats.connect(f"nats://{HOST}:{NATS_PORT}", connect_timeout=2)
    try:
        jsm = nc.jsm()
        for info in await jsm.streams_info():
            if info.config.name and info.config.name.startswith(f"{prefix}_"):
                await jsm.delete_stream(info.config.name)
    finally:
        await nc.close()


def nats_streams_cleanup(prefix: str) -> None:
    try:
        asyncio.run(asyncio.wait_for(_nats_cleanup(prefix), 10))
    except Exception as exc:  # cleanup only: don't hide the test's own outcome
        print(f"NATS cleanup of {prefix}_* failed: {exc!r}", file=sys.stderr)


def engine_url(kind: str) -> str:
    """The engine URL for ``kind``, or skip/fail when it cannot be used here."""
    if kind == "redis":
        if not port_answers(REDIS_PORT, b"PING\r\n", b"+PONG"):
            service_missing(f"Redis not reachable at {HOST}:{REDIS_PORT}")
        return f"redis://{HOST}:{REDIS_PORT}/0"
    try:
        importlib.import_module("pulsewire.hub.engines.nats")
    except Exception as exc:
        pytest.skip(f"the NATS engine is not importable yet: {exc!r}")
    if not port_answers(NATS_PORT, None, b"INFO "):
        service_missing(f"NATS not reachable at {HOST}:{NATS_PORT}")
    return f"nats://{HOST}:{NATS_PORT}"


# ------------------------------------------------------------------------------ fixtures


class TwoNodes:
    """``a`` and ``b``: the first two of ``nodes``."""

    nodes: list[Node]

    @property
    def a(self) -> Node:
        return self.nodes[0]

    @property
    def b(self) -> Node:
        return self.nodes[1]


@dataclass
class Cluster(TwoNodes):
    kind: str
    prefix: str
    nodes: list[Node] = field(default_factory=list)


@pytest.fixture(scope="module", params=["redis", "nats"])
def cluster(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    kind = request.param
    url = engine_url(kind)
    prefix = f"pwc-{uuid.uuid4().hex[:10]}"
    directory = tmp_path_factory.mktemp(f"cluster-{kind}")
    names = [f"{prefix}-a", f"{prefix}-b"]
    nodes = spawn_nodes(directory, engines=[url, url], prefix=prefix, names=names)
    try:
        yield Cluster(kind, prefix, nodes)
        for node in nodes:
            assert node.alive(), f"node {node.name} died:\n{node.log()}"
            assert "Traceback" not in node.log(), f"node {node.name} logged:\n{node.log()}"
    finally:
        stop_nodes(nodes)
        if kind == "redis":
            redis_keys_cleanup(REDIS_PORT, prefix)
        else:
            nats_streams_cleanup(prefix)


def user(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:6]}"


# --------------------------------------------------------------------------------- tests


async def test_both_nodes_are_healthy_and_listed_by_api_info(cluster: Cluster) -> None:
    names = {node.name for node in cluster.nodes}
    for node in cluster.nodes:
        state = await health(node)
        assert state["status"] == "ok" and state["node"] == node.name
        assert state["engine"] == cluster.kind and state["engine_available"] is True

    async def both_listed(node: Node) -> bool:
        info = await api(node, "info", {})
        assert info["node"] == node.name
        return set(info["nodes"]) >= names

    for node in cluster.nodes:
        await eventually(lambda node=node: both_listed(node), f"{node.name} to list both nodes")
        nodes = (await api(node, "info", {}))["nodes"]
        for name in names:
            assert nodes[name]["name"] == name
            assert nodes[name]["engine"] == cluster.kind
            assert isinstance(nodes[name]["sessions"], int)


@pytest.mark.parametrize("namespace", ["room", "live"])
async def test_cross_node_delivery(
    cluster: Cluster, hub_client: Any, uniq: Any, namespace: str
) -> None:
    """Publications by a client on B, by B's API and by A's API reach the subscribers of
    both nodes, once each; with history, in the same offset order everywhere."""
    a, b = cluster.a, cluster.b
    channel = uniq(namespace)
    on_a = [await hub_client(a, user("ua")) for _ in range(2)]
    publisher = await hub_client(b, "publisher-b")
    on_b = [publisher, await hub_client(b, user("ub"))]
    clients = on_a + on_b
    results = [await client.subscribe(channel) for client in clients]
    history = namespace == "room"
    if history:
        assert all(r["recoverable"] and r["epoch"] == results[0]["epoch"] for r in results)
    else:
        assert results == [{}] * 4

    positions = [await publisher.ok("publish", {"channel": channel, "data": {"n": 1}})]
    tags = {"source": "api-b"}
    positions.append(await api(b, "publish", {"channel": channel, "data": {"n": 2}, "tags": tags}))
    positions.append(await api(a, "publish", {"channel": channel, "data": {"n": 3}}))
    # a marker published by each node: once both arrived, anything duplicated would have too
    await api(a, "publish", {"channel": channel, "data": "end-a"})
    await api(b, "publish", {"channel": channel, "data": "end-b"})
    for client in clients:
        await eventually(
            lambda c=client: {"end-a", "end-b"} <= set(map(str, publication_data(c, channel))),
            "the end markers",
        )
    for client in clients:
        pubs = [p for p in pushes(client, "publication", channel) if isinstance(p["data"], dict)]
        by_n = {p["data"]["n"]: p for p in pubs}
        assert sorted(p["data"]["n"] for p in pubs) == [1, 2, 3], pubs  # each exactly once
        assert by_n[1]["info"]["user"] == "publisher-b"
        assert by_n[1]["info"]["client"] == publisher.client_id
        assert by_n[2]["tags"] == tags and "info" not in by_n[2]
        assert "info" not in by_n[3]
        markers = [d for d in publication_data(client, channel) if isinstance(d, str)]
        assert sorted(markers) == ["end-a", "end-b"]
        if history:
            # offset order, the same on every node, and the offsets the publishers were given
            assert [p["data"]["n"] for p in pubs] == [1, 2, 3]
            assert [p["offset"] for p in pubs] == [pos["offset"] for pos in positions]
            assert [p["offset"] for p in pubs] == [1, 2, 3]
            all_offsets = [p["offset"] for p in pushes(client, "publication", channel)]
            assert all_offsets == [1, 2, 3, 4, 5]
        else:
            assert positions == [{}, {}, {}]
            assert all("offset" not in p for p in pubs)


async def test_presence_and_join_leave_across_nodes(
    cluster: Cluster, hub_client: Any, uniq: Any
) -> None:
    a, b = cluster.a, cluster.b
    channel = uniq("room")
    alice = await hub_client(a, user("alice"))
    await alice.subscribe(channel)
    bob_name = user("bob")
    bob = await hub_client(b, bob_name)
    await bob.subscribe(channel)

    def events(client: Any, kind: str, target: Any) -> list[dict[str, Any]]:
        return [p for p in pushes(client, kind, channel) if p["info"]["client"] == target.client_id]

    # bob joined on B: alice hears it on A (with bob's client info)
    await eventually(lambda: events(alice, "join", bob) != [], "alice to see bob's join")
    (join,) = events(alice, "join", bob)
    assert join["info"]["user"] == bob_name

    carol = await hub_client(a, user("carol"))
    await carol.subscribe(channel)
    await eventually(lambda: events(bob, "join", carol) != [], "bob to see carol's join")

    expected = {alice.client_id, bob.client_id, carol.client_id}
    for client in (alice, bob):  # asked on either node
        reply = await client.ok("presence", {"channel": channel})
        assert set(reply["clients"]) == expected
        assert reply["clients"][bob.client_id]["user"] == bob_name
        stats = await client.ok("presence_stats", {"channel": channel})
        assert stats == {"num_clients": 3, "num_users": 3}
    for node in (a, b):
        assert set((await api(node, "presence", {"channel": channel}))["clients"]) == expected
        stats = await api(node, "presence_stats", {"channel": channel})
        assert stats == {"num_clients": 3, "num_users": 3}

    # bob leaves (connection closed on B): A's subscribers hear it, and presence forgets him
    await bob.close()
    for client in (alice, carol):
        await eventually(lambda c=client: events(c, "leave", bob) != [], "bob's leave on A")
        assert len(events(client, "leave", bob)) == 1

    async def bob_gone() -> bool:
        clients = (await api(a, "presence", {"channel": channel}))["clients"]
        return set(clients) == {alice.client_id, carol.client_id}

    await eventually(bob_gone, "bob to leave the presence")
    # carol unsubscribes on A: seen on A; and B's view of presence agrees
    await carol.ok("unsubscribe", {"channel": channel})
    await eventually(lambda: events(alice, "leave", carol) != [], "carol's leave")
    clients = (await api(b, "presence", {"channel": channel}))["clients"]
    assert set(clients) == {alice.client_id}


async def test_recovery_on_the_other_node(cluster: Cluster, hub_client: Any, uniq: Any) -> None:
    """Subscribed on A, connection lost, publications made on B meanwhile, reconnect to B
    with recover: exactly the missed ones, in order, then live ones, no duplicates."""
    a, b = cluster.a, cluster.b
    channel = uniq("room")
    name = user("rita")
    poster = await hub_client(b, user("poster"))
    await poster.subscribe(channel)
    await api(a, "publish", {"channel": channel, "data": "before-0"})

    rita = await hub_client(a, name)
    first = await rita.subscribe(channel)
    assert first["offset"] == 1 and first["recoverable"] is True
    epoch = first["epoch"]
    await api(b, "publish", {"channel": channel, "data": "seen-1"})
    seen = await rita.wait_push("publication", channel)
    assert (seen["data"], seen["offset"]) == ("seen-1", 2)

    rita.ws.abort()  # the network breaks: no close handshake
    await rita.wait_closed()
    missed = []
    for i in range(3):
        missed.append(f"api-{i}")
        await api(b, "publish", {"channel": channel, "data": f"api-{i}"})
        missed.append(f"client-{i}")
        await poster.ok("publish", {"channel": channel, "data": f"client-{i}"})

    back = await hub_client(b, name)
    result = await back.subscribe(channel, recover=True, offset=seen["offset"], epoch=epoch)
    assert result["recovered"] is True
    assert result["epoch"] == epoch
    assert result["offset"] == 8
    assert [p["data"] for p in result["publications"]] == missed
    assert [p["offset"] for p in result["publications"]] == list(range(3, 9))
    assert result["publications"][1]["info"]["client"] == poster.client_id

    await api(a, "publish", {"channel": channel, "data": "live-a"})
    await api(b, "publish", {"channel": channel, "data": "live-b"})
    live = await back.publications(channel, 2)
    assert [(p["data"], p["offset"]) for p in live] == [("live-a", 9), ("live-b", 10)]
    await back.sync()
    await api(a, "publish", {"channel": channel, "data": "end"})
    await eventually(lambda: publication_data(back, channel)[-1:] == ["end"], "the end marker")
    assert publication_data(back, channel) == ["live-a", "live-b", "end"]  # no duplicates

    # recovery from a position in the future or of another epoch is refused, not faked
    other = await hub_client(a, name)
    result = await other.subscribe(channel, recover=True, offset=8, epoch="not-the-epoch")
    assert result["recovered"] is False and result["publications"] == []
    assert (result["epoch"], result["offset"]) == (epoch, 11)


async def test_server_side_disconnect_of_a_user_on_the_other_node(
    cluster: Cluster, hub_client: Any, uniq: Any
) -> None:
    a, b = cluster.a, cluster.b
    channel = uniq("room")
    victim_name = user("victim")
    victims = [await hub_client(b, victim_name) for _ in range(2)]
    bystander = await hub_client(b, user("bystander"))
    watcher = await hub_client(a, user("watcher"))
    for client in (*victims, bystander, watcher):
        await client.subscribe(channel)

    status, body = await http_json(
        a.port, "POST", "/api/disconnect", {"user": victim_name, "code": 4509, "reason": "bye"}
    )
    assert (status, body) == (200, {"result": {}})
    for victim in victims:
        assert await victim.wait_closed() == (4509, "bye")
    await bystander.sync()
    await watcher.sync()
    assert not bystander.closed and not watcher.closed
    for victim in victims:  # their subscriptions ended on B, seen from A
        await eventually(
            lambda v=victim: any(
                p["info"]["client"] == v.client_id for p in pushes(watcher, "leave", channel)
            ),
            "the victim's leave on A",
        )
    clients = (await api(a, "presence", {"channel": channel}))["clients"]
    assert set(clients) == {bystander.client_id, watcher.client_id}

    # the default code (4502, don't reconnect)
    again = await hub_client(b, victim_name)
    await api(a, "disconnect", {"user": victim_name})
    assert await again.wait_closed() == (4502, "disconnected by the server")


async def test_server_side_unsubscribe_and_send_across_nodes(
    cluster: Cluster, hub_client: Any, uniq: Any
) -> None:
    a, b = cluster.a, cluster.b
    channel = uniq("live")
    name = user("sam")
    sam = await hub_client(b, name)
    other = await hub_client(b, user("other"))
    for client in (sam, other):
        await client.subscribe(channel)
    await api(a, "unsubscribe", {"user": name, "channel": channel})
    push = await sam.wait_push("unsubscribe", channel)
    assert (push["code"], push["resubscribe"]) == (2000, False)
    await api(a, "send", {"user": name, "data": {"to": "user"}})
    await api(a, "send", {"client": sam.client_id, "data": "to-client"})
    messages = [await sam.wait_push("message") for _ in range(2)]
    assert [m["data"] for m in messages] == [{"to": "user"}, "to-client"]
    await api(a, "publish", {"channel": channel, "data": "after"})
    assert (await other.wait_push("publication", channel))["data"] == "after"
    await sam.sync()
    assert publication_data(sam, channel) == []
    assert [m["data"] for m in other.log if m.get("push") == "message"] == []


async def test_server_side_subscribe_across_nodes(
    cluster: Cluster, hub_client: Any, uniq: Any
) -> None:
    """/api/subscribe on A subscribes the user's connections on A and B (a subscribe push,
    then publications); /api/unsubscribe on A ends them."""
    a, b = cluster.a, cluster.b
    channel, one = uniq("room"), uniq("live")
    name = user("tia")
    on_a, on_b = await hub_client(a, name), await hub_client(b, name)
    await api(a, "subscribe", {"user": name, "channel": channel})
    for client in (on_a, on_b):
        push = await client.wait_push("subscribe", channel)
        assert (push["recoverable"], push["offset"]) == (True, 0)
    await api(b, "publish", {"channel": channel, "data": "x"})
    for client in (on_a, on_b):
        assert (await client.wait_push("publication", channel))["data"] == "x"
    await api(a, "subscribe", {"user": name, "channel": one, "client": on_b.client_id})
    assert await on_b.wait_push("subscribe", one) == {"push": "subscribe", "channel": one}
    await api(a, "unsubscribe", {"user": name, "channel": channel})
    for client in (on_a, on_b):
        push = await client.wait_push("unsubscribe", channel)
        assert (push["code"], push["resubscribe"]) == (2000, False)
    await on_a.sync()
    assert pushes(on_a, "subscribe", one) == []


async def test_server_side_subscription_recovers_on_the_other_node(
    cluster: Cluster, hub_client: Any, make_token: Any, uniq: Any
) -> None:
    channel = uniq("room")
    token = make_token(user("uma"), subs=[channel])
    first = await hub_client(cluster.a, token=token)
    sub = connect_result(first)["server_subs"][channel]
    await api(cluster.a, "publish", {"channel": channel, "data": 1})
    last = (await first.wait_push("publication", channel))["offset"]
    await first.close()
    for n in (2, 3):
        await api(cluster.a, "publish", {"channel": channel, "data": n})
    position = {"recover": True, "offset": last, "epoch": sub["epoch"]}
    second = await hub_client(cluster.b, token=token, params={"server_subs": {channel: position}})
    result = connect_result(second)["server_subs"][channel]
    assert result["recovered"] is True
    assert [p["data"] for p in result["publications"]] == [2, 3]


# ---------------------------------------------- races between live delivery and history
#
# In-process nodes on the real engines, with a publication held back between the engine and
# the hub (as a busy node or a slow pub/sub connection does), to make two races of the hub
# deterministic. Both lose publications silently for subscribers that did nothing wrong.


@pytest.fixture(params=["redis", "nats"])
def engine_spec(request: pytest.FixtureRequest) -> Iterator[tuple[str, str]]:
    """(engine URL, unique prefix) for an in-process hub; its data is deleted afterwards."""
    kind = request.param
    url = engine_url(kind)
    prefix = f"pwr-{uuid.uuid4().hex[:10]}"
    yield url, prefix
    if kind == "redis":
        redis_keys_cleanup(REDIS_PORT, prefix)
    else:
        nats_streams_cleanup(prefix)


async def test_a_new_subscriber_does_not_make_the_node_skip_publications_in_flight(
    engine_spec: tuple[str, str], local_hub: Any, local_client: Any, hub_config: Any, uniq: Any
) -> None:
    """BUG (hub.py, ``Hub._recover``): a second subscriber's history read moves the node's
    position past publications still on their way from the engine; when they arrive,
    ``on_publication`` drops them as already delivered, and the first subscriber never gets
    them (it sees offset 1, then 4)."""
    from pulsewire.hub.engines import create_engine

    url, prefix = engine_spec
    hub = await local_hub(
        hub_config(engine=url, engine_prefix=prefix),
        engine=create_engine(url, prefix=prefix),
    )
    channel = uniq("chat")
    first = await local_client(hub, "first")
    assert (await first.subscribe(channel))["offset"] == 0
    await hub.publish(channel, "one")
    assert (await first.wait_push("publication", channel))["offset"] == 1

    held: list[tuple[str, Any]] = []
    deliver = hub.on_publication
    hub.on_publication = lambda name, pub: held.append((name, pub))  # type: ignore[method-assign]
    await hub.publish(channel, "two")
    await hub.publish(channel, "three")
    await eventually(lambda: len(held) == 2, "the engine to hand over two publications")
    second = await local_client(hub, "second")
    assert (await second.subscribe(channel))["offset"] == 3
    hub.on_publication = deliver  # type: ignore[method-assign]
    for name, pub in held:  # the publications in flight reach the hub now
        deliver(name, pub)
    await hub.publish(channel, "four")
    await second.wait_push("publication", channel)
    await first.sync()
    assert [(p["data"], p["offset"]) for p in pushes(first, "publication", channel)] == [
        ("one", 1),
        ("two", 2),
        ("three", 3),
        ("four", 4),
    ]


async def test_a_concurrent_subscriber_is_answered_only_once_the_node_receives_the_channel(
    engine_spec: tuple[str, str], local_hub: Any, local_client: Any, hub_config: Any, uniq: Any
) -> None:
    """BUG (hub.py, ``Hub._add_subscriber``): while the first subscriber of a node waits for
    ``engine.subscribe``, a second one does not wait: it reads history and is answered before
    the node receives the channel, so a publication made meanwhile never reaches it."""
    from pulsewire.hub.engines import create_engine

    url, prefix = engine_spec
    engine = create_engine(url, prefix=prefix)
    hub = await local_hub(hub_config(engine=url, engine_prefix=prefix), engine=engine)
    channel = uniq("chat")
    gate, waiting = asyncio.Event(), asyncio.Event()
    subscribe = engine.subscribe

    async def slow_subscribe(name: str) -> None:  # a slow engine (or a busy Redis)
        waiting.set()
        await gate.wait()
        await subscribe(name)

    engine.subscribe = slow_subscribe  # type: ignore[method-assign]
    first, second = await local_client(hub, "first"), await local_client(hub, "second")
    first_id = await first.send("subscribe", {"channel": channel})
    await asyncio.wait_for(waiting.wait(), 5)  # the first one now waits in engine.subscribe
    second_id = await second.send("subscribe", {"channel": channel})
    await asyncio.sleep(0.2)  # time for the second to go as far as it goes (a history read)
    await hub.publish(channel, "meanwhile")
    gate.set()
    replies = [await first.reply(first_id), await second.reply(second_id)]
    await hub.publish(channel, "after")
    for client, reply in zip((first, second), replies, strict=True):
        start = reply["result"]["offset"]
        await eventually(
            lambda c=client: "after" in publication_data(c, channel), "the last publication"
        )
        offsets = [p["offset"] for p in pushes(client, "publication", channel)]
        assert offsets == list(range(start + 1, 3)), (client is second, start, offsets)
