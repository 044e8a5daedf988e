"""The architecture checker (``scripts/check_architecture.py``) on small synthetic trees:
each rule catches what it should, and legitimate patterns pass."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_checker() -> ModuleType:
    name = "check_architecture"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


arch = load_checker()


def tree(tmp_path: Path, files: dict[str, str]) -> Path:
    """Write ``files`` (paths relative to the tree, e.g. ``pkg/a.py``) and return ``pkg``."""
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return tmp_path / "pkg"


def cycles(root: Path) -> list[tuple[str, ...]]:
    return [c.modules for c in arch.check(root).cycles]


def reaches(root: Path) -> list[tuple[str, int, str]]:
    return [(r.module, r.line, r.name) for r in arch.check(root).reaches]


# ------------------------------------------------------------------------- import cycles


def test_direct_cycle_is_reported_with_the_import_lines(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import os\nfrom pkg.b import thing\n",
            "pkg/b.py": "from . import a\nthing = 1\n",
        },
    )
    report = arch.check(root)
    assert [c.modules for c in report.cycles] == [("pkg.a", "pkg.b")]
    text = "\n".join(report.lines())
    assert "pkg.a:2 imports pkg.b" in text
    assert "pkg.b:1 imports pkg.a" in text


def test_cycle_through_function_and_type_checking_imports(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def f():\n    from .b import B\n    return B\n",
            "pkg/b.py": """\
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from .c import C
                class B: ...
            """,
            "pkg/c.py": "import pkg.a\nclass C: ...\n",
        },
    )
    assert cycles(root) == [("pkg.a", "pkg.b", "pkg.c")]


def test_importlib_literal_counts(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "import importlib\nm = importlib.import_module('pkg.b')\n",
            "pkg/b.py": "from pkg import a\n",
        },
    )
    assert cycles(root) == [("pkg.a", "pkg.b")]


def test_reexporting_init_is_not_a_cycle(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": "from .a import A\nfrom .b import B\nfrom . import sub\n",
            "pkg/a.py": "from .b import B\nclass A(B): ...\n",
            "pkg/b.py": "class B: ...\n",
            "pkg/sub/__init__.py": "from .m import M\n",
            "pkg/sub/m.py": "from .. import b\nfrom ..a import A\nimport pkg.sub.n\nclass M: ...\n",
            "pkg/sub/n.py": "",
        },
    )
    assert cycles(root) == []


def test_taking_a_name_from_the_own_package_init_is_a_cycle(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": "from .a import A\nfrom .b import B\n",
            "pkg/a.py": "from pkg import B\nclass A(B): ...\n",
            "pkg/b.py": "class B: ...\n",
        },
    )
    assert cycles(root) == [("pkg", "pkg.a")]


@pytest.mark.parametrize(
    ("init", "cycle"),
    [
        # the package binds the function b (from module b): `from pkg import b` takes it
        # from the package's namespace, as Python does, so pkg.a depends on pkg/__init__
        ("from .b import b\nfrom .a import A\n", [("pkg", "pkg.a")]),
        # the package binds the submodule b itself: `from pkg import b` is the module
        ("from . import b\nfrom .a import A\n", []),
        ("from .a import A\n", []),
    ],
)
def test_from_package_import_name_shadowing_a_submodule(
    tmp_path: Path, init: str, cycle: list[tuple[str, ...]]
) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": init,
            "pkg/a.py": "from pkg import b\nclass A: ...\n",
            "pkg/b.py": "def b() -> None: ...\n",
        },
    )
    assert cycles(root) == cycle


def test_relative_imports_resolve_from_packages_and_modules(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/x.py": "from .sub import m, thing\n",  # -> pkg.sub.m and pkg.sub
            "pkg/sub/__init__.py": "from .. import x\nthing = 1\n",  # -> pkg.x
            "pkg/sub/m.py": "from ..sub.n import y\n",  # -> pkg.sub.n
            "pkg/sub/n.py": "y = 1\n",
        },
    )
    assert cycles(root) == [("pkg.sub", "pkg.x")]
    edges = {(e.source, e.target) for e in arch.imports_of(root)}
    assert edges == {
        ("pkg.x", "pkg.sub.m"),
        ("pkg.x", "pkg.sub"),
        ("pkg.sub", "pkg.x"),
        ("pkg.sub.m", "pkg.sub.n"),
    }


def test_strongly_connected_finds_separate_components() -> None:
    graph = {"a": {"b"}, "b": {"a", "c"}, "c": {"d"}, "d": {"c"}, "e": {"e"}}
    components = sorted(arch.strongly_connected(graph))
    assert components == [["a", "b"], ["c", "d"], ["e"]]


# -------------------------------------------------------------------------- private reach

A_MODULE = """\
    class A:
        __slots__ = ("_slot",)
        _class_level = 1

        def __init__(self, other: "A") -> None:
            self._x = 1
            self.__mangled = 2
            other._x = 3  # same module: fine

        def _helper(self) -> int:
            return self._slot + self.__mangled

    def _free() -> None: ...
    _CONSTANT = 4
"""


def test_private_reach_is_caught(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": A_MODULE,
            "pkg/b.py": """\
                from pkg.a import A, _free
                from pkg import a as amod

                def use(a: A) -> None:
                    a._x = 5
                    print(a._helper())
                    print(getattr(a, "_slot"))
                    print(amod._CONSTANT)
                    del a._class_level
                    _flush = a._x  # a local variable does not define _x
            """,
        },
    )
    assert reaches(root) == [
        ("pkg.b", 1, "_free"),
        ("pkg.b", 5, "_x"),
        ("pkg.b", 6, "_helper"),
        ("pkg.b", 7, "_slot"),
        ("pkg.b", 8, "_CONSTANT"),
        ("pkg.b", 9, "_class_level"),
        ("pkg.b", 10, "_x"),
    ]


def test_legitimate_underscore_uses_pass(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": A_MODULE,
            "pkg/b.py": """\
                import enum
                import os
                import zlib
                from collections import namedtuple
                from typing import NamedTuple

                Point = namedtuple("Point", "x y")

                class Color(enum.Enum):
                    RED = 1

                    @classmethod
                    def _missing_(cls, value: object) -> "Color":
                        return cls.RED

                class B:
                    def __init__(self) -> None:
                        self._own = 1

                    def same(self, other: "B") -> int:
                        return other._own + self.__class__.__name__.__len__()

                _state = 0

                def f(p: Point) -> None:
                    global _counter
                    _counter = 1
                    print(p._replace(x=1), p._asdict(), p._fields, Color.RED._value_)
                    compressor: zlib._Compress = zlib.compressobj()
                    os._exit(0)

                def g(module: object) -> int:
                    return module._counter + module._state  # names this module defines
            """,
        },
    )
    assert reaches(root) == []


def test_stdlib_privates_outside_the_allowlist_are_caught(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": """\
                import sys
                from typing import _GenericAlias
                import _thread
                print(sys._getframe(0))
            """,
        },
    )
    assert reaches(root) == [
        ("pkg.a", 2, "_GenericAlias"),
        ("pkg.a", 3, "_thread"),
        ("pkg.a", 4, "_getframe"),
    ]


def test_private_modules_are_private_to_their_package(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/core/__init__.py": "",
            "pkg/core/_speedups.c": "/* built into _speedups.so */\n",
            "pkg/core/_impl.py": "def run() -> None: ...\n",
            "pkg/core/frames.py": """\
                from . import _speedups
                from ._impl import run
                import pkg.core._impl
                mask = _speedups.apply_mask
            """,
            "pkg/other.py": "from pkg.core import _speedups\nimport pkg.core._impl\n",
        },
    )
    assert reaches(root) == [("pkg.other", 1, "_speedups"), ("pkg.other", 2, "pkg.core._impl")]


def test_a_subclass_using_its_base_class_privates_is_reported_apart(tmp_path: Path) -> None:
    root = tree(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/base.py": "class Base:\n    def __init__(self):\n        self._loop = None\n",
            "pkg/mid.py": "from .base import Base\nclass Mid(Base): ...\n",
            "pkg/sub.py": """\
                from .mid import Mid
                class Sub(Mid):
                    def run(self) -> None:
                        print(self._loop)
                        print(super()._loop)
                def outside(s: Sub) -> None:
                    print(s._loop)
            """,
        },
    )
    report = arch.check(root)
    assert [(r.module, r.line, r.inherited_from) for r in report.inherited] == [
        ("pkg.sub", 4, "pkg.base"),
        ("pkg.sub", 5, "pkg.base"),
    ]
    assert [(r.module, r.line) for r in report.reaches] == [("pkg.sub", 7)]


# ----------------------------------------------------------------------------- module size


@pytest.mark.parametrize(("lines", "flagged"), [(600, False), (601, True)])
def test_long_module(tmp_path: Path, lines: int, flagged: bool) -> None:
    root = tree(tmp_path, {"pkg/__init__.py": "", "pkg/big.py": "x = 1\n" * lines})
    long = [(m.module, m.lines) for m in arch.check(root).long]
    assert long == ([("pkg.big", lines)] if flagged else [])


def test_main_prints_violations_and_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tree(
        tmp_path,
        {"pkg/__init__.py": "", "pkg/a.py": "from . import b\n", "pkg/b.py": "from . import a\n"},
    )
    assert arch.main([str(root)]) == 1
    out = capsys.readouterr().out
    assert "import cycle of 2 modules: pkg.a, pkg.b" in out
    assert out.strip().endswith(
        "1 import cycles, 0 private reaches, 0 inherited private reaches, 0 long modules"
    )
    (root / "b.py").write_text("")
    assert arch.main([str(root)]) == 0
