"""Type-check the TensorRT / CUDA modules against tensorrt-stubs and the cuda-python API subset.

There is no GPU and no TensorRT in CI, so this is what proves that the TensorRT code calls names
and signatures that exist. Steps:

1. Copy the ``.pyi`` files that ``tensorrt-stubs`` installs (``tensorrt/``, ``tensorrt_bindings/``)
   into a temporary stub folder, repairing two generator defects that stop mypy from parsing them:
   parameters named ``in`` (a keyword) become ``in_``, and a parameter without a default that
   follows one with a default gets ``= ...``. Nothing else is changed; errors *inside* the stubs
   are ignored (``ignore_errors`` for those modules).
2. Lay the repository out as the installed package (``adassr/runtime`` -> ``runtime`` ...) with
   symbolic links, so mypy sees ``adassr.runtime...`` imports.
3. Run ``mypy --strict`` on :data:`MODULES`; then run it on a canary that misuses the TensorRT API
   (a misspelt flag, a wrong argument type) and require that to FAIL, which shows that the stubs
   were really used rather than silently treated as ``Any``.

Exit status 0 when both hold; prints mypy's output otherwise. Usage: ``python .ci/typecheck_gpu.py``.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("runtime", "cuda_kernels", "adapt", "export")
MODULES = (
    "adassr/runtime/backends/tensorrt.py",
    "adassr/runtime/engines",
    "adassr/runtime/gpu",
    "adassr/runtime/backends/ort_options.py",
    "adassr/export/tensorrt.py",
)
CANARY = textwrap.dedent(
    """
    import numpy as np
    import tensorrt as trt

    def misuse(builder: trt.Builder, refitter: trt.Refitter) -> None:
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.FP16_TYPO)
        config.builder_optimization_level = "high"
        refitter.set_named_weights("conv_last.weight", np.zeros(3, np.float32))
    """
)
_PARAM_SPLIT = re.compile(r",(?![^\[\(]*[\]\)])")


def repair_stub(text: str) -> str:
    """Fix the two syntax defects of the generated TensorRT stubs (see the module docstring)."""
    lines = []
    for line in text.splitlines():
        if line.lstrip().startswith("def ") and "(" in line and ")" in line:
            line = re.sub(r"(\(|, )in:", r"\1in_:", line)
            head, _, rest = line.partition("(")
            params, _, tail = rest.rpartition(")")
            parts, depth, current = [], 0, ""
            for ch in params:
                depth += ch in "[("
                depth -= ch in "])"
                if ch == "," and depth == 0:
                    parts.append(current)
                    current = ""
                else:
                    current += ch
            parts.append(current)
            seen_default, fixed = False, []
            for part in parts:
                stripped = part.strip()
                if "=" in stripped:
                    seen_default = True
                elif seen_default and ":" in stripped and not stripped.startswith("*"):
                    part += " = ..."
                fixed.append(part)
            line = f"{head}({','.join(fixed)}){tail}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def copy_stubs(target: Path) -> int:
    """Copy and repair tensorrt-stubs' .pyi files into ``target``; returns how many were copied."""
    try:
        files = importlib.metadata.files("tensorrt-stubs") or []
    except importlib.metadata.PackageNotFoundError:
        sys.exit("tensorrt-stubs is not installed: pip install --no-deps tensorrt-stubs")
    count = 0
    for entry in files:
        if entry.suffix == ".pyi":
            source = Path(str(entry.locate()))
            dest = target / str(entry)
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_text(repair_stub(source.read_text(encoding="utf-8")), encoding="utf-8")
            count += 1
    return count


def package_tree(target: Path) -> None:
    """``target/adassr`` mirroring the installed package, built from symbolic links."""
    pkg = target / "adassr"
    pkg.mkdir()
    for item in (ROOT / "adassr").iterdir():
        if item.suffix == ".py":
            (pkg / item.name).symlink_to(item)
    for layer in LAYERS:
        (pkg / layer).symlink_to(ROOT / layer, target_is_directory=True)


CONFIG = """
[mypy]
python_version = 3.11
strict = True
warn_unused_ignores = False

[mypy-tensorrt,tensorrt.*,tensorrt_bindings,tensorrt_bindings.*]
ignore_errors = True

[mypy-cuda,cuda.*,onnxruntime,onnxruntime.*,onnx,onnx.*]
ignore_missing_imports = True
"""


def run_mypy(tmp: Path, targets: list[str]) -> subprocess.CompletedProcess[str]:
    config = tmp / "mypy.ini"
    config.write_text(CONFIG, encoding="utf-8")
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(config), "--follow-imports=silent",
           "--cache-dir", str(tmp / ".mypy_cache"), *targets]
    env = {"MYPYPATH": f"{tmp / 'stubs'}:{tmp / 'src'}", "PATH": "/usr/bin:/bin"}
    return subprocess.run(cmd, cwd=tmp / "src", env=env, capture_output=True, text=True, check=False)


def main() -> int:
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        stubs = copy_stubs(tmp / "stubs")
        (tmp / "src").mkdir()
        package_tree(tmp / "src")
        targets = [m for m in MODULES if (tmp / "src" / m).exists()]
        result = run_mypy(tmp, targets)
        print(f"mypy --strict on {', '.join(targets)} with {stubs} TensorRT stub files:")
        print(result.stdout.strip() or result.stderr.strip())
        canary = tmp / "src" / "canary_misuse.py"
        canary.write_text(CANARY, encoding="utf-8")
        check = run_mypy(tmp, [canary.name])
        caught = check.returncode != 0 and "FP16_TYPO" in check.stdout
        caught = caught and "Incompatible types in assignment" in check.stdout
        caught = caught and 'No overload variant of "set_named_weights"' in check.stdout
        print("canary (a misspelt BuilderFlag, a str optimisation level, a numpy array as refit weights):",
              "rejected, so the stubs are in use" if caught else "NOT rejected: the stubs were not used")
        if not caught:
            print(check.stdout)
        return 0 if result.returncode == 0 and caught else 1


if __name__ == "__main__":
    sys.exit(main())
