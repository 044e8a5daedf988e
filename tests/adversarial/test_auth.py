"""Issue #10's rows on rate limits, authentication, origins, tokens and hostile input, run
against real ``pulsewire serve`` / ``pulsewire echo`` processes at their default limits.

Each test runs the attack as the issue's table describes it from :data:`ATTACKER`, asserts
the refusal's code or status and its metric, keeps a probe client (another address) served
throughout and the RSS growth under the limit, and records its figures.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

import pytest

from security.conftest import read_response

from .conftest import (
    ADMIN_PASSWORD,
    API_KEY,
    ATTACKER,
    HOST,
    HUB_CONFIG,
    PROBE,
    WS_PATH,
    HttpAnswer,
    Node,
    WsClient,
    http,
    make_token,
    open_tcp,
    record,
    rss_watch,
)

pytestmark = pytest.mark.timeout(120)


async def keep_alive(port: int, requests: list[bytes], source: str = ATTACKER) -> list[HttpAnswer]:
    """``requests`` one after the other on one keep-alive connection."""
    reader, writer = await open_tcp(port, source)
    answers = []
    try:
        for raw in requests:
            writer.write(raw)
            answers.append(await read_response(reader))
    finally:
        writer.close()
    return answers


async def served_meanwhile(p: Any, rounds: int = 3) -> None:
    """Let the probe do ``rounds`` more rounds before the attack's block ends (a quick
    attack must not pass because the probe had no time to fail)."""
    target = p.rounds + rounds
    deadline = time.monotonic() + 30
    while p.rounds < target and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


def admin_request(port: int, password: str) -> bytes:
    token = base64.b64encode(f"admin:{password}".encode()).decode()
    return (
        f"GET /admin HTTP/1.1\r\nHost: {HOST}:{port}\r\nAuthorization: Basic {token}\r\n\r\n"
    ).encode()


def publish_request(key: str) -> bytes:
    body = json.dumps({"channel": "pub:x", "data": 1}).encode()
    return (
        f"POST /api/publish HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: apikey {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode() + body


async def attacker(n: Node, **options: Any) -> WsClient:
    return await WsClient.open(
        n.port, n.path, source=ATTACKER, subprotocol=n.subprotocol, **options
    )


# -------------------------------------------- row: 1,935 pings batched in one message


async def test_batched_pings_are_counted_one_by_one(node, probe) -> None:
    """The attacker connects and sends 1,935 pings in one message, 100 times over (under the
    front door's 200-connection burst per address): no ping runs (each message is over the
    200-command burst) and each session is closed 1008."""
    n = await node("serve")
    before = await n.metrics()
    batch = "\n".join(json.dumps({"id": i, "method": "ping"}) for i in range(2, 1937))
    sessions = ran = 0
    async with probe(n) as p, rss_watch(n) as rss:
        started = time.monotonic()
        while sessions < 100:
            client = await attacker(n)
            await client.connect()
            await client.send_text(batch)
            frame = await client.close_frame()
            assert (frame.close_code, frame.close_reason) == (1008, "rate limit exceeded")
            ran += sum(1 for m in client.pushes if m.get("id", 0) >= 2)
            await client.close()
            sessions += 1
        elapsed = time.monotonic() - started
    rss.check()
    after = await n.metrics()
    assert ran == 0
    assert after.delta(before, "pulsewire_rate_limited_total", policy="disconnect") == sessions
    assert after.delta(before, "pulsewire_commands_total", method="ping") == 0
    record(
        "batched_pings",
        commands_sent=sessions * 1935,
        commands_run=ran,
        commands_per_second_run=round(ran / elapsed, 1),
        **rss.figures(),
        **p.figures(),
    )


async def test_batched_pings_with_the_drop_policy_run_at_the_documented_rate(node, probe) -> None:
    """Under "drop" the attacker stays connected: over ~2 s of 50-ping batches every 10 ms,
    what ran stays within burst + rate x time (200 + 100/s); the rest is answered 111."""
    n = await node("serve", config=HUB_CONFIG.replace("[hub]", '[hub]\nrate_limit_policy = "drop"'))
    before = await n.metrics()
    async with probe(n) as p, rss_watch(n) as rss:
        client = await attacker(n)
        await client.connect()
        started = time.monotonic()
        next_id = 2
        while time.monotonic() - started < 2.0:
            batch = "\n".join(json.dumps({"id": next_id + i, "method": "ping"}) for i in range(50))
            next_id += 50
            await client.send_text(batch)
            await asyncio.sleep(0.01)
        last = await client.reply(next_id - 1, timeout=15)
        elapsed = time.monotonic() - started
        await client.close()
    rss.check()
    answers = [*client.pushes, last]
    ran = sum(1 for m in answers if "result" in m)
    dropped = sum(1 for m in answers if m.get("error", {}).get("code") == 111)
    assert ran + dropped == next_id - 2
    assert ran <= 200 + 100 * elapsed, (ran, elapsed)
    after = await n.metrics()
    assert after.delta(before, "pulsewire_rate_limited_total", policy="drop") == dropped // 50
    record(
        "batched_pings_drop",
        commands_sent=next_id - 2,
        commands_run=ran,
        seconds=round(elapsed, 2),
        commands_per_second_run=round(ran / elapsed, 1),
        **rss.figures(),
        **p.figures(),
    )


# --------------------------------------------- row: 2,000 wrong /admin passwords


async def test_wrong_admin_passwords_on_one_connection(node, probe) -> None:
    n = await node("serve")
    before = await n.metrics()
    async with probe(n) as p, rss_watch(n) as rss:
        started = time.monotonic()
        answers = await keep_alive(n.port, [admin_request(n.port, "wrong")] * 2000)
        elapsed = time.monotonic() - started
        # The right password from the attacker's address is refused unchecked...
        [blocked] = await keep_alive(n.port, [admin_request(n.port, ADMIN_PASSWORD)])
        # ...and served from another address.
        [ok] = await keep_alive(n.port, [admin_request(n.port, ADMIN_PASSWORD)], source=PROBE)
        await served_meanwhile(p)
    rss.check()
    statuses = [a.status for a in answers]
    assert statuses == [401] * 10 + [429] * 1990
    assert all(1 <= int(a.header("Retry-After") or 0) <= 6 for a in answers[10:])
    assert blocked.status == 429
    assert ok.status == 200
    for answer in (*answers, ok):
        assert answer.header("X-Frame-Options") == "DENY"
        assert "frame-ancestors 'none'" in (answer.header("Content-Security-Policy") or "")
    assert "script-src 'sha256-" in (ok.header("Content-Security-Policy") or "")
    after = await n.metrics()
    assert after.delta(before, "pulsewire_auth_failures_total", kind="admin") == 10
    assert after.delta(before, "pulsewire_auth_refused_total", kind="admin") == 1991
    assert after.delta(before, "pulsewire_refusals_total", status="429") == 1991
    record(
        "admin_password_guessing",
        guesses=2000,
        checked=10,
        refused_unchecked=1990,
        seconds=round(elapsed, 2),
        **rss.figures(),
        **p.figures(),
    )


async def test_wrong_api_keys_on_one_connection(node, probe) -> None:
    n = await node("serve")
    before = await n.metrics()
    async with probe(n) as p, rss_watch(n) as rss:
        answers = await keep_alive(n.port, [publish_request(f"guess{i}") for i in range(2000)])
        await served_meanwhile(p)
    rss.check()
    assert [a.status for a in answers] == [403] * 10 + [429] * 1990
    assert json.loads(answers[-1].body)["error"]["code"] == 111
    after = await n.metrics()
    assert after.delta(before, "pulsewire_auth_failures_total", kind="api") == 10
    assert after.delta(before, "pulsewire_refusals_total", status="429") == 1990
    record("api_key_guessing", guesses=2000, checked=10, **rss.figures(), **p.figures())


async def test_forged_tokens_lock_the_address_out_of_every_transport(node, probe) -> None:
    n = await node("serve")
    before = await n.metrics()
    async with probe(n) as p:
        for _ in range(10):
            client = await attacker(n)
            await client.command("connect", {"token": make_token("admin", secret="guess" * 8)})
            assert (await client.close_frame()).close_code == 4500
            await client.close()
        refused = await attacker(n, expect=429)
        assert 1 <= int(refused.header("Retry-After") or 0) <= 6
        await refused.close()
        for method, path in (("GET", "/connection/sse"), ("POST", "/connection/longpoll/open")):
            answer = await http(n.port, method, path, source=ATTACKER)
            assert answer.status == 429 and answer.header("Retry-After"), (path, answer)
        await served_meanwhile(p)
    after = await n.metrics()
    assert after.delta(before, "pulsewire_auth_failures_total", kind="token") == 10
    assert after.delta(before, "pulsewire_auth_refused_total", kind="token") == 3
    assert after.delta(before, "pulsewire_refusals_total", status="429") == 3
    record("token_guessing", guesses=10, **p.figures())


# ------------------------------------------------ row: other schemes on our host


async def test_other_schemes_on_our_own_host_are_refused(node, probe) -> None:
    n = await node("serve")
    before = await n.metrics()
    host = f"{HOST}:{n.port}"
    origins = [f"{s}://{host}" for s in ("https", "ws", "wss", "file", "chrome-extension")]
    origins.append("null")
    async with probe(n) as p:
        for origin in origins:
            client = await attacker(n, origin=origin, expect=403)
            await client.close()
            for method, path in (("GET", "/connection/sse"), ("POST", "/connection/longpoll/open")):
                headers = [("Origin", origin)]
                answer = await http(n.port, method, path, headers=headers, source=ATTACKER)
                assert answer.status == 403, (origin, path, answer.status)
        own = await attacker(n, origin=f"http://{host}")
        await own.connect()
        await own.close()
        await served_meanwhile(p)
    after = await n.metrics()
    assert after.delta(before, "pulsewire_refusals_total", status="403") == 3 * len(origins)
    record("origin_schemes", refused=3 * len(origins), **p.figures())


# ------------------------------------------------------ row: JSON nested 5,000 deep


async def test_json_nested_5000_deep_is_400(node, probe) -> None:
    n = await node("serve")
    before = await n.metrics()
    headers = [("Authorization", f"apikey {API_KEY}"), ("Content-Type", "application/json")]
    bodies = [
        b"[" * 5000 + b"]" * 5000,
        b'{"channel":"pub:x","data":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"channel":"pub:x","data":' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"channel":"pub:x","data":' + b"1" * 10000 + b"}",
    ]
    async with probe(n) as p:
        for body in bodies:
            answer = await http(
                n.port, "POST", "/api/publish", body=body, headers=headers, source=ATTACKER
            )
            assert answer.status == 400, answer
            assert json.loads(answer.body)["error"]["code"] == 107
        client = await attacker(n)
        await client.connect()
        await client.send_text('{"id":2,"method":"ping","params":' + "[" * 5000 + "]" * 5000 + "}")
        assert (await client.close_frame()).close_code == 4501
        await client.close()
        await served_meanwhile(p)
    after = await n.metrics()
    assert after.delta(before, "pulsewire_refusals_total", status="400") == len(bodies)
    assert after.delta(before, "pulsewire_refusals_total", status="500") == 0
    assert after.delta(before, "pulsewire_disconnects_total", code="4501") == 1
    assert "RecursionError" not in n.output and "Traceback" not in n.output
    record("deep_json", bodies=len(bodies), **p.figures())


# --------------------------------------- row: a subscription token used to connect


async def test_a_subscription_token_cannot_connect(node, probe) -> None:
    n = await node("serve")
    before = await n.metrics()
    async with probe(n) as p:
        client = await attacker(n)
        await client.command("connect", {"token": make_token("alice", channel="pub:x")})
        frame = await client.close_frame()
        await client.close()
        await served_meanwhile(p)
    assert (frame.close_code, frame.close_reason) == (
        4500,
        "invalid token: a subscription token cannot connect",
    )
    after = await n.metrics()
    assert after.delta(before, "pulsewire_auth_failures_total", kind="token") == 1
    assert after.delta(before, "pulsewire_disconnects_total", code="4500") == 1
    record("subscription_token_as_connection_token", **p.figures())


# ------------------------------------------------------------- row: GET * upgrade


async def upgrade_status(port: int, target: str) -> int:
    reader, writer = await open_tcp(port, ATTACKER)
    try:
        key = base64.b64encode(b"0123456789abcdef").decode()
        writer.write(
            (
                f"GET {target} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                "Sec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        return (await read_response(reader)).status
    finally:
        writer.close()


async def test_get_star_upgrade_is_refused(node, probe) -> None:
    echo = await node("echo")
    async with probe(echo) as p_echo:
        assert await upgrade_status(echo.port, "*") == 400
        assert await upgrade_status(echo.port, "/") == 101
        await served_meanwhile(p_echo)
    serve = await node("serve")
    before = await serve.metrics()
    async with probe(serve) as p_serve:
        assert await upgrade_status(serve.port, "*") == 400
        answer = await http(serve.port, "GET", "*", source=ATTACKER)
        assert answer.status == 400
        assert await upgrade_status(serve.port, WS_PATH) == 101
        await served_meanwhile(p_serve)
    after = await serve.metrics()
    assert after.delta(before, "pulsewire_refusals_total", status="400") == 2
    record("get_star", echo_probe=p_echo.figures(), serve_probe=p_serve.figures())
