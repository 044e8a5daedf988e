"""What the docs name exists: metric names, configuration keys, example secrets (issue #13).

Read from the docs' text (not only their code blocks): every ``pulsewire_...`` metric name is
one that ``/metrics`` serves (counters with their ``_total``), every key in the settings
tables of configuration.md and in the "config" columns of security.md is one that the
config loader knows, and every example HMAC secret is long enough for PyJWT (32 bytes).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import subprocess
import urllib.request
from pathlib import Path

from pulsewire.hub import ChannelOptions, HubConfig
from pulsewire.server.settings import SERVER_KEYS

from .snippets import BIN, ROOT, START_TIMEOUT, docs, free_port, stop, wait_for_port

# `pulsewire_{messages,bytes}_{in,out}_total`: braces with a comma are alternatives, braces
# without one are labels (`{transport}`) and end the name.
_METRIC = re.compile(r"pulsewire_(?:[a-z0-9_*]|\{[a-z0-9_]+(?:,[a-z0-9_]+)+\})+")
NOT_METRICS = {"pulsewire_sticky"}  # the nginx upstream of deploy/nginx/pulsewire.conf
HUB_KEYS = {f.name for f in dataclasses.fields(HubConfig)}
CHANNEL_KEYS = {f.name for f in dataclasses.fields(ChannelOptions)}


def expand(name: str) -> list[str]:
    """``a_{b,c}_d`` -> ``a_b_d``, ``a_c_d``."""
    parts = re.split(r"\{([^}]*)\}", name)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def doc_texts() -> dict[str, str]:
    return {str(p.relative_to(ROOT)): p.read_text(encoding="utf-8") for p in docs()}


# Everything that adds metrics: a JWKS (the key-fetch metrics) and the backend proxy.
NODE_CONFIG = """
[hub]
token_hmac_secret = "a-secret-for-the-metrics-test-of-32-bytes"
token_jwks_url = "http://127.0.0.1:9/jwks"
[proxy]
url = "http://127.0.0.1:9/pulsewire/"
[proxy.connect]
"""


def served_metric_names(tmp_path: Path) -> set[str]:
    """The metric names in the ``/metrics`` of a real ``pulsewire serve`` node."""
    config = tmp_path / "pulsewire.toml"
    config.write_text(NODE_CONFIG)
    port = free_port()
    argv = [str(BIN / "pulsewire"), "serve", "--config", str(config), "--port", str(port)]
    with (tmp_path / "node.log").open("wb") as log:
        node = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for_port(port, node, START_TIMEOUT), (tmp_path / "node.log").read_text()
        url = f"http://127.0.0.1:{port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
    finally:
        stop(node)
    return {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")}


def test_every_metric_name_in_the_docs_is_served(tmp_path: Path) -> None:
    served = served_metric_names(tmp_path)
    assert {"pulsewire_connects_total", "pulsewire_proxy_calls_total"} <= served
    wrong = []
    for doc, text in doc_texts().items():
        for match in _METRIC.finditer(text):
            for name in expand(match[0].rstrip("_")):
                if name in NOT_METRICS:
                    continue
                if "*" in name:  # `pulsewire_budget_*`: some metric has that prefix
                    ok = any(s.startswith(name.split("*")[0]) for s in served)
                else:
                    ok = name in served
                if not ok:
                    line = text.count("\n", 0, match.start()) + 1
                    wrong.append(f"{doc}:{line}: {name}")
    assert not wrong, "not in /metrics:\n" + "\n".join(wrong)


def table_rows(text: str, heading: str) -> list[list[str]]:
    """The cells of the rows of the first table after ``heading``."""
    section = text[text.index(heading) :]
    rows, started = [], False
    for line in section.splitlines()[1:]:
        if line.startswith("|"):
            started = True
            cells = [c.strip() for c in line.strip("|").split("|")]
            if not set(cells[0]) <= set("-: "):
                rows.append(cells)
        elif started:
            break
    return rows[1:]  # without the header


def keys(cell: str) -> set[str]:
    """The setting names in a table cell: backticked snake_case words, no patterns."""
    return {k for k in re.findall(r"`([a-z][a-z0-9_]*)`", cell)}


def test_configuration_tables_name_only_keys_the_loader_knows() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    server = set().union(*(keys(r[0]) for r in table_rows(text, "## `[server]`")))
    hub = set().union(*(keys(r[0]) for r in table_rows(text, "## `[hub]`")))
    channel = set().union(*(keys(r[0]) for r in table_rows(text, "## `[channel]`")))
    assert {"max_connections_per_ip", "bytes_high_per_ip"} <= server  # the tables were read
    assert server - SERVER_KEYS == set()
    assert hub - HUB_KEYS == set()
    assert channel - CHANNEL_KEYS == set()


def test_security_config_columns_name_only_keys_the_loader_knows() -> None:
    text = (ROOT / "docs" / "security.md").read_text(encoding="utf-8")
    unknown, seen = [], 0
    for table in re.split(r"\n(?!\|)", text):
        lines = [line for line in table.splitlines() if line.startswith("|")]
        if len(lines) < 3:
            continue
        header = [c.strip() for c in lines[0].strip("|").split("|")]
        column = next((i for i, c in enumerate(header) if c.startswith("config")), None)
        if column is None:
            continue
        for line in lines[2:]:
            cells = [c.strip() for c in line.strip("|").split("|")]
            for key in keys(cells[column]):
                seen += 1
                if key not in SERVER_KEYS | HUB_KEYS | {"max_idempotency_keys"}:
                    unknown.append(f"{key} in: {line[:100]}")
    assert seen > 10
    assert not unknown, "\n".join(unknown)


# token_hmac_secret = "..." / token_hmac_secret="..." / SECRET = "..." / --token-secret X
_SECRET = re.compile(
    r"""(?:(?:token_hmac_secret|SECRET)\s*=\s*["'](?P<value>[^"']*)["'])"""
    r"""|--token-secret[ =]["']?(?P<flag>[^"'`\s]+)"""
)


def test_example_secrets_are_long_enough_for_hs256() -> None:
    texts = doc_texts()
    for path in (ROOT / "deploy").rglob("*.toml"):
        texts[str(path.relative_to(ROOT))] = path.read_text(encoding="utf-8")
    found, short = 0, []
    for doc, text in texts.items():
        for match in _SECRET.finditer(text):
            found += 1
            secret = match["value"] if match["value"] is not None else match["flag"]
            if re.fullmatch(r"[A-Z_]+|\$\w+", secret):  # a placeholder: SECRET, $SECRET
                continue
            if len(secret.encode()) < 32:  # PyJWT's InsecureKeyLengthWarning
                short.append(f"{doc}: {match[0]}")
    assert found >= 5
    assert not short, "HS256 secrets under 32 bytes:\n" + "\n".join(short)


_LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
_HEADING = re.compile(r"^#{1,6}\s+(?P<title>.+?)\s*#*\s*$", re.MULTILINE)


def anchors(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown text (code blocks left out)."""
    text = re.sub(r"^(```|~~~).*?^\1", "", text, flags=re.MULTILINE | re.DOTALL)
    seen: dict[str, int] = {}
    found = set()
    for match in _HEADING.finditer(text):
        slug = re.sub(r"[^\w\- ]", "", match["title"].lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        found.add(slug if n == 0 else f"{slug}-{n}")
    return found


def test_relative_links_and_their_anchors_exist() -> None:
    broken = []
    for doc, text in doc_texts().items():
        base = (ROOT / doc).parent
        for match in _LINK.finditer(text):
            target = match["target"]
            if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (base / path).resolve() if path else ROOT / doc
            line = text.count("\n", 0, match.start()) + 1
            if not file.exists():
                broken.append(f"{doc}:{line}: {target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file.read_text()):
                broken.append(f"{doc}:{line}: {target}: no such heading")
    assert not broken, "\n".join(broken)
