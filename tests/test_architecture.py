"""test_architecture.py - the structure rules of the package, checked on its source.

Why a test and not a review habit: the rules (no import cycles, small modules, no
behaviour mixins, no callbacks wired onto other objects after construction) erode one
convenient change at a time; a failing test names the change that broke one. The import
contracts between layers (cores without trio/pyfuse3/sqlite3, client and servers apart)
are import-linter's (`lint-imports`, pyproject.toml), run by scripts/test; this module
checks what import-linter does not.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import grimp
import pytest

PKG = Path(__file__).resolve().parent.parent / "mlustre"
MAX_LINES = 800


def _modules() -> list[Path]:
    return sorted(p for p in PKG.rglob("*.py"))


def _strongly_connected(graph: grimp.ImportGraph) -> list[list[str]]:
    """Tarjan's algorithm over the module graph: every component of more than one
    module is an import cycle."""
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.find_modules_directly_imported_by(v):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for m in sorted(graph.modules):
        if m not in index:
            visit(m)
    return found


def test_no_import_cycles_anywhere_in_the_package() -> None:
    # Imports under TYPE_CHECKING count too: a cycle for the type checker is still two
    # modules that cannot be understood (or moved) one without the other.
    graph = grimp.build_graph("mlustre")
    assert _strongly_connected(graph) == []


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "cyclepkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from . import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import a\n")
    (pkg / "c.py").write_text("from . import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert _strongly_connected(grimp.build_graph("cyclepkg")) == [["cyclepkg.a", "cyclepkg.b"]]


def test_no_module_over_800_lines() -> None:
    long = {str(p.relative_to(PKG.parent)): n for p in _modules()
            if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


# Bases a class may add to its one real base: interfaces and data types, not behaviour.
_ALLOWED_EXTRA_BASES = {"Protocol", "Generic", "NamedTuple", "Exception", "ABC"}


def _base_name(node: ast.expr) -> str:
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Name):
        return node.id
    return ast.unparse(node)


def mixin_classes(source: str) -> list[str]:
    """Classes built from more than one base that carries behaviour."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ClassDef):
            bases = [_base_name(b) for b in node.bases]
            behaviour = [b for b in bases if b not in _ALLOWED_EXTRA_BASES]
            if len(behaviour) > 1 or any(b.endswith("Mixin") for b in bases):
                found.append(f"{node.name}({', '.join(bases)})")
    return found


def test_no_mixin_classes() -> None:
    found = {str(p.relative_to(PKG.parent)): m for p in _modules()
             if (m := mixin_classes(p.read_text()))}
    assert found == {}


def _is_self(node: ast.expr) -> bool:
    return isinstance(node, ast.Name) and node.id == "self"


def _is_callback(value: ast.expr) -> bool:
    """`self.method`, `lambda ...`, `partial(...)` or `self` (a back-reference)."""
    return (isinstance(value, ast.Lambda)
            or (isinstance(value, ast.Call) and _base_name(value.func) == "partial")
            or (isinstance(value, ast.Attribute) and _is_self(value.value))
            or _is_self(value))


# Methods that add to a collection, and collection names that hold callbacks.
_ADDERS = {"append", "extend", "add", "insert", "setdefault"}
_HOOK_WORDS = ("hook", "callback", "listener", "handler", "subscriber", "watcher")


def _names_hooks(attr: str) -> bool:
    return attr.startswith("on_") or any(w in attr for w in _HOOK_WORDS)


def late_callbacks(source: str) -> list[str]:
    """Wiring of behaviour onto another object after it was built:
    `other.attr = self.method`, `other.attr = lambda ...`, `other.attr = partial(...)`,
    `other.attr = self` (a back-reference the other object will call), the same into an
    item of another object's collection (`other.hooks[key] = self.method`), and
    subscriptions to another object's hook list (`other.on_x.append(anything)`, or any
    callback added to another object's collection)
    (`self.x = ...` is an object setting itself up, which is fine)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and _is_callback(node.value):
            for target in node.targets:
                if isinstance(target, ast.Subscript):
                    target = target.value  # (an item of the collection: the same)
                    if not isinstance(target, ast.Attribute):
                        continue
                if isinstance(target, ast.Attribute) and not _is_self(target.value):
                    found.append((node.lineno, ast.unparse(node)))
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
              and node.func.attr in _ADDERS and isinstance(node.func.value, ast.Attribute)
              and not _is_self(node.func.value.value)
              and (_names_hooks(node.func.value.attr)
                   or any(_is_callback(a) for a in node.args))):
            found.append((node.lineno, ast.unparse(node)))
    return [f"line {n}: {text}" for n, text in sorted(found)]


def test_no_callbacks_assigned_onto_other_objects() -> None:
    found = {str(p.relative_to(PKG.parent)): c for p in _modules()
             if (c := late_callbacks(p.read_text()))}
    assert found == {}


def test_the_checks_find_what_they_forbid() -> None:
    assert mixin_classes("class A(Base, Mixin2): pass\nclass B(Base): pass") == [
        "A(Base, Mixin2)"]
    assert mixin_classes("class P(Base, Protocol): pass\nclass E(Base, Exception): pass") == []
    src = ("class X:\n    def __init__(self, imp):\n        imp.on_reset = self._reset\n"
           "        imp.gate = lambda: 1\n        self.cb = self._reset\n        imp.n = self.n\n"
           "        imp.owner = self\n        imp.count = 0\n")
    assert late_callbacks(src) == ["line 3: imp.on_reset = self._reset",
                                   "line 4: imp.gate = lambda: 1",
                                   "line 6: imp.n = self.n",
                                   "line 7: imp.owner = self"]
    subscriptions = (
        "class Y:\n    def __init__(self, imp, locks, hooks):\n"
        "        imp.on_connected.append(self._connected)\n"        # 3: onto another's hooks
        "        imp.on_committed.append(hooks.on_committed)\n"     # 4: someone else's hook
        "        imp.listeners.add(self)\n"                          # 5: a back-reference
        "        locks.bast_hooks[self.res] = self._bast\n"          # 6: an item of its table
        "        imp.queue.append(lambda: 1)\n"                      # 7: a callback all the same
        "        self.on_x.append(self._y)\n"                        # its own list: fine
        "        imp.items.append(3)\n"                              # data: fine
        "        imp.on_x.count(self._y)\n"                          # no subscription: fine
        "        self.table[1] = self._y\n")                         # its own table: fine
    assert late_callbacks(subscriptions) == [
        "line 3: imp.on_connected.append(self._connected)",
        "line 4: imp.on_committed.append(hooks.on_committed)",
        "line 5: imp.listeners.add(self)",
        "line 6: locks.bast_hooks[self.res] = self._bast",
        "line 7: imp.queue.append(lambda: 1)"]
