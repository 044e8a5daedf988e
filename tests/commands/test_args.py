"""The conventions of every subcommand, one layer down: argument types, one-line usage errors
(exit 2) and the defaults shown by ``--help``."""

from __future__ import annotations

import argparse

import pytest

from pulsewire.cli import _build_parser, main
from pulsewire.commands.args import (
    DefaultsFormatter,
    non_negative_seconds,
    os_reason,
    port,
    positive_int,
    size,
)


@pytest.mark.parametrize(("text", "value"), [("0", 0), ("8000", 8000), ("65535", 65535)])
def test_port_accepts_0_to_65535(text: str, value: int) -> None:
    assert port(text) == value


@pytest.mark.parametrize("text", ["70000", "65536", "-1", "abc", "", "80.5"])
def test_port_refuses_the_rest_saying_what_it_expected(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=r"expected a port number 0-65535"):
        port(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("1048576", 1 << 20),
        ("64KiB", 64 << 10),
        ("16MiB", 16 << 20),
        ("1.5k", 1536),
        ("2GiB", 2 << 30),
        ("none", None),
        ("0", None),
        ("unlimited", None),
    ],
)
def test_size(text: str, value: int | None) -> None:
    assert size(text) == value


@pytest.mark.parametrize("text", ["abc", "-5", "MiB", "nanMiB", "inf"])
def test_size_refuses_nonsense(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="expected a size"):
        size(text)


def test_counts_and_seconds() -> None:
    assert positive_int("3") == 3
    assert non_negative_seconds("0") == 0.0 and non_negative_seconds("2.5") == 2.5
    for bad in ("0", "-2", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="positive integer"):
            positive_int(bad)
    for bad in ("-1", "nan", "inf", "x"):
        with pytest.raises(argparse.ArgumentTypeError, match="seconds >= 0"):
            non_negative_seconds(bad)


def test_os_reason_drops_the_errno() -> None:
    assert os_reason(ConnectionRefusedError(111, "Connect call failed")) == "connection refused"
    assert os_reason(OSError("plain text")) == "plain text"


@pytest.mark.parametrize(
    "argv",
    [
        ["echo", "--port", "70000"],
        ["serve", "--port", "-1"],
        ["serve", "--workers", "0"],
        ["serve", "--drain-timeout", "soon"],
        ["connect", "ws://h/", "--linger", "-1"],
        ["echo", "--max-size", "big"],
        ["serve", "--no-such-flag"],
        ["nosuch"],
    ],
)
def test_a_usage_error_is_one_line_and_exits_2(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("pulsewire") and lines[0].endswith("--help)"), err


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (group,) = (a for a in _build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(group.choices)


def test_help_shows_every_default() -> None:
    """Every option with a default says it (ours or the formatter's); ``serve`` options
    whose default lives in the config file say it in their help text."""
    missing = []
    for name, parser in subcommands().items():
        formatter = DefaultsFormatter(parser.prog)
        for action in parser._actions:
            if not action.option_strings or action.dest == "help":
                continue
            shown = formatter._get_help_string(action)
            has_default = action.default not in (None, False, [], argparse.SUPPRESS)
            if has_default and "default" not in shown:
                missing.append(f"{name} {action.option_strings[0]}")
    assert not missing, missing
    serve = subcommands()["serve"].format_help()
    for text in ("default 127.0.0.1", "default 8000", "memory (default)", "default: random"):
        assert text in " ".join(serve.split()), text
    assert "(default: one process)" in " ".join(serve.split())
    assert "(default: 8765)" in subcommands()["echo"].format_help()
