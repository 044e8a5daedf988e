"""``pulsewire echo`` and ``pulsewire connect`` (and ``python -m pulsewire``) as subprocesses:
usage errors exit 2 and runtime errors 1, each as one line on stderr naming what failed."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

import pulsewire

from .conftest import RunCli, free_port, start_echo, stop

pytestmark = pytest.mark.timeout(60)


async def test_python_m_pulsewire_is_the_command(run_cli: RunCli) -> None:
    ran = await run_cli("--version", module=True)
    assert (ran.status, ran.out) == (0, [f"pulsewire {pulsewire.__version__}"])
    ran = await run_cli("echo", "--port", "70000", module=True)
    assert ran.status == 2
    assert "expected a port number 0-65535, got '70000'" in ran.one_error_line("echo")


@pytest.mark.parametrize("command", ["echo", "serve"])
@pytest.mark.parametrize("value", ["70000", "-1", "abc"])
async def test_a_bad_port_is_a_usage_error(run_cli: RunCli, command: str, value: str) -> None:
    ran = await run_cli(command, "--port", value)
    assert ran.status == 2
    assert ran.out == []  # not "listening on" some other port
    assert f"argument --port: expected a port number 0-65535, got '{value}'" in (
        ran.one_error_line(command)
    )


async def test_echo_on_a_busy_port_says_so_in_one_line(run_cli: RunCli) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        ran = await run_cli("echo", "--port", str(port))
    assert ran.status == 1
    line = ran.one_error_line("echo")
    assert line == f"pulsewire echo: cannot listen on 127.0.0.1:{port}: address already in use"


async def test_echo_sends_back_messages_and_the_close_code_and_reason(echo_server: str) -> None:
    async with pulsewire.connect(echo_server) as ws:
        await ws.send("hello")
        assert await ws.recv() == "hello"
        await ws.close(4001, "see you")
    assert (ws.close_code, ws.close_reason) == (4001, "see you")


async def test_echo_with_an_unreadable_certificate_is_a_usage_error(
    run_cli: RunCli, tmp_path: Path
) -> None:
    ran = await run_cli("echo", "--port", "0", "--tls-cert", str(tmp_path / "none.pem"))
    assert ran.status == 2
    assert "cannot load the TLS certificate from" in ran.one_error_line("echo")


async def test_connect_sends_lines_and_prints_replies(run_cli: RunCli, echo_server: str) -> None:
    ran = await run_cli("connect", echo_server, stdin=b"one\ntwo\n")
    assert (ran.status, ran.out, ran.err) == (0, ["one", "two"], [])


async def test_connect_to_a_closed_port_names_the_address(run_cli: RunCli) -> None:
    port = free_port()
    ran = await run_cli("connect", f"ws://127.0.0.1:{port}/")
    assert ran.status == 1
    line = ran.one_error_line("connect")
    assert line == f"pulsewire connect: cannot connect to 127.0.0.1:{port}: connection refused"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["http://127.0.0.1/"], "expected a ws:// or wss:// URL, got 'http://127.0.0.1/'"),
        (["ws://127.0.0.1:99999/"], "invalid URL 'ws://127.0.0.1:99999/'"),
        (["ws://h/", "--header", "nocolon"], "invalid header 'nocolon'"),
        (["wss://h/", "--cafile", "/nonexistent.pem"], "cannot read --cafile /nonexistent.pem"),
    ],
)
async def test_connect_usage_errors(run_cli: RunCli, args: list[str], message: str) -> None:
    ran = await run_cli("connect", *args)
    assert ran.status == 2
    assert message in ran.one_error_line("connect")


async def test_connect_to_a_self_signed_server_hints_at_cafile_and_insecure(
    run_cli: RunCli, certificate: tuple[Path, Path]
) -> None:
    cert, key = certificate
    proc, url = await start_echo("--tls-cert", str(cert), "--tls-key", str(key))
    try:
        assert url.startswith("wss://127.0.0.1:")
        ran = await run_cli("connect", url, stdin=b"hi\n")
        assert ran.status == 1
        line = ran.one_error_line("connect")
        assert f"TLS handshake with {url[6:-1]} failed: " in line
        assert "--cafile" in line and "--insecure" in line
        # and each of the two ways the hint names works
        for option in (["--cafile", str(cert)], ["--insecure"]):
            ran = await run_cli("connect", url, *option, stdin=b"hi\n")
            assert (ran.status, ran.out, ran.err) == (0, ["hi"], [])
    finally:
        await stop(proc)
