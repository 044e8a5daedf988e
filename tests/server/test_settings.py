"""``[server]`` limits and deadlines of the front door: read from the config file, given to the
server, checked, and kept (with a "restart needed" line) by a reload."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pulsewire.aio.budget import BudgetLimits
from pulsewire.cli import _build_parser, serve_options
from pulsewire.server.http import HttpLimits
from pulsewire.server.limits import ConnectionLimits
from pulsewire.server.main import front_door_changes, load_settings, server_from_settings
from pulsewire.server.reload import apply_settings

KiB, MiB = 1 << 10, 1 << 20

TABLE = """
[server]
max_connections_per_ip = 50
bytes_high_per_connection = 262144
max_bytes_per_connection = 524288
bytes_high_per_ip = 2097152
max_bytes_per_ip = 8388608
head_timeout = 4.0
body_timeout = 12.5
body_min_rate = 2048
idle_timeout = 30.0
send_timeout = 15.0
longpoll_timeout = 20.0
longpoll_idle_timeout = 45.0
"""


def settings_from(tmp_path: Path, text: str, name: str = "pulsewire.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_settings(
        serve_options(_build_parser().parse_args(["serve", "--config", str(path)]))
    )


def test_the_front_door_settings_reach_the_server(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, TABLE)
    assert settings.budget_limits == BudgetLimits(256 * KiB, 512 * KiB, 2 * MiB, 8 * MiB)
    assert settings.limits.max_connections_per_ip == 50
    server = server_from_settings(settings)
    assert server.budgets.limits == settings.budget_limits
    assert server.websocket.budgets is server.budgets  # one budget for every transport
    assert server.http.budgets is server.budgets
    assert server.sse.budgets is server.budgets and server.longpoll.budgets is server.budgets
    limits = server.http.limits
    assert (limits.head_timeout, limits.body_timeout, limits.body_min_rate) == (4.0, 12.5, 2048)
    assert (limits.idle_timeout, limits.send_timeout) == (30.0, 15.0)
    assert (server.longpoll.poll_timeout, server.longpoll.idle_timeout) == (20.0, 45.0)
    assert server.limiter.limits.max_connections_per_ip == 50


def test_the_defaults(tmp_path: Path) -> None:
    settings = settings_from(tmp_path, "[server]\n")
    server = server_from_settings(settings)
    assert server.budgets.limits == BudgetLimits()
    assert server.http.limits == HttpLimits()
    assert server.limiter.limits == ConnectionLimits()
    assert (server.longpoll.poll_timeout, server.longpoll.idle_timeout) == (25.0, 60.0)


def test_budgets_not_set_follow_the_message_limit(tmp_path: Path) -> None:
    """Raising max_message_size alone must not make legal messages stall or be refused."""
    settings = settings_from(tmp_path, "[server]\nmax_message_size = 8388608\n")
    assert settings.budget_limits == BudgetLimits.for_message_size(8 * MiB)
    assert settings.budget_limits.fits(8 * MiB) is None
    assert server_from_settings(settings).budgets.limits == settings.budget_limits
    # A key that is set wins; the others still follow the message limit.
    settings = settings_from(
        tmp_path, "[server]\nmax_message_size = 8388608\nmax_bytes_per_ip = 1073741824\n"
    )
    derived = BudgetLimits.for_message_size(8 * MiB)
    assert settings.budget_limits.address_hard == 1 << 30
    assert settings.budget_limits.connection_hard == derived.connection_hard


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("bytes_high_per_ip = 99999999", "bytes_high_per_ip <= max_bytes_per_ip"),
        ("max_bytes_per_connection = 1000", "bytes_high_per_connection <= max_bytes_per_conn"),
        ("bytes_high_per_connection = 0", "0 < bytes_high_per_connection"),
        ("body_timeout = 0", r"body_timeout must be a number > 0, got 0$"),
        ("send_timeout = -1", r"send_timeout must be a number > 0, got -1$"),
        ("longpoll_idle_timeout = 0", r"longpoll_idle_timeout must be a number > 0"),
        ("body_min_rate = -5", r"body_min_rate must be an integer >= 0, got -5"),
        (
            'port = "abc"',
            r'\[server\] port must be an integer from 0 to 65535, got the string "abc"',
        ),
        ("port = 65536", r"\[server\] port must be an integer from 0 to 65535, got 65536"),
        ('head_timeout = "4"', r"\[server\] head_timeout must be a number"),
        ("demo = 1", r"\[server\] demo must be true or false, got 1"),
        ('max_connections = "10"', r"\[server\] max_connections must be an integer"),
        ("unknwon = 1", r"unknown \[server\] setting\(s\): unknwon$"),
        ("idle_timout = 1", r"idle_timout \(did you mean idle_timeout\?\)"),
    ],
)
def test_bad_values_are_refused_with_their_name(tmp_path: Path, line: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        settings_from(tmp_path, f"[server]\n{line}\n")


def test_server_table_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'pulsewire.toml'}: unknown \[server\]"):
        settings_from(tmp_path, "[server]\nfoo = 1\n")


def test_a_reload_keeps_the_running_limits_and_says_a_restart_is_needed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    current = settings_from(tmp_path, "[server]\n", "a.toml")
    new = settings_from(tmp_path, TABLE, "b.toml")
    assert front_door_changes(current, new) == sorted(
        [
            "max_connections_per_ip",
            "bytes_high_per_connection",
            "max_bytes_per_connection",
            "bytes_high_per_ip",
            "max_bytes_per_ip",
            "head_timeout",
            "body_timeout",
            "body_min_rate",
            "idle_timeout",
            "send_timeout",
            "longpoll_timeout",
            "longpoll_idle_timeout",
        ]
    )
    assert front_door_changes(current, current) == []
    server = server_from_settings(current)
    with caplog.at_level(logging.WARNING, logger="pulsewire.server"):
        kept = apply_settings(server, current, new)
    assert (
        "restart needed for body_min_rate, body_timeout, bytes_high_per_connection," in caplog.text
    )
    assert kept.budget_limits == current.budget_limits and kept.limits == current.limits
    assert kept.send_timeout == current.send_timeout
    assert server.http.limits == HttpLimits()


def test_settings_load_from_a_plain_mapping(tmp_path: Path) -> None:
    """The node runner takes a mapping (or ServeOptions), not the command line's Namespace."""
    path = tmp_path / "pulsewire.toml"
    path.write_text(TABLE)
    settings = load_settings(
        {"config": str(path), "port": 9001, "allowed_origins": ["https://a.example"]}
    )
    assert settings.port == 9001 and settings.allowed_origins == ("https://a.example",)
    assert settings.budget_limits == BudgetLimits(256 * KiB, 512 * KiB, 2 * MiB, 8 * MiB)
    with pytest.raises(ValueError, match="unknown serve option"):
        load_settings({"prot": 9001})


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("server = 5\n", r"\[server\] must be a table"),
        ("proxy = 5\n", r"\[proxy\] must be a table"),
        ("[proxy]\nurl = 5\n", r"\[proxy\]"),
    ],
)
def test_server_and_proxy_tables_errors_name_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(ValueError, match=rf"^{tmp_path / 'pulsewire.toml'}: .*{message}"):
        settings_from(tmp_path, text)


def test_backpressure_settings_come_from_flags_environment_and_file(tmp_path: Path) -> None:
    path = tmp_path / "pulsewire.toml"
    path.write_text("[hub]\noverload_lag = 0.25\noverload_wait = 1.5\n")
    from_file = load_settings({"config": str(path)}, environ={}).config
    assert (from_file.overload_lag, from_file.overload_wait) == (0.25, 1.5)
    environ = {"PULSEWIRE_OVERLOAD_LAG": "0.75", "PULSEWIRE_OVERLOAD_WAIT": "0"}
    from_env = load_settings({"config": str(path)}, environ=environ).config
    assert (from_env.overload_lag, from_env.overload_wait) == (0.75, 0.0)
    argv = ["serve", "--config", str(path), "--overload-lag", "0", "--overload-wait", "3"]
    from_flags = load_settings(serve_options(_build_parser().parse_args(argv)), environ).config
    assert (from_flags.overload_lag, from_flags.overload_wait) == (0.0, 3.0)  # 0: off
    path.write_text("[hub]\noverload_lag = -1\n")
    with pytest.raises(ValueError, match="overload_lag"):
        load_settings({"config": str(path)}, environ={})
