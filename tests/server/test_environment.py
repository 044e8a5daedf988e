"""``PULSEWIRE_*`` environment variables (pulsewire.server.environment): every key of
pulsewire.toml settable, values parsed by the key's type, command-line flag > environment >
config file > default, bad values refused naming the variable, unknown variables reported."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import pytest

from pulsewire.hub import Hub
from pulsewire.hub.config import ChannelOptions, HubConfig
from pulsewire.hub.config_types import field_types
from pulsewire.server.app import HubServer
from pulsewire.server.environment import config_variables, read_environment
from pulsewire.server.proxy import ROUTES, RouteSettings
from pulsewire.server.reload import reload_settings
from pulsewire.server.settings import (
    ENV_TABLES,
    SERVER_KEYS,
    ServeOptions,
    ServerTable,
    load_settings,
)

HUB_KEYS = set(field_types(HubConfig)) - {"channel", "namespaces"}


def sample(hint: Any) -> tuple[str, Any]:
    """A variable's text for a value of type ``hint``, and the value it must give."""
    plain = hint
    while typing.get_origin(plain) in (typing.Annotated, typing.Union, type(int | None)):
        plain = next(a for a in typing.get_args(plain) if a is not type(None))
    if typing.get_origin(plain) in (tuple, list):
        return "a, b", ("a", "b")
    return {bool: ("true", True), int: ("7", 7), float: ("7.5", 7.5)}.get(plain, ("x", "x"))


@pytest.mark.parametrize(
    ("table", "cls"), [("hub", HubConfig), ("server", ServerTable), ("channel", ChannelOptions)]
)
def test_every_key_of_a_table_is_a_variable(table: str, cls: type) -> None:
    keys = {k: h for k, h in field_types(cls).items() if k not in ("channel", "namespaces")}
    prefix = "PULSEWIRE_" if table != "channel" else "PULSEWIRE_CHANNEL__"
    environ = {prefix + key.upper(): sample(hint)[0] for key, hint in keys.items()}
    env = read_environment(environ, ENV_TABLES)
    assert env.unknown == ()
    got = env.document[table]
    for key, hint in keys.items():
        expected = sample(hint)[1]
        assert tuple(got[key]) == expected if isinstance(expected, tuple) else got[key] == expected


def test_hub_and_server_keys_do_not_collide() -> None:
    """A bare name must mean one key."""
    assert HUB_KEYS.isdisjoint(SERVER_KEYS)


@pytest.mark.parametrize(
    ("text", "value"),
    [("true", True), ("FALSE", False), ("1", True), ("0", False)],
)
def test_booleans(text: str, value: bool) -> None:
    settings = load_settings(ServeOptions(), {"PULSEWIRE_ALLOW_ANONYMOUS": text})
    assert settings.config.allow_anonymous is value


@pytest.mark.parametrize(
    "text", ["https://a.example,https://b.example", '["https://a.example", "https://b.example"]']
)
def test_lists_comma_separated_or_json(text: str) -> None:
    settings = load_settings(ServeOptions(), {"PULSEWIRE_ALLOWED_ORIGINS": text})
    assert settings.allowed_origins == ("https://a.example", "https://b.example")


def test_nested_tables_with_double_underscores() -> None:
    settings = load_settings(
        ServeOptions(),
        {
            "PULSEWIRE_NAMESPACES__CHAT__HISTORY_SIZE": "100",
            "PULSEWIRE_NAMESPACES__CHAT__HISTORY_TTL": "60",
            "PULSEWIRE_CHANNEL__PRESENCE": "true",
            "PULSEWIRE_PROXY__URL": "http://127.0.0.1:9000/pw",
            "PULSEWIRE_PROXY__CONNECT__TIMEOUT": "1.5",
            "PULSEWIRE_PROXY__RPC": "{}",  # a route enabled by a whole (empty) table
            "PULSEWIRE_HUB__ENGINE_PREFIX": "app1",
            "PULSEWIRE_SERVER__MAX_CONNECTIONS": "10",
        },
    )
    assert settings.config.namespaces["chat"] == ChannelOptions(history_size=100, history_ttl=60)
    assert settings.config.channel.presence
    assert settings.proxy is not None and set(settings.proxy.routes) == {"connect", "rpc"}
    assert settings.proxy.routes["connect"] == RouteSettings(
        "http://127.0.0.1:9000/pw/connect", 1.5
    )
    assert settings.config.engine_prefix == "app1" and settings.limits.max_connections == 10
    assert set(ROUTES) >= set(settings.proxy.routes)


def test_flag_over_environment_over_file_over_default(tmp_path: Path) -> None:
    path = tmp_path / "pulsewire.toml"
    path.write_text(
        '[server]\nport = 9001\nhost = "127.0.0.2"\nallowed_origins = ["https://file.example"]\n'
        '[hub]\napi_key = "file-key"\nengine_prefix = "file"\n'
        "[namespaces.chat]\nhistory_ttl = 60\npresence = true\n"
    )
    environ = {
        "PULSEWIRE_PORT": "9002",
        "PULSEWIRE_API_KEY": "env-key",
        "PULSEWIRE_ALLOWED_ORIGINS": "https://env.example",
        "PULSEWIRE_NAMESPACES__CHAT__HISTORY_SIZE": "10",
        "PULSEWIRE_CONNECT_TIMEOUT": "3",
    }
    settings = load_settings(ServeOptions(config=str(path), port=9003, api_key="flag"), environ)
    assert (settings.port, settings.config.api_key) == (9003, "flag")  # flag
    assert settings.allowed_origins == ("https://env.example",)  # environment
    assert settings.config.connect_timeout == 3.0  # environment over the default
    assert (settings.host, settings.config.engine_prefix) == ("127.0.0.2", "file")  # file
    assert settings.config.namespaces["chat"] == ChannelOptions(
        presence=True,
        history_size=10,
        history_ttl=60,  # a table merged, key by key
    )
    assert settings.drain_timeout == 10.0  # default
    settings = load_settings(ServeOptions(config=str(path)), environ)
    assert (settings.port, settings.config.api_key) == (9002, "env-key")
    assert settings.environment == tuple(sorted(environ))


def test_the_existing_admin_password_variable_still_wins_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pulsewire.toml"
    path.write_text('[server]\nadmin_password = "from-file"\n')
    options = ServeOptions(config=str(path))
    assert load_settings(options, {}).admin_password == "from-file"
    env = {"PULSEWIRE_ADMIN_PASSWORD": "from-env"}
    assert load_settings(options, env).admin_password == "from-env"
    assert load_settings(options, {"PULSEWIRE_ADMIN_PASSWORD": ""}).admin_password == "from-file"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"PULSEWIRE_PORT": "abc"}, 'PULSEWIRE_PORT must be an integer from 0 to 65535, got "abc"'),
        ({"PULSEWIRE_PORT": "70000"}, "PULSEWIRE_PORT must be an integer from 0 to 65535"),
        ({"PULSEWIRE_DEMO": "yes"}, 'PULSEWIRE_DEMO must be true or false, got "yes"'),
        (
            {"PULSEWIRE_NAMESPACES__CHAT__HISTORY_SIZE": "1.5"},
            'PULSEWIRE_NAMESPACES__CHAT__HISTORY_SIZE must be an integer, got "1.5"',
        ),
        (
            {"PULSEWIRE_RATE_LIMIT_POLICY": "kick"},
            'PULSEWIRE_RATE_LIMIT_POLICY (environment): [hub] rate_limit_policy must be "',
        ),
        (
            {"PULSEWIRE_PROXY__URL": "http://h/", "PULSEWIRE_PROXY__CONNECT": '{"tls": 1}'},
            "PULSEWIRE_PROXY__CONNECT (environment): unknown [proxy.connect] setting(s): tls",
        ),
        ({"PULSEWIRE_PROXY__HEADERS": "{"}, "PULSEWIRE_PROXY__HEADERS must be a table (JSON)"),
        (
            {"PULSEWIRE_AUTH_FAILURES_TRUSTED_PROXIES": "[1]"},
            "PULSEWIRE_AUTH_FAILURES_TRUSTED_PROXIES must be a list of strings",
        ),
    ],
)
def test_a_bad_value_names_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ValueError) as refused:
        load_settings(ServeOptions(), environ)
    assert str(refused.value).startswith(message), str(refused.value)


def test_a_bad_file_value_still_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pulsewire.toml"
    path.write_text('[hub]\nrate_limit_policy = "kick"\n')
    with pytest.raises(ValueError, match=rf"^{path}: \[hub\] rate_limit_policy must be"):
        load_settings(ServeOptions(config=str(path)), {"PULSEWIRE_PORT": "1"})


def test_unknown_variables_are_reported_not_refused() -> None:
    settings = load_settings(
        ServeOptions(),
        {
            "PULSEWIRE_PROT": "1",
            "PULSEWIRE_NAMESPACES__CHAT__HISTROY_SIZE": "1",
            "PULSEWIRE_NO_EXTENSIONS": "1",  # read elsewhere: not unknown
            "PULSEWIRE_LOG_LEVEL": "DEBUG",
            "OTHER": "x",
        },
    )
    assert settings.unknown_environment == (
        "PULSEWIRE_NAMESPACES__CHAT__HISTROY_SIZE (did you mean "
        "PULSEWIRE_NAMESPACES__CHAT__HISTORY_SIZE?)",
        "PULSEWIRE_PROT (did you mean PULSEWIRE_PORT?)",
    )
    assert settings.port == 8000 and settings.environment == ()


def test_a_reload_reads_the_file_again_and_the_environment_still_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGHUP re-reads the file; the process's environment is read again too (it does not
    change while the process runs), so a variable keeps winning over the file."""
    path = tmp_path / "pulsewire.toml"
    path.write_text('[hub]\napi_key = "one"\nconnect_timeout = 5\n')
    monkeypatch.setenv("PULSEWIRE_API_KEY", "from-env")
    args = ServeOptions(config=str(path))
    current = load_settings(args)
    server = HubServer(Hub(current.config))  # not started: a reload only sets things
    path.write_text('[hub]\napi_key = "two"\nconnect_timeout = 7\n')
    new = reload_settings(server, args, current)
    assert (new.config.api_key, new.config.connect_timeout) == ("from-env", 7.0)
    assert server.hub.config.connect_timeout == 7.0


def test_a_file_value_where_a_table_belongs_is_not_hidden_by_a_variable(tmp_path: Path) -> None:
    path = tmp_path / "pulsewire.toml"
    path.write_text("server = 5\n")
    with pytest.raises(ValueError, match=rf"^{path}: \[server\] must be a table$"):
        load_settings(ServeOptions(config=str(path)), {"PULSEWIRE_PORT": "1"})


def test_config_variables_are_named_without_reading_their_values() -> None:
    environ = {"PULSEWIRE_PORT": "abc", "PULSEWIRE_CHROMIUM": "/x", "PULSEWIRE_NO_UVLOOP": "1"}
    assert config_variables(environ, ENV_TABLES) == ["PULSEWIRE_PORT"]
