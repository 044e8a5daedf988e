"""Issue #10's rows on rate limits, authentication, origins, tokens and hostile input, run
against real ``pulsewire serve`` / ``pulsewire echo`` processes at their default limits.

Each test runs the attack as the issue describes it from 127.0.0.1, asserts the refusal's
code or status and its metric, and checks that a well-behaved client (from 127.0.0.2 where
the attack blocks its address) is served meanwhile. (They live here, next to the process
harness, until the shared adversarial harness lands in tests/adversarial/.)
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

from .conftest import (
    API_KEY,
    HOST,
    SECRET,
    WS_PATH,
    Metrics,
    MiB,
    ServerProcess,
    WsClient,
    http,
    make_token,
    open_tcp,
    read_response,
    scrape,
)

PASSWORD = "admin-pw-for-the-attack-tests"
PROBE = "127.0.0.2"  # the well-behaved client's address


async def serve(server_process: Any, tmp_path: Path, hub_toml: str = "") -> ServerProcess:
    config = tmp_path / "pulsewire.toml"
    config.write_text(
        f'[hub]\ntoken_hmac_secret = "{SECRET}"\napi_key = "{API_KEY}"\n{hub_toml}'
        "[namespaces.pub]\nallow_publish = true\n"
    )
    return await server_process(
        "serve",
        "--config",
        str(config),
        "--port",
        "0",
        env={"PULSEWIRE_ADMIN_PASSWORD": PASSWORD},
    )


async def probe(port: int) -> None:
    """A well-behaved client, from another address: connects and gets a ping answered."""
    client = await WsClient.open(port, source=PROBE)
    try:
        await client.connect()
        assert "result" in await client.call("ping")
    finally:
        await client.close()


async def keep_alive_requests(
    port: int, requests: list[bytes], source: str | None = None
) -> list[Any]:
    """Send ``requests`` one after the other on one keep-alive connection."""
    reader, writer = await open_tcp(port, source)
    answers = []
    try:
        for raw in requests:
            writer.write(raw)
            answers.append(await read_response(reader))
    finally:
        writer.close()
    return answers


def basic(password: str) -> str:
    return "Basic " + base64.b64encode(f"admin:{password}".encode()).decode()


# --------------------------------------------------- row: 1,935 pings in one message


async def test_batched_commands_are_counted_one_by_one(server_process, tmp_path, clients):
    server = await serve(server_process, tmp_path)
    before = await scrape(server.port)
    attacker = await WsClient.open(server.port)
    clients.append(attacker)
    await attacker.connect()
    batch = "\n".join(json.dumps({"id": n, "method": "ping"}) for n in range(2, 1937))
    await attacker.send_text(batch)
    frame = await attacker.close_frame()
    assert (frame.close_code, frame.close_reason) == (1008, "rate limit exceeded")
    assert not [p for p in attacker.pushes if p.get("id", 0) >= 2]  # no ping ran
    await probe(server.port)
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_rate_limited_total", policy="disconnect") == 1
    assert after.delta(before, "pulsewire_commands_total", method="ping") == 1  # the probe's


async def test_commands_per_second_stay_at_the_documented_rate(server_process, tmp_path, clients):
    """With the drop policy the attacker stays connected: over ~2 s of batches, the pings
    that ran are at most burst + rate x elapsed (200 + 100/s), the rest answered 111."""
    server = await serve(server_process, tmp_path, 'rate_limit_policy = "drop"\n')
    rss = server.rss()
    attacker = await WsClient.open(server.port)
    clients.append(attacker)
    await attacker.connect()
    started = time.monotonic()
    next_id = 2
    while time.monotonic() - started < 2.0:
        batch = "\n".join(json.dumps({"id": next_id + i, "method": "ping"}) for i in range(50))
        next_id += 50
        await attacker.send_text(batch)
        await asyncio.sleep(0.01)
    last = await attacker.reply(next_id - 1, timeout=15)
    elapsed = time.monotonic() - started
    answers = [*attacker.pushes, last]
    ran = sum(1 for m in answers if "result" in m)
    dropped = sum(1 for m in answers if m.get("error", {}).get("code") == 111)
    assert ran + dropped == next_id - 2
    assert ran <= 200 + 100 * elapsed, (ran, elapsed)
    assert dropped > 0
    await probe(server.port)
    assert server.rss() - rss < 64 * MiB


# ---------------------------------------------- row: 2,000 wrong /admin passwords


async def test_wrong_admin_passwords_on_one_connection(server_process, tmp_path):
    server = await serve(server_process, tmp_path)
    before = await scrape(server.port)
    rss = server.rss()
    guess = (
        f"GET /admin HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
        f"Authorization: {basic('wrong')}\r\n\r\n"
    ).encode()
    started = time.monotonic()
    answers = await keep_alive_requests(server.port, [guess] * 2000)
    elapsed = time.monotonic() - started
    statuses = [a.status for a in answers]
    assert statuses[:10] == [401] * 10
    assert statuses[10:] == [429] * 1990
    assert all(a.header("Retry-After") for a in answers[10:])
    assert all(a.header("X-Frame-Options") == "DENY" for a in answers)
    # The right password from another address is served during the lockout...
    page = (
        f"GET /admin HTTP/1.1\r\nHost: {HOST}:{server.port}\r\n"
        f"Authorization: {basic(PASSWORD)}\r\n\r\n"
    ).encode()
    [ok] = await keep_alive_requests(server.port, [page], source=PROBE)
    assert ok.status == 200
    assert "frame-ancestors 'none'" in (ok.header("Content-Security-Policy") or "")
    # ...but not from the attacker's, and it is refused before being checked.
    [blocked] = await keep_alive_requests(server.port, [page])
    assert blocked.status == 429
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_auth_failures_total", kind="admin") == 10
    assert after.delta(before, "pulsewire_auth_refused_total", kind="admin") == 1991
    assert after.delta(before, "pulsewire_refusals_total", status="429") == 1991
    assert server.rss() - rss < 64 * MiB
    print(f"2,000 guesses in {elapsed:.2f} s: 10 checked, 1,990 refused unchecked")


async def test_wrong_api_keys(server_process, tmp_path):
    server = await serve(server_process, tmp_path)
    before = await scrape(server.port)
    body = json.dumps({"channel": "pub:x", "data": 1}).encode()

    def call(key: str) -> bytes:
        return (
            f"POST /api/publish HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: apikey {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    answers = await keep_alive_requests(server.port, [call(f"guess{n}") for n in range(200)])
    assert [a.status for a in answers] == [403] * 10 + [429] * 190
    retry = int(answers[-1].header("Retry-After"))
    assert 1 <= retry <= 6  # one more guess every 6 s
    [ok] = await keep_alive_requests(server.port, [call(API_KEY)], source=PROBE)
    assert ok.status == 200
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_auth_failures_total", kind="api") == 10
    assert after.delta(before, "pulsewire_refusals_total", status="429") == 190


# ------------------------------------------------- row: Origin schemes on our host


async def test_other_schemes_on_our_own_host_are_refused(server_process, tmp_path, clients):
    server = await serve(server_process, tmp_path)
    before = await scrape(server.port)
    host = f"{HOST}:{server.port}"
    schemes = ["https", "ws", "wss", "file", "chrome-extension"]
    for scheme in schemes:
        client = await WsClient.open(server.port, origin=f"{scheme}://{host}", expect=403)
        clients.append(client)
    client = await WsClient.open(server.port, origin="null", expect=403)
    clients.append(client)
    own = await WsClient.open(server.port, origin=f"http://{host}")
    clients.append(own)
    await own.connect()
    proxied = await WsClient.open(
        server.port, origin=f"https://{host}", headers=[("X-Forwarded-Proto", "https")]
    )
    clients.append(proxied)
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_refusals_total", status="403") == len(schemes) + 1


# ------------------------------------------------------- row: JSON nested 5,000 deep


async def test_deeply_nested_api_body_is_400(server_process, tmp_path):
    server = await serve(server_process, tmp_path)
    before = await scrape(server.port)
    headers = [("Authorization", f"apikey {API_KEY}"), ("Content-Type", "application/json")]
    for body in (
        b"[" * 5000 + b"]" * 5000,
        b'{"channel":"pub:x","data":' + b"[" * 5000 + b"]" * 5000 + b"}",
        b'{"channel":"pub:x","data":' + b"[" * 900 + b"]" * 900 + b"}",
        b'{"channel":"pub:x","data":' + b"1" * 10000 + b"}",
    ):
        answer = await http(server.port, "POST", "/api/publish", body=body, headers=headers)
        assert answer.status == 400, answer
        assert json.loads(answer.body)["error"]["code"] == 107
    # The same over the WebSocket: error 107 or a 4501 close, never 1011.
    client = await WsClient.open(server.port)
    await client.connect()
    await client.send_text('{"id":2,"method":"ping","params":' + "[" * 5000 + "]" * 5000 + "}")
    frame = await client.close_frame()
    assert frame.close_code == 4501
    await client.close()
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_refusals_total", status="500") == 0
    assert "RecursionError" not in server.output and "Traceback" not in server.output


# ------------------------------------ row: a subscription token as connection token


async def test_a_subscription_token_cannot_connect(server_process, tmp_path, clients):
    server = await serve(server_process, tmp_path)
    before = await scrape(server.port)
    client = await WsClient.open(server.port)
    clients.append(client)
    await client.command("connect", {"token": make_token("alice", channel="pub:x")})
    frame = await client.close_frame()
    assert (frame.close_code, frame.close_reason) == (
        4500,
        "invalid token: a subscription token cannot connect",
    )
    await probe(server.port)
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_auth_failures_total", kind="token") == 1
    assert after.delta(before, "pulsewire_disconnects_total", code="4500") == 1


async def test_forged_tokens_lock_the_address_out_of_every_transport(
    server_process, tmp_path, clients
):
    server = await serve(server_process, tmp_path)
    before = await scrape(server.port)
    for _ in range(10):
        client = await WsClient.open(server.port)
        clients.append(client)
        await client.command("connect", {"token": make_token("admin", secret="guess" * 8)})
        assert (await client.close_frame()).close_code == 4500
    refused = await WsClient.open(server.port, expect=429)
    assert refused.header("Retry-After")
    for method, path in (("GET", "/connection/sse"), ("POST", "/connection/longpoll/open")):
        answer = await http(server.port, method, path)
        assert answer.status == 429 and answer.header("Retry-After"), (path, answer)
    await probe(server.port)
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_auth_failures_total", kind="token") == 10
    assert after.delta(before, "pulsewire_refusals_total", status="429") == 3


# ------------------------------------------------------------- row: GET * upgrade


async def _upgrade_status(port: int, target: str) -> int:
    reader, writer = await open_tcp(port)
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


async def test_get_star_upgrade_is_refused_by_echo_and_serve(server_process, tmp_path):
    echo = await server_process("echo", "--port", "0")
    assert await _upgrade_status(echo.port, "*") == 400
    assert await _upgrade_status(echo.port, "/") == 101  # the echo server still works
    server = await serve(server_process, tmp_path)
    before = await scrape(server.port)
    assert await _upgrade_status(server.port, "*") == 400
    assert await _upgrade_status(server.port, WS_PATH) == 101
    after: Metrics = await scrape(server.port)
    assert after.delta(before, "pulsewire_refusals_total", status="400") == 1
