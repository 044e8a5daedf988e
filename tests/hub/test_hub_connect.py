"""Connecting to the hub (tokens, hooks, bad commands, rate limits), one layer down: a hub
and sessions on fake transports (tests/hub/fakes.py), timers on a moved loop clock.

What only the WebSocket transport shows (subprotocols, Close frame limits, the connect
request it builds) is in test_hub_connect_e2e.py."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from typing import Any

import jwt
import msgpack
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from pulsewire.hub import ConnectRequest, Credentials, Disconnect, HubError

from .conftest import SECRET
from .fakes import until


def _rsa_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    return _rsa_pair()


@pytest.fixture(scope="module")
def other_rsa_keys() -> tuple[str, str]:
    return _rsa_pair()


async def refused(client: Any, token: Any = None, **params: Any) -> tuple[int | None, str | None]:
    """Send connect and return how the server closed the connection (it must close it)."""
    if token is not None:
        params["token"] = token
    await client.send("connect", params)
    return await client.wait_closed()


# ---------------------------------------------------------------------------------- tokens


async def test_connect_with_hs256_token(local_hub, local_client, make_token, uniq):
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    token = make_token("alice", info={"name": "Alice"})
    result = await client.connect(token)
    assert result["user"] == "alice"
    assert result["version"] == 1
    assert result["node"] == hub.node_id
    assert result["transport"] == "websocket"
    assert result["expires"] is True
    assert 3590 <= result["ttl"] <= 3600
    assert isinstance(result["client"], str) and result["client"]
    assert result["client"] in hub.sessions
    assert hub.sessions[result["client"]].user == "alice"
    # conn_info comes from the token's "info" claim and shows in presence
    channel = uniq("chat")
    await client.subscribe(channel)
    presence = await client.ok("presence", {"channel": channel})
    assert presence["clients"] == {
        result["client"]: {
            "client": result["client"],
            "user": "alice",
            "conn_info": {"name": "Alice"},
        }
    }


async def test_token_without_exp_does_not_expire(local_hub, local_client, make_token):
    hub = await local_hub()
    client = await local_client(hub, token=make_token("bob", ttl=None))
    result = client.log[0]["result"]
    assert result["user"] == "bob"
    assert "expires" not in result and "ttl" not in result


async def test_connect_with_rs256_token(local_hub, local_client, hub_config, rsa_keys):
    private, public = rsa_keys
    hub = await local_hub(hub_config(token_hmac_secret=None, token_rsa_public_key=public))
    token = jwt.encode({"sub": "carol", "exp": time.time() + 60}, private, algorithm="RS256")
    client = await local_client(hub, token=token)
    assert client.log[0]["result"]["user"] == "carol"


async def test_hs256_and_rs256_accepted_together(local_hub, local_client, hub_config, rsa_keys):
    private, public = rsa_keys
    hub = await local_hub(hub_config(token_rsa_public_key=public))
    rs = await local_client(hub, token=jwt.encode({"sub": "rs"}, private, algorithm="RS256"))
    hs = await local_client(hub, token=jwt.encode({"sub": "hs"}, SECRET, algorithm="HS256"))
    assert rs.log[0]["result"]["user"] == "rs"
    assert hs.log[0]["result"]["user"] == "hs"


async def test_rs256_token_signed_by_another_key_is_refused(
    local_hub, local_client, hub_config, rsa_keys, other_rsa_keys
):
    _, public = rsa_keys
    other_private, _ = other_rsa_keys
    hub = await local_hub(hub_config(token_hmac_secret=None, token_rsa_public_key=public))
    client = await local_client(hub, connect=False)
    token = jwt.encode({"sub": "mallory"}, other_private, algorithm="RS256")
    code, reason = await refused(client, token)
    assert code == 4500
    assert "invalid token" in (reason or "")


async def test_hs256_token_refused_when_only_rs256_is_configured(
    local_hub, local_client, hub_config, rsa_keys
):
    """Algorithm confusion: an HS256 token 'signed' with the public key must not pass."""
    _, public = rsa_keys
    hub = await local_hub(hub_config(token_hmac_secret=None, token_rsa_public_key=public))
    client = await local_client(hub, connect=False)
    header = {"alg": "HS256", "typ": "JWT"}

    def b64(data: bytes) -> bytes:
        return base64.urlsafe_b64encode(data).rstrip(b"=")

    signing_input = b64(json.dumps(header).encode()) + b"." + b64(b'{"sub":"mallory"}')
    signature = b64(hmac.new(public.encode(), signing_input, hashlib.sha256).digest())
    code, _ = await refused(client, (signing_input + b"." + signature).decode())
    assert code == 4500


async def test_expired_token_closes_with_4002(local_hub, local_client, make_token):
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    code, reason = await refused(client, make_token("dave", exp=int(time.time()) - 10))
    assert code == 4002  # 4000-4499: reconnect (with a fresh token)
    assert reason == "token expired"
    assert not hub.sessions


async def test_token_expiring_during_the_session_closes_with_4002(
    local_hub, local_client, make_token, loop_clock
):
    hub = await local_hub()
    exp = int(time.time()) + 30
    client = await local_client(hub, token=make_token("erin", exp=exp))
    assert client.log[0]["result"]["expires"] is True
    assert client.log[0]["result"]["ttl"] in (28, 29, 30)
    await loop_clock.advance(27)
    await client.sync()
    assert not client.closed
    await loop_clock.advance(4)
    assert (await client.wait_closed()) == (4002, "token expired")
    assert not hub.sessions


async def test_session_timer_follows_credentials_expiry(local_hub, local_client, loop_clock):
    def authenticate(request: ConnectRequest) -> Credentials:
        return Credentials(user="erin", expires_at=time.time() + 30)

    hub = await local_hub(authenticate=authenticate)
    client = await local_client(hub)
    await loop_clock.advance(29)
    await client.sync()
    assert not client.closed
    await loop_clock.advance(2)
    assert (await client.wait_closed()) == (4002, "token expired")


async def test_refresh_extends_the_session(local_hub, local_client, make_token, loop_clock):
    hub = await local_hub()
    client = await local_client(hub, token=make_token("fay", ttl=30))
    result = await client.ok("refresh", {"token": make_token("fay", ttl=600)})
    assert result["expires"] is True
    assert 595 <= result["ttl"] <= 600
    await loop_clock.advance(60)  # past the first token's expiry
    await client.sync()
    assert not client.closed
    assert (await client.ok("refresh", {"token": make_token("fay", ttl=None)})) == {
        "expires": False
    }
    await loop_clock.advance(600)  # past the second one's: no expiry any more
    await client.sync()
    assert not client.closed


async def test_refresh_errors(local_hub, local_client, make_token):
    hub = await local_hub()
    client = await local_client(hub, "gus")
    error = await client.fail("refresh", {})
    assert error["code"] == 107
    await client.send("refresh", {"token": make_token("someone-else")})
    assert (await client.wait_closed())[0] == 4500


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(
            jwt.encode({"sub": "x"}, "not-the-secret-" + "x" * 32, algorithm="HS256"), id="forged"
        ),
        pytest.param("not.a.jwt", id="garbage"),
        pytest.param(jwt.encode({"sub": "x"}, None, algorithm="none"), id="alg-none"),
        pytest.param(jwt.encode({"user": "x"}, SECRET, algorithm="HS256"), id="no-sub"),
        pytest.param(
            jwt.encode({"sub": "x", "channels": "priv:a"}, SECRET, algorithm="HS256"),
            id="channels-not-a-list",
        ),
        pytest.param(
            jwt.encode({"sub": "x", "nbf": time.time() + 3600}, SECRET, algorithm="HS256"),
            id="not-yet-valid",
        ),
    ],
)
async def test_invalid_token_closes_with_4500(local_hub, local_client, token):
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    code, _ = await refused(client, token)
    assert code == 4500  # 4500+: do not reconnect


async def test_token_audience_and_issuer(local_hub, local_client, hub_config, make_token):
    hub = await local_hub(hub_config(token_audience="pulse", token_issuer="backend"))
    good = await local_client(hub, token=make_token("hal", aud="pulse", iss="backend"))
    assert good.log[0]["result"]["user"] == "hal"
    for claims in ({"aud": "other", "iss": "backend"}, {"iss": "backend"}, {"aud": "pulse"}):
        client = await local_client(hub, connect=False)
        code, _ = await refused(client, make_token("hal", **claims))
        assert code == 4500, claims


async def test_missing_token_closes_with_4503(local_hub, local_client):
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    code, reason = await refused(client)
    assert code == 4503
    assert "token" in (reason or "")


async def test_empty_token_counts_as_missing(local_hub, local_client):
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    assert (await refused(client, ""))[0] == 4503


async def test_token_when_no_key_is_configured_closes_with_4500(
    local_hub, local_client, hub_config, make_token
):
    hub = await local_hub(hub_config(token_hmac_secret=None, allow_anonymous=True))
    client = await local_client(hub, connect=False)
    code, _ = await refused(client, make_token("ivy"))
    assert code == 4500


async def test_anonymous_connections(local_hub, local_client, hub_config, uniq):
    hub = await local_hub(hub_config(allow_anonymous=True))
    client = await local_client(hub)  # no token at all
    assert client.log[0]["result"]["user"] == ""
    error = await client.fail("subscribe", {"channel": uniq("ro")})
    assert error["code"] == 103  # the namespace does not admit anonymous subscribers
    channel = uniq("anon")
    await client.subscribe(channel)
    await client.ok("publish", {"channel": channel, "data": "hi"})
    push = await client.wait_push(channel=channel)
    assert push["info"] == {"client": client.client_id, "user": ""}


async def test_no_connect_within_connect_timeout_closes_with_4003(
    local_hub, local_client, hub_config, loop_clock
):
    hub = await local_hub(hub_config(connect_timeout=10))
    client = await local_client(hub, connect=False)
    await loop_clock.advance(9)
    assert not client.closed
    await loop_clock.advance(2)
    code, reason = await client.wait_closed()
    assert code == 4003
    assert reason == "no connect command in time"
    assert not hub.sessions


async def test_connect_in_time_is_not_stale(
    local_hub, local_client, hub_config, make_token, loop_clock
):
    hub = await local_hub(hub_config(connect_timeout=10))
    client = await local_client(hub, connect=False)
    await client.connect(make_token("jay"))
    await loop_clock.advance(11)
    await client.sync()
    assert not client.closed


# ------------------------------------------------------------------------------ bad commands


async def test_commands_before_connect_close_with_4501(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    await client.send("subscribe", {"channel": uniq("chat")})
    code, reason = await client.wait_closed()
    assert code == 4501
    assert "before connect" in (reason or "")


async def test_second_connect_closes_with_4501(local_hub, local_client, make_token):
    hub = await local_hub()
    client = await local_client(hub, "kim")
    await client.send("connect", {"token": make_token("kim")})
    assert (await client.wait_closed())[0] == 4501


async def test_unsupported_protocol_version_closes_with_4505(local_hub, local_client, make_token):
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    code, _ = await refused(client, make_token("lee"), version=2)
    assert code == 4505


async def test_token_must_be_a_string(local_hub, local_client):
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    code, _ = await refused(client, token=12345)
    assert code == 4501


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param("this is not json", id="not-json"),
        pytest.param('{"method": "ping"}', id="missing-id"),
        pytest.param('{"id": 0, "method": "ping"}', id="zero-id"),
        pytest.param('{"id": "7", "method": "ping"}', id="string-id"),
        pytest.param('{"id": 7}', id="missing-method"),
        pytest.param('{"id": 7, "method": "ping", "params": [1]}', id="params-not-object"),
        pytest.param("[1, 2, 3]", id="not-an-object"),
    ],
)
async def test_malformed_commands_close_with_4501(local_hub, local_client, raw):
    hub = await local_hub()
    client = await local_client(hub, "mia")
    await client.send_raw(raw)
    code, _ = await client.wait_closed()
    assert code == 4501


async def test_unknown_method_is_error_104_and_the_session_goes_on(local_hub, local_client):
    hub = await local_hub()
    client = await local_client(hub, "ned")
    error = await client.fail("frobnicate", {})
    assert error["code"] == 104
    await client.sync()
    assert not client.closed


async def test_several_commands_in_one_json_message(local_hub, local_client, make_token, uniq):
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    channel = uniq("hist")
    lines = [
        {"id": 1, "method": "connect", "params": {"token": make_token("oli")}},
        {"id": 2, "method": "subscribe", "params": {"channel": channel}},
        {"id": 3, "method": "ping"},
    ]
    for cid in (1, 2, 3):
        client.expect(cid)
    await client.send_raw("\n".join(json.dumps(line) for line in lines) + "\n")
    replies = [await client.reply(cid) for cid in (1, 2, 3)]
    assert [r["id"] for r in client.log] == [1, 2, 3]
    assert replies[0]["result"]["user"] == "oli"
    assert replies[1]["result"]["recoverable"] is True
    assert replies[2] == {"id": 3, "result": {}}


async def test_connect_with_subscriptions(local_hub, local_client, make_token, uniq):
    hub = await local_hub()
    client = await local_client(hub, connect=False)
    good, plain, bad = uniq("hist"), uniq("ro"), uniq("nope")
    result = await client.connect(make_token("pat"), subs={good: {}, plain: {}, bad: {}})
    assert result["subs"][good]["recoverable"] is True
    assert result["subs"][plain] == {}
    assert result["subs"][bad]["error"]["code"] == 102
    await hub.publish(good, "g")
    await hub.publish(plain, "p")
    assert (await client.wait_push(channel=good))["data"] == "g"
    assert (await client.wait_push(channel=plain))["data"] == "p"


# -------------------------------------------------------------------------------- msgpack


async def test_msgpack_round_trip(local_hub, local_client, uniq):
    hub = await local_hub()
    client = await local_client(hub, "quinn", codec="msgpack")
    assert all(isinstance(raw, bytes) for raw in client.transport.raw)
    assert client.log[0]["result"]["user"] == "quinn"
    channel = uniq("chat")
    result = await client.subscribe(channel)
    assert result["recoverable"] is True
    json_client = await local_client(hub, "json")
    await json_client.subscribe(channel)
    data = {"n": 1, "list": [1.5, None, True], "text": "héllo"}
    reply = await client.ok("publish", {"channel": channel, "data": data})
    assert reply["offset"] == 1
    push = await client.wait_push(channel=channel)
    assert push["data"] == data and push["offset"] == 1
    assert push["info"]["user"] == "quinn"
    assert (await json_client.wait_push(channel=channel))["data"] == data
    await hub.publish(channel, [1, 2])
    assert (await client.wait_push(channel=channel))["data"] == [1, 2]
    history = await client.ok("history", {"channel": channel})
    assert [p["data"] for p in history["publications"]] == [data, [1, 2]]
    error = await client.fail("nope")
    assert error["code"] == 104


async def test_msgpack_session_refuses_text_commands(local_hub, local_client):
    hub = await local_hub()
    client = await local_client(hub, "rob", codec="msgpack")
    await client.send_raw(json.dumps({"id": 9, "method": "ping"}))
    assert (await client.wait_closed())[0] == 4501


async def test_msgpack_garbage_closes_with_4501(local_hub, local_client):
    hub = await local_hub()
    client = await local_client(hub, "sam", codec="msgpack")
    await client.send_raw(msgpack.packb([1, 2]) + b"\xc1")
    assert (await client.wait_closed())[0] == 4501


# -------------------------------------------------------------------------------- hooks


async def test_authenticate_hook(local_hub, local_client, make_token):
    seen: list[ConnectRequest] = []

    async def authenticate(request: ConnectRequest) -> Any:
        seen.append(request)
        data = request.data or {}
        if data.get("as") == "hooked":
            return Credentials(user="hooked", info={"via": "hook"}, channels=("priv:*",))
        if data.get("as") == "plain":
            return 42  # anything else becomes Credentials(user=str(outcome))
        if data.get("as") == "banned":
            raise Disconnect(4504, "too many connections")
        return None  # fall back to the token

    hub = await local_hub(authenticate=authenticate)
    hooked = await local_client(hub, params={"data": {"as": "hooked"}}, headers=[("X-Test", "yes")])
    assert hooked.log[0]["result"]["user"] == "hooked"
    request = seen[-1]
    assert request.transport == "websocket"
    assert request.path == "/connection/websocket"
    assert request.remote_address == "127.0.0.1"
    assert request.token is None
    assert ("X-Test", "yes") in [(k, v) for k, v in request.headers]
    # the grant of the hook's credentials opens a private channel
    await hooked.subscribe("priv:hooked-room")

    plain = await local_client(hub, params={"data": {"as": "plain"}})
    assert plain.log[0]["result"]["user"] == "42"

    token = make_token("uma")
    fallback = await local_client(hub, token=token)
    assert fallback.log[0]["result"]["user"] == "uma"
    assert seen[-1].token == token

    nobody = await local_client(hub, connect=False)
    assert (await refused(nobody))[0] == 4503  # hook said None and there is no token

    banned = await local_client(hub, connect=False)
    assert (await refused(banned, data={"as": "banned"})) == (4504, "too many connections")


async def test_authenticate_hook_with_expired_credentials(local_hub, local_client):
    def authenticate(request: ConnectRequest) -> Credentials:
        return Credentials(user="late", expires_at=time.time() - 1)

    hub = await local_hub(authenticate=authenticate)
    client = await local_client(hub, connect=False)
    assert (await refused(client))[0] == 4002


async def test_on_connect_and_on_disconnect_hooks(local_hub, local_client):
    events: list[tuple[str, Any]] = []

    def on_connect(session: Any) -> None:
        events.append(("connect", session.user))

    async def on_disconnect(session: Any, code: int, reason: str) -> None:
        events.append(("disconnect", (session.user, code)))

    hub = await local_hub(on_connect=on_connect, on_disconnect=on_disconnect)
    client = await local_client(hub, "vic")
    assert events == [("connect", "vic")]
    await hub.disconnect_user("vic", 4000, "bye")
    assert (await client.wait_closed()) == (4000, "bye")
    await until(lambda: len(events) == 2)  # the async hook runs in a task of its own
    assert events[1] == ("disconnect", ("vic", 4000))


async def test_on_connect_hook_refusing_with_disconnect(local_hub, local_client):
    def on_connect(session: Any) -> None:
        if session.user == "blocked":
            raise Disconnect(4502, "blocked")

    hub = await local_hub(on_connect=on_connect)
    client = await local_client(hub, "blocked", connect=False)
    assert (await refused(client, client.token)) == (4502, "blocked")


async def test_rpc(local_hub, local_client):
    calls: list[tuple[str, str, Any]] = []

    async def on_rpc(session: Any, method: str, data: Any) -> Any:
        calls.append((session.user, method, data))
        if method == "add":
            return sum(data)
        raise HubError(104, f"no such rpc {method}")

    hub = await local_hub(on_rpc=on_rpc)
    client = await local_client(hub, "wes")
    assert await client.ok("rpc", {"method": "add", "data": [1, 2, 3]}) == {"data": 6}
    error = await client.fail("rpc", {"method": "nope", "data": None})
    assert error == {"code": 104, "message": "no such rpc nope"}
    error = await client.fail("rpc", {"data": 1})  # no method
    assert error["code"] == 104
    assert calls == [("wes", "add", [1, 2, 3]), ("wes", "nope", None)]


async def test_rpc_without_handler_is_104(local_hub, local_client):
    hub = await local_hub()
    client = await local_client(hub, "xia")
    assert (await client.fail("rpc", {"method": "add", "data": [1]}))["code"] == 104


async def test_rpc_handler_crash_is_internal_error(local_hub, local_client):
    def on_rpc(session: Any, method: str, data: Any) -> Any:
        raise RuntimeError("boom")

    hub = await local_hub(on_rpc=on_rpc)
    client = await local_client(hub, "yan")
    assert await client.fail("rpc", {"method": "x"}) == {"code": 100, "message": "internal error"}
    await client.sync()


# ------------------------------------------------------------------------------ rate limits


async def test_rate_limit_disconnects_with_1008(local_hub, local_client, hub_config):
    config = hub_config(client_messages_per_second=0.001, client_messages_burst=3)
    hub = await local_hub(config)
    client = await local_client(hub, "rl")  # the connect command is message 1
    await client.sync()
    await client.sync()
    await client.send("ping")
    assert (await client.wait_closed()) == (1008, "rate limit exceeded")


async def test_rate_limit_drop_policy_answers_111(local_hub, local_client, hub_config):
    config = hub_config(
        client_messages_per_second=0.001, client_messages_burst=3, rate_limit_policy="drop"
    )
    hub = await local_hub(config)
    client = await local_client(hub, "rl")
    await client.sync()
    await client.sync()
    error = await client.fail("ping")
    assert error == {"code": 111, "message": "rate limit exceeded"}
    assert not client.closed
    assert client.client_id in hub.sessions


async def test_rpc_result_json_cannot_carry_is_an_error_not_a_crash(local_hub, local_client):
    def on_rpc(session: Any, method: str, data: Any) -> Any:
        return b"\x00\x01" if method == "bytes" else float("nan")

    hub = await local_hub(on_rpc=on_rpc)
    client = await local_client(hub, "rpc-json")
    for method in ("bytes", "nan"):
        reply = await client.call("rpc", {"method": method})
        assert "error" in reply, reply
    await client.sync()
    assert not client.closed
