"""kill -9 and SIGTERM at random points of ``adassr upscale`` and ``adassr export`` subprocesses.

After each kill: every output that exists is a complete image, the store still serves the previous
model, and a rerun succeeds and leaves no temporary files behind.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from adassr.runtime.images import read_image, write_image
from adassr.runtime.routing import resolve_model
from adassr.runtime.store import CameraStore

from ..runtime._models import publish_camera

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]
N_PHOTOS = 10
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _upscale_cmd(src: Path, out: Path, store: Path) -> list[str]:
    code = "import sys; from adassr.cli import main; raise SystemExit(main(sys.argv[1:]))"
    return [sys.executable, "-c", code, "upscale", "-i", str(src), "-o", str(out), "--store", str(store),
            "--no-progress", "--tile", "96", "--tile-overlap", "16", "--threads", "1"]


def _kill_at(cmd: list[str], delay: float, sig: signal.Signals, *, after_lines: int = 0) -> int:
    """Run ``cmd``, wait for ``after_lines`` lines of its output and then ``delay`` seconds, send ``sig``."""
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    for _ in range(after_lines):
        proc.stdout.readline()
    try:
        proc.wait(delay)
    except subprocess.TimeoutExpired:
        proc.send_signal(sig)
        proc.wait(30)
    proc.stdout.close()
    return proc.returncode


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(0)
    for k in range(N_PHOTOS):
        write_image(folder / f"p{k}.png", rng.integers(0, 256, (160, 200, 3), dtype=np.uint8))
    return folder


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_upscale_leaves_complete_outputs_and_a_rerun_cleans_up(
    tmp_path: Path, photos: Path, sig: signal.Signals
) -> None:
    store = tmp_path / "store"
    publish_camera(store, "_fallback")
    out = tmp_path / "out"
    rng = random.Random(sig.value)
    killed = 0
    for _ in range(3):
        # After the first image is reported, at a random point of the following ones.
        code = _kill_at(_upscale_cmd(photos, out, store), rng.uniform(0.0, 0.4), sig, after_lines=1)
        # SIGTERM stops it as Ctrl-C does (exit 143): the write in flight is finished, no temporary file is left
        # (it was killed mid-write, leaving one in the output folder: a helper's hunt)
        killed += code == (-sig.value if sig == signal.SIGKILL else 128 + sig.value)
        for image in out.glob("*.png"):  # what was published is whole
            assert read_image(image).pixels.shape == (640, 800, 3)
        if sig != signal.SIGKILL:
            assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    assert killed >= 1, "no run was interrupted: raise the delays' spread"
    resolve_model(store, camera="_fallback")  # the model still serves
    # What a kill inside a write leaves (a hidden temporary named after a process that is gone):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / f".p1.png.{int(dead.stdout)}.0a1b2c.tmp").write_bytes(b"half an image")
    proc = subprocess.run(_upscale_cmd(photos, out, store), cwd=REPO, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(f"p{k}.png" for k in range(N_PHOTOS))  # no *.tmp


def test_killed_export_keeps_the_previous_export(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from adassr.export.onnx import export_camera
    from tests.export.test_onnx_export import CAMERA, REGISTRY, make_store

    make_store(tmp_path)
    export_camera(tmp_path, CAMERA, registry=REGISTRY)  # the previous, servable export
    store = CameraStore.open(tmp_path, CAMERA)
    before = resolve_model(tmp_path, camera=CAMERA).sha256
    make_store(tmp_path, seed=7)  # new weights: the next export makes other files
    rng = random.Random(3)
    cmd = [sys.executable, "-m", "tests.faults._workers", "export", str(tmp_path), CAMERA, "both"]
    served = []
    for sig in (signal.SIGKILL, signal.SIGTERM):
        _kill_at(cmd, rng.uniform(1.5, 6.0), sig)
        manifest = store.read_manifest()  # valid, and every listed file verifies
        for name in manifest["artifacts"]:
            store.verified_path(name, manifest)
        served.append(resolve_model(tmp_path, camera=CAMERA).sha256)
    proc = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    # the old export until a run has committed, then the whole new one (a kill can land after the
    # commit, now that the graph cache makes the export fast): never anything in between
    after = resolve_model(tmp_path, camera=CAMERA).sha256
    assert set(served) <= {before, after}
    assert resolve_model(tmp_path, camera=CAMERA, precision="fp16").sha256 != before
    manifest = store.read_manifest()
    referenced = {r["file"] for r in manifest["artifacts"].values()} | {"manifest.json", ".lock"}
    referenced |= set(manifest.get("superseded_files", []))  # the previous generation, for its readers
    assert sorted(p.name for p in store.directory.iterdir()) == sorted(referenced)  # no orphans, no *.tmp


@pytest.mark.parametrize("sig, keep", [(signal.SIGKILL, False), (signal.SIGTERM, False), (signal.SIGINT, True)])
def test_killed_adapt_keeps_the_previous_model(tmp_path: Path, sig: signal.Signals, keep: bool) -> None:
    pytest.importorskip("torch")
    from tests.adapt.test_adapt_interrupt import _previous_model, camera_folder, tiny_registry

    images = camera_folder(tmp_path / "images")
    store = tmp_path / "store"
    registry = tiny_registry(tmp_path)
    before = _previous_model(store, registry, images)  # a complete run: the model to protect
    cam = CameraStore.open(store, "nokia")
    cmd = [sys.executable, "-m", "tests.faults._workers", "adapt", str(tmp_path), str(images), str(store), "400",
           *(["--keep-on-interrupt"] if keep else [])]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    wanted = f"step {random.Random(sig.value).randint(2, 6)}/"
    for line in proc.stderr:  # wait until training is under way, then signal at a random step
        if line.startswith(wanted):
            break
    proc.send_signal(sig)
    code = proc.wait(120)
    assert code == (-sig.value if sig == signal.SIGKILL else 128 + sig.value)
    manifest = cam.read_manifest()
    for name in manifest["artifacts"]:
        cam.verified_path(name, manifest)  # consistent, and the model still serves
    if keep:
        assert manifest["interrupted"] is True and "SIGINT" in manifest["stop_reason"]
    else:
        assert cam.manifest_path.read_text() == before  # the previous model, untouched
    _previous_model(store, registry, images)  # a rerun succeeds, and cleans up after the killed one
    manifest = cam.read_manifest()
    assert manifest["interrupted"] is False
    referenced = {r["file"] for r in manifest["artifacts"].values()} | {"manifest.json", ".lock"}
    referenced |= set(manifest.get("superseded_files", []))  # the previous generation, for its readers
    assert sorted(p.name for p in cam.directory.iterdir()) == sorted(referenced)
