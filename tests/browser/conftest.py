"""Browser tests: pulsewire.js in headless Chromium (Debian's package) driven by playwright.

* ``chromium_path`` / ``browser_context``: Chromium and one persistent context (a fresh
  temporary profile) for the tests of this folder. Missing Chromium or playwright: the
  tests are skipped with the reason, except under ``CI=true`` where that is a failure.
* ``hub``: a ``pulsewire serve --demo`` subprocess on a free loopback port, shared by the
  tests of this folder; ``start_hub()`` starts a private one (that a test may stop and restart).
* ``open_page(hub, user, channels, **options)``: a page on the hub's origin running a
  ``Client`` (see ``harness.js``), connected and subscribed; closed at teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HOST = "127.0.0.1"
_HARNESS_LINES = (Path(__file__).parent / "harness.js").read_text(encoding="utf-8").splitlines()
HARNESS = "\n".join(line for line in _HARNESS_LINES if not line.startswith("//")).rstrip("\n;")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def unavailable(reason: str) -> None:
    """Skip (fail under CI=true: CI must run these tests)."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: browser tests must run)", pytrace=False)
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------ the hub


class HubProcess:
    """``pulsewire serve --demo`` in a subprocess; ``stop()`` and ``start()`` keep the port."""

    what = "pulsewire serve"
    """What :meth:`start`'s error says did not start."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.base = f"http://{HOST}:{port}"
        self.secret = "browser-tests-secret"  # fixed: tokens stay valid across restarts
        self.proc: subprocess.Popen[str] | None = None
        self.log = Path(tempfile.mkdtemp(prefix="pulsewire-serve-")) / "serve.log"

    def command(self) -> list[str]:
        """The server's command line."""
        command = [sys.executable, "-m", "pulsewire.cli", "serve", "--demo", "--host", HOST]
        return [*command, "--port", str(self.port), "--token-secret", self.secret]

    def start(self, timeout: float = 30.0) -> None:
        command = self.command()
        with open(self.log, "a", encoding="utf-8") as log:  # the child keeps its own copy
            self.proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=log, text=True, bufsize=1
            )
        listening = threading.Event()
        stdout = self.proc.stdout
        assert stdout is not None

        def read() -> None:  # also keeps the pipe drained
            for line in stdout:
                if line.startswith("listening on http://"):
                    listening.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.monotonic() + timeout
        while not listening.wait(0.05):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                output = self.log.read_text(encoding="utf-8")[-3000:]
                raise RuntimeError(f"{self.what} did not start:\n{output}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def api(self, method: str, params: dict[str, Any]) -> Any:
        """``POST /api/<method>`` with the demo API key; returns the result."""
        request = urllib.request.Request(
            f"{self.base}/api/{method}",
            data=json.dumps(params).encode(),
            headers={"Authorization": "apikey demo", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.loads(response.read())["result"]

    def publish(self, channel: str, data: Any) -> Any:
        return self.api("publish", {"channel": channel, "data": data})


@pytest.fixture(scope="package")
def hub() -> Iterator[HubProcess]:
    process = HubProcess(free_port())
    process.start()
    yield process
    process.stop()


@pytest.fixture
def start_hub() -> Iterator[Callable[[], HubProcess]]:
    started: list[HubProcess] = []

    def start() -> HubProcess:
        process = HubProcess(free_port())
        started.append(process)
        process.start()
        return process

    yield start
    for process in started:
        process.stop()


# -------------------------------------------------------------------------- the browser


@pytest.fixture(scope="session")
def chromium_path() -> str:
    candidates = [os.environ.get("PULSEWIRE_CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which("chromium"), shutil.which("chromium-browser")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    unavailable("Chromium not found (apt-get install chromium, or set PULSEWIRE_CHROMIUM)")
    raise AssertionError("unreachable")


# Package scope, not session: while sync playwright runs, its event loop counts as running in
# this thread, and asyncio tests elsewhere in the session could not start their own.
@pytest.fixture(scope="package")
def browser_context(chromium_path: str) -> Iterator[Any]:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None:
        unavailable("playwright is not installed (pip install playwright; no browser download)")
    with tempfile.TemporaryDirectory(prefix="pulsewire-chromium-") as profile:
        manager = sync_playwright().start()
        try:
            context = manager.chromium.launch_persistent_context(
                profile, executable_path=chromium_path, headless=True, args=CHROMIUM_ARGS
            )
            context.set_default_timeout(15000)
            yield context
            context.close()
        finally:
            manager.stop()


class Page:
    """A browser page running the test harness (``window.h``, see harness.js)."""

    def __init__(self, page: Any, hub: HubProcess) -> None:
        self.page = page
        self.hub = hub

    def eval(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def wait(self, expression: str, arg: Any = None, timeout: float = 10.0) -> Any:
        """Wait until the JS ``expression`` (a function of ``arg``) is truthy; returns it."""
        handle = self.page.wait_for_function(
            expression, arg=arg, timeout=timeout * 1000, polling=20
        )
        return handle.json_value()

    def received(self, channel: str) -> list[Any]:
        return list(self.eval("(c) => h.pubs[c]", channel))

    def wait_received(self, channel: str, count: int, timeout: float = 10.0) -> list[Any]:
        try:
            self.wait("([c, n]) => h.pubs[c].length >= n", [channel, count], timeout)
        except Exception as exc:
            raise AssertionError(
                f"{self.received(channel)!r} after {timeout}s; events: {self.events()!r}"
            ) from exc
        return self.received(channel)

    def events(self) -> list[Any]:
        return list(self.eval("() => h.events"))

    def subscribed(self, channel: str) -> list[dict[str, Any]]:
        return list(self.eval("(c) => h.subscribed[c]", channel))

    def publish(self, channel: str, data: Any) -> Any:
        return self.eval("([c, d]) => h.client.getSubscription(c).publish(d)", [channel, data])


@pytest.fixture
def open_page(browser_context: Any) -> Iterator[Callable[..., Page]]:
    pages: list[Any] = []

    def open_(hub: HubProcess, user: str, channels: list[str], **options: Any) -> Page:
        page = browser_context.new_page()
        pages.append(page)
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto(f"{hub.base}/")
        wrapped = Page(page, hub)
        options = {"minReconnectDelay": 50, "maxReconnectDelay": 400, "timeout": 5000, **options}
        try:
            wrapped.eval(HARNESS, {"user": user, "channels": channels, "options": options})
        except Exception as exc:
            raise AssertionError(f"harness failed: {exc}; page errors: {errors}") from exc
        return wrapped

    yield open_
    for page in pages:
        page.close()
