"""The layer rule of docs/design.md, checked on every module's source.

Every `import` and `from ... import` counts, at module level and inside function bodies alike
(a function-local import may defer a heavy dependency, never get around the rule). A module may
import its own layer and the layers below it, and no import may close a cycle between modules.
Imports under `if TYPE_CHECKING:` (annotations only, never run) must follow the layer rule too,
but may name a module of the same layer that imports this one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "cejobs"

# Lowest first. A module belongs to the first layer with a prefix that matches its name
# (entry points are listed before the packages that hold them).
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("entry", ("cejobs", "cejobs.generate", "cejobs.evaluate", "cejobs.status",
               "cejobs.array_task", "cejobs.cli", "cejobs.train.__main__",
               "cejobs.models.__main__", "cejobs.bench", "cejobs.bench_")),
    ("base", ("cejobs.errors", "cejobs.version", "cejobs.settings", "cejobs.threads",
              "cejobs.devices", "cejobs.hosts", "cejobs.slurm_env")),
    ("models", ("cejobs.models",)),
    ("method", ("cejobs.method",)),
    ("eval", ("cejobs.eval",)),
    ("store", ("cejobs.store",)),
    ("data", ("cejobs.data", "cejobs.ce_dataset")),
    ("jobs", ("cejobs.jobs", "cejobs.train")),
    ("backends", ("cejobs.backends",)),
    ("drivers", ("cejobs.drivers",)),
]
ORDER = ["base", "models", "method", "eval", "store", "data", "jobs", "backends", "drivers",
         "entry"]


def module_names() -> dict[str, Path]:
    names = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def layer_of(module: str) -> str:
    for layer, prefixes in LAYERS:
        for prefix in prefixes:
            exact = layer == "entry" and prefix in ("cejobs",)
            if module == prefix or (not exact and module.startswith(prefix + ".")):
                return layer
    raise AssertionError(f"{module} is in no layer: add it to docs/design.md and LAYERS")


def _type_checking_nodes(tree: ast.AST) -> set[int]:
    """ids of the nodes inside `if TYPE_CHECKING:` blocks."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                inside.update(id(n) for n in ast.walk(child))
    return inside


def imports_of(module: str, path: Path, known: dict[str, Path], *,
               type_checking: bool = True) -> set[str]:
    """The cejobs modules that `module` imports anywhere in its source (without those under
    `if TYPE_CHECKING:` when `type_checking` is false)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    skip = set() if type_checking else _type_checking_nodes(tree)
    found = set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known
                       else source for alias in node.names]
        else:
            continue
        for target in targets:
            if not (target == "cejobs" or target.startswith("cejobs.")):
                continue
            while target not in known and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != module:
                found.add(target)
    return found


def graph(type_checking: bool = True) -> dict[str, set[str]]:
    known = module_names()
    return {name: imports_of(name, path, known, type_checking=type_checking)
            for name, path in known.items()}


def test_every_import_points_down_or_sideways():
    broken = []
    for module, targets in sorted(graph().items()):
        rank = ORDER.index(layer_of(module))
        for target in sorted(targets):
            if target == "cejobs" and module != "cejobs":
                broken.append(f"{module} imports the package root (import what it needs from "
                              f"its module)")
            elif ORDER.index(layer_of(target)) > rank:
                broken.append(f"{module} ({layer_of(module)}) imports {target} "
                              f"({layer_of(target)})")
    assert not broken, "imports against the layer rule:\n" + "\n".join(broken)


def test_no_import_cycles():
    edges = graph(type_checking=False)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "closed"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_function_local_imports(tmp_path):
    """The walk finds an import inside a function body, relative or absolute."""
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from cejobs.drivers import api\n    from ..store import lease\n")
    known = {"cejobs.drivers.api": source, "cejobs.store.lease": source,
             "cejobs.method.mod": source}
    assert imports_of("cejobs.method.mod", source, known) == {"cejobs.drivers.api",
                                                               "cejobs.store.lease"}
