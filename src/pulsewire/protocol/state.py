"""Which side a connection is, its state, and the error for a call its state forbids."""

from __future__ import annotations

import enum

__all__ = ["InvalidState", "Side", "State"]


class Side(enum.Enum):
    """Which end of the connection this is (a client masks its frames)."""

    SERVER = "server"
    CLIENT = "client"


class State(enum.IntEnum):
    """OPEN, then CLOSING (our Close sent), then CLOSED (see the table in :mod:`.connection`)."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


class InvalidState(RuntimeError):
    """A send call was made in a state that does not allow it (e.g. data after our Close)."""
