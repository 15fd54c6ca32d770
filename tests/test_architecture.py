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
