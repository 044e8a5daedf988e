"""Fuzzing the hub's wire decoder and command dispatch: ``JsonCodec`` / ``MsgpackCodec``
``decode_commands`` and ``Session.handle`` with a fake transport.

Whatever a client sends:

* ``decode_commands`` returns a list of dicts or raises :class:`HubError` (nothing else);
* ``Session.handle`` never raises; every message it sends decodes to a reply (the id of a
  command that was sent, exactly one of ``result``/``error``, a documented error code) or a
  push; a session that ends does so through ``Transport.close`` with a disconnect code
  (4000-4999) or a WebSocket policy code (1008 rate limit, 1013 slow consumer), once, and
  nothing is sent after it;
* when the transport goes, the session leaves no trace in the hub (sessions, channels, users).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import jwt
import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pulsewire.hub import ChannelOptions, Hub, HubConfig
from pulsewire.hub.errors import ErrorCode, HubError
from pulsewire.hub.session import ConnectRequest
from pulsewire.hub.wire import JsonCodec, MsgpackCodec

from .common import fuzz_settings, mutated

SETTINGS = fuzz_settings(200)
SESSION_SETTINGS = fuzz_settings(100)
SECRET = "fuzz-secret-0123456789abcdef0123"
ERROR_CODES = {v for k, v in vars(ErrorCode).items() if k.isupper()}
POLICY_CODES = {1008, 1013}
METHODS = [
    "connect", "refresh", "subscribe", "unsubscribe", "publish", "presence",
    "presence_stats", "history", "ping", "rpc", "nope", "",
]  # fmt: skip


def token(user: str = "alice", ttl: float = 600, **claims: Any) -> str:
    return jwt.encode({"sub": user, "exp": time.time() + ttl, **claims}, SECRET, "HS256")


TOKENS = [token(), token("bob"), token(ttl=-10), token(channels=["priv:*"]), "garbage", "", "a.b.c"]

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)  # what both codecs carry (see test_hostile_input.py)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=4,
)
channels = st.sampled_from(
    ["pub:a", "pub:b", "hist:x", "priv:y", "lossy:z", "plain", "", "a:b:c", "pub:#alice",
     "pub:#", "#", ":", "pub:" + "x" * 300, "pub:a\x00", "hist:#alice,bob"]
) | st.text(max_size=16)  # fmt: skip
params = (
    st.fixed_dictionaries(
        {},
        optional={
            "channel": channels,
            "data": json_values,
            "token": st.sampled_from(TOKENS) | json_values,
            "recover": st.booleans(),
            "offset": st.integers(-2, 12) | json_values,
            "epoch": st.text(max_size=5) | json_values,
            "limit": st.integers(-2, 12) | json_values,
            "since": st.fixed_dictionaries(
                {"offset": st.integers(-1, 5), "epoch": st.text(max_size=4)}
            )
            | json_values,
            "reverse": st.booleans(),
            "subs": st.dictionaries(channels, st.just({}) | json_values, max_size=2),
            "method": st.text(max_size=5) | json_values,
            "version": st.sampled_from([1, 2, "1", None]),
        },
    )
    | json_values
)
commands = st.fixed_dictionaries(
    {
        "id": st.integers(-2, 40) | st.sampled_from([True, None, "1", 1.5, 2**64 - 1]),
        "method": st.sampled_from(METHODS) | json_values,
    },
    optional={"params": params},
)


class FakeTransport:
    kind = "websocket"

    def __init__(self, codec: Any) -> None:
        self.codec = codec
        self.sent: list[dict[str, Any]] = []
        self.closed: tuple[int, str] | None = None

    def send(self, message: str | bytes, publication: Any = None) -> None:
        assert self.closed is None, "sent after close"
        if self.codec.binary:
            assert isinstance(message, bytes)
            decoded = msgpack.unpackb(message, raw=False, strict_map_key=False)
        else:
            assert isinstance(message, str)
            decoded = json.loads(message)
        assert isinstance(decoded, dict)
        self.sent.append(decoded)

    def buffered(self) -> int:
        return 0

    def close(self, code: int, reason: str) -> None:
        assert self.closed is None, "closed twice"
        assert isinstance(reason, str)
        self.closed = (code, reason)


@pytest.fixture(scope="module")
def hub_runner() -> Iterator[tuple[asyncio.Runner, Hub]]:
    config = HubConfig(
        token_hmac_secret=SECRET,
        allow_anonymous=True,
        client_messages_per_second=1e6,
        client_messages_burst=1e6,
        client_bytes_per_second=1e9,
        client_bytes_burst=1e9,
        auth_failures_burst=0,  # the guard off: every example's token is really verified
        channel=ChannelOptions(allow_anonymous=True),
        namespaces={
            "pub": ChannelOptions(allow_publish=True, presence=True, join_leave=True,
                                  allow_anonymous=True),
            "hist": ChannelOptions(history_size=5, history_ttl=60, allow_publish=True),
            "priv": ChannelOptions(private=True),
            "lossy": ChannelOptions(slow_consumer="drop", allow_publish=True),
        },
    )  # fmt: skip
    with asyncio.Runner() as runner:
        hub = Hub(config)
        runner.run(hub.start())
        yield runner, hub
        runner.run(hub.close())


def encode(codec: Any, batch: list[Any]) -> str | bytes:
    if codec.binary:
        return b"".join(msgpack.packb(c, use_bin_type=True) for c in batch)
    return "\n".join(json.dumps(c) for c in batch)


async def scenario(hub: Hub, codec: Any, messages: list[str | bytes]) -> None:
    transport = FakeTransport(codec)
    request = ConnectRequest("websocket", "/connection/websocket", [], "127.0.0.1")
    session = hub.open_session(transport, codec, request)
    sent_ids: set[Any] = set()
    try:
        for message in messages:
            try:
                for command in codec.decode_commands(message):
                    sent_ids.add(command.get("id"))
            except HubError:
                pass
            await session.handle(message)  # must never raise
    finally:
        session.transport_closed(1006, "")
    await asyncio.sleep(0)  # let presence/leave tasks run
    for reply in transport.sent:
        if "push" in reply:
            continue
        assert reply.get("id") in sent_ids, reply
        assert isinstance(reply["id"], int) and reply["id"] > 0
        assert ("result" in reply) != ("error" in reply), reply
        if "error" in reply:
            assert reply["error"]["code"] in ERROR_CODES, reply
    if transport.closed is not None:
        code = transport.closed[0]
        assert 4000 <= code <= 4999 or code in POLICY_CODES, transport.closed
    assert session.id not in hub.sessions
    assert all(subscriber is not session for subscriber, _ in hub.fanout.all())
    assert all(session not in group for group in hub.users.values())


@st.composite
def conversations(draw: st.DrawFn, binary: bool) -> list[str | bytes]:
    """A few client messages: batches of commands (often after a valid connect), or junk."""
    codec = MsgpackCodec() if binary else JsonCodec()
    messages: list[str | bytes] = []
    if draw(st.booleans()):
        connect = {"id": 1, "method": "connect", "params": {"token": draw(st.sampled_from(TOKENS))}}
        messages.append(encode(codec, [connect]))
    for _ in range(draw(st.integers(0, 5))):
        if draw(st.integers(0, 9)) == 0:
            junk = draw(st.binary(max_size=40))
            messages.append(junk if binary else junk.decode("latin-1"))
        else:
            messages.append(encode(codec, draw(st.lists(commands, min_size=1, max_size=3))))
    return messages


@SESSION_SETTINGS
@given(conversations(binary=False))
def test_json_sessions(hub_runner, messages):
    runner, hub = hub_runner
    runner.run(scenario(hub, JsonCodec(), messages))


@SESSION_SETTINGS
@given(conversations(binary=True))
def test_msgpack_sessions(hub_runner, messages):
    runner, hub = hub_runner
    runner.run(scenario(hub, MsgpackCodec(), messages))


# ------------------------------------------------------------------------------- decoders


def check_decoded(decode: Any, data: str | bytes) -> None:
    try:
        result = decode(data)
    except HubError as exc:
        assert exc.code == ErrorCode.BAD_REQUEST
        return
    assert isinstance(result, list) and all(isinstance(c, dict) for c in result)


@SETTINGS
@given(st.one_of(st.text(max_size=200), st.binary(max_size=200)))
def test_json_decoder_arbitrary_input(data):
    check_decoded(JsonCodec().decode_commands, data)


@SETTINGS
@given(st.binary(max_size=200))
def test_msgpack_decoder_arbitrary_input(data):
    check_decoded(MsgpackCodec().decode_commands, data)


@SETTINGS
@given(st.lists(json_values, max_size=4), st.data())
def test_msgpack_decoder_mutated_input(values, data):
    packed = b"".join(msgpack.packb(v, use_bin_type=True) for v in values)
    check_decoded(MsgpackCodec().decode_commands, data.draw(mutated(packed)))


@pytest.mark.parametrize(
    "data",
    ["[" * 5000, '{"a":' * 5000, "[" * 5000 + "]" * 5000],
    ids=["open arrays", "open objects", "closed arrays"],
)
def test_json_decoder_deep_nesting_is_a_bad_request(data):
    check_decoded(JsonCodec().decode_commands, data)


def test_session_survives_deep_nesting(hub_runner):
    runner, hub = hub_runner
    runner.run(scenario(hub, JsonCodec(), ["[" * 5000]))


def test_msgpack_deep_nesting_is_a_bad_request():
    check_decoded(MsgpackCodec().decode_commands, b"\x91" * 5000)
