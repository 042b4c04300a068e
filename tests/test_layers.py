"""The package's layers import only downwards (read from every module's import statements).

Rules (README "Layers"): ``adassr.runtime`` is the torch-free base and imports no other layer;
``adassr.cuda_kernels`` may use ``runtime`` only; ``adassr.adapt`` may use ``runtime`` and
``cuda_kernels``; ``adassr.export`` may use all three. Only the umbrella CLI (``adassr/cli.py``
and its composition modules at the package root) may import every layer. No package module imports
``benchmarks`` or ``tests``, and the old top-level names (``import runtime``) are gone.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED: dict[str, frozenset[str]] = {
    "runtime": frozenset({"runtime"}),
    "cuda_kernels": frozenset({"runtime", "cuda_kernels"}),
    "adapt": frozenset({"runtime", "cuda_kernels", "adapt"}),
    "export": frozenset({"runtime", "cuda_kernels", "adapt", "export"}),
}
LAYERS = tuple(ALLOWED)
FORBIDDEN_TOP = frozenset({"benchmarks", "tests", *LAYERS})


def _modules(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


def _package_of(path: Path) -> str:
    """Dotted package of a module file, for resolving relative imports."""
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[0] != "adassr":
        parts.insert(0, "adassr")
    return ".".join(parts[:-1])


def imported_names(path: Path) -> Iterator[tuple[int, str]]:
    """Absolute dotted names imported by ``path`` (relative imports resolved), with line numbers."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = _package_of(path)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            yield node.lineno, module
            for alias in node.names:  # ``from adassr import adapt`` imports a layer too
                yield node.lineno, f"{module}.{alias.name}"
        elif isinstance(node, ast.Call) and _is_dynamic_import(node):
            arg = node.args[0]
            if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                yield node.lineno, arg.value


def _is_dynamic_import(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in ("import_module", "__import__") and bool(node.args)


def _layer_of(name: str) -> str | None:
    parts = name.split(".")
    if len(parts) >= 2 and parts[0] == "adassr" and parts[1] in ALLOWED:
        return parts[1]
    return None


def violations(layer: str) -> list[str]:
    found = []
    for path in _modules(layer):
        for lineno, name in imported_names(path):
            where = f"{path.relative_to(ROOT)}:{lineno}"
            top = name.split(".")[0]
            if top in FORBIDDEN_TOP:
                found.append(f"{where} imports {name!r} (use adassr.<layer>; never benchmarks/tests)")
                continue
            target = _layer_of(name)
            if target is not None and target not in ALLOWED[layer]:
                found.append(f"{where}: layer {layer!r} imports {name!r} from layer {target!r}")
    return found


@pytest.mark.parametrize("layer", LAYERS)
def test_layer_imports_point_down_only(layer: str) -> None:
    assert violations(layer) == []


def test_package_root_never_imports_benchmarks_or_tests() -> None:
    for path in sorted((ROOT / "adassr").rglob("*.py")):
        for lineno, name in imported_names(path):
            assert name.split(".")[0] not in {"benchmarks", "tests", *LAYERS}, f"{path}:{lineno} imports {name}"


def test_checker_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: a runtime module that imports adapt (directly or lazily) is caught."""
    bad = ROOT / "runtime" / "_layer_probe_tmp.py"
    bad.write_text("import importlib\nfrom adassr.adapt import infer\nimportlib.import_module('adassr.export.cli')\n")
    try:
        found = violations("runtime")
    finally:
        bad.unlink()
    assert any("adassr.adapt" in v for v in found) and any("adassr.export.cli" in v for v in found)


def test_relative_import_resolution() -> None:
    path = ROOT / "runtime" / "backends" / "base.py"
    assert _package_of(path) == "adassr.runtime.backends"
