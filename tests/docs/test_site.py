"""The documentation site (mkdocs.yml) builds with ``--strict``, as ``make docs`` does.

A warning fails the build: a broken link or anchor between pages, a link to a repository
file that is not there, a page missing from the nav, a docstring mkdocstrings cannot render.
The build runs once (about 10 s); the tests then look at what it made. The hooks of
``scripts/docs_hooks.py`` and the docstring rewriting of ``scripts/docs_griffe.py`` are
tested on their own below, without a build.

The site draws ```` ```mermaid ```` blocks in the browser, as GitHub does, so a diagram
that does not parse would show only on the page. Every one in README.md and docs/ is parsed
with mermaid itself, in Node (``tests/docs/mermaid``: ``npm ci`` of its lock on first use,
about 20 s); without node and npm that test is skipped, failed under ``CI=true``.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
MKDOCS = Path(sys.executable).parent / "mkdocs"
MERMAID_DIR = Path(__file__).resolve().parent / "mermaid"


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


def unavailable(message: str) -> None:
    """Skip the test, or fail it under CI=true, where everything it needs is installed."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def needs_mkdocs() -> None:
    if not MKDOCS.exists():
        unavailable(f"mkdocs is not installed at {MKDOCS}: pip install -e '.[docs]'")


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
    # reST roles were turned into code spans, not shown as ":class:`Hub`" (which Markdown
    # makes ":class:<code>Hub</code>").
    for html in (site / "reference").rglob("*.html"):
        shown = re.search(r":(class|meth|func|attr|mod|data|exc):(`|<code>)", html.read_text())
        assert shown is None, f"{html}: {shown.group(0)}"


def test_cli_reference_is_the_parsers_help(site: Path) -> None:
    cli = page(site, "reference/cli")
    for command in ("echo", "connect", "serve"):
        assert f"usage: pulsewire {command} " in cli
    assert "&lt;!-- cli-help --&gt;" not in cli and "cli-help" not in cli


def test_sequence_diagrams_are_mermaid(site: Path) -> None:
    flows = page(site, "flows")
    assert flows.count('<pre class="mermaid">') == 3
    assert "sequenceDiagram" in flows


def test_a_repeated_heading_has_githubs_anchor(site: Path) -> None:
    # protocol.md has "### subscribe" under Commands and under Pushes; it links #subscribe-1.
    protocol = page(site, "protocol")
    assert 'id="subscribe"' in protocol and 'id="subscribe-1"' in protocol
    assert 'href="#subscribe-1"' in protocol and "subscribe_1" not in protocol


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


def test_repeated_ids_numbered_as_on_github() -> None:
    import markdown

    hooks = load_script("docs_hooks")
    md = markdown.Markdown(extensions=["toc", hooks.GitHubAnchors()])
    html = md.convert("# a\n## x\n## x_1\n## x\n### y\n")
    # "x_1" is a heading of its own (kept); the third "x" is toc's x_2, made x-2.
    assert re.findall(r'id="([^"]+)"', html) == ["a", "x", "x_1", "x-2", "y"]
    toc_ids = [child["id"] for child in md.toc_tokens[0]["children"]]
    assert toc_ids == ["x", "x_1", "x-2"]


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


# The mermaid diagrams, parsed by mermaid.


def mermaid_blocks() -> list[dict[str, str]]:
    """Every ```mermaid block of README.md and docs/, as {where, text}."""
    blocks = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        fence, start, lines = "", 0, []
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            opening = re.match(r"^ *(`{3,}|~{3,})\s*(\S*)", line)
            if not fence and opening:
                fence, start, lines = opening.group(1), number, []
                is_mermaid = opening.group(2) == "mermaid"
            elif fence and line.strip() == fence:
                if is_mermaid:
                    where = f"{doc.relative_to(ROOT)}:{start}"
                    blocks.append({"where": where, "text": "\n".join(lines)})
                fence = ""
            elif fence:
                lines.append(line)
    return blocks


@pytest.fixture(scope="module")
def parse_mermaid() -> list[str]:
    """The command that parses diagrams: node check.mjs, after npm ci if needed."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        unavailable("node and npm are needed to parse the docs' mermaid diagrams")
    assert node is not None and npm is not None
    locked = json.loads((MERMAID_DIR / "package-lock.json").read_text())
    wanted = locked["packages"]["node_modules/mermaid"]["version"]
    installed = MERMAID_DIR / "node_modules" / "mermaid" / "package.json"
    if not installed.exists() or json.loads(installed.read_text())["version"] != wanted:
        done = subprocess.run(
            [npm, "ci", "--no-audit", "--no-fund"],
            cwd=MERMAID_DIR,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            unavailable(f"npm ci failed in {MERMAID_DIR}: {done.stderr[-2000:]}")
    return [node, str(MERMAID_DIR / "check.mjs")]


def run_parser(
    command: list[str], blocks: list[dict[str, str]]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, input=json.dumps(blocks), capture_output=True, text=True, timeout=60
    )


def test_mermaid_diagrams_parse(parse_mermaid: list[str]) -> None:
    blocks = mermaid_blocks()
    assert len([b for b in blocks if b["where"].startswith("docs/flows.md")]) == 3
    done = run_parser(parse_mermaid, blocks)
    assert done.returncode == 0, f"diagrams that do not parse:\n{done.stdout}{done.stderr}"


def test_a_diagram_that_does_not_parse_is_named(parse_mermaid: list[str]) -> None:
    good = {"where": "a.md:1", "text": "sequenceDiagram\n    A->>B: hi {x}"}
    bad = {"where": "b.md:9", "text": "sequenceDiagram\n    A->>: no receiver"}
    done = run_parser(parse_mermaid, [good, bad])
    assert done.returncode == 1
    assert done.stdout.startswith("b.md:9: ") and "a.md" not in done.stdout
