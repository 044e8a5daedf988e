"""The failed-authentication guard and the buckets under it, on a fake clock."""

from __future__ import annotations

import hmac
import time

import jwt
import pytest

from pulsewire.hub import DisconnectCode, HubConfig
from pulsewire.hub.auth import AuthGuard, TokenVerifier, secret_matches
from pulsewire.hub.config import config_from_dict
from pulsewire.hub.errors import Disconnect
from pulsewire.hub.ratelimit import KeyedBuckets, TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_wait_time():
    clock = Clock()
    bucket = TokenBucket(0.5, 2, clock)
    assert bucket.wait_time() == 0
    assert bucket.take() and bucket.take() and not bucket.take()
    assert bucket.wait_time() == pytest.approx(2.0)
    clock.now += 1.5
    assert bucket.wait_time() == pytest.approx(0.5)
    assert bucket.wait_time(3) == float("inf")  # more than the burst: never


def test_keyed_buckets_peek_without_creating():
    buckets = KeyedBuckets(1, 2, clock=Clock())
    assert buckets.wait_time("a") == 0
    assert len(buckets) == 0


def test_keyed_buckets_stay_bounded_by_max_keys():
    clock = Clock()
    buckets = KeyedBuckets(0.001, 1, max_keys=100, clock=clock)
    for n in range(1000):  # all empty (none refilled), so a sweep of full ones frees nothing
        assert buckets.take(f"k{n}")
    assert len(buckets) <= 100
    assert buckets.wait_time("k999") > 0  # the newest are kept


def guard(**options: object) -> tuple[AuthGuard, Clock]:
    clock = Clock()
    options.setdefault("clock", clock)
    return AuthGuard(**options), clock  # type: ignore[arg-type]


def test_burst_then_one_more_per_refill():
    g, clock = guard(burst=3, refill=6.0)
    for _ in range(3):
        assert g.check("a", "api") == 0
        g.failed("a", "api")
    assert g.check("a", "api") == 6
    assert g.refused["api"] == 1 and g.failures["api"] == 3
    clock.now += 4.5
    assert g.retry_after("a") == 2  # rounded up: never tell a client to come back too early
    clock.now += 1.5
    assert g.retry_after("a") == 0  # one more guess...
    g.failed("a", "admin")
    assert g.retry_after("a") == 6  # ...and blocked again, whatever the kind
    assert g.retry_after("b") == 0


def test_burst_zero_turns_it_off_but_still_counts():
    g, _ = guard(burst=0)
    for _ in range(100):
        g.failed("a", "token")
    assert g.retry_after("a") == 0 and g.failures["token"] == 100
    assert not g.enabled


def test_ipv6_addresses_count_by_64_prefix():
    g, _ = guard()
    assert g.client("2001:db8:1:2::1") == g.client("2001:db8:1:2:ffff::7") == "2001:db8:1:2::/64"
    assert g.client("2001:db8:1:3::1") != g.client("2001:db8:1:2::1")
    assert g.client("::ffff:192.0.2.7") == "192.0.2.7"
    assert g.client("192.0.2.7") == "192.0.2.7"
    assert g.client("") == "" and g.client("unix-socket") == "unix-socket"


def test_forwarded_for_is_believed_only_from_trusted_proxies():
    g, _ = guard(trusted_proxies=["10.0.0.0/8"])
    headers = [("X-Forwarded-For", "6.6.6.6, 192.0.2.9")]  # the client wrote the first entry
    assert g.client("10.1.2.3", headers) == "192.0.2.9"
    assert g.client("192.0.2.50", headers) == "192.0.2.50"  # not a proxy: its own address
    assert g.client("10.1.2.3", []) == "10.1.2.3"
    assert g.client("10.1.2.3", [("X-Forwarded-For", "garbage")]) == "10.1.2.3"


def test_memory_is_bounded_by_max_addresses():
    g, _ = guard(burst=1, refill=3600, max_addresses=50)
    for n in range(5000):
        g.failed(f"198.51.{n // 256}.{n % 256}", "token")
    assert len(g) <= 50


def test_settings_come_from_the_hub_config():
    config = config_from_dict(
        {
            "auth_failures_burst": 4,
            "auth_failures_refill": 2.5,
            "auth_failures_max_addresses": 9,
            "auth_failures_trusted_proxies": ["127.0.0.1"],
        }
    )
    g = AuthGuard.from_config(config)
    assert (g.burst, g.refill) == (4, 2.5)
    assert g.client("127.0.0.1", [("X-Forwarded-For", "192.0.2.1")]) == "192.0.2.1"
    with pytest.raises(ValueError):
        AuthGuard.from_config(HubConfig(auth_failures_trusted_proxies=("not an address",)))
    with pytest.raises(ValueError):
        HubConfig(auth_failures_trusted_proxies="127.0.0.1")  # type: ignore[arg-type]


def test_secret_matches_compares_digests_in_constant_time(monkeypatch):
    assert secret_matches("s3cret", "s3cret")
    assert not secret_matches("s3cre", "s3cret")
    assert not secret_matches("", "s3cret")
    assert secret_matches(b"\xff", b"\xff")
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    secret_matches("short", "a much longer secret")
    assert [(len(a), len(b)) for a, b in compared] == [(32, 32)]  # equal length: no leak


def test_a_subscription_token_cannot_connect():
    verifier = TokenVerifier(HubConfig(token_hmac_secret="k" * 32))
    sub = jwt.encode({"sub": "ann", "channel": "priv:x", "exp": time.time() + 60}, "k" * 32)
    with pytest.raises(Disconnect) as refused:
        verifier.connection(sub)
    assert refused.value.code == DisconnectCode.INVALID_TOKEN
    assert refused.value.reason == "invalid token: a subscription token cannot connect"
    conn = jwt.encode({"sub": "ann", "exp": time.time() + 60}, "k" * 32)
    assert verifier.connection(conn).user == "ann"
    with pytest.raises(Exception, match="another user or channel"):
        verifier.subscription(conn, user="ann", channel="priv:x")  # and the other way round
