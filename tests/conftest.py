"""Fixtures shared by the tests of every layer."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def load_benchmark() -> Callable[[str], ModuleType]:
    """Loads a script of benchmarks/ by file name as a module (benchmarks/ is not a package)."""

    def load(script: str) -> ModuleType:
        path = ROOT / "benchmarks" / script
        name = f"benchmark_{path.stem}"
        if name in sys.modules:
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None, path
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses of the script look their module up here
        spec.loader.exec_module(module)
        return module

    return load
