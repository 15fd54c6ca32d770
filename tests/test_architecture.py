"""The house rules the code keeps: rooms of at most 400 lines, and no private name (a leading
underscore) imported from another package. The layering itself is import-linter's
([tool.importlinter] in pyproject.toml, run by `make test`)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "leanvision"
MAX_LINES = 400


def _sources() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


def test_no_source_file_is_longer_than_400_lines():
    long = {str(p.relative_to(SRC)): n for p in _sources()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"split these along a real seam (DESIGN.md, small files): {long}"


def _package(module: str) -> str:
    """leanvision.training.api -> training; leanvision.evaluate -> evaluate."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_private_name_crosses_a_package_boundary():
    crossing = []
    for path in _sources():
        parts = path.relative_to(SRC.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = ".".join(parts[:-1])  # what a relative import is relative to
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
                continue
            base = package.rsplit(".", node.level - 1)[0] if node.level else ""
            source = ".".join(p for p in (base, node.module or "") if p)
            if _package(source) == _package(module):
                continue
            crossing += [f"{module}: {alias.name} from {source}" for alias in node.names
                         if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert not crossing, f"make these public or move them: {crossing}"


def test_option_dataclasses_keep_their_functions_defaults():
    """A verb's XxxOptions dataclass documents its API function's settings for the CLI; the
    function's signature stays the truth, so a default written in both must agree."""
    import dataclasses
    import inspect

    from leanvision.cli import app, command

    differ = []
    for info in app.registered_commands:
        verb = info.callback
        params = inspect.signature(command.find(verb.api)).parameters
        for ref in (r for r in verb.configs if r.endswith("Options")):
            for field in dataclasses.fields(command.find(ref)):
                param = params.get(field.name)
                if param is not None and param.default is not param.empty \
                        and param.default != field.default:
                    differ.append(f"{ref}.{field.name}: {field.default!r} != {param.default!r}")
    assert not differ, differ


def test_no_function_in_training_serving_or_compress_is_longer_than_80_lines():
    long = [f"{p.relative_to(SRC)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for package in ("training", "serving", "compress")
            for p in sorted((SRC / package).rglob("*.py"))
            for node in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            and node.end_lineno - node.lineno + 1 > 80]
    assert not long, f"read these in pieces a page long: {long}"


def test_top_level_packages_import_each_other_without_a_cycle():
    """Counting imports inside functions: grimp's graph, folded onto leanvision's top-level
    packages and modules, has no cycle (the layers contract forbids one only between layers)."""
    import grimp

    graph = grimp.build_graph("leanvision")
    edges: dict[str, set[str]] = {}
    for importer in graph.modules:
        for imported in graph.find_modules_directly_imported_by(importer):
            a, b = _package(importer), _package(imported)
            if a and b and a != b:
                edges.setdefault(a, set()).add(b)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def cycle_from(node: str, path: list[str]) -> list[str] | None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return [*path, node, nxt]
            if nxt not in state and (found := cycle_from(nxt, [*path, node])):
                return found
        state[node] = 2
        return None

    cycles = [c for n in sorted(edges) if n not in state and (c := cycle_from(n, []))]
    assert not cycles, f"move code downwards to break: {cycles}"
