"""The package's shape: no import cycle (every import counted, module level or not), and modules small enough
to read (docs/architecture.md). These fail on the layout this redesign replaced (three cycles, a 1,255-line CLI)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "taskprune"
LIBRARY_LIMIT, CLI_LIMIT = 450, 350


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Modules ``name`` imports, with the packages whose ``__init__`` such an import runs (not its own parents,
    which are already running, nor the root package, whose ``__init__`` is the public API)."""
    is_pkg = path.name == "__init__.py"
    here = name.split(".") if is_pkg else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    guarded = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
               for n in ast.walk(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in guarded:
            continue
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names if a.name.startswith("taskprune")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(here[: len(here) - (node.level - 1)] + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("taskprune"):
                base = node.module
            else:
                continue
            targets = [base] + [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in modules]
        for target in targets:
            parts = target.split(".")
            found.update(".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in modules)
    return {m for m in found if m != name and not name.startswith(m + ".")}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (a path that returns to its start), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> list[str] | None:
        state[v] = 1
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if state.get(w) == 1:
                return stack[stack.index(w):] + [w]
            if w not in state and (found := visit(w)):
                return found
        stack.pop()
        state[v] = 2
        return None

    for v in sorted(graph):
        if v not in state and (found := visit(v)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a"}}) is None


def test_the_package_has_no_import_cycle() -> None:
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    assert "taskprune.api" in graph["taskprune.cli.compress"]  # the walk sees imports at all
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"


def test_modules_stay_small_enough_to_read() -> None:
    too_long = {}
    for path in PACKAGE.rglob("*.py"):
        limit = CLI_LIMIT if path.parent.name == "cli" else LIBRARY_LIMIT
        n = len(path.read_text(encoding="utf-8").splitlines())
        if n > limit:
            too_long[str(path.relative_to(PACKAGE))] = n
    assert not too_long, f"over {LIBRARY_LIMIT} lines (cli/: {CLI_LIMIT}): {too_long}"
