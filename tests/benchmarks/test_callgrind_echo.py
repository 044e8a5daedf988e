"""benchmarks/callgrind_echo.py: the frames its driver sends are what a server parses back
(running valgrind itself is left to the benchmark: minutes, not a unit test)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from pulsewire.protocol import Connection, Side

ROOT = Path(__file__).resolve().parents[2]


def load() -> ModuleType:
    sys.path.insert(0, str(ROOT / "benchmarks"))  # it imports run.py from there
    try:
        spec = importlib.util.spec_from_file_location(
            "bench_callgrind_echo", ROOT / "benchmarks" / "callgrind_echo.py"
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))


@pytest.mark.parametrize("size", [0, 32, 125, 126, 65535, 65536, 70000])
@pytest.mark.parametrize("text", [True, False])
def test_driver_frames_parse_back_to_the_payload(size: int, text: bool) -> None:
    callgrind_echo = load()
    payload = (b"0123456789abcdef" * (size // 16 + 1))[:size]
    server = Connection(Side.SERVER, max_message_size=None)
    server.receive_data(callgrind_echo.frame(payload, text) * 2)
    expected = payload.decode() if text else payload
    assert server.events_received() == [expected, expected]
    assert server.failure is None
