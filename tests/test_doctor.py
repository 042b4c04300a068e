"""``adassr doctor``: what the installation can run, on this machine's real packages and a real store."""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path

import pytest

from adassr.cli import main
from adassr.runtime.store import FALLBACK_CAMERA

from .runtime._models import publish_camera


def test_the_report_names_every_section_and_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = tmp_path / "my store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    publish_camera(store, "canon", seed=1)
    assert main(["doctor", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    for section in ("system:", "package:", "weights:", "store:", "command:"):
        assert f"\n{section}\n" in f"\n{out}"
    assert "[ok] onnxruntime: " in out and "CPUExecutionProvider" in out  # the test extra installs it
    assert "[ok] upscale / serve on the CPU: onnxruntime" in out
    assert "1 camera(s), 1 exported; the fallback model is exported" in out
    assert f"`adassr cameras --store '{store}'` lists them" in out


def test_json_has_one_finding_per_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor", "--store", str(tmp_path / "none"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    statuses = {f["status"] for f in report["findings"]}
    assert statuses <= {"ok", "--", "!!"} and report["adassr"]
    (store,) = [f for f in report["findings"] if f["section"] == "store"]
    assert store["status"] == "--" and "adassr export --backbone realesrgan-x4plus --store" in store["fix"]


def test_a_missing_and_a_broken_package_are_told_apart(monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    real_find, real_import = importlib.util.find_spec, importlib.import_module

    def find_spec(name: str, *args: object) -> object:
        return None if name == "starlette" else real_find(name, *args)  # type: ignore[arg-type]

    def import_module(name: str, *args: object) -> object:
        if name == "scipy":
            raise ImportError("libopenblas.so.0: cannot open shared object file")
        return real_import(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(importlib, "import_module", import_module)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "[--] starlette: not installed (for serve); install: " in out and "[serve]" in out
    assert "[!!] scipy: installed but fails to import: libopenblas.so.0" in out
    assert "[--] adapt: adaptation: needs scipy" in out
    # the fix replaces the broken copy: `install -e '.[adapt]'` found scipy "already satisfied" and left it
    version = importlib.metadata.version("scipy")
    assert f"install --force-reinstall --no-deps 'scipy=={version}'" in out
    assert "[--] serve: the HTTP server (its models run as the upscale lines above say): needs starlette" in out


def test_a_broken_module_is_reinstalled_from_the_distribution_that_owns_it(monkeypatch: pytest.MonkeyPatch,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """On a [gpu] box `onnxruntime` is the module of `onnxruntime-gpu`: the fix must not add the CPU package,
    which conflicts with it (a helper's review)."""
    real_import, real_owners = importlib.import_module, importlib.metadata.packages_distributions
    real_version = importlib.metadata.version

    def import_module(name: str, *args: object) -> object:
        if name == "onnxruntime":
            raise ImportError("libcudnn.so.9: cannot open shared object file")
        return real_import(name, *args)  # type: ignore[arg-type]

    def version(distribution: str) -> str:
        return "1.23.2" if distribution == "onnxruntime-gpu" else real_version(distribution)

    monkeypatch.setattr(importlib, "import_module", import_module)
    monkeypatch.setattr(importlib.metadata, "packages_distributions",
                        lambda: {**real_owners(), "onnxruntime": ["onnxruntime-gpu"]})
    monkeypatch.setattr(importlib.metadata, "version", version)
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "install --force-reinstall --no-deps 'onnxruntime-gpu==1.23.2'" in out
    assert "'onnxruntime==" not in out


def test_without_onnxruntime_the_gpu_line_says_it_is_not_installed(monkeypatch: pytest.MonkeyPatch,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    real_find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "onnxruntime" else real_find(name, *a))
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    assert "[--] upscale / serve on a GPU: onnxruntime is not installed;" in out
    assert "no CUDA provider" not in out


def test_type_stubs_are_not_tensorrt(capsys: pytest.CaptureFixture[str]) -> None:
    """The `tensorrt-stubs` package makes `import tensorrt` work (a namespace package): doctor asks the
    runtime's own check, which needs TensorRT 10's Builder and Runtime."""
    from adassr.runtime.engines.trt import tensorrt_unavailable_reason

    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    reason = tensorrt_unavailable_reason()
    if reason is None:  # a machine with TensorRT 10
        assert "[ok] tensorrt: 10." in out
    else:
        assert "[--] tensorrt: not usable" in out and "[--] TensorRT engines" in out


def test_a_damaged_camera_and_a_file_for_a_store_are_broken_not_ok(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """Doctor said [ok] for a store with a damaged manifest (every command refuses that camera) and offered to
    make a store where a file is (a helper's review)."""
    store = tmp_path / "store"
    publish_camera(store, FALLBACK_CAMERA, seed=0)
    publish_camera(store, "canon", seed=1)
    (store / "canon" / "manifest.json").write_text('{"broken')
    assert main(["doctor", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "0 camera(s), 0 exported; the fallback model is exported" in out
    assert f"[!!] {store}/canon: refused: " in out and "manifest.json.damaged" in out
    assert main(["doctor", "--store", str(store), "--json"]) == 0
    (refused,) = [f for f in json.loads(capsys.readouterr().out)["findings"] if f["name"] == f"{store}/canon"]
    assert refused["status"] == "!!" and "is not valid JSON" in refused["detail"]
    assert refused["fix"].startswith("Every stage refuses this camera") and "manifest.json.damaged" in refused["fix"]
    assert "mv " not in refused["detail"]  # --json readers find the way out in `fix`, as for other findings
    afile = tmp_path / "afile"
    afile.write_text("hi")
    assert main(["doctor", "--store", str(afile)]) == 0
    assert f"[!!] {afile}: is a file, not a store folder" in capsys.readouterr().out


def test_the_store_line_counts_exported_cameras_and_memory_is_the_least_known(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """An adapted camera that is not exported yet is a camera but not an exported one, and the memory line
    shows the tighter of the machine's and the container's (cgroup) limit (mutation testing)."""
    from adassr.runtime import cpu_info, tile_shape
    from adassr.runtime.store import CameraStore

    store = tmp_path / "store"
    publish_camera(store, "canon", seed=1)
    CameraStore.open(store, "dashcam", create=True).publish(
        "adapted.safetensors", lambda p: p.write_bytes(b"weights"), stage="adapt")
    monkeypatch.setattr(tile_shape, "mem_available_bytes", lambda: 8 * 1024**3)
    monkeypatch.setattr(cpu_info, "cgroup_memory_left", lambda: 3 * 1024**3 // 2)
    assert main(["doctor", "--store", str(store)]) == 0
    out = capsys.readouterr().out
    assert "2 camera(s), 1 exported; no fallback model" in out
    assert "[ok] memory: 1.5 GB available" in out
