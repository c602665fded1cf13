"""The core library holds what the services share: nothing under shared/ imports a service package."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "shared" / "distillery"
SERVICE_PACKAGES = {p.name for p in (ROOT / "services").glob("*/distillery_*") if p.is_dir()}


def _imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((node.lineno, node.args[0].value))
    return found


def test_service_packages_are_found() -> None:
    expected = {"distillery_gateway", "distillery_worker", "distillery_trainer", "distillery_teacher"}
    assert expected <= SERVICE_PACKAGES
    assert "distillery_launcher" in SERVICE_PACKAGES


def test_core_library_imports_no_service() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        for lineno, module in _imported_modules(path):
            if module.split(".")[0] in SERVICE_PACKAGES:
                offenders.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
    assert not offenders, "the core library must not import a service:\n" + "\n".join(offenders)


def test_no_service_imports_another_service() -> None:
    """Services meet through the schema, Celery task names and HTTP; the launcher is the one parent of all."""
    offenders = []
    for package in SERVICE_PACKAGES - {"distillery_launcher"}:
        for path in sorted((ROOT / "services").glob(f"*/{package}/**/*.py")):
            for lineno, module in _imported_modules(path):
                top = module.split(".")[0]
                if top in SERVICE_PACKAGES and top != package:
                    offenders.append(f"{path.relative_to(ROOT)}:{lineno} imports {module}")
    assert not offenders, "\n".join(offenders)
