"""The package's layers, checked from the source: imports run one way and never in a circle.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a circle
hidden in a function is still a circle.  Layers, bottom up:

    ground     errors, _io, _validation, _version, circuit, _aliases, _lines
    nn         the network, its files and its training
    candidates / llm   the two routing engines (neither imports the other)
    server     the HTTP service, storage, the learning loop
    gateway / integrations   the OpenAI-compatible gateway, built on the service; plug-ins for
               other gateways (LiteLLM)
    surfaces   cli, demo, plotting, progress, synthetic, the package root
"""

from __future__ import annotations

import ast
import importlib
import sys
import warnings
from pathlib import Path

import pytest

import tinydancer
from tinydancer import _aliases

SRC = Path(tinydancer.__file__).resolve().parent
GROUND = {"errors", "_io", "_validation", "_version", "circuit", "_aliases", "_lines"}
LAYERS = {"nn": 1, "candidates": 2, "llm": 2, "server": 3, "gateway": 4, "integrations": 4}


def module_names() -> dict[str, Path]:
    out = {}
    for path in SRC.rglob("*.py"):
        parts = ["tinydancer", *path.relative_to(SRC).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = module_names()


def imports_of(name: str, path: Path) -> list[tuple[str, list[str], int]]:
    """(module imported, names taken from it, line) for every import statement in the file."""
    is_package = path.name == "__init__.py"
    package = name.split(".") if is_package else name.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, [], node.lineno) for a in node.names if a.name.startswith("tinydancer")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("tinydancer"):
                found.append((target, [a.name for a in node.names], node.lineno))
    return found


def edges() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    for name, path in MODULES.items():
        for target, names, _line in imports_of(name, path):
            # `from . import cell` imports the module tinydancer.nn.cell, not the package
            subs = [f"{target}.{n}" for n in names if f"{target}.{n}" in MODULES]
            graph[name].update(subs or ([target] if target in MODULES else []))
    return graph


def layer(module: str) -> tuple[int, str]:
    parts = module.split(".")
    if len(parts) == 1:
        return 5, "surface"  # the package root re-exports everything
    if parts[1] in GROUND:
        return 0, "ground"
    if parts[1] in LAYERS:
        return LAYERS[parts[1]], parts[1]
    return 5, "surface"


def test_the_tree_has_the_layer_subpackages() -> None:
    for sub in ("nn", "candidates", "llm", "server", "server.storage", "server.routes", "gateway"):
        assert f"tinydancer.{sub}" in MODULES, f"tinydancer.{sub} is missing"
    flat = [m for m in MODULES if m.count(".") == 1 and layer(m)[1] == "surface"]
    assert len(flat) <= 8, f"the package root holds {len(flat)} surface modules: {flat}"


def test_no_import_circles() -> None:
    graph = edges()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 or v in graph[v]:
                circles.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not circles, f"modules that import each other (directly or around a circle): {circles}"


def test_imports_run_down_the_layers() -> None:
    wrong = []
    for source, targets in edges().items():
        s_rank, s_group = layer(source)
        for target in targets:
            t_rank, t_group = layer(target)
            if t_rank > s_rank or (t_rank == s_rank and t_group != s_group):
                wrong.append(f"{source} ({s_group}) imports {target} ({t_group})")
    assert not wrong, "imports that run up or across the layers:\n" + "\n".join(sorted(wrong))


def test_no_module_takes_another_modules_private_names() -> None:
    wrong = []
    for name, path in MODULES.items():
        own_package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for target, names, line in imports_of(name, path):
            owner = target if target in MODULES and MODULES[target].name == "__init__.py" else target.rpartition(".")[0]
            for n in names:
                private = n.startswith("_") and not n.startswith("__") and f"{target}.{n}" not in MODULES
                if private and owner != own_package:
                    wrong.append(f"{path.relative_to(SRC)}:{line} takes {n} from {target}")
    assert not wrong, "\n".join(wrong)


@pytest.mark.parametrize("old", sorted(_aliases.MOVED))
def test_old_module_paths_still_import_with_a_warning(old: str) -> None:
    new = importlib.import_module(f"tinydancer.{_aliases.MOVED[old]}")
    sys.modules.pop(f"tinydancer.{old}", None)  # an earlier import of the old path would skip the finder
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(f"tinydancer.{old}")
    assert module is new
    assert module.__spec__.name == new.__name__  # one module, under its real name
    assert any(issubclass(w.category, DeprecationWarning) and new.__name__ in str(w.message) for w in caught)


def test_readme_import_paths_resolve() -> None:
    """The imports the README shows (old and new spellings) give the same objects."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        from tinydancer.routing import Candidate, Router, RouterConfig, RoutingRequest
        from tinydancer.storage import Storage
    from tinydancer.candidates import Candidate as C2, Router as R2, RouterConfig as RC2, RoutingRequest as RR2
    from tinydancer.server.storage import Storage as S2

    assert (Candidate, Router, RouterConfig, RoutingRequest, Storage) == (C2, R2, RC2, RR2, S2)
    for name in tinydancer.__all__:
        assert getattr(tinydancer, name) is not None


#: rooms that stay small (issue 26): past these a module holds more than one concern
MAX_FILE_LINES, MAX_CLASS_LINES, MAX_FUNCTION_LINES = 650, 400, 100


def test_no_file_class_or_function_outgrows_its_room() -> None:
    """Files, classes and functions under src/tinydancer stay under their size limits (lines,
    decorators and docstrings included): one concern each, readable in one sitting."""
    over = []
    for path in MODULES.values():
        text = path.read_text(encoding="utf-8")
        where = path.relative_to(SRC)
        if (lines := len(text.splitlines())) > MAX_FILE_LINES:
            over.append(f"{where}: {lines} lines (at most {MAX_FILE_LINES})")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                limit = MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else MAX_FUNCTION_LINES
                start = min([node.lineno] + [d.lineno for d in node.decorator_list])
                if (lines := node.end_lineno - start + 1) > limit:  # type: ignore[operator]
                    over.append(f"{where}:{node.lineno} {node.name}: {lines} lines (at most {limit})")
    assert not over, "split these by concern:\n" + "\n".join(over)
