"""Error, disconnect and unsubscribe codes: plain integers on the wire, one reconnect rule,
and the browser client (web/pulsewire.js) agreeing with both."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import msgpack
import pytest

import pulsewire
from pulsewire.hub.errors import (
    NO_RECONNECT_CODES,
    Disconnect,
    DisconnectCode,
    ErrorCode,
    HubError,
    UnsubscribeCode,
    reconnects,
)
from pulsewire.hub.wire import JSON, JSON_SUBPROTOCOL, PROTOCOL_VERSION, MsgpackCodec

PULSEWIRE_JS = Path(pulsewire.__file__).parent / "web" / "pulsewire.js"
ALL_CODES = [*ErrorCode, *DisconnectCode, *UnsubscribeCode]


# ------------------------------------------------------------------------ the wire


def test_codes_keep_their_values() -> None:
    assert {c.name: int(c) for c in ErrorCode} == {
        "INTERNAL": 100, "UNAUTHORIZED": 101, "UNKNOWN_CHANNEL": 102, "PERMISSION_DENIED": 103,
        "METHOD_NOT_FOUND": 104, "ALREADY_SUBSCRIBED": 105, "LIMIT_EXCEEDED": 106,
        "BAD_REQUEST": 107, "NOT_AVAILABLE": 108, "TOKEN_EXPIRED": 109,
        "TOO_MANY_REQUESTS": 111, "NOT_SUBSCRIBED": 113, "OUTCOME_UNKNOWN": 114,
        "OVERLOADED": 115,
    }  # fmt: skip
    assert {c.name: int(c) for c in DisconnectCode} == {
        "SHUTDOWN": 4000, "TOKEN_EXPIRED": 4002, "STALE": 4003, "KEYS_UNAVAILABLE": 4004,
        "NO_PONG": 4005, "TOO_MANY_REQUESTS": 4008, "UNAVAILABLE": 4010,
        "INVALID_TOKEN": 4500, "BAD_REQUEST": 4501,
        "FORCE_NO_RECONNECT": 4502, "UNAUTHORIZED": 4503, "CONNECTION_LIMIT": 4504,
        "UNSUPPORTED_PROTOCOL": 4505,
    }  # fmt: skip
    assert {c.name: int(c) for c in UnsubscribeCode} == {
        "SERVER": 2000, "INSUFFICIENT_STATE": 2500, "EXPIRED": 2501,
    }  # fmt: skip


@pytest.mark.parametrize("code", ALL_CODES, ids=str)
def test_codes_encode_as_plain_integers(code: int) -> None:
    value = int(code)
    message = {"code": code, "error": HubError(code, "m").to_dict()}
    plain = {"code": value, "error": {"code": value, "message": "m"}}
    assert JSON.encode(message) == JSON.encode(plain)
    assert json.dumps(message) == json.dumps(plain)  # the C encoder
    assert json.dumps(message, indent=1) == json.dumps(plain, indent=1)  # the Python one
    assert MsgpackCodec().encode(message) == msgpack.packb(plain)
    assert (str(code), f"{code}", format(code, "d")) == (str(value),) * 3
    assert "%s %d" % (code, code) == f"{value} {value}"  # noqa: UP031 (logging formats so)


@pytest.mark.parametrize(
    ("code", "expected"),
    [(1000, True), (1006, True), (1013, True), (3999, True), (4000, True), (4499, True),
     (4500, False), (4501, False), (4999, False), (5000, True)],
)  # fmt: skip
def test_reconnect_rule(code: int, expected: bool) -> None:
    assert reconnects(code) is expected
    assert Disconnect(code, "r").reconnect is expected


def test_disconnect_codes_sit_on_the_side_their_comment_says() -> None:
    reconnecting = {c for c in DisconnectCode if c < 4500}
    assert all(reconnects(c) for c in reconnecting)
    assert not any(reconnects(c) for c in set(DisconnectCode) - reconnecting)


# ------------------------------------------------------------------- pulsewire.js


def _js() -> str:
    return PULSEWIRE_JS.read_text(encoding="utf-8")


def _js_int(name: str) -> int:
    match = re.search(rf"^const {name} = (-?\d+);", _js(), re.M)
    assert match, f"pulsewire.js no longer defines {name}"
    return int(match.group(1))


def test_js_names_the_python_codes() -> None:
    source = _js()
    assert _js_int("TOKEN_EXPIRED_ERROR") == ErrorCode.TOKEN_EXPIRED
    assert _js_int("DISCONNECT_TOKEN_EXPIRED") == DisconnectCode.TOKEN_EXPIRED
    assert _js_int("DISCONNECT_NO_PING") == DisconnectCode.NO_PONG
    assert _js_int("PROTOCOL_VERSION") == PROTOCOL_VERSION
    assert f'const SUBPROTOCOL = "{JSON_SUBPROTOCOL}";' in source
    match = re.search(r"^const TEMPORARY_ERRORS = new Set\(\[([\d, ]*)\]\);", source, re.M)
    assert match, "pulsewire.js no longer defines TEMPORARY_ERRORS"
    temporary = {int(n) for n in match.group(1).split(",")}
    assert temporary == {ErrorCode.NOT_AVAILABLE, ErrorCode.TOO_MANY_REQUESTS}


def test_every_js_code_constant_is_a_python_code() -> None:
    """A code constant added to pulsewire.js must exist on the Python side."""
    known = {int(c) for c in ALL_CODES}
    found = re.findall(r"^const (\w*(?:ERROR|DISCONNECT)\w*) = (\d+);", _js(), re.M)
    assert found  # the pattern still matches something
    for name, value in found:
        if int(value) >= 100:  # -1 and 0 are the client's own (timeout, connection lost)
            assert int(value) in known, f"{name} = {value} is not a hub code"


def test_js_reconnect_range_is_the_python_one() -> None:
    match = re.search(
        r"function shouldReconnect\(code\) \{\s*return !\(code >= (\d+) && code <= (\d+)\);\s*\}",
        _js(),
    )
    assert match, "shouldReconnect in pulsewire.js changed shape: update this test"
    low, high = int(match.group(1)), int(match.group(2))
    assert range(low, high + 1) == NO_RECONNECT_CODES


RUN_JS = """
import { readFileSync } from "node:fs";
const source = readFileSync(process.argv[2], "utf8") + "\\nexport { shouldReconnect };\\n";
const url = "data:text/javascript;base64," + Buffer.from(source).toString("base64");
const { shouldReconnect } = await import(url);
const stay = [];
for (let code = 1000; code <= 6000; code++) if (!shouldReconnect(code)) stay.push(code);
console.log(JSON.stringify(stay));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_js_reconnect_rule_runs_like_the_python_one(tmp_path: Path) -> None:
    """The client's own function, run by node for every code, against :func:`reconnects`."""
    script = tmp_path / "reconnect.mjs"
    script.write_text(RUN_JS, encoding="utf-8")
    node = shutil.which("node")
    assert node is not None
    out = subprocess.run(
        [node, str(script), str(PULSEWIRE_JS)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    stay = json.loads(out.stdout)
    assert stay == [code for code in range(1000, 6001) if not reconnects(code)]
