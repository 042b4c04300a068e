"""`pip install .` installs one top-level import package, `adassr`, with every layer inside it."""

from __future__ import annotations

import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYER_FOLDERS = ("adapt", "export", "runtime", "cuda_kernels")


def _declared_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return list(config["tool"]["setuptools"]["packages"])


def test_declared_packages_match_the_folders() -> None:
    on_disk = {"adassr"}
    for folder in LAYER_FOLDERS:
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT)
            on_disk.add(".".join(("adassr", *rel.parts)))
    assert sorted(_declared_packages()) == sorted(on_disk)


def test_wheel_has_exactly_one_top_level_package(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = tmp_path.glob("adassr-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert top == {"adassr"}
    for layer in LAYER_FOLDERS:
        assert f"adassr/{layer}/__init__.py" in names
    assert "adassr/adapt/quality/data/niqe_pris_params.npz" in names
    assert not any(n.startswith(("adassr/tests", "adassr/benchmarks")) for n in names)


def test_sdist_builds_the_wheel_and_ships_no_partial_test_suite(tmp_path: Path) -> None:
    """setuptools put the top-level tests/test_*.py in the sdist, without conftest.py, tests/data or
    the test folders: a suite that cannot run. MANIFEST.in prunes tests/."""
    import tarfile

    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    (sdist,) = tmp_path.glob("adassr-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = [n.split("/", 1)[1] for n in archive.getnames() if "/" in n]
    assert not [n for n in names if n.startswith("tests/")]
    assert "pyproject.toml" in names and "runtime/install.py" in names
    assert "adapt/quality/data/niqe_pris_params.npz" in names
