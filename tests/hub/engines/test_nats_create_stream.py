"""NatsLink.create_stream when another node creates the same stream at the same moment:
nats-server 2.9 may answer the loser "subjects overlap with an existing stream" (10065, seen
in CI) rather than "name in use"; once the stream exists under that name, so configured,
that is success. Overlap with another stream still raises. A fake JetStream context: only
the answers matter here."""

from __future__ import annotations

from typing import Any

import nats.js.errors
import pytest
from nats.js.api import StorageType, StreamConfig, StreamInfo, StreamState

from pulsewire.hub.engines.nats_link import NatsLink

OVERLAP = {
    "code": 400,
    "err_code": 10065,
    "description": "subjects overlap with an existing stream",
}


class FakeJetStream:
    def __init__(self, existing: StreamConfig | None, lookups_before_found: int = 0) -> None:
        self.existing = existing
        self.lookups_before_found = lookups_before_found
        self.lookups = 0

    async def add_stream(self, config: StreamConfig) -> StreamInfo:
        raise nats.js.errors.APIError.from_error(OVERLAP)

    async def stream_info(self, name: str) -> StreamInfo:
        self.lookups += 1
        if self.existing is None or self.lookups <= self.lookups_before_found:
            raise nats.js.errors.NotFoundError(code=404, err_code=10059)
        return StreamInfo(config=self.existing, state=StreamState(0, 0, 0, 0, 0))


class Connected:
    is_connected = True


def link(js: FakeJetStream) -> NatsLink:
    out = NatsLink("pw", timeout=0.05, storage=StorageType.MEMORY, replicas=1)
    out.nc, out.js = Connected(), js  # type: ignore[assignment]
    return out


CONFIG = StreamConfig(name="pw_I", subjects=["pw.i.>"], storage=StorageType.MEMORY)


async def test_a_racing_create_answered_overlap_is_success_once_the_stream_exists() -> None:
    js = FakeJetStream(CONFIG, lookups_before_found=2)  # not visible yet, then there
    info: Any = await link(js).create_stream(CONFIG)
    assert info is not None and info.config.name == "pw_I"
    assert js.lookups == 3


async def test_overlap_with_another_stream_raises() -> None:
    with pytest.raises(nats.js.errors.BadRequestError):
        await link(FakeJetStream(None)).create_stream(CONFIG)
