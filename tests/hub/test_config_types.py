"""pulsewire.toml's hub tables are type-checked when read: the file, the table, the key and
what was expected are named; nothing wrong reaches a running hub (``history_size = "10"``
used to make every publish a 500)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pulsewire.hub.config import ChannelOptions, HubConfig, config_from_dict, load_config
from pulsewire.hub.config_types import check_types, field_types, unknown_keys


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        ("10", int, 'key must be an integer, got the string "10"'),
        (True, int, "key must be an integer, got true"),
        (1.5, int, "key must be an integer, got 1.5"),
        ("1", float, 'key must be a number, got the string "1"'),
        (1, bool, "key must be true or false, got 1"),
        (3, str, "key must be a string, got 3"),
        (3, str | None, "key must be a string, got 3"),
        (["a", 1], tuple[str, ...], "key[1] must be a string, got 1"),
        ("a", list[str], 'key must be a list of strings, got the string "a"'),
        ({"a": 1}, str, "key must be a string, got a table"),
    ],
)
def test_a_value_of_the_wrong_type_is_named(value: Any, hint: Any, expected: str) -> None:
    with pytest.raises(ValueError) as refused:
        check_types({"key": value}, {"key": hint}, "[t]")
    assert str(refused.value) == f"[t] {expected}"


@pytest.mark.parametrize(
    ("value", "hint"),
    [(3, int), (3, float), (2.5, float), (False, bool), ("x", str | None), (["a"], list[str])],
)
def test_values_of_the_right_type_pass(value: Any, hint: Any) -> None:
    check_types({"key": value, "unhinted": object()}, {"key": hint}, "[t]")


def test_unknown_keys_suggest_a_near_miss() -> None:
    assert unknown_keys({"histroy_size", "zzz"}, ["history_size", "presence"]) == (
        "histroy_size (did you mean history_size?), zzz"
    )


def test_every_config_field_has_a_type_toml_can_be_checked_against() -> None:
    assert field_types(ChannelOptions)["history_size"] is int
    hints = field_types(HubConfig)
    assert hints["client_commands_per_second"] == float | None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"namespaces": {"chat": {"history_size": "10"}}}, "[namespaces.chat] history_size"),
        ({"channel": {"presence": "yes"}}, "[channel] presence must be true or false"),
        ({"connect_timeout": "10"}, "[hub] connect_timeout must be a number"),
        ({"namespaces": {"chat": 3}}, "[namespaces.chat] must be a table"),
        ({"namespaces": 3}, "[namespaces] must be a table of tables"),
        ({"channel": {"histroy_size": 1}}, "histroy_size (did you mean history_size?)"),
    ],
)
def test_config_from_dict_refuses_with_the_table_and_key(
    data: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError) as refused:
        config_from_dict(data)
    assert message in str(refused.value)


def test_load_config_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "pulsewire.toml"
    path.write_text('[namespaces.chat]\nhistory_size = "10"\n')
    with pytest.raises(ValueError, match=rf"^{path}: \[namespaces.chat\] history_size"):
        load_config(str(path))
    path.write_text("[hub\n")
    with pytest.raises(ValueError, match=rf"^{path}: not valid TOML: "):
        load_config(str(path))
    path.write_text("[namespaces.chat]\nhistory_size = 10\nhistory_ttl = 60\n[server]\nport = 1\n")
    config, server = load_config(str(path))
    assert config.namespaces["chat"].history and server == {"port": 1}
