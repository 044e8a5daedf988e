"""The files in deploy/: the example config loads, the systemd units say what the docs say."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pulsewire.cli import _build_parser, serve_options
from pulsewire.server.main import load_settings
from pulsewire.server.workers import STOP_GRACE

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
UNITS = [DEPLOY / "systemd" / "pulsewire.service", DEPLOY / "systemd" / "pulsewire@.service"]


def settings_of(*argv: str):
    return load_settings(serve_options(_build_parser().parse_args(["serve", *argv])))


def directives(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def test_the_example_config_loads():
    settings = settings_of("--config", str(DEPLOY / "pulsewire.example.toml"))
    assert settings.config.engine.startswith("redis://")
    assert settings.config.namespaces["chat"].history
    assert settings.drain_timeout == 10.0
    assert settings.allowed_origins == ("https://app.example.com",)


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_stops_after_the_drain_and_is_hardened(unit: Path):
    found = directives(unit)
    drain = settings_of("--config", str(DEPLOY / "pulsewire.example.toml")).drain_timeout
    assert found["Type"] == ["exec"]
    assert found["KillSignal"] == ["SIGTERM"]
    assert found["KillMode"] == ["mixed"]  # the supervisor forwards SIGTERM to its workers
    assert float(found["TimeoutStopSec"][0]) > drain + STOP_GRACE
    assert found["LimitNOFILE"] == ["1048576"]
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    for option in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "RestrictRealtime"):
        assert found[option] == ["yes"], option
    assert found["ProtectSystem"] == ["strict"]
    assert " serve --config " in found["ExecStart"][0]


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_analyze_verify(unit: Path, tmp_path: Path):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    name = unit.name.replace("@.", "@8001.")
    script = str(Path(sys.executable).parent / "pulsewire")
    text = unit.read_text().replace("/opt/pulsewire/venv/bin/pulsewire", script)
    (tmp_path / name).write_text(text)
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / name)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr
