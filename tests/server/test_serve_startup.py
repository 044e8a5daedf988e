"""``pulsewire serve`` as a subprocess: the start-up summary and the warning when no client
could connect (stderr), and config errors refused before it listens (exit 2, one line
naming the file and the key)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

import pytest

from .test_serve_cli import START_TIMEOUT, free_port, start

pytestmark = pytest.mark.timeout(60)


async def serve_until_ready(
    *args: str, environ: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """Run ``pulsewire serve ARGS`` (with a free ``--port`` unless ARGS has one) until its
    ready line, stop it: (stdout, stderr) lines."""
    port = () if "--port" in args else ("--port", str(free_port()))
    proc = await start(*port, *args, environ=environ)
    assert proc.stdout is not None and proc.stderr is not None
    out: list[str] = []
    try:
        while not out or not out[-1].startswith("listening on"):
            raw = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT)
            if not raw:
                raise AssertionError((await proc.stderr.read()).decode())
            out.append(raw.decode().rstrip("\n"))
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 0
    return out, err.decode().splitlines()


def logged(lines: list[str], level: str) -> list[str]:
    """The messages of the log lines of ``level`` from the pulsewire.server logger."""
    marker = f" {level} pulsewire.server: "
    return [line.split(marker, 1)[1] for line in lines if marker in line]


async def test_a_bare_serve_summarises_and_warns_that_no_client_can_connect() -> None:
    out, err = await serve_until_ready()
    assert out[-1].startswith("listening on http://127.0.0.1:")  # unchanged, on stdout
    info = logged(err, "INFO")
    assert info[:5] == [
        "engine: memory",
        "HTTP API: off (no api key set)",
        "auth: none",
        "allowed origins: none besides the node's own",
        "config file: none (flags and defaults)",
    ]
    (warning,) = logged(err, "WARNING")
    assert warning.startswith("NO CLIENT CAN CONNECT: no token key and no anonymous access")
    assert "--token-secret" in warning and "--allow-anonymous" in warning


async def test_the_summary_names_what_was_configured(tmp_path: Path) -> None:
    config = tmp_path / "pulsewire.toml"
    config.write_text('[hub]\napi_key = "k"\ntoken_hmac_secret = "s-0123456789abcdef-0123456789"\n')
    _, err = await serve_until_ready(
        "--config",
        str(config),
        "--allow-anonymous",
        "--allowed-origin",
        "https://app.example",
        "--engine",
        "memory",
    )
    info = logged(err, "INFO")
    assert "HTTP API: on (/api/, Authorization: apikey)" in info
    assert "auth: token secret (HS256), anonymous" in info
    assert "allowed origins: https://app.example" in info
    assert f"config file: {config}" in info
    assert logged(err, "WARNING") == []


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        (
            '[server]\nport = "abc"\n',
            '[server] port must be an integer from 0 to 65535, got the string "abc"',
        ),
        ("[server]\nport = 70000\n", "[server] port must be an integer from 0 to 65535, got 70000"),
        ("[server]\nprot = 8000\n", "unknown [server] setting(s): prot (did you mean port?)"),
        (
            '[namespaces.chat]\nhistory_size = "10"\nhistory_ttl = 60\n',
            '[namespaces.chat] history_size must be an integer, got the string "10"',
        ),
        ("[hub]\nallow_anonymous = 1\n", "[hub] allow_anonymous must be true or false, got 1"),
        ("[server\nport = 1\n", "not valid TOML: "),  # then the parser's words, "(at line 1"
    ],
)
async def test_a_bad_config_is_refused_before_listening(
    tmp_path: Path, toml: str, message: str
) -> None:
    config = tmp_path / "pulsewire.toml"
    config.write_text(toml)
    proc = await start("--config", str(config), "--port", str(free_port()))
    out, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    assert proc.returncode == 2
    assert out == b""
    (line,) = err.decode().splitlines()
    assert line.startswith(f"pulsewire serve: {config}: {message}"), line


async def test_the_environment_between_the_flags_and_the_file(tmp_path: Path) -> None:
    """flag > PULSEWIRE_* variable > config file, end to end; unknown variables warned."""
    ports = [free_port() for _ in range(3)]
    config = tmp_path / "pulsewire.toml"
    config.write_text(
        f'[server]\nport = {ports[0]}\nallowed_origins = ["https://file.example"]\n'
        '[hub]\nengine = "memory"\n'
    )
    environ = {
        "PULSEWIRE_PORT": str(ports[1]),
        "PULSEWIRE_ALLOWED_ORIGINS": "https://env.example,https://b.example",
        "PULSEWIRE_ALLOW_ANONYMOUS": "true",
        "PULSEWIRE_PROT": "1",
    }
    out, err = await serve_until_ready(
        "--config", str(config), "--port", str(ports[2]), environ=environ
    )
    assert out[-1] == f"listening on http://127.0.0.1:{ports[2]}/"
    info = logged(err, "INFO")
    assert "allowed origins: https://env.example, https://b.example" in info
    assert "auth: anonymous" in info
    assert (
        "environment: PULSEWIRE_ALLOWED_ORIGINS, PULSEWIRE_ALLOW_ANONYMOUS, PULSEWIRE_PORT" in info
    )
    assert logged(err, "WARNING") == [
        "unknown environment variable(s), ignored: PULSEWIRE_PROT (did you mean "
        "PULSEWIRE_PORT?) (see docs/configuration.md)"
    ]


async def test_a_bad_variable_is_refused_before_listening() -> None:
    proc = await start("--port", str(free_port()), environ={"PULSEWIRE_MAX_CONNECTIONS": "many"})
    out, err = await asyncio.wait_for(proc.communicate(), START_TIMEOUT)
    assert (proc.returncode, out) == (2, b"")
    assert err.decode().splitlines() == [
        'pulsewire serve: PULSEWIRE_MAX_CONNECTIONS must be an integer >= 0, got "many"'
    ]
