"""``pulsewire subscribe``: usage errors, refusals, waiting for a hub, ``--since``/``--count``.

One ``pulsewire serve`` node on the in-memory engine for the module (tests/hub/test_cluster.py's
config: the ``room`` namespace keeps history and lets clients publish); the command runs
in-process through :func:`pulsewire.cli.main` where it ends by itself, as a subprocess where a
signal ends it. Surviving a node restart is in tests/client/test_cross_node.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pulsewire.client
from client.test_cross_node import SCRIPT, TIMEOUT, Process, subscribe_cli, ws_url
from hub.conftest import encode_token
from hub.test_cluster import Node, api, free_port, spawn_nodes, stop_nodes
from pulsewire.cli import main

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    prefix = f"pwsub-{uuid.uuid4().hex[:8]}"
    directory = tmp_path_factory.mktemp("subscribe-cli")
    (started,) = spawn_nodes(directory, engines=["memory"], prefix=prefix, names=[prefix])
    try:
        yield started
    finally:
        stop_nodes([started])


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def channel() -> str:
    return f"room:{uuid.uuid4().hex[:12]}"


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], list[str]]:
    """``pulsewire subscribe ARGS`` in-process: (exit status, stdout lines, stderr lines)."""
    try:
        status = main(["subscribe", *args])
    except SystemExit as exc:  # argparse
        status = int(exc.code or 0)
    out, err = capsys.readouterr()
    return status, out.splitlines(), err.splitlines()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["http://127.0.0.1:1/", "room:x"],
            "expected a ws:// or wss:// URL, got 'http://127.0.0.1:1/'",
        ),
        (
            ["ws://h/", "room:x", "--url", "tcp://h"],
            "expected a ws:// or wss:// URL, got 'tcp://h'",
        ),
        (["ws://h/", "room:x", "--since", "5"], "expected OFFSET:EPOCH"),
        (["ws://h/", "room:x", "--since", "x:abc"], "expected OFFSET:EPOCH"),
        (["ws://h/", "room:x", "--count", "0"], "expected a positive integer, got '0'"),
        (
            ["ws://h/", "room:x", "--token-file", "/nonexistent/t"],
            "cannot read --token-file /nonexistent/t: no such file",
        ),
        (["ws://h/", "room:x", "--token", "t", "--token-file", "f"], "not allowed with"),
        (["ws://h/"], "the following arguments are required: CHANNEL"),
    ],
)
def test_bad_usage_exits_2_saying_why(
    capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    status, out, err = run(capsys, *args)
    assert status == 2
    assert out == []
    assert len(err) == 1 and err[0].startswith("pulsewire subscribe: ") and message in err[0], err


def test_an_empty_token_file_is_bad_usage(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    empty = tmp_path / "token"
    empty.write_text("\n")
    assert run(capsys, "ws://h/", "room:x", "--token-file", str(empty))[0] == 2


@pytest.mark.parametrize(
    ("token", "message"),
    [
        ("not-a-jwt", "connection refused: invalid token: "),
        (encode_token("u", secret="another-secret-0123456789abcdef-0123"), "invalid token"),
        (None, "connection refused: a connection token is required (4503)"),
    ],
)
def test_a_token_refused_for_good_exits_1_with_the_reason(
    capsys: pytest.CaptureFixture[str], node: Node, token: str | None, message: str
) -> None:
    args = [ws_url(node.port), channel()] + (["--token", token] if token else [])
    status, out, err = run(capsys, *args)
    assert status == 1
    assert out == []
    assert len(err) == 1 and message in err[0], err


def test_a_refused_subscription_exits_1_with_the_reason(
    capsys: pytest.CaptureFixture[str], node: Node
) -> None:
    status, out, err = run(capsys, ws_url(node.port), "nope:x", "--token", encode_token("u"))
    assert status == 1 and out == []
    assert err[-1] == (
        "pulsewire subscribe: subscribing to nope:x failed: unknown namespace 'nope' (102)"
    )


def test_since_count_and_msgpack(
    capsys: pytest.CaptureFixture[str], node: Node, tmp_path: Path
) -> None:
    """From history after ``--since``, with ``info`` and ``tags``; exits 0 after ``--count``."""
    ch = channel()

    async def publish() -> tuple[str, str]:
        async with pulsewire.client.connect(ws_url(node.port), token=encode_token("ann")) as c:
            await c.subscribe(ch)  # the hub lets subscribers publish
            await c.publish(ch, "skipped")
            await c.publish(ch, {"by": "client"})
            client_id = c.id or ""
        result = await api(node, "publish", {"channel": ch, "data": [1], "tags": {"k": "v"}})
        await api(node, "publish", {"channel": ch, "data": "not printed"})
        return client_id, result["epoch"]

    client_id, epoch = asyncio.run(publish())
    token_file = tmp_path / "token"
    token_file.write_text(encode_token("reader") + "\n")
    status, out, err = run(
        capsys,
        ws_url(node.port),
        ch,
        "--token-file",
        str(token_file),
        "--since",
        f"1:{epoch}",
        "--count",
        "2",
        "--msgpack",
    )
    assert status == 0, err
    info = {"client": client_id, "user": "ann"}
    assert out == [  # compact, keys in this order
        compact({"channel": ch, "offset": 2, "data": {"by": "client"}, "info": info}),
        compact({"channel": ch, "offset": 3, "data": [1], "tags": {"k": "v"}}),
    ]
    assert any(f"subscribed to {ch} at " in line and "recovered true" in line for line in err)


async def test_waits_for_a_hub_not_up_yet_then_exits_0_on_sigterm(tmp_path: Path) -> None:
    """Started before the hub: says once that it cannot connect (not once per attempt),
    connects when the hub is up, prints, and exits 0 on SIGTERM."""
    port = free_port()
    ch = channel()
    process = await subscribe_cli(ws_url(port), ch, "--token", encode_token("early"))
    nodes: list[Node] = []
    try:
        await process.wait_line(
            f"cannot connect to {ws_url(port)}: connection refused, retrying with backoff$",
            TIMEOUT,
        )
        nodes += await asyncio.to_thread(
            spawn_nodes, tmp_path, engines=["memory"], prefix="late", names=["late"], ports=[port]
        )
        await process.wait_line(f"subscribed to {ch} at 0:", TIMEOUT)
        await api(nodes[0], "publish", {"channel": ch, "data": "hello"})
        await process.wait_line("hello", TIMEOUT, err=False)
        process.signal(signal.SIGTERM)
        assert await process.exit_status(TIMEOUT) == 0
    finally:
        if process.proc.returncode is None:
            process.proc.kill()
            await process.exit_status(TIMEOUT)
        stop_nodes(nodes)
    assert process.stdout == [compact({"channel": ch, "offset": 1, "data": "hello"})]
    assert [line.split(" (")[0] for line in process.stderr] == [
        f"pulsewire subscribe: cannot connect to {ws_url(port)}: connection refused, retrying"
        " with backoff",
        f"pulsewire subscribe: connected to {ws_url(port)}",
        f"pulsewire subscribe: subscribed to {ch} at 0:" + process.stderr[-1].split(":")[-1],
    ]


async def test_a_position_it_cannot_recover_from_is_said_on_stderr(node: Node) -> None:
    """``--since`` with an epoch the stream does not have: ``recovered false`` on stderr, then
    live publications; ``--count`` ends it with 0."""
    ch = channel()
    epoch = (await api(node, "publish", {"channel": ch, "data": "old"}))["epoch"]
    process = await subscribe_cli(
        ws_url(node.port), ch, "--token", encode_token("late"), "--since", "1:x", "--count", "1"
    )
    try:
        await process.wait_line(
            f"subscribed to {ch} at 1:{epoch}, recovered false: publications were missed$",
            TIMEOUT,
        )
        await api(node, "publish", {"channel": ch, "data": "new"})
        assert await process.exit_status(TIMEOUT) == 0
    finally:
        if process.proc.returncode is None:
            process.proc.kill()
            await process.exit_status(TIMEOUT)
    assert process.stdout == [compact({"channel": ch, "offset": 2, "data": "new"})]


@pytest.mark.parametrize(
    ("method", "message"),
    [
        ("unsubscribe", "unsubscribed from {ch}: unsubscribed by the server (2000)"),
        ("disconnect", "disconnected for good: disconnected by the server (4502)"),
    ],
)
async def test_ended_by_the_server_exits_1_saying_how(
    node: Node, method: str, message: str
) -> None:
    ch, user = channel(), f"u-{uuid.uuid4().hex[:8]}"
    process = await subscribe_cli(ws_url(node.port), ch, "--token", encode_token(user))
    try:
        await process.wait_line(f"subscribed to {ch} at 0:", TIMEOUT)
        await api(
            node,
            method,
            {"channel": ch, "user": user} if method == "unsubscribe" else {"user": user},
        )
        assert await process.exit_status(TIMEOUT) == 1
    finally:
        if process.proc.returncode is None:
            process.proc.kill()
            await process.exit_status(TIMEOUT)
    assert process.stderr[-1] == "pulsewire subscribe: " + message.format(ch=ch)
    assert process.stdout == []


async def test_an_expired_token_ends_it_and_a_token_file_is_read_again(
    node: Node, tmp_path: Path
) -> None:
    """``--token`` that expires: exit 1 saying so (reconnecting with it would be refused
    forever). ``--token-file``: read again to refresh, so a fresh token written there keeps
    the subscription going. (Tokens of 5 s: a busy machine takes seconds to start both.)"""
    ch = channel()
    token_file = tmp_path / "token"
    token_file.write_text(encode_token("filed", ttl=5))
    fixed = await subscribe_cli(ws_url(node.port), ch, "--token", encode_token("fixed", ttl=5))
    filed = await subscribe_cli(ws_url(node.port), ch, "--token-file", str(token_file))
    try:
        for process in (fixed, filed):
            await process.wait_line(f"subscribed to {ch} at 0:", TIMEOUT)
        token_file.write_text(encode_token("filed", ttl=3600))
        assert await fixed.exit_status(TIMEOUT) == 1
        assert fixed.stderr[-1] == (
            "pulsewire subscribe: token expired (4002): run again with a fresh --token"
        )
        await api(node, "publish", {"channel": ch, "data": "still here"})
        # refreshed at 90% of the ttl with the file's new token (or, on a machine too busy
        # for that, reconnected with it after 4002): with the old one it would not be here
        await filed.wait_line("still here", TIMEOUT, err=False)
        assert filed.proc.returncode is None
    finally:
        for process in (fixed, filed):
            if process.proc.returncode is None:
                process.proc.kill()
            await process.exit_status(TIMEOUT)


def doc_blocks() -> list[tuple[str, str]]:
    """``(language, text)`` of the code blocks of docs/client.md's ``pulsewire subscribe``."""
    doc = (Path(__file__).parents[2] / "docs" / "client.md").read_text()
    section = doc.split("## On the command line: `pulsewire subscribe`", 1)[1].split("\n## ")[0]
    return re.findall(r"^```(\w*)\n(.*?)^```$", section, re.S | re.M)


async def test_the_docs_example_runs_as_written() -> None:
    """docs/client.md's commands against ``pulsewire serve --demo`` (on a free port: the
    only change made to them) print what the page says (tests/docs only runs them)."""
    (_, token), (_, subscribe), (_, publish), (_, output), *_ = doc_blocks()
    port = free_port()

    def here(command: str) -> str:
        assert "127.0.0.1:8000" in command
        return command.replace("127.0.0.1:8000", f"127.0.0.1:{port}")

    async def start(*command: str) -> Process:
        return Process(
            await asyncio.create_subprocess_exec(
                *command,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,  # signals go to the whole group (bash and its child)
                env={
                    **os.environ,
                    "PATH": f"{Path(SCRIPT).parent}{os.pathsep}{os.environ['PATH']}",
                },
            )
        )

    hub = await start(SCRIPT, "serve", "--demo", "--port", str(port))
    printing = None
    try:
        await hub.listening()
        printing = await start("bash", "-c", here(token) + here(subscribe))
        await printing.wait_line("subscribed to chat:lobby at 0:", TIMEOUT)
        publisher = await start("bash", "-c", here(publish))
        assert await publisher.exit_status(TIMEOUT) == 0, publisher.output
        await printing.wait_line(".", TIMEOUT, err=False)
        os.killpg(printing.proc.pid, signal.SIGINT)
        assert await printing.exit_status(TIMEOUT) == 0, printing.output
        assert printing.stdout == output.splitlines()
    finally:
        for process in (hub, printing):
            if process is not None:
                process.kill_group()
                await process.exit_status(TIMEOUT)
