"""The code map holds: imports run one way, no module imports an entry point, deepspeed stays in vimpac/train/."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = {"vimpac.pretrain", "vimpac.finetune", "vimpac.predict", "vimpac.export", "vimpac.modeling",
                "vimpac.knn", "vimpac.convert_original", "vimpac.demo.__main__"}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports() -> dict[str, set[str]]:
    """Every module of vimpac/ and video2token/ -> the project modules (and deepspeed) it imports, anywhere in it."""
    out = {}
    for pkg in ("vimpac", "video2token"):
        for path in (ROOT / pkg).rglob("*.py"):
            name = module_name(path)
            found = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    found.update(a.name for a in node.names)
                elif isinstance(node, ast.ImportFrom) and node.module:
                    base = node.module
                    if node.level:  # relative import
                        base = ".".join(name.split(".")[:-node.level] + [node.module])
                    found.add(base)
                    found.update(f"{base}.{a.name}" for a in node.names)
            out[name] = {m for m in found if m.split(".")[0] in ("vimpac", "video2token", "deepspeed")}
    return out


def project_edges(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in targets if t in graph and t != m} for m, targets in graph.items()}


def test_no_import_circle():
    edges = project_edges(imports())
    state: dict[str, int] = {}

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for t in edges[m]:
            if state.get(t) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(t):] + [m, t]))
            if t not in state:
                visit(t, stack + [m])
        state[m] = 2

    for m in edges:
        if m not in state:
            visit(m, [])


def test_no_module_imports_an_entry_point_and_packages_import_one_way():
    graph = imports()
    edges = project_edges(graph)
    for m, targets in edges.items():
        assert not (targets & ENTRY_POINTS), f"{m} imports the entry point(s) {targets & ENTRY_POINTS}"
        if m.startswith("video2token"):
            assert not any(t.startswith("vimpac") for t in targets), f"{m} imports vimpac"
        for pkg in ("vimpac.model", "vimpac.data", "vimpac.eval", "vimpac.serve"):
            if m.startswith(pkg):
                assert not any(t.startswith("vimpac.train") for t in targets), f"{m} imports vimpac.train"
        if m.startswith("vimpac.model"):
            assert not any(t.startswith(("vimpac.data", "vimpac.eval", "vimpac.serve")) for t in targets), m
    users = sorted(m for m, targets in graph.items() if any(t.split(".")[0] == "deepspeed" for t in targets))
    assert users and all(m.startswith("vimpac.train") for m in users), users
