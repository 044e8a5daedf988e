"""The layering rules of issue #11, checked on ``src/pulsewire`` by reading the source
(``scripts/check_architecture.py``, pure ``ast``; nothing under test is imported):

- **No import cycles** between modules. Every import counts: top-level, inside functions,
  under ``if TYPE_CHECKING:``, ``importlib.import_module("literal")``. An import is an edge
  to the deepest module it names (``from a.b import c`` is an edge to ``a.b.c`` when ``c`` is
  a submodule that ``a/b/__init__`` does not shadow with another object, else to ``a.b``).
  The implicit import of parent packages is not an edge, so a package ``__init__`` that
  re-exports its submodules is not in a cycle with them; a
  submodule that takes a name from its own package's ``__init__`` (``from pulsewire.hub
  import Hub`` inside ``pulsewire/hub/``) is, and should import from the defining module.
- **No private reach**: a module uses an underscore name (``x._name``, ``getattr(x,
  "_name")``, ``from m import _name``) only if it defines that name itself. A subclass using
  its base class's private names from another module is reported separately ("inherited"):
  a single underscore is then a class's protected name for its subclasses, allowed only
  when base and subclass live in the same package (``aio.sending.Sender`` and
  ``aio.connection.Connection``: one class split by side), never across packages, which
  would tie two layers' internals together. Stdlib privates are reached only where
  ``EXTERNAL_ALLOWED`` says why.
- **No module over 600 lines.**

``python scripts/check_architecture.py`` prints the same list. The checker's own tests are in
``test_architecture_checker.py``.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "pulsewire"


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


@pytest.fixture(scope="module")
def report() -> Any:
    return arch.check(SRC)


def fail_with(title: str, lines: list[str]) -> None:
    if lines:
        pytest.fail(f"{title} ({len(lines)}):\n" + "\n".join(lines), pytrace=False)


def test_the_checker_sees_the_tree() -> None:
    modules = arch.find_modules(SRC)
    edges = arch.imports_of(SRC)
    assert len(modules) > 40
    assert "pulsewire.protocol.connection" in modules
    assert len(edges) > 100
    assert all(e.source in modules for e in edges)


def test_no_import_cycles(report: Any) -> None:
    fail_with("import cycles", [str(c) for c in report.cycles])


def test_no_private_reach(report: Any) -> None:
    fail_with("modules using other modules' underscore names", [str(r) for r in report.reaches])


def package_of(module: str) -> str:
    return module.rpartition(".")[0]


def test_no_inherited_private_reach_across_packages(report: Any) -> None:
    fail_with(
        "subclasses using their base class's underscore names from another package",
        [str(r) for r in report.inherited if package_of(r.module) != package_of(r.inherited_from)],
    )


def test_no_long_modules(report: Any) -> None:
    fail_with(f"modules over {arch.MAX_LINES} lines", [str(m) for m in report.long])


# The layers of docs/architecture.md, bottom first. An import may only point to a lower layer
# (or stay inside its own package): aio/ and sync/ are both bindings of the core and never
# import each other; extras.py (the "install this extra" message) sits with the core.
LAYERS: dict[str, int] = {
    "protocol": 0,
    "extras": 0,
    "aio": 1,
    "sync": 1,
    "hub": 2,
    "transports": 3,
    "client": 3,  # pulsewire.client: the hub client, on aio/ and the hub's wire codecs
    "demos": 4,
    "server": 5,
    "": 6,  # pulsewire/__init__.py, the package's public names
    "commands": 7,  # what the pulsewire subcommands run, and their shared conventions
    "cli": 8,
    "__main__": 9,  # python -m pulsewire
}


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_module_has_a_layer() -> None:
    missing = sorted({layer_of(m) for m in arch.find_modules(SRC)} - set(LAYERS))
    assert not missing, f"packages with no layer in LAYERS: {missing}"


def test_imports_point_down_the_layers() -> None:
    upward = []
    for edge in arch.imports_of(SRC):
        source, target = layer_of(edge.source), layer_of(edge.target)
        if source != target and LAYERS[target] >= LAYERS[source]:
            upward.append(f"{edge.source} imports {edge.target} (line {edge.line})")
    fail_with("imports that do not point down the layers", sorted(set(upward)))
