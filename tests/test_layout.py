"""The on-disk names live in softarm.layout alone, and softarm's modules import each other without a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

from softarm import layout

SRC = Path(__file__).parents[1] / "src" / "softarm"


def _modules() -> dict[str, ast.Module]:
    trees = {}
    for path in sorted(SRC.rglob("*.py")):
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        trees[name] = ast.parse(path.read_text(), filename=str(path))
    return trees


def _imports(tree: ast.Module, modules: set[str]) -> set[str]:
    """softarm modules imported anywhere in the file (function-level imports included: they hide cycles)."""
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found.update(n for n in names if n in modules)
    return found


def test_softarm_modules_import_each_other_without_a_cycle() -> None:
    trees = _modules()
    graph = {name: _imports(tree, set(trees)) - {name} for name, tree in trees.items()}
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for other in sorted(graph[name]):
            if state.get(other) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(other) :], other]))
            if other not in state:
                visit(other, [*path, other])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert "softarm.data.convert" not in graph["softarm.data.prepared"]  # the reader does not import its writer
    assert not any(m.startswith("softarm.train") for m in graph["softarm.policy"])  # inference without training code


def test_file_names_are_spelled_only_in_the_layout_module() -> None:
    names = {v for k, v in vars(layout).items() if k.endswith(("_FILE", "_DIR", "_PLOT")) and isinstance(v, str)}
    assert {"meta.json", "tokenizer.model", "model.safetensors", "metrics.jsonl"} <= names
    spelled = []
    for name, tree in _modules().items():
        if name == "softarm.layout":
            continue
        spelled += [
            f"{name}:{node.lineno} {node.value!r}"
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
        ]
    assert spelled == []
