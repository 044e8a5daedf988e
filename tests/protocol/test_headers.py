"""The header grammars of headers.py: token lists and Sec-WebSocket-Extensions."""

from __future__ import annotations

import pytest

from pulsewire.protocol.headers import format_extension, parse_extension_list, parse_token_list


@pytest.mark.parametrize(
    ("value", "tokens"),
    [
        ("Upgrade", ["Upgrade"]),
        ("keep-alive, Upgrade", ["keep-alive", "Upgrade"]),
        ("a,b,,  ,c", ["a", "b", "c"]),
        ("", []),
        (" \t", []),
    ],
)
def test_token_list(value: str, tokens: list[str]) -> None:
    assert parse_token_list(value) == tokens


@pytest.mark.parametrize("value", ["a b", "a, b c", "x=y", '"quoted"', "a;b"])
def test_token_list_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_token_list(value)


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("permessage-deflate", [("permessage-deflate", [])]),
        (
            "permessage-deflate; client_max_window_bits",
            [("permessage-deflate", [("client_max_window_bits", None)])],
        ),
        (
            "permessage-deflate;server_max_window_bits=10 ;  client_no_context_takeover",
            [
                (
                    "permessage-deflate",
                    [("server_max_window_bits", "10"), ("client_no_context_takeover", None)],
                )
            ],
        ),
        (
            'permessage-deflate; server_max_window_bits="10", x-foo, permessage-deflate',
            [
                ("permessage-deflate", [("server_max_window_bits", "10")]),
                ("x-foo", []),
                ("permessage-deflate", []),
            ],
        ),
        (", a ,, b;c=d ,", [("a", []), ("b", [("c", "d")])]),
    ],
)
def test_extension_list(value: str, parsed: list[object]) -> None:
    assert parse_extension_list(value) == parsed


@pytest.mark.parametrize(
    "value",
    [
        "permessage-deflate;",
        "permessage-deflate; =10",
        "permessage-deflate; a=",
        'permessage-deflate; a="10',
        'permessage-deflate; a="1 0"',
        "permessage-deflate x",
        "permessage-deflate; a=b c",
        ";a",
    ],
)
def test_extension_list_rejects(value: str) -> None:
    with pytest.raises(ValueError):
        parse_extension_list(value)


def test_format_extension_round_trip() -> None:
    params = [("server_no_context_takeover", None), ("client_max_window_bits", "10")]
    value = format_extension("permessage-deflate", params)
    assert value == "permessage-deflate; server_no_context_takeover; client_max_window_bits=10"
    assert parse_extension_list(value) == [("permessage-deflate", params)]
