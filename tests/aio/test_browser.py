"""End-to-end tests of the browser-style WebSocket (WHATWG semantics) against a real server."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

import pulsewire
from pulsewire.aio.browser import (
    CloseEvent,
    ErrorEvent,
    Event,
    InvalidAccessError,
    InvalidStateError,
    InvalidSyntaxError,
    MessageEvent,
    WebSocket,
)

# What the last connection to each server saw, by handler.
server_log: list[Any] = []


async def echo(ws: pulsewire.ServerConnection) -> None:
    try:
        async for message in ws:
            await ws.send(message)
    finally:
        await ws.wait_closed()
        server_log.append(("closed", ws.close_code, ws.close_reason))


async def close_4001(ws: pulsewire.ServerConnection) -> None:
    await ws.send("goodbye")
    await ws.close(4001, "server says bye")


async def greet(ws: pulsewire.ServerConnection) -> None:
    await ws.send("first")
    await ws.send(b"second")
    await ws.send("third")
    async for message in ws:
        await ws.send(message)


ROUTES = {"/": echo, "/close": close_4001, "/greet": greet}


@pytest.fixture
async def url() -> AsyncIterator[str]:
    server_log.clear()
    async with pulsewire.serve(ROUTES, "127.0.0.1", 0, subprotocols=["chat"]) as server:
        yield f"ws://127.0.0.1:{server.port}"


class Recorder:
    """Records every event of a WebSocket, with the readyState seen by the listener."""

    def __init__(self, ws: WebSocket) -> None:
        self.ws = ws
        self.events: list[Event] = []
        self.states: list[tuple[str, int]] = []
        self.messages: asyncio.Queue[Any] = asyncio.Queue()
        ws.onopen = self.record
        ws.onmessage = self.record
        ws.onerror = self.record
        ws.onclose = self.record

    def record(self, event: Event) -> None:
        self.events.append(event)
        self.states.append((event.type, self.ws.readyState))
        if isinstance(event, MessageEvent):
            self.messages.put_nowait(event.data)

    @property
    def types(self) -> list[str]:
        return [event.type for event in self.events]

    def last(self) -> Event:
        return self.events[-1]

    async def next_message(self) -> Any:
        return await asyncio.wait_for(self.messages.get(), 5)

    async def opened(self) -> None:
        for _ in range(500):
            if self.events:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("no event")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ----------------------------------------------------------------------------- opening


async def test_echo_round_trips_via_onmessage(url: str) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)

    def on_open(event: Event) -> None:
        ws.send("hello")
        ws.send(b"\x00\xff")
        ws.send("wörld")

    ws.onopen = on_open
    assert await rec.next_message() == "hello"
    assert await rec.next_message() == b"\x00\xff"
    assert await rec.next_message() == "wörld"
    ws.send(bytearray(b"array"))
    assert await rec.next_message() == b"array"
    ws.send(memoryview(b"view"))
    assert await rec.next_message() == b"view"
    message = rec.events[0]
    assert isinstance(message, MessageEvent)
    assert message.origin == url
    assert message.target is ws
    ws.close()
    await ws.wait_closed()


async def test_open_ordering_and_ready_states(url: str) -> None:
    ws = WebSocket(url + "/greet")
    assert ws.readyState == WebSocket.CONNECTING == ws.CONNECTING == 0
    assert (WebSocket.OPEN, WebSocket.CLOSING, WebSocket.CLOSED) == (1, 2, 3)
    assert ws.url == url + "/greet"
    assert ws.protocol == ""
    assert ws.extensions == ""
    rec = Recorder(ws)
    assert await rec.next_message() == "first"
    assert await rec.next_message() == b"second"
    assert await rec.next_message() == "third"
    ws.close()
    assert ws.readyState == WebSocket.CLOSING
    await ws.wait_closed()
    assert rec.types == ["open", "message", "message", "message", "close"]
    assert rec.states == [
        ("open", WebSocket.OPEN),  # readyState is OPEN when onopen runs
        ("message", WebSocket.OPEN),
        ("message", WebSocket.OPEN),
        ("message", WebSocket.OPEN),
        ("close", WebSocket.CLOSED),
    ]


async def test_protocol_and_extensions_after_negotiation(url: str) -> None:
    ws = WebSocket(url + "/", ["superchat", "chat"])
    rec = Recorder(ws)
    await rec.opened()
    assert rec.types == ["open"]
    assert ws.protocol == "chat"
    assert ws.extensions.startswith("permessage-deflate")
    ws.close()
    await ws.wait_closed()

    plain = WebSocket(url + "/", "other", compression=None)
    rec = Recorder(plain)
    await rec.opened()
    assert plain.protocol == ""  # the server speaks only "chat"
    assert plain.extensions == ""
    plain.close()
    await plain.wait_closed()


async def test_connect_options_are_passed_on(url: str) -> None:
    ws = WebSocket(url.replace("ws://", "http://") + "/", origin="https://app.example")
    assert ws.url == url + "/"  # http(s) URLs are mapped to ws(s), as browsers do
    rec = Recorder(ws)
    await rec.opened()
    assert rec.types == ["open"]
    ws.close()
    await ws.wait_closed()


@pytest.mark.parametrize(
    "bad_url",
    ["ftp://127.0.0.1/", "ws://127.0.0.1/#fragment", "ws://127.0.0.1/#", "ws:///x", "nope"],
)
async def test_invalid_url_raises_syntax_error(bad_url: str) -> None:
    with pytest.raises(InvalidSyntaxError):
        WebSocket(bad_url)


@pytest.mark.parametrize("protocols", [["chat", "chat"], ["a b"], [""], "bad,list"])
async def test_invalid_protocols_raise_syntax_error(url: str, protocols: Any) -> None:
    with pytest.raises(InvalidSyntaxError):
        WebSocket(url + "/", protocols)


def test_needs_a_running_loop() -> None:
    with pytest.raises(RuntimeError):
        WebSocket("ws://127.0.0.1:1/")


# ----------------------------------------------------------------------------- failures


async def test_connection_refused_fires_error_then_close() -> None:
    ws = WebSocket(f"ws://127.0.0.1:{free_port()}/")
    rec = Recorder(ws)
    await ws.wait_closed()
    assert rec.types == ["error", "close"]
    assert rec.states == [("error", WebSocket.CLOSED), ("close", WebSocket.CLOSED)]
    error, close = rec.events
    assert isinstance(error, ErrorEvent) and isinstance(error.error, OSError)
    assert isinstance(close, CloseEvent)
    assert (close.code, close.reason, close.wasClean) == (1006, "", False)


async def test_handshake_refused_with_403_fires_error_then_close() -> None:
    async with pulsewire.serve(echo, "127.0.0.1", 0, origins=["https://ok.example"]) as server:
        ws = WebSocket(f"ws://127.0.0.1:{server.port}/", origin="https://evil.example")
        rec = Recorder(ws)
        await ws.wait_closed()
        assert rec.types == ["error", "close"]
        error, close = rec.events
        assert isinstance(error, ErrorEvent) and isinstance(error.error, pulsewire.InvalidStatus)
        assert error.error.status == 403
        assert isinstance(close, CloseEvent)
        assert (close.code, close.wasClean) == (1006, False)


async def test_close_while_connecting_fails_the_connection(url: str) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)
    ws.close(1000, "never mind")
    assert ws.readyState == WebSocket.CLOSING
    ws.close()  # already closing: nothing happens
    await ws.wait_closed()
    assert rec.types == ["error", "close"]  # no open event
    close = rec.last()
    assert isinstance(close, CloseEvent)
    assert (close.code, close.wasClean) == (1006, False)
    assert ws.readyState == WebSocket.CLOSED


async def test_send_while_connecting_raises(url: str) -> None:
    ws = WebSocket(url + "/")
    with pytest.raises(InvalidStateError) as info:
        ws.send("too early")
    assert isinstance(info.value, pulsewire.PulsewireError)
    assert isinstance(info.value, RuntimeError)
    ws.close()
    await ws.wait_closed()


# ----------------------------------------------------------------------------- closing


async def test_client_initiated_close(url: str) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)
    await rec.opened()
    ws.close(4000, "client says bye")
    await ws.wait_closed()
    close = rec.last()
    assert isinstance(close, CloseEvent)
    # The code and reason of a close event are the server's: it echoes the code, not the reason.
    assert (close.code, close.reason, close.wasClean) == (4000, "", True)
    assert "error" not in rec.types
    assert server_log == [("closed", 4000, "client says bye")]


async def test_close_without_arguments_sends_no_status_code(url: str) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)
    await rec.opened()
    ws.close()
    await ws.wait_closed()
    close = rec.last()
    assert isinstance(close, CloseEvent)
    assert (close.code, close.wasClean) == (1005, True)  # an empty Close frame, as browsers send
    assert server_log == [("closed", 1005, "")]


async def test_server_initiated_close(url: str) -> None:
    ws = WebSocket(url + "/close")
    rec = Recorder(ws)
    await ws.wait_closed()
    assert rec.types == ["open", "message", "close"]
    close = rec.last()
    assert isinstance(close, CloseEvent)
    assert (close.code, close.reason, close.wasClean) == (4001, "server says bye", True)
    assert ws.readyState == WebSocket.CLOSED


async def test_server_going_away(url: str) -> None:
    async with pulsewire.serve(echo, "127.0.0.1", 0) as server:
        ws = WebSocket(f"ws://127.0.0.1:{server.port}/")
        rec = Recorder(ws)
        await rec.opened()
    await ws.wait_closed()
    close = rec.last()
    assert isinstance(close, CloseEvent)
    assert (close.code, close.reason, close.wasClean) == (1001, "server shutting down", True)


async def test_abrupt_tcp_close_fires_error_then_close() -> None:
    async def abort(ws: pulsewire.ServerConnection) -> None:
        await ws.send("about to vanish")
        await ws.recv()  # the client's answer: the message was delivered
        ws.abort()

    async with pulsewire.serve(abort, "127.0.0.1", 0) as server:
        ws = WebSocket(f"ws://127.0.0.1:{server.port}/")
        rec = Recorder(ws)
        ws.addEventListener("message", lambda event: ws.send("ack"))
        await ws.wait_closed()
    assert rec.types == ["open", "message", "error", "close"]
    close = rec.last()
    assert isinstance(close, CloseEvent)
    assert (close.code, close.reason, close.wasClean) == (1006, "", False)


@pytest.mark.parametrize("code", [999, 1001, 1005, 2999, 5000, 0, 65535])
async def test_close_rejects_codes(url: str, code: int) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)
    await rec.opened()
    with pytest.raises(InvalidAccessError):
        ws.close(code)
    assert ws.readyState == WebSocket.OPEN
    ws.close()
    await ws.wait_closed()


@pytest.mark.parametrize("code", [1000, 3000, 4999])
async def test_close_accepts_codes(url: str, code: int) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)
    await rec.opened()
    ws.close(code, "é" * 61 + "x")  # 123 bytes: the longest reason allowed
    await ws.wait_closed()
    close = rec.last()
    assert isinstance(close, CloseEvent)
    assert (close.code, close.wasClean) == (code, True)
    assert server_log == [("closed", code, "é" * 61 + "x")]


async def test_close_rejects_long_reason(url: str) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)
    await rec.opened()
    with pytest.raises(InvalidSyntaxError):
        ws.close(1000, "é" * 62)  # 124 bytes of UTF-8
    with pytest.raises(TypeError):
        ws.close("1000")  # type: ignore[arg-type]
    assert ws.readyState == WebSocket.OPEN
    ws.close(reason="only a reason")  # the code defaults to 1000
    await ws.wait_closed()
    assert server_log == [("closed", 1000, "only a reason")]


async def test_messages_after_close_are_dropped(url: str) -> None:
    ws = WebSocket(url + "/greet")
    rec = Recorder(ws)
    ws.addEventListener("open", lambda event: ws.close())  # "first"... are already on their way
    await ws.wait_closed()
    assert rec.types == ["open", "close"]


async def test_buffered_amount_grows_after_close(url: str) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)
    await rec.opened()
    assert ws.bufferedAmount == 0
    ws.close()
    ws.send("abc")  # CLOSING: discarded
    assert ws.bufferedAmount == 3
    await ws.wait_closed()
    base = ws.bufferedAmount
    ws.send("héllo")  # 6 bytes of UTF-8
    assert ws.bufferedAmount == base + 6
    ws.send(b"12345")
    assert ws.bufferedAmount == base + 11
    ws.send(memoryview(b"xy"))
    assert ws.bufferedAmount == base + 13
    assert rec.types == ["open", "close"]


async def test_buffered_amount_counts_queued_data(url: str) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)
    await rec.opened()
    ws.send("x" * 1000)
    assert ws.bufferedAmount >= 1000  # queued, not yet written
    assert await rec.next_message() == "x" * 1000
    assert ws.bufferedAmount == 0
    ws.close()
    await ws.wait_closed()


# ----------------------------------------------------------------------------- data


async def test_binary_type(url: str) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)
    await rec.opened()
    assert ws.binaryType == "bytes"
    ws.send(b"one")
    assert type(await rec.next_message()) is bytes
    ws.binaryType = "bytearray"
    ws.send(b"two")
    data = await rec.next_message()
    assert type(data) is bytearray and data == b"two"
    ws.binaryType = "memoryview"
    ws.send(b"three")
    data = await rec.next_message()
    assert type(data) is memoryview and data.tobytes() == b"three"
    ws.binaryType = "blob"  # invalid: ignored, as browsers do
    assert ws.binaryType == "memoryview"
    ws.send("text is always str")
    assert await rec.next_message() == "text is always str"
    ws.close()
    await ws.wait_closed()


async def test_send_snapshots_mutable_buffers(url: str) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)
    await rec.opened()
    buffer = bytearray(b"before")
    ws.send(buffer)
    buffer[:] = b"after!"
    assert await rec.next_message() == b"before"
    with pytest.raises(TypeError):
        ws.send(42)  # type: ignore[arg-type]
    ws.send("\ud800 lone surrogate")  # a USVString: replaced, not an error
    assert await rec.next_message() == "\ufffd lone surrogate"
    ws.close()
    await ws.wait_closed()


# ----------------------------------------------------------------------------- listeners


async def test_event_listeners(url: str) -> None:
    ws = WebSocket(url + "/")
    calls: list[str] = []

    def first(event: Event) -> None:
        calls.append("first")

    def once(event: Event) -> None:
        calls.append("once")

    def removed(event: Event) -> None:
        calls.append("removed")

    ws.addEventListener("message", first)
    ws.addEventListener("message", first)  # the same listener is added only once
    ws.onmessage = lambda event: calls.append("handler")
    ws.addEventListener("message", once, once=True)
    ws.addEventListener("message", removed)
    ws.removeEventListener("message", removed)
    ws.onmessage = lambda event: calls.append("handler2")  # keeps its place

    opened = asyncio.Event()
    ws.addEventListener("open", lambda event: opened.set())
    await asyncio.wait_for(opened.wait(), 5)
    received = asyncio.Event()
    ws.addEventListener("message", lambda event: received.set())
    for _ in range(2):
        received.clear()
        ws.send("ping")
        await asyncio.wait_for(received.wait(), 5)
    assert calls == ["first", "handler2", "once", "first", "handler2"]

    ws.onmessage = None
    assert ws.onmessage is None
    ws.onmessage = "not callable"  # type: ignore[assignment]
    assert ws.onmessage is None
    calls.clear()
    assert ws.dispatchEvent(MessageEvent("message", data="synthetic"))
    assert calls == ["first"]
    ws.close()
    await ws.wait_closed()


async def test_bound_methods_can_be_removed(url: str) -> None:
    class Client:
        def __init__(self) -> None:
            self.calls = 0

        def on_custom(self, event: Event) -> None:
            self.calls += 1

    ws = WebSocket(url + "/")
    client = Client()
    ws.addEventListener("custom", client.on_custom)
    ws.addEventListener("custom", client.on_custom)  # a new bound method object, same listener
    ws.dispatchEvent(Event("custom"))
    ws.removeEventListener("custom", client.on_custom)
    ws.dispatchEvent(Event("custom"))
    assert client.calls == 1
    ws.close()
    await ws.wait_closed()


async def test_stop_immediate_propagation_and_custom_events(url: str) -> None:
    ws = WebSocket(url + "/")
    seen: list[str] = []

    def stopper(event: Event) -> None:
        seen.append("stopper")
        event.stopImmediatePropagation()

    ws.addEventListener("custom", stopper)
    ws.addEventListener("custom", lambda event: seen.append("never"))
    event = Event("custom")
    ws.dispatchEvent(event)
    assert event.target is ws
    assert seen == ["stopper"]
    ws.close()
    await ws.wait_closed()


async def test_listener_exceptions_are_logged_not_raised(
    url: str, caplog: pytest.LogCaptureFixture
) -> None:
    ws = WebSocket(url + "/")
    rec = Recorder(ws)

    def broken(event: Event) -> None:
        raise RuntimeError("listener bug")

    async def broken_async(event: Event) -> None:
        raise RuntimeError("async listener bug")

    ws.addEventListener("open", broken)
    ws.addEventListener("open", broken_async)
    ws.addEventListener("open", lambda event: ws.send("still works"))
    with caplog.at_level(logging.ERROR, logger="pulsewire"):
        assert await rec.next_message() == "still works"
        ws.close()
        await ws.wait_closed()
    messages = [r.exc_info[1] for r in caplog.records if r.exc_info]
    assert {str(exc) for exc in messages} == {"listener bug", "async listener bug"}


async def test_async_listeners(url: str) -> None:
    ws = WebSocket(url + "/")
    received: list[Any] = []

    async def on_open(event: Event) -> None:
        await asyncio.sleep(0.01)
        ws.send("from a coroutine")

    async def on_message(event: MessageEvent) -> None:
        received.append(event.data)
        ws.close(3000)

    ws.onopen = on_open
    ws.onmessage = on_message
    await ws.wait_closed()
    assert received == ["from a coroutine"]
