"""End to end: a real ``pulsewire serve`` node verifying tokens with a JWKS served over HTTP
from a local server, through a key rotation and an outage of that server."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

import pulsewire

from .conftest import HOST, WS_PATH, HubClient, HubClosed

SCRIPT = str(Path(sys.executable).parent / "pulsewire")
START_TIMEOUT = 20.0
KEY_1 = rsa.generate_private_key(public_exponent=65537, key_size=2048)  # RS256
KEY_2 = ec.generate_private_key(ec.SECP256R1())  # ES256


def public_jwk(key: Any, kid: str) -> dict[str, Any]:
    algorithm = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    alg = "RS256" if algorithm is RSAAlgorithm else "ES256"
    return {**json.loads(algorithm.to_jwk(key.public_key())), "kid": kid, "alg": alg, "use": "sig"}


def token(key: Any, kid: str, user: str = "ann", **claims: Any) -> str:
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    payload = {"sub": user, "exp": int(time.time()) + 600, **claims}
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class IdP:
    """A JWKS endpoint on a free loopback port (http.server in a thread)."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                idp.requests += 1
                body = json.dumps({"keys": idp.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.url = f"http://{HOST}:{self.server.server_address[1]}/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def stop(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


@pytest.fixture
def idp() -> Iterator[IdP]:
    server = IdP()
    yield server
    server.stop()


@pytest.fixture
async def node(idp: IdP, tmp_path: Path) -> AsyncIterator[tuple[int, asyncio.subprocess.Process]]:
    config = tmp_path / "pulsewire.toml"
    config.write_text(
        "[hub]\ntoken_jwks_refetch_interval = 0.2\n\n[namespaces.priv]\nprivate = true\n"
    )
    port = free_port()
    proc = await asyncio.create_subprocess_exec(
        SCRIPT,
        "serve",
        "--port",
        str(port),
        "--config",
        str(config),
        "--token-jwks-url",
        idp.url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        while True:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
            if not line:
                raise AssertionError(f"pulsewire serve exited: {await _stderr(proc)}")
            if line.startswith(b"listening on"):
                break
        yield port, proc
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _stderr(proc: asyncio.subprocess.Process) -> str:
    assert proc.stderr is not None
    return (await proc.stderr.read()).decode(errors="replace")


async def open_client(port: int, token_: str | None = None) -> HubClient:
    ws = await pulsewire.connect(f"ws://{HOST}:{port}{WS_PATH}", subprotocols=["pulsewire.v1.json"])
    client = HubClient(ws)
    if token_ is not None:
        await client.connect(token_)
    return client


async def refused(port: int, token_: str) -> tuple[int | None, str | None]:
    client = await open_client(port)
    try:
        with pytest.raises(HubClosed) as info:
            await client.connect(token_)
        return info.value.code, info.value.reason
    finally:
        await client.close()


async def test_rotation_and_outage_on_a_real_node(idp: IdP, node: Any) -> None:
    port, proc = node
    idp.keys = [public_jwk(KEY_1, "k1")]
    clients = [await open_client(port, token(KEY_1, "k1", user)) for user in ("ann", "bob")]
    assert idp.requests == 1  # fetched once, kept
    # rotation: the endpoint now serves key 2 only
    idp.keys = [public_jwk(KEY_2, "k2")]
    carl = await open_client(port, token(KEY_2, "k2", "carl"))  # unknown kid: fetched again
    assert carl.client_id
    ann, bob = clients
    assert (await ann.ok("refresh", {"token": token(KEY_2, "k2", "ann")}))["expires"]
    sub = token(KEY_2, "k2", "bob", channel="priv:room")
    assert await bob.ok("subscribe", {"channel": "priv:room", "token": sub}) == {}
    code, reason = await refused(port, token(KEY_1, "k1", "dave"))
    assert code == 4500, reason
    for client in (ann, bob, carl):  # connected clients stay connected, key 1 or not
        assert await client.ok("ping") == {}
    # outage: a kid the node does not know can't be checked: 4004, reconnect later
    idp.stop()
    for _ in range(3):
        assert (await refused(port, token(KEY_1, "k3", "eve")))[0] == 4004
    fay = await open_client(port, token(KEY_2, "k2", "fay"))  # a known key: fine
    assert fay.client_id
    for client in (ann, bob, carl, fay):
        assert await client.ok("ping") == {}
        await client.close()
    proc.terminate()
    errors = [line for line in (await _stderr(proc)).splitlines() if "cannot fetch" in line]
    assert len(errors) == 1, errors  # logged once, not per connection
