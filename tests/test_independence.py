"""The nine systems never import each other (CONVENTIONS 1): they talk over their protocols.

An AST scan rather than import-linter so it also sees packages that are only planned and
relative imports; shared modules (config, web, storage, geo) are allowed everywhere.
"""

from __future__ import annotations

import ast
from pathlib import Path

from scalelab.systems import SYSTEMS

SRC = Path(__file__).resolve().parents[1] / "src" / "scalelab"
SYSTEM_NAMES = {s.name for s in SYSTEMS}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = ".".join(path.relative_to(SRC.parent).with_suffix("").parts[:-1])
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join([*base, node.module] if node.module else base)
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def system_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) >= 2 and parts[0] == "scalelab" and parts[1] in SYSTEM_NAMES:
        return parts[1]
    return None


def test_systems_do_not_import_each_other() -> None:
    violations = []
    checked = 0
    for name in SYSTEM_NAMES:
        pkg = SRC / name
        if not pkg.exists():
            continue
        for path in pkg.rglob("*.py"):
            checked += 1
            for module in imported_modules(path):
                other = system_of(module)
                if other is not None and other != name:
                    violations.append(f"{path.relative_to(SRC)} imports {module}")
    assert checked > 0
    assert violations == []


def test_shared_modules_do_not_import_systems() -> None:
    shared = [
        SRC / "config.py",
        SRC / "web.py",
        *(SRC / "storage").rglob("*.py"),
        *(SRC / "geo").rglob("*.py"),
    ]
    bad = [f"{p.name}: {m}" for p in shared for m in imported_modules(p) if system_of(m)]
    assert bad == []


def test_scan_catches_a_cross_import(tmp_path: Path) -> None:
    fake = SRC / "proximity" / "_probe_cross_import.py"
    fake.write_text("from ..objectstore import server\nimport scalelab.maps.tiles\n")
    try:
        found = {system_of(m) for m in imported_modules(fake)}
    finally:
        fake.unlink()
    assert {"objectstore", "maps"} <= found
