"""The package's import structure, read with ast (nothing is imported): no import circle among the modules of
ssl_bench, and no ssl_bench import hidden inside a function to dodge one.

The one module whose functions import ssl_bench modules is the command line (ssl_bench/cli.py): each command's
handler imports what that command uses when it runs, so that a command does not load the modules of the others.
"""

import ast
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

PACKAGE = Path(__file__).resolve().parents[1] / "ssl_bench"
# Imports inside functions allowed here only (see the module docstring).
LAZY_IMPORTER = "ssl_bench.cli"
TRAIN = "ssl_bench.run.train"

Graph = Dict[str, Set[str]]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> Dict[str, Path]:
    """{dotted name: file} of every module and package of ssl_bench."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imported(node: ast.AST, module: str, is_package: bool, known: Set[str]) -> List[str]:
    """The ssl_bench modules an import statement loads: its module, and for ``from X import y`` the module X.y
    where y is one."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per dot after the first
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[:len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        names = [base] + [f"{base}.{alias.name}" for alias in node.names]
    return [n for n in names if n in known]


def imports(path: Path, module: str, known: Set[str]) -> Iterator[Tuple[str, bool]]:
    """(imported ssl_bench module, whether the import is inside a function) for every import in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_package = path.name == "__init__.py"

    def walk(node: ast.AST, in_function: bool) -> Iterator[Tuple[str, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in imported(child, module, is_package, known):
                    yield name, in_function
            yield from walk(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)))

    yield from walk(tree, False)


def outer_packages(name: str, importer: str) -> List[str]:
    """The packages that importing ``name`` runs first (their __init__) and ``importer`` is not inside of."""
    parts = name.split(".")
    return [p for p in (".".join(parts[:k]) for k in range(2, len(parts)))
            if not (importer == p or importer.startswith(p + "."))]


def import_graph() -> Tuple[Graph, Dict[str, Set[str]]]:
    """(module -> the ssl_bench modules it imports at module level, the packages around them included; module ->
    those it imports inside functions)."""
    found = modules()
    known = set(found)
    top: Graph = {m: set() for m in found}
    inner: Dict[str, Set[str]] = {m: set() for m in found}
    for module, path in found.items():
        for name, in_function in imports(path, module, known):
            if name != module:
                (inner if in_function else top)[module].update([name, *outer_packages(name, module)])
    return top, inner


def find_cycle(graph: Graph) -> Optional[List[str]]:
    """A cycle of ``graph`` as its modules in import order, the first repeated at the end; None without one."""
    state: Dict[str, int] = {}  # 1: on the current path, 2: done
    path: List[str] = []

    def visit(node: str) -> Optional[List[str]]:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


def test_the_cycle_finder_finds_a_cycle_and_names_its_modules():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]


def test_the_graph_sees_the_package_imports():
    top, inner = import_graph()
    assert {"ssl_bench.config", "ssl_bench.run.callbacks", "ssl_bench.run.paths"} <= top[TRAIN]
    assert "ssl_bench.records" in top["ssl_bench.report.runs"]  # from ssl_bench.records import (...)
    assert "ssl_bench.sweep" in top["ssl_bench.report.coverage"]  # its __init__ runs first
    assert outer_packages("ssl_bench.sweep.spec", "ssl_bench.sweep.local") == []
    assert TRAIN in inner[LAZY_IMPORTER]


def test_no_import_circle():
    top, _ = import_graph()
    cycle = find_cycle(top)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_module_imports_the_training_run_inside_a_function():
    _, inner = import_graph()
    hidden = sorted(m for m, names in inner.items() if TRAIN in names and m != LAZY_IMPORTER)
    assert not hidden, f"{', '.join(hidden)} import {TRAIN} inside a function: import it at the top"


def test_only_the_command_line_imports_ssl_bench_inside_functions():
    _, inner = import_graph()
    hidden = {m: sorted(names) for m, names in inner.items() if names and m != LAZY_IMPORTER}
    assert not hidden, f"ssl_bench modules imported inside functions: {hidden}"
