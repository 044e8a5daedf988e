"""Typed requests (pulsewire.hub.requests): garbage never raises anything but the hub's
errors, and each fault gets the code and message the protocol documents."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsewire.hub.config import ChannelOptions, HubConfig
from pulsewire.hub.errors import Disconnect, DisconnectCode, ErrorCode, HubError
from pulsewire.hub.requests import (
    CLIENT_PARAMS,
    ApiBroadcastParams,
    ApiChannelParams,
    ApiDisconnectParams,
    ApiHistoryParams,
    ApiPublishParams,
    ApiSendParams,
    ApiSubscribeParams,
    ApiUnsubscribeParams,
    Command,
    ConnectParams,
    HistoryParams,
    HistoryQuery,
    PingParams,
    PresenceParams,
    PresenceStatsParams,
    PublishParams,
    RefreshParams,
    RpcParams,
    SubscribeParams,
    UnsubscribeParams,
)
from pulsewire.hub.types import StreamPosition

CONFIG = HubConfig(
    namespaces={
        "hist": ChannelOptions(history_size=10, history_ttl=60),
        "chat": ChannelOptions(presence=True, allow_publish=True),
    }
)

# ------------------------------------------------------------------ garbage in

KEYS = [
    "id", "method", "params", "channel", "channels", "token", "data", "version", "subs",
    "recover", "offset", "epoch", "limit", "since", "reverse", "idempotency_key", "tags",
    "code", "reason", "user", "client", "server_subs",
]  # fmt: skip
CHANNELS = ["hist:a", "chat:lobby", "plain", "nope:x", "", "bad name", "hist:#1,2", "x" * 300]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(CHANNELS),
    st.binary(max_size=8),  # MessagePack clients can send bytes
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=6)), inner, max_size=4),
        # MessagePack maps may have non-string keys
        st.dictionaries(st.one_of(st.integers(), st.booleans()), inner, max_size=2),
    ),
    max_leaves=12,
)
params = st.dictionaries(st.sampled_from(KEYS), values, max_size=8)

CLIENT_CLASSES = sorted(CLIENT_PARAMS.values(), key=lambda cls: cls.method)
API_CLASSES = [
    ApiBroadcastParams,
    ApiChannelParams,
    ApiDisconnectParams,
    ApiHistoryParams,
    ApiPublishParams,
    ApiSendParams,
    ApiSubscribeParams,
    ApiUnsubscribeParams,
]


@pytest.mark.parametrize("cls", CLIENT_CLASSES, ids=lambda cls: cls.method)
@settings(max_examples=120, deadline=None)
@given(params=params)
def test_client_params_raise_only_hub_errors(cls: Any, params: dict[str, Any]) -> None:
    try:
        parsed = cls.parse(params, CONFIG)
    except HubError as exc:
        assert exc.code in (ErrorCode.BAD_REQUEST, ErrorCode.UNKNOWN_CHANNEL) or (
            cls is RpcParams and exc.code == ErrorCode.METHOD_NOT_FOUND
        )
        assert exc.message
    except Disconnect as exc:  # connect's faults end the session
        assert cls is ConnectParams
        assert exc.code in (DisconnectCode.BAD_REQUEST, DisconnectCode.UNSUPPORTED_PROTOCOL)
    else:
        assert isinstance(parsed, cls)


@pytest.mark.parametrize("cls", API_CLASSES, ids=lambda cls: cls.__name__)
@settings(max_examples=120, deadline=None)
@given(params=params)
def test_api_params_raise_only_bad_request(cls: Any, params: dict[str, Any]) -> None:
    try:
        parsed = cls.parse(params)
    except HubError as exc:
        assert exc.code == ErrorCode.BAD_REQUEST
        assert exc.message
    else:
        assert isinstance(parsed, cls)


@settings(max_examples=300, deadline=None)
@given(command=st.dictionaries(st.sampled_from(KEYS), values, max_size=5))
def test_command_envelope_raises_only_bad_request_disconnect(command: dict[str, Any]) -> None:
    try:
        parsed = Command.parse(command)
    except Disconnect as exc:
        assert exc.code == DisconnectCode.BAD_REQUEST
    else:
        assert isinstance(parsed.id, int) and parsed.id > 0
        assert isinstance(parsed.method, str) and isinstance(parsed.params, dict)


# ------------------------------------------------------------------ what comes out


def _hub_error(call: Any, *args: Any) -> tuple[int, str]:
    with pytest.raises(HubError) as info:
        call(*args)
    return info.value.code, info.value.message


def _disconnect(call: Any, *args: Any) -> tuple[int, str]:
    with pytest.raises(Disconnect) as info:
        call(*args)
    return info.value.code, info.value.reason


def test_command() -> None:
    assert Command.parse({"id": 3, "method": "ping"}) == Command(3, "ping", {})
    assert Command.parse({"id": 3, "method": "x", "params": None}).params == {}
    message = "a command needs a positive integer id, a method and object params"
    for bad in ({"id": 0, "method": "ping"}, {"id": "1", "method": "ping"}, {"id": 1},
                {"id": 1, "method": "ping", "params": [1]}):  # fmt: skip
        assert _disconnect(Command.parse, bad) == (DisconnectCode.BAD_REQUEST, message)


def test_connect() -> None:
    assert ConnectParams.parse({}) == ConnectParams(None, None, None)
    parsed = ConnectParams.parse(
        {"token": "t", "data": [1], "version": 1, "subs": {"hist:a": {"recover": True}, "b": 3}}
    )
    assert parsed.token == "t" and parsed.data == [1]
    assert parsed.subs == {"hist:a": {"recover": True, "channel": "hist:a"}, "b": {"channel": "b"}}
    assert ConnectParams.parse({"subs": {}}).subs is None
    assert _disconnect(ConnectParams.parse, {"version": 2}) == (
        DisconnectCode.UNSUPPORTED_PROTOCOL,
        "protocol version 2 is not supported",
    )
    assert _disconnect(ConnectParams.parse, {"token": 5}) == (
        DisconnectCode.BAD_REQUEST,
        "token must be a string",
    )
    positions = {"hist:a": {"recover": True, "offset": 3, "epoch": "e"}}
    assert ConnectParams.parse({"server_subs": positions}).server_subs == positions
    assert ConnectParams.parse({"server_subs": {}}).server_subs is None
    for bad in ([], "hist:a", {"hist:a": 3}, {"hist:a": None}):
        assert _disconnect(ConnectParams.parse, {"server_subs": bad}) == (
            DisconnectCode.BAD_REQUEST,
            "server_subs must be an object of {channel: {recover, offset, epoch}}",
        )


def test_refresh_rpc_ping() -> None:
    assert RefreshParams.parse({"token": "t"}, CONFIG) == RefreshParams("t")
    assert _hub_error(RefreshParams.parse, {}, CONFIG) == (107, "refresh needs a token")
    assert RpcParams.parse({"method": "add", "data": [1, 2]}) == RpcParams("add", [1, 2])
    assert _hub_error(RpcParams.parse, {"method": 1}) == (104, "no RPC handler for this method")
    assert PingParams.parse({"anything": 1}) == PingParams()


def test_channel_params() -> None:
    for cls in (UnsubscribeParams, PresenceParams, PresenceStatsParams):
        assert cls.parse({"channel": "chat:lobby"}, CONFIG).channel.name == "chat:lobby"
        assert _hub_error(cls.parse, {}, CONFIG) == (107, "channel must be a non-empty string")
        assert _hub_error(cls.parse, {"channel": "nope:x"}, CONFIG) == (
            102,
            "unknown namespace 'nope'",
        )


def test_subscribe() -> None:
    parsed = SubscribeParams.parse({"channel": "chat:lobby", "x": 1}, CONFIG)
    assert (parsed.channel.name, parsed.token, parsed.recover, parsed.since) == (
        "chat:lobby", None, False, None,
    )  # fmt: skip
    assert parsed.params == {"channel": "chat:lobby", "x": 1}  # for on_subscribe
    wanted = {"channel": "hist:a", "recover": True, "offset": 4, "epoch": "e"}
    assert SubscribeParams.parse(wanted, CONFIG).since == StreamPosition(4, "e")
    bad = "recover needs an integer offset and a string epoch"
    for fault in ({"offset": -1}, {"offset": "4"}, {"epoch": 1}, {"epoch": None}):
        assert _hub_error(SubscribeParams.parse, {**wanted, **fault}, CONFIG) == (107, bad)
    # Without history there is nothing to recover: the position is not looked at.
    lax = SubscribeParams.parse({"channel": "chat:x", "recover": True, "offset": "?"}, CONFIG)
    assert lax.recover and lax.since is None
    assert _hub_error(SubscribeParams.parse, {"channel": "chat:x", "token": 1}, CONFIG) == (
        107,
        "subscription token must be a string",
    )


def test_publish() -> None:
    parsed = PublishParams.parse({"channel": "chat:a", "data": None, "idempotency_key": 3}, CONFIG)
    assert (parsed.channel.name, parsed.data, parsed.idempotency_key) == ("chat:a", None, 3)
    assert _hub_error(PublishParams.parse, {"channel": "chat:a"}, CONFIG) == (
        107,
        "publish needs data",
    )


def test_history() -> None:
    assert HistoryQuery.parse({}) == HistoryQuery(None, None, False)
    query = {"limit": 2, "since": {"offset": 3}, "reverse": 1}
    assert HistoryQuery.parse(query) == HistoryQuery(2, StreamPosition(3, ""), True)
    parsed = HistoryParams.parse({"channel": "hist:a", "limit": 0}, CONFIG)
    assert parsed.channel.name == "hist:a" and parsed.query.limit == 0
    for bad in ({"limit": -1}, {"limit": 1.5}, {"limit": "3"}):
        assert _hub_error(HistoryQuery.parse, bad) == (107, "limit must be a non-negative integer")
    for bad in ({"since": 3}, {"since": {"epoch": "e"}}, {"since": {"offset": "1"}}):
        assert _hub_error(HistoryQuery.parse, bad) == (107, "since must be {offset, epoch}")


def test_api_params() -> None:
    nonempty = "{} must be a non-empty string"
    assert ApiPublishParams.parse({"channel": "a", "data": 1, "tags": {"k": "v"}}) == (
        ApiPublishParams("a", 1, {"k": "v"}, None)
    )
    assert _hub_error(ApiPublishParams.parse, {"channel": "a"}) == (107, "publish needs data")
    assert _hub_error(ApiPublishParams.parse, {"data": 1, "tags": {"k": 1}}) == (
        107,
        "tags must map strings to strings",
    )
    assert _hub_error(ApiPublishParams.parse, {"data": 1}) == (107, nonempty.format("channel"))
    assert ApiBroadcastParams.parse({"channels": ["a"], "data": 0}).channels == ["a"]
    for bad in ({"channels": [], "data": 0}, {"channels": [1], "data": 0}, {"data": 0}):
        assert _hub_error(ApiBroadcastParams.parse, bad) == (
            107,
            "channels must be a non-empty list of strings",
        )
    assert _hub_error(ApiBroadcastParams.parse, {"channels": ["a"]}) == (
        107,
        "broadcast needs data",
    )
    assert ApiChannelParams.parse({"channel": "c"}) == ApiChannelParams("c")
    assert ApiHistoryParams.parse({"channel": "c", "reverse": True}).query.reverse
    assert ApiDisconnectParams.parse({"user": "u"}) == ApiDisconnectParams(
        "u", 4502, "disconnected by the server"
    )
    assert ApiDisconnectParams.parse({"user": "u", "code": 4000, "reason": 7}).reason == "7"
    for code in (3999, 5000, "4000", None):
        assert _hub_error(ApiDisconnectParams.parse, {"user": "u", "code": code}) == (
            107,
            "code must be an integer in 4000-4999",
        )
    assert _hub_error(ApiUnsubscribeParams.parse, {"user": "u"}) == (
        107,
        nonempty.format("channel"),
    )
    for cls in (ApiSubscribeParams, ApiUnsubscribeParams):
        assert cls.parse({"user": "u", "channel": "c"}) == cls("u", "c", None)
        assert cls.parse({"user": "u", "channel": "c", "client": "k"}) == cls("u", "c", "k")
        assert _hub_error(cls.parse, {"user": "u", "channel": "c", "client": ""}) == (
            107,
            nonempty.format("client"),
        )
    assert ApiSendParams.parse({"client": "c", "data": 1}) == ApiSendParams(1, None, "c")
    assert _hub_error(ApiSendParams.parse, {"user": "u"}) == (107, "send needs data")
    for bad in ({"data": 1}, {"data": 1, "user": "u", "client": "c"}):
        assert _hub_error(ApiSendParams.parse, bad) == (107, "give exactly one of user or client")


def test_every_client_command_has_params() -> None:
    assert set(CLIENT_PARAMS) == {
        "connect", "refresh", "subscribe", "unsubscribe", "publish", "presence",
        "presence_stats", "history", "ping", "rpc", "send",
    }  # fmt: skip
