"""deploy/nginx/pulsewire.conf, as shipped (ports and paths rewritten), in front of two nodes.

TLS is terminated by nginx with a self-signed certificate made here; clients speak wss:// and
https:// to nginx, nginx speaks ws:// and http:// to the nodes. Everything is on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import ssl
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import pulsewire
from pulsewire.protocol.errors import InvalidStatus

from .conftest import API_KEY, HOST, IN_CI, Client, free_port, redis_available, skip_or_fail

httpx = pytest.importorskip("httpx")

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "nginx" / "pulsewire.conf"
ALLOWED = "https://allowed.example"


def find_nginx() -> str:
    """The nginx binary; installed from Debian under CI=true as root, else skip (CI: fail)."""
    found = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
    if found:
        return found
    if IN_CI and os.geteuid() == 0 and shutil.which("apt-get"):
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "nginx"]):
            subprocess.run(
                command,
                check=True,
                timeout=600,
                stdout=subprocess.DEVNULL,
                env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
            )
        found = shutil.which("nginx", path="/usr/sbin:/usr/bin:/usr/local/sbin")
        if found:
            return found
    skip_or_fail("nginx is not installed (apt-get install -y nginx)")
    raise AssertionError("unreachable")


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        timeout=60,
        capture_output=True,
    )
    return cert, key


def site_config(upstreams: list[int], https: int, http: int, cert: Path, key: Path) -> str:
    """The shipped file with loopback ports, our nodes and our certificate."""
    text = SHIPPED.read_text()
    servers = "".join(f"    server 127.0.0.1:{port};\n" for port in upstreams)
    text, count = re.subn(r"(    server 127\.0\.0\.1:800\d;\n)+", servers, text)
    assert count == 2, "expected two upstream blocks in the shipped config"
    text = re.sub(r"\n\s*listen \[::\]:\d+[^;]*;", "", text)
    text = text.replace("listen 443 ssl", f"listen 127.0.0.1:{https} ssl")
    text = text.replace("listen 80;", f"listen 127.0.0.1:{http};")
    text = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", text)
    text = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", text)
    return text


MAIN = """
daemon off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log info;
events {{ worker_connections 512; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {prefix}/site.conf;

    # Test only: the same proxy with "Host $host" (the port is lost), to show the pitfall.
    server {{
        listen 127.0.0.1:{plain_host} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://pulsewire;
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $pulsewire_connection;
            proxy_set_header Host $host;
        }}
    }}
}}
"""


@dataclass
class Proxy:
    https: int
    plain_host: int
    context: ssl.SSLContext
    cert: Path
    nodes: list[str]
    processes: list[Any]


@pytest.fixture
def prefix() -> Iterator[Path]:
    # Not under pytest's tmp_path: nginx workers run as "nobody" and need to enter it.
    path = Path(tempfile.mkdtemp(prefix="pulsewire-nginx-"))
    path.chmod(0o755)
    (path / "tmp").mkdir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
async def proxy(serve, write_config, prefix, request) -> AsyncIterator[Proxy]:
    nginx = find_nginx()
    cert, key = make_certificate(prefix)
    reason = redis_available()
    if reason is None:
        engine = request.getfixturevalue("redis_engine")
        hub = f'engine = "{engine[0]}"\nengine_prefix = "{engine[1]}"\n'
        count = 2
    else:  # until Redis is there: one node on the in-memory engine
        print(f"one node on the memory engine: {reason}")
        hub, count = "", 1
    config = write_config(
        f'[server]\nallowed_origins = ["{ALLOWED}"]\n\n[hub]\n{hub}allow_anonymous = true\n'
        f'api_key = "{API_KEY}"\n\n[channel]\nallow_anonymous = true\n'
    )
    ports = [free_port() for _ in range(count)]
    nodes = [
        await serve("--config", config, "--port", str(port), "--node-name", f"n{i}")
        for i, port in enumerate(ports)
    ]
    for node in nodes:
        await node.listening()
    https, http, plain_host = free_port(), free_port(), free_port()
    (prefix / "site.conf").write_text(site_config(ports, https, http, cert, key))
    (prefix / "nginx.conf").write_text(
        MAIN.format(prefix=prefix, plain_host=plain_host, cert=cert, key=key)
    )
    proc = subprocess.Popen(
        [
            nginx,
            "-p",
            str(prefix),
            "-c",
            str(prefix / "nginx.conf"),
            "-e",
            str(prefix / "error.log"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        await wait_listening(proc, prefix, https)
        context = ssl.create_default_context(cafile=str(cert))
        yield Proxy(https, plain_host, context, cert, [f"n{i}" for i in range(count)], nodes)
    finally:
        proc.send_signal(signal.SIGTERM)  # fast shutdown, workers included
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


async def wait_listening(proc: subprocess.Popen[bytes], prefix: Path, port: int) -> None:
    deadline = time.monotonic() + 15
    while True:
        if proc.poll() is not None:
            log = (prefix / "error.log").read_text() if (prefix / "error.log").exists() else ""
            stderr = proc.stderr.read().decode() if proc.stderr else ""
            raise AssertionError(f"nginx exited ({proc.returncode}):\n{stderr}\n{log[-3000:]}")
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            assert time.monotonic() < deadline, "nginx does not listen"
            await asyncio.sleep(0.05)
        else:
            writer.close()
            return


async def test_wss_through_nginx_to_every_node_with_api_publish(proxy: Proxy):
    url = f"wss://localhost:{proxy.https}/connection/websocket"
    origin = f"https://localhost:{proxy.https}"  # a page served by this very host
    clients: list[Client] = []
    while {c.node for c in clients} != set(proxy.nodes):
        assert len(clients) < 16, f"nodes reached: {sorted({c.node for c in clients})}"
        clients.append(await Client.open(url, origin=origin, ssl=proxy.context))
    for client in clients:
        await client.subscribe("news")
    async with httpx.AsyncClient(verify=proxy.context, trust_env=False, timeout=10) as http:
        for n in range(3):
            response = await http.post(
                f"https://localhost:{proxy.https}/api/publish",
                json={"channel": "news", "data": {"n": n}},
                headers={"Authorization": f"apikey {API_KEY}"},
            )
            assert response.status_code == 200, response.text
    for client in clients:
        assert [await client.publication() for _ in range(3)] == [{"n": n} for n in range(3)]
        await client.ws.close()


async def test_origin_checks_behind_the_proxy(proxy: Proxy):
    async def status(port: int, origin: str) -> int:
        url = f"wss://localhost:{port}/connection/websocket"
        try:
            ws = await asyncio.wait_for(
                pulsewire.connect(url, origin=origin, ssl=proxy.context), 10
            )
        except InvalidStatus as exc:
            return exc.status
        await ws.close()
        return 101

    # Host $http_host: the page's own origin matches the Host the node sees.
    assert await status(proxy.https, f"https://localhost:{proxy.https}") == 101
    assert await status(proxy.https, "https://evil.example") == 403
    # Host $host drops the port: the same page is refused, unless allowed_origins lists it.
    assert await status(proxy.plain_host, f"https://localhost:{proxy.plain_host}") == 403
    assert await status(proxy.plain_host, ALLOWED) == 101


async def test_sse_through_nginx_is_not_buffered(proxy: Proxy):
    base = f"https://localhost:{proxy.https}"
    headers = {"Origin": base}
    async with httpx.AsyncClient(verify=proxy.context, trust_env=False, timeout=10) as http:
        probe = await http.get(f"{base}/connection/sse/send")
        if probe.status_code == 404 and "not found" in probe.text:
            pytest.skip("no /connection/sse endpoint in this build")
        async with http.stream("GET", f"{base}/connection/sse", headers=headers) as stream:
            assert stream.status_code == 200
            assert stream.headers["content-type"].startswith("text/event-stream")
            events = sse_events(stream)
            name, hello = await asyncio.wait_for(anext(events), 5)
            assert name == "session"
            commands = [
                {"id": 1, "method": "connect", "params": {}},
                {"id": 2, "method": "subscribe", "params": {"channel": "news"}},
            ]
            sent = await http.post(
                f"{base}/connection/sse/send",
                params={"session": hello["session"]},
                content="\n".join(json.dumps(c) for c in commands),
                headers={**headers, "Content-Type": "text/plain"},
            )
            assert sent.status_code == 204, sent.text
            replies = [await asyncio.wait_for(anext(events), 5) for _ in range(2)]
            assert [data.get("id") for _, data in replies] == [1, 2]
            for n in range(3):
                started = time.monotonic()
                published = await http.post(
                    f"{base}/api/publish",
                    json={"channel": "news", "data": n},
                    headers={"Authorization": f"apikey {API_KEY}"},
                )
                assert published.status_code == 200
                _, event = await asyncio.wait_for(anext(events), 5)
                assert (event["push"], event["data"]) == ("publication", n)
                # One small event comes through on its own: nothing holds it back.
                assert time.monotonic() - started < 2.0


async def sse_events(response: Any) -> AsyncIterator[tuple[str, Any]]:
    name, data = "message", []
    async for line in response.aiter_lines():
        if line.startswith(":"):
            continue
        if not line:
            if data:
                yield name, json.loads("\n".join(data))
            name, data = "message", []
            continue
        field, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if field == "event":
            name = value
        elif field == "data":
            data.append(value)


async def test_rolling_restart_through_nginx(proxy: Proxy):
    if len(proxy.nodes) < 2:
        pytest.skip("needs two nodes (the Redis engine)")
    url = f"wss://localhost:{proxy.https}/connection/websocket"
    origin = f"https://localhost:{proxy.https}"
    clients: list[Client] = []
    while {c.node for c in clients} != set(proxy.nodes):
        assert len(clients) < 16
        clients.append(await Client.open(url, origin=origin, ssl=proxy.context))
    proxy.processes[0].signal(signal.SIGTERM)  # the first node drains
    leaving = [c for c in clients if c.node == "n0"]
    staying = [c for c in clients if c.node != "n0"]
    # nginx passes the close frame through: clients are told to reconnect elsewhere...
    assert set(await asyncio.gather(*(c.close_code() for c in leaving))) == {1012}
    assert await proxy.processes[0].exit_status(15) == 0
    # ...and reconnecting through nginx lands on the node that is still up.
    for _ in range(4):
        again = await Client.open(url, origin=origin, ssl=proxy.context)
        assert again.node == "n1"
        await again.ws.close()
    assert all(c.ws.close_code is None for c in staying)
    for client in staying:
        await client.ws.close()
