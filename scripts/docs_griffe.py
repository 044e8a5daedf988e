"""A griffe extension for the API reference (mkdocs.yml): docstrings written with reST roles.

The docstrings name other objects Sphinx-style (``:class:`Hub```, ``:meth:`~x.close```);
Markdown would show the role literally, so each becomes a code span (``Hub``, ``close``),
and a paragraph ending in reST's ``::`` ends in a colon (its indented block is a code block
in Markdown as well).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(
    r":(?:py:)?(?:class|meth|func|attr|mod|data|exc|obj|const):`(?P<short>~?)(?P<name>[^`]+)`"
)
_LITERAL = re.compile(r"(?<=\S)::$", flags=re.MULTILINE)  # "Example::" -> "Example:"
_LITERAL_ALONE = re.compile(r"^[ \t]*::[ \t]*$", flags=re.MULTILINE)  # a line of "::" alone


def markdown(text: str) -> str:
    """The docstring ``text`` with its reST roles and ``::`` made Markdown."""

    def role(match: re.Match[str]) -> str:
        name = match.group("name")
        if match.group("short"):  # :class:`~a.b.C` shows C, as Sphinx does
            name = name.rsplit(".", 1)[-1]
        return f"`{name}`"

    return _LITERAL_ALONE.sub("", _LITERAL.sub(":", _ROLE.sub(role, text)))


class RestRoles(griffe.Extension):
    """Rewrites every loaded object's docstring with :func:`markdown`."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
