"""What the NATS engine's parts share: the connection, subject tokens, records, JetStream
stores and ephemeral consumers (see :mod:`.nats` for the layout of subjects and streams)."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RePublish,
    StreamConfig,
    StreamInfo,
)

from ..types import Publication
from .base import EngineOutcomeUnknown, EngineUnavailable

__all__ = [
    "EXPECTED_LAST",
    "MAX_ATTEMPTS",
    "MSG_ID",
    "NAME_IN_USE",
    "NO_STREAM",
    "WRONG_LAST",
    "NatsLink",
    "decode_token",
    "dumps",
    "encode_token",
    "errors",
    "msg_id",
    "pub_dict",
    "pub_from",
    "same_config",
]

_SAFE = frozenset(chr(c) for c in range(0x21, 0x7F)) - set(".*>%")
EXPECTED_LAST = "Nats-Expected-Last-Subject-Sequence"
MSG_ID = "Nats-Msg-Id"
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
WRONG_LAST = 10071  # JetStream error codes
NAME_IN_USE = 10058
NO_STREAM = 10059
_SUBJECTS_OVERLAP = 10065  # "subjects overlap with an existing stream": also a racing create
_JS_NOT_READY = 10008  # "JetStream system temporarily unavailable" (e.g. no meta leader yet)
MAX_ATTEMPTS = 64
_CREATE_TIMEOUTS = 4  # stream creation and its leader: given up after this many timeouts
_DURATIONS = frozenset({"max_age", "duplicate_window"})  # nanoseconds in as_dict()
_CONSUME_POLL = 0.25  # a consumer's next message not there in this time: is one still due?


def encode_token(name: str) -> str:
    """Escape ``name`` into one subject token: ``%XX`` (UTF-8) for ``.*>%``, spaces, etc."""
    if not name:
        return "%"
    return "".join(ch if ch in _SAFE else "".join(f"%{b:02X}" for b in ch.encode()) for ch in name)


def decode_token(token: str) -> str:
    """Inverse of :func:`encode_token`."""
    return "" if token == "%" else urllib.parse.unquote(token, errors="strict")


def dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def msg_id(channel: str, key: str) -> str:
    """A header-safe message id for ``key`` in ``channel`` (dedup is per stream, and a
    history stream holds many channels)."""
    return hashlib.sha256(channel.encode() + b"\0" + key.encode()).hexdigest()


def pub_dict(pub: Publication) -> dict[str, Any]:
    """A publication as JSON-ready dict (bytes data as base64)."""
    d = pub.to_dict()
    if isinstance(pub.data, (bytes, bytearray)):
        d["data"], d["b64"] = base64.b64encode(pub.data).decode(), True
    return d


def pub_from(d: dict[str, Any]) -> Publication:
    """Inverse of :func:`pub_dict`."""
    pub = Publication.from_dict(d)
    if d.get("b64"):
        pub = replace(pub, data=base64.b64decode(pub.data))
    return pub


def same_config(want: StreamConfig, have: StreamConfig) -> bool:
    """Whether the stream configuration ``have`` (as the server reports it, defaults filled
    in) has every field ``want`` sets. Durations come back as float seconds from
    nanoseconds: compared to the microsecond."""
    have_dict = have.as_dict()
    for key, value in want.as_dict().items():
        other = have_dict.get(key)
        if isinstance(value, int) and isinstance(other, int) and key in _DURATIONS:
            if abs(value - other) > 1000:
                return False
        elif other != value:
            return False
    return True


@contextlib.contextmanager
def errors() -> Iterator[None]:
    """Turn NATS and connection failures into :class:`EngineUnavailable`."""
    try:
        yield
    except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
        raise EngineUnavailable(f"NATS: {exc!r}") from exc


class NatsLink:
    """The engine's connection (``nc``/``js``, set by the engine while connected) and its
    settings, as the history and presence parts use them."""

    def __init__(self, prefix: str, *, timeout: float, storage: Any, replicas: int) -> None:
        self.prefix = prefix
        self.timeout = timeout
        self.storage = storage
        self.replicas = replicas
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self._keyed_windows: dict[str, float] = {}  # {prefix}_I and _K: window configured

    def conn(self) -> tuple[Client, JetStreamContext]:
        """The connection; :class:`EngineUnavailable` when not connected."""
        nc, js = self.nc, self.js
        if nc is None or js is None or not nc.is_connected:
            raise EngineUnavailable("NATS is not connected")
        return nc, js

    async def send(self, subject: str, envelope: dict[str, Any]) -> None:
        """A core NATS publish of ``envelope`` (at most once)."""
        nc, _ = self.conn()
        with errors():
            await nc.publish(subject, dumps(envelope))

    async def store(
        self, js: JetStreamContext, subject: str, payload: bytes, headers: dict[str, str]
    ) -> Any:
        """``js.publish``, raising :class:`EngineOutcomeUnknown` when the request was sent and
        no answer came (it may have been stored: only a retry with the same message id, i.e.
        the same idempotency key, is safe)."""
        try:
            return await js.publish(subject, payload, self.timeout, headers=headers)
        except _NOT_SENT:
            raise
        except (nats.errors.Error, OSError, asyncio.TimeoutError) as exc:
            raise EngineOutcomeUnknown(f"NATS: sent, no answer: {exc!r}") from exc

    async def keyed_stream(self, kind: str, window: float, force: bool = False) -> None:
        """Create, or reconfigure for a new window, ``{prefix}_I`` (keyed publications without
        history, republished to the fan-out subjects) or ``{prefix}_K`` (notes of first
        positions). One message per subject, kept and deduplicated for the window."""
        name = f"{self.prefix}_{kind}"
        if self._keyed_windows.get(name) == window and not force:
            return
        _, js = self.conn()
        subjects = f"{self.prefix}.{kind.lower()}.>"
        config = StreamConfig(
            name=name,
            subjects=[subjects],
            max_msgs_per_subject=1,  # the dedup memory outlives the messages: keep one
            max_age=window,
            duplicate_window=window,
            storage=self.storage,
            num_replicas=self.replicas,
            discard=DiscardPolicy.OLD,
            republish=RePublish(src=subjects, dest=f"{self.prefix}.c.>") if kind == "I" else None,
        )
        if await self.create_stream(config) is None:
            await js.update_stream(config)
        self._keyed_windows[name] = window

    async def create_stream(self, config: StreamConfig) -> StreamInfo | None:
        """Create the stream ``config`` describes (a no-op if it exists so configured) and
        wait until it has a leader; None when it exists with another configuration (the
        caller updates it, or keeps it).

        On a cluster, several nodes may create the same stream at once and the meta leader
        may be busy or being elected: "name in use" for a stream configured the same is
        success, and timeouts or "JetStream not ready" are retried for a few timeouts.
        Without waiting for the stream's own leader the first publish could find no one to
        store it (a new replicated stream elects its leader after its creation is
        answered)."""
        _, js = self.conn()
        deadline = time.monotonic() + _CREATE_TIMEOUTS * self.timeout
        pause = 0.05
        while True:
            try:
                info = await js.add_stream(config)
                break
            except nats.js.errors.APIError as exc:
                if exc.err_code in (NAME_IN_USE, _SUBJECTS_OVERLAP):
                    # Another node created it, or is creating it at this moment (nats-server
                    # 2.9 may answer a racing create "subjects overlap"; CI saw it): success
                    # once it exists under this name; overlap with another stream raises.
                    try:
                        info = await js.stream_info(config.name or "")
                    except nats.js.errors.NotFoundError:
                        if time.monotonic() > deadline:
                            raise exc from None
                    else:
                        if not same_config(config, info.config):
                            return None
                        break
                elif exc.err_code != _JS_NOT_READY or time.monotonic() > deadline:
                    raise
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if time.monotonic() > deadline:
                    raise
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.5)
        if (config.num_replicas or 1) > 1:  # only a cluster takes them: a leader is elected
            await self.wait_leader(config.name or "", info, deadline)
        return info

    async def wait_leader(self, name: str, info: StreamInfo, deadline: float) -> None:
        """Poll the replicated stream's info until it names a leader (EngineUnavailable at
        ``deadline``). A creation's answer may come before the election, without one."""
        _, js = self.conn()
        pause = 0.02
        while info.cluster is None or not info.cluster.leader:
            if time.monotonic() > deadline:
                raise EngineUnavailable(f"NATS stream {name} has no leader")
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.25)
            with contextlib.suppress(nats.errors.TimeoutError):
                info = await js.stream_info(name)

    async def last_seq(self, stream: str, subject: str) -> int:
        """The stream sequence of the newest message on ``subject`` (wildcards allowed), 0 if
        none; asked of the stream's leader, so it counts every acknowledged write."""
        _, js = self.conn()
        try:
            return (await js.get_last_msg(stream, subject)).seq or 0
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == NO_STREAM:
                raise
            return 0

    async def consume(self, stream: str, config: ConsumerConfig, stop: int = 0) -> list[Msg]:
        """Messages of an ephemeral push consumer, up to stream sequence ``stop`` if set.

        On a cluster the consumer may sit on a replica that has not stored the newest writes
        yet (they are acknowledged once a majority has them): with ``stop`` (a sequence read
        from the leader) it waits, within the timeout, until that replica delivers a message
        at or after ``stop``, so a read after an acknowledged write sees it."""
        nc, js = self.conn()
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
            reached = not stop
            deadline = time.monotonic() + self.timeout
            while pending or not reached:
                try:
                    msg = await sub.next_msg(timeout=min(self.timeout, _CONSUME_POLL))
                except nats.errors.TimeoutError:
                    # A message counted as pending may have been removed since (purged, or
                    # replaced by a presence tombstone): ask the server what is left. The
                    # message at ``stop`` may have been purged too: past the deadline with
                    # nothing pending, what came is the answer.
                    info = await js.consumer_info(stream, info.name)
                    pending = info.num_pending or 0
                    if time.monotonic() > deadline:
                        if pending:
                            raise
                        break
                    continue
                deadline = time.monotonic() + self.timeout
                msgs.append(msg)
                pending = msg.metadata.num_pending
                if stop and msg.metadata.sequence.stream >= stop:
                    if config.deliver_policy != DeliverPolicy.LAST_PER_SUBJECT:
                        break  # everything up to ``stop`` is here
                    reached = True  # the newest is here; the others in pending
            return msgs
        finally:
            with contextlib.suppress(nats.errors.Error):
                await sub.unsubscribe()
