#!/usr/bin/env python3
"""Architecture checks on a source tree, by reading it (``ast``), never importing it.

    python scripts/check_architecture.py [SRC_PACKAGE_DIR]      # default: src/pulsewire

Three rules, each a list of violations (exit status 1 if any):

**Import cycles.** A graph with one node per module (``pkg/__init__.py`` is the module
``pkg``) and an edge for every import of a module inside the tree, wherever it is written:
at the top, inside a function, inside ``if TYPE_CHECKING:`` (a cycle through type-only
imports still ties the modules together: neither can be understood, moved or split without
the other), and ``importlib.import_module("literal")``. Relative imports are resolved. An
import names the deepest module it reaches:

- ``import a.b.c`` and ``from a.b import c`` (``c`` a submodule) are edges to ``a.b.c``;
- ``from a.b import name`` (``name`` not a submodule, or a name that ``a/b/__init__``
  binds to something other than that submodule: Python looks for the attribute first) is
  an edge to ``a.b``: the name is taken from its namespace, for a package its ``__init__``.

Importing ``a.b.c`` also runs ``a/__init__`` and ``a/b/__init__``, but that implicit step is
*not* an edge. Otherwise every package whose ``__init__`` re-exports its submodules would be
in a cycle with each of them (``pkg/__init__`` imports ``pkg.a``, and ``pkg.a`` "imports"
``pkg``), although nothing in ``pkg.a`` depends on the package's namespace. The re-export
itself is fine. What *is* a cycle is a submodule taking a name from its own package's
``__init__`` (``from pkg import B`` in ``pkg/a.py``, where ``pkg/__init__`` imports ``pkg.a``):
that depends on the order in which ``__init__`` runs; import from the defining submodule.
Every strongly connected component of more than one module is reported, with the import
lines that tie it together.

**Private reach.** In module ``M``, ``expr._name`` (any context: read, write, ``del``),
``getattr/setattr/hasattr/delattr(expr, "_name")`` with a literal name, and
``from X import _name`` are allowed only if ``_name`` is defined in ``M``: as a function,
class or method, a name assigned anywhere in ``M`` (module, class body, function), an
attribute assigned on ``self``/``cls`` (the first parameter of a method), a ``__slots__``
entry, or an import alias. Names are compared, not types: ``other._x`` in the module that
defines ``_x`` is fine (the module is the unit of privacy), and a name that two modules
both define is not caught. Dunder names are public; so are the namedtuple API
(``_replace``, ``_asdict``, ``_fields``, ``_make``, ``_field_defaults``) and enum's sunder
names (``_value_``, ``_missing_``, ...). A private *module* (``pkg/_speedups``) is private
to its package: modules of the same package may import it. Stdlib and third-party
privates (``os._exit``, ``from typing import _X``) are reported like any other; the few
deliberate ones are listed in ``EXTERNAL_ALLOWED`` with a reason each.

**Module size.** No module over ``MAX_LINES`` physical lines.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

MAX_LINES = 600

# Underscore names that are a public API by the stdlib's own documentation.
PUBLIC_UNDERSCORE = frozenset({"_replace", "_asdict", "_fields", "_make", "_field_defaults"})

# "module._name" of stdlib/third-party privates used on purpose, with the reason.
EXTERNAL_ALLOWED: dict[str, str] = {
    "os._exit": "the drain watchdog ends a process whose shutdown hangs, from a timer thread, "
    "without running cleanup that may be what hangs (the documented use of os._exit)",
    "zlib._Compress": "typeshed's name for the type of zlib.compressobj(), which zlib does "
    "not name publicly; used in annotations only",
    "zlib._Decompress": "likewise for zlib.decompressobj()",
}


@dataclass(frozen=True)
class Module:
    """One module of the tree: its dotted name, file, and whether it is a package."""

    name: str
    path: Path
    is_package: bool

    @property
    def package(self) -> str:
        """The package its relative imports are resolved against."""
        return self.name if self.is_package else self.name.rpartition(".")[0]


@dataclass(frozen=True)
class Edge:
    """An import of ``target`` written in ``source`` at ``line``."""

    source: str
    target: str
    line: int


@dataclass(frozen=True)
class Cycle:
    """Modules that import each other (a strongly connected component) and the imports."""

    modules: tuple[str, ...]
    edges: tuple[Edge, ...]

    def __str__(self) -> str:
        lines = [f"import cycle of {len(self.modules)} modules: {', '.join(self.modules)}"]
        lines += [f"    {e.source}:{e.line} imports {e.target}" for e in self.edges]
        return "\n".join(lines)


@dataclass(frozen=True)
class PrivateReach:
    """``name``, private to another module, used in ``module`` at ``line`` (as ``code``);
    ``inherited_from``: the module of a base class that defines it, when ``code`` is
    ``self._name`` in a subclass."""

    module: str
    line: int
    name: str
    code: str
    inherited_from: str | None = None

    def __str__(self) -> str:
        via = f", inherited from {self.inherited_from}" if self.inherited_from else ""
        return f"private reach: {self.module}:{self.line} uses {self.name} ({self.code}{via})"


@dataclass(frozen=True)
class LongModule:
    """A module of more than ``MAX_LINES`` lines."""

    module: str
    lines: int

    def __str__(self) -> str:
        return f"long module: {self.module} has {self.lines} lines (> {MAX_LINES})"


@dataclass
class Report:
    """Everything the checker found in one tree."""

    cycles: list[Cycle] = field(default_factory=list)
    private: list[PrivateReach] = field(default_factory=list)
    long: list[LongModule] = field(default_factory=list)

    @property
    def reaches(self) -> list[PrivateReach]:
        """Private reaches other than a subclass's use of its base class's names."""
        return [r for r in self.private if r.inherited_from is None]

    @property
    def inherited(self) -> list[PrivateReach]:
        """A subclass using, on ``self``/``cls``, a private name its base class's module
        defines ("protected" access across modules)."""
        return [r for r in self.private if r.inherited_from is not None]

    def lines(self) -> list[str]:
        """One line (or block) per violation, grouped by rule."""
        return [str(v) for group in (self.cycles, self.private, self.long) for v in group]

    def __bool__(self) -> bool:
        return bool(self.cycles or self.private or self.long)


# ------------------------------------------------------------------------------- modules


def find_modules(package_dir: Path) -> dict[str, Module]:
    """Every ``.py`` module under ``package_dir`` (itself a package), by dotted name."""
    package_dir = package_dir.resolve()
    modules: dict[str, Module] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        name = ".".join(parts)
        modules[name] = Module(name, path, is_package)
    return modules


def native_modules(package_dir: Path) -> set[str]:
    """Extension modules by dotted name: built ones (``.so``/``.pyd``) and C sources
    (``_speedups.c`` in a package), so an unbuilt tree resolves the same imports."""
    package_dir = package_dir.resolve()
    names: set[str] = set()
    for pattern in ("*.so", "*.pyd", "*.c"):
        for path in package_dir.rglob(pattern):
            if not (path.parent / "__init__.py").exists():
                continue
            parts = path.relative_to(package_dir.parent).parts
            names.add(".".join([*parts[:-1], path.name.split(".")[0]]))
    return names


def resolve_from(module: Module, level: int, name: str | None) -> str:
    """The absolute module named by ``from <level dots><name> import ...`` in ``module``."""
    if level == 0:
        return name or ""
    base = module.package.split(".")
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


# ---------------------------------------------------------------------------- imports


def imports(
    module: Module,
    tree: ast.Module,
    known: set[str],
    bindings: dict[str, set[str]] | None = None,
) -> Iterator[Edge]:
    """Every import in ``module`` of a module in ``known`` (see the module docstring), once
    per line. ``bindings``: the names each package's ``__init__`` binds to something other
    than its own submodules (``package_bindings``); ``from pkg import name`` takes such a
    name from ``pkg``, as Python does (attribute first), even where a submodule ``pkg.name``
    exists."""
    bindings = bindings or {}
    seen: set[Edge] = set()

    def deepest(dotted: str) -> str | None:
        parts = dotted.split(".")
        for end in range(len(parts), 0, -1):
            candidate = ".".join(parts[:end])
            if candidate in known:
                return candidate
        return None

    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(module, node.level, node.module)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                own = sub in known and alias.name not in bindings.get(base, set())
                targets.append(sub if own else base)
        elif isinstance(node, ast.Call) and _is_import_module_call(node):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                targets = [arg.value]
        for target in targets:
            resolved = deepest(target)
            edge = Edge(module.name, resolved or "", getattr(node, "lineno", 0))
            if resolved is not None and resolved != module.name and edge not in seen:
                seen.add(edge)
                yield edge


def package_bindings(
    modules: dict[str, Module], trees: dict[str, ast.Module], known: set[str]
) -> dict[str, set[str]]:
    """For each package: the names its ``__init__`` binds at module level (definitions,
    assignments, imports; inside ``if``/``try``/``with``/``for`` too), except those bound
    to its own submodules (``from . import sub``, ``import pkg.sub as sub``)."""
    return {
        name: _top_level_bindings(module, trees[name].body, known)
        for name, module in modules.items()
        if module.is_package
    }


def _top_level_bindings(module: Module, statements: list[ast.stmt], known: set[str]) -> set[str]:
    bound: set[str] = set()
    for node in statements:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(module, node.level, node.module)
            for alias in node.names:
                submodule = f"{base}.{alias.name}" in known and base == module.name
                if not (submodule and alias.asname is None):
                    bound.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not (alias.asname and alias.name in known):
                    bound.add(alias.asname or alias.name.split(".")[0])
        elif isinstance(node, ast.If | ast.Try | ast.With | ast.For | ast.While):
            targets: list[ast.AST] = []
            if isinstance(node, ast.For):
                targets.append(node.target)
            if isinstance(node, ast.With):
                targets += [i.optional_vars for i in node.items if i.optional_vars]
            for target in targets:
                bound.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
            for field_name in ("body", "orelse", "finalbody"):
                bound |= _top_level_bindings(module, getattr(node, field_name, []), known)
            for handler in getattr(node, "handlers", []):
                bound |= _top_level_bindings(module, handler.body, known)
        else:
            bound.update(
                n.id
                for n in ast.walk(node)
                if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)
            )
    return bound


def _is_import_module_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return name in ("import_module", "__import__") and bool(node.args)


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative: the strongly connected components of ``graph``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
                if low[node] == index[node]:
                    component: list[str] = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    components.append(sorted(component))
    return components


def find_cycles(edges: Iterable[Edge], modules: Iterable[str]) -> list[Cycle]:
    """The import cycles (components of more than one module), largest first."""
    edges = list(edges)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for edge in edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    cycles = []
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        members = set(component)
        inside = sorted(
            {e for e in edges if e.source in members and e.target in members},
            key=lambda e: (e.source, e.line, e.target),
        )
        cycles.append(Cycle(tuple(component), tuple(inside)))
    return sorted(cycles, key=lambda c: (-len(c.modules), c.modules))


# ------------------------------------------------------------------------ private names


def is_private(name: str) -> bool:
    """``_x`` or ``__x``, but not ``__x__`` (dunder), not enum's ``_x_`` (sunder), not the
    namedtuple API."""
    if not name.startswith("_") or name in PUBLIC_UNDERSCORE or name.strip("_") == "":
        return False
    if name.startswith("__") and name.endswith("__"):
        return False
    return not (name.endswith("_") and not name.startswith("__"))


def defined_names(tree: ast.Module) -> set[str]:
    """Names ``tree`` defines (see "Private reach" in the module docstring).

    A name assigned inside a function counts only when declared ``global`` there: a local
    variable cannot be reached as an attribute, and counting it would let
    ``_flush = conn._flush`` pass."""
    names: set[str] = set()

    def visit(node: ast.AST, scope: str, receivers: frozenset[str]) -> None:
        if isinstance(node, ast.ClassDef):
            names.add(node.name)
            scope, receivers = "class", frozenset()
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            names.add(node.name)
            params = [*node.args.posonlyargs, *node.args.args]
            if scope == "class" and params:
                receivers = receivers | {params[0].arg}
            scope = "function"
        elif isinstance(node, ast.Global):
            names.update(node.names)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            if scope != "function":
                names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            if isinstance(node.value, ast.Name) and node.value.id in receivers:
                names.add(node.attr)
        elif isinstance(node, ast.alias):
            names.add(node.asname or node.name.split(".")[0])
        elif isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "__slots__" for t in targets):
                for const in ast.walk(node.value):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        names.add(const.value)
        for child in ast.iter_child_nodes(node):
            visit(child, scope, receivers)

    visit(tree, "module", frozenset())
    return names


def imported_modules(tree: ast.Module) -> dict[str, str]:
    """Local names bound to whole modules by ``import x`` / ``import x.y as z``."""
    bound: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.asname:
                    bound[alias.asname] = alias.name
                else:
                    first = alias.name.split(".")[0]
                    bound[first] = first
    return bound


@dataclass
class Source:
    """One parsed module and what the private-reach check needs to know about it."""

    module: Module
    tree: ast.Module
    defined: set[str]
    # local name -> (module, name) for ``from module import name [as local]``
    from_imports: dict[str, tuple[str, str]]
    # class name -> its base class expressions
    bases: dict[str, list[ast.expr]]

    @classmethod
    def read(cls, module: Module, text: str) -> Source:
        tree = ast.parse(text, filename=str(module.path))
        from_imports: dict[str, tuple[str, str]] = {}
        bases: dict[str, list[ast.expr]] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                base = resolve_from(module, node.level, node.module)
                for alias in node.names:
                    from_imports[alias.asname or alias.name] = (base, alias.name)
            elif isinstance(node, ast.ClassDef):
                bases[node.name] = list(node.bases)
        return cls(module, tree, defined_names(tree), from_imports, bases)


def inherited_from(
    sources: dict[str, Source], module: str, cls: str, name: str, depth: int = 0
) -> str | None:
    """The module of a base class (at any depth) of ``module.cls`` that defines ``name``,
    following ``from ... import Base`` within the tree."""
    source = sources.get(module)
    if source is None or depth > 20:
        return None
    for base in source.bases.get(cls, []):
        if not isinstance(base, ast.Name):
            continue
        if base.id in source.bases:  # a base class in the same module
            found = inherited_from(sources, module, base.id, name, depth + 1)
        elif base.id in source.from_imports:
            owner, base_name = source.from_imports[base.id]
            if owner in sources and name in sources[owner].defined:
                return owner
            found = inherited_from(sources, owner, base_name, name, depth + 1)
        else:
            found = None
        if found:
            return found
    return None


def private_reaches(
    source: Source, sources: dict[str, Source], native: set[str]
) -> Iterator[PrivateReach]:
    """Uses in ``source`` of underscore names it does not define."""
    module, own = source.module, source.defined
    bound = imported_modules(source.tree)
    internal = set(sources) | native

    def reach(node: ast.AST, name: str, code: str, via: str | None = None) -> PrivateReach:
        return PrivateReach(module.name, getattr(node, "lineno", 0), name, code, via)

    def visit(node: ast.AST, cls: str | None, receivers: frozenset[str]) -> Iterator[PrivateReach]:
        if isinstance(node, ast.ClassDef):
            cls, receivers = node.name, frozenset()
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            params = [*node.args.posonlyargs, *node.args.args]
            if cls is not None and params and not receivers:
                receivers = frozenset({params[0].arg})
        yield from check_node(node, cls, receivers)
        for child in ast.iter_child_nodes(node):
            yield from visit(child, cls, receivers)

    def check_node(
        node: ast.AST, cls: str | None, receivers: frozenset[str]
    ) -> Iterator[PrivateReach]:
        if isinstance(node, ast.Attribute):
            if not is_private(node.attr) or node.attr in own:
                return
            base = node.value.id if isinstance(node.value, ast.Name) else None
            if base in bound and f"{bound[base]}.{node.attr}" in EXTERNAL_ALLOWED:
                return
            via = None
            on_super = (
                isinstance(node.value, ast.Call)
                and isinstance(node.value.func, ast.Name)
                and node.value.func.id == "super"
            )
            if cls is not None and (on_super or (base is not None and base in receivers)):
                via = inherited_from(sources, module.name, cls, node.attr)
            yield reach(node, node.attr, ast.unparse(node), via)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id not in ("getattr", "setattr", "hasattr", "delattr"):
                return
            if len(node.args) < 2 or not isinstance(node.args[1], ast.Constant):
                return
            name = node.args[1].value
            if isinstance(name, str) and is_private(name) and name not in own:
                yield reach(node, name, ast.unparse(node))
        elif isinstance(node, ast.ImportFrom):
            base = resolve_from(module, node.level, node.module)
            if not _module_ok(base, module, internal):
                yield reach(node, base, f"from {base} import ...")
            for alias in node.names:
                dotted = f"{base}.{alias.name}"
                if not is_private(alias.name) or dotted in EXTERNAL_ALLOWED:
                    continue
                if dotted in internal and _module_ok(dotted, module, internal):
                    continue  # a private module of our own package
                yield reach(node, alias.name, f"from {base} import {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if not _module_ok(alias.name, module, internal):
                    yield reach(node, alias.name, f"import {alias.name}")

    yield from visit(source.tree, None, frozenset())


def _module_ok(dotted: str, module: Module, internal: set[str]) -> bool:
    """An import of module ``dotted`` is fine from ``module``: it is allowed in
    ``EXTERNAL_ALLOWED``, or each private part of its name is a module of the tree whose
    package contains ``module``."""
    if dotted in EXTERNAL_ALLOWED:
        return True
    parts = dotted.split(".")
    for i, part in enumerate(parts):
        if not is_private(part):
            continue
        owner = ".".join(parts[:i])
        name = ".".join(parts[: i + 1])
        if name not in internal or not owner:
            return False
        if not (module.name == owner or module.name.startswith(owner + ".")):
            return False
    return True


# ------------------------------------------------------------------------------ report


def imports_of(package_dir: Path) -> list[Edge]:
    """Every import edge between modules of the package at ``package_dir``."""
    modules = find_modules(package_dir)
    known = set(modules) | native_modules(package_dir)
    trees = {
        name: ast.parse(m.path.read_text(encoding="utf-8"), filename=str(m.path))
        for name, m in modules.items()
    }
    bindings = package_bindings(modules, trees, known)
    return [e for name, m in modules.items() for e in imports(m, trees[name], known, bindings)]


def check(package_dir: Path, max_lines: int = MAX_LINES) -> Report:
    """Run the three checks on the package at ``package_dir`` (e.g. ``src/pulsewire``)."""
    modules = find_modules(package_dir)
    native = native_modules(package_dir)
    known = set(modules) | native
    report = Report()
    sources: dict[str, Source] = {}
    for module in modules.values():
        text = module.path.read_text(encoding="utf-8")
        count = len(text.splitlines())
        if count > max_lines:
            report.long.append(LongModule(module.name, count))
        sources[module.name] = Source.read(module, text)
    trees = {name: source.tree for name, source in sources.items()}
    bindings = package_bindings(modules, trees, known)
    edges: list[Edge] = []
    for source in sources.values():
        edges.extend(imports(source.module, source.tree, known, bindings))
        report.private.extend(private_reaches(source, sources, native))
    report.cycles = find_cycles(edges, modules)
    report.private.sort(key=lambda r: (r.inherited_from is not None, r.module, r.line, r.name))
    report.long.sort(key=lambda r: -r.lines)
    return report


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    root = Path(argv[0]) if argv else Path(__file__).resolve().parents[1] / "src" / "pulsewire"
    report = check(root)
    for line in report.lines():
        print(line)
    print(
        f"{len(report.cycles)} import cycles, {len(report.reaches)} private reaches, "
        f"{len(report.inherited)} inherited private reaches, {len(report.long)} long modules"
    )
    return 1 if report else 0


if __name__ == "__main__":
    sys.exit(main())
