"""End-to-end tests of pulsewire.serve over real loopback sockets."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import pulsewire
from pulsewire import ConnectionClosed, ConnectionClosedError, ConnectionClosedOK, InvalidStatus

TIMEOUT = 5


async def recv(ws: Any) -> Any:
    return await asyncio.wait_for(ws.recv(), TIMEOUT)


# =============================================================================== messages


async def test_text_and_binary(echo_server: str) -> None:
    async with pulsewire.connect(echo_server) as ws:
        await ws.send("héllo ✓")
        assert await recv(ws) == "héllo ✓"
        await ws.send(b"\x00\x01\xff")
        assert await recv(ws) == b"\x00\x01\xff"
        await ws.send(bytearray(b"ba"))
        assert await recv(ws) == b"ba"
        await ws.send(memoryview(b"mv"))
        assert await recv(ws) == b"mv"
        await ws.send("")
        assert await recv(ws) == ""


async def test_many_messages_in_order(echo_server: str) -> None:
    async with pulsewire.connect(echo_server) as ws:
        for i in range(200):
            await ws.send(f"m{i}")
        assert [await recv(ws) for _ in range(200)] == [f"m{i}" for i in range(200)]


async def test_send_rejects_other_types(echo_server: str) -> None:
    async with pulsewire.connect(echo_server) as ws:
        with pytest.raises(TypeError):
            await ws.send(42)
        with pytest.raises(TypeError):
            await ws.send({"a": 1})
        await ws.send("still open")
        assert await recv(ws) == "still open"


async def test_fragmented_from_iterables(echo_server: str) -> None:
    async def agen(items: list[Any]) -> AsyncIterator[Any]:
        for item in items:
            await asyncio.sleep(0)
            yield item

    async with pulsewire.connect(echo_server) as ws:
        await ws.send(["frag", "mén", "ted"])
        assert await recv(ws) == "fragménted"
        await ws.send([b"a", b"b", b"c"])
        assert await recv(ws) == b"abc"
        await ws.send(iter(["one"]))
        assert await recv(ws) == "one"
        await ws.send(agen(["x", "y", "z"]))
        assert await recv(ws) == "xyz"
        await ws.send(agen([b"1", b"2"]))
        assert await recv(ws) == b"12"
        await ws.send(part for part in ("gen", "erator"))
        assert await recv(ws) == "generator"


async def test_server_sends_real_fragments(start_server: Any, raw_client: Any) -> None:
    async def handler(ws: Any) -> None:
        await ws.send(["ab", "cd", "ef"])
        await ws.recv()

    server, _ = await start_server(handler, compression=None)
    raw = await raw_client(server.port)
    frames = [await raw.recv_frame() for _ in range(3)]
    assert [(f.opcode, f.fin, f.payload) for f in frames] == [
        (0x1, False, b"ab"),
        (0x0, False, b"cd"),
        (0x0, True, b"ef"),
    ]
    assert not any(f.masked for f in frames)


async def test_mixed_fragments_are_refused(echo_server: str) -> None:
    async with pulsewire.connect(echo_server) as ws:
        with pytest.raises(TypeError):
            await ws.send(["text", b"bytes"])
        with pytest.raises(ConnectionClosed):
            await recv(ws)


@pytest.mark.parametrize("compression", ["deflate", None])
async def test_large_messages(start_server: Any, compression: str | None) -> None:
    _, url = await start_server(max_size=16 * 2**20, compression=compression)
    text = "0123456789abcdef" * (2**20 // 4)  # 4 MiB
    data = bytes(range(256)) * (3 * 2**20 // 256)
    async with pulsewire.connect(url, max_size=16 * 2**20, compression=compression) as ws:
        await ws.send(text)
        assert await recv(ws) == text
        await ws.send(data)
        assert await recv(ws) == data


@pytest.mark.parametrize(
    ("server_compression", "client_compression", "negotiated"),
    [("deflate", "deflate", True), (None, "deflate", False), ("deflate", None, False)],
)
async def test_compression_negotiation(
    start_server: Any, server_compression: Any, client_compression: Any, negotiated: bool
) -> None:
    connections: list[Any] = []

    async def handler(ws: Any) -> None:
        connections.append(ws)
        await echo(ws)

    _, url = await start_server(handler, compression=server_compression)
    async with pulsewire.connect(url, compression=client_compression) as ws:
        message = "compress me " * 1000
        await ws.send(message)
        assert await recv(ws) == message
        expected = "permessage-deflate" if negotiated else ""
        assert ws.extensions == expected
        assert connections[0].extensions == expected
        assert (connections[0]._proto.deflate is not None) == negotiated


async def echo(ws: Any) -> None:
    async for message in ws:
        await ws.send(message)


async def test_compressed_frames_on_the_wire(start_server: Any, raw_client: Any) -> None:
    async def handler(ws: Any) -> None:
        await ws.send("z" * 10_000)
        await ws.send("z" * 10_000, compress=False)
        await ws.recv()

    server, _ = await start_server(handler)
    offer = [("Sec-WebSocket-Extensions", "permessage-deflate")]
    raw = await raw_client(server.port, headers=offer)
    assert raw.response.header("Sec-WebSocket-Extensions") == "permessage-deflate"
    compressed, plain = await raw.recv_frame(), await raw.recv_frame()
    assert compressed.rsv1 and len(compressed.payload) < 200
    assert not plain.rsv1 and plain.payload == b"z" * 10_000


# =============================================================================== closing


async def test_async_for_ends_on_a_normal_close(start_server: Any) -> None:
    async def handler(ws: Any) -> None:
        for i in range(3):
            await ws.send(f"msg {i}")

    _, url = await start_server(handler)
    async with pulsewire.connect(url) as ws:
        received = [m async for m in ws]
        assert received == ["msg 0", "msg 1", "msg 2"]
        assert ws.close_code == 1000
        with pytest.raises(ConnectionClosedOK):
            await ws.recv()


async def test_async_for_raises_on_an_abnormal_close(start_server: Any) -> None:
    async def handler(ws: Any) -> None:
        await ws.send("before")
        await asyncio.sleep(0.05)
        ws.abort()

    _, url = await start_server(handler)
    ws = await pulsewire.connect(url)
    received = []
    with pytest.raises(ConnectionClosedError) as info:
        async for message in ws:
            received.append(message)
    assert received == ["before"]
    assert info.value.code == 1006
    assert ws.close_code == 1006


async def test_async_for_raises_on_an_error_code(start_server: Any) -> None:
    async def handler(ws: Any) -> None:
        await ws.close(1011, "oops")

    _, url = await start_server(handler)
    async with pulsewire.connect(url) as ws:
        with pytest.raises(ConnectionClosedError) as info:
            async for _ in ws:
                pass
        assert (info.value.code, info.value.reason) == (1011, "oops")


async def test_client_close_code_and_reason_reach_the_server(start_server: Any) -> None:
    seen: asyncio.Future[tuple[int, str, type]] = asyncio.get_running_loop().create_future()

    async def handler(ws: Any) -> None:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            seen.set_result((exc.code, exc.reason, type(exc)))
            await ws.wait_closed()
            assert (ws.close_code, ws.close_reason) == (4000, "client leaving")

    _, url = await start_server(handler)
    ws = await pulsewire.connect(url)
    await asyncio.wait_for(ws.close(4000, "client leaving"), TIMEOUT)
    assert await asyncio.wait_for(seen, TIMEOUT) == (4000, "client leaving", ConnectionClosedError)
    assert ws.close_code == 4000  # the server echoed the code
    assert ws.closed


async def test_server_close_code_and_reason_reach_the_client(start_server: Any) -> None:
    async def handler(ws: Any) -> None:
        await ws.close(4001, "server says bye")
        assert ws.close_code == 4001

    _, url = await start_server(handler)
    async with pulsewire.connect(url) as ws:
        with pytest.raises(ConnectionClosedError) as info:
            await recv(ws)
        assert (info.value.code, info.value.reason) == (4001, "server says bye")
        assert (ws.close_code, ws.close_reason) == (4001, "server says bye")


async def test_normal_close_is_ok_on_both_sides(start_server: Any) -> None:
    outcome: asyncio.Future[BaseException] = asyncio.get_running_loop().create_future()

    async def handler(ws: Any) -> None:
        try:
            await ws.recv()
        except ConnectionClosed as exc:
            outcome.set_result(exc)

    _, url = await start_server(handler)
    async with pulsewire.connect(url):
        pass
    exc = await asyncio.wait_for(outcome, TIMEOUT)
    assert isinstance(exc, ConnectionClosedOK) and exc.code == 1000


async def test_handler_exception_closes_with_1011(start_server: Any) -> None:
    async def handler(ws: Any) -> None:
        raise RuntimeError("boom")

    _, url = await start_server(handler)
    async with pulsewire.connect(url) as ws:
        with pytest.raises(ConnectionClosedError) as info:
            await recv(ws)
        assert info.value.code == 1011


async def test_send_after_close_raises(echo_server: str) -> None:
    ws = await pulsewire.connect(echo_server)
    await ws.close()
    with pytest.raises(ConnectionClosedOK):
        await ws.send("late")
    with pytest.raises(ConnectionClosedOK):
        await ws.ping()
    await ws.close()  # idempotent


# =============================================================================== ping


async def test_ping_returns_the_round_trip_time(start_server: Any) -> None:
    async def handler(ws: Any) -> None:
        rtt = await asyncio.wait_for(ws.ping(), TIMEOUT)
        await ws.send(repr((type(rtt).__name__, rtt >= 0)))
        await echo(ws)

    _, url = await start_server(handler)
    async with pulsewire.connect(url, ping_interval=None) as ws:
        assert await recv(ws) == "('float', True)"
        rtt = await asyncio.wait_for(ws.ping(), TIMEOUT)
        assert isinstance(rtt, float) and rtt >= 0
        rtts = await asyncio.wait_for(
            asyncio.gather(ws.ping(b"a"), ws.ping("b"), ws.ping()), TIMEOUT
        )
        assert all(isinstance(r, float) for r in rtts)
        await ws.pong(b"unsolicited")
        await ws.send("still fine")
        assert await recv(ws) == "still fine"


async def test_keepalive_closes_a_peer_that_never_answers(
    start_server: Any, raw_client: Any
) -> None:
    server, _ = await start_server(ping_interval=0.2, ping_timeout=0.2, close_timeout=1)
    raw = await raw_client(server.port)  # completes the handshake, then answers nothing
    frames = await raw.recv_until_close(timeout=TIMEOUT)
    assert frames[0].opcode == 0x9  # a keepalive Ping
    assert frames[-1].opcode == 0x8
    assert frames[-1].close_code == 1011
    assert await raw.at_eof()


async def test_keepalive_keeps_a_responsive_peer(start_server: Any) -> None:
    connections: list[Any] = []

    async def handler(ws: Any) -> None:
        connections.append(ws)
        await echo(ws)

    # A generous ping_timeout: a loaded machine must not turn this into a timeout test.
    _, url = await start_server(handler, ping_interval=0.05, ping_timeout=0.5)
    async with pulsewire.connect(url, ping_interval=None) as ws:
        await asyncio.sleep(0.8)  # a keepalive round or two
        await ws.send("alive")
        assert await recv(ws) == "alive"
        assert connections[0].latency > 0


# =============================================================================== routing


async def test_routing_by_path(start_server: Any) -> None:
    async def a(ws: Any) -> None:
        await ws.send(f"a {ws.path} {ws.request.target}")

    async def b(ws: Any) -> None:
        await ws.send("b")

    server, url = await start_server({"/a": a, "/b": b})
    async with pulsewire.connect(url + "a?x=1") as ws:
        assert await recv(ws) == "a /a /a?x=1"
    async with pulsewire.connect(url + "b") as ws:
        assert await recv(ws) == "b"
    with pytest.raises(InvalidStatus) as info:
        await pulsewire.connect(url + "c")
    assert info.value.status == 404
    assert b"/c" in info.value.body
    with pytest.raises(InvalidStatus):
        await pulsewire.connect(url)
    assert server.refusals.get(404) == 2


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_process_request_answers_plain_http(
    start_server: Any, raw_client: Any, asynchronous: bool
) -> None:
    def answer(request: Any) -> Any:
        if request.path == "/health":
            return 200, [("X-Health", "ok")], "OK\n"
        if request.headers.get("Authorization") != "Bearer t":
            return 401, [], "missing token\n"
        return None

    async def async_answer(request: Any) -> Any:
        await asyncio.sleep(0)
        return answer(request)

    server, url = await start_server(process_request=async_answer if asynchronous else answer)
    raw = await raw_client(server.port, handshake=False)
    await raw.send_raw(f"GET /health HTTP/1.1\r\nHost: {url[5:-1]}\r\n\r\n".encode())
    response = await raw.read_http_response()
    assert response.status == 200
    assert response.header("X-Health") == "ok"
    assert response.body == b"OK\n"
    assert await raw.at_eof()

    with pytest.raises(InvalidStatus) as info:
        await pulsewire.connect(url)
    assert info.value.status == 401 and info.value.body == b"missing token\n"
    async with pulsewire.connect(url, additional_headers={"Authorization": "Bearer t"}) as ws:
        await ws.send("in")
        assert await recv(ws) == "in"


async def test_process_request_failure_is_500(start_server: Any) -> None:
    def broken(request: Any) -> None:
        raise ValueError("bug in the hook")

    _, url = await start_server(process_request=broken)
    with pytest.raises(InvalidStatus) as info:
        await pulsewire.connect(url)
    assert info.value.status == 500


async def test_subprotocol(start_server: Any) -> None:
    async def handler(ws: Any) -> None:
        await ws.send(str(ws.subprotocol))

    _, url = await start_server(handler, subprotocols=["v2", "v1"])
    async with pulsewire.connect(url, subprotocols=["v1", "v2"]) as ws:
        assert ws.subprotocol == "v2"
        assert await recv(ws) == "v2"
    async with pulsewire.connect(url, subprotocols=["v3"]) as ws:
        assert ws.subprotocol is None
        assert await recv(ws) == "None"


# =============================================================================== limits


async def test_max_size_on_the_server(start_server: Any) -> None:
    codes: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handler(ws: Any) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        finally:
            await ws.wait_closed()
            codes.set_result(ws._proto.close_sent.code)

    _, url = await start_server(handler, max_size=1000)
    async with pulsewire.connect(url) as ws:
        await ws.send(b"x" * 1000)
        assert await recv(ws) == b"x" * 1000
        await ws.send(b"x" * 1001)
        with pytest.raises(ConnectionClosedError) as info:
            await recv(ws)
        assert info.value.code == 1009
    assert await asyncio.wait_for(codes, TIMEOUT) == 1009


async def test_max_size_on_the_client(start_server: Any) -> None:
    codes: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()

    async def handler(ws: Any) -> None:
        await ws.send("y" * 2000)
        await ws.wait_closed()
        codes.set_result(ws.close_code)

    _, url = await start_server(handler)
    async with pulsewire.connect(url, max_size=1000) as ws:
        with pytest.raises(ConnectionClosedError) as info:
            await recv(ws)
        assert info.value.sent is not None and info.value.sent.code == 1009
    assert await asyncio.wait_for(codes, TIMEOUT) == 1009


async def test_compressed_message_inflating_past_max_size(start_server: Any) -> None:
    _, url = await start_server(max_size=10_000)
    async with pulsewire.connect(url) as ws:
        await ws.send("a" * 100_000)  # a few hundred bytes on the wire
        with pytest.raises(ConnectionClosedError) as info:
            await recv(ws)
        assert info.value.code == 1009


# =============================================================================== flow control


async def test_write_backpressure(start_server: Any, raw_client: Any) -> None:
    message = b"w" * 65536
    result: asyncio.Future[tuple[int, int, bool]] = asyncio.get_running_loop().create_future()

    async def handler(ws: Any) -> None:
        sent = 0
        peak = 0
        blocked = False
        for _ in range(400):  # 26 MB: far more than socket buffers hold
            try:
                await asyncio.wait_for(ws.send(message), 0.5)
            except asyncio.TimeoutError:
                blocked = True
                break
            sent += 1
            peak = max(peak, ws._transport.get_write_buffer_size())
        result.set_result((sent, peak, blocked))
        ws.abort()

    server, _ = await start_server(handler, compression=None, close_timeout=1)
    raw = await raw_client(server.port, rcvbuf=4096)  # completes the handshake, never reads
    sent, peak, blocked = await asyncio.wait_for(result, 30)
    assert blocked, f"send never blocked ({sent} messages of 64 KiB sent)"
    assert sent < 400
    # The transport's buffer stays around its high-water mark plus one message.
    assert peak <= 4 * len(message), peak
    await raw.close()


async def test_read_backpressure(start_server: Any) -> None:
    max_queue = 4
    message = b"r" * 65536
    count = 300
    connection: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    release = asyncio.Event()
    drained: asyncio.Future[int] = asyncio.get_running_loop().create_future()

    async def handler(ws: Any) -> None:
        connection.set_result(ws)
        await release.wait()  # don't read for now
        received = 0
        async for _ in ws:
            received += 1
            if received == count:
                drained.set_result(received)
                return

    _, url = await start_server(handler, max_queue=max_queue, compression=None, max_size=2**20)
    async with pulsewire.connect(url, compression=None) as ws:
        conn = await asyncio.wait_for(connection, TIMEOUT)

        async def flood() -> None:
            for _ in range(count):
                await ws.send(message)

        flooding = asyncio.ensure_future(flood())
        await asyncio.sleep(1.0)
        assert not flooding.done(), "the client could send 20 MB to a server that does not read"
        assert conn._paused_reading
        # Messages a single read brings in may overshoot max_queue, but not by much.
        assert len(conn._messages) <= max_queue + 8, len(conn._messages)
        release.set()
        assert await asyncio.wait_for(drained, 30) == count
        await asyncio.wait_for(flooding, TIMEOUT)


# =============================================================================== shutdown


async def test_graceful_shutdown(start_server: Any) -> None:
    server, url = await start_server()
    clients = [await pulsewire.connect(f"{url}c{i}") for i in range(3)]
    for ws in clients:
        await ws.send("hi")
        assert await recv(ws) == "hi"
    assert len(server.connections) == 3
    server.close()
    for ws in clients:
        with pytest.raises(ConnectionClosedOK) as info:
            await recv(ws)
        assert info.value.code == 1001
        assert (ws.close_code, ws.close_reason) == (1001, "server shutting down")
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    assert not server.connections
    with pytest.raises(OSError):
        await pulsewire.connect(url, open_timeout=2)


async def test_wait_closed_waits_for_the_handlers(start_server: Any) -> None:
    finished: list[str] = []

    async def handler(ws: Any) -> None:
        try:
            async for message in ws:
                await ws.send(message)
        finally:
            await asyncio.sleep(0.1)  # some cleanup after the connection closed
            finished.append(ws.path)

    server, url = await start_server(handler)
    clients = [await pulsewire.connect(f"{url}c{i}") for i in range(3)]
    for ws in clients:
        await ws.send("hi")
        assert await recv(ws) == "hi"
    server.close()
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)
    assert sorted(finished) == ["/c0", "/c1", "/c2"]


async def test_shutdown_during_a_handshake(start_server: Any, raw_client: Any) -> None:
    server, _ = await start_server()
    raw = await raw_client(server.port, handshake=False)
    await raw.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n")  # incomplete request
    await asyncio.sleep(0.1)
    server.close()
    response = await raw.read_http_response()
    assert response.status == 503
    await asyncio.wait_for(server.wait_closed(), TIMEOUT)


async def test_serve_forever_and_cancellation() -> None:
    server = await pulsewire.serve(echo, "127.0.0.1", 0)
    task = asyncio.ensure_future(server.serve_forever())
    try:
        async with pulsewire.connect(f"ws://127.0.0.1:{server.port}/") as ws:
            await ws.send("x")
            assert await recv(ws) == "x"
            task.cancel()
            with pytest.raises(ConnectionClosedOK):
                await recv(ws)
            assert ws.close_code == 1001
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, TIMEOUT)
    finally:
        server.close()
        await asyncio.wait_for(server.wait_closed(), TIMEOUT)


# =============================================================================== TLS


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    try:
        _cryptography_certificate(cert, key)
    except ImportError:
        if shutil.which("openssl") is None:
            pytest.skip("neither the cryptography package nor openssl is available")
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1,DNS:localhost",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            ],
            check=True,
            capture_output=True,
        )
    return cert, key


def _cryptography_certificate(cert: Path, key: Path) -> None:
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


async def test_tls(start_server: Any, certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    _, url = await start_server(ssl=server_context)
    assert url.startswith("wss://127.0.0.1:")

    client_context = ssl.create_default_context(cafile=str(cert))
    async with pulsewire.connect(url, ssl=client_context) as ws:
        await ws.send("over TLS")
        assert await recv(ws) == "over TLS"
        await ws.send(b"\x00" * 200_000)
        assert await recv(ws) == b"\x00" * 200_000
    localhost = url.replace("127.0.0.1", "localhost")
    async with pulsewire.connect(localhost, ssl=client_context) as ws:
        await ws.send("by name")
        assert await recv(ws) == "by name"

    with pytest.raises(ssl.SSLCertVerificationError):
        await pulsewire.connect(url, ssl=ssl.create_default_context(), open_timeout=TIMEOUT)
    with pytest.raises(ValueError):
        pulsewire.connect(url.replace("wss://", "ws://"), ssl=client_context)


# =============================================================================== bad input


async def test_handshake_timeout(start_server: Any, raw_client: Any) -> None:
    server, _ = await start_server(open_timeout=1)
    raw = await raw_client(server.port, handshake=False)
    request = raw.request_bytes(key="dGhlIHNhbXBsZSBub25jZQ==")

    async def slowloris() -> None:
        for i in range(len(request)):  # one byte per second: 150+ seconds for the request
            await raw.send_raw(request[i : i + 1])
            await asyncio.sleep(1)

    dripping = asyncio.ensure_future(slowloris())
    try:
        response = await raw.read_http_response(timeout=TIMEOUT)
        assert response.status == 408
        assert await raw.at_eof(timeout=TIMEOUT)
        assert not dripping.done()
    finally:
        dripping.cancel()
    assert server.refusals.get(408) == 1


async def test_unmasked_frame_is_1002(start_server: Any, raw_client: Any) -> None:
    server, _ = await start_server(close_timeout=1)
    raw = await raw_client(server.port)
    await raw.send_frame(0x1, b"not masked", mask=False)
    frames = await raw.recv_until_close()
    assert [(f.opcode, f.close_code) for f in frames] == [(0x8, 1002)]
    assert await raw.at_eof()


async def test_invalid_utf8_is_1007(start_server: Any, raw_client: Any) -> None:
    server, _ = await start_server(close_timeout=1)
    raw = await raw_client(server.port)
    await raw.send_frame(0x1, b"valid")
    assert (await raw.recv_frame()).payload == b"valid"
    await raw.send_frame(0x1, b"caf\xc3", fin=False)
    await raw.send_frame(0x0, b"(")
    frames = await raw.recv_until_close()
    assert [(f.opcode, f.close_code) for f in frames] == [(0x8, 1007)]
    assert await raw.at_eof()


async def test_oversized_frame_is_1009_before_its_payload(
    start_server: Any, raw_client: Any
) -> None:
    server, _ = await start_server(max_size=1000, close_timeout=1)
    raw = await raw_client(server.port)
    # Announce a 10 MB frame; send its header and mask only.
    await raw.send_raw(bytes([0x82, 0xFF]) + (10 * 2**20).to_bytes(8, "big") + b"mask")
    frames = await raw.recv_until_close()
    assert [(f.opcode, f.close_code) for f in frames] == [(0x8, 1009)]
    assert await raw.at_eof()


async def test_a_peer_still_sending_gets_the_close_code_not_a_reset(
    start_server: Any, raw_client: Any
) -> None:
    """Failed while the peer keeps sending: closing the socket with unread input would make
    the kernel answer with a reset, and the peer lose the Close frame. The server shuts its
    side after the Close and drops what still comes until the peer closes."""
    handlers: list[Any] = []

    async def handler(ws: Any) -> None:
        handlers.append(ws)
        async for _ in ws:
            pass

    server, _ = await start_server(handler, max_size=1000, close_timeout=5)
    raw = await raw_client(server.port)
    # A 10 MB frame: 1009 at its header, while its payload keeps coming.
    await raw.send_raw(bytes([0x82, 0xFF]) + (10 * 2**20).to_bytes(8, "big") + b"mask")
    sending = asyncio.ensure_future(raw.send_raw(bytes(4 * 2**20)))
    frames = await raw.recv_until_close()
    assert [(f.opcode, f.close_code) for f in frames] == [(0x8, 1009)]
    assert await raw.at_eof()  # our side was shut after the Close
    await asyncio.wait_for(sending, TIMEOUT)  # and what the peer sent was taken meanwhile
    (ws,) = handlers
    assert ws.closed and ws.close_code == 1006  # over for the handler at once
    raw.writer.close()
    await asyncio.wait_for(ws.wait_closed(), TIMEOUT)  # TCP goes when the peer closes


async def test_reserved_opcode_is_1002(start_server: Any, raw_client: Any) -> None:
    server, _ = await start_server(close_timeout=1)
    raw = await raw_client(server.port)
    await raw.send_frame(0x3, b"?")
    frames = await raw.recv_until_close()
    assert [(f.opcode, f.close_code) for f in frames] == [(0x8, 1002)]


async def test_raw_client_closing_handshake(start_server: Any, raw_client: Any) -> None:
    server, _ = await start_server()
    raw = await raw_client(server.port)
    await raw.send_frame(0x9, b"ping!")
    pong = await raw.recv_frame()
    assert (pong.opcode, pong.payload) == (0xA, b"ping!")
    await raw.send_close(1000, "done")
    frames = await raw.recv_until_close()
    assert [(f.opcode, f.close_code) for f in frames] == [(0x8, 1000)]
    assert await raw.at_eof()  # the server closes TCP first


async def test_frames_sent_with_the_handshake(start_server: Any, raw_client: Any) -> None:
    from pulsewire.protocol.frames import build_frame

    server, _ = await start_server()
    raw = await raw_client(server.port, handshake=False)
    request = raw.request_bytes(key="dGhlIHNhbXBsZSBub25jZQ==")
    await raw.send_raw(request + build_frame(0x81, b"early", b"abcd"))
    response = await raw.read_head()
    assert response.status == 101
    frame = await raw.recv_frame()
    assert (frame.opcode, frame.payload) == (0x1, b"early")
