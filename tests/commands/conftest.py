"""Running ``pulsewire`` as people do: a subprocess of the installed console script (or
``python -m pulsewire``), its exit status, stdout and stderr.

* ``run_cli(*args, stdin=b"", module=False)``: run to the end (20 s at most) and return a
  :class:`Ran` (status, stdout, stderr lines).
* ``echo_server``: a ``pulsewire echo --port 0`` subprocess and the ws:// URL it printed.
* ``certificate``: a self-signed certificate for 127.0.0.1 (cert.pem, key.pem).
"""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

SCRIPT = str(Path(sys.executable).parent / "pulsewire")
TIMEOUT = 20.0  # a cold interpreter on a busy machine


@dataclass
class Ran:
    status: int
    out: list[str]
    err: list[str]

    def one_error_line(self, command: str) -> str:
        """The single stderr line (there must be exactly one, and no traceback)."""
        assert len(self.err) == 1, self.err
        assert self.err[0].startswith(f"pulsewire {command}: "), self.err
        return self.err[0]


RunCli = Callable[..., Awaitable[Ran]]


@pytest.fixture
def run_cli() -> RunCli:
    async def run(*args: str, stdin: bytes = b"", module: bool = False) -> Ran:
        command = [sys.executable, "-m", "pulsewire"] if module else [SCRIPT]
        proc = await asyncio.create_subprocess_exec(
            *command,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(stdin), TIMEOUT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode is not None
        return Ran(proc.returncode, out.decode().splitlines(), err.decode().splitlines())

    return run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def start_echo(*args: str) -> tuple[asyncio.subprocess.Process, str]:
    """``pulsewire echo --port 0 ARGS`` and the URL of its ready line."""
    proc = await asyncio.create_subprocess_exec(
        SCRIPT,
        "echo",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = (await asyncio.wait_for(proc.stdout.readline(), TIMEOUT)).decode().strip()
    if not line.startswith("listening on "):
        proc.kill()
        raise AssertionError(f"pulsewire echo: {line} {(await proc.stderr.read()).decode()}")
    return proc, line.removeprefix("listening on ")


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


@pytest.fixture
async def echo_server() -> AsyncIterator[str]:
    proc, url = await start_echo()
    try:
        yield url
    finally:
        await stop(proc)


@pytest.fixture(scope="session")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    built = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(private, hashes.SHA256())
    )
    cert.write_bytes(built.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key
