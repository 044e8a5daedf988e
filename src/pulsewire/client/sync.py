"""``pulsewire.client.sync``: the hub client for scripts and threads, without ``async``.

::

    import pulsewire.client.sync

    with pulsewire.client.sync.connect(url, token="...") as client:
        sub = client.subscribe("chat:lobby")
        client.publish("chat:lobby", {"text": "hi"})
        for pub in sub:
            print(pub.data)

It runs an asyncio :class:`~pulsewire.client.Client` on an event loop in a background
thread (one per client) and waits for each call's outcome, so it has the same behaviour:
reconnects, recovery, token refresh and pings go on while the calling thread does
something else. The methods may be called from any thread except the client's own loop
thread (where callbacks such as ``on_state`` run: they must not call it back, or it
would wait for itself).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from typing import Any, TypeVar

from ..aio.signatures import forwards_to
from .client import Client as AsyncClient
from .subscription import Subscription as AsyncSubscription
from .types import (
    ClientInfo,
    Event,
    HistoryResult,
    Message,
    Position,
    PresenceStats,
    Publication,
    State,
    StateChange,
    Subscribed,
    Unsubscribed,
)

__all__ = ["Client", "Subscription", "connect"]

T = TypeVar("T")


class _Loop:
    """An event loop running in a daemon thread; runs coroutines there and waits."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("a sync client cannot be called from its own loop thread")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt while waiting: stop the call too
            raise

    def iterate(self, make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
        """A blocking iterator over the async iterator ``make()`` gives (made on the loop)."""

        async def start() -> AsyncIterator[T]:
            return make()

        async def step(iterator: AsyncIterator[T]) -> tuple[bool, T | None]:
            try:
                return True, await iterator.__anext__()
            except StopAsyncIteration:
                return False, None

        async def stop(iterator: AsyncIterator[T]) -> None:
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                await aclose()

        iterator = self.run(start())
        try:
            while True:
                more, item = self.run(step(iterator))
                if not more:
                    return
                yield item  # type: ignore[misc]  # an item when more is true
        finally:
            if self.loop.is_running() and not self.loop.is_closed():
                try:
                    self.run(stop(iterator))
                except (RuntimeError, concurrent.futures.CancelledError):
                    pass

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join()
            self.loop.close()


class Subscription:
    """A subscription (see :class:`pulsewire.client.Subscription`): ``for pub in sub``
    blocks for each publication and ends when the subscription does."""

    def __init__(self, sub: AsyncSubscription, loop: _Loop) -> None:
        self.aio = sub
        """The asyncio subscription underneath (use it only on the client's loop)."""
        self._loop = loop

    def __repr__(self) -> str:
        return repr(self.aio).replace("<Subscription", "<sync Subscription", 1)

    @property
    def channel(self) -> str:
        return self.aio.channel

    @property
    def state(self) -> str:
        return self.aio.state

    @property
    def server_side(self) -> bool:
        return self.aio.server_side

    @property
    def position(self) -> Position | None:
        return self.aio.position

    @property
    def recovered(self) -> bool:
        return self.aio.recovered

    @property
    def last_subscribed(self) -> Subscribed | None:
        return self.aio.last_subscribed

    @property
    def ended(self) -> Unsubscribed | None:
        return self.aio.ended

    def __iter__(self) -> Iterator[Publication]:
        return self._loop.iterate(self.aio.__aiter__)

    def events(self) -> Iterator[Event]:
        """Every event, in order (see :meth:`pulsewire.client.Subscription.events`)."""
        return self._loop.iterate(self.aio.events)

    def publish(self, data: Any) -> Position | None:
        return self._loop.run(self.aio.publish(data))

    def presence(self) -> dict[str, ClientInfo]:
        return self._loop.run(self.aio.presence())

    def presence_stats(self) -> PresenceStats:
        return self._loop.run(self.aio.presence_stats())

    def history(self, **options: Any) -> HistoryResult:
        """``limit``, ``since``, ``reverse``: see :meth:`pulsewire.client.Client.history`."""
        return self._loop.run(self.aio.history(**options))

    def unsubscribe(self) -> None:
        self._loop.run(self.aio.unsubscribe())


class Client:
    """The threaded client: :func:`connect` makes and connects one. The options are those
    of :func:`pulsewire.client.connect`; callbacks run on the client's loop thread."""

    def __init__(self, urls: str | Sequence[str], **options: Any) -> None:
        self._loop = _Loop("pulsewire.client.sync")
        try:
            self.aio: AsyncClient = self._loop.run(_make(urls, options))
            """The asyncio client underneath (use it only on its loop)."""
        except BaseException:
            self._loop.stop()
            raise

    def __repr__(self) -> str:
        return repr(self.aio).replace("<pulsewire.client.Client", "<sync Client", 1)

    def connect(self) -> Client:
        """Connect (see :meth:`pulsewire.client.Client.start`); closes the loop on failure."""
        try:
            self._loop.run(self.aio.start())
        except BaseException:
            self._loop.stop()
            raise
        return self

    def close(self) -> None:
        """Close the client and stop its thread."""
        if self._loop.loop.is_closed():
            return
        try:
            self._loop.run(self.aio.close())
            self._loop.run(self._loop.loop.shutdown_asyncgens())  # iterators left open
        finally:
            self._loop.stop()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @property
    def state(self) -> State:
        return self.aio.state

    @property
    def id(self) -> str | None:
        return self.aio.id

    @property
    def user(self) -> str | None:
        return self.aio.user

    @property
    def node(self) -> str | None:
        return self.aio.node

    @property
    def subscriptions(self) -> dict[str, Subscription]:
        """Every subscription by channel (a snapshot)."""

        async def snapshot() -> dict[str, AsyncSubscription]:  # taken on the loop's thread
            return dict(self.aio.subscriptions)

        return {ch: self._wrap(sub) for ch, sub in self._loop.run(snapshot()).items()}

    def _wrap(self, sub: AsyncSubscription) -> Subscription:
        return Subscription(sub, self._loop)

    def subscribe(self, channel: str, **options: Any) -> Subscription:
        """See :meth:`pulsewire.client.Client.subscribe` (same options)."""
        return self._wrap(self._loop.run(self.aio.subscribe(channel, **options)))

    def unsubscribe(self, channel: str) -> None:
        self._loop.run(self.aio.unsubscribe(channel))

    def publish(
        self, channel: str, data: Any, *, idempotency_key: str | None = None
    ) -> Position | None:
        return self._loop.run(self.aio.publish(channel, data, idempotency_key=idempotency_key))

    def presence(self, channel: str) -> dict[str, ClientInfo]:
        return self._loop.run(self.aio.presence(channel))

    def presence_stats(self, channel: str) -> PresenceStats:
        return self._loop.run(self.aio.presence_stats(channel))

    def history(self, channel: str, **options: Any) -> HistoryResult:
        return self._loop.run(self.aio.history(channel, **options))

    def rpc(self, method: str, data: Any = None) -> Any:
        return self._loop.run(self.aio.rpc(method, data))

    def send(self, data: Any) -> None:
        self._loop.run(self.aio.send(data))

    def refresh(self, token: str | None = None) -> int | None:
        return self._loop.run(self.aio.refresh(token))

    def ping(self) -> None:
        self._loop.run(self.aio.ping())

    def messages(self) -> Iterator[Message]:
        """``message`` pushes, blocking for each (see the asyncio client's ``messages``)."""
        return self._loop.iterate(self.aio.messages)

    def state_changes(self) -> Iterator[StateChange]:
        return self._loop.iterate(self.aio.state_changes)

    def server_subscriptions(self) -> Iterator[Subscription]:
        for sub in self._loop.iterate(self.aio.server_subscriptions):
            yield self._wrap(sub)


async def _make(urls: str | Sequence[str], options: dict[str, Any]) -> AsyncClient:
    return AsyncClient(urls, **options)  # made on the loop that will run it


@forwards_to(AsyncClient)
def connect(*args: Any, **options: Any) -> Client:
    """Connect to the hub (the options of :func:`pulsewire.client.connect`) and return a
    connected :class:`Client`; use it with ``with`` to close it. Raises like the asyncio
    ``connect``: ClientClosed (refused for good), ClientTimeout."""
    return Client(*args, **options).connect()
