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
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import math
import random
import re
import secrets
import time
import urllib.parse
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RawStreamMsg,
    RePublish,
    StorageType,
    StreamConfig,
)

from ..types import ClientInfo, HistoryResult, Publication, PublishOptions, StreamPosition
from .base import (
    Engine,
    EngineOutcomeUnknown,
    EngineUnavailable,
    IndexedChannels,
    PresenceAdd,
    PublishOnce,
)

__all__ = ["NatsEngine", "decode_token", "encode_token"]

log = logging.getLogger(__name__)

_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - set(".*>%")
_PREFIX_RE = re.compile(r"[A-Za-z0-9_-]+")
_EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
_MSG_ID = "Nats-Msg-Id"
#: Errors of ``js.publish`` raised before the request left this process: nothing was stored.
#: A reply (APIError) or "no responders" also says nothing was stored; anything else after
#: sending (a timeout above all) leaves the outcome unknown.
_NOT_SENT = (
    nats.errors.ConnectionClosedError,
    nats.errors.ConnectionDrainingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.MaxPayloadError,
    nats.errors.BadSubjectError,
    nats.errors.BadHeaderError,
    nats.errors.NoRespondersError,
    nats.js.errors.Error,  # APIError (a reply) and NoStreamResponseError (no responders)
)
_WRONG_LAST = 10071  # JetStream error codes
_NAME_IN_USE = 10058
_NO_STREAM = 10059
_MAX_ATTEMPTS = 64
_WALK_MAX = 3  # up to this many older messages are fetched one by one, beyond by a consumer
_TIPS_MAX = 10_000
_CONSUME_POLL = 0.25  # a consumer's next message not there in this time: is one still due?


def encode_token(name: str) -> str:
    """Escape ``name`` into one subject token: ``%XX`` (UTF-8) for ``.*>%``, spaces, etc."""
    if not name:
        return "%"
    return "".join(ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in name)


def decode_token(token: str) -> str:
    """Inverse of :func:`encode_token`."""
    return "" if token == "%" else urllib.parse.unquote(token, errors="strict")


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _msg_id(channel: str, key: str) -> str:
    """A header-safe message id for ``key`` in ``channel`` (dedup is per stream, and a
    history stream holds many channels)."""
    return hashlib.sha256(channel.encode() + b"\0" + key.encode()).hexdigest()


class _Duplicate(Exception):
    """A JetStream append was answered as a duplicate of the message at ``seq``."""

    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        self.seq = seq


def _pub_dict(pub: Publication) -> dict[str, Any]:
    d = pub.to_dict()
    if isinstance(pub.data, (bytes, bytearray)):
        d["data"], d["b64"] = base64.b64encode(pub.data).decode(), True
    return d


def _pub_from(d: dict[str, Any]) -> Publication:
    pub = Publication.from_dict(d)
    if d.get("b64"):
        pub = replace(pub, data=base64.b64decode(pub.data))
    return pub


@dataclass
class _Stream:
    name: str
    subject: str  # a channel's subject is f"{subject}.{token}"
    age: float  # seconds a channel's offset and epoch live after its last publication
    window: float  # the idempotency window it was configured with


@dataclass
class _Tip:
    """One stored history record (the last of its subject, when used as a tip)."""

    subject: str
    seq: int  # stream sequence
    offset: int
    epoch: str
    stamp: float
    marker: bool  # a marker (empty start or removed history), not a publication
    prev_seq: int  # stream sequence of the previous record of the subject
    record: dict[str, Any]


def _tip(subject: str, seq: int, stamp: float, record: dict[str, Any]) -> _Tip:
    if record.get("t") == "x":
        offset, epoch = record["o"], record["e"]
    else:
        offset, epoch = record["d"]["offset"], record["d"]["epoch"]
    marker = record.get("t") == "x"
    return _Tip(subject, seq, int(offset), str(epoch), stamp, marker, record["ps"], record)


class NatsEngine(Engine):
    """Fan-out, history, presence and control over NATS with JetStream (server 2.9+).

    Calls time out after ``timeout`` seconds; ``start()`` gives up after ``connect_timeout``;
    a lost connection is retried every ``reconnect_wait`` seconds forever, and a silent one
    is noticed within about two ``ping_interval``.
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
        replicas: int = 1,
        memory_storage: bool = False,
    ) -> None:
        super().__init__()
        if not _PREFIX_RE.fullmatch(prefix):
            raise ValueError("prefix must match [A-Za-z0-9_-]+")
        self.url = url
        self.prefix = prefix
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._reconnect_wait = reconnect_wait
        self._ping_interval = ping_interval
        self._replicas = replicas
        self._storage = StorageType.MEMORY if memory_storage else StorageType.FILE
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._subs: dict[str, Subscription] = {}
        self._wanted: set[str] = set()  # subscribed, or being subscribed, on this node
        self._streams: dict[tuple[int, int], _Stream] = {}
        self._tips: OrderedDict[str, _Tip] = OrderedDict()  # by channel: hints for appends
        self._contended: dict[str, float] = {}  # channel -> time.monotonic() of a lost race
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._presence_age = 0.0  # max_age of the presence stream, as far as we know
        # The idempotency window the streams are configured with: the last one publish_once
        # was given (history reads create streams too).
        self._window = 300.0
        self._keyed_windows: dict[str, float] = {}  # {prefix}_I and _K: window configured
        # Stream sequence of this node's last write of each of its own presence entries (the
        # expected last sequence of its next write); one per local presence subscription.
        self._presence_seqs: dict[str, int] = {}
        self._indexed = IndexedChannels()
        self._up = False
        self._closing = False

    # -- connection --------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        return self._nc is not None and self._nc.is_connected

    async def start(self) -> None:
        nc = Client()
        try:
            await asyncio.wait_for(
                nc.connect(
                    self.url,
                    connect_timeout=max(1, math.ceil(self._connect_timeout)),
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
                self._connect_timeout,
            )
            js = nc.jetstream(timeout=self._timeout)
            await js.account_info()  # fails when JetStream is not enabled
            await nc.subscribe(f"{self.prefix}.control", cb=self._on_control_msg)
            await nc.flush(timeout=max(1, math.ceil(self._timeout)))
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            self._closing = True
            await nc.close()
            raise EngineUnavailable(f"cannot use NATS at {self.url}: {exc!r}") from exc
        self._nc, self._js, self._up, self._closing = nc, js, True, False

    async def close(self) -> None:
        self._closing = True
        nc, self._nc, self._js = self._nc, None, None
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
        self._tips.clear()
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

    def _conn(self) -> tuple[Client, JetStreamContext]:
        nc, js = self._nc, self._js
        if nc is None or js is None or not nc.is_connected:
            raise EngineUnavailable("NATS is not connected")
        return nc, js

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            raise EngineUnavailable(f"NATS: {exc!r}") from exc

    def _lock(self, channel: str) -> asyncio.Lock:
        """One history append at a time per channel on this node (gone once unused)."""
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        return lock

    # -- fan-out -----------------------------------------------------------------------------

    def _fan_subject(self, channel: str) -> str:
        return f"{self.prefix}.c.{encode_token(channel)}"

    async def subscribe(self, channel: str) -> None:
        nc, _ = self._conn()
        if channel in self._subs:
            return
        self._wanted.add(channel)
        try:
            with self._errors():
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
                self._set_tip(channel, _tip(headers["Nats-Subject"], seq, time.time(), env))
            if kind == "p":
                if env.get("n") == self.node_id and not env.get("echo"):
                    return  # no history: publish() delivered it locally already
                self.handler.on_publication(channel, _pub_from(env["d"]))
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
        if not options.history:
            env = {"t": "p", "n": self.node_id, "d": _pub_dict(publication)}
            # This node's subscribers get it at once, whatever NATS does (its echo is
            # skipped); the other nodes at most once.
            if self.handler is not None and channel in self._wanted:
                self.handler.on_publication(channel, publication)
            await self._send(self._fan_subject(channel), env)
            return None

        async with self._lock(channel):
            with self._errors():
                tip = await self._append(channel, options, _record(publication), use_hint=True)
        assert tip is not None
        return StreamPosition(tip.offset, tip.epoch)

    async def publish_once(
        self,
        channel: str,
        publication: Publication,
        options: PublishOptions,
        key: str,
        window: float,
    ) -> PublishOnce:
        msg_id = _msg_id(channel, key)
        self._window = window
        if not options.history:
            return await self._publish_once_live(channel, publication, msg_id, window)

        build = _record(publication)
        async with self._lock(channel):
            with self._errors():
                await self._keyed_stream("K", window)  # before: a failure here publishes nothing
                try:
                    tip = await self._append(channel, options, build, use_hint=True, msg_id=msg_id)
                except _Duplicate as dup:
                    stream = await self._stream(options)
                    subject = f"{stream.subject}.{encode_token(channel)}"
                    position = await self._first(stream, subject, dup.seq, msg_id)
                    return PublishOnce(position, duplicate=True)
        assert tip is not None
        position = StreamPosition(tip.offset, tip.epoch)
        await self._remember(msg_id, position)
        return PublishOnce(position, duplicate=False)

    async def _remember(self, msg_id: str, position: StreamPosition) -> None:
        """Note the first position of a key in ``{prefix}_K`` for the window, for retries that
        come once the publication is trimmed from history. Best effort (a core publish, no
        round trip): a lost note only costs :meth:`_first` its fallbacks."""
        nc = self._nc
        if nc is not None and nc.is_connected and position.epoch:
            with contextlib.suppress(nats.errors.Error, OSError):
                note = f"{position.offset},{position.epoch}".encode()
                await nc.publish(f"{self.prefix}.k.{msg_id}", note)

    async def _first(self, stream: _Stream, subject: str, seq: int, msg_id: str) -> StreamPosition:
        """The position of the record at ``seq``: the first publication with the key.

        Read from the record itself; once it is trimmed (``history_size``), from the note of
        :meth:`_remember`; without a note (the first publisher never got its ack), from the
        subject's next record if it chains back to it (``ps == seq``: one offset more, or a
        removal marker with its offset). Otherwise the position is not known any more:
        ``(0, "")``, still a duplicate (nothing was published)."""
        _, js = self._conn()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            raw = await js.get_msg(stream.name, seq=seq)
            if raw.subject == subject:
                record = json.loads(raw.data or b"{}")
                if record.get("t") == "p":
                    d = record["d"]
                    position = StreamPosition(int(d["offset"]), str(d["epoch"]))
                    return await self._found(msg_id, position)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            raw = await js.get_last_msg(f"{self.prefix}_K", f"{self.prefix}.k.{msg_id}")
            offset, _, epoch = (raw.data or b"").decode().partition(",")
            if offset.isdigit() and epoch:
                return StreamPosition(int(offset), epoch)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            raw = await js.get_msg(stream.name, seq=seq, subject=subject, next=True)
            record = json.loads(raw.data or b"{}")
            if record.get("ps") == seq:
                if record.get("t") == "x" and int(record["o"]) > 0:
                    position = StreamPosition(int(record["o"]), str(record["e"]))
                    return await self._found(msg_id, position)
                if record.get("t") == "p" and int(record["d"]["offset"]) > 1:
                    d = record["d"]
                    position = StreamPosition(int(d["offset"]) - 1, str(d["epoch"]))
                    return await self._found(msg_id, position)
        return StreamPosition(0, "")

    async def _found(self, msg_id: str, position: StreamPosition) -> StreamPosition:
        await self._remember(msg_id, position)  # the next retry may come after a trim
        return position

    async def _publish_once_live(
        self, channel: str, publication: Publication, msg_id: str, window: float
    ) -> PublishOnce:
        """A keyed publish without history: stored in ``{prefix}_I`` (deduplicated there), and
        republished by the server to every node's fan-out subject, this one's included."""
        _, js = self._conn()
        env = {"t": "p", "n": self.node_id, "echo": 1, "d": _pub_dict(publication)}
        subject = f"{self.prefix}.i.{encode_token(channel)}"
        payload, headers = _dumps(env), {_MSG_ID: msg_id}
        with self._errors():
            await self._keyed_stream("I", window)
            try:
                ack = await self._store(js, subject, payload, headers)
            except nats.js.errors.NoStreamResponseError:  # deleted meanwhile: recreate
                await self._keyed_stream("I", window, force=True)
                ack = await self._store(js, subject, payload, headers)
        return PublishOnce(None, duplicate=bool(ack.duplicate))

    async def _keyed_stream(self, kind: str, window: float, force: bool = False) -> None:
        """Create, or reconfigure for a new window, ``{prefix}_I`` (keyed publications without
        history, republished to the fan-out subjects) or ``{prefix}_K`` (notes of first
        positions). One message per subject, kept and deduplicated for the window."""
        name = f"{self.prefix}_{kind}"
        if self._keyed_windows.get(name) == window and not force:
            return
        _, js = self._conn()
        subjects = f"{self.prefix}.{kind.lower()}.>"
        config = StreamConfig(
            name=name,
            subjects=[subjects],
            max_msgs_per_subject=1,  # the dedup memory outlives the messages: keep one
            max_age=window,
            duplicate_window=window,
            storage=self._storage,
            num_replicas=self._replicas,
            discard=DiscardPolicy.OLD,
            republish=RePublish(src=subjects, dest=f"{self.prefix}.c.>") if kind == "I" else None,
        )
        try:
            await js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != _NAME_IN_USE:
                raise
            await js.update_stream(config)
        self._keyed_windows[name] = window

    async def _store(
        self, js: JetStreamContext, subject: str, payload: bytes, headers: dict[str, str]
    ) -> Any:
        """``js.publish``, raising :class:`EngineOutcomeUnknown` when the request was sent and
        no answer came (it may have been stored: only a retry with the same message id, i.e.
        the same idempotency key, is safe)."""
        try:
            return await js.publish(subject, payload, self._timeout, headers=headers)
        except _NOT_SENT:
            raise
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            raise EngineOutcomeUnknown(f"NATS: sent, no answer: {exc!r}") from exc

    async def publish_join(self, channel: str, info: ClientInfo, node: str = "") -> None:
        envelope: dict[str, Any] = {"t": "j", "d": info.to_dict()}
        if node:
            envelope["o"] = node
        await self._send(self._fan_subject(channel), envelope)

    async def publish_leave(self, channel: str, info: ClientInfo) -> None:
        await self._send(self._fan_subject(channel), {"t": "l", "d": info.to_dict()})

    async def publish_control(self, message: dict[str, Any]) -> None:
        await self._send(f"{self.prefix}.control", {"t": "c", "d": message})

    async def _send(self, subject: str, envelope: dict[str, Any]) -> None:
        nc, _ = self._conn()
        with self._errors():
            await nc.publish(subject, _dumps(envelope))

    # -- history -----------------------------------------------------------------------------

    async def _stream(self, options: PublishOptions, force: bool = False) -> _Stream:
        """The history stream for ``options``, created when missing (or when ``force``)."""
        size = options.history_size
        age_ms = max(1, round(max(options.history_ttl, options.history_meta_ttl) * 1000))
        # Dedup must not outlive the messages (JetStream refuses a longer duplicate_window).
        window = min(self._window, age_ms / 1000)
        stream = self._streams.get((size, age_ms))
        if stream is not None and not force and stream.window == window:
            return stream
        _, js = self._conn()
        name, subject = f"{self.prefix}_H_{size}_{age_ms}", f"{self.prefix}.h.{size}_{age_ms}"
        config = StreamConfig(
            name=name,
            subjects=[f"{subject}.>"],
            max_msgs_per_subject=size,
            max_age=age_ms / 1000,
            storage=self._storage,
            num_replicas=self._replicas,
            discard=DiscardPolicy.OLD,
            duplicate_window=window,
            republish=RePublish(src=f"{subject}.>", dest=f"{self.prefix}.c.>"),
        )
        try:
            await js.add_stream(config)  # a no-op when it exists as configured
        except nats.js.errors.APIError as exc:
            if exc.err_code != _NAME_IN_USE:
                raise
            try:  # e.g. made by another version: republish and limits can be updated
                await js.update_stream(config)
            except nats.js.errors.APIError:
                log.warning("NATS stream %s exists with another configuration", name)
        stream = self._streams[(size, age_ms)] = _Stream(name, subject, age_ms / 1000, window)
        return stream

    async def _read_tip(self, stream: _Stream, subject: str) -> _Tip | None:
        """The subject's last record, if any."""
        _, js = self._conn()
        try:
            raw = await js.get_last_msg(stream.name, subject)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == _NO_STREAM:
                raise
            return None
        return _raw_tip(raw)

    def _set_tip(self, channel: str, tip: _Tip) -> None:
        cached = self._tips.pop(channel, None)
        if cached is not None and cached.subject == tip.subject and cached.seq > tip.seq:
            tip = cached  # we know a newer one already
        self._tips[channel] = tip
        if len(self._tips) > _TIPS_MAX:
            self._tips.popitem(last=False)

    async def _append(
        self,
        channel: str,
        options: PublishOptions,
        build: Callable[[_Tip | None], dict[str, Any] | None],
        use_hint: bool = False,
        msg_id: str | None = None,
    ) -> _Tip | None:
        """Compare-and-set append of ``build(tip)`` to the channel's history, where ``tip``
        is its last record unless there is none or it is older than the stream's age (then the
        channel starts over). ``build`` returning None writes nothing. Returns the new tip.

        With ``msg_id`` every attempt carries it: JetStream checks it before the expected
        sequence, so once one attempt was stored (even one whose ack was lost) the others are
        answered as duplicates, raised as :class:`_Duplicate` with the stored sequence."""
        _, js = self._conn()
        stream = await self._stream(options)
        subject = f"{stream.subject}.{encode_token(channel)}"
        # A node that lost a race lately reads the tip before each append like the others
        # must: trusting its cached tip would make it win every race and starve them.
        if use_hint and time.monotonic() - self._contended.get(channel, -9.0) < 1.0:
            use_hint = False
        hint = self._tips.get(channel) if use_hint else None
        tip = hint if hint is not None and hint.subject == subject else None
        known = tip is not None
        sent = 0.0
        for attempt in range(_MAX_ATTEMPTS):
            try:
                if not known:
                    tip, known = await self._read_tip(stream, subject), True
                    if tip is not None:
                        self._set_tip(channel, tip)
                live = tip if tip is not None and time.time() - tip.stamp < stream.age else None
                record = build(live)
                if record is None:
                    return live
                record["ps"] = tip.seq if tip else 0
                headers = {_EXPECTED_LAST: str(record["ps"])}
                if msg_id is not None:
                    headers[_MSG_ID] = msg_id
                sent = time.monotonic()
                ack = await self._store(js, subject, _dumps(record), headers)
            except (nats.js.errors.NoStreamResponseError, nats.js.errors.NotFoundError):
                stream, known = await self._stream(options, force=True), False  # recreate
                continue
            except nats.js.errors.APIError as exc:
                if exc.err_code != _WRONG_LAST:
                    raise
                now = self._contended[channel] = time.monotonic()
                if len(self._contended) > _TIPS_MAX:
                    self._contended.clear()
                known = False
                # Full-jitter backoff from one round trip, doubling with each loss (capped):
                # racers that read, then write, in lockstep would otherwise never win, and
                # under load one round trip is not enough to break the tie.
                window = min((now - sent) * (1 << min(attempt, 8)), 0.25)
                await asyncio.sleep(random.random() * window)
                continue
            except BaseException:
                self._tips.pop(channel, None)  # the outcome is unknown
                raise
            if ack.duplicate:
                raise _Duplicate(ack.seq)
            new = _tip(subject, ack.seq, time.time(), record)
            self._set_tip(channel, new)
            return new
        raise EngineUnavailable(f"history append to {channel!r}: too much contention")

    async def _consume(self, stream: str, config: ConsumerConfig, stop: int = 0) -> list[Msg]:
        """Messages of an ephemeral push consumer, up to stream sequence ``stop`` if set."""
        nc, js = self._conn()
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        try:
            config.deliver_subject = inbox
            config.ack_policy = AckPolicy.NONE
            config.max_deliver = 1
            config.mem_storage = True
            config.num_replicas = 1
            config.inactive_threshold = 2.0  # the server drops it once we unsubscribe
            info = await js.add_consumer(stream, config)
            msgs: list[Msg] = []
            pending = info.num_pending or 0
            deadline = time.monotonic() + self._timeout
            while pending:
                try:
                    msg = await sub.next_msg(timeout=min(self._timeout, _CONSUME_POLL))
                except nats.errors.TimeoutError:
                    # A message counted as pending may have been removed since (purged, or
                    # replaced by a presence tombstone): ask the server what is left.
                    if time.monotonic() > deadline:
                        raise
                    info = await js.consumer_info(stream, info.name)
                    pending = info.num_pending or 0
                    continue
                deadline = time.monotonic() + self._timeout
                msgs.append(msg)
                pending = msg.metadata.num_pending
                if stop and msg.metadata.sequence.stream >= stop:
                    break
            return msgs
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()

    async def history(
        self,
        channel: str,
        *,
        since: StreamPosition | None = None,
        limit: int | None = None,
        reverse: bool = False,
        options: PublishOptions,
    ) -> HistoryResult:
        if not options.history:
            return HistoryResult([], StreamPosition(0, ""))
        _, js = self._conn()
        with self._errors():
            tip = await self._append(channel, options, _start_marker)  # reads; writes if new
            assert tip is not None
            position = StreamPosition(tip.offset, tip.epoch)
            after = max(0, since.offset) if since is not None else 0
            if (
                tip.marker
                or limit == 0
                or after >= tip.offset
                or time.time() - tip.stamp >= options.history_ttl
            ):
                return HistoryResult([], position)
            want = min(tip.offset - after, options.history_size)
            if reverse and limit is not None and limit > 0:
                want = min(want, limit)
            items = [tip]
            if want <= _WALK_MAX:  # one by one, following the chain back
                while len(items) < want and items[-1].prev_seq:
                    try:
                        raw = await js.get_msg(_stream_name(tip), seq=items[-1].prev_seq)
                    except nats.js.errors.NotFoundError:
                        break
                    if raw.subject != tip.subject:
                        break
                    items.append(_raw_tip(raw))
            else:
                config = ConsumerConfig(
                    filter_subject=tip.subject, deliver_policy=DeliverPolicy.ALL
                )
                msgs = await self._consume(_stream_name(tip), config, stop=tip.seq)
                for msg in reversed(msgs):
                    seq = msg.metadata.sequence.stream
                    if seq < tip.seq:
                        stamp = msg.metadata.timestamp.timestamp()
                        items.append(_tip(tip.subject, seq, stamp, json.loads(msg.data)))
        pubs: list[Publication] = []  # newest first: the unbroken, unexpired chain from the tip
        newer: _Tip | None = None
        for item in items:
            if (
                item.marker
                or item.epoch != tip.epoch
                or item.offset != tip.offset - len(pubs)
                or item.offset <= after
                or (newer is not None and newer.stamp - item.stamp >= options.history_ttl)
            ):
                break
            pubs.append(_pub_from(item.record["d"]))
            newer = item
        if not reverse:
            pubs.reverse()
        if limit is not None and limit >= 0:
            pubs = pubs[:limit]
        return HistoryResult(pubs, position)

    async def remove_history(self, channel: str) -> None:
        nc, js = self._conn()
        token = encode_token(channel)
        with self._errors():
            reply = await nc.request(
                "$JS.API.STREAM.NAMES",
                _dumps({"subject": f"{self.prefix}.h.*.{token}"}),
                timeout=self._timeout,
            )
            for name in json.loads(reply.data).get("streams") or []:
                match = re.fullmatch(rf"{re.escape(self.prefix)}_H_(\d+)_(\d+)", name)
                if match is None:
                    continue
                age = int(match.group(2)) / 1000
                options = PublishOptions(int(match.group(1)), age, age)
                async with self._lock(channel):
                    tip = await self._append(channel, options, _removal_marker)
                    if tip is not None and tip.marker:
                        await js.purge_stream(name, seq=tip.seq, subject=tip.subject)

    # -- presence ----------------------------------------------------------------------------

    def _presence_subject(self, channel: str, client: str | None = None) -> str:
        token = "*" if client is None else encode_token(client)
        return f"{self.prefix}.p.{encode_token(channel)}.{token}"

    async def _presence_stream(self, ttl: float) -> None:
        if ttl <= self._presence_age:
            return
        _, js = self._conn()
        config = StreamConfig(
            name=f"{self.prefix}_P",
            subjects=[f"{self.prefix}.p.>"],
            max_msgs_per_subject=1,
            max_age=max(ttl, self._presence_age),
            storage=self._storage,
            num_replicas=self._replicas,
            discard=DiscardPolicy.OLD,
        )
        try:
            info = await js.add_stream(config)
        except nats.js.errors.APIError as exc:
            if exc.err_code != _NAME_IN_USE:
                raise
            info = await js.stream_info(config.name or "")
            if (info.config.max_age or 0) < ttl:  # grow only
                info = await js.update_stream(info.config.evolve(max_age=ttl))
        self._presence_age = info.config.max_age or ttl

    async def _publish_presence(self, subject: str, record: dict[str, Any], expected: int) -> int:
        """Append ``record`` if the subject's last sequence is ``expected`` (0: none);
        returns the new sequence. Raises APIError ``_WRONG_LAST`` otherwise."""
        _, js = self._conn()
        headers = {_EXPECTED_LAST: str(expected)}
        payload = _dumps(record)
        try:
            ack = await js.publish(subject, payload, headers=headers)
        except nats.js.errors.NoStreamResponseError:  # deleted meanwhile: recreate
            self._presence_age = 0.0
            await self._presence_stream(float(record["ttl"]))
            ack = await js.publish(subject, payload, headers=headers)
        return int(ack.seq)

    async def _last_presence(self, subject: str) -> tuple[int, dict[str, Any], float] | None:
        """(sequence, record, server timestamp) of the subject's last message, if any."""
        _, js = self._conn()
        try:
            raw = await js.get_last_msg(f"{self.prefix}_P", subject)
        except nats.js.errors.NotFoundError:
            return None
        stamp = raw.time.timestamp() if raw.time else 0.0
        return raw.seq or 0, json.loads(raw.data or b"{}"), stamp

    async def _purge_presence(self, subject: str, upto: int) -> int:
        """Purge the subject's messages with a sequence up to ``upto``; how many."""
        nc, _ = self._conn()
        request = _dumps({"filter": subject, "seq": upto + 1})
        reply = await nc.request(
            f"$JS.API.STREAM.PURGE.{self.prefix}_P", request, timeout=self._timeout
        )
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error:
            if error.get("err_code") == _NO_STREAM:
                return 0
            raise EngineUnavailable(f"NATS purge of {subject}: {error}")
        return int(answer.get("purged", 0))

    async def add_presence(
        self, channel: str, info: ClientInfo, ttl: float, node: str = ""
    ) -> PresenceAdd:
        self._conn()
        subject = self._presence_subject(channel, info.client)
        record: dict[str, Any] = {"i": info.to_dict(), "ttl": ttl}
        if node:
            record["n"] = node
        with self._errors():
            await self._presence_stream(ttl)
            known = self._presence_seqs.get(subject)
            expected = known or 0
            outcome = PresenceAdd.REFRESHED if known else PresenceAdd.CREATED
            for _attempt in range(_MAX_ATTEMPTS):
                try:
                    seq = await self._publish_presence(subject, record, expected)
                except nats.js.errors.APIError as exc:
                    if exc.err_code != _WRONG_LAST:
                        raise
                    # Not our last write any more: a cleanup's tombstone, or expired.
                    last = await self._last_presence(subject)
                    if last is None:
                        expected, outcome = 0, PresenceAdd.CREATED
                    else:
                        expected, previous, stamp = last
                        outcome = PresenceAdd.REFRESHED
                        if previous.get("x"):
                            live = stamp + float(previous.get("ttl", 0)) > time.time()
                            outcome = PresenceAdd.RESTORED if live else PresenceAdd.CREATED
                    continue
                self._presence_seqs[subject] = seq
                break
            else:
                raise EngineUnavailable(f"presence in {channel!r}: too much contention")
        if node and self._indexed.due(node, channel):
            # Best effort: the entry is written, failing the add for it would leave it behind;
            # retried on the next refresh.
            try:
                with self._errors():
                    index = _dumps({"ttl": IndexedChannels.INDEX_TTL_FACTOR * ttl})
                    await self._presence_stream(IndexedChannels.INDEX_TTL_FACTOR * ttl)
                    _, js = self._conn()
                    await js.publish(self._index_subject(node, channel), index)
            except EngineUnavailable as exc:
                log.debug("NATS engine: presence index of %s not written: %r", node, exc)
            else:
                self._indexed.written(node, channel, ttl)
        return outcome

    async def remove_presence(self, channel: str, client_id: str) -> bool:
        self._conn()
        subject = self._presence_subject(channel, client_id)
        known = self._presence_seqs.pop(subject, None)
        with self._errors():
            if known is not None and await self._purge_presence(subject, known):
                return True  # our own last write, removed by us: the leave is ours
            last = await self._last_presence(subject)
            if last is None:
                return True  # expired and gone, or never there: nobody pushed a leave
            seq, record, _ = last
            purged = await self._purge_presence(subject, seq)
            # A tombstone: a dead-node cleanup removed it and pushed the leave. Nothing purged:
            # replaced between our read and our purge, which only a cleanup's tombstone does.
            return not record.get("x") and purged > 0

    async def remove_node_presence(
        self, channel: str, node: str, ttl: float, *, leave: bool
    ) -> list[ClientInfo]:
        self._conn()
        config = ConsumerConfig(
            filter_subject=self._presence_subject(channel),
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        removed: list[ClientInfo] = []

        async def tombstone(msg: Msg) -> None:
            record = json.loads(msg.data)
            if record.get("x") or record.get("n") != node:
                return
            stone = {"i": record["i"], "ttl": ttl, "n": node, "x": 1}
            try:  # only if the entry is still the one read: exactly one survivor wins
                await self._publish_presence(msg.subject, stone, msg.metadata.sequence.stream)
            except nats.js.errors.APIError as exc:
                if exc.err_code != _WRONG_LAST:
                    raise
                return
            info = ClientInfo.from_dict(record["i"])
            removed.append(info)
            if leave:
                await self.publish_leave(channel, info)

        with self._errors():
            await self._presence_stream(ttl)
            try:
                msgs = await self._consume(f"{self.prefix}_P", config)
            except nats.js.errors.NotFoundError:
                return []
            for start in range(0, len(msgs), 64):
                await asyncio.gather(*(tombstone(msg) for msg in msgs[start : start + 64]))
        return removed

    def _index_subject(self, node: str, channel: str | None = None) -> str:
        token = "*" if channel is None else encode_token(channel)
        return f"{self.prefix}.p.!n.{encode_token(node)}.{token}"

    async def node_presence_channels(self, node: str) -> list[str]:
        self._conn()
        config = ConsumerConfig(
            filter_subject=self._index_subject(node),
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        with self._errors():
            try:
                msgs = await self._consume(f"{self.prefix}_P", config)
            except nats.js.errors.NotFoundError:
                return []
        now = time.time()
        channels = []
        for msg in msgs:
            ttl = float(json.loads(msg.data).get("ttl", 0))
            if msg.metadata.timestamp.timestamp() + ttl > now:
                channels.append(decode_token(msg.subject.rsplit(".", 1)[1]))
        return channels

    async def presence(self, channel: str) -> dict[str, ClientInfo]:
        self._conn()
        config = ConsumerConfig(
            filter_subject=self._presence_subject(channel),
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        with self._errors():
            try:
                msgs = await self._consume(f"{self.prefix}_P", config)
            except nats.js.errors.NotFoundError:
                return {}
        now = time.time()
        out: dict[str, ClientInfo] = {}
        for msg in msgs:
            record = json.loads(msg.data)
            if record.get("x"):
                continue  # a tombstone: removed by a dead-node cleanup
            if msg.metadata.timestamp.timestamp() + float(record["ttl"]) > now:
                info = ClientInfo.from_dict(record["i"])
                out[info.client] = info
        return out


def _raw_tip(raw: RawStreamMsg) -> _Tip:
    stamp = raw.time.timestamp() if raw.time else 0.0
    return _tip(raw.subject or "", raw.seq or 0, stamp, json.loads(raw.data or b"{}"))


def _stream_name(tip: _Tip) -> str:
    prefix, _, key, _ = tip.subject.split(".", 3)  # {prefix}.h.{key}.{token}
    return f"{prefix}_H_{key}"


def _record(publication: Publication) -> Callable[[_Tip | None], dict[str, Any]]:
    """The builder of ``publication``'s history record: it follows ``tip`` (or starts a new
    epoch) with the next offset (``publication`` itself is not changed)."""

    def build(tip: _Tip | None) -> dict[str, Any]:
        base, epoch = (tip.offset, tip.epoch) if tip else (0, secrets.token_hex(6))
        stored = replace(publication, offset=base + 1, prev=base, epoch=epoch)
        return {"t": "p", "d": _pub_dict(stored)}

    return build


def _start_marker(tip: _Tip | None) -> dict[str, Any] | None:
    """Nothing to write for a live channel; an empty start (offset 0, new epoch) otherwise."""
    return None if tip is not None else {"t": "x", "o": 0, "e": secrets.token_hex(6)}


def _removal_marker(tip: _Tip | None) -> dict[str, Any] | None:
    if tip is None or tip.marker:
        return None  # empty or removed already
    return {"t": "x", "o": tip.offset, "e": tip.epoch}
