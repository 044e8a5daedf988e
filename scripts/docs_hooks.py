"""MkDocs hooks of the documentation site (mkdocs.yml ``hooks:``).

- **Links out of docs/.** The pages link to repository files as GitHub shows them
  (``[nginx.conf](../deploy/nginx/pulsewire.conf)``). Such a link to a file or folder that git
  tracks is pointed at a copy in the site under ``source/`` (a folder gets a page listing its
  files), so the link works on the site too; a link to something that is not there is a
  warning, which fails ``mkdocs build --strict``.
- **Anchors as GitHub makes them.** A heading repeated in a page (``### subscribe`` under
  Commands and under Pushes) is ``#subscribe-1`` on GitHub, ``#subscribe_1`` in
  Python-Markdown's toc: the site uses GitHub's, so one link works in both places.
- **The CLI reference.** ``<!-- cli-help -->`` in a page becomes the ``--help`` of
  ``pulsewire`` and of each of its commands, as the installed CLI prints it, so the page
  cannot fall behind the parser.
"""

from __future__ import annotations

import logging
import os
import posixpath
import re
import subprocess
import sys
import xml.etree.ElementTree as etree
from pathlib import Path
from typing import Any

from markdown import Markdown
from markdown.extensions import Extension
from markdown.treeprocessors import Treeprocessor
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page

log = logging.getLogger("mkdocs.hooks.pulsewire")

ROOT = Path(__file__).resolve().parents[1]
SOURCE = "source"  # where repository files linked from the pages are copied in the site
CLI_MARKER = "<!-- cli-help -->"

_FENCE = re.compile(r"^ *(`{3,}|~{3,})")
_OUT_LINK = re.compile(r"\]\((?P<target>\.\./[^)\s#]+)(?P<anchor>#[^)\s]*)?\)")
_COMMANDS = re.compile(r"^usage: \S+ (?:\[[^\]]*\] )*\{(?P<names>[\w,-]+)\}", re.MULTILINE)


def tracked(path: str) -> list[str]:
    """The files git tracks at ``path`` (a file or a folder), relative to the repository."""
    done = subprocess.run(["git", "ls-files", "-z", "--", path], cwd=ROOT, capture_output=True)
    if done.returncode != 0:  # links to repository files are checked against git's index
        raise RuntimeError(f"the docs site is built from a git checkout: {done.stderr.decode()}")
    return sorted(name for name in done.stdout.decode().split("\0") if name)


def _outside_lines(markdown: str) -> list[tuple[bool, str]]:
    """Each line of ``markdown`` with whether it is outside a fenced code block."""
    lines, fence = [], ""
    for line in markdown.splitlines(keepends=True):
        match = _FENCE.match(line)
        if match and not fence:
            fence = match.group(1)
            lines.append((False, line))
        elif match and fence and match.group(1).startswith(fence) and not line.strip(" `~\n"):
            fence = ""
            lines.append((False, line))
        else:
            lines.append((not fence, line))
    return lines


class RepoLinks:
    """Links from the pages to repository files, and the copies that make them work."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.folders: set[str] = set()

    def rewrite(self, markdown: str, page_uri: str, warn: bool = True) -> str:
        """``markdown`` with its links out of docs/ pointed at ``source/`` in the site;
        a warning for each link to something git does not track (when ``warn``)."""
        page_dir = posixpath.dirname(page_uri)
        out = []
        for outside, line in _outside_lines(markdown):
            if outside:
                line = _OUT_LINK.sub(lambda m: self._link(m, page_uri, page_dir, warn), line)
            out.append(line)
        return "".join(out)

    def _link(self, match: re.Match[str], page_uri: str, page_dir: str, warn: bool) -> str:
        target = posixpath.normpath(posixpath.join("docs", page_dir, match.group("target")))
        if target.startswith("docs/"):  # a link between pages: MkDocs checks it
            return match.group(0)
        if target.startswith("..") or not tracked(target):
            if warn:
                log.warning("%s links to %r, which git does not track", page_uri, target)
            return match.group(0)
        is_file = tracked(target) == [target]
        (self.files if is_file else self.folders).add(target)
        here = f"{SOURCE}/{target}" if is_file else f"{SOURCE}/{target}/index.md"
        return f"]({posixpath.relpath(here, page_dir or '.')}{match.group('anchor') or ''})"

    def add_to(self, files: Files, config: MkDocsConfig) -> None:
        """Add the linked files, and a listing page for each linked folder, to the site."""
        for folder in sorted(self.folders):
            names = tracked(folder)
            self.files.update(names)
            relative = [posixpath.relpath(name, folder) for name in names]
            items = "\n".join(f"- [{name}]({name})" for name in relative)
            content = f"# `{folder}/`\n\nThe files of the repository's `{folder}/`:\n\n{items}\n"
            files.append(File.generated(config, f"{SOURCE}/{folder}/index.md", content=content))
        for name in sorted(self.files):
            files.append(File.generated(config, f"{SOURCE}/{name}", abs_src_path=str(ROOT / name)))


_links = RepoLinks()


def on_files(files: Files, config: MkDocsConfig, **kwargs: Any) -> Files:
    """Find the links out of docs/ before the pages render, and add their targets."""
    global _links
    _links = RepoLinks()
    for file in files.documentation_pages():
        _links.rewrite(file.content_string, file.src_uri, warn=False)  # the page warns
    _links.add_to(files, config)
    return files


class GitHubRepeatedIds(Treeprocessor):
    """Renames the toc's ids of repeated headings from ``name_1`` to GitHub's ``name-1``
    (a heading whose own slug is ``name_1`` keeps it)."""

    def run(self, root: etree.Element) -> None:
        toc = self.md.treeprocessors["toc"]
        renamed, seen = {}, set()
        for element in root.iter():
            old = element.get("id")
            if old is None or element.tag not in {"h1", "h2", "h3", "h4", "h5", "h6"}:
                continue
            base, _, number = old.rpartition("_")
            if base in seen and number.isdigit() and toc.slugify(_text(element), toc.sep) != old:
                renamed[old] = new = f"{base}-{number}"
                element.set("id", new)
                for link in element.iter("a"):  # the heading's permalink
                    if link.get("href") == f"#{old}":
                        link.set("href", f"#{new}")
            seen.add(element.get("id", ""))
        tokens = list(getattr(self.md, "toc_tokens", []))
        while tokens:
            token = tokens.pop()
            token["id"] = renamed.get(token["id"], token["id"])
            tokens.extend(token["children"])


def _text(heading: etree.Element) -> str:
    """A heading's text, without the permalink that toc appends."""
    parts = [heading.text or ""]
    for child in heading:
        if not (child.tag == "a" and "headerlink" in child.get("class", "")):
            parts.extend(child.itertext())
        parts.append(child.tail or "")
    return "".join(parts).strip()


class GitHubAnchors(Extension):
    """Registers :class:`GitHubRepeatedIds` right after the toc extension (same priority,
    registered later), before MkDocs collects the page's anchors."""

    def extendMarkdown(self, md: Markdown) -> None:
        md.treeprocessors.register(GitHubRepeatedIds(md), "github_repeated_ids", 5)


def on_config(config: MkDocsConfig, **kwargs: Any) -> MkDocsConfig:
    """Add :class:`GitHubAnchors` after the configured Markdown extensions (toc among them)."""
    config.markdown_extensions.append(GitHubAnchors())
    return config


def on_page_markdown(markdown: str, page: Page, **kwargs: Any) -> str:
    """Point links out of docs/ at their copies; fill in the CLI reference."""
    if page.file.src_uri.startswith(f"{SOURCE}/"):
        return markdown
    markdown = _links.rewrite(markdown, page.file.src_uri)
    if CLI_MARKER in markdown:
        markdown = markdown.replace(CLI_MARKER, cli_reference())
    return markdown


def cli_help(*args: str) -> str:
    """What ``pulsewire ARGS --help`` prints (at 76 columns: the width of the page's column)."""
    code = "import sys; from pulsewire.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "COLUMNS": "76"}
    done = subprocess.run(
        [sys.executable, "-c", code, *args, "--help"], capture_output=True, text=True, env=env
    )
    if done.returncode != 0:
        raise RuntimeError(f"pulsewire {' '.join(args)} --help failed: {done.stderr}")
    return done.stdout.rstrip()


def cli_reference() -> str:
    """``pulsewire --help`` and each command's, as Markdown sections."""
    top = cli_help()
    match = _COMMANDS.search(top)
    if match is None:
        raise RuntimeError(f"no command list in pulsewire --help:\n{top}")
    sections = [f"## `pulsewire`\n\n```text\n{top}\n```\n"]
    for name in match.group("names").split(","):
        sections.append(f"## `pulsewire {name}`\n\n```text\n{cli_help(name)}\n```\n")
    return "\n".join(sections)
