"""docs/client.md's examples run as written, against ``pulsewire serve --demo`` (a
subprocess on a free port, which is the only change made to them)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

DOC = Path(__file__).parents[2] / "docs" / "client.md"
SCRIPT = str(Path(sys.executable).parent / "pulsewire")
START_TIMEOUT = 20.0  # a cold interpreter on a busy machine


def runnable_blocks() -> list[str]:
    """The complete programs (the other blocks are marked as fragments in the text)."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    return [block for block in blocks if 'HUB = "127.0.0.1:8000"' in block]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def demo_port() -> AsyncIterator[int]:
    port = free_port()
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(
            SCRIPT, "serve", "--demo", "--port", str(port), stdout=log, stderr=log
        )
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + START_TIMEOUT
            while True:
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.close()
                    break
                except OSError:
                    if proc.returncode is not None or loop.time() > deadline:
                        log.seek(0)
                        raise AssertionError(f"pulsewire serve: {log.read()[-2000:]!r}") from None
                    await asyncio.sleep(0.05)
            yield port
        finally:
            if proc.returncode is None:
                proc.terminate()
                await proc.wait()


async def run(code: str, port: int) -> str:
    code = code.replace('HUB = "127.0.0.1:8000"', f'HUB = "127.0.0.1:{port}"')
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        code,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()[-3000:]
    return out.decode()


async def test_the_examples_run(demo_port: int) -> None:
    first, threaded = runnable_blocks()
    out = await run(first, demo_port)
    assert "connected as ann to node" in out
    assert re.search(r"^1 ann \{'text': 'hi'\}$", out, re.M), out
    assert "last ones: [{'text': 'hi'}]" in out
    out = await run(threaded, demo_port)
    assert out == "bob {'text': 'hello from a script'}\n"
