"""Fixtures of the demo-app tests (test_demos.py): a demo hub with the demo services, and
demo pages in Chromium.

* ``demo_hub``: ``pulsewire serve --demo`` (through :data:`LAUNCHER`, which also starts the
  dashboard producer and the notes service when ``serve --demo`` does not do it itself yet),
  shared by the tests of a module.
* ``open_demo(hub, path, **query)``: a demo page (``/demo/<path>/?query``) in the shared
  Chromium context, with its console errors collected; closed at teardown.
* :data:`SCREENSHOTS`: ``test-output/screenshots/`` at the repository root.
"""

from __future__ import annotations

import sys
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import HOST, HubProcess, free_port

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
DOC_IMAGES = ROOT / "docs" / "images"

LAUNCHER = """
import sys
from pulsewire.aio.loop import run
from pulsewire.cli import _build_parser, serve_options
from pulsewire.demos.notes import NotesService
from pulsewire.demos.producers import start_demo_producers
from pulsewire.server.node import run_node

def ready(server, settings):
    hub = server.hub
    if hub.on_publish is None and hub.on_rpc is None:  # not wired by serve --demo (yet)
        NotesService(hub).install()
    start_demo_producers(hub)  # returns the running ones if serve --demo started them
    print(f"listening on {server.url}", flush=True)

args = _build_parser().parse_args(["serve", *sys.argv[1:]])
sys.exit(run(run_node(serve_options(args), ready=ready)))
"""
"""``python -c LAUNCHER --demo ...``: ``pulsewire serve`` with the demo services running."""


class DemoHubProcess(HubProcess):
    """:class:`HubProcess` run through :data:`LAUNCHER`."""

    what = "the demo hub"

    def command(self) -> list[str]:
        command = [sys.executable, "-c", LAUNCHER, "--demo", "--host", HOST]
        return [*command, "--port", str(self.port), "--token-secret", self.secret]


@pytest.fixture(scope="module")
def demo_hub(browser_context: Any) -> Iterator[DemoHubProcess]:
    # browser_context first: without Chromium the tests skip before a server starts
    process = DemoHubProcess(free_port())
    process.start()
    yield process
    process.stop()


class DemoPage:
    """A demo page and what its console reported."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"page error: {exc}"))
        page.on("console", self._console)

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(f"console: {message.text}")

    def eval(self, expression: str, arg: Any = None) -> Any:
        return self.page.evaluate(expression, arg)

    def wait(self, expression: str, arg: Any = None, timeout: float = 10.0) -> Any:
        """Wait until the JS function ``expression`` (of ``arg``) returns something truthy."""
        try:
            handle = self.page.wait_for_function(
                expression, arg=arg, timeout=timeout * 1000, polling=25
            )
        except Exception as exc:
            raise AssertionError(f"not true within {timeout}s: {expression}; {self}") from exc
        return handle.json_value()

    def texts(self, selector: str) -> list[str]:
        return list(self.page.locator(selector).all_inner_texts())

    def badge(self) -> str:
        return str(self.page.locator("#connection").inner_text())

    def wait_connected(self, timeout: float = 10.0) -> None:
        self.wait(
            "() => document.querySelector('#connection').dataset.state === 'connected'",
            timeout=timeout,
        )

    def screenshot(self, name: str) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path))
        return path

    def __str__(self) -> str:
        return f"page {self.page.url} (errors: {self.errors})"


@pytest.fixture
def open_demo(browser_context: Any) -> Iterator[Callable[..., DemoPage]]:
    pages: list[Any] = []

    def open_(hub: HubProcess, path: str, **query: str) -> DemoPage:
        page = browser_context.new_page()
        pages.append(page)
        page.set_viewport_size({"width": 1200, "height": 760})
        demo = DemoPage(page)
        url = f"{hub.base}/demo/{path}/"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        page.goto(url)
        return demo

    yield open_
    for page in pages:
        page.close()
