"""Control messages (pulsewire.hub.control): the dicts on the engine's control channel are
the ones nodes have always sent (an older node understands a newer one, and back)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulsewire.hub.control import (
    NODE_OPS,
    DisconnectControl,
    MessageControl,
    NodeAnnounce,
    NodeDead,
    NodeGone,
    NodeLoad,
    SubscribeControl,
    UnsubscribeControl,
    parse_control,
)
from pulsewire.hub.errors import DisconnectCode

INFO = {"name": "n1", "sessions": 3, "users": 2, "channels": 1, "engine": "redis"}

# (the dataclass, the dict Hub built before the dataclasses, "from" added last by Hub._control)
WIRE = [
    (
        DisconnectControl("42", code=DisconnectCode.FORCE_NO_RECONNECT, reason="bye", sender="n1"),
        {"op": "disconnect", "user": "42", "code": 4502, "reason": "bye", "from": "n1"},
    ),
    (
        UnsubscribeControl("42", "chat:lobby", sender="n1"),
        {"op": "unsubscribe", "user": "42", "channel": "chat:lobby", "from": "n1"},
    ),
    (
        UnsubscribeControl("42", "chat:lobby", "c1", sender="n1"),
        {"op": "unsubscribe", "user": "42", "client": "c1", "channel": "chat:lobby", "from": "n1"},
    ),
    (
        SubscribeControl("42", "chat:lobby", sender="n1"),
        {"op": "subscribe", "user": "42", "channel": "chat:lobby", "from": "n1"},
    ),
    (
        SubscribeControl("42", "chat:lobby", "c1", sender="n1"),
        {"op": "subscribe", "user": "42", "client": "c1", "channel": "chat:lobby", "from": "n1"},
    ),
    (
        MessageControl("42", None, {"n": 1}, sender="n1"),
        {"op": "message", "user": "42", "client": None, "data": {"n": 1}, "from": "n1"},
    ),
    (
        MessageControl(None, "c1", "just you", sender="n1"),
        {"op": "message", "user": None, "client": "c1", "data": "just you", "from": "n1"},
    ),
    (
        NodeAnnounce("n1", "i1", INFO),
        {"op": "node", "from": "n1", "instance": "i1", "info": INFO},
    ),
    (
        NodeDead("i2", "n2", sender="n1"),
        {"op": "node_dead", "instance": "i2", "node": "n2", "from": "n1"},
    ),
    (
        NodeGone("i1", True, sender="n1"),
        {"op": "node_gone", "instance": "i1", "clean": True, "from": "n1"},
    ),
    (
        NodeLoad("n1", "i1", True, 0.75, ("chat:a", "chat:b")),
        {
            "op": "load",
            "from": "n1",
            "instance": "i1",
            "overloaded": True,
            "lag": 0.75,
            "channels": ["chat:a", "chat:b"],
        },
    ),
    (
        NodeLoad("n1", "i1", True, 1.5, "all"),
        {
            "op": "load",
            "from": "n1",
            "instance": "i1",
            "overloaded": True,
            "lag": 1.5,
            "channels": "all",
        },
    ),
    (
        NodeLoad("n1", "i1", False),
        {
            "op": "load",
            "from": "n1",
            "instance": "i1",
            "overloaded": False,
            "lag": 0.0,
            "channels": [],
        },
    ),
]


@pytest.mark.parametrize(("control", "wire"), WIRE, ids=lambda v: getattr(v, "op", ""))
def test_the_wire_dicts_are_unchanged(control: Any, wire: dict[str, Any]) -> None:
    assert list(control.to_dict().items()) == list(wire.items())  # same keys, same order
    assert json.dumps(control.to_dict()) == json.dumps(wire)
    assert parse_control(wire) == control
    assert parse_control(json.loads(json.dumps(wire))) == control


def test_node_ops() -> None:
    assert {c.op for c, _ in WIRE} - NODE_OPS == {
        "disconnect",
        "unsubscribe",
        "subscribe",
        "message",
    }


def test_read_as_leniently_as_before() -> None:
    # A node of a version without instance ids; no sender.
    assert parse_control({"op": "node", "info": None}) == NodeAnnounce("", "", {})
    assert parse_control({"op": "node", "from": "n", "instance": 5}) == NodeAnnounce("n", "", {})
    assert parse_control({"op": "node_dead", "node": None}) == NodeDead("", "")
    assert parse_control({"op": "node_gone", "instance": "i"}) == NodeGone("i", False)
    assert parse_control({"op": "disconnect", "user": 42}) == DisconnectControl(
        "42", None, DisconnectCode.FORCE_NO_RECONNECT, ""
    )
    assert parse_control({"op": "disconnect", "client": "c", "code": "4000"}) == (
        DisconnectControl(None, "c", 4000, "")
    )
    assert parse_control({"op": "unsubscribe", "user": "u"}) == UnsubscribeControl("u", "None")
    with pytest.raises(ValueError):
        parse_control({"op": "disconnect", "user": "u", "code": "soon"})


def test_a_load_message_is_read_leniently_and_refused_when_it_cannot_be_meant() -> None:
    assert parse_control({"op": "load", "from": "n", "instance": "i"}) == NodeLoad("n", "i", False)
    # channels are kept sorted, whatever order they came in
    message = {"op": "load", "from": "n", "instance": "i", "overloaded": 1, "lag": "0.5",
               "channels": ["b", "a"]}  # fmt: skip
    assert parse_control(message) == NodeLoad("n", "i", True, 0.5, ("a", "b"))
    for bad in ({"lag": "soon"}, {"lag": -1}, {"lag": float("nan")}, {"lag": 10**400},
                {"channels": "some"}, {"channels": {"a": 1}}):  # fmt: skip
        with pytest.raises(ValueError):
            parse_control({"op": "load", "overloaded": True, **bad})


def test_unknown_ops_are_ignored() -> None:
    assert parse_control({"op": "from-a-newer-version", "user": "u"}) is None
    assert parse_control({}) is None
    assert parse_control({"op": ["node"]}) is None


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
ops = st.sampled_from([c.op for c, _ in WIRE] + ["other"])
FIELDS = "from user client code reason channel data instance info node overloaded lag channels"
fields = st.sampled_from(FIELDS.split())


@settings(max_examples=300, deadline=None)
@given(op=ops, rest=st.dictionaries(fields, json_values, max_size=6))
def test_garbage_raises_nothing_but_value_error(op: str, rest: dict[str, Any]) -> None:
    message = {"op": op, **rest}
    try:
        parsed = parse_control(message)
    except ValueError:
        assert op in ("disconnect", "load")
        return
    if parsed is None:
        assert op == "other"
    else:
        assert parse_control(parsed.to_dict()) == parsed  # what it says survives the trip
