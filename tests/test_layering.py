"""The package's layout follows the flow, and no module imports against it.

    config -> groups -> schedules -> freezer -> parts -> run -> study -> report -> cli

A module may import from its own layer and the layers before it, never from a later one, and
no two modules import each other, directly or around a circle. Every import counts: at the
top of a file, inside a function, or under ``TYPE_CHECKING`` (a type-only import is still a
dependency a reader has to follow). A new module must be given a layer here, so the structure
cannot drift without this file saying so.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"

#: Layers in flow order; a module belongs to the first prefix that matches its dotted name.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("freezelab.config", "freezelab.files")),  # plain data and file writing: import nothing of freezelab
    ("groups", ("freezelab.groups",)),
    ("schedules", ("freezelab.schedules",)),
    ("freezer", ("freezelab.lora_merge", "freezelab.freezer", "freezelab")),  # the package itself re-exports the engine
    # building blocks that know nothing of runs: data, models (and their checkpoints / LoRA), optimizers, measurements
    ("parts", ("freezelab.data", "freezelab.models", "freezelab.pretrained", "freezelab.optim", "freezelab.metrics",
               "freezelab.flops", "freezelab.stats")),
    ("run", ("freezelab.run", "freezelab.integrations", "freezelab.distributed")),  # one training run; hosts' adapters and DDP beside it
    ("study", ("freezelab.study",)),
    ("report", ("freezelab.report",)),
    ("cli", ("freezelab.cli", "freezelab.__main__")),
]


def module_name(path: Path, src: Path) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    best: tuple[int, int] | None = None  # (prefix length, layer index): the longest prefix wins
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            # "freezelab" names the package's __init__ only, not everything under it
            if module == prefix or (prefix != "freezelab" and module.startswith(prefix + ".")):
                if best is None or len(prefix) > best[0]:
                    best = (len(prefix), index)
    if best is None:
        raise LookupError(f"{module} has no layer; add it to LAYERS in tests/test_layering.py")
    return best[1]


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(src: Path = SRC, package: str = "freezelab") -> dict[str, set[str]]:
    """Every module of ``package`` under ``src`` -> the modules of ``package`` it imports."""
    modules = {module_name(p, src): p for p in (src / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(name, path.name == "__init__.py", node)
                # `from . import groups` names a module; `from .groups import Group` names the module's member
                found = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in found:
                while target and target not in modules:  # `import freezelab.run.loop` -> that module
                    target = target.rpartition(".")[0]
                if target.startswith(package) and target != name:
                    targets.add(target)
        graph[name] = targets
    return graph


def back_edges(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted((a, b) for a, targets in graph.items() for b in targets if layer_of(b) > layer_of(a))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_has_a_layer():
    for module in imports():
        layer_of(module)


def test_no_module_imports_against_the_flow():
    bad = [f"{a} ({LAYERS[layer_of(a)][0]}) imports {b} ({LAYERS[layer_of(b)][0]})" for a, b in back_edges(imports())]
    assert not bad, "imports against the flow:\n" + "\n".join(bad)


def test_no_import_circles():
    assert circles(imports()) == []


def test_config_is_plain_data():
    assert imports()["freezelab.config"] == set()


def test_the_checks_catch_a_back_edge_and_a_circle():
    graph = {"freezelab.config": {"freezelab.run.loop"}, "freezelab.run.loop": {"freezelab.config"}}
    assert back_edges(graph) == [("freezelab.config", "freezelab.run.loop")]
    assert circles(graph) == [["freezelab.config", "freezelab.run.loop"]]
