"""A page of another origin imports ``/pulsewire.js`` from the hub, in Chromium.

The hub listens on 127.0.0.1:P; a page loaded as ``http://localhost:P/`` is another origin
(another host), so its ``import()`` of ``http://127.0.0.1:P/pulsewire.js`` is a CORS request.
The browser takes the module only when the hub allows that origin (``--allowed-origin``);
the page then connects with it and gets a publication.
"""

from __future__ import annotations

import json
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .conftest import HubProcess, free_port

IMPORT = """async (url) => {
  try {
    const module = await import(url);
    return typeof module.Client;
  } catch (error) {
    return `refused: ${error}`;
  }
}"""

CONNECT = """async ([url, base, token, channel]) => {
  const { Client } = await import(url);
  const client = new Client(base, { token, transports: ["websocket"], timeout: 5000 });
  window.received = [];
  const sub = client.subscribe(channel, { onPublication: (pub) => window.received.push(pub.data) });
  client.connect();
  await sub.ready();
  return client.transport;
}"""


class AllowingHub(HubProcess):
    """A hub that allows pages of ``http://localhost:<its port>``."""

    def command(self) -> list[str]:
        return [*super().command(), "--allowed-origin", f"http://localhost:{self.port}"]


@pytest.fixture
def other_origin_page(browser_context: Any) -> Iterator[Callable[[HubProcess], Any]]:
    pages: list[Any] = []

    def open_(hub: HubProcess) -> Any:
        page = browser_context.new_page()
        pages.append(page)
        page.goto(f"http://localhost:{hub.port}/")
        assert page.evaluate("() => location.origin") == f"http://localhost:{hub.port}"
        return page

    yield open_
    for page in pages:
        page.close()


def test_an_origin_not_allowed_cannot_import_the_client(
    hub: HubProcess, other_origin_page: Callable[[HubProcess], Any]
) -> None:
    page = other_origin_page(hub)
    # A URL of its own: nothing another test made the browser cache (max-age=60) can answer.
    result = page.evaluate(IMPORT, f"{hub.base}/pulsewire.js?refused")
    assert result.startswith("refused: "), result


def test_an_allowed_origin_imports_the_client_and_connects(
    other_origin_page: Callable[[HubProcess], Any],
) -> None:
    hub = AllowingHub(free_port())
    hub.start()
    try:
        page = other_origin_page(hub)
        url = f"{hub.base}/pulsewire.js"
        assert page.evaluate(IMPORT, url) == "function"
        token = demo_token(hub)
        channel = f"chat:{uuid.uuid4().hex[:10]}"
        assert page.evaluate(CONNECT, [url, hub.base, token, channel]) == "websocket"
        hub.publish(channel, {"n": 1})
        page.wait_for_function("() => window.received.length >= 1", timeout=10000)
        assert page.evaluate("() => window.received") == [{"n": 1}]
    finally:
        hub.stop()


def demo_token(hub: HubProcess) -> str:
    with urllib.request.urlopen(f"{hub.base}/demo/token?user=cross", timeout=10) as response:
        return str(json.loads(response.read())["token"])
