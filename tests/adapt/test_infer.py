"""`adassr upscale --backend torch`: the PyTorch path with the runtime's batch handling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from adassr.adapt.weights import load_backbone, save_safetensors_weights
from adassr.cli import main
from adassr.runtime.images import read_image, write_image
from adassr.runtime.store import CameraStore

SAMPLES = Path(__file__).resolve().parents[2] / "samples" / "cameras"


@pytest.fixture(scope="module")
def small_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("in")
    pixels = read_image(SAMPLES / "canon" / "flower.jpg").pixels
    write_image(folder / "a.png", np.ascontiguousarray(pixels[100:132, 200:236]))
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return folder


def test_torch_backend_upscales_with_backbone_and_reports_bad_files(small_inputs: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    (tmp_path / "emptystore").mkdir()  # an existing store without this camera: the backbone serves
    code = main(["upscale", "-i", str(small_inputs), "-o", str(out), "--backend", "torch", "--store",
                 str(tmp_path / "emptystore"), "--no-progress", "--device", "cpu"])
    assert code == 1  # one bad file
    captured = capsys.readouterr()
    assert "broken.png" in captured.err and "skipped" in captured.err
    assert "backbone realesrgan-x4plus" in captured.out
    result = read_image(out / "a.png")
    assert result.pixels.shape == (128, 144, 3)
    assert not (out / "broken.png").exists()


def test_torch_backend_refuses_an_unknown_backbone_once_and_notes_cpu_fp32(small_inputs: Path, tmp_path: Path,
                                                                           capsys) -> None:
    """It used to fail once per image with exit 1; a bad option is a whole-run error (exit 2)."""
    (tmp_path / "emptystore").mkdir()
    argv = ["upscale", "-i", str(small_inputs), "-o", str(tmp_path / "out"), "--backend", "torch", "--store",
            str(tmp_path / "emptystore"), "--no-progress", "--device", "cpu"]
    assert main([*argv, "--backbone", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert err.count("unknown backbone 'nosuch'") == 1 and not (tmp_path / "out").exists()
    assert main(["upscale", "-i", str(small_inputs / "a.png"), "-o", str(tmp_path / "a.png"), "--backend", "torch",
                 "--store", str(tmp_path / "emptystore"), "--no-progress", "--device", "cpu",
                 "--precision", "fp16"]) == 0
    assert "--precision fp16 need a CUDA GPU; the torch backend runs fp32 on the CPU" in capsys.readouterr().err


def test_torch_backend_uses_adapted_weights_of_the_camera(small_inputs: Path, tmp_path: Path, capsys) -> None:
    backbone = load_backbone()
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    state["conv_last.bias"] += 0.25  # visibly brighter: proves these weights served the image
    store = CameraStore.open(tmp_path / "store", "canon", create=True)
    store.publish("adapted.safetensors", lambda p: save_safetensors_weights(p, state, backbone.entry), stage="adapt")
    store.update_manifest(lambda m: m.update({"backbone": {"name": "realesrgan-x4plus"}}))
    out_a, out_b = tmp_path / "adapted.png", tmp_path / "plain.png"
    src = str(small_inputs / "a.png")
    assert main(["upscale", "-i", src, "-o", str(out_a), "--backend", "torch", "--camera", "canon",
                 "--store", str(tmp_path / "store"), "--no-progress", "--device", "cpu"]) == 0
    assert "canon/adapted.safetensors" in capsys.readouterr().out
    assert main(["upscale", "-i", src, "-o", str(out_b), "--backend", "torch", "--store",
                 str(tmp_path / "store"), "--no-progress", "--device", "cpu"]) == 0
    a = read_image(out_a).pixels.astype(float)
    b = read_image(out_b).pixels.astype(float)
    assert a.mean() > b.mean() + 20
    # no --camera, but the image sits in a folder named after the camera (adapt's layout)
    in_folder = tmp_path / "photos" / "canon" / "a.png"
    in_folder.parent.mkdir(parents=True)
    in_folder.write_bytes((small_inputs / "a.png").read_bytes())
    capsys.readouterr()
    assert main(["upscale", "-i", str(in_folder), "-o", str(tmp_path / "by_folder.png"), "--backend", "torch",
                 "--store", str(tmp_path / "store"), "--no-progress", "--device", "cpu"]) == 0
    assert "canon/adapted.safetensors" in capsys.readouterr().out
    assert np.array_equal(read_image(tmp_path / "by_folder.png").pixels, read_image(out_a).pixels)
    # tampering with the adapted weights is detected by the manifest's sha256
    path = store.artifact_path("adapted.safetensors")
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    # an explicit camera is loaded before any image: one whole-run error (it used to fail per image)
    assert main(["upscale", "-i", str(in_folder.parent), "-o", str(tmp_path / "x"), "--backend", "torch",
                 "--camera", "canon", "--store", str(tmp_path / "store"), "--no-progress", "--device", "cpu"]) == 2
    assert capsys.readouterr().err.count("fails its checksum") == 1 and not (tmp_path / "x").exists()


def test_torch_backend_loads_damaged_routed_weights_once(small_inputs: Path, tmp_path: Path, capsys,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """Images routed to a camera whose weights fail their checksum each fail, from one load attempt."""
    import adassr.adapt.infer as infer

    backbone = load_backbone()
    store = CameraStore.open(tmp_path / "store", "canon", create=True)
    store.publish("adapted.safetensors", lambda p: save_safetensors_weights(p, backbone.model.state_dict(),
                                                                            backbone.entry), stage="adapt")
    path = store.artifact_path("adapted.safetensors")
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    folder = tmp_path / "photos" / "canon"
    folder.mkdir(parents=True)
    for name in ("a.png", "b.png"):
        (folder / name).write_bytes((small_inputs / "a.png").read_bytes())
    calls: list[str | None] = []

    def counted(store_root: Path, camera: str | None, *args: object):  # type: ignore[no-untyped-def]
        calls.append(camera)
        return choose_weights(store_root, camera, *args)

    choose_weights = infer.choose_weights
    monkeypatch.setattr(infer, "choose_weights", counted)
    assert main(["upscale", "-i", str(folder), "-o", str(tmp_path / "out"), "--backend", "torch", "--store",
                 str(tmp_path / "store"), "--no-progress", "--device", "cpu"]) == 1
    assert capsys.readouterr().err.count("fails its checksum") == 2 and calls == ["canon"]


def test_torch_backend_matches_model_directly(small_inputs: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.png"
    assert main(["upscale", "-i", str(small_inputs / "a.png"), "-o", str(out), "--backend", "torch",
                 "--store", str(tmp_path), "--no-progress", "--device", "cpu", "--tile", "0", "--pre-pad", "0"]) == 0
    lr = read_image(small_inputs / "a.png").pixels.astype(np.float32) / 255
    model = load_backbone().model
    with torch.no_grad():
        ref = model(torch.from_numpy(lr.transpose(2, 0, 1)[None].copy()))[0].clamp(0, 1).permute(1, 2, 0).numpy()
    got = read_image(out).pixels.astype(np.float32) / 255
    # untiled, unpadded: the same computation up to 8-bit rounding of the output
    assert np.abs(got - ref).max() <= 1 / 255 + 1e-6


def test_torch_backend_takes_the_thread_count(tmp_path: Path) -> None:
    """--threads (and $ADASSR_THREADS) were ignored by --backend torch: PyTorch kept its own pool size."""
    from adassr.adapt.infer import TorchUpscaler
    from adassr.runtime.pipeline import RuntimeOptions

    before = torch.get_num_threads()
    wanted = 2 if before == 1 else 1  # another count than the pool has, whatever the machine
    try:
        TorchUpscaler(RuntimeOptions(tmp_path, backend="torch", threads=wanted, device="cpu")).close()
        assert torch.get_num_threads() == wanted
    finally:
        torch.set_num_threads(before)


def test_the_torch_upscaler_says_where_its_models_compute(tmp_path: Path) -> None:
    """``--device auto`` on a machine without CUDA computes on the CPU: a folder run keeps its writes in line."""
    from adassr.adapt.infer import TorchUpscaler
    from adassr.runtime.pipeline import RuntimeOptions

    upscaler = TorchUpscaler(RuntimeOptions(tmp_path, backend="torch", device="auto"))
    try:
        assert upscaler.computes_on_cpu() is (not torch.cuda.is_available())
    finally:
        upscaler.close()
    cpu = TorchUpscaler(RuntimeOptions(tmp_path, backend="torch", device="cpu"))
    try:
        assert cpu.computes_on_cpu() is True
    finally:
        cpu.close()
