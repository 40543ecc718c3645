"""The layers import only downwards: config -> data -> methods -> trainer -> evaluation/report -> the run.

Each module of the project belongs to one layer; a module may import its own layer and the layers below it. The
imports are read from the source (every `import` and `from ... import`, also inside functions), so a lazy import
cannot hide an upward arrow.
"""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# (layer, the modules or packages in it), bottom first.
LAYERS = [
    ("foundation", ["engine.config", "engine.seeding", "engine.distributed", "engine.checkpoint", "metrics",
                    "torch_clustering", "consensus", "losses"]),
    ("data", ["datasets"]),
    ("methods", ["models"]),
    ("trainer", ["engine.trainer", "engine.divclust", "engine.logger"]),
    ("evaluation and report", ["engine.evaluate", "engine.plots", "engine.report"]),
    ("run", ["engine.run", "engine.preflight", "main", "scripts"]),
]


def layer_of(module: str) -> int | None:
    best, index = "", None
    for i, (_, members) in enumerate(LAYERS):
        for member in members:
            if (module == member or module.startswith(member + ".")) and len(member) > len(best):
                best, index = member, i
    return index


def project_modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0] in ("tests", ".git") or "__pycache__" in rel.parts:
            continue
        name = ".".join(rel.with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0] if "." in name else ""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            out.add(module)
            out |= {f"{module}.{alias.name}" for alias in node.names}
    return out


def test_every_project_module_has_a_layer():
    assert [n for n in project_modules() if layer_of(n) is None] == []


def test_no_module_imports_a_higher_layer():
    modules = project_modules()
    upward = []
    for name, path in sorted(modules.items()):
        own = layer_of(name)
        for target in imports_of(name, path):
            if target.split(".")[0] not in {m.split(".")[0] for m in modules}:
                continue   # a third-party or standard module
            other = layer_of(target)
            if other is not None and other > own:
                upward.append(f"{name} ({LAYERS[own][0]}) imports {target} ({LAYERS[other][0]})")
    assert upward == []


def test_torch_clustering_has_no_import_cycle():
    modules = {n: p for n, p in project_modules().items() if n.startswith("torch_clustering")}
    # `from . import x` names the package too; the package's __init__ re-exporting its modules is not a cycle
    graph = {n: {t for t in imports_of(n, p) if t in modules and t not in (n, "torch_clustering")}
             for n, p in modules.items()}

    def reach(start: str) -> set[str]:
        seen, todo = set(), list(graph[start])
        while todo:
            node = todo.pop()
            if node not in seen:
                seen.add(node)
                todo += graph.get(node, ())
        return seen

    cycles = [n for n in graph if n in reach(n) and n != "torch_clustering"]
    assert cycles == []
