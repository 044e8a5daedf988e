"""Connection tokens: forged ones end the session with 4500 (do not reconnect), expired ones
with 4002 (get a new token, then reconnect); each is counted in ``pulsewire_disconnects``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .conftest import SECRET, WsClient, hub_config, make_token, scrape


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _forge(header: dict[str, object], payload: dict[str, object], key: bytes | None) -> str:
    """A JWT built by hand: HS256 over ``key``, or no signature at all with ``key=None``."""
    signing_input = f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(payload).encode())}"
    if key is None:
        return signing_input + "."
    mac = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(mac)}"


def _tampered() -> str:
    """A valid token for 'alice' whose payload now says 'admin' (signature unchanged)."""
    header, _, signature = make_token("alice").split(".")
    payload = {"sub": "admin", "exp": int(time.time() + 600)}
    return f"{header}.{_b64(json.dumps(payload).encode())}.{signature}"


FORGED = {
    "wrong key": lambda: make_token("mallory", secret="not-the-secret-0123456789abcdef01"),
    "alg none": lambda: _forge(
        {"alg": "none", "typ": "JWT"}, {"sub": "admin", "exp": int(time.time() + 600)}, None
    ),
    "alg none, signature kept": lambda: _forge(
        {"alg": "none", "typ": "JWT"}, {"sub": "admin"}, SECRET.encode()
    ),
    "alg NONE": lambda: _forge({"alg": "NONE"}, {"sub": "admin"}, None),
    "tampered payload": _tampered,
    "truncated signature": lambda: make_token("alice")[:-6],
    "not a JWT": lambda: "hello.world",
}


async def _disconnect_code(port: int, token: str) -> tuple[int | None, str]:
    client = await WsClient.open(port)
    try:
        await client.command("connect", {"token": token})
        frame = await client.close_frame()
        assert not client.pushes, client.pushes  # no reply: the session never started
        return frame.close_code, frame.close_reason
    finally:
        await client.close()


@pytest.mark.parametrize("kind", list(FORGED))
async def test_forged_tokens_are_refused_with_4500(hub, kind):
    server = await hub()
    before = await scrape(server.port)
    code, reason = await _disconnect_code(server.port, FORGED[kind]())
    assert code == 4500, (code, reason)
    assert "token" in reason
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_disconnects_total", code="4500") == 1
    assert after.delta(before, "pulsewire_connects_total", transport="websocket") == 0


async def test_expired_token_is_refused_with_4002(hub):
    server = await hub()
    before = await scrape(server.port)
    code, reason = await _disconnect_code(server.port, make_token("alice", ttl=-30))
    assert (code, reason) == (4002, "token expired")
    after = await scrape(server.port)
    assert after.delta(before, "pulsewire_disconnects_total", code="4002") == 1
    assert after.delta(before, "pulsewire_connects_total", transport="websocket") == 0


async def test_token_expiring_during_the_session_closes_it_with_4002(hub, clients):
    server = await hub()
    client = await WsClient.open(server.port)
    clients.append(client)
    exp = time.time() + 1.2
    await client.connect(jwt.encode({"sub": "alice", "exp": exp}, SECRET, algorithm="HS256"))
    frame = await client.close_frame(timeout=5)
    assert frame.close_code == 4002
    assert time.time() >= exp - 0.05


async def test_hmac_signed_with_the_rsa_public_key_is_refused(hub):
    """Algorithm confusion: with only RS256 configured, an HS256 token whose secret is the
    (public) RSA key must not verify."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    server = await hub(hub_config(token_hmac_secret=None, token_rsa_public_key=public))
    forged = _forge({"alg": "HS256", "typ": "JWT"}, {"sub": "admin"}, public.encode())
    assert (await _disconnect_code(server.port, forged))[0] == 4500
    genuine = jwt.encode({"sub": "bob"}, key, algorithm="RS256")
    client = await WsClient.open(server.port)
    try:
        assert (await client.connect(genuine))["user"] == "bob"
    finally:
        await client.close()


async def test_missing_token_is_refused_with_4503(hub):
    server = await hub()
    client = await WsClient.open(server.port)
    try:
        await client.command("connect", {})
        assert (await client.close_frame()).close_code == 4503
    finally:
        await client.close()
