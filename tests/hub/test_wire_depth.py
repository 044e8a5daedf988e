"""Commands nested deeper than MAX_DEPTH are bad requests where they enter (both codecs),
so that nothing decoded from a peer can hit the recursion limit when it is re-encoded."""

from __future__ import annotations

import json

import msgpack
import pytest

from pulsewire.hub.errors import ErrorCode, HubError
from pulsewire.hub.wire import JSON, MAX_DEPTH, MsgpackCodec, too_deep


def nested(depth: int) -> object:
    value: object = []
    for _ in range(depth - 1):
        value = [value]
    return value


def command(depth: int) -> dict[str, object]:
    # The command object is level 1, params level 2, data from level 3 on.
    return {"id": 1, "method": "publish", "params": {"channel": "a", "data": nested(depth - 2)}}


def test_too_deep():
    assert not too_deep(nested(MAX_DEPTH))
    assert too_deep(nested(MAX_DEPTH + 1))
    assert not too_deep({"a": [1, {"b": 2}]}, limit=3)
    assert too_deep({"a": [1, {"b": {}}]}, limit=3)
    assert not too_deep(5)


@pytest.mark.parametrize("codec", [JSON, MsgpackCodec()], ids=["json", "msgpack"])
def test_deep_commands_are_bad_requests(codec):
    def encode(value: object) -> str | bytes:
        return json.dumps(value) if not codec.binary else msgpack.packb(value)

    assert codec.decode_commands(encode(command(MAX_DEPTH))) == [command(MAX_DEPTH)]
    with pytest.raises(HubError) as refused:
        codec.decode_commands(encode(command(MAX_DEPTH + 1)))
    assert refused.value.code == ErrorCode.BAD_REQUEST
    assert "nested more than 128 levels" in refused.value.message


def test_json_nesting_past_the_interpreter_limit_is_a_bad_request():
    with pytest.raises(HubError) as refused:
        JSON.decode_commands('{"id":1,"params":' + "[" * 5000 + "]" * 5000 + "}")
    assert refused.value.code == ErrorCode.BAD_REQUEST
