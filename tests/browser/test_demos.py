"""The demo apps (``/demo/...`` of ``pulsewire serve --demo``) in Chromium: chat on every
transport and across a reconnect, collaborative notes converging, the live dashboard moving,
live scores fed by the HTTP API; with screenshots in ``test-output/screenshots/``.

``docs/images/chat.png`` and ``docs/images/dashboard.png`` are refreshed from the screenshots
when missing, or always with ``PULSEWIRE_DOC_IMAGES=1`` (so that a test run does not change
committed files).
"""

from __future__ import annotations

import asyncio
import base64
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from pycrdt import Doc, Text

from pulsewire.demos import demo_config
from pulsewire.demos.notes import NotesService
from pulsewire.demos.producers import (
    METRICS_CHANNEL,
    start_demo_producers,
    stop_demo_producers,
)
from pulsewire.hub.config import HubConfig
from pulsewire.hub.errors import ErrorCode, HubError
from pulsewire.hub.hub import Hub

from . import demo_fixtures
from .demo_fixtures import DOC_IMAGES, DemoHubProcess, DemoPage

demo_hub = demo_fixtures.demo_hub  # the fixtures of this module
open_demo = demo_fixtures.open_demo
OpenDemo = Callable[..., DemoPage]


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def doc_image(screenshot: Path, name: str) -> None:
    """Copy a screenshot to docs/images/ (see the module docstring)."""
    target = DOC_IMAGES / f"{name}.png"
    if not target.exists() or os.environ.get("PULSEWIRE_DOC_IMAGES") == "1":
        DOC_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(screenshot, target)


# ---------------------------------------------------------------------------------- chat

MESSAGES = "#messages .msg .text"
PRESENCE = "#presence .name"


def open_chat(
    open_demo: OpenDemo, hub: DemoHubProcess, user: str, room: str, **query: str
) -> DemoPage:
    page = open_demo(hub, "chat", user=user, room=room, **query)
    page.wait_connected()
    return page


def send(page: DemoPage, text: str) -> None:
    page.page.fill("#text", text)
    page.page.press("#text", "Enter")


def wait_messages(page: DemoPage, expected: list[str], timeout: float = 10.0) -> None:
    page.wait(
        "([selector, n]) => document.querySelectorAll(selector).length >= n",
        [MESSAGES, len(expected)],
        timeout,
    )
    assert page.texts(MESSAGES) == expected, page


def wait_presence(page: DemoPage, users: list[str]) -> None:
    page.wait(
        "([selector, users]) => JSON.stringify([...document.querySelectorAll(selector)]"
        ".map((e) => e.textContent)) === JSON.stringify(users)",
        [PRESENCE, sorted(users)],
    )


def test_chat_two_pages(demo_hub: DemoHubProcess, open_demo: OpenDemo) -> None:
    room = unique("release")
    alice = open_chat(open_demo, demo_hub, "alice", room)
    bob = open_chat(open_demo, demo_hub, "bob", room)
    for page in (alice, bob):
        wait_presence(page, ["alice", "bob"])
    send(alice, "Hi Bob! Is the release ready?")
    wait_messages(bob, ["Hi Bob! Is the release ready?"])
    send(bob, "Almost: the tests are green.")
    send(alice, "Great, ship it!")
    conversation = [
        "Hi Bob! Is the release ready?",
        "Almost: the tests are green.",
        "Great, ship it!",
    ]
    for page in (alice, bob):
        wait_messages(page, conversation)
    # typing: shown on the other page only, gone when the message arrives
    bob.page.type("#text", "Writing the release no")
    alice.wait("() => document.querySelector('#typing').textContent === 'bob is typing…'")
    assert bob.page.inner_text("#typing") == ""
    doc_image(alice.screenshot("chat"), "chat")
    bob.page.fill("#text", "Writing the release notes now.")
    bob.page.press("#text", "Enter")
    alice.wait("() => document.querySelector('#typing').textContent === ''", timeout=2)
    wait_messages(alice, [*conversation, "Writing the release notes now."])
    # typing expires by itself after ~3 s without keystrokes
    alice.page.type("#text", "ok")
    bob.wait("() => document.querySelector('#typing').textContent === 'alice is typing…'")
    started = time.monotonic()
    bob.wait("() => document.querySelector('#typing').textContent === ''", timeout=6)
    assert 1.5 < time.monotonic() - started < 5
    # a page joining later gets the conversation from history
    carol = open_chat(open_demo, demo_hub, "carol", room)
    wait_messages(carol, [*conversation, "Writing the release notes now."])
    wait_presence(alice, ["alice", "bob", "carol"])
    assert not alice.errors and not bob.errors and not carol.errors


def test_chat_over_websocket_sse_and_longpolling(
    demo_hub: DemoHubProcess, open_demo: OpenDemo
) -> None:
    room = unique("room")
    transports = ["websocket", "sse", "longpoll"]
    pages = {
        name: open_chat(open_demo, demo_hub, f"user-{name}", room, transport=name)
        for name in transports
    }
    for name, page in pages.items():
        assert page.badge() == f"connected · {name}"
        wait_presence(page, [f"user-{t}" for t in transports])
    for name, page in pages.items():
        send(page, f"hello over {name}")
        for other in pages.values():  # one at a time: the order is then known
            other.wait(
                "([s, t]) => [...document.querySelectorAll(s)].some((e) => e.textContent === t)",
                [MESSAGES, f"hello over {name}"],
            )
    for page in pages.values():
        wait_messages(page, [f"hello over {name}" for name in transports])
        assert not page.errors, page


def test_chat_reconnect_shows_missed_messages_once_in_order(
    demo_hub: DemoHubProcess, open_demo: OpenDemo
) -> None:
    room = unique("room")
    channel = f"chat:{room}"
    user = unique("dana")
    page = open_chat(open_demo, demo_hub, user, room)
    page.wait("() => window.demo?.room?.chat.state === 'subscribed'")
    page.eval(
        """() => {
            window.log = [];
            demo.room.chat.on("subscribed", (ctx) => log.push([ctx.recovering, ctx.recovered]));
        }"""
    )
    sent: list[str] = []

    def publish(count: int) -> None:
        for _ in range(count):
            text = f"message {len(sent) + 1}"
            sent.append(text)
            demo_hub.publish(channel, {"text": text, "user": "newsbot"})

    publish(5)
    wait_messages(page, sent)
    for _ in range(2):  # the server drops the connection while messages go on
        demo_hub.api("disconnect", {"user": user, "code": 4000, "reason": "test"})
        publish(10)
        wait_messages(page, sent)
    # missed for sure: published while the page is disconnected
    page.eval("() => demo.client.disconnect()")
    page.wait("() => document.querySelector('#connection').dataset.state === 'disconnected'")
    publish(10)
    page.eval("() => demo.client.connect()")
    publish(3)
    wait_messages(page, sent)
    page.wait("() => log.length === 3")
    assert page.eval("() => log") == [[True, True]] * 3
    assert page.texts("#messages .msg .who") == ["newsbot"] * len(sent)
    assert not page.errors, page


# --------------------------------------------------------------------------------- notes

EDITOR = "#editor"


def open_notes(open_demo: OpenDemo, hub: DemoHubProcess, user: str, doc: str) -> DemoPage:
    page = open_demo(hub, "notes", user=user, doc=doc)
    page.page.wait_for_selector(f"{EDITOR}:not([disabled])")
    return page


def editor_text(page: DemoPage) -> str:
    return str(page.page.eval_on_selector(EDITOR, "(e) => e.value"))


def wait_text(page: DemoPage, text: str, timeout: float = 10.0) -> None:
    try:
        page.wait("([s, t]) => document.querySelector(s).value === t", [EDITOR, text], timeout)
    except AssertionError as exc:
        raise AssertionError(f"{editor_text(page)!r} != {text!r}") from exc


def test_notes_concurrent_typing_converges(demo_hub: DemoHubProcess, open_demo: OpenDemo) -> None:
    doc = unique("doc")
    ada = open_notes(open_demo, demo_hub, "ada", doc)
    grace = open_notes(open_demo, demo_hub, "grace", doc)
    ada.page.click(EDITOR)
    ada.page.keyboard.type("\n--\n")
    wait_text(grace, "\n--\n")
    # Ada types at the start, Grace at the end, keystroke by keystroke at the same time.
    ada.page.keyboard.press("Control+Home")
    grace.page.click(EDITOR)
    grace.page.keyboard.press("Control+End")
    first = "Agenda: ship the demos, then the docs."
    second = "Notes: all tests pass in Chromium!"
    for index in range(max(len(first), len(second))):
        if index < len(first):
            ada.page.keyboard.type(first[index])
        if index < len(second):
            grace.page.keyboard.type(second[index])
    expected = f"{first}\n--\n{second}"
    wait_text(ada, expected)
    wait_text(grace, expected)
    # a page opened afterwards loads the document from the server's copy
    linus = open_notes(open_demo, demo_hub, "linus", doc)
    assert editor_text(linus) == expected
    for page in (ada, grace, linus):
        page.wait("() => document.querySelector('#status').textContent.startsWith('saved')")
        assert not page.errors, page
    ada.screenshot("notes")


# ----------------------------------------------------------------------------- dashboard


def test_dashboard_charts_move(demo_hub: DemoHubProcess, open_demo: OpenDemo) -> None:
    page = open_demo(demo_hub, "dashboard")
    page.wait_connected()
    page.wait("() => Number(document.querySelector('#samples').textContent) > 0")
    count = "() => Number(document.querySelector('#samples').textContent)"
    path = "() => [...document.querySelectorAll('.chart .line')].map((p) => p.getAttribute('d'))"
    before_count, before_paths = page.eval(count), page.eval(path)
    assert len(before_paths) == 6 and all(before_paths), before_paths
    started = time.monotonic()
    page.wait(f"() => ({count})() >= {before_count + 4}", timeout=3)
    assert time.monotonic() - started < 2.5  # the producer publishes 4 samples a second
    after_paths = page.eval(path)
    assert all(a != b for a, b in zip(before_paths, after_paths, strict=True)), after_paths
    assert page.page.inner_text(".legend .value >> nth=0") != "\N{EN DASH}"
    time.sleep(1.0)  # a little more data for the picture
    doc_image(page.screenshot("dashboard"), "dashboard")
    assert not page.errors, page


# -------------------------------------------------------------------------------- scores


def test_scores_from_the_http_api(demo_hub: DemoHubProcess, open_demo: OpenDemo) -> None:
    def publish(match: str, home: int, away: int, minute: int, event: str) -> None:
        data = {"match": match, "home": home, "away": away, "minute": minute, "event": event}
        demo_hub.publish("scores:live", data)

    publish("Lions v Tigers", 0, 0, 1, "Kick-off")
    publish("Eagles v Sharks", 1, 0, 12, "Goal! Eagles")
    page = open_demo(demo_hub, "scores")
    page.wait_connected()
    page.wait("() => document.querySelectorAll('#ticker li').length === 2")  # from history
    publish("Lions v Tigers", 1, 0, 23, "Goal! Lions")
    publish("Bears v Wolves", 0, 0, 30, "Yellow card, Bears #4")
    publish("Lions v Tigers", 2, 1, 67, "Goal! Tigers")
    page.wait("() => document.querySelectorAll('#ticker li').length === 5")
    scores = page.texts(".match .score")
    assert scores == ["2 \N{EN DASH} 1", "1 \N{EN DASH} 0", "0 \N{EN DASH} 0"], scores
    assert page.texts(".match .event") == ["Goal! Tigers", "Goal! Eagles", "Yellow card, Bears #4"]
    assert page.texts("#ticker .what")[0] == "Lions v Tigers 2\N{EN DASH}1"
    curl = page.page.inner_text("#curl")
    assert f"{demo_hub.base}/api/publish" in curl and "apikey demo" in curl
    page.screenshot("scores")
    assert not page.errors, page


# ------------------------------------------------------- the server side, without a browser


def run_async(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """``asyncio.run(main())`` in another thread: while sync playwright runs, its event loop
    counts as running in this one."""
    errors: list[BaseException] = []

    def target() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=target)
    thread.start()
    thread.join(30)
    assert not thread.is_alive(), "timed out"
    if errors:
        raise errors[0]


def yjs_update(text: str) -> str:
    """A Yjs update (base64) inserting ``text`` into a new document's ``text``."""
    doc: Doc[Any] = Doc()
    doc.get("text", type=Text).insert(0, text)
    return base64.b64encode(doc.get_update()).decode()


def text_of_state(state: str) -> str:
    doc: Doc[Any] = Doc()
    doc.apply_update(base64.b64decode(state))
    return str(doc.get("text", type=Text))


def demo_hub_object() -> Hub:
    return Hub(demo_config(HubConfig()))


def test_notes_service_keeps_the_document() -> None:
    async def main() -> None:
        hub = demo_hub_object()
        await hub.start()
        notes = NotesService(hub).install()
        assert hub.on_publish == notes.on_publish and hub.on_rpc == notes.on_rpc
        await notes.on_publish(None, "notes:a", {"update": yjs_update("hello")})
        assert notes.text("notes:a") == "hello"
        reply = await notes.on_rpc(None, "notes.state", {"doc": "a"})
        assert text_of_state(reply["state"]) == "hello"
        assert await notes.on_publish(None, "chat:a", {"anything": 1}) is None  # not notes
        for bad in ({"update": "not base64!"}, {"update": "AAE="}, "text", {}):
            with pytest.raises(HubError) as caught:
                await notes.on_publish(None, "notes:a", bad)
            assert caught.value.code == ErrorCode.BAD_REQUEST
        with pytest.raises(HubError) as caught:
            await notes.on_rpc(None, "notes.nope", {"doc": "a"})
        assert caught.value.code == ErrorCode.METHOD_NOT_FOUND
        with pytest.raises(HubError) as caught:
            await notes.on_rpc(None, "notes.state", {"doc": "bad name"})
        assert caught.value.code == ErrorCode.BAD_REQUEST
        # a document not in memory is rebuilt from the channel's history
        await hub.publish("notes:b", {"update": yjs_update("from history")})
        fresh = NotesService(hub)
        reply = await fresh.on_rpc(None, "notes.state", {"doc": "b"})
        assert text_of_state(reply["state"]) == "from history"
        await hub.close()

    run_async(main)


def test_dashboard_producer_publishes_until_stopped() -> None:
    async def main() -> None:
        hub = demo_hub_object()
        await hub.start()
        tasks = start_demo_producers(hub, interval=0.01)
        assert start_demo_producers(hub) == tasks  # already running
        await asyncio.sleep(0.2)
        samples = [p.data for p in (await hub.history(METRICS_CHANNEL)).publications]
        assert len(samples) >= 5
        assert set(samples[-1]) == {
            "t",
            "load",
            "sessions",
            "publications_per_s",
            "deliveries_per_s",
            "sine",
            "walk",
        }
        assert samples[-1]["publications_per_s"] > 0
        await stop_demo_producers(tasks)
        assert all(task.done() for task in tasks)
        # they also end by themselves once the hub closes
        tasks = start_demo_producers(hub, interval=0.01)
        await hub.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 2)

    run_async(main)
