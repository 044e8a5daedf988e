"""The NATS engine: many hub processes on one NATS (with JetStream) act as one hub.

Subjects (``T`` is the channel name escaped into one token, see :func:`encode_token`):

* ``{prefix}.c.T``: fan-out of publications and join/leave events (core NATS, per channel);
  ``{prefix}.control``: control messages, every node.
* History: ``{prefix}.h.{size}_{age_ms}.T`` in the stream ``{prefix}_H_{size}_{age_ms}`` (one
  stream per history size and retention ``age = max(history_ttl, history_meta_ttl)``;
  ``max_msgs_per_subject = size``). Each message carries the channel's own offset and epoch:
  offsets are contiguous (1, 2, 3...). An append is a compare-and-set on the subject's last
  stream sequence (``Nats-Expected-Last-Subject-Sequence``, retried on conflict), so the chain
  cannot fork. The stream *republishes* every stored message to ``{prefix}.c.T``: the server
  fans out in stream order, so each node receives a channel's publications in offset order,
  and nothing is lost if the publisher dies between store and fan-out.
* Expiry follows :class:`~.memory.MemoryEngine`, applied when reading: publications before
  an idle gap of ``history_ttl`` (or all, once the newest is that old) are not returned, but
  the position stays; once the newest message is ``age`` old the channel starts over (offset
  1, new epoch). JetStream's ``max_age`` drops the messages. Timestamps are the server's,
  compared with the local clock (keep clocks in sync).
* ``history()`` on an empty channel writes a marker record (offset 0, a new epoch) so the
  epoch it returns is the one the next publication gets; ``remove_history`` appends a marker
  with the current offset and epoch and purges the messages before it.
* Idempotent publish: JetStream's message-id deduplication (``Nats-Msg-Id``, a digest of
  channel and key). History channels: the append carries it, and the history streams'
  ``duplicate_window`` is the idempotency window (at most their ``max_age``); a duplicate
  ack names the first message's sequence, whose offset and epoch are returned. Channels
  without history: keyed publications go through the stream ``{prefix}_I`` (subjects
  ``{prefix}.i.T``, one message kept per channel for the window, deduplicated over it) that
  republishes to ``{prefix}.c.T``, so the dedup check, the store and the fan-out are one
  atomic step (a KV "create" followed by a core publish is not: a create whose ack is lost
  would take the key with nothing published). The first position of a keyed history
  publication is also noted in ``{prefix}_K`` (``{prefix}.k.<msg id>``, for the window), for
  retries that come after the publication was trimmed from history.
* Presence: the stream ``{prefix}_P``, subject ``{prefix}.p.T.C`` per client ``C`` (last
  message kept), value = ClientInfo, ttl and owning instance. An entry counts while its
  server timestamp + ttl lies ahead, so entries of a dead node expire without it; ``max_age``
  is the largest ttl seen. Every write is a compare-and-set on the subject's last sequence
  (``Nats-Expected-Last-Subject-Sequence``; the engine remembers the sequence of its own
  last write): a dead-node cleanup replaces an entry by a *tombstone* only if the entry is
  still the one it read, so of several survivors exactly one succeeds (the stream leader
  orders the writes) and publishes the leave; the owner's own refresh or removal then fails
  its compare-and-set too and finds the tombstone. ``{prefix}.p.!n.N.T`` (five tokens, so no
  channel's ``{prefix}.p.T.*`` matches it) records that instance ``N`` has presence in ``T``.

The code: :mod:`.nats_link` (the connection, tokens, records, stores, consumers),
:mod:`.nats_history` (history and keyed appends), :mod:`.nats_presence` (presence), and this
module (life cycle, fan-out, publishing).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import StorageType

from ..types import ClientInfo, HistoryResult, Publication, PublishOptions, StreamPosition
from .base import Engine, EngineUnavailable, PresenceAdd, PublishOnce
from .nats_history import NatsHistory
from .nats_link import (
    MSG_ID,
    NatsLink,
    decode_token,
    dumps,
    encode_token,
    errors,
    msg_id,
    pub_dict,
    pub_from,
)
from .nats_presence import NatsPresence
from .nats_url import check_replicas, parse_nats_url, redact

__all__ = ["NatsEngine", "decode_token", "encode_token"]

log = logging.getLogger(__name__)

_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+")


class NatsEngine(Engine):
    """Fan-out, history, presence and control over NATS with JetStream (server 2.9+).

    ``url`` names one server or a cluster's (``nats://h1:p1,h2:p2,h3:p3?replicas=3``, see
    :mod:`.nats_url`); ``replicas``, if given, overrides the URL's. Calls time out after
    ``timeout`` seconds; ``start()`` gives up after ``connect_timeout`` per server; a lost
    connection moves to another server of the cluster (those given and those the servers
    announce), retried every ``reconnect_wait`` seconds forever, and a silent one is
    noticed within about two ``ping_interval``. The engine does the connection and the
    fan-out; history is :class:`~.nats_history.NatsHistory`'s, presence
    :class:`~.nats_presence.NatsPresence`'s.
    """

    name = "nats"

    def __init__(
        self,
        url: str = "nats://127.0.0.1:4222",
        prefix: str = "pulsewire",
        *,
        timeout: float = 1.5,
        connect_timeout: float = 2.0,
        reconnect_wait: float = 0.5,
        ping_interval: int = 2,
        replicas: int | None = None,
        memory_storage: bool = False,
    ) -> None:
        super().__init__()
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError("prefix must match [A-Za-z0-9_-]+")
        target = parse_nats_url(url)
        self.url = url
        #: The servers given (the client also uses those the cluster announces).
        self.servers = list(target.servers)
        #: JetStream replicas of the streams this engine creates.
        self.replicas = target.replicas if replicas is None else check_replicas(replicas)
        self.prefix = prefix
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self._ping_interval = ping_interval
        storage = StorageType.MEMORY if memory_storage else StorageType.FILE
        self._link = NatsLink(prefix, timeout=timeout, storage=storage, replicas=self.replicas)
        self._history_part = NatsHistory(self._link)
        self._presence_part = NatsPresence(self._link, self.publish_leave)
        self._subs: dict[str, Subscription] = {}
        self._wanted: set[str] = set()  # subscribed, or being subscribed, on this node
        self._up = False
        self._closing = False

    # -- connection --------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        nc = self._link.nc
        return nc is not None and nc.is_connected

    def connected_url(self) -> str | None:
        """The server the engine is connected to now (``nats://host:port``), if any."""
        nc = self._link.nc
        url = nc.connected_url if nc is not None and nc.is_connected else None
        return f"{url.scheme}://{url.netloc}" if url is not None else None

    async def start(self) -> None:
        nc = Client()
        try:
            await asyncio.wait_for(
                nc.connect(
                    self.servers,
                    name=f"pulsewire {self.node_id}" if self.node_id else "pulsewire",
                    connect_timeout=max(1, math.ceil(self._connect_timeout)),
                    # Several servers: the initial connect tries each in turn (nats-py
                    # shuffles them, and adds those the cluster announces), and so does every
                    # reconnect, forever.
                    reconnect_time_wait=self._reconnect_wait,  # type: ignore[arg-type]
                    max_reconnect_attempts=-1,
                    ping_interval=self._ping_interval,
                    max_outstanding_pings=2,
                    drain_timeout=max(1, math.ceil(self._timeout)),
                    error_cb=self._on_error,
                    disconnected_cb=self._on_disconnected,
                    reconnected_cb=self._on_reconnected,
                    closed_cb=self._on_closed,
                ),
                self._connect_timeout * len(self.servers),
            )
            js = nc.jetstream(timeout=self._timeout)
            await js.account_info()  # fails when JetStream is not enabled
            await nc.subscribe(f"{self.prefix}.control", cb=self._on_control_msg)
            await nc.flush(timeout=max(1, math.ceil(self._timeout)))
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            self._closing = True
            await nc.close()
            where = ",".join(redact(server) for server in self.servers)
            raise EngineUnavailable(f"cannot use NATS at {where}: {exc!r}") from exc
        self._link.nc, self._link.js = nc, js
        self._up, self._closing = True, False

    async def close(self) -> None:
        self._closing = True
        nc, self._link.nc, self._link.js = self._link.nc, None, None
        self._subs.clear()
        self._wanted.clear()
        if nc is None:
            return
        try:
            if nc.is_connected:
                await asyncio.wait_for(nc.drain(), self._timeout + 1)
        except Exception:
            log.debug("NATS drain failed", exc_info=True)
        finally:
            if not nc.is_closed:
                await nc.close()

    async def _on_error(self, exc: Exception) -> None:
        log.debug("NATS error: %r", exc)

    async def _on_disconnected(self) -> None:
        self._history_part.forget_tips()
        self._set_state(False)

    async def _on_reconnected(self) -> None:
        self._set_state(True)  # nats-py has replayed the subscriptions before calling this

    async def _on_closed(self) -> None:
        self._set_state(False)

    def _set_state(self, up: bool) -> None:
        if self._closing or up == self._up:
            return
        self._up = up
        log.info("NATS engine %s", "available" if up else "unavailable")
        if self.handler is not None:
            self.handler.on_engine_state(up)

    # -- fan-out -----------------------------------------------------------------------------

    def _fan_subject(self, channel: str) -> str:
        return f"{self.prefix}.c.{encode_token(channel)}"

    async def subscribe(self, channel: str) -> None:
        nc, _ = self._link.conn()
        if channel in self._subs:
            return
        self._wanted.add(channel)
        try:
            with errors():
                sub = await nc.subscribe(self._fan_subject(channel), cb=self._on_channel_msg)
                self._subs[channel] = sub
                await nc.flush(timeout=max(1, math.ceil(self._timeout)))  # SUB active on return
        except BaseException:
            if channel not in self._subs:
                self._wanted.discard(channel)
            raise

    async def unsubscribe(self, channel: str) -> None:
        self._wanted.discard(channel)
        sub = self._subs.pop(channel, None)
        if sub is not None:
            with contextlib.suppress(nats.errors.Error, OSError):
                await sub.unsubscribe()

    async def _on_channel_msg(self, msg: Msg) -> None:
        if self.handler is None or self._closing:
            return
        try:
            channel = decode_token(msg.subject.split(".", 2)[2])
            if channel not in self._wanted:
                return  # unsubscribed: nothing more for it, even if already received
            env = json.loads(msg.data)
            kind = env["t"]
            headers = msg.headers or {}
            if "Nats-Sequence" in headers and "ps" in env:  # from a history stream: a tip hint
                seq = int(headers["Nats-Sequence"])
                self._history_part.note(channel, headers["Nats-Subject"], seq, env)
            if kind == "p":
                if env.get("n") == self.node_id and not env.get("echo"):
                    return  # no history: publish() delivered it locally already
                self.handler.on_publication(channel, pub_from(env["d"]))
            elif kind == "j":
                node = env.get("o")
                info = ClientInfo.from_dict(env["d"])
                self.handler.on_join(channel, info, node if isinstance(node, str) else "")
            elif kind == "l":
                self.handler.on_leave(channel, ClientInfo.from_dict(env["d"]))
        except Exception:  # a bad message must not stop the subscription
            log.exception("NATS engine: cannot handle message on %s", msg.subject)

    async def _on_control_msg(self, msg: Msg) -> None:
        if self.handler is None or self._closing:
            return
        try:
            self.handler.on_control(json.loads(msg.data)["d"])
        except Exception:
            log.exception("NATS engine: cannot handle control message")

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> StreamPosition | None:
        if options.history:
            return await self._history_part.publish(channel, publication, options)
        env = {"t": "p", "n": self.node_id, "d": pub_dict(publication)}
        # This node's subscribers get it at once, whatever NATS does (its echo is skipped);
        # the other nodes at most once.
        if self.handler is not None and channel in self._wanted:
            self.handler.on_publication(channel, publication)
        await self._link.send(self._fan_subject(channel), env)
        return None

    async def publish_once(
        self,
        channel: str,
        publication: Publication,
        options: PublishOptions,
        key: str,
        window: float,
    ) -> PublishOnce:
        self._history_part.window = window
        if options.history:
            return await self._history_part.publish_once(
                channel, publication, options, msg_id(channel, key)
            )
        return await self._publish_once_live(channel, publication, msg_id(channel, key), window)

    async def _publish_once_live(
        self, channel: str, publication: Publication, msg_id: str, window: float
    ) -> PublishOnce:
        """A keyed publish without history: stored in ``{prefix}_I`` (deduplicated there), and
        republished by the server to every node's fan-out subject, this one's included."""
        _, js = self._link.conn()
        env = {"t": "p", "n": self.node_id, "echo": 1, "d": pub_dict(publication)}
        subject = f"{self.prefix}.i.{encode_token(channel)}"
        payload, headers = dumps(env), {MSG_ID: msg_id}
        with errors():
            await self._link.keyed_stream("I", window)
            try:
                ack = await self._link.store(js, subject, payload, headers)
            except nats.js.errors.NoStreamResponseError:  # deleted meanwhile: recreate
                await self._link.keyed_stream("I", window, force=True)
                ack = await self._link.store(js, subject, payload, headers)
        return PublishOnce(None, duplicate=bool(ack.duplicate))

    async def publish_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        envelope: dict[str, Any] = {"t": "j", "d": info.to_dict()}
        if node:
            envelope["o"] = node
        await self._link.send(self._fan_subject(channel), envelope)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._link.send(self._fan_subject(channel), {"t": "l", "d": info.to_dict()})

    async def publish_control(self, message: dict[str, Any]) -> None:
        await self._link.send(f"{self.prefix}.control", {"t": "c", "d": message})

    # -- history (nats_history.py) -----------------------------------------------------------

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
        options: PublishOptions,
    ) -> HistoryResult:
        return await self._history_part.history(
            channel, since=since, limit=limit, reverse=reverse, options=options
        )

    async def remove_history(self, channel: str) -> None:
        await self._history_part.remove_history(channel)

    # -- presence (nats_presence.py) ---------------------------------------------------------

    async def add_presence(
        self, channel: str, info: ClientInfo, ttl: float, node: str = ""
    ) -> PresenceAdd:
        return await self._presence_part.add_presence(channel, info, ttl, node)

    async def remove_presence(self, channel: str, client_id: str) -> bool:
        return await self._presence_part.remove_presence(channel, client_id)

    async def remove_node_presence(
        self, channel: str, node: str, ttl: float, *, leave: bool
    ) -> list[ClientInfo]:
        return await self._presence_part.remove_node_presence(channel, node, ttl, leave=leave)

    async def node_presence_channels(self, node: str) -> list[str]:
        return await self._presence_part.node_presence_channels(node)

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        return await self._presence_part.presence(channel)
