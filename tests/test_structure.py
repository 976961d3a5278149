"""The package's shape: no import cycles (module-level or inside functions), no module reaching into another's
private names."""

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ragtune"


def _imports() -> dict[str, list[tuple[str, list[str]]]]:
    """module -> [(imported ragtune module, names taken from it)], from every import statement in the file."""
    found: dict[str, list[tuple[str, list[str]]]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        edges = []
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("ragtune."):
                edges.append((node.module.split(".")[1], [a.name for a in node.names]))
            elif isinstance(node, ast.ImportFrom) and node.module == "ragtune":
                edges += [(a.name, []) for a in node.names]
        found[path.stem] = edges
    return found


def test_no_import_cycles():
    graph = defaultdict(set)
    for module, edges in _imports().items():
        graph[module] |= {target for target, _ in edges if target != module}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*path, nxt])
            if nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert "export" not in graph["embeddings"]  # the cycle this test was written for


def test_no_module_imports_another_modules_private_names():
    offenders = [
        f"{module} imports {name} from {target}"
        for module, edges in _imports().items()
        for target, names in edges
        for name in names
        if name.startswith("_") and target != module
    ]
    assert offenders == []
