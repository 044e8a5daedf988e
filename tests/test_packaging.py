"""``pip install pulsewire`` is the WebSocket library and the in-memory hub; the rest are extras.

The serve tests run ``pulsewire serve`` in a subprocess whose imports of the extras' packages
fail (a ``sys.meta_path`` finder), as on a plain ``pip install pulsewire``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from importlib.metadata import requires

import pytest
from packaging.requirements import Requirement

import pulsewire
from pulsewire.extras import EXTRAS, MissingExtra, needs_extra

MINIMAL = {"httptools", "pyjwt", "msgpack", "msgspec", "prometheus-client", "tomli"}
"""The unconditional requirements (tomli only before Python 3.11)."""
EXTRA_PACKAGES = {
    "redis": "redis",
    "nats": "nats-py",
    "demo": "pycrdt",
    "speed": "uvloop",
    "proxy": "httpx",
}
BLOCKED = ("redis", "nats", "pycrdt", "uvloop", "httpx")
START_TIMEOUT = 30.0

BLOCKER = """
import sys

BLOCKED = set(sys.argv.pop(1).split(","))


class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
        return None


sys.meta_path.insert(0, Blocker())
from pulsewire.cli import main

status = main(sys.argv[1:])
leaked = sorted(n for n in sys.modules if n.partition(".")[0] in BLOCKED)
assert not leaked, leaked
sys.exit(status)
"""


def _name(requirement: Requirement) -> str:
    return requirement.name.lower().replace("_", "-")


def test_unconditional_requirements_are_the_minimal_set() -> None:
    parsed = [Requirement(text) for text in requires("pulsewire") or []]
    unconditional = {_name(r) for r in parsed if r.marker is None or "extra" not in str(r.marker)}
    assert unconditional == MINIMAL


def test_each_extra_brings_its_package_and_all_brings_them_all() -> None:
    parsed = [Requirement(text) for text in requires("pulsewire") or []]

    def of(extra: str) -> set[str]:
        return {
            _name(r) for r in parsed if r.marker is not None and r.marker.evaluate({"extra": extra})
        }

    for extra, package in EXTRA_PACKAGES.items():
        assert package in of(extra) or "pulsewire" in of(extra), extra
    assert "pulsewire" in of("all") and "pulsewire" in of("dev")
    assert set(EXTRAS) == set(EXTRA_PACKAGES)


def test_needs_extra_names_the_extra_and_passes_other_import_errors() -> None:
    with pytest.raises(MissingExtra) as info, needs_extra("redis", "the redis engine"):
        raise ModuleNotFoundError("No module named 'redis.asyncio'", name="redis.asyncio")
    assert str(info.value) == (
        "the redis engine needs the redis extra: pip install 'pulsewire[redis]'"
    )
    assert isinstance(info.value, ImportError) and info.value.extra == "redis"
    with pytest.raises(ModuleNotFoundError), needs_extra("redis", "the redis engine"):
        raise ModuleNotFoundError("No module named 'yaml'", name="yaml")


def _serve(*args: str) -> list[str]:
    return [sys.executable, "-c", BLOCKER, ",".join(BLOCKED), "serve", *args]


async def test_serve_runs_without_any_extra(tmp_path) -> None:
    config = tmp_path / "pulsewire.toml"
    config.write_text(
        "[hub]\nallow_anonymous = true\n\n[channel]\nallow_publish = true\nallow_anonymous = true\n"
    )
    proc = await asyncio.create_subprocess_exec(
        *_serve("--port", "0", "--config", str(config)),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None and proc.stderr is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)).decode()
        if not line.startswith("listening on http://127.0.0.1:"):
            stderr = (await proc.stderr.read()).decode()
            raise AssertionError(f"no ready line: {line!r}; stderr: {stderr[-2000:]}")
        url = line.split()[-1].replace("http://", "ws://") + "connection/websocket"
        async with pulsewire.connect(url) as ws:

            async def receive() -> dict:
                return json.loads(await asyncio.wait_for(ws.recv(), 10))  # type: ignore[no-any-return]

            await ws.send(json.dumps({"id": 1, "method": "connect", "params": {}}))
            assert "result" in await receive()
            await ws.send(json.dumps({"id": 2, "method": "subscribe", "params": {"channel": "t"}}))
            reply = await receive()
            assert reply["id"] == 2 and "result" in reply, reply
            publish = {"id": 3, "method": "publish", "params": {"channel": "t", "data": [1]}}
            await ws.send(json.dumps(publish))
            messages = [await receive() for _ in range(2)]
            assert any(m.get("id") == 3 and "result" in m for m in messages), messages
            assert any(m.get("data") == [1] for m in messages), messages
        proc.terminate()
        assert await asyncio.wait_for(proc.wait(), 15) == 0, (await proc.stderr.read()).decode()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("--engine", "redis://127.0.0.1:1/0"),
            "the redis engine needs the redis extra: pip install 'pulsewire[redis]'",
        ),
        (
            ("--engine", "nats://127.0.0.1:1"),
            "the nats engine needs the nats extra: pip install 'pulsewire[nats]'",
        ),
        (("--demo",), "--demo needs the demo extra: pip install 'pulsewire[demo]'"),
        (  # said once by the supervisor, not once per worker
            ("--workers", "2", "--engine", "redis://127.0.0.1:1/0"),
            "the redis engine needs the redis extra: pip install 'pulsewire[redis]'",
        ),
    ],
)
def test_a_missing_extra_is_one_line_naming_it(args: tuple[str, ...], message: str) -> None:
    done = subprocess.run(
        _serve("--port", "0", *args), capture_output=True, text=True, timeout=START_TIMEOUT
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"pulsewire serve: {message}"]
    assert done.stdout == ""


def test_the_proxy_without_its_extra_is_one_line_naming_it(tmp_path) -> None:
    config = tmp_path / "pulsewire.toml"
    config.write_text('[proxy]\nurl = "http://127.0.0.1:9/"\n[proxy.connect]\n')
    done = subprocess.run(
        _serve("--port", "0", "--config", str(config)),
        capture_output=True,
        text=True,
        timeout=START_TIMEOUT,
    )
    assert done.returncode == 2
    message = "the backend proxy ([proxy] in the config) needs the proxy extra"
    assert done.stderr.splitlines() == [
        f"pulsewire serve: {message}: pip install 'pulsewire[proxy]'"
    ]
