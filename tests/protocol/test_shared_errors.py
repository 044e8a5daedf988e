"""Errors shared by the asyncio and threaded bindings live in the protocol core."""

from __future__ import annotations

import ast
from pathlib import Path

import pulsewire
import pulsewire.aio
import pulsewire.aio.connection
import pulsewire.sync
from pulsewire.protocol import ConcurrencyError, PulsewireError
from pulsewire.protocol.errors import ConcurrencyError as CoreConcurrencyError


def test_concurrency_error_is_one_class_everywhere() -> None:
    assert ConcurrencyError is CoreConcurrencyError
    assert pulsewire.ConcurrencyError is ConcurrencyError
    assert pulsewire.aio.ConcurrencyError is ConcurrencyError
    assert pulsewire.aio.connection.ConcurrencyError is ConcurrencyError
    assert pulsewire.sync.ConcurrencyError is ConcurrencyError
    # Still a RuntimeError, as before it moved; now also a PulsewireError.
    assert issubclass(ConcurrencyError, RuntimeError)
    assert issubclass(ConcurrencyError, PulsewireError)


def test_the_threaded_client_imports_nothing_from_the_asyncio_bindings() -> None:
    sync_dir = Path(pulsewire.sync.__file__).parent
    imported = set()
    for path in sync_dir.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add("." * node.level + node.module)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
    assert imported, "the check read no imports"
    assert not [m for m in imported if m.startswith(("..aio", "pulsewire.aio"))]
