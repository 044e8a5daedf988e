"""The ``[proxy]`` table (pulsewire.server.proxy.settings): routes from the base URL, per-route
timeouts and URLs, and one line for each bad value; read by ``load_settings``."""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from pulsewire.hub import Hub
from pulsewire.server.app import HubServer
from pulsewire.server.proxy import ProxySettings, RouteSettings, proxy_settings
from pulsewire.server.reload import apply_settings
from pulsewire.server.settings import ServeOptions, load_settings


def test_routes_default_to_the_base_url_plus_their_name() -> None:
    settings = proxy_settings(
        {
            "url": "http://127.0.0.1:9000/pulsewire",
            "timeout": 2,
            "include_headers": ["Authorization", "x-request-id"],
            "include_cookies": ["sessionid"],
            "headers": {"X-Proxy-Secret": "s"},
            "connect": {"timeout": 1.0},
            "rpc": {"url": "https://rpc.example/call"},
            "sub_refresh": {},
        }
    )
    assert settings == ProxySettings(
        routes={
            "connect": RouteSettings("http://127.0.0.1:9000/pulsewire/connect", 1.0),
            "rpc": RouteSettings("https://rpc.example/call", 2.0),
            "sub_refresh": RouteSettings("http://127.0.0.1:9000/pulsewire/sub_refresh", 2.0),
        },
        include_headers=("authorization", "x-request-id"),
        include_cookies=("sessionid",),
        headers=(("X-Proxy-Secret", "s"),),
    )


def test_no_table_no_proxy() -> None:
    assert proxy_settings({}) is None


@pytest.mark.parametrize(
    ("table", "message"),
    [
        ({"url": "http://h/", "connect": {}, "retries": 3}, "unknown [proxy] setting(s): retries"),
        ({"url": "http://h/", "connect": {"tls": 1}}, "unknown [proxy.connect] setting(s): tls"),
        ({"url": "ftp://h/", "connect": {}}, "[proxy] url must be an http:// or https:// URL"),
        ({"url": "http:///x", "connect": {}}, "[proxy] url must be an http:// or https:// URL"),
        ({"connect": {}}, "[proxy.connect] needs a url, or [proxy] url as the base"),
        (
            {"url": "http://h/", "timeout": -1, "connect": {}},
            "[proxy] timeout must be a number > 0, got -1",
        ),
        ({"url": "http://h/", "connect": {"timeout": 0}}, "[proxy.connect] timeout must be"),
        ({"url": "http://h/", "rpc": {"timeout": "2"}}, "[proxy.rpc] timeout must be a number"),
        ({"url": "http://h/"}, "[proxy] enables no route"),
        ({"url": "http://h/", "rpc": True}, "[proxy.rpc] must be a table"),
        ({"url": "http://h/", "rpc": {}, "include_headers": "a"}, "include_headers must be a"),
        (
            {"url": "http://h/", "rpc": {}, "headers": {"a": 1}},
            "[proxy] headers must be a table of strings",
        ),
    ],
)
def test_bad_values_are_one_line(table: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        proxy_settings(table)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_load_settings_reads_the_proxy_table(tmp_path: Path) -> None:
    path = tmp_path / "pulsewire.toml"
    path.write_text('[proxy]\nurl = "http://127.0.0.1:9000/"\n[proxy.subscribe]\n')
    settings = load_settings(ServeOptions(config=str(path)))
    assert settings.proxy is not None
    assert settings.proxy.routes == {
        "subscribe": RouteSettings("http://127.0.0.1:9000/subscribe", 2.0)
    }
    path.write_text('[proxy]\nurl = "http://127.0.0.1:9000/"\n[proxy.subscribe]\ntimeout = -2\n')
    with pytest.raises(
        ValueError, match=r"\[proxy.subscribe\] timeout must be a number > 0, got -2"
    ):
        load_settings(ServeOptions(config=str(path)))


def test_a_reload_keeps_the_proxy_and_says_restart_needed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "pulsewire.toml"
    path.write_text('[proxy]\nurl = "http://127.0.0.1:9000/"\n[proxy.rpc]\n')
    current = load_settings(ServeOptions(config=str(path)))
    path.write_text('[proxy]\nurl = "http://127.0.0.1:9001/"\n[proxy.rpc]\n')
    new = load_settings(ServeOptions(config=str(path)))

    server = HubServer(Hub(current.config))  # not started: apply_settings only sets things
    with caplog.at_level("WARNING", logger="pulsewire.server"):
        kept = apply_settings(server, current, new)
    assert kept.proxy == current.proxy
    assert "restart needed for proxy" in caplog.text


def doc_blocks(language: str, after: str) -> list[str]:
    """The ``language`` code blocks of docs/proxy.md after the heading ``after``."""
    text = (Path(__file__).parents[2] / "docs" / "proxy.md").read_text(encoding="utf-8")
    text = text[text.index(after) :]
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


def test_the_documented_configuration_is_accepted() -> None:
    block = doc_blocks("toml", "## Configuration")[0]
    settings = proxy_settings(tomllib.loads(block)["proxy"])
    assert settings is not None
    assert set(settings.routes) == {
        "connect",
        "refresh",
        "subscribe",
        "publish",
        "rpc",
        "sub_refresh",
    }
    assert settings.routes["connect"] == RouteSettings(
        "http://127.0.0.1:9000/pulsewire/connect", 1.0
    )
    assert settings.routes["rpc"] == RouteSettings("http://127.0.0.1:9001/rpc", 2.0)
