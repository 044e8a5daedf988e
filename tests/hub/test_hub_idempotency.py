"""Idempotent publish through the hub (in-process ``Hub.publish``, the HTTP API, the client
``publish`` command) on the in-memory engine, and what each engine failure is answered with:
108/503 "not published", 114/504 "unknown outcome: retry with the same key", 106/429 "too
many keys". Engines that fail on demand stand in for a broken Redis or NATS.

The client command and ``Hub.publish`` are tested one layer down (a hub, fake transports);
the tests through the HTTP API stay end to end (a HubServer on a socket): what they check
is the API's answer (status code, result shape, error mapping 503/504/429/400)."""

from __future__ import annotations

from typing import Any

import pytest

from pulsewire.hub import HubConfig
from pulsewire.hub.config import config_from_dict
from pulsewire.hub.engines.base import EngineOutcomeUnknown, EngineUnavailable, PublishOnce
from pulsewire.hub.engines.memory import MemoryEngine
from pulsewire.hub.errors import ErrorCode, HubError
from pulsewire.hub.types import Publication, PublishOptions, StreamPosition

from .test_cluster import publication_data


def sample(server: Any, name: str) -> float:
    value = server.hub.metrics.registry.get_sample_value(name)
    return 0.0 if value is None else float(value)


# -------------------------------------------------------------------------- the happy path


async def test_api_retries_with_a_key_publish_once(hub_server, hub_client, api, uniq):
    server = await hub_server()
    hist, live = uniq("hist"), uniq("pub")
    client = await hub_client(server, "ann")
    epoch = (await client.subscribe(hist))["epoch"]
    await client.subscribe(live)

    first = await api(server, "publish", {"channel": hist, "data": 1, "idempotency_key": "a"})
    assert first == (200, {"result": {"offset": 1, "epoch": epoch}})
    await api(server, "publish", {"channel": hist, "data": 2})
    for data in (1, "other data"):  # a retry returns the first result, whatever its data
        again = await api(
            server, "publish", {"channel": hist, "data": data, "idempotency_key": "a"}
        )
        assert again == first
    assert await api(server, "publish", {"channel": live, "data": "x", "idempotency_key": "a"}) == (
        200,
        {"result": {}},
    )
    assert await api(server, "publish", {"channel": live, "data": "y", "idempotency_key": "a"}) == (
        200,
        {"result": {}},
    )
    await api(server, "publish", {"channel": hist, "data": "end"})
    await api(server, "publish", {"channel": live, "data": "end"})
    await client.publications(hist, 3)
    await client.publications(live, 2)
    await client.sync()
    assert publication_data(client, hist) == [1, 2, "end"]
    assert publication_data(client, live) == ["x", "end"]
    history = await server.hub.history(hist)
    assert [p.data for p in history.publications] == [1, 2, "end"]
    assert sample(server, "pulsewire_publish_duplicates_total") == 3


async def test_broadcast_applies_the_key_per_channel(hub_server, api, uniq):
    server = await hub_server()
    one, two, three = uniq("hist"), uniq("hist"), uniq("pub")
    await api(server, "publish", {"channel": two, "data": "before"})
    params = {"channels": [one, two, three], "data": "b", "idempotency_key": "k"}
    status, first = await api(server, "broadcast", params)
    assert status == 200
    responses = first["result"]["responses"]
    assert [r["result"].get("offset") for r in responses] == [1, 2, None]
    # the same key published to one channel alone first: the broadcast skips it there only
    four = uniq("hist")
    await api(server, "publish", {"channel": four, "data": "alone", "idempotency_key": "k"})
    status, retried = await api(server, "broadcast", {**params, "channels": [one, two, four]})
    assert status == 200
    alone = await server.hub.history(four)
    expected = {"result": {"offset": 1, "epoch": alone.position.epoch}}
    assert retried["result"]["responses"] == [*responses[:2], expected]
    assert [p.data for p in (await server.hub.history(four)).publications] == ["alone"]
    assert [p.data for p in (await server.hub.history(two)).publications] == ["before", "b"]
    assert (await api(server, "broadcast", params))[1] == first


async def test_client_publish_retry_with_the_key(local_hub, local_client, uniq):
    hub = await local_hub()
    channel = uniq("chat")
    writer, reader = await local_client(hub, "wes"), await local_client(hub, "rae")
    for client in (writer, reader):
        await client.subscribe(channel)
    params = {"channel": channel, "data": "hello", "idempotency_key": "msg-1"}
    first = await writer.ok("publish", params)
    assert first["offset"] == 1
    # the client reconnects (a new session) and retries the publish it got no answer for
    await writer.close()
    again = await local_client(hub, "wes")
    await again.subscribe(channel)
    assert await again.ok("publish", params) == first
    await again.ok("publish", {"channel": channel, "data": "end"})
    await reader.publications(channel, 2)
    await reader.sync()
    assert publication_data(reader, channel) == ["hello", "end"]


@pytest.mark.parametrize("key", ["", "k" * 257, 17, ["k"], {"k": 1}, True])
async def test_bad_keys_are_refused(hub_server, hub_client, api, uniq, key):
    server = await hub_server()
    channel = uniq("chat")
    status, body = await api(
        server, "publish", {"channel": channel, "data": 1, "idempotency_key": key}
    )
    assert status == 400 and body["error"]["code"] == 107
    assert "idempotency_key" in body["error"]["message"]
    params = {"channels": [channel], "data": 1, "idempotency_key": key}
    status, body = await api(server, "broadcast", params)
    assert status == 400 and body["error"]["code"] == 107
    client = await hub_client(server, "kim")
    await client.subscribe(channel)
    error = await client.fail("publish", {"channel": channel, "data": 1, "idempotency_key": key})
    assert error["code"] == 107
    assert (await server.hub.history(channel)).publications == []


async def test_the_longest_key_and_null(hub_server, api, uniq):
    server = await hub_server()
    channel = uniq("hist")
    longest = "é" * 256
    for _ in range(2):
        params = {"channel": channel, "data": 1, "idempotency_key": longest}
        assert (await api(server, "publish", params))[1]["result"]["offset"] == 1
    for _ in range(2):  # null: no key
        await api(server, "publish", {"channel": channel, "data": 2, "idempotency_key": None})
    assert (await server.hub.history(channel)).position.offset == 3


async def test_in_process_publish_and_the_window(local_hub, uniq):
    hub = await local_hub()
    channel = uniq("hist")
    first = await hub.publish(channel, "a", idempotency_key="k")
    assert await hub.publish(channel, "b", idempotency_key="k") == first
    other = uniq("hist")  # the same key in another channel: a publication of its own
    position = await hub.publish(other, "c", idempotency_key="k")
    assert position is not None and position.offset == 1
    assert [p.data for p in (await hub.history(channel)).publications] == ["a"]
    assert [p.data for p in (await hub.history(other)).publications] == ["c"]
    with pytest.raises(HubError) as info:
        await hub.publish(channel, "d", idempotency_key="")
    assert info.value.code == ErrorCode.BAD_REQUEST


# -------------------------------------------------------------------------------- config


def test_window_setting() -> None:
    assert HubConfig().idempotency_window == 300.0
    assert config_from_dict({"idempotency_window": 30}).idempotency_window == 30
    for bad in (0, -1, float("nan"), float("inf"), 31 * 24 * 3600):
        with pytest.raises(ValueError, match="idempotency_window"):
            HubConfig(idempotency_window=bad)


async def test_the_window_comes_from_the_config(local_hub, hub_config, uniq):
    seen: list[float] = []

    class Spy(MemoryEngine):
        async def publish_once(self, *args: Any) -> PublishOnce:
            seen.append(args[-1])
            return await super().publish_once(*args)

    hub = await local_hub(hub_config(idempotency_window=12.5), engine=Spy())
    await hub.publish(uniq("pub"), 1, idempotency_key="k")
    await hub.broadcast([uniq("hist")], 1, idempotency_key="k")
    assert seen == [12.5, 12.5]


# ------------------------------------------------------------------ what failures answer


class Failing(MemoryEngine):
    """A memory engine whose publishes raise ``error`` once set; it acts as an engine that
    connects nodes whose service is down: unkeyed publications without history are still
    delivered to this node (as Redis and NATS do), then the send to the others fails."""

    error: Exception | None = None

    async def publish(
        self, channel: str, publication: Publication, options: PublishOptions
    ) -> StreamPosition | None:
        if self.error is not None:
            if not options.history:
                await super().publish(channel, publication, options)
            raise self.error
        return await super().publish(channel, publication, options)

    async def publish_once(self, *args: Any) -> PublishOnce:
        if self.error is not None:
            raise self.error
        return await super().publish_once(*args)


FAILURES = [
    (EngineUnavailable("down"), 503, ErrorCode.NOT_AVAILABLE, "not published"),
    (EngineOutcomeUnknown("no answer"), 504, ErrorCode.OUTCOME_UNKNOWN, "idempotency_key"),
]


@pytest.mark.parametrize(("error", "status", "code", "says"), FAILURES)
async def test_engine_failures_say_whether_it_was_published(
    hub_server, hub_client, api, uniq, error, status, code, says
):
    engine = Failing()
    server = await hub_server(engine=engine)
    hist, live = uniq("hist"), uniq("pub")
    client = await hub_client(server, "ann")
    await client.subscribe(live)
    engine.error = error
    unknown_before = sample(server, "pulsewire_publish_outcome_unknown_total")
    for params in (
        {"channel": hist, "data": 1},
        {"channel": hist, "data": 1, "idempotency_key": "k"},
        {"channel": live, "data": 1, "idempotency_key": "k"},
    ):
        got, body = await api(server, "publish", params)
        assert (got, body["error"]["code"]) == (status, code), params
        assert says in body["error"]["message"]
    status_b, body = await api(server, "broadcast", {"channels": [hist], "data": 1})
    assert status_b == 200 and body["result"]["responses"][0]["error"]["code"] == code
    chat = uniq("chat")
    await client.subscribe(chat)
    reply = await client.fail("publish", {"channel": chat, "data": 1, "idempotency_key": "k"})
    assert reply["code"] == code
    expected_unknown = 5 if code == ErrorCode.OUTCOME_UNKNOWN else 0
    after = sample(server, "pulsewire_publish_outcome_unknown_total")
    assert after - unknown_before == expected_unknown
    # without a key a publication without history is delivered here and the failure is only
    # counted; with a key nothing was delivered (the engine decides, and it failed)
    assert await api(server, "publish", {"channel": live, "data": "local"}) == (
        200,
        {"result": {}},
    )
    await client.publications(live, 1)
    await client.sync()
    assert publication_data(client, live) == ["local"]
    engine.error = None
    ok = await api(server, "publish", {"channel": hist, "data": 2, "idempotency_key": "k"})
    assert ok[0] == 200 and ok[1]["result"]["offset"] == 1


async def test_a_full_key_map_answers_429(hub_server, api, uniq):
    server = await hub_server(engine=MemoryEngine(max_idempotency_keys=2))
    channel = uniq("hist")
    for key in ("a", "b"):
        await api(server, "publish", {"channel": channel, "data": key, "idempotency_key": key})
    status, body = await api(
        server, "publish", {"channel": channel, "data": 3, "idempotency_key": "c"}
    )
    assert (status, body["error"]["code"]) == (429, ErrorCode.LIMIT_EXCEEDED)
    assert sample(server, "pulsewire_idempotency_keys_full_total") == 1
    status, body = await api(
        server, "publish", {"channel": channel, "data": 4, "idempotency_key": "a"}
    )
    assert status == 200 and body["result"]["offset"] == 1  # known keys still answered
    assert (await server.hub.history(channel)).position.offset == 2
