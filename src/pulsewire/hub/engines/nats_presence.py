"""Presence of the NATS engine: one JetStream stream, one subject per client.

The stream ``{prefix}_P``, subject ``{prefix}.p.T.C`` per client ``C`` (last message kept),
value = ClientInfo, ttl and owning instance. An entry counts while its server timestamp + ttl
lies ahead, so entries of a dead node expire without it; ``max_age`` is the largest ttl seen.
Every write is a compare-and-set on the subject's last sequence (the part remembers the
sequence of its own last write): a dead-node cleanup replaces an entry by a *tombstone* only
if the entry is still the one it read, so of several survivors exactly one succeeds and
publishes the leave; the owner's own refresh or removal then fails its compare-and-set too
and finds the tombstone. ``{prefix}.p.!n.N.T`` records that instance ``N`` has presence in
``T``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.js.errors
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy, DiscardPolicy, StreamConfig

from ..types import ClientInfo
from .base import EngineUnavailable, IndexedChannels, PresenceAdd
from .nats_link import (
    EXPECTED_LAST,
    MAX_ATTEMPTS,
    NO_STREAM,
    WRONG_LAST,
    NatsLink,
    decode_token,
    dumps,
    encode_token,
    errors,
)

__all__ = ["NatsPresence"]

log = logging.getLogger(__name__)


class NatsPresence:
    """Presence entries, tombstones and the node index of one engine; ``publish_leave``
    sends the leaves of :meth:`remove_node_presence`."""

    def __init__(
        self, link: NatsLink, publish_leave: Callable[[str, ClientInfo], Awaitable[None]]
    ) -> None:
        self._link = link
        self._publish_leave = publish_leave
        self._presence_age = 0.0  # max_age of the presence stream, as far as we know
        # Stream sequence of this node's last write of each of its own presence entries (the
        # expected last sequence of its next write); one per local presence subscription.
        self._presence_seqs: dict[str, int] = {}
        self._indexed = IndexedChannels()

    def _presence_subject(self, channel: str, client: str | None = None) -> str:
        token = "*" if client is None else encode_token(client)
        return f"{self._link.prefix}.p.{encode_token(channel)}.{token}"

    async def _presence_stream(self, ttl: float) -> None:
        if ttl <= self._presence_age:
            return
        _, js = self._link.conn()
        config = StreamConfig(
            name=f"{self._link.prefix}_P",
            subjects=[f"{self._link.prefix}.p.>"],
            max_msgs_per_subject=1,
            max_age=max(ttl, self._presence_age),
            storage=self._link.storage,
            num_replicas=self._link.replicas,
            discard=DiscardPolicy.OLD,
        )
        info = await self._link.create_stream(config)
        if info is None:  # another max_age (or made by another version)
            info = await js.stream_info(config.name or "")
            if (info.config.max_age or 0) < ttl:  # grow only
                info = await js.update_stream(info.config.evolve(max_age=ttl))
        self._presence_age = info.config.max_age or ttl

    async def _publish_presence(self, subject: str, record: dict[str, Any], expected: int) -> int:
        """Append ``record`` if the subject's last sequence is ``expected`` (0: none);
        returns the new sequence. Raises APIError ``WRONG_LAST`` otherwise."""
        _, js = self._link.conn()
        headers = {EXPECTED_LAST: str(expected)}
        payload = dumps(record)
        try:
            ack = await js.publish(subject, payload, headers=headers)
        except nats.js.errors.NoStreamResponseError:  # deleted meanwhile: recreate
            self._presence_age = 0.0
            await self._presence_stream(float(record["ttl"]))
            ack = await js.publish(subject, payload, headers=headers)
        return int(ack.seq)

    async def _last_presence(self, subject: str) -> tuple[int, dict[str, Any], float] | None:
        """(sequence, record, server timestamp) of the subject's last message, if any."""
        _, js = self._link.conn()
        try:
            raw = await js.get_last_msg(f"{self._link.prefix}_P", subject)
        except nats.js.errors.NotFoundError:
            return None
        stamp = raw.time.timestamp() if raw.time else 0.0
        return raw.seq or 0, json.loads(raw.data or b"{}"), stamp

    async def _purge_presence(self, subject: str, upto: int) -> int:
        """Purge the subject's messages with a sequence up to ``upto``; how many."""
        nc, _ = self._link.conn()
        request = dumps({"filter": subject, "seq": upto + 1})
        reply = await nc.request(
            f"$JS.API.STREAM.PURGE.{self._link.prefix}_P", request, timeout=self._link.timeout
        )
        answer = json.loads(reply.data)
        error = answer.get("error")
        if error:
            if error.get("err_code") == NO_STREAM:
                return 0
            raise EngineUnavailable(f"NATS purge of {subject}: {error}")
        return int(answer.get("purged", 0))

    async def add_presence(
        self, channel: str, info: ClientInfo, ttl: float, node: str = ""
    ) -> PresenceAdd:
        self._link.conn()
        subject = self._presence_subject(channel, info.client)
        record: dict[str, Any] = {"i": info.to_dict(), "ttl": ttl}
        if node:
            record["n"] = node
        with errors():
            await self._presence_stream(ttl)
            known = self._presence_seqs.get(subject)
            expected = known or 0
            outcome = PresenceAdd.REFRESHED if known else PresenceAdd.CREATED
            for _attempt in range(MAX_ATTEMPTS):
                try:
                    seq = await self._publish_presence(subject, record, expected)
                except nats.js.errors.APIError as exc:
                    if exc.err_code != WRONG_LAST:
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
                with errors():
                    index = dumps({"ttl": IndexedChannels.INDEX_TTL_FACTOR * ttl})
                    await self._presence_stream(IndexedChannels.INDEX_TTL_FACTOR * ttl)
                    _, js = self._link.conn()
                    await js.publish(self.index_subject(node, channel), index)
            except EngineUnavailable as exc:
                log.debug("NATS engine: presence index of %s not written: %r", node, exc)
            else:
                self._indexed.written(node, channel, ttl)
        return outcome

    async def remove_presence(self, channel: str, client_id: str) -> bool:
        self._link.conn()
        subject = self._presence_subject(channel, client_id)
        known = self._presence_seqs.pop(subject, None)
        with errors():
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
        self._link.conn()
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
                if exc.err_code != WRONG_LAST:
                    raise
                return
            info = ClientInfo.from_dict(record["i"])
            removed.append(info)
            if leave:
                await self._publish_leave(channel, info)

        with errors():
            await self._presence_stream(ttl)
            try:
                msgs = await self._newest(config)
            except nats.js.errors.NotFoundError:
                return []
            for start in range(0, len(msgs), 64):
                await asyncio.gather(*(tombstone(msg) for msg in msgs[start : start + 64]))
        return removed

    async def _newest(self, config: ConsumerConfig) -> list[Msg]:
        """The last message of each subject matching ``config``'s filter, as of now: up to
        the newest one the stream's leader has (a consumer on a lagging replica waits for
        it), none without asking for a consumer when there is nothing."""
        stream = f"{self._link.prefix}_P"
        stop = await self._link.last_seq(stream, config.filter_subject or ">")
        if not stop:
            return []
        return await self._link.consume(stream, config, stop=stop)

    def index_subject(self, node: str, channel: str | None = None) -> str:
        token = "*" if channel is None else encode_token(channel)
        return f"{self._link.prefix}.p.!n.{encode_token(node)}.{token}"

    async def node_presence_channels(self, node: str) -> list[str]:
        self._link.conn()
        config = ConsumerConfig(
            filter_subject=self.index_subject(node),
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        with errors():
            try:
                msgs = await self._newest(config)
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
        self._link.conn()
        config = ConsumerConfig(
            filter_subject=self._presence_subject(channel),
            deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
        )
        with errors():
            try:
                msgs = await self._newest(config)
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
