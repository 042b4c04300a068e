"""The runtime imports without torch (and without loading onnxruntime until a model is opened)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MODULES = (
    "adassr.runtime, adassr.runtime.tiling, adassr.runtime.backends, adassr.runtime.backends.onnxruntime, "
    "adassr.runtime.routing, "
    "adassr.runtime.pipeline, adassr.runtime.store, adassr.runtime.images, adassr.runtime.upscale_cli, "
    "adassr.runtime.upscalers, adassr.runtime.server.triton_upscale"
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-W", "error", "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_runtime_imports_without_torch_and_warnings() -> None:
    code = (
        f"import {MODULES}\n"
        "import sys\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'onnxruntime' not in sys.modules, 'onnxruntime imported before a model is opened'\n"
        "print('ok')\n"
    )
    proc = _run(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_runtime_works_when_torch_cannot_be_imported(tmp_path: Path) -> None:
    """Block torch entirely, then route and upscale one image through the CLI."""
    code = f"""
import sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == 'torch' or name.startswith('torch.'):
            raise ImportError('torch is blocked in this test')
sys.meta_path.insert(0, _Block())
sys.path.insert(0, {str(ROOT / 'tests' / 'runtime')!r})
import argparse, numpy as np
from _models import publish_camera
from adassr.runtime.images import write_image
from adassr.runtime.upscale_cli import add_upscale_arguments, run_upscale
root = {str(tmp_path)!r}
publish_camera(__import__('pathlib').Path(root) / 'store', '_fallback')
write_image(root + '/in.png', np.zeros((8, 8, 3), np.uint8))
p = argparse.ArgumentParser(); add_upscale_arguments(p)
code = run_upscale(p.parse_args(['-i', root + '/in.png', '-o', root + '/out.png', '--store', root + '/store']))
assert code == 0 and 'torch' not in sys.modules
print('ok')
"""
    proc = _run(code)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr
    assert (tmp_path / "out.png").is_file()
