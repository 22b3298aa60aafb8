"""The package's import contract: layers that import only downwards, no cycle, and imports
inside functions only where a comment says what they buy.

Read by parsing the source (no import runs), so it sees imports inside functions as well.
"""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hrsnet"

# Top to bottom; a module may import its own layer's modules and any layer below, never above.
# Modules of one entry with several names are siblings: independent of each other unless
# SIBLINGS_MAY_IMPORT says otherwise.
LAYERS = [
    ("hrsnet.__main__",),
    ("hrsnet.pipeline", "hrsnet.tools"),
    ("hrsnet.analysis", "hrsnet.runs"),
    ("hrsnet.engine",),
    ("hrsnet.profiles", "hrsnet.config", "hrsnet.rundir", "hrsnet.provenance"),
    ("hrsnet.models", "hrsnet.data", "hrsnet.runtime"),
]
SIBLINGS_MAY_IMPORT = {
    ("hrsnet.pipeline", "hrsnet.tools"): False,
    ("hrsnet.tools", "hrsnet.pipeline"): False,
    ("hrsnet.analysis", "hrsnet.runs"): False,  # the analysis reads run directories, not the run machinery
    ("hrsnet.runs", "hrsnet.analysis"): False,
    ("hrsnet.profiles", "hrsnet.config"): True,  # profiles are made of TrainConfigs
    ("hrsnet.rundir", "hrsnet.config"): False,
    ("hrsnet.config", "hrsnet.rundir"): False,
    ("hrsnet.provenance", "hrsnet.config"): False,
}
# Besides the layers: what a part must never import, and why.
FORBIDDEN = {
    "hrsnet.analysis": ("hrsnet.engine",),  # figures and statistics read files, never train
}
# Where an import inside a function is the rule, not an exception: the command line imports each
# command's modules only when that command runs (start-up time of `python -m hrsnet --help`).
LAZY_MODULES = {"hrsnet.__main__"}
LAZY_MARKER = "# lazy:"


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        yield name, path, path.name == "__init__.py"


def _imports(name, path, is_package):
    """(imported hrsnet module, line, inside a function) for every import of the package in ``path``."""
    tree = ast.parse(path.read_text())
    base = name.split(".") if is_package else name.split(".")[:-1]
    functions = {
        id(node)
        for function in ast.walk(tree)
        if isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef))
        for node in ast.walk(function)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                module = ".".join(base[: len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from . import preflight` imports the module hrsnet.runs.preflight; `from .x import f`
            # the module x (its package's __init__ runs first, but is no edge of its own).
            submodules = [f"{module}.{alias.name}" for alias in node.names if f"{module}.{alias.name}" in _names()]
            targets = submodules or [module]
        elif isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            continue
        for target in targets:
            if target.startswith("hrsnet"):
                yield target, node.lineno, id(node) in functions


def _names():
    return {name for name, _, _ in _modules()}


def _layer_of(module):
    for depth, layer in enumerate(LAYERS):
        for part in layer:
            if module == part or module.startswith(part + "."):
                return depth, part
    return None, None


def _known(module):
    """The longest name of a real module or package that ``module`` starts with."""
    names = _names()
    while module not in names and "." in module:
        module = module.rsplit(".", 1)[0]
    return module


def _edges():
    edges = []
    for name, path, is_package in _modules():
        for target, line, inside in _imports(name, path, is_package):
            edges.append((name, _known(target), f"{path.relative_to(PACKAGE.parent)}:{line}", inside))
    return edges


def test_every_module_has_a_layer():
    missing = [name for name, _, _ in _modules() if name != "hrsnet" and _layer_of(name)[0] is None]
    assert not missing, f"modules outside the layers of tests/test_layers.py: {missing}"


def test_imports_point_down():
    wrong = []
    for source, target, where, _ in _edges():
        if source == "hrsnet" or target == "hrsnet":
            continue  # the package's __init__ re-exports create_model; __version__ is read from it
        (source_depth, source_part), (target_depth, target_part) = _layer_of(source), _layer_of(target)
        if source_part == target_part:
            continue
        if target_depth < source_depth:
            wrong.append(f"{where}: {source} imports {target}, a layer above it")
        elif target_depth == source_depth and not SIBLINGS_MAY_IMPORT.get((source_part, target_part), False):
            wrong.append(f"{where}: {source} imports its sibling {target}")
        for part, forbidden in FORBIDDEN.items():
            if source_part == part and any(target == f or target.startswith(f + ".") for f in forbidden):
                wrong.append(f"{where}: {source} imports {target}, which {part} must never import")
    assert not wrong, "\n".join(wrong)


def test_no_import_cycle():
    graph = {}
    for source, target, _, _ in _edges():
        if source != target and target != "hrsnet" and not source.startswith(target + "."):
            graph.setdefault(source, set()).add(target)
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                raise AssertionError("import cycle: " + " -> ".join([*path, node, nxt][path.index(nxt) :]))
            if nxt not in state:
                visit(nxt, [*path, node])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_imports_inside_functions_say_why():
    """An import inside a function (outside the command line) carries '# lazy: <what it buys>'."""
    unexplained = []
    for name, path, _ in _modules():
        if name in LAZY_MODULES:
            continue
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines))
        for function in ast.walk(tree):
            if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(function):
                if isinstance(node, (ast.Import, ast.ImportFrom)) and LAZY_MARKER not in lines[node.lineno - 1]:
                    unexplained.append(
                        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}: {lines[node.lineno - 1].strip()}"
                    )
    assert not unexplained, "imports inside functions without a '# lazy: why' comment:\n" + "\n".join(unexplained)


def test_the_contract_can_fail(tmp_path, monkeypatch):
    """The checks see a violation: a module of the bottom layer importing the engine."""
    package = tmp_path / "hrsnet"
    (package / "engine").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "engine" / "__init__.py").write_text("")
    (package / "data.py").write_text("def load():\n    from .engine import trainer\n")
    (package / "engine" / "trainer.py").write_text("from .. import data\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", package)
    for check in (test_imports_point_down, test_imports_inside_functions_say_why):
        try:
            check()
        except AssertionError:
            continue
        raise AssertionError(f"{check.__name__} did not see the violation")
