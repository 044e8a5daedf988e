"""The NATS engine URL: one server or a cluster's, the replica count, and one-line errors."""

from __future__ import annotations

import pytest

from pulsewire.hub.engines import create_engine
from pulsewire.hub.engines.nats_url import NatsTarget, parse_nats_url


@pytest.mark.parametrize(
    ("spec", "servers", "replicas"),
    [
        ("nats://127.0.0.1:4222", ("nats://127.0.0.1:4222",), 1),
        ("nats://localhost", ("nats://localhost:4222",), 1),
        ("tls://nats.example:4443", ("tls://nats.example:4443",), 1),
        (
            "nats://h1:4301,h2:4302,h3:4303?replicas=3",
            ("nats://h1:4301", "nats://h2:4302", "nats://h3:4303"),
            3,
        ),
        ("nats://h1:1, nats://h2:2 ,h3", ("nats://h1:1", "nats://h2:2", "nats://h3:4222"), 1),
        ("nats://u:p@h1:1,h2:2?replicas=5", ("nats://u:p@h1:1", "nats://h2:2"), 5),
        ("tls://h1:1,nats://h2:2?replicas=1", ("tls://h1:1", "nats://h2:2"), 1),
        ("nats://[::1]:4222,[::1]:4223", ("nats://[::1]:4222", "nats://[::1]:4223"), 1),
        ("NATS://h1:1", ("nats://h1:1",), 1),
    ],
)
def test_urls(spec: str, servers: tuple[str, ...], replicas: int) -> None:
    assert parse_nats_url(spec) == NatsTarget(servers, replicas)


@pytest.mark.parametrize(
    ("spec", "problem"),
    [
        ("nats://h1:1?replicas=0", "replicas must be 1 to 5, got 0"),
        ("nats://h1:1?replicas=6", "replicas must be 1 to 5, got 6"),
        ("nats://h1:1?replicas=three", "replicas must be 1 to 5, got 'three'"),
        ("nats://h1:1?replicas=", "replicas must be 1 to 5, got ''"),
        ("nats://h1:1?replicas=3&replicas=3", "option 'replicas' given twice"),
        ("nats://h1:1?replica=3", "unknown option 'replica' (known: replicas)"),
        ("nats://h1:1?replicas", "cannot read the options 'replicas'"),
        ("nats://h1:1,,h2:2", "a server is missing"),
        ("nats://h1:1,", "a server is missing"),
        ("nats://", "a server is missing"),
        ("nats://h1:99999", "bad port in 'h1:99999'"),
        ("nats://h1:port", "bad port"),
        ("nats://:4222", "no host in ':4222'"),
        ("nats://h1:1/path", "unexpected 'h1:1/path'"),
        ("nats://h1:1,redis://h2:2", "server scheme 'redis' is not nats or tls"),
        ("http://h1:1", "must start with nats:// or tls://"),
        ("nats://user:secret@h1:port", "bad port in 'h1:port'"),
    ],
)
def test_bad_urls_name_the_problem(spec: str, problem: str) -> None:
    with pytest.raises(ValueError, match=r"^NATS engine URL: ") as info:
        parse_nats_url(spec)
    message = str(info.value)
    assert problem in message and "\n" not in message
    assert "secret" not in message


def test_the_engine_takes_the_servers_and_replicas() -> None:
    pytest.importorskip("nats", reason="the nats extra is not installed")
    from pulsewire.hub.engines.nats import NatsEngine

    engine = create_engine("nats://h1:1,h2:2,h3:3?replicas=3", prefix="p")
    assert isinstance(engine, NatsEngine)
    assert engine.servers == ["nats://h1:1", "nats://h2:2", "nats://h3:3"]
    assert engine.replicas == 3
    plain = create_engine("nats://127.0.0.1:4222")
    assert isinstance(plain, NatsEngine)
    assert (plain.servers, plain.replicas) == (["nats://127.0.0.1:4222"], 1)
    assert NatsEngine("nats://h1:1?replicas=3", replicas=1).replicas == 1  # the argument wins
    with pytest.raises(ValueError, match=r"^replicas must be 1 to 5, got 9$"):
        NatsEngine("nats://h1:1", replicas=9)
    with pytest.raises(ValueError, match=r"^NATS engine URL: a server is missing"):
        create_engine("nats://h1:1,,h2")


def test_redact_drops_the_password() -> None:
    from pulsewire.hub.engines.nats_url import redact

    assert redact("nats://u:secret@h1:4222") == "nats://h1:4222"
    assert redact("tls://h1:4222") == "tls://h1:4222"
