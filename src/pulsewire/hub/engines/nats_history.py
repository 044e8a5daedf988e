"""History of the NATS engine: per channel a chain of records in a JetStream stream.

One stream per history size and retention ``age = max(history_ttl, history_meta_ttl)``
(``{prefix}_H_{size}_{age_ms}``, subjects ``{prefix}.h.{size}_{age_ms}.T``,
``max_msgs_per_subject = size``). Each record carries the channel's own offset and epoch and
the stream sequence of the record before it (``ps``); an append is a compare-and-set on the
subject's last sequence (``Nats-Expected-Last-Subject-Sequence``, retried on conflict), so
the chain cannot fork, and the stream republishes every record to the fan-out subject. The
last record of a channel (its *tip*) is cached from appends and from the fan-out as a hint.
Keyed publications carry a ``Nats-Msg-Id``: a duplicate ack names the first record.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
import secrets
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    RawStreamMsg,
    RePublish,
    StreamConfig,
)

from ..types import HistoryResult, Publication, PublishOptions, StreamPosition
from .base import EngineUnavailable, PublishOnce
from .nats_link import (
    EXPECTED_LAST,
    MAX_ATTEMPTS,
    MSG_ID,
    NO_STREAM,
    WRONG_LAST,
    NatsLink,
    dumps,
    encode_token,
    errors,
    pub_dict,
    pub_from,
)

__all__ = ["NatsHistory"]

log = logging.getLogger(__name__)

_WALK_MAX = 3  # up to this many older messages are fetched one by one, beyond by a consumer
_TIPS_MAX = 10_000


class _Duplicate(Exception):
    """A JetStream append was answered as a duplicate of the message at ``seq``."""

    def __init__(self, seq: int) -> None:
        super().__init__(seq)
        self.seq = seq


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


class NatsHistory:
    """The history streams of one engine: appends, reads, removal and keyed appends."""

    def __init__(self, link: NatsLink) -> None:
        self._link = link
        self._streams: dict[tuple[int, int], _Stream] = {}
        self._tips: OrderedDict[str, _Tip] = OrderedDict()  # by channel: hints for appends
        self._contended: dict[str, float] = {}  # channel -> time.monotonic() of a lost race
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        #: The idempotency window the streams are configured with: the last one a keyed
        #: publish was given (history reads create streams too).
        self.window = 300.0

    def forget_tips(self) -> None:
        """The connection was lost: the cached tips may be stale."""
        self._tips.clear()

    def note(self, channel: str, subject: str, seq: int, record: dict[str, Any]) -> None:
        """A record of ``channel`` seen on the fan-out (republished from stream subject
        ``subject`` at ``seq``): a hint for the next append."""
        self._set_tip(channel, _tip(subject, seq, time.time(), record))

    def _lock(self, channel: str) -> asyncio.Lock:
        """One history append at a time per channel on this node (gone once unused)."""
        lock = self._locks.get(channel)
        if lock is None:
            lock = self._locks[channel] = asyncio.Lock()
        return lock

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> StreamPosition:
        """Append ``publication`` with the next offset; its position."""
        async with self._lock(channel):
            with errors():
                tip = await self._append(channel, options, _record(publication), use_hint=True)
        assert tip is not None
        return StreamPosition(tip.offset, tip.epoch)

    async def publish_once(
        self, channel: str, publication: Publication, options: PublishOptions, msg_id: str
    ) -> PublishOnce:
        """Append ``publication`` unless message id ``msg_id`` was appended within the
        window (:attr:`window`); the first position for a duplicate."""
        build = _record(publication)
        async with self._lock(channel):
            with errors():
                await self._link.keyed_stream(
                    "K", self.window
                )  # before: a failure publishes nothing
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
        nc = self._link.nc
        if nc is not None and nc.is_connected and position.epoch:
            with contextlib.suppress(nats.errors.Error, OSError):
                note = f"{position.offset},{position.epoch}".encode()
                await nc.publish(f"{self._link.prefix}.k.{msg_id}", note)

    async def _first(self, stream: _Stream, subject: str, seq: int, msg_id: str) -> StreamPosition:
        """The position of the record at ``seq``: the first publication with the key.

        Read from the record itself; once it is trimmed (``history_size``), from the note of
        :meth:`_remember`; without a note (the first publisher never got its ack), from the
        subject's next record if it chains back to it (``ps == seq``: one offset more, or a
        removal marker with its offset). Otherwise the position is not known any more:
        ``(0, "")``, still a duplicate (nothing was published)."""
        _, js = self._link.conn()
        with contextlib.suppress(nats.js.errors.NotFoundError):
            raw = await js.get_msg(stream.name, seq=seq)
            if raw.subject == subject:
                record = json.loads(raw.data or b"{}")
                if record.get("t") == "p":
                    d = record["d"]
                    position = StreamPosition(int(d["offset"]), str(d["epoch"]))
                    return await self._found(msg_id, position)
        with contextlib.suppress(nats.js.errors.NotFoundError):
            raw = await js.get_last_msg(f"{self._link.prefix}_K", f"{self._link.prefix}.k.{msg_id}")
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

    async def _stream(self, options: PublishOptions, force: bool = False) -> _Stream:
        """The history stream for ``options``, created when missing (or when ``force``)."""
        size = options.history_size
        age_ms = max(1, round(max(options.history_ttl, options.history_meta_ttl) * 1000))
        # Dedup must not outlive the messages (JetStream refuses a longer duplicate_window).
        window = min(self.window, age_ms / 1000)
        stream = self._streams.get((size, age_ms))
        if stream is not None and not force and stream.window == window:
            return stream
        _, js = self._link.conn()
        name, subject = (
            f"{self._link.prefix}_H_{size}_{age_ms}",
            f"{self._link.prefix}.h.{size}_{age_ms}",
        )
        config = StreamConfig(
            name=name,
            subjects=[f"{subject}.>"],
            max_msgs_per_subject=size,
            max_age=age_ms / 1000,
            storage=self._link.storage,
            num_replicas=self._link.replicas,
            discard=DiscardPolicy.OLD,
            duplicate_window=window,
            republish=RePublish(src=f"{subject}.>", dest=f"{self._link.prefix}.c.>"),
        )
        if await self._link.create_stream(config) is None:  # a no-op when so configured
            try:  # e.g. made by another version: republish and limits can be updated
                await js.update_stream(config)
            except nats.js.errors.APIError:
                log.warning("NATS stream %s exists with another configuration", name)
        stream = self._streams[(size, age_ms)] = _Stream(name, subject, age_ms / 1000, window)
        return stream

    async def _read_tip(self, stream: _Stream, subject: str) -> _Tip | None:
        """The subject's last record, if any."""
        _, js = self._link.conn()
        try:
            raw = await js.get_last_msg(stream.name, subject)
        except nats.js.errors.NotFoundError as exc:
            if exc.err_code == NO_STREAM:
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
        _, js = self._link.conn()
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
        for attempt in range(MAX_ATTEMPTS):
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
                headers = {EXPECTED_LAST: str(record["ps"])}
                if msg_id is not None:
                    headers[MSG_ID] = msg_id
                sent = time.monotonic()
                ack = await self._link.store(js, subject, dumps(record), headers)
            except (nats.js.errors.NoStreamResponseError, nats.js.errors.NotFoundError):
                stream, known = await self._stream(options, force=True), False  # recreate
                continue
            except nats.js.errors.APIError as exc:
                if exc.err_code != WRONG_LAST:
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
        _, js = self._link.conn()
        with errors():
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
                msgs = await self._link.consume(_stream_name(tip), config, stop=tip.seq)
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
            pubs.append(pub_from(item.record["d"]))
            newer = item
        if not reverse:
            pubs.reverse()
        if limit is not None and limit >= 0:
            pubs = pubs[:limit]
        return HistoryResult(pubs, position)

    async def remove_history(self, channel: str) -> None:
        nc, js = self._link.conn()
        token = encode_token(channel)
        with errors():
            reply = await nc.request(
                "$JS.API.STREAM.NAMES",
                dumps({"subject": f"{self._link.prefix}.h.*.{token}"}),
                timeout=self._link.timeout,
            )
            for name in json.loads(reply.data).get("streams") or []:
                match = re.fullmatch(rf"{re.escape(self._link.prefix)}_H_(\d+)_(\d+)", name)
                if match is None:
                    continue
                age = int(match.group(2)) / 1000
                options = PublishOptions(int(match.group(1)), age, age)
                async with self._lock(channel):
                    tip = await self._append(channel, options, _removal_marker)
                    if tip is not None and tip.marker:
                        await js.purge_stream(name, seq=tip.seq, subject=tip.subject)


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
        return {"t": "p", "d": pub_dict(stored)}

    return build


def _start_marker(tip: _Tip | None) -> dict[str, Any] | None:
    """Nothing to write for a live channel; an empty start (offset 0, new epoch) otherwise."""
    return None if tip is not None else {"t": "x", "o": 0, "e": secrets.token_hex(6)}


def _removal_marker(tip: _Tip | None) -> dict[str, Any] | None:
    if tip is None or tip.marker:
        return None  # empty or removed already
    return {"t": "x", "o": tip.offset, "e": tip.epoch}
