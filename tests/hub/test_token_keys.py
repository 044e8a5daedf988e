"""TokenVerifier's keys, one layer down (no sockets): ES256 with a configured key, keys from
a JWKS (a fake identity provider, the event loop's clock moved by hand), and the algorithm
rules (``alg`` must fit the key; ``none`` and HS256-with-a-public-key refused)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
import urllib.error
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from jwt.utils import der_to_raw_signature

from pulsewire.hub import Disconnect, HubConfig, HubError
from pulsewire.hub.auth import TokenVerifier
from pulsewire.hub.config import config_from_dict
from pulsewire.hub.jwks import JwksKeys, fetch_url, parse_jwks

from .fakes import LoopClock

URL = "https://idp.example/.well-known/jwks.json"
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
EC_OTHER = ec.generate_private_key(ec.SECP256R1())
EC_384 = ec.generate_private_key(ec.SECP384R1())


def pem(key: Any) -> str:
    public = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return public.decode()


def jwk(key: Any, kid: str, **members: Any) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    data: dict[str, Any] = json.loads(algorithm.to_jwk(key.public_key()))
    return {**data, "kid": kid, **members}


def token(key: Any, alg: str, kid: str | None = None, **claims: Any) -> str:
    payload = {"sub": "ann", "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid} if kid else None)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forged(header: dict[str, Any], secret: bytes | None) -> str:
    """A token built by hand: HS256 over ``secret``, or unsigned (``alg: none``)."""
    payload = {"sub": "admin", "exp": int(time.time()) + 600}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if secret is None:
        return signing_input + "."
    mac = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def wrong_curve(key: ec.EllipticCurvePrivateKey, alg: str, kid: str | None = None) -> str:
    """A token whose header says ``alg`` (ES256, ES384) signed with ``key`` on another
    curve: PyJWT will not make one, so it is made here."""
    header: dict[str, Any] = {"alg": alg, "typ": "JWT", **({"kid": kid} if kid else {})}
    payload = {"sub": "ann", "exp": int(time.time()) + 600}
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    digest = {"ES256": hashes.SHA256(), "ES384": hashes.SHA384()}[alg]
    der = key.sign(signing_input.encode(), ec.ECDSA(digest))
    return f"{signing_input}.{_b64(der_to_raw_signature(der, key.curve))}"


class FakeIdP:
    """A JWKS endpoint: serves ``keys``; ``down`` makes every fetch fail."""

    def __init__(self, *keys: dict[str, Any]) -> None:
        self.keys = list(keys)
        self.down = False
        self.calls = 0

    async def __call__(self, url: str, timeout: float) -> bytes:
        assert url == URL
        self.calls += 1
        if self.down:
            raise ConnectionRefusedError("connection refused")
        return json.dumps({"keys": self.keys}).encode()


def verifier(idp: FakeIdP, **changes: Any) -> TokenVerifier:
    config = HubConfig(token_jwks_url=URL, token_jwks_refetch_interval=30.0, **changes)
    return TokenVerifier(config, fetch=idp)


async def code_of(verify: Any) -> int:
    with pytest.raises((Disconnect, HubError)) as info:
        await verify
    return info.value.code


@pytest.fixture
async def clock() -> Any:
    loop_clock = LoopClock(asyncio.get_running_loop())
    yield loop_clock
    loop_clock.restore()


# ----------------------------------------------------------------- configured keys


async def test_es256_with_a_configured_key() -> None:
    tokens = TokenVerifier(HubConfig(token_ecdsa_public_key=pem(EC_KEY)))
    assert (await tokens.verify_connection(token(EC_KEY, "ES256"))).user == "ann"
    assert tokens.connection(token(EC_KEY, "ES256")).user == "ann"
    assert await code_of(tokens.verify_connection(token(EC_OTHER, "ES256"))) == 4500
    assert await code_of(tokens.verify_connection(token(RSA_KEY, "RS256"))) == 4500
    claims = tokens.subscription(token(EC_KEY, "ES256", channel="c"), user="ann", channel="c")
    assert claims["channel"] == "c"


async def test_an_ecdsa_key_verifies_the_algorithm_of_its_curve() -> None:
    tokens = TokenVerifier(HubConfig(token_ecdsa_public_key=pem(EC_384)))
    assert tokens.connection(token(EC_384, "ES384")).user == "ann"
    # the same key, but the header claims ES256 (P-256): refused
    assert await code_of(tokens.verify_connection(wrong_curve(EC_384, "ES256"))) == 4500


def test_the_ecdsa_key_may_be_a_path(tmp_path: Any) -> None:
    path = tmp_path / "ec.pem"
    path.write_text(pem(EC_KEY))
    config = config_from_dict({"token_ecdsa_public_key": str(path)})
    assert TokenVerifier(config).connection(token(EC_KEY, "ES256")).user == "ann"


@pytest.mark.parametrize(
    ("setting", "value"),
    [
        ("token_ecdsa_public_key", "not a key"),
        ("token_ecdsa_public_key", "RSA"),  # an RSA key where an EC key belongs
        ("token_rsa_public_key", "EC"),
    ],
)
def test_a_bad_configured_key_fails_at_start(setting: str, value: str) -> None:
    value = {"RSA": pem(RSA_KEY), "EC": pem(EC_KEY)}.get(value, value)
    with pytest.raises(ValueError, match=setting):
        TokenVerifier(HubConfig(**{setting: value}))


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "idp.example/jwks", "ftp://idp.example/jwks", "https://"]
)
def test_only_http_jwks_urls(url: str) -> None:
    with pytest.raises(ValueError, match="token_jwks_url"):
        HubConfig(token_jwks_url=url)


async def test_none_and_hmac_with_a_public_key_are_refused() -> None:
    idp = FakeIdP(jwk(EC_KEY, "k1"))
    config = HubConfig(
        token_rsa_public_key=pem(RSA_KEY), token_ecdsa_public_key=pem(EC_KEY), token_jwks_url=URL
    )
    tokens = TokenVerifier(config, fetch=idp)
    for public in (pem(RSA_KEY), pem(EC_KEY)):  # HMAC keyed with a public key anyone has
        for header in ({"alg": "HS256"}, {"alg": "HS256", "kid": "k1"}):
            code = await code_of(tokens.verify_connection(forged(header, public.encode())))
            assert code == 4500, header
    for header in ({"alg": "none"}, {"alg": "none", "kid": "k1"}, {"alg": "NONE"}, {}):
        assert await code_of(tokens.verify_connection(forged(header, None))) == 4500, header


async def test_audience_and_issuer_are_checked_for_every_kind_of_key() -> None:
    idp = FakeIdP(jwk(RSA_KEY, "r1"))
    tokens = verifier(idp, token_audience="pulse", token_issuer="idp")
    good = {"aud": "pulse", "iss": "idp"}
    assert (await tokens.verify_connection(token(RSA_KEY, "RS256", "r1", **good))).user == "ann"
    for claims in ({"aud": "other", "iss": "idp"}, {"iss": "idp"}, {"aud": "pulse"}):
        assert (
            await code_of(tokens.verify_connection(token(RSA_KEY, "RS256", "r1", **claims))) == 4500
        )
    ec_tokens = TokenVerifier(
        HubConfig(token_ecdsa_public_key=pem(EC_KEY), token_audience="pulse", token_issuer="idp")
    )
    assert ec_tokens.connection(token(EC_KEY, "ES256", **good)).user == "ann"
    assert await code_of(ec_tokens.verify_connection(token(EC_KEY, "ES256", iss="idp"))) == 4500


# --------------------------------------------------------------------------- JWKS


async def test_jwks_keys_by_kid_rsa_and_ec() -> None:
    idp = FakeIdP(jwk(RSA_KEY, "r1", alg="RS256", use="sig"), jwk(EC_KEY, "e1"))
    tokens = verifier(idp)
    assert (await tokens.verify_connection(token(RSA_KEY, "RS256", "r1"))).user == "ann"
    assert (await tokens.verify_connection(token(EC_KEY, "ES256", "e1"))).user == "ann"
    claims = await tokens.verify_subscription(
        token(EC_KEY, "ES256", "e1", channel="priv:x"), user="ann", channel="priv:x"
    )
    assert claims["channel"] == "priv:x"
    assert idp.calls == 1  # cached


async def test_alg_must_fit_the_jwk() -> None:
    idp = FakeIdP(jwk(RSA_KEY, "r1", alg="RS256"), jwk(EC_KEY, "e1"), jwk(RSA_KEY, "r2"))
    tokens = verifier(idp)
    assert (await tokens.verify_connection(token(RSA_KEY, "RS256", "r1"))).user == "ann"
    # the JWK says RS256: an RS512 token with its kid is refused
    assert await code_of(tokens.verify_connection(token(RSA_KEY, "RS512", "r1"))) == 4500
    assert (await tokens.verify_connection(token(RSA_KEY, "RS512", "r2"))).user == "ann"
    # an EC kid with an RSA signature, an RSA kid with an EC one
    assert await code_of(tokens.verify_connection(token(RSA_KEY, "RS256", "e1"))) == 4500
    assert await code_of(tokens.verify_connection(token(EC_KEY, "ES256", "r2"))) == 4500
    assert await code_of(tokens.verify_connection(wrong_curve(EC_KEY, "ES384", "e1"))) == 4500


def test_parse_jwks_takes_only_public_signing_keys() -> None:
    secret = {"kty": "oct", "kid": "s", "k": _b64(b"0123456789abcdef0123456789abcdef")}
    private = json.loads(ECAlgorithm.to_jwk(EC_KEY))
    keys = parse_jwks(
        json.dumps(
            {
                "keys": [
                    secret,
                    {**private, "kid": "private"},
                    jwk(EC_KEY, "enc", use="enc"),
                    jwk(EC_KEY, "hs", alg="HS256"),
                    jwk(RSA_KEY, ""),
                    {k: v for k, v in jwk(RSA_KEY, "x").items() if k != "kid"},
                    {"kty": "EC", "kid": "broken", "crv": "P-256", "x": "AA", "y": "AA"},
                    "not a key",
                    jwk(EC_KEY, "good"),
                ]
            }
        ).encode()
    )
    assert set(keys) == {"", "good"}  # a private JWK is a mistake: skipped
    for bad in (b"{}", b"[]", b"not json", b'{"keys": [{"kty": "oct", "kid": "s", "k": "AA"}]}'):
        with pytest.raises(ValueError):
            parse_jwks(bad)


async def test_a_symmetric_jwk_cannot_sign() -> None:
    secret = b"0123456789abcdef0123456789abcdef"
    idp = FakeIdP({"kty": "oct", "kid": "s", "k": _b64(secret)}, jwk(EC_KEY, "e1"))
    tokens = verifier(idp)
    assert (
        await code_of(tokens.verify_connection(forged({"alg": "HS256", "kid": "s"}, secret)))
        == 4500
    )


async def test_rotation_unknown_kid_fetches_again(clock: LoopClock) -> None:
    idp = FakeIdP(jwk(EC_KEY, "k1"))
    tokens = verifier(idp)
    assert (await tokens.verify_connection(token(EC_KEY, "ES256", "k1"))).user == "ann"
    idp.keys = [jwk(EC_OTHER, "k2")]  # rotation: k2 in, k1 out
    pending = asyncio.ensure_future(tokens.verify_connection(token(EC_OTHER, "ES256", "k2")))
    await clock.advance(29)
    assert not pending.done() and idp.calls == 1  # waits for the next allowed fetch
    await clock.advance(1)
    assert (await pending).user == "ann"
    assert idp.calls == 2
    # k1 is gone from the set: refused (after one more fetch, allowed 30 s later)
    pending = asyncio.ensure_future(tokens.verify_connection(token(EC_KEY, "ES256", "k1")))
    await clock.advance(30)
    assert await code_of(pending) == 4500
    assert idp.calls == 3


async def test_forged_kids_cost_one_fetch_per_interval(clock: LoopClock) -> None:
    idp = FakeIdP(jwk(EC_KEY, "k1"))
    tokens = verifier(idp)
    await tokens.verify_connection(token(EC_KEY, "ES256", "k1"))
    flood = [
        asyncio.ensure_future(tokens.verify_connection(token(EC_KEY, "ES256", f"forged-{i}")))
        for i in range(50)
    ]
    await clock.advance(0)
    assert idp.calls == 1
    await clock.advance(30)
    codes = [await code_of(task) for task in flood]
    assert codes == [4500] * 50
    assert idp.calls == 2  # one fetch for all fifty
    # known kids are not held up meanwhile
    assert (await tokens.verify_connection(token(EC_KEY, "ES256", "k1"))).user == "ann"
    assert idp.calls == 2


async def test_concurrent_first_tokens_share_one_fetch() -> None:
    idp = FakeIdP(jwk(EC_KEY, "k1"))
    tokens = verifier(idp)
    users = await asyncio.gather(
        *(tokens.verify_connection(token(EC_KEY, "ES256", "k1", sub=f"u{i}")) for i in range(20))
    )
    assert [c.user for c in users] == [f"u{i}" for i in range(20)]
    assert idp.calls == 1


async def test_ttl_expiry_fetches_again(clock: LoopClock) -> None:
    idp = FakeIdP(jwk(EC_KEY, "k1"))
    tokens = verifier(idp, token_jwks_ttl=300.0)
    await tokens.verify_connection(token(EC_KEY, "ES256", "k1"))
    idp.keys = [jwk(EC_OTHER, "k2")]
    await clock.advance(200)
    assert (await tokens.verify_connection(token(EC_KEY, "ES256", "k1"))).user == "ann"
    assert idp.calls == 1  # still fresh
    await clock.advance(100)
    assert await code_of(tokens.verify_connection(token(EC_KEY, "ES256", "k1"))) == 4500
    assert idp.calls == 2


async def test_unreachable_jwks(clock: LoopClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, "pulsewire.hub")
    idp = FakeIdP(jwk(EC_KEY, "k1"))
    idp.down = True
    tokens = verifier(idp, token_jwks_ttl=60.0)
    # never fetched: the token may be fine, so "retry later", not "invalid"
    assert await code_of(tokens.verify_connection(token(EC_KEY, "ES256", "k1"))) == 4004
    assert await code_of(tokens.verify_connection(token(EC_KEY, "ES256", "k1"))) == 4004
    sub = tokens.verify_subscription(
        token(EC_KEY, "ES256", "k1", channel="c"), user="a", channel="c"
    )
    assert await code_of(sub) == 108
    assert idp.calls == 1  # failures within the interval answer at once, without fetching
    await clock.advance(30)
    assert await code_of(tokens.verify_connection(token(EC_KEY, "ES256", "k1"))) == 4004
    assert idp.calls == 2
    errors = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(errors) == 1 and "cannot fetch" in errors[0].getMessage()  # logged once
    # it answers again; then goes down with k1 known: k1 keeps working past its TTL
    idp.down = False
    await clock.advance(30)
    assert (await tokens.verify_connection(token(EC_KEY, "ES256", "k1"))).user == "ann"
    assert "reachable again" in caplog.records[-1].getMessage()
    idp.down = True
    await clock.advance(61)
    assert (await tokens.verify_connection(token(EC_KEY, "ES256", "k1"))).user == "ann"
    assert idp.calls == 4
    assert (await tokens.verify_connection(token(EC_KEY, "ES256", "k1"))).user == "ann"
    assert idp.calls == 4  # stale, cooling down: no fetch
    # an unknown kid while it is down: unavailable, not invalid
    await clock.advance(30)
    assert await code_of(tokens.verify_connection(token(EC_OTHER, "ES256", "k2"))) == 4004


async def test_a_slow_jwks_endpoint_times_out(clock: LoopClock) -> None:
    started = asyncio.Event()

    async def hang(url: str, timeout: float) -> bytes:
        started.set()
        await asyncio.Event().wait()
        raise AssertionError

    tokens = TokenVerifier(HubConfig(token_jwks_url=URL, token_jwks_timeout=5.0), fetch=hang)
    pending = asyncio.ensure_future(tokens.verify_connection(token(EC_KEY, "ES256", "k1")))
    await started.wait()
    await clock.advance(5)
    assert await code_of(pending) == 4004


async def test_sync_verification_uses_only_fetched_keys() -> None:
    idp = FakeIdP(jwk(EC_KEY, "k1"))
    tokens = verifier(idp)
    with pytest.raises(Disconnect) as info:
        tokens.connection(token(EC_KEY, "ES256", "k1"))
    assert info.value.code == 4004 and idp.calls == 0
    await tokens.verify_connection(token(EC_KEY, "ES256", "k1"))
    assert tokens.connection(token(EC_KEY, "ES256", "k1")).user == "ann"


async def test_closing_cancels_a_scheduled_fetch(clock: LoopClock) -> None:
    idp = FakeIdP(jwk(EC_KEY, "k1"))
    tokens = verifier(idp)
    await tokens.verify_connection(token(EC_KEY, "ES256", "k1"))
    pending = asyncio.ensure_future(tokens.verify_connection(token(EC_KEY, "ES256", "k9")))
    await clock.advance(0)
    tokens.close()
    assert await code_of(pending) == 4004  # the hub is closing: the session ends anyway
    assert idp.calls == 1


@pytest.fixture
def http_server() -> Any:
    """A loopback HTTP server answering ``GET /<status>/<size>`` with that many bytes."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, size = (int(part) for part in self.path.strip("/").split("/"))
            self.send_response(status)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            self.wfile.write(b" " * size)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


async def test_fetch_url_bounds_what_it_reads(http_server: str) -> None:
    assert await fetch_url(f"{http_server}/200/1000", 5.0) == b" " * 1000
    with pytest.raises(ValueError, match="over"):
        await fetch_url(f"{http_server}/200/{2 << 20}", 5.0)
    with pytest.raises(urllib.error.HTTPError):
        await fetch_url(f"{http_server}/503/0", 5.0)


def test_jwks_keys_is_configured_from_the_hub_config() -> None:
    tokens = TokenVerifier(
        HubConfig(token_jwks_url=URL, token_jwks_ttl=9.0, token_jwks_refetch_interval=2.0)
    )
    assert isinstance(tokens.jwks, JwksKeys)
    assert (tokens.jwks.url, tokens.jwks.ttl, tokens.jwks.refetch_interval) == (URL, 9.0, 2.0)
    assert tokens.enabled


# ------------------------------------------------------------ sessions (FakeClient)


async def test_sessions_when_the_jwks_is_unreachable(local_hub, local_client, hub_config):
    """Connect: 4004 (reconnect), refresh and subscribe: 108 (the session goes on); none
    of them counts as a failed authentication of the address."""
    idp = FakeIdP(jwk(EC_KEY, "k1"))
    config = hub_config(token_jwks_url=URL, token_jwks_refetch_interval=0.0, auth_failures_burst=1)
    hub = await local_hub(config)
    hub.tokens = TokenVerifier(config, fetch=idp)  # what a reload does
    client = await local_client(hub, token=token(EC_KEY, "ES256", "k1"))
    idp.down = True
    refresh = await client.fail("refresh", {"token": token(EC_OTHER, "ES256", "k2")})
    assert refresh["code"] == 108 and "unavailable" in refresh["message"]
    sub_token = token(EC_OTHER, "ES256", "k2", channel="priv:x")
    assert (await client.fail("subscribe", {"channel": "priv:x", "token": sub_token}))[
        "code"
    ] == 108
    assert await client.ok("ping") == {}
    other = await local_client(hub, connect=False)
    await other.send("connect", {"token": token(EC_OTHER, "ES256", "k2")})
    code, reason = await other.wait_closed()
    assert code == 4004 and "unavailable" in (reason or "")
    assert hub.auth_guard.failures["token"] == 0
    sample = hub.metrics.registry.get_sample_value
    assert sample("pulsewire_token_keys_up") == 0
    assert sample("pulsewire_token_key_fetches_total", {"outcome": "error"}) == 3  # interval 0
    assert sample("pulsewire_token_key_fetches_total", {"outcome": "ok"}) == 1
    # the provider is back with k2: refresh and subscribe work
    idp.down = False
    idp.keys.append(jwk(EC_OTHER, "k2"))
    assert (await client.ok("refresh", {"token": token(EC_OTHER, "ES256", "k2")}))["expires"]
    assert await client.ok("subscribe", {"channel": "priv:x", "token": sub_token}) == {}
    assert sample("pulsewire_token_keys_up") == 1


async def test_no_token_key_metrics_without_a_jwks(local_hub):
    hub = await local_hub()
    assert hub.metrics.registry.get_sample_value("pulsewire_token_keys_up") is None
