"""End-to-end tests of pulsewire.sync against a real pulsewire asyncio server in a thread."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import pulsewire
from pulsewire.protocol.handshake import ServerHandshake
from pulsewire.sync import ClientConnection, connect


def reader_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "pulsewire-sync-reader"]


@pytest.fixture(autouse=True)
def no_thread_left() -> Iterator[None]:
    yield
    deadline = time.monotonic() + 5
    while reader_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert reader_threads() == []


# ----------------------------------------------------------------------------- servers


async def echo(ws: pulsewire.ServerConnection) -> None:
    async for message in ws:
        await ws.send(message)


async def three_then_close(ws: pulsewire.ServerConnection) -> None:
    for message in ("one", "two", "three"):
        await ws.send(message)


async def close_4001(ws: pulsewire.ServerConnection) -> None:
    await ws.send("goodbye")
    await ws.close(4001, "server says bye")


async def burst(ws: pulsewire.ServerConnection) -> None:
    for i in range(64):
        await ws.send(i.to_bytes(4, "big") + os.urandom(32 * 1024))


ROUTES = {"/": echo, "/three": three_then_close, "/close": close_4001, "/burst": burst}


class ServerThread:
    """A pulsewire server running its own event loop in a thread."""

    def __init__(self, handler: Any = ROUTES, **options: Any) -> None:
        self.handler = handler
        self.options = options
        self.port = 0
        self.server: pulsewire.Server | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), name="server")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with pulsewire.serve(self.handler, "127.0.0.1", 0, **self.options) as server:
            self.server = server
            self.port = server.port
            self._ready.set()
            await self._stop.wait()

    def url(self, path: str = "/", scheme: str = "ws") -> str:
        return f"{scheme}://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc_info: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread() as srv:
        yield srv


class SilentServer:
    """Completes the opening handshake, then reads and ignores everything (no pong, no close)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._thread = threading.Thread(target=self._run, name="silent-server")
        self._thread.start()

    def _run(self) -> None:
        sock, _ = self.listener.accept()
        with sock:
            handshake = ServerHandshake()
            request = None
            while request is None:
                request = handshake.receive_data(sock.recv(4096))
            response, _, _ = handshake.accept(request)
            sock.sendall(response)
            while sock.recv(65536):
                pass

    def close(self) -> None:
        self.listener.close()
        self._thread.join(10)


@pytest.fixture
def silent() -> Iterator[SilentServer]:
    srv = SilentServer()
    yield srv
    srv.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- messages


def test_text_and_binary_round_trips(server: ServerThread) -> None:
    with connect(server.url()) as ws:
        assert isinstance(ws, ClientConnection)
        assert ws.state is pulsewire.State.OPEN
        ws.send("hello, wörld")
        assert ws.recv(timeout=5) == "hello, wörld"
        ws.send(b"\x00\x01\xff")
        assert ws.recv(timeout=5) == b"\x00\x01\xff"
        ws.send(bytearray(b"array"))
        assert ws.recv(timeout=5) == b"array"
        ws.send(memoryview(b"view"))
        assert ws.recv(timeout=5) == b"view"
        ws.send("")
        assert ws.recv(timeout=5) == ""


def test_fragmented_messages(server: ServerThread) -> None:
    with connect(server.url()) as ws:
        ws.send(["frag", "ment", "ed"])
        assert ws.recv(timeout=5) == "fragmented"
        pieces: list[bytes | bytearray | memoryview] = [b"ab", bytearray(b"cd"), memoryview(b"ef")]
        ws.send(iter(pieces))
        assert ws.recv(timeout=5) == b"abcdef"
        ws.send(chunk for chunk in ["only"])
        assert ws.recv(timeout=5) == "only"
        ws.send([])  # nothing to send
        # Mixed fragments are refused before anything is sent: the connection stays usable.
        with pytest.raises(TypeError):
            ws.send(["text", b"bytes"])
        with pytest.raises(TypeError):
            ws.send(42)  # type: ignore[arg-type]
        ws.send("still open")
        assert ws.recv(timeout=5) == "still open"


def test_fragment_source_failing_mid_message_fails_the_connection(server: ServerThread) -> None:
    def fragments() -> Iterator[str]:
        yield "one"
        yield "two"
        raise RuntimeError("source broke")

    with connect(server.url()) as ws:
        with pytest.raises(RuntimeError, match="source broke"):
            ws.send(fragments())
        with pytest.raises(pulsewire.ConnectionClosedError):
            ws.recv(timeout=5)
        assert ws.state is pulsewire.State.CLOSED


@pytest.mark.parametrize("compression", ["deflate", None])
def test_large_messages(server: ServerThread, compression: str | None) -> None:
    binary = os.urandom(2**19).hex().encode()  # 1 MiB, the default max_size
    text = "pulsewire " * (2**20 // 10)
    with connect(server.url(), compression=compression) as ws:
        assert ws.extensions == ("permessage-deflate" if compression else "")
        ws.send(binary)
        assert ws.recv(timeout=10) == binary
        ws.send(text)
        assert ws.recv(timeout=10) == text


def test_incompressible_message_of_max_size_with_deflate(server: ServerThread) -> None:
    binary = os.urandom(2**20)
    with connect(server.url()) as ws:
        ws.send(binary)
        assert ws.recv(timeout=10) == binary


def test_message_too_big_fails_the_connection(server: ServerThread) -> None:
    with connect(server.url(), max_size=1000) as ws:
        ws.send("x" * 1001)
        with pytest.raises(pulsewire.ConnectionClosedError) as info:
            ws.recv(timeout=5)
        assert info.value.sent is not None and info.value.sent.code == 1009


def test_compression_is_negotiated_with_the_server() -> None:
    with ServerThread(compression=None) as srv, connect(srv.url()) as ws:
        assert ws.extensions == ""
        ws.send("abc" * 1000)
        assert ws.recv(timeout=5) == "abc" * 1000


def test_recv_timeout(server: ServerThread) -> None:
    with connect(server.url()) as ws:
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            ws.recv(timeout=0.2)
        assert time.monotonic() - start >= 0.19
        ws.send("after the timeout")
        assert ws.recv(timeout=5) == "after the timeout"


def test_backpressure_stops_reading_while_the_queue_is_full(server: ServerThread) -> None:
    with connect(server.url("/burst"), compression=None, max_queue=4) as ws:
        time.sleep(0.3)  # the server sends 64 x 32 KiB as fast as it can
        # At most max_queue, plus the messages of the read (64 KiB) that filled the queue.
        assert len(ws._messages) <= 4 + 3
        received = [int.from_bytes(m[:4], "big") for m in ws if isinstance(m, bytes)]
    assert received == list(range(64))


# ----------------------------------------------------------------------------- closing


def test_iteration_ends_on_normal_close(server: ServerThread) -> None:
    with connect(server.url("/three")) as ws:
        assert list(ws) == ["one", "two", "three"]
        assert ws.close_code == 1000
        assert ws.close_reason == ""
        assert ws.state is pulsewire.State.CLOSED
        with pytest.raises(pulsewire.ConnectionClosedOK):
            ws.recv()
        with pytest.raises(pulsewire.ConnectionClosedOK):
            ws.send("too late")


def test_server_initiated_close_with_code_and_reason(server: ServerThread) -> None:
    with connect(server.url("/close")) as ws:
        assert ws.recv(timeout=5) == "goodbye"
        with pytest.raises(pulsewire.ConnectionClosedError) as info:
            ws.recv(timeout=5)
        assert info.value.code == 4001
        assert info.value.reason == "server says bye"
        assert ws.close_code == 4001
        assert ws.close_reason == "server says bye"
        with pytest.raises(pulsewire.ConnectionClosedError):
            for _ in ws:
                pass


def test_client_close_runs_the_closing_handshake(server: ServerThread) -> None:
    ws = connect(server.url())
    ws.send("pending")
    ws.close(4000, "client says bye")
    assert ws.state is pulsewire.State.CLOSED
    assert ws.close_code == 4000  # the server echoes our code
    assert not ws._thread.is_alive()
    assert ws._thread not in threading.enumerate()
    ws.close()  # closing again is harmless
    with pytest.raises(pulsewire.ConnectionClosed):
        ws.send("too late")


def test_invalid_close_code_leaves_the_connection_open(server: ServerThread) -> None:
    with connect(server.url()) as ws:
        with pytest.raises(ValueError):
            ws.close(1005, "a reason needs a code")
        with pytest.raises(ValueError):
            ws.close(999)
        assert ws.state is pulsewire.State.OPEN
        ws.send("still open")
        assert ws.recv(timeout=5) == "still open"


def test_close_times_out_when_the_server_does_not_answer(silent: SilentServer) -> None:
    ws = connect(f"ws://127.0.0.1:{silent.port}/", close_timeout=0.3)
    start = time.monotonic()
    ws.close()
    elapsed = time.monotonic() - start
    assert 0.25 <= elapsed < 3
    assert ws.state is pulsewire.State.CLOSED
    assert ws.close_code == 1006


def test_no_thread_left_running_after_close(server: ServerThread) -> None:
    before = set(threading.enumerate())
    connections = [connect(server.url()) for _ in range(5)]
    assert len(reader_threads()) == 5
    for ws in connections:
        ws.close()
    assert set(threading.enumerate()) - before == set()


# ----------------------------------------------------------------------------- pings


def test_ping_measures_the_round_trip(server: ServerThread) -> None:
    with connect(server.url()) as ws:
        rtt = ws.ping(timeout=5)
        assert 0 < rtt < 5
        assert 0 < ws.ping("payload", timeout=5) < 5
        ws.pong("heartbeat")  # unsolicited, no answer expected
        assert ws.latency > 0


def test_ping_timeout(silent: SilentServer) -> None:
    with connect(f"ws://127.0.0.1:{silent.port}/", close_timeout=0.2) as ws:
        with pytest.raises(TimeoutError):
            ws.ping(b"x", timeout=0.1)
        assert ws._pings == {}


def test_keepalive_pings_and_latency(server: ServerThread) -> None:
    with connect(server.url(), ping_interval=0.05, ping_timeout=1) as ws:
        time.sleep(0.3)
        assert ws.latency > 0
        ws.send("alive")
        assert ws.recv(timeout=5) == "alive"


def test_server_pings_are_answered_while_idle() -> None:
    async def handler(ws: pulsewire.ServerConnection) -> None:
        await asyncio.sleep(0.3)  # the server pings every 50 ms meanwhile
        await ws.send(f"{ws.latency > 0}")
        await ws.recv()  # stay open until the client closes

    with (
        ServerThread(handler, ping_interval=0.05, ping_timeout=0.2) as srv,
        connect(srv.url()) as ws,
    ):
        assert ws.recv(timeout=5) == "True"
        assert ws.state is pulsewire.State.OPEN


def test_keepalive_fails_the_connection_without_pongs(silent: SilentServer) -> None:
    url = f"ws://127.0.0.1:{silent.port}/"
    with connect(url, ping_interval=0.05, ping_timeout=0.1, close_timeout=0.2) as ws:
        with pytest.raises(pulsewire.ConnectionClosedError) as info:
            ws.recv(timeout=5)
        assert info.value.sent is not None and info.value.sent.code == 1011


# ----------------------------------------------------------------------------- threads


def test_send_from_several_threads(server: ServerThread) -> None:
    with connect(server.url(), max_queue=4) as ws:
        expected: set[str | bytes] = {
            f"{t}-{i}-" + "x" * (i * 997) for t in range(8) for i in range(40)
        }
        expected |= {[b"\x00", b"\x01"][t % 2] * 100_000 + bytes([t]) for t in range(8)}

        def sender(t: int) -> None:
            for i in range(40):
                ws.send(f"{t}-{i}-" + "x" * (i * 997))
            fill = [b"\x00", b"\x01"][t % 2] * 50_000
            ws.send([fill, fill + bytes([t])])  # fragmented, while others send

        threads = [threading.Thread(target=sender, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        received = {ws.recv(timeout=10) for _ in range(len(expected))}
        for thread in threads:
            thread.join()
        assert received == expected


def test_recv_from_several_threads(server: ServerThread) -> None:
    with connect(server.url()) as ws:
        results: list[str | bytes] = []
        lock = threading.Lock()

        def receiver() -> None:
            for _ in range(25):
                message = ws.recv(timeout=10)
                with lock:
                    results.append(message)

        threads = [threading.Thread(target=receiver) for _ in range(4)]
        for thread in threads:
            thread.start()
        for i in range(100):
            ws.send(str(i))
        for thread in threads:
            thread.join()
        assert sorted(results, key=lambda m: int(m)) == [str(i) for i in range(100)]


def test_close_from_another_thread_wakes_recv(server: ServerThread) -> None:
    ws = connect(server.url())
    closer = threading.Timer(0.2, ws.close)
    closer.start()
    with pytest.raises(pulsewire.ConnectionClosedOK):
        ws.recv(timeout=5)
    closer.join()


# ----------------------------------------------------------------------------- opening


def test_refused_handshake_raises_invalid_status() -> None:
    with ServerThread(origins=["https://ok.example"]) as srv:
        with pytest.raises(pulsewire.InvalidStatus) as info:
            connect(srv.url(), origin="https://evil.example")
        assert info.value.status == 403
        assert isinstance(info.value, pulsewire.InvalidHandshake)
        with connect(srv.url(), origin="https://ok.example") as ws:
            ws.send("allowed")
            assert ws.recv(timeout=5) == "allowed"


def test_not_found_path_raises_invalid_status(server: ServerThread) -> None:
    with pytest.raises(pulsewire.InvalidStatus) as info:
        connect(server.url("/nowhere"))
    assert info.value.status == 404


def test_subprotocol_and_headers() -> None:
    seen: dict[str, Any] = {}

    async def handler(ws: pulsewire.ServerConnection) -> None:
        assert ws.request is not None
        seen["x-test"] = ws.request.headers.get("X-Test")
        await ws.send(ws.subprotocol or "")

    with ServerThread(handler, subprotocols=["chat"]) as srv:
        ws = connect(
            srv.url(), subprotocols=["superchat", "chat"], additional_headers={"X-Test": "yes"}
        )
        with ws:
            assert ws.subprotocol == "chat"
            assert ws.response_headers.get("Sec-WebSocket-Protocol") == "chat"
            assert ws.recv(timeout=5) == "chat"
    assert seen == {"x-test": "yes"}


def test_network_error_raises_oserror() -> None:
    with pytest.raises(OSError):
        connect(f"ws://127.0.0.1:{free_port()}/")


def test_open_timeout() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts TCP, never answers
        port = listener.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(TimeoutError):
            connect(f"ws://127.0.0.1:{port}/", open_timeout=0.2)
        assert time.monotonic() - start < 3


def test_invalid_uri() -> None:
    with pytest.raises(ValueError):
        connect("http://127.0.0.1/")
    with pytest.raises(ValueError):
        connect("ws://127.0.0.1/", ssl=True)


# ----------------------------------------------------------------------------- TLS


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def test_wss(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))
    with ServerThread(ssl=server_context) as srv:
        with connect(srv.url(scheme="wss"), ssl=client_context) as ws:
            ws.send("secure")
            assert ws.recv(timeout=5) == "secure"
            big = os.urandom(2**19).hex().encode()
            ws.send(big)
            assert ws.recv(timeout=10) == big
            assert ws.ping(timeout=5) > 0
        assert ws.close_code == 1000
        with pytest.raises(ssl.SSLCertVerificationError):
            connect(srv.url(scheme="wss"))  # the system's trust store does not know the cert


# ------------------------------------------------------- the same options as asyncio


def test_options_are_those_of_the_asyncio_client() -> None:
    import dataclasses
    import inspect

    from pulsewire.protocol.options import SYNC_PING_INTERVAL, ClientOptions

    fields = {f.name: f.default for f in dataclasses.fields(ClientOptions)}
    for function in (connect, pulsewire.connect):
        params = dict(inspect.signature(function).parameters)
        assert next(iter(params)) == "uri"
        del params["uri"]
        assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in params.values())
        defaults = {name: p.default for name, p in params.items()}
        if function is connect:
            assert defaults.pop("ping_interval") == SYNC_PING_INTERVAL is None
            defaults["ping_interval"] = fields["ping_interval"]
        assert defaults == fields, function


def test_frame_and_fragment_limits(server: ServerThread) -> None:
    with connect(server.url(), max_frame_size=100, compression=None) as ws:
        ws.send("x" * 101)  # echoed in one frame over the limit: failed with 1009
        with pytest.raises(pulsewire.ConnectionClosedError):
            ws.recv(timeout=5)
        assert ws.close_code == 1006  # we failed it: no Close came from the server
    with connect(server.url(), max_fragments=2) as ws:
        ws.send("fits")
        assert ws.recv(timeout=5) == "fits"
        assert ws.request is not None and ws.request.path == "/"


def test_a_connected_socket(server: ServerThread) -> None:
    sock = socket.create_connection(("127.0.0.1", server.port))
    with connect(server.url(), sock=sock, write_limit=1) as ws:
        ws.send("over my own socket")
        assert ws.recv(timeout=5) == "over my own socket"
