"""The documentation site (mkdocs.yml) builds with ``--strict``, as ``make docs`` does.

A warning fails the build: a broken link or anchor between pages, a link to a repository
file that is not there, a page missing from the nav, a docstring mkdocstrings cannot render.
The build runs once (about 10 s); the tests then look at what it made. The hooks of
``scripts/docs_hooks.py`` and the docstring rewriting of ``scripts/docs_griffe.py`` are
tested on their own below, without a build.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"


def load_script(name: str) -> ModuleType:
    """A module of scripts/, imported by path (scripts/ is not a package)."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def needs_mkdocs() -> None:
    """Skip without the docs extra, or fail on CI where `make test` installs it."""
    if MKDOCS.exists():
        return
    message = f"mkdocs is not installed at {MKDOCS}: pip install -e '.[docs]'"
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    needs_mkdocs()
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run(
        [str(MKDOCS), "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=180,
        env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr}"
    return out


def page(site: Path, name: str) -> str:
    return (site / name / "index.html").read_text()


def test_api_reference_from_docstrings(site: Path) -> None:
    hub = page(site, "reference/hub")
    assert 'id="pulsewire.hub.Hub"' in hub
    assert 'id="pulsewire.hub.Hub.publish"' in hub
    assert "Who a connection is" in hub  # Credentials' docstring
    client = page(site, "reference/client")
    assert 'id="pulsewire.client.Client"' in client
    assert 'id="pulsewire.client.sync"' in client
    for name in ("aio", "sync", "protocol"):
        assert f'id="pulsewire.{name}"' in page(site, f"reference/{name}")
    # reST roles were turned into code spans, not shown as ":class:`Hub`".
    for html in (site / "reference").rglob("*.html"):
        assert not re.search(r":(class|meth|func|attr|mod|data):`", html.read_text()), html


def test_cli_reference_is_the_parsers_help(site: Path) -> None:
    cli = page(site, "reference/cli")
    for command in ("echo", "connect", "serve"):
        assert f"usage: pulsewire {command} " in cli
    assert "&lt;!-- cli-help --&gt;" not in cli and "cli-help" not in cli


def test_sequence_diagrams_are_mermaid(site: Path) -> None:
    flows = page(site, "flows")
    assert flows.count('<pre class="mermaid">') == 3
    assert "sequenceDiagram" in flows


def test_links_to_repository_files_work_on_the_site(site: Path) -> None:
    deployment = page(site, "deployment")
    assert 'href="../source/deploy/nginx/pulsewire.conf"' in deployment
    copy = site / "source" / "deploy" / "nginx" / "pulsewire.conf"
    assert copy.read_bytes() == (ROOT / "deploy" / "nginx" / "pulsewire.conf").read_bytes()
    # A folder link goes to a page listing the folder's files.
    listing = page(site, "source/tests/fuzz")
    assert 'href="test_wire_fuzz.py"' in listing
    assert (site / "source" / "tests" / "fuzz" / "test_wire_fuzz.py").is_file()


# The hooks and the docstring rewriting, without a build.


def test_repo_links_rewritten_relative_to_the_page() -> None:
    hooks = load_script("docs_hooks")
    links = hooks.RepoLinks()
    text = "See [nginx](../deploy/nginx/pulsewire.conf#L3) and [the API](protocol.md#tokens).\n"
    assert links.rewrite(text, "deployment.md") == (
        "See [nginx](source/deploy/nginx/pulsewire.conf#L3) and [the API](protocol.md#tokens).\n"
    )
    nested = links.rewrite("[toml](../../deploy/pulsewire.example.toml)", "reference/x.md")
    assert nested == "[toml](../source/deploy/pulsewire.example.toml)"
    assert links.files == {"deploy/nginx/pulsewire.conf", "deploy/pulsewire.example.toml"}
    assert links.rewrite("[fuzz](../tests/fuzz)", "fuzzing.md") == (
        "[fuzz](source/tests/fuzz/index.md)"
    )
    assert links.folders == {"tests/fuzz"}


def test_repo_links_in_code_blocks_left_alone() -> None:
    hooks = load_script("docs_hooks")
    text = "```text\n[a](../deploy/nope)\n```\n~~~~\n```\n[b](../nope)\n~~~~\n"
    assert hooks.RepoLinks().rewrite(text, "deployment.md") == text


def test_broken_repo_link_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    hooks = load_script("docs_hooks")
    text = "[gone](../deploy/no-such-file.conf) [out](../../etc/passwd)"
    with caplog.at_level(logging.WARNING, logger="mkdocs.hooks.pulsewire"):
        assert hooks.RepoLinks().rewrite(text, "deployment.md") == text
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert "deploy/no-such-file.conf" in warnings[0] and "git does not track" in warnings[0]


def test_cli_reference_lists_every_command() -> None:
    hooks = load_script("docs_hooks")
    text = hooks.cli_reference()
    assert text.startswith("## `pulsewire`\n\n```text\nusage: pulsewire ")
    commands = re.findall(r"^## `pulsewire (\w+)`$", text, flags=re.MULTILINE)
    assert {"echo", "connect", "serve"} <= set(commands)


def test_rest_roles_become_code_spans() -> None:
    griffe_ext = load_script("docs_griffe")
    text = ":class:`~pulsewire.hub.Hub` and :meth:`Client.close`, :py:func:`run`. For example::"
    assert griffe_ext.markdown(text) == "`Hub` and `Client.close`, `run`. For example:"
    assert griffe_ext.markdown("Usage:\n\n::\n\n    x = 1\n") == "Usage:\n\n\n\n    x = 1\n"
