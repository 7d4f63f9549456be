"""The package's import layers: every import runs downward through the stages, and none closes a circle.

Parses every module (``ast``; imports inside functions count too) so a new upward import fails here
with the file, the line and the name, whether or not any test executes it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "abtf_ssd"

ROOT_FACTS = ("abtf_ssd", "abtf_ssd.config", "abtf_ssd.cognata", "abtf_ssd.fileio")
STAGES = ("data", "model", "loadgen", "submission", "mlc")
"""The stage folders, lowest first: a stage imports from the package root and the stages before it."""
TOP = ("abtf_ssd.cli", "abtf_ssd.__main__")
"""The command line, above every stage."""


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer(module: str) -> int:
    """0 for the root facts, 1.. for the stages in order, above them the command line."""
    if module in ROOT_FACTS:
        return 0
    if module in TOP:
        return len(STAGES) + 1
    parts = module.split(".")
    if len(parts) > 1 and parts[1] in STAGES:
        return STAGES.index(parts[1]) + 1
    raise AssertionError(
        f"{MODULES.get(module, module)}: a root module that is no known layer; "
        "put it in a stage folder or add it to ROOT_FACTS / TOP here"
    )


def layer_name(index: int) -> str:
    return "root" if index == 0 else "cli" if index > len(STAGES) else STAGES[index - 1]


def imports(module: str) -> list[tuple[int, str]]:
    """(line, imported module of this package) for every import in ``module``."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "abtf_ssd"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != "abtf_ssd":
                continue
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.append((node.lineno, child if child in MODULES else base))
    return found


def test_every_module_has_a_layer() -> None:
    for module in MODULES:
        layer(module)


def test_imports_run_downward() -> None:
    upward = []
    for module in MODULES:
        for line, target in imports(module):
            if target not in MODULES:
                upward.append(f"{MODULES[module]}:{line}: imports {target}, which does not exist")
            elif layer(target) > layer(module):
                upward.append(
                    f"{MODULES[module]}:{line}: imports {target} ({layer_name(layer(target))}) "
                    f"from {layer_name(layer(module))}, a lower layer"
                )
    assert not upward, "imports that run up:\n" + "\n".join(upward)


def find_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``graph`` as a path that starts and ends at the same module, or None."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (circle := visit(nxt)):
                return circle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (circle := visit(node)):
            return circle
    return None


def test_no_import_circle() -> None:
    graph = {m: {t for _, t in imports(m) if t in MODULES and t != m} for m in MODULES}
    circle = find_circle(graph)
    assert circle is None, "import circle: " + " -> ".join(circle)


def test_find_circle_sees_one() -> None:
    assert find_circle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_circle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("stage", STAGES)
def test_stage_docstring_names_what_it_may_import(stage: str) -> None:
    """Each stage's ``__init__`` docstring ends with the layers below it, in order."""
    doc = ast.get_docstring(ast.parse((PACKAGE / stage / "__init__.py").read_text(encoding="utf-8"))) or ""
    lower = ["the package root", *(f"``{s}``" for s in STAGES[: STAGES.index(stage)])]
    may = [line for line in doc.splitlines() if line.startswith("May import:")]
    assert may, f"abtf_ssd/{stage}/__init__.py: no 'May import:' line in the docstring"
    assert may[-1].startswith(f"May import: {', '.join(lower)}"), (
        f"abtf_ssd/{stage}/__init__.py: says {may[-1]!r}; the layers below it are {', '.join(lower)}"
    )
