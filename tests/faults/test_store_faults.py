"""Fault injection on the store: kill -9 / SIGTERM at random points, two writers, disk full, corrupt files.

After every fault the store must be consistent (a valid manifest whose files all verify and belong
to one generation), the previous model must still serve, and the next run must succeed and clean up.
"""

from __future__ import annotations

import errno
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adassr.runtime.errors import StoreError
from adassr.runtime.routing import resolve_model
from adassr.runtime.store import CameraStore

from ..runtime._models import publish_camera

pytestmark = pytest.mark.faults

REPO = Path(__file__).resolve().parents[2]


def _worker(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-m", "tests.faults._workers", *args], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for_lines(proc: subprocess.Popen[str], n: int, timeout: float = 60) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    for _ in range(n):
        line = proc.stdout.readline()
        assert line, f"worker ended early: {proc.stderr.read() if proc.stderr else ''}"
        assert time.monotonic() < deadline


def assert_consistent(store: CameraStore) -> int:
    """The manifest is valid, every artifact verifies, and all belong to the manifest's generation."""
    manifest = store.read_manifest()
    generation = manifest["generation"]
    for name in ("a.bin", "b.bin"):
        data = store.verified_path(name, manifest).read_bytes()
        assert data.startswith(f"gen={generation};{name};".encode()), (name, data[:20], generation)
    return int(generation)


def _leftovers(store: CameraStore) -> list[str]:
    manifest = store.read_manifest()
    referenced = {r["file"] for r in manifest["artifacts"].values()} | {"manifest.json", ".lock"}
    return sorted(p.name for p in store.directory.iterdir() if p.name not in referenced)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_killed_writer_never_leaves_a_mixed_store(tmp_path: Path, sig: signal.Signals) -> None:
    rng = random.Random(sig.value)
    store = CameraStore.open(tmp_path, "cam", create=True)
    for attempt in range(4):
        proc = _worker("store-writer", str(tmp_path), str(512 * 1024))
        try:
            _wait_for_lines(proc, 1)  # at least one generation committed
            time.sleep(rng.uniform(0.0, 0.4))  # then a random point inside the next ones
            proc.send_signal(sig)
            proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == -sig.value, proc.stderr.read() if proc.stderr else ""
        before = assert_consistent(store)  # readers see one complete generation
        # The next lock holder removes temporary files and staged-but-uncommitted artifacts.
        with store.transaction(timeout_s=5) as tx:
            tx.commit()
        assert _leftovers(store) == [], f"attempt {attempt}"
        assert assert_consistent(store) == before


def test_two_writers_on_one_camera_serialise(tmp_path: Path) -> None:
    """Each writer reads the generation inside its transaction and commits the next one: if the lock
    let two transactions interleave, both would commit the same number."""
    store = CameraStore.open(tmp_path, "cam", create=True)
    writers = [_worker("store-writer", str(tmp_path), "4096", "0.3") for _ in range(2)]
    seen: list[list[int]] = [[], []]
    try:
        for _ in range(8):
            for k, proc in enumerate(writers):
                assert proc.stdout is not None
                line = proc.stdout.readline()
                assert line, proc.stderr.read() if proc.stderr else "writer ended"
                seen[k].append(int(line))
    finally:
        for proc in writers:
            proc.kill()
            proc.wait(10)
    everything = seen[0] + seen[1]
    assert len(set(everything)) == len(everything), seen  # no generation committed twice
    assert assert_consistent(store) >= max(everything)


def test_disk_full_while_writing_an_artifact_keeps_the_model(tmp_path: Path) -> None:
    store = publish_camera(tmp_path, "canon")
    before = sorted(p.name for p in store.directory.iterdir())

    def enospc(path: Path) -> None:
        path.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match="No space left on device"), store.transaction() as tx:
        tx.stage("model.onnx", enospc, stage="export")
        tx.commit()
    assert sorted(p.name for p in store.directory.iterdir()) == before
    resolve_model(tmp_path, camera="canon")  # verifies the previous model


def test_disk_full_while_writing_the_manifest_keeps_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ..runtime._models import build_tiny_sr

    store = publish_camera(tmp_path, "canon")
    manifest_before = store.manifest_path.read_text()
    files_before = sorted(p.name for p in store.directory.iterdir())
    real_write = Path.write_bytes

    def full_for_manifest(self: Path, data: bytes) -> int:
        if self.name.startswith(".manifest.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_for_manifest)
    model = build_tiny_sr(seed=5)
    with pytest.raises(StoreError, match="No space left on device"), store.transaction() as tx:
        tx.stage("model.onnx", lambda p: real_write(p, model), stage="export")
        tx.commit()
    monkeypatch.undo()
    assert store.manifest_path.read_text() == manifest_before
    assert sorted(p.name for p in store.directory.iterdir()) == files_before
    resolve_model(tmp_path, camera="canon")


def _corruptions(data: bytes) -> dict[str, bytes]:
    return {"empty": b"", "truncated": data[: len(data) // 2], "flipped": bytes([data[0] ^ 0xFF]) + data[1:],
            "garbage": os.urandom(64)}


@pytest.mark.parametrize("slot", ["manifest", "model.onnx", "model_fp16.onnx"])
def test_corrupt_file_in_every_runtime_slot_is_a_clean_error(
    tmp_path: Path, slot: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from adassr.cli import main

    src = REPO / "samples" / "cameras" / "canon" / "flower.jpg"
    for kind in ("empty", "truncated", "flipped", "garbage"):
        root = tmp_path / f"{slot}-{kind}"
        store = publish_camera(root, "canon", fp16=True)
        publish_camera(root, "_fallback", seed=1)
        manifest = store.read_manifest()
        path = store.manifest_path if slot == "manifest" else store.artifact_path(slot, manifest)
        path.write_bytes(_corruptions(path.read_bytes())[kind])
        with pytest.raises(StoreError):
            resolve_model(root, camera="canon", precision="fp16" if slot == "model_fp16.onnx" else "fp32")
        precision = "fp16" if slot == "model_fp16.onnx" else "fp32"
        code = main(["upscale", "-i", str(src), "-o", str(root / "out.png"), "--store", str(root), "--camera",
                     "canon", "--precision", precision, "--no-progress", "--tile", "128"])
        err = capsys.readouterr().err
        assert code in (1, 2), (slot, kind)
        assert "Traceback" not in err and ("manifest.json" in err or "checksum" in err), err
        assert not (root / "out.png").exists()


def test_corrupt_adapted_weights_are_refused_by_export(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    del torch
    from adassr.export.onnx import export_camera
    from tests.export.test_onnx_export import CAMERA, REGISTRY, make_store

    make_store(tmp_path)
    store = CameraStore.open(tmp_path, CAMERA)
    path = store.artifact_path("adapted.safetensors")
    for kind, data in _corruptions(path.read_bytes()).items():
        path.write_bytes(data)
        with pytest.raises(StoreError, match="checksum"):
            export_camera(tmp_path, CAMERA, registry=REGISTRY)
        assert "exports" not in json.loads(store.manifest_path.read_text()), kind
