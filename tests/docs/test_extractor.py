"""The snippet checker itself (``snippets.py``), on Markdown written here."""

from __future__ import annotations

from pathlib import Path

import pytest

from .snippets import Block, DocRun, SnippetError, blocks

DOC = """# A page

<!-- snippet: needs-server background -->
```python
print("x")
```

- a list item:

  <!-- snippet: file=app.py -- why -->
  ```python
  def f():
      return 1
  ```

````text
```python
not a block of its own
```
````

```
no language
```
"""


def test_blocks_are_found_with_their_line_language_and_marks(tmp_path: Path) -> None:
    (tmp_path / "page.md").write_text(DOC)
    found = blocks(tmp_path / "page.md", tmp_path)
    assert [(b.line, b.lang, sorted(b.marks), b.file) for b in found] == [
        (4, "python", ["background", "needs-server"], None),
        (11, "python", [], "app.py"),
        (16, "text", [], None),
        (22, "", [], None),
    ]
    assert found[1].text == "def f():\n    return 1\n"  # the list item's indent removed
    assert "not a block of its own" in found[2].text
    assert found[0].where == "page.md:4"


def test_an_unknown_mark_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "page.md").write_text("<!-- snippet: fragmnet -->\n```python\npass\n```\n")
    with pytest.raises(ValueError, match=r"page\.md:1: unknown snippet mark 'fragmnet'"):
        blocks(tmp_path / "page.md", tmp_path)


def check(tmp_path: Path, *checks: Block) -> None:
    run = DocRun("page.md", tmp_path)
    try:
        for block in checks:
            run.check(block)
    finally:
        run.close()


def test_a_failing_block_names_the_doc_line_and_block(tmp_path: Path) -> None:
    with pytest.raises(SnippetError, match=r"page\.md:7: ```python block: exit status 1") as e:
        check(tmp_path, Block("page.md", 7, "python", "raise SystemExit(1)\n"))
    assert "    raise SystemExit(1)" in str(e.value)  # the block, indented under the message


@pytest.mark.parametrize(
    ("lang", "text", "marks", "problem"),
    [
        ("", "x\n", (), "no language"),
        ("yaml", "a: 1\n", (), "no checker for ```yaml"),
        ("python", "await f()\n", (), "SyntaxError"),
        ("json", '{"a": [...]}\n', (), "JSON"),
        ("json", '{"id": 1, "method": "subscribe", "params": {}}\n', (), "the hub refuses it"),
        ("toml", "[hub]\nno_such_key = 1\n", (), "refused by the config loader"),
        ("sh", "pulsewire serve --no-such-flag\n", ("no-run",), "refused by the CLI"),
        ("sh", "make no-such-target\n", ("no-run",), "no such target"),
        ("sh", "cat scripts/no_such_file.py\n", ("no-run",), "no such file"),
        ("sh", "false\n", (), "exit status 1"),
        ("console", "$ pulsewire echo --no-such-flag\nusage: ...\n", (), "refused by the CLI"),
    ],
)
def test_each_checker_refuses_what_is_wrong(
    tmp_path: Path, lang: str, text: str, marks: tuple[str, ...], problem: str
) -> None:
    with pytest.raises(SnippetError, match=problem.replace("*", r"\*")):
        check(tmp_path, Block("page.md", 1, lang, text, frozenset(marks)))


def test_fragments_compile_shell_variables_carry_and_ports_are_shared(tmp_path: Path) -> None:
    check(
        tmp_path,
        Block("page.md", 1, "python", "await f()\n", frozenset({"fragment"})),
        Block("page.md", 2, "sh", "URL=http://127.0.0.1:8765/\n"),
        Block("page.md", 3, "sh", 'test "$URL" = http://127.0.0.1:8765/\n'),  # the same port
        Block(
            "page.md", 4, "python", 'import os\nassert not os.environ["URL"].endswith(":8765/")\n'
        ),
    )
