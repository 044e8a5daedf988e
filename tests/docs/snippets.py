"""The code blocks of README.md and docs/**/*.md, found and checked (see docs/README.md).

By language: python runs, sh runs (curl failing on HTTP errors), toml is loaded by the config
loader, json parsed (hub commands by the hub's parser), js syntax-checked by Node.js,
console's ``$`` lines and no-run shell checked without running, text left alone.

A block's checker follows from its language and the marks of a ``<!-- snippet: ... -->``
comment on the last non-blank line before its opening fence:

    <!-- snippet: MARK [MARK ...] [-- why] -->

Marks: ``fragment`` (a piece of a larger program: python is compiled, top-level ``await``
allowed, json/toml still parsed, shell syntax-checked; nothing runs), ``no-run`` (a
complete command that must not run here, e.g. it installs packages; shell is
syntax-checked and its ``pulsewire`` command lines parsed by the real argument parser),
``needs-server`` (a ``pulsewire serve --demo`` node is started for the doc first),
``background`` (started, and kept running until the doc's last block ran: a server that
later blocks use; the check waits until every port the block names accepts connections),
``file=NAME`` (written to the doc's working directory as NAME, e.g. an app that a later
``uvicorn`` block runs; python is compiled, toml loaded, nothing runs).

The blocks of one doc run in order in one temporary working directory; shell variables
carry over from one shell block to the next. Loopback ports named in the doc's blocks
(``127.0.0.1:8765``, ``"127.0.0.1", 8765``, ``--port 8765``) are replaced by free ports,
the same one for the same number throughout the doc (Redis's 6379 and NATS's 4222 stay);
with ``needs-server``, ``8000`` is the demo node's port.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
RUN_TIMEOUT = 60.0  # a block's whole run (a cold interpreter on a loaded machine included)
START_TIMEOUT = 30.0  # a server (a background block or the demo node) to accept connections
SERVER_PORT = 8000  # the demo node's port as the docs write it (`make run`)
SERVICE_PORTS = frozenset({6379, 4222})  # Redis and NATS: real services, never replaced

CHECKED_ELSEWHERE = frozenset({"mermaid"})  # diagrams: parsed by mermaid in test_site.py
MARKS = frozenset({"fragment", "no-run", "needs-server", "background"})
PYTHON = frozenset({"python", "py"})
SHELL = frozenset({"sh", "bash", "shell"})
# Diagrams, output, file layouts: nothing to check. HTML: a page cannot run here; a page
# shown in a doc is checked by a browser test where its doc says so (the tutorial's is
# examples/chat, run in Chromium by tests/browser/test_tutorial.py).
NOT_CODE = frozenset({"text", "html"})

REPO_DIRS = ("scripts/", "tests/", "deploy/", "docs/", "benchmarks/", "src/")
MAKE_TARGETS = frozenset(
    re.findall(r"^([A-Za-z][\w-]*):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE)
)

_FENCE = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_MARK = re.compile(r"^\s*<!--\s*snippet:(?P<body>.*?)-->\s*$")
_PORT = re.compile(
    r"(?:(?:127\.0\.0\.1|localhost|0\.0\.0\.0)(?::|[\"']\s*,\s*)|--port[ =])(?P<port>\d{2,5})\b"
)


# Runs a python block as __main__; PyJWT's warning about a short HMAC secret is an error.
_RUN_PYTHON = """
import runpy, sys, warnings
from jwt.warnings import InsecureKeyLengthWarning
warnings.simplefilter("error", InsecureKeyLengthWarning)
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@dataclass(frozen=True)
class Block:
    """One fenced code block: where it is, its language, its marks and its text."""

    doc: str  # path relative to the repository
    line: int  # the opening fence's line, 1-based
    lang: str
    text: str
    marks: frozenset[str] = frozenset()
    file: str | None = None

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"


class SnippetError(AssertionError):
    """A block that failed its check; the message names the doc, the line and the block."""

    def __init__(self, block: Block, problem: str) -> None:
        text = "\n".join(f"    {line}" for line in block.text.splitlines())
        super().__init__(f"{block.where}: ```{block.lang} block: {problem}\n{text}")


def docs() -> list[Path]:
    """README.md and every Markdown file under docs/."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def parse_marks(doc: str, line: int, body: str) -> tuple[frozenset[str], str | None]:
    words = body.split(" -- ", 1)[0].split()
    marks, file = set(), None
    for word in words:
        if word.startswith("file="):
            file = word[len("file=") :]
        elif word in MARKS:
            marks.add(word)
        else:
            raise ValueError(
                f"{doc}:{line}: unknown snippet mark {word!r} (known: {sorted(MARKS)}, file=NAME)"
            )
    return frozenset(marks), file


def blocks(path: Path, root: Path = ROOT) -> list[Block]:
    """The fenced blocks of one Markdown file, in order (indented list-item blocks too)."""
    doc = str(path.relative_to(root))
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = len(opening["indent"]), opening["fence"]
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        body = [dedent(line, indent) for line in lines[i + 1 : j]]
        k = i - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        mark = _MARK.match(lines[k]) if k >= 0 else None
        marks, file = parse_marks(doc, k + 1, mark["body"]) if mark else (frozenset(), None)
        info = opening["info"].strip().split()
        lang = info[0].lower() if info else ""
        found.append(Block(doc, i + 1, lang, "\n".join(body) + "\n", marks, file))
        i = j + 1
    return found


def dedent(line: str, indent: int) -> str:
    """``line`` without the indentation of its (list-item) fence."""
    return line[indent:] if not line[:indent].strip() else line.lstrip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    """Whether ``port`` accepts a connection before ``timeout`` while ``proc`` lives."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Stops a process started here (in its own process group, so its children too)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def command_lines(script: str) -> Iterator[list[str]]:
    """The simple commands of a shell script (continuations joined, comments dropped)."""
    joined = script.replace("\\\n", " ")
    for line in joined.splitlines():
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue
        command: list[str] = []
        for word in [*words, ";"]:
            if word in (";", "&&", "||", "|"):
                if command:
                    yield command
                command = []
            else:
                command.append(word)


@dataclass
class DocRun:
    """Runs the blocks of one doc, in order, in ``workdir``."""

    doc: str
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[int, int] = field(default_factory=dict)
    background: list[tuple[Block, subprocess.Popen[bytes]]] = field(default_factory=list)
    server: subprocess.Popen[bytes] | None = None
    skipped: list[str] = field(default_factory=list)  # checks not made, and why
    logs: dict[int, Path] = field(default_factory=dict)  # pid -> output file

    def __post_init__(self) -> None:
        shims = self.workdir / ".shims"
        shims.mkdir()
        curl = shutil.which("curl")
        if curl is not None:
            # A documented request that gets an HTTP error is a broken doc: fail on >= 400.
            (shims / "curl").write_text(f'#!/bin/sh\nexec {curl} -sS --fail-with-body "$@"\n')
            (shims / "curl").chmod(0o755)
        path = f"{shims}{os.pathsep}{BIN}{os.pathsep}{os.environ.get('PATH', '')}"
        self.env = {
            **os.environ,
            "PATH": path,
            "PYTHONUNBUFFERED": "1",
        }

    # -- ports ---------------------------------------------------------------------------

    def with_ports(self, block: Block) -> str:
        text = block.text
        for number in sorted({int(m["port"]) for m in _PORT.finditer(text)} - SERVICE_PORTS):
            if number not in self.ports:
                self.ports[number] = free_port()
            text = re.sub(rf"\b{number}\b", str(self.ports[number]), text)
        return text

    def start_server(self, block: Block) -> None:
        if self.server is not None:
            return
        port = self.ports.setdefault(SERVER_PORT, free_port())
        argv = [
            str(BIN / "pulsewire"),
            "serve",
            "--demo",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        self.server = self.spawn(argv)
        if not wait_for_port(port, self.server, START_TIMEOUT):
            raise SnippetError(block, f"the demo node did not start: {self.stop(self.server)}")

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        """A long-running process; its output goes to a file (a pipe nobody reads fills)."""
        log = self.workdir / f".process-{len(self.logs)}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv,
                cwd=self.workdir,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.logs[proc.pid] = log
        return proc

    def stop(self, proc: subprocess.Popen[bytes]) -> str:
        """Stops ``proc`` and returns the end of its output."""
        stop(proc)
        return self.logs[proc.pid].read_text(errors="replace")[-3000:]

    def close(self) -> None:
        for _, proc in self.background:
            stop(proc)
        if self.server is not None:
            stop(self.server)

    # -- blocks --------------------------------------------------------------------------

    def check(self, block: Block) -> None:
        if "needs-server" in block.marks:
            self.start_server(block)
        text = self.with_ports(block)
        if block.lang in NOT_CODE or block.lang in CHECKED_ELSEWHERE:
            return
        if not block.lang:
            raise SnippetError(block, "no language: name it (```text for output or diagrams)")
        if block.lang in PYTHON:
            self.python(block, text)
        elif block.lang in SHELL:
            self.shell(block, text)
        elif block.lang == "console":  # a session: `$ command` lines and their output
            commands = [line[2:] for line in text.splitlines() if line.startswith("$ ")]
            session = dataclasses.replace(block, marks=block.marks | {"no-run"})
            self.shell(session, "\n".join(commands) + "\n")  # checked, not run
        elif block.lang == "toml":
            self.toml(block, text)
        elif block.lang == "json":
            self.json(block, text)
        elif block.lang in ("js", "javascript", "mjs"):
            self.javascript(block, text)
        else:
            raise SnippetError(
                block, f"no checker for ```{block.lang}: add one in tests/docs/snippets.py"
            )

    def run(self, block: Block, argv: list[str]) -> None:
        if "background" in block.marks:
            proc = self.spawn(argv)
            self.background.append((block, proc))
            named = {int(m["port"]) for m in _PORT.finditer(block.text)} - SERVICE_PORTS
            ports = [self.ports[n] for n in sorted(named)]
            if not ports:
                raise SnippetError(block, "a background block must name the port it listens on")
            for port in ports:
                if not wait_for_port(port, proc, START_TIMEOUT):
                    raise SnippetError(block, f"never listened on {port}:\n{self.stop(proc)}")
            return
        try:
            done = subprocess.run(
                argv,
                cwd=self.workdir,
                env=self.env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=RUN_TIMEOUT,
                start_new_session=True,
            )
        except subprocess.TimeoutExpired as exc:
            out = (exc.output or b"").decode(errors="replace")[-3000:]
            raise SnippetError(block, f"still running after {RUN_TIMEOUT} s:\n{out}") from None
        if done.returncode != 0:
            out = done.stdout.decode(errors="replace")[-3000:]
            raise SnippetError(block, f"exit status {done.returncode}:\n{out}")

    def python(self, block: Block, text: str) -> None:
        name = block.file or f"snippet_{Path(block.doc).stem}_{block.line}.py"
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT if "fragment" in block.marks else 0
        try:
            compile(text, f"{block.where} ({name})", "exec", flags=flags)
        except SyntaxError as exc:
            raise SnippetError(block, f"SyntaxError: {exc}") from None
        (self.workdir / name).write_text(text)
        if block.file or block.marks & {"fragment", "no-run"}:
            return
        self.run(block, [sys.executable, "-c", _RUN_PYTHON, name])

    def shell(self, block: Block, text: str) -> None:
        checked = subprocess.run(["bash", "-n"], input=text.encode(), capture_output=True)
        if checked.returncode != 0:
            raise SnippetError(block, f"bash -n: {checked.stderr.decode()}")
        for argv in command_lines(text):
            if argv[0] == "pulsewire":
                self.pulsewire_argv(block, argv[1:])
            elif argv[0] == "make":
                for target in (a for a in argv[1:] if not a.startswith("-") and "=" not in a):
                    if target not in MAKE_TARGETS:
                        raise SnippetError(block, f"`make {target}`: no such target in Makefile")
            for word in argv:  # a file of the repository that the command names must exist
                path = word.split("=", 1)[-1]
                named = path.startswith(REPO_DIRS) and not set("*?$<") & set(path)
                if named and not (ROOT / path).exists():
                    raise SnippetError(block, f"{path}: no such file in the repository")
        if block.marks & {"fragment", "no-run"}:
            return
        if block.file:
            (self.workdir / block.file).write_text(text)
            return
        env_file = self.workdir / ".snippet-env"
        if "background" in block.marks:
            script = f"exec {text.strip()}" if "\n" not in text.strip() else text
        else:  # `set -a`: what the block assigns is exported, and carried to the next block
            script = f"set -a\n{text}\nenv -0 > {shlex.quote(str(env_file))}\n"
        self.run(block, ["bash", "-e", "-o", "pipefail", "-c", script])
        if env_file.exists():
            pairs = env_file.read_bytes().split(b"\0")
            self.env = dict(p.decode().split("=", 1) for p in pairs if b"=" in p)
            env_file.unlink()

    def pulsewire_argv(self, block: Block, argv: list[str]) -> None:
        from pulsewire.cli import _build_parser

        try:
            _build_parser().parse_args(argv)
        except SystemExit as exc:
            if exc.code not in (0, None):
                raise SnippetError(
                    block, f"`pulsewire {shlex.join(argv)}`: refused by the CLI"
                ) from None

    def toml(self, block: Block, text: str) -> None:
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise SnippetError(block, f"TOML: {exc}") from None
        name = block.file or f"snippet_{block.line}.toml"
        path = self.workdir / name
        path.write_text(text)
        from pulsewire.cli import _build_parser, serve_options
        from pulsewire.server.main import load_settings

        try:
            load_settings(
                serve_options(_build_parser().parse_args(["serve", "--config", str(path)]))
            )
        except (Exception, SystemExit) as exc:
            raise SnippetError(block, f"refused by the config loader: {exc!r}") from None

    def json(self, block: Block, text: str) -> None:
        if "fragment" in block.marks:
            return
        decoder, i = json.JSONDecoder(), 0
        while True:
            while i < len(text) and text[i].isspace():
                i += 1
            if i == len(text):
                return
            try:
                value, i = decoder.raw_decode(text, i)
            except json.JSONDecodeError as exc:
                raise SnippetError(block, f"JSON: {exc}") from None
            if isinstance(value, dict):
                problem = hub_message_problem(value)
                if problem:
                    raise SnippetError(block, f"{json.dumps(value)[:200]}: {problem}")

    def javascript(self, block: Block, text: str) -> None:
        node = shutil.which("node")
        if node is None:  # syntax only, and only where Node.js is installed
            self.skipped.append(f"{block.where}: ```{block.lang} block: Node.js is not installed")
            return
        path = self.workdir / f"snippet_{block.line}.mjs"
        path.write_text(text)
        checked = subprocess.run(
            [node, "--check", str(path)], capture_output=True, timeout=RUN_TIMEOUT
        )
        if checked.returncode != 0:
            raise SnippetError(block, f"node --check: {checked.stderr.decode()[-2000:]}")


def hub_message_problem(message: dict[str, object]) -> str | None:
    """What is wrong with a hub protocol message (docs/protocol.md) a doc shows, if anything.

    A command is parsed by the hub's own request parser (on the demo namespaces); an error
    reply and a disconnect push must carry a code the protocol defines."""
    from pulsewire.demos.mode import demo_config
    from pulsewire.hub import HubConfig
    from pulsewire.hub.errors import DisconnectCode, ErrorCode, HubError
    from pulsewire.hub.requests import CLIENT_PARAMS, Command

    if "method" in message and "id" in message:
        try:
            command = Command.parse(message)
            params = CLIENT_PARAMS.get(command.method)
            if params is None:
                return f"unknown method {command.method!r}"
            params.parse(dict(command.params), demo_config(HubConfig()))
        except HubError as exc:
            return f"the hub refuses it: {exc!r}"
        except Exception as exc:  # Disconnect: the hub would end the session
            return f"the hub ends the session: {exc!r}"
    error = message.get("error")
    if "id" in message and isinstance(error, dict) and error.get("code") not in set(ErrorCode):
        return f"error code {error.get('code')!r} is not one of the protocol's"
    if message.get("push") == "disconnect" and message.get("code") not in set(DisconnectCode):
        return f"disconnect code {message.get('code')!r} is not one of the protocol's"
    return None
