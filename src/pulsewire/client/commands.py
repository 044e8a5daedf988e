"""The hub's commands that only ask and answer (publish, presence, history, rpc, send,
ping): how each one's params are made and its result read. :class:`Commands` is a base of
:class:`~pulsewire.client.client.Client`, which sends them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .types import ClientInfo, HistoryResult, Position, PresenceStats, Publication

__all__ = ["Commands", "position_of"]


def position_of(result: Mapping[str, Any]) -> Position | None:
    """The ``offset``/``epoch`` of a result, if it has them."""
    offset, epoch = result.get("offset"), result.get("epoch")
    return Position(offset, str(epoch)) if isinstance(offset, int) else None


class Commands:
    """The commands; the subclass sends them (:meth:`_call`)."""

    async def _call(self, method: str, params: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Send ``method`` once connected; its result (the subclass's job)."""
        raise NotImplementedError

    async def _subscribed(self, channel: str) -> None:
        """Wait while a subscription to ``channel`` is being made (the subclass's job)."""
        raise NotImplementedError

    async def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> Position | None:
        """Publish ``data`` (any JSON value) to ``channel``; the hub requires a subscription
        to it (waited for if it is being made). Returns the publication's position in
        channels with history, else None. ``idempotency_key``: see docs/protocol.md,
        "Publishing exactly once"."""
        await self._subscribed(channel)
        params: dict[str, Any] = {"channel": channel, "data": data}
        if idempotency_key is not None:
            params["idempotency_key"] = idempotency_key
        return position_of(await self._call("publish", params))

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        """Who is subscribed to ``channel`` (with presence), by client id."""
        clients = (await self._call("presence", {"channel": channel})).get("clients")
        found = {}
        for client_id, info in (clients if isinstance(clients, Mapping) else {}).items():
            parsed = ClientInfo.from_wire(info)
            if parsed is not None:
                found[str(client_id)] = parsed
        return found

    async def presence_stats(self, channel: str) -> PresenceStats:
        """How many clients and distinct users are subscribed to ``channel``."""
        result = await self._call("presence_stats", {"channel": channel})
        return PresenceStats(int(result.get("num_clients", 0)), int(result.get("num_users", 0)))

    async def history(
        self,
        channel: str,
        *,
        limit: int | None = None,
        since: Position | tuple[int, str] | None = None,
        reverse: bool = False,
    ) -> HistoryResult:
        """Publications kept in ``channel``'s history: at most ``limit``, after ``since``,
        newest first with ``reverse``; and the stream's current position."""
        params: dict[str, Any] = {"channel": channel}
        if limit is not None:
            params["limit"] = limit
        if since is not None:
            params["since"] = {"offset": since[0], "epoch": since[1]}
        if reverse:
            params["reverse"] = True
        result = await self._call("history", params)
        pubs = result.get("publications")
        publications = [
            Publication.from_wire(channel, pub)
            for pub in (pubs if isinstance(pubs, list) else ())
            if isinstance(pub, Mapping)
        ]
        return HistoryResult(publications, position_of(result))

    async def rpc(self, method: str, data: Any = None) -> Any:
        """Call the application's ``on_rpc`` hook; returns the ``data`` it answered."""
        return (await self._call("rpc", {"method": method, "data": data})).get("data")

    async def send(self, data: Any) -> None:
        """Send ``data`` to the application's ``on_message`` hook (error 104 without one)."""
        await self._call("send", {"data": data})

    async def ping(self) -> None:
        """One ``ping`` round trip."""
        await self._call("ping")
