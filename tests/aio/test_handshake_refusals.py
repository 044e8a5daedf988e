"""Refused opening handshakes over real sockets: status, plain-text reason, then TCP closed."""

from __future__ import annotations

from typing import Any

import pytest

import pulsewire
from pulsewire import InvalidStatus

KEY = "dGhlIHNhbXBsZSBub25jZQ=="
GOOD = {
    "Host": "127.0.0.1",
    "Upgrade": "websocket",
    "Connection": "Upgrade",
    "Sec-WebSocket-Key": KEY,
    "Sec-WebSocket-Version": "13",
}


def request(
    start: str = "GET / HTTP/1.1",
    extra: list[tuple[str, str]] = (),  # type: ignore[assignment]
    **overrides: str | None,
) -> bytes:
    fields = dict(GOOD)
    fields.update({k.replace("_", "-"): v for k, v in overrides.items()})
    lines = [start, *(f"{k}: {v}" for k, v in fields.items() if v is not None)]
    lines += [f"{k}: {v}" for k, v in extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


CASES = [
    pytest.param(request("POST / HTTP/1.1", Content_Length="0"), 405, id="post"),
    pytest.param(request("GET / HTTP/1.0"), 400, id="http-1.0"),
    pytest.param(request(Host=None), 400, id="no-host"),
    pytest.param(request(Upgrade=None), 426, id="no-upgrade"),
    pytest.param(request(Upgrade="h2c"), 426, id="odd-upgrade"),
    pytest.param(request(Connection="keep-alive"), 426, id="no-connection-upgrade"),
    pytest.param(request(Sec_WebSocket_Key="c2hvcnQ="), 400, id="short-key"),
    pytest.param(request(Sec_WebSocket_Key=None), 400, id="no-key"),
    pytest.param(request(Sec_WebSocket_Version="8"), 426, id="version-8"),
    pytest.param(request(Sec_WebSocket_Version=None), 426, id="no-version"),
    pytest.param(request(Origin="https://evil.example"), 403, id="origin"),
    pytest.param(request(f"GET /{'a' * 9000} HTTP/1.1"), 414, id="long-target"),
    pytest.param(request(extra=[(f"X-{i}", "v") for i in range(101)]), 431, id="many-headers"),
    pytest.param(
        request(extra=[(f"X-Pad-{i}", "p" * 500) for i in range(40)]), 431, id="large-head"
    ),
    pytest.param(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", 400, id="malformed"),
    pytest.param(request("GET /nowhere HTTP/1.1"), 404, id="unknown-path"),
]


@pytest.fixture
async def server(start_server: Any) -> Any:
    async def handler(ws: Any) -> None:
        await ws.send("accepted")

    server, _ = await start_server(
        {"/": handler}, origins=["https://good.example"], close_timeout=1
    )
    return server


@pytest.mark.parametrize(("data", "status"), CASES)
async def test_refusal(server: Any, raw_client: Any, data: bytes, status: int) -> None:
    raw = await raw_client(server.port, handshake=False)
    await raw.send_raw(data)
    response = await raw.read_http_response()
    assert response.status == status
    assert (response.header("Content-Type") or "").startswith("text/plain")
    reason = response.body.decode("utf-8")
    assert reason.strip() and reason.endswith("\n")
    connection = [t.strip().lower() for t in (response.header("Connection") or "").split(",")]
    # An Upgrade header needs "Connection: upgrade" alongside (RFC 9110 7.8).
    assert ("upgrade" if response.header("Upgrade") else "close") in connection
    assert await raw.at_eof()
    assert server.refusals == {status: 1}
    if status == 405:
        assert response.header("Allow") == "GET"
    if status == 426 and "Version" in reason:
        assert response.header("Sec-WebSocket-Version") == "13"


async def test_valid_request_is_accepted(server: Any, raw_client: Any) -> None:
    raw = await raw_client(server.port, handshake=False)
    await raw.send_raw(
        request(
            Origin="https://good.example", Connection="keep-alive, Upgrade", Upgrade="WebSocket"
        )
    )
    response = await raw.read_head()
    assert response.status == 101
    assert response.header("Sec-WebSocket-Accept") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    frame = await raw.recv_frame()
    assert frame.payload == b"accepted"
    assert server.refusals == {}


async def test_version_refusal_advertises_13(server: Any, raw_client: Any) -> None:
    raw = await raw_client(server.port, handshake=False)
    await raw.send_raw(request(Sec_WebSocket_Version="8"))
    response = await raw.read_http_response()
    assert response.status == 426
    assert response.header("Sec-WebSocket-Version") == "13"


async def test_every_426_names_the_protocol_to_upgrade_to(server: Any, raw_client: Any) -> None:
    # RFC 9110 15.5.22: "The server MUST send an Upgrade header field in a 426 response".
    raw = await raw_client(server.port, handshake=False)
    await raw.send_raw(request(Sec_WebSocket_Version="8"))
    response = await raw.read_http_response()
    assert response.status == 426
    assert (response.header("Upgrade") or "").lower() == "websocket"


async def test_client_sees_the_reason(server: Any) -> None:
    url = f"ws://127.0.0.1:{server.port}/"
    with pytest.raises(InvalidStatus) as info:
        await pulsewire.connect(url, origin="https://evil.example")
    assert info.value.status == 403
    assert "evil.example" in info.value.body.decode()
    with pytest.raises(InvalidStatus) as info:
        await pulsewire.connect(url + "missing")
    assert info.value.status == 404
