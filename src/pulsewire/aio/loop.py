"""Event-loop selection: uvloop when it is installed, asyncio's own loop otherwise."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["install_uvloop", "run", "uvloop_available"]

T = TypeVar("T")


def uvloop_available() -> bool:
    if os.environ.get("PULSEWIRE_NO_UVLOOP"):
        return False
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def install_uvloop() -> bool:
    """Make new event loops uvloop loops if uvloop is installed; returns whether it is used."""
    if not uvloop_available():
        return False
    import uvloop

    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return True


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on uvloop when available (set PULSEWIRE_NO_UVLOOP=1 to opt out)."""
    if uvloop_available():
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)
