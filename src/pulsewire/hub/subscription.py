"""A subscription as the fan-out keeps it, and what the fan-out needs from a subscriber.

Shared by :mod:`.fanout` (the index) and :mod:`.delivery` (handing pushes to subscribers);
:mod:`.fanout` re-exports both names.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from .channels import ChannelName
from .types import ClientInfo, PreparedMessage, Publication
from .wire import Codec

__all__ = ["Subscriber", "Subscription"]


@dataclass(slots=True, eq=False)
class Subscription:
    """One subscriber's subscription to one channel, as the fan-out keeps it."""

    channel: ChannelName
    info: ClientInfo
    recovering: bool = False
    """Being positioned (history read): live publications are held in ``buffer``."""
    buffer: list[Publication] = field(default_factory=list)
    offset: int = 0
    """The last offset this subscriber was given (or told about): older ones are skipped."""
    epoch: str = ""
    server: bool = False
    """A server-side subscription: the server made it (the client may not end it), and
    the server makes it again when the stream cannot be kept whole (insufficient state)."""


class Subscriber(Protocol):
    """What the fan-out needs from a subscriber (a hub session). Hashable by identity."""

    @property
    def codec(self) -> Codec:
        """The wire encoding of this subscriber's pushes."""

    def send_publication(self, prepared: PreparedMessage, sub: Subscription) -> None:
        """Send one publication push, already encoded with this subscriber's codec."""

    def push(self, message: dict[str, Any]) -> None:
        """Encode and send one push (unsubscribe...)."""

    def send_prepared(self, prepared: PreparedMessage) -> None:
        """Send one push (join, leave) already encoded with this subscriber's codec."""

    def resubscribe(self, sub: Subscription) -> None:
        """The server-side subscription ``sub`` was removed for insufficient state: make it
        again, recovering from its last position (``sub.offset``, ``sub.epoch``)."""
