"""The tutorial's chat app (examples/chat, docs/tutorial.md) in Chromium.

The app runs under uvicorn as a subprocess, as the tutorial runs it: once with the hub mounted
in it (HubASGI), once beside a ``pulsewire serve`` node. Pages log in through the form and
chat; the code blocks of docs/tutorial.md are checked to be the files of examples/chat.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pulsewire.hub import load_config

from .conftest import HOST, HubProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "chat"
SECRET = "tutorial-tests-secret-of-32-bytes-or-more"
API_KEY = "tutorial-tests-api-key"


class ChatApp(HubProcess):
    """``uvicorn examples.chat.app:app`` from the repository's root, as the tutorial says."""

    what = "the chat app"

    def __init__(self, port: int, hub_url: str | None = None) -> None:
        super().__init__(port)
        self.env = {**os.environ, "CHAT_SECRET": SECRET, "CHAT_API_KEY": API_KEY}
        if hub_url is not None:
            self.env["CHAT_HUB_URL"] = hub_url

    def command(self) -> list[str]:
        uvicorn = [sys.executable, "-m", "uvicorn", "examples.chat.app:app"]
        return [*uvicorn, "--host", HOST, "--port", str(self.port)]

    def start(self, timeout: float = 30.0) -> None:
        with open(self.log, "a", encoding="utf-8") as log:
            self.proc = subprocess.Popen(
                self.command(), cwd=ROOT, env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while True:  # poll until the app answers
            try:
                with urllib.request.urlopen(f"{self.base}/config", timeout=2):
                    return
            except (urllib.error.URLError, ConnectionError):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    output = self.log.read_text(encoding="utf-8")[-3000:]
                    raise RuntimeError(f"{self.what} did not start:\n{output}") from None
                time.sleep(0.05)


class ChatHub(HubProcess):
    """The hub beside the app: ``pulsewire serve`` with examples/chat/pulsewire.toml."""

    def __init__(self, port: int, app_origin: str) -> None:
        super().__init__(port)
        self.app_origin = app_origin

    def command(self) -> list[str]:
        serve = [sys.executable, "-m", "pulsewire.cli", "serve", "--host", HOST]
        serve += ["--port", str(self.port), "--config", str(EXAMPLE / "pulsewire.toml")]
        serve += ["--token-secret", SECRET, "--api-key", API_KEY]
        return [*serve, "--allowed-origin", self.app_origin]


@pytest.fixture
def run() -> Iterator[Callable[[HubProcess], HubProcess]]:
    started: list[HubProcess] = []

    def start(process: HubProcess) -> HubProcess:
        started.append(process)
        process.start()
        return process

    yield start
    for process in reversed(started):
        process.stop()


class ChatPage:
    """A page of the chat app, driven as a person would: the form, the message box."""

    def __init__(self, browser_context: Any, app: HubProcess) -> None:
        self.page = browser_context.new_page()
        self.errors: list[str] = []
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))
        self.page.goto(f"{app.base}/")

    def login(self, name: str) -> None:
        self.page.fill("#login input[name=name]", name)
        self.page.click("#login button")
        self.wait_connected()

    def wait_connected(self) -> None:
        try:
            self.page.wait_for_function(
                "() => document.getElementById('status').textContent === 'connected'", polling=20
            )
        except Exception as exc:
            shown = self.page.inner_text("body")
            raise AssertionError(f"not connected; the page: {shown!r}; {self.errors}") from exc

    def send(self, text: str) -> None:
        self.page.fill("#send input[name=text]", text)
        self.page.click("#send button")

    def texts(self, selector: str) -> list[str]:
        return list(
            self.page.eval_on_selector_all(selector, "(els) => els.map(e => e.textContent)")
        )

    def wait_for(self, selector: str, expected: list[str]) -> None:
        """Wait until the texts of ``selector`` are ``expected``."""
        try:
            self.page.wait_for_function(
                "([s, want]) => JSON.stringify([...document.querySelectorAll(s)]"
                ".map(e => e.textContent)) === JSON.stringify(want)",
                arg=[selector, expected],
                polling=20,
                timeout=10000,
            )
        except Exception as exc:
            got = self.texts(selector)
            raise AssertionError(f"{selector}: {got!r}, not {expected!r}; {self.errors}") from exc

    def close(self) -> None:
        assert self.errors == []
        self.page.close()


def chat_both_ways(ann: ChatPage, bob: ChatPage) -> list[str]:
    """Ann and Bob log in, see each other, and talk; returns the messages both see."""
    ann.login("Ann")
    bob.login("Bob")
    for page in (ann, bob):
        page.wait_for("#people li", ["Ann", "Bob"])
    ann.send("hi Bob")
    bob.wait_for("#messages li", ["chat: Ann logged in", "chat: Bob logged in", "Ann: hi Bob"])
    bob.send("hello Ann")
    expected = ["chat: Ann logged in", "chat: Bob logged in", "Ann: hi Bob", "Bob: hello Ann"]
    for page in (ann, bob):
        page.wait_for("#messages li", expected)
    return expected


def test_two_people_chat_with_the_hub_mounted(
    run: Callable[[HubProcess], HubProcess], browser_context: Any
) -> None:
    app = run(ChatApp(free_port()))
    ann, bob = ChatPage(browser_context, app), ChatPage(browser_context, app)
    expected = chat_both_ways(ann, bob)
    # Bob reloads: still logged in (this tab), the history is back, both are here.
    bob.page.reload()
    bob.wait_connected()
    bob.wait_for("#messages li", expected)
    bob.wait_for("#people li", ["Ann", "Bob"])
    # Ann leaves: Bob sees her go.
    ann.close()
    bob.wait_for("#people li", ["Bob"])
    # The app restarts: the page reconnects by itself; the in-memory history is gone.
    app.stop()
    bob.page.wait_for_function(
        "() => document.getElementById('status').textContent === 'connecting'"
    )
    app.start()
    bob.wait_connected()
    bob.wait_for("#messages li", [])
    bob.wait_for("#people li", ["Bob"])
    bob.close()


def test_a_name_of_blanks_is_refused_with_a_message(
    run: Callable[[HubProcess], HubProcess], browser_context: Any
) -> None:
    app = run(ChatApp(free_port()))
    page = ChatPage(browser_context, app)
    page.page.fill("#login input[name=name]", "   ")
    page.page.click("#login button")
    page.wait_for("#login-error", ["Cannot log in: /login answered 422 Unprocessable Entity"])
    assert page.page.is_visible("#login") and not page.page.is_visible("#chat")
    page.close()


def test_two_people_chat_with_the_hub_beside_the_app(
    run: Callable[[HubProcess], HubProcess], browser_context: Any
) -> None:
    app_port = free_port()
    hub = run(ChatHub(free_port(), f"http://{HOST}:{app_port}"))
    app = run(ChatApp(app_port, hub_url=hub.base))
    ann, bob = ChatPage(browser_context, app), ChatPage(browser_context, app)
    assert ann.page.evaluate("() => fetch('/config').then(r => r.json())") == {"hub": hub.base}
    chat_both_ways(ann, bob)  # "logged in" came through the hub's HTTP API
    ann.close()
    bob.close()


def test_the_tutorial_shows_the_example_code() -> None:
    """Each ```lang block marked file=NAME in docs/tutorial.md is examples/chat/NAME."""
    doc = (ROOT / "docs" / "tutorial.md").read_text(encoding="utf-8")
    marked = re.findall(
        r"^<!-- snippet: [^>]*file=(\S+)[^>]*-->\n```\w+\n(.*?)^```$", doc, re.M | re.S
    )
    shown = {name: text for name, text in marked}
    files = {str(p.relative_to(EXAMPLE)) for p in EXAMPLE.rglob("*") if p.is_file()}
    files -= {name for name in files if "__pycache__" in name}
    assert set(shown) == files
    for name, text in shown.items():
        assert text == (EXAMPLE / name).read_text(encoding="utf-8"), name


def test_the_hub_beside_the_app_is_configured_like_the_mounted_one() -> None:
    """pulsewire.toml's chat namespace is app.py's CHAT, and it allows uvicorn's default origin."""
    spec = importlib.util.spec_from_file_location("tutorial_chat_app", EXAMPLE / "app.py")
    assert spec is not None and spec.loader is not None
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    config, server = load_config(str(EXAMPLE / "pulsewire.toml"))
    assert config.namespaces == {"chat": app.CHAT}
    assert "http://127.0.0.1:8000" in server["allowed_origins"]
