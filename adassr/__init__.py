"""adassr: camera-adaptive real-world super-resolution.

The package's layers are ``adassr.runtime`` (torch-free base), ``adassr.cuda_kernels``,
``adassr.adapt`` and ``adassr.export``. In the repository they live in the top-level folders
``runtime/``, ``cuda_kernels/``, ``adapt/`` and ``export/`` (the layout of the design card);
an installed wheel has them under ``adassr/`` (``[tool.setuptools.package-dir]`` in
pyproject.toml maps them there).

Run from a source checkout (``PYTHONPATH=.`` or an editable install), this package's search path
also covers the repository root, so ``adassr.runtime`` resolves to ``<root>/runtime``. The root's
other folders (``benchmarks``, ``tests``, ``samples``) then resolve too, as namespace packages, but
an installed wheel has none of them: no package module may import them (tests/test_layers.py).
"""

from __future__ import annotations

from pathlib import Path

__version__ = "0.1.0"

LAYERS: tuple[str, ...] = ("runtime", "cuda_kernels", "adapt", "export")
"""The package's layers, lowest first: a layer imports only layers before it (``adapt`` and
``cuda_kernels`` may both use ``runtime``; ``export`` uses ``adapt`` and ``runtime``)."""


def _source_checkout_root() -> Path | None:
    """The repository root when this package runs from a checkout rather than a wheel."""
    here = Path(__file__).resolve().parent
    if (here / "runtime").is_dir():  # installed wheel: the layers are inside the package
        return None
    root = here.parent
    if (root / "pyproject.toml").is_file() and all((root / layer / "__init__.py").is_file() for layer in LAYERS):
        return root
    return None


_root = _source_checkout_root()


def source_checkout() -> Path | None:
    """The repository root this package runs from (an editable install or ``PYTHONPATH``), or None
    for an installed wheel."""
    return _root


if _root is not None:
    __path__.append(str(_root))  # noqa: F821 - the package's own search path (PEP 302)
