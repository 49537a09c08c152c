"""The package's import graph, read from its source with ``ast`` (nothing is imported): no import circle
anywhere, and no module imports a module of a higher layer (``LAYERS``).

Every import statement counts, at module level or inside a function: a lazy import still loads the
other module when it runs, and lazy imports can close a circle at run time. ``from .a import b`` loads
``a.b`` where that is a module, else ``a``. Loading a submodule also runs its parent packages'
``__init__``; those implicit edges are left out (``ddlm/__init__.py`` imports its names lazily by
string, which no statement shows).
"""

import ast
import collections
import pathlib

REPO = pathlib.Path(__file__).resolve().parent.parent
SOURCES = {"ddlm": REPO / "ddlm", "ddlm.kernels": REPO / "kernels"}  # import name -> folder (pyproject's package-dir)
ROOT = "ddlm"

# Lowest first. An entry names a module, or a package and everything in it (the root package only by
# name); a module may import its own layer and those below, never one above.
LAYERS = [
    # the mathematics: processes, schedules, score-entropy losses and backends, the score protocol, draws,
    # argument checks, option names, manifests; the Triton kernels
    ("ddlm.core", "ddlm.kernels"),
    # the ratio network and SEDD import; exact oracles, Markov chains, Brownian motion; the Gaussian companion
    ("ddlm.models", "ddlm.theory", "ddlm.continuous"),
    # reverse samplers; likelihood bounds
    ("ddlm.sampling", "ddlm.likelihood"),
    # corpora, tokenizers, model loading, text scores, DiffusionPipeline
    ("ddlm.text",),
    # scoring texts and files, the zero-shot suite, lm-eval, sample quality
    ("ddlm.evaluation",),
    # recipes, the training loop, checkpoints
    ("ddlm.training",),
    # the command line, the old module names, and the package's lazy front door
    ("ddlm.cli", "ddlm.__main__", "ddlm._moved", "ddlm"),
]


def module_files() -> dict[str, pathlib.Path]:
    """Every module of the package by import name (a package by its own name, for its __init__.py)."""
    files = {}
    for prefix, folder in SOURCES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            files[".".join((prefix, *parts))] = path
    return files


def owner(target: str, modules) -> str | None:
    """The module that loading ``target`` (a dotted name) reaches: its longest prefix that is a module."""
    while target and target not in modules:
        target = target.rpartition(".")[0]
    return target or None


def imported(name: str, path: pathlib.Path, node: ast.Import | ast.ImportFrom, modules) -> set[str]:
    """The package modules one import statement of module ``name`` (file ``path``) loads."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else []))
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names]
    return {module for module in (owner(target, modules) for target in targets) if module}


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports anywhere in its file (itself excluded)."""
    files = module_files()
    graph = {}
    for name, path in files.items():
        nodes = [node for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))) if isinstance(node, (ast.Import, ast.ImportFrom))]
        graph[name] = set().union(*(imported(name, path, node, files) for node in nodes)) - {name}
    return graph


def cycle_through(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """A shortest import path start -> ... -> start (breadth first), or None."""
    parent = {}
    queue = collections.deque([start])
    while queue:
        module = queue.popleft()
        for target in sorted(graph[module]):
            if target not in parent:
                parent[target] = module
                queue.append(target)
        if start in parent:
            path = [start]
            while len(path) == 1 or path[-1] != start:
                path.append(parent[path[-1]])
            return path[::-1]
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest circle through every module on one, each circle listed once."""
    found = {}
    for module in sorted(graph):
        path = cycle_through(graph, module)
        if path:
            found.setdefault(frozenset(path), path)
    return list(found.values())


def layer_of(module: str) -> int | None:
    """Index in LAYERS of the longest entry that names ``module`` or a package holding it; None if none does."""
    matches = [(len(entry), index) for index, group in enumerate(LAYERS) for entry in group
               if module == entry or (entry != ROOT and module.startswith(entry + "."))]
    return max(matches)[1] if matches else None


def test_the_graph_sees_relative_absolute_and_lazy_imports():
    graph = import_graph()
    assert "ddlm.core.dse_numerics" in graph["ddlm.kernels.score_entropy"]  # from ..core.dse_numerics import ...
    assert "ddlm.kernels.score_entropy" in graph["ddlm.core.dse_backends"]  # inside a function
    assert "ddlm.models.sedd" in graph["ddlm.cli"] and "ddlm.models" in graph["ddlm.text.pipeline"]
    assert "ddlm.continuous.sde" in graph["ddlm.continuous.samplers"]
    assert cycle_through({"a": {"b"}, "b": {"c", "a"}, "c": set()}, "b") == ["b", "a", "b"]


def test_no_import_circle():
    found = cycles(import_graph())
    assert not found, "import circles:\n" + "\n".join(" -> ".join(path) for path in found)


def test_every_module_has_one_layer_and_every_layer_entry_exists():
    modules = import_graph()
    entries = [entry for group in LAYERS for entry in group]
    assert len(entries) == len(set(entries)), "a LAYERS entry appears twice"
    stale = [entry for entry in entries if not any(m == entry or m.startswith(entry + ".") for m in modules)]
    assert stale == [], "LAYERS names modules that do not exist"
    assert [module for module in modules if layer_of(module) is None] == [], "modules missing from LAYERS"


def test_no_module_imports_a_higher_layer():
    graph = import_graph()
    upward = [f"{module} (layer {layer_of(module)}) imports {target} (layer {layer_of(target)})"
              for module, targets in sorted(graph.items()) for target in sorted(targets) if layer_of(target) > layer_of(module)]
    assert not upward, "upward imports:\n" + "\n".join(upward)
