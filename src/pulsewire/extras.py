"""Optional dependencies: ``pip install 'pulsewire[redis]'`` and the like.

``pip install pulsewire`` is the WebSocket library and the in-memory hub. The Redis and NATS
engines, the notes demo's CRDT documents, uvloop and the backend proxy's HTTP client come
with extras; code that needs one imports it under :func:`needs_extra`, which turns a missing
package into :class:`MissingExtra`, one line naming the extra to install.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

__all__ = ["EXTRAS", "MissingExtra", "needs_extra"]

EXTRAS = {
    "redis": ("redis",),
    "nats": ("nats",),
    "demo": ("pycrdt",),
    "speed": ("uvloop",),
    "proxy": ("httpx",),
}
"""Each extra and the top-level packages it installs."""


class MissingExtra(ImportError):
    """A feature needs an extra that is not installed; ``str()`` says what to install."""

    def __init__(self, what: str, extra: str) -> None:
        super().__init__(f"{what} needs the {extra} extra: pip install 'pulsewire[{extra}]'")
        self.what = what
        self.extra = extra


@contextmanager
def needs_extra(extra: str, what: str) -> Iterator[None]:
    """Turn the ImportError of a missing package of ``extra`` into :class:`MissingExtra`.

    ``with needs_extra("redis", "the redis engine"): from .redis import RedisEngine``.
    An ImportError for anything else (a bug inside the module) passes unchanged.
    """
    try:
        yield
    except ImportError as exc:
        missing = (exc.name or "").partition(".")[0]
        if missing in EXTRAS[extra]:
            raise MissingExtra(what, extra) from exc
        raise
