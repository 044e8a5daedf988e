"""pulsewire.js as an npm package: its TypeScript declarations and ``npm pack`` / install / import.

* ``tsc --noEmit --strict`` on ``example.ts`` (the whole API, and misuses that must be
  refused), resolving ``pulsewire`` as Node ("nodenext") and as bundlers do;
* ``check_members.mjs``: ``pulsewire.d.ts`` declares exactly the module's public API;
* ``npm pack`` of ``src/pulsewire/web``, ``npm install`` of the tarball into a fresh
  project, and ``node_client.mjs`` importing ``{ Client } from "pulsewire"`` there and using
  it against a real ``pulsewire serve``, over Node's WebSocket and over long-polling.

TypeScript comes from the npm registry: ``npm ci`` installs ``package-lock.json`` into
``tests/js/node_modules`` on first use. Without node and npm the tests are skipped, except
under ``CI=true`` where that is a failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
import urllib.request
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path

import jwt
import pytest

from pulsewire.server.app import WEB_ROOT

JS_DIR = Path(__file__).parent
PACKAGE_DIR = Path(__file__).resolve().parents[2] / "src" / "pulsewire" / "web"
SCRIPT = str(Path(sys.executable).parent / "pulsewire")
HOST = "127.0.0.1"
SECRET = "js-package-secret-0123456789abcdef"
API_KEY = "js-package-key"
CONFIG = f"""
[hub]
api_key = "{API_KEY}"
token_hmac_secret = "{SECRET}"

[namespaces.chat]
history_size = 10
history_ttl = 300
presence = true
allow_publish = true
"""

pytestmark = pytest.mark.timeout(180)


def unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the JS package tests must run)", pytrace=False)
    pytest.skip(reason)


def run(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def node() -> tuple[str, str]:
    """(node, npm), node 20 or later."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed for the pulsewire.js package tests")
    assert node is not None and npm is not None
    major = int(run(node, "--version", cwd=JS_DIR).stdout.strip().lstrip("v").split(".")[0])
    if major < 20:
        unavailable(f"node 20 or later is needed, this is node {major}")
    return node, npm


@pytest.fixture(scope="module")
def node_modules(node: tuple[str, str]) -> Path:
    """tests/js/node_modules as package-lock.json says (npm ci when it does not match)."""
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    wanted = lock["packages"]["node_modules/typescript"]["version"]
    installed = JS_DIR / "node_modules" / "typescript" / "package.json"
    linked = JS_DIR / "node_modules" / "pulsewire"
    if not (
        installed.is_file()
        and json.loads(installed.read_text())["version"] == wanted
        and linked.resolve() == PACKAGE_DIR.resolve()
    ):
        result = run(node[1], "ci", "--no-audit", "--no-fund", cwd=JS_DIR, timeout=300)
        if result.returncode != 0:
            unavailable(f"npm ci failed in {JS_DIR}: {result.stderr[-2000:]}")
    return JS_DIR / "node_modules"


# ------------------------------------------------------------------------ declarations


@pytest.mark.parametrize("config", ["tsconfig.json", "tsconfig.bundler.json"])
def test_example_type_checks_strictly(node_modules: Path, node: tuple[str, str], config: str):
    tsc = str(node_modules / "typescript" / "bin" / "tsc")
    result = run(node[0], tsc, "--noEmit", "--strict", "-p", config, cwd=JS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_declarations_match_the_module(node_modules: Path, node: tuple[str, str]):
    result = run(node[0], "check_members.mjs", cwd=JS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.startswith("ok: 3 exports"), result.stdout


def test_package_json_describes_the_served_files():
    package = json.loads((PACKAGE_DIR / "package.json").read_text())
    assert package["name"] == "pulsewire"
    assert package["version"] == version("pulsewire")  # one version for both packages
    lock = json.loads((JS_DIR / "package-lock.json").read_text())
    locked = lock["packages"]["../../src/pulsewire/web"]["version"]
    assert locked == package["version"], "run `npm install` in tests/js to update its lock"
    assert package["type"] == "module"
    assert package["exports"]["."] == {"types": "./pulsewire.d.ts", "default": "./pulsewire.js"}
    assert package["types"] == "./pulsewire.d.ts"
    for name in package["files"]:
        assert (WEB_ROOT / name).is_file(), name


# -------------------------------------------------------------- npm pack, install, import


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[int]:
    """A ``pulsewire serve`` subprocess with a ``chat`` namespace; yields its port."""
    config = tmp_path / "pulsewire.toml"
    config.write_text(CONFIG)
    port = free_port()
    proc = subprocess.Popen(
        [SCRIPT, "serve", "--port", str(port), "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the first line that says where it listens
            if line.startswith("listening on"):
                break
        else:
            pytest.fail(f"pulsewire serve exited ({proc.wait()}) without listening")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def api_publish(port: int, channel: str, data: object) -> None:
    request = urllib.request.Request(
        f"http://{HOST}:{port}/api/publish",
        data=json.dumps({"channel": channel, "data": data}).encode(),
        headers={"Authorization": f"apikey {API_KEY}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


@pytest.fixture(scope="module")
def installed(node: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh npm project with the packed package installed and node_client.mjs in it."""
    npm = node[1]
    tmp = tmp_path_factory.mktemp("npm")
    packed = run(npm, "pack", "--json", "--pack-destination", str(tmp), cwd=PACKAGE_DIR)
    assert packed.returncode == 0, packed.stderr
    tarball = tmp / json.loads(packed.stdout)[0]["filename"]
    with tarfile.open(tarball) as tar:
        names = sorted(tar.getnames())
    assert names == ["package/package.json", "package/pulsewire.d.ts", "package/pulsewire.js"]
    app = tmp / "app"
    app.mkdir()
    (app / "package.json").write_text('{"name": "app", "private": true, "type": "module"}')
    result = run(npm, "install", "--no-audit", "--no-fund", str(tarball), cwd=app)
    assert result.returncode == 0, result.stderr
    assert (app / "node_modules" / "pulsewire" / "pulsewire.d.ts").is_file()
    shutil.copy(JS_DIR / "node_client.mjs", app)
    return app


@pytest.mark.parametrize("transport", ["websocket", "longpoll"])
def test_npm_pack_install_and_use_in_node(
    node: tuple[str, str], installed: Path, hub: int, transport: str
):
    node_bin = node[0]
    # Node 22 has a global WebSocket; 20 and 21 behind a flag.
    flags = [] if node_websocket(node_bin) else ["--experimental-websocket"]
    token = jwt.encode({"sub": "node", "exp": time.time() + 600}, SECRET, algorithm="HS256")
    proc = subprocess.Popen(
        [
            node_bin,
            *flags,
            "node_client.mjs",
            f"http://{HOST}:{hub}",
            token,
            "chat:node",
            transport,
        ],
        cwd=installed,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready = json.loads(proc.stdout.readline() or "null")
        if ready is None:
            pytest.fail(f"the node client ended: {proc.communicate(timeout=10)[1]}")
        assert ready == {
            "ready": True,
            "transport": transport,
            "subscription": True,
            "recoverable": True,
        }
        api_publish(hub, "chat:node", {"n": 1})
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.returncode is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert [json.loads(line) for line in out.splitlines()] == [
        {"data": {"n": 1}, "offset": 1},
        {"data": {"from": "node"}, "offset": 2, "published": 2},
        {"clients": 1, "history": [{"n": 1}, {"from": "node"}]},
        {"error": True, "code": 102},
        {"state": "disconnected"},
    ]


def node_websocket(node_bin: str) -> bool:
    result = run(
        node_bin, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)", cwd=JS_DIR
    )
    return result.returncode == 0
