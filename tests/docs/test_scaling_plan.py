"""docs/scaling.md's capacity plan prints what the page says it prints.

The plan is a Python block (the doc-snippet check runs it); the ```text block after
"It prints:" is its output as shown to the reader. Change a figure and not the output (or
the other way round) and this fails.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "scaling.md"


def test_the_capacity_plan_prints_what_the_page_shows() -> None:
    text = DOC.read_text()
    section = text[text.index("### The calculation") :]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    shown = re.search(r"It prints:\n\n```text\n(.*?)```", section, re.S)
    assert code is not None and shown is not None, "the calculation or its output is missing"
    run = subprocess.run(
        [sys.executable, "-c", code.group(1)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout == shown.group(1)
