"""Reply and push builders (pulsewire.hub.messages) against the examples of docs/protocol.md:
each builder, given the example's values, returns the example (so a change of shape shows up
here, and so does a change of the documentation)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pulsewire.hub.config import ChannelOptions, HubConfig
from pulsewire.hub.errors import DisconnectCode, ErrorCode, HubError, UnsubscribeCode
from pulsewire.hub.messages import (
    api_error,
    api_result,
    broadcast_result,
    channels_result,
    connect_result,
    disconnect_push,
    error_dict,
    error_reply,
    history_result,
    info_result,
    join_push,
    leave_push,
    message_push,
    presence_result,
    presence_stats_result,
    publication_dict,
    publication_push,
    publish_result,
    refresh_result,
    reply,
    rpc_result,
    subscribe_push,
    subscribe_result,
    unsubscribe_push,
)
from pulsewire.hub.requests import CLIENT_PARAMS, Command, HistoryParams, SubscribeParams
from pulsewire.hub.types import ClientInfo, HistoryResult, Publication, StreamPosition
from pulsewire.hub.wire import JSON, MsgpackCodec
from pulsewire.transports.http_session import disconnect_message

PROTOCOL_MD = Path(__file__).parents[2] / "docs" / "protocol.md"


def _objects(text: str) -> list[Any]:
    """Every JSON value that parses in ``text`` (examples with ``...`` in them do not)."""
    found = []
    decoder = json.JSONDecoder()
    at = 0
    while at < len(text):
        while at < len(text) and text[at].isspace():
            at += 1
        if at >= len(text):
            break
        try:
            value, at = decoder.raw_decode(text, at)
            found.append(value)
        except ValueError:
            line_end = text.find("\n", at)
            at = len(text) if line_end < 0 else line_end + 1
    return found


def _examples() -> list[dict[str, Any]]:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    found = []
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        found.extend(_objects(block))
    # The HTTP API's answers, shown as comments under the curl examples.
    for line in re.findall(r"^# (\{.*)$", text, re.M):
        found.extend(_objects(line))
    return [value for value in found if isinstance(value, dict)]


EXAMPLES = _examples()


def example(*, api: bool = False, **fields: Any) -> dict[str, Any]:
    """The first documented example that has these top-level fields (``...`` matches any);
    ``api``: an HTTP API answer (no ``id``)."""
    matches = [
        value
        for value in EXAMPLES
        if all(k in value and (v is ... or value[k] == v) for k, v in fields.items())
        and not (api and "id" in value)
    ]
    assert matches, f"docs/protocol.md has no example with {fields}"
    return matches[0]


def _info(value: dict[str, Any]) -> ClientInfo:
    return ClientInfo.from_dict(value)


def _publication(value: dict[str, Any]) -> Publication:
    info = value.get("info")
    return Publication(
        value["data"],
        offset=value.get("offset", 0),
        info=_info(info) if info else None,
        tags=value.get("tags"),
    )


def test_the_examples_are_found() -> None:
    assert len(EXAMPLES) > 30


def test_replies() -> None:
    assert reply(2, {}) == example(id=2, result={})
    assert reply(2, None) == {"id": 2, "result": {}}
    error = example(id=3, error=...)
    assert error_reply(3, error["error"]["code"], error["error"]["message"]) == error
    assert error_dict(107, "m") == HubError(ErrorCode.BAD_REQUEST, "m").to_dict()


def test_connect_and_refresh_results() -> None:
    doc = example(id=1, result=...)
    result = doc["result"]
    built = connect_result(
        result["client"], result["user"], result["node"], result["transport"], ttl=3599.7
    )
    assert reply(1, built) == doc
    assert "expires" not in connect_result("c", "u", "n", "sse")
    assert connect_result("c", "u", "n", "sse", subs={"a": {}})["subs"] == {"a": {}}
    doc = next(e for e in EXAMPLES if "server_subs" in e.get("result", {}))
    result = doc["result"]
    built = connect_result(
        result["client"],
        result["user"],
        result["node"],
        result["transport"],
        server_subs=dict(result["server_subs"]),
    )
    assert reply(1, built) == doc
    assert "server_subs" not in connect_result("c", "u", "n", "sse", server_subs={})
    assert reply(9, refresh_result(3599.2)) == example(id=9, result=...)
    assert refresh_result(None) == {"expires": False}


def test_subscribe_results() -> None:
    plain = example(id=2, result={"recoverable": True, "epoch": "9f1c2e3d", "offset": 41})
    assert reply(2, subscribe_result(StreamPosition(41, "9f1c2e3d"))) == plain
    recovered = next(e["result"] for e in EXAMPLES if "recovered" in e.get("result", {}))
    built = subscribe_result(
        StreamPosition(44, "9f1c2e3d"),
        recovered=True,
        publications=[_publication(p) for p in recovered["publications"]],
    )
    assert built == recovered
    assert subscribe_result(None) == {}
    assert subscribe_result(StreamPosition(1, "e"), recovered=False) == {
        "recoverable": True, "epoch": "e", "offset": 1, "recovered": False, "publications": [],
    }  # fmt: skip


def test_command_results() -> None:
    assert reply(3, publish_result(StreamPosition(42, "9f1c2e3d"))) == example(
        id=3, result={"offset": 42, "epoch": "9f1c2e3d"}
    )
    assert publish_result(None) == {}
    doc = example(id=6, result=...)
    clients = {cid: _info(info) for cid, info in doc["result"]["clients"].items()}
    assert reply(6, presence_result(clients)) == doc
    assert reply(7, presence_stats_result(3, 2)) == example(id=7, result=...)
    doc = example(id=8, result=...)
    history = HistoryResult(
        [_publication(p) for p in doc["result"]["publications"]], StreamPosition(42, "9f1c2e3d")
    )
    assert reply(8, history_result(history)) == doc
    assert reply(11, rpc_result(3)) == example(id=11, result=...)


def test_pushes() -> None:
    for doc in (example(push="publication", tags=...), example(push="publication", info=...)):
        publication = _publication(doc)
        assert publication_push(doc["channel"], publication) == doc
    doc = example(push="publication", data="f")
    assert publication_push("chat:lobby", Publication("f", offset=45)) == doc
    for kind, build in (("join", join_push), ("leave", leave_push)):
        doc = example(push=kind)
        assert build(doc["channel"], _info(doc["info"])) == doc
    doc = example(push="unsubscribe")
    built = unsubscribe_push(
        "chat:lobby", UnsubscribeCode.SERVER, "unsubscribed by the server", resubscribe=False
    )
    assert built == doc
    for fields in ({"offset": 12}, {"recovered": False}, {"recoverable": None}):
        doc = example(push="subscribe", **{k: ... if v is None else v for k, v in fields.items()})
        position = StreamPosition(doc["offset"], doc["epoch"]) if "epoch" in doc else None
        recovered = doc.get("recovered")
        result = subscribe_result(position, recovered=recovered, publications=[])
        assert subscribe_push(doc["channel"], result) == doc
    assert example(push="subscribe", channel="team:blue") == {
        "push": "subscribe",
        "channel": "team:blue",
    }
    assert message_push({"notice": "maintenance at 18:00"}) == example(push="message")
    assert disconnect_push(DisconnectCode.TOKEN_EXPIRED, "token expired") == example(
        push="disconnect"
    )
    assert disconnect_push(4501, "bad")["reconnect"] is False
    assert disconnect_push(1013, "slow")["reconnect"] is True


def test_publication_fields_are_omitted_when_absent() -> None:
    assert publication_dict(Publication({"a": 1})) == {"data": {"a": 1}}
    info = ClientInfo("c", "u")
    full = publication_dict(Publication(1, offset=2, info=info, tags={"k": "v"}, epoch="e"))
    assert full == {
        "data": 1,
        "offset": 2,
        "info": {"client": "c", "user": "u"},
        "tags": {"k": "v"},
    }


@pytest.mark.parametrize("codec", [JSON, MsgpackCodec()], ids=lambda c: c.name)
def test_publication_push_bytes_are_unchanged(codec: Any) -> None:
    """The push's keys keep the order of the hub's encoder before the builders (the wire's
    bytes are the same): publication fields, then push and channel."""
    publication = Publication("x", offset=3, info=ClientInfo("c", "u"), tags={"k": "v"})
    before = {"data": "x", "offset": 3, "info": {"client": "c", "user": "u"}, "tags": {"k": "v"}}
    before.update(push="publication", channel="ch")
    assert codec.encode(publication_push("ch", publication)) == codec.encode(before)


def test_disconnect_message_is_the_disconnect_push() -> None:
    assert disconnect_message(4002, "token expired") == (
        '{"push":"disconnect","code":4002,"reason":"token expired","reconnect":true}'
    )
    assert json.loads(disconnect_message(4500, "é")) == disconnect_push(4500, "é")
    assert "é" in disconnect_message(4500, "é")  # not escaped, as before


def test_api_answers() -> None:
    position = StreamPosition(5, "9f1c2e3d")
    assert api_result(publish_result(position)) == example(api=True, result=...)
    stats = {"num_clients": 3, "num_users": 2}
    assert api_result(presence_stats_result(3, 2)) == example(api=True, result=stats)
    channels = channels_result({"chat:lobby": 3})
    assert api_result(channels) == example(api=True, result={"channels": {"chat:lobby": 3}})
    assert api_result(None) == {"result": {}} == example(api=True, result={})
    assert api_error(114, "m") == {"error": {"code": 114, "message": "m"}}
    assert info_result("n", {"n": {}}) == {"node": "n", "nodes": {"n": {}}}
    outcomes = [None, StreamPosition(1, "e"), HubError(102, "unknown namespace 'nope'")]
    assert broadcast_result(outcomes) == {
        "responses": [
            {"result": {}},
            {"result": {"offset": 1, "epoch": "e"}},
            {"error": {"code": 102, "message": "unknown namespace 'nope'"}},
        ]
    }


def test_documented_requests_parse() -> None:
    config = HubConfig(
        namespaces={"chat": ChannelOptions(presence=True, history_size=9, history_ttl=9)}
    )
    requests = [value for value in EXAMPLES if "method" in value]
    assert {r["method"] for r in requests} >= {"connect", "subscribe", "publish", "history"}
    for value in requests:
        command = Command.parse(value)
        parsed = CLIENT_PARAMS[command.method].parse(command.params, config)
        assert type(parsed).method == command.method
    recover = next(r for r in requests if r["params"].get("recover"))
    assert SubscribeParams.parse(recover["params"], config).since == StreamPosition(41, "9f1c2e3d")
    history = HistoryParams.parse(example(method="history")["params"], config)
    assert (history.query.limit, history.query.reverse) == (2, True)
