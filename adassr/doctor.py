"""``adassr doctor``: what this installation can run, and what to install for the rest.

A user setting up a GPU box asked "why does upscale run on the CPU?" and "why does adapt say it needs
torch?" one error at a time. ``doctor`` looks at everything once, importing nothing it does not have
to (each optional package is looked up, then imported in a ``try`` for its version and devices), and
prints one line per finding: ``ok`` (usable), ``--`` (not available: what it is for and the command that
installs it) or ``!!`` (present but broken, with the error). Then, per command, whether it can run.

Nothing is downloaded, written or started (no GPU context beyond torch's device query). Exit 0: the
report is information; a broken installation shows as ``!!`` lines. ``--json`` prints the same as one
object.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import platform
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import adassr
from adassr.runtime.console import one_line, say
from adassr.runtime.install import install_hint, pip_command
from adassr.runtime.store import DEFAULT_STORE, store_argument

OK, MISSING, BROKEN = "ok", "--", "!!"


@dataclass(frozen=True)
class Finding:
    """One line of the report."""

    section: str  # "system", "package", "weights", "store", "command"
    name: str
    status: str  # OK, MISSING or BROKEN
    detail: str
    fix: str = ""  # what to run or do (MISSING / BROKEN)

    def line(self) -> str:
        fix = f"; {self.fix}" if self.fix else ""
        return one_line(f"[{self.status}] {self.name}: {self.detail}{fix}")


def add_doctor_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``adassr doctor``."""
    parser.add_argument("--store", type=store_argument, default=DEFAULT_STORE,
                        help=f"artifact store to look at (default ./{DEFAULT_STORE})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines")


def run_doctor(args: argparse.Namespace) -> int:
    """Look, print, exit 0."""
    findings = diagnose(Path(args.store))
    if args.json:
        print(json.dumps({"adassr": adassr.__version__, "findings": [asdict(f) for f in findings]}, indent=1))
        return 0
    section = None
    for finding in findings:
        if finding.section != section:
            section = finding.section
            say(f"{section}:", sys.stdout)
        say(f"  {finding.line()}", sys.stdout)
    return 0


def diagnose(store: Path) -> list[Finding]:
    """Every finding, in report order."""
    findings = _system()
    packages = _packages()
    findings += packages
    have = {f.name for f in packages if f.status == OK}
    findings += _weights(have)
    findings += _store(store, can_export={"torch", "onnx", "onnxscript", "onnxruntime"} <= have)
    findings += _commands(findings)
    return findings


def _system() -> list[Finding]:
    from adassr.runtime.cpu_info import cgroup_memory_left, detect_cpu
    from adassr.runtime.tile_shape import mem_available_bytes

    cpu = detect_cpu()
    bf16 = "native bf16" if cpu.native_bf16 else "no native bf16 (bf16 training is emulated: slow)"
    known = [n for n in (mem_available_bytes(), cgroup_memory_left()) if n is not None]
    memory = f"{min(known) / 1024**3:.1f} GB available" if known else "unknown"
    return [
        Finding("system", "adassr", OK, f"{adassr.__version__} on Python {platform.python_version()} "
                f"({sys.executable}), {platform.system()} {platform.machine()}"),
        Finding("system", "cpu", OK, f"{cpu.model_name or 'unknown model'}: {cpu.physical_cores} usable cores, "
                f"{cpu.isa}, {bf16}"),
        Finding("system", "memory", OK, memory),
    ]


@dataclass(frozen=True)
class _Package:
    name: str  # import name
    distribution: str
    purpose: str
    extra: str  # the pip extra that brings it
    probe: Callable[[Any], str] | None = None  # more detail from the imported module
    module: str = ""  # the module to import when not ``name`` (a newer name first)

    def importable(self) -> str | None:
        """The module to import for it, None when it is not installed."""
        for candidate in (self.module, self.name):
            if candidate and importlib.util.find_spec(candidate) is not None:
                return candidate
        return None


def _ort_detail(ort: Any) -> str:
    providers = list(ort.get_available_providers())
    return "providers " + ", ".join(providers)


def _torch_detail(torch: Any) -> str:
    if not torch.cuda.is_available():
        return f"CUDA not available (build {torch.version.cuda or 'CPU only'})"
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return f"CUDA {torch.version.cuda}, GPU {', '.join(names)}"


_PACKAGES = (
    _Package("numpy", "numpy", "every command", ""),
    _Package("cv2", "opencv-python-headless", "image reading and resizing", ""),
    _Package("onnxruntime", "onnxruntime", "upscale and serve with onnxruntime (CPU: [cpu], GPU: [gpu])", "cpu",
             _ort_detail),
    _Package("torch", "torch", "adapt, export, metrics lpips, --backend torch", "adapt,cpu,cpu-torch", _torch_detail),
    _Package("onnx", "onnx", "export", "adapt"),
    _Package("onnxscript", "onnxscript", "export", "adapt"),
    _Package("safetensors", "safetensors", "adapt, export", "adapt"),
    _Package("scipy", "scipy", "adapt (kernel estimation), metrics psnr / ssim", "adapt"),
    _Package("starlette", "starlette", "serve", "serve"),
    _Package("uvicorn", "uvicorn", "serve", "serve"),
    _Package("prometheus_client", "prometheus-client", "serve (its metrics)", "serve"),
    _Package("multipart", "python-multipart", "serve (multipart uploads)", "serve",
             module="python_multipart"),  # `multipart` is its deprecated name (a warning at import)
    _Package("tritonclient", "tritonclient", "upscale --triton, serving through Triton", "serve"),
    _Package("matplotlib", "matplotlib", "adapt's report.png", "plots"),
    _Package("triton", "triton", "the fused attention kernel on a GPU", "gpu"),
    _Package("cuda", "cuda-python", "CUDA buffers for TensorRT engines", "gpu"),
    _Package("tensorrt", "tensorrt-cu12", "--engine tensorrt / --backend tensorrt", "tensorrt"),
)


def _version(distribution: str, module: Any) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return str(getattr(module, "__version__", "version unknown"))


def _packages() -> list[Finding]:
    findings = []
    for package in _PACKAGES:
        if package.name == "tensorrt":  # a namespace package of type stubs imports too: ask the runtime's own check
            findings.append(_tensorrt(package))
            continue
        importable = package.importable()
        if importable is None:
            fix = f"install: {install_hint(package.extra)}" if package.extra else "reinstall adassr"
            findings.append(Finding("package", package.name, MISSING, f"not installed (for {package.purpose})", fix))
            continue
        try:
            module = importlib.import_module(importable)
            detail = _version(package.distribution, module)
            if package.probe is not None:
                detail += f", {package.probe(module)}"
        except Exception as exc:  # noqa: BLE001 - a broken install (missing shared library, ABI mismatch): reported
            findings.append(Finding("package", package.name, BROKEN, f"installed but fails to import: {exc}",
                                    f"reinstall it: {_reinstall_command(_owner(importable, package.distribution))}"))
            continue
        findings.append(Finding("package", package.name, OK, f"{detail} (for {package.purpose})"))
    return findings


def _owner(module: str, distribution: str) -> str:
    """The installed distribution that provides the top-level ``module`` (``onnxruntime`` may come from
    ``onnxruntime-gpu``, ``cv2`` from ``opencv-python``), else ``distribution``."""
    owners = importlib.metadata.packages_distributions().get(module, [])
    if distribution in owners or not owners:
        return distribution
    return sorted(owners)[0]


def _reinstall_command(distribution: str) -> str:
    """The pip command that replaces an installed but broken ``distribution`` by a fresh copy of the same
    version (``install -e '.[extra]'`` would find it "already satisfied" and leave it broken)."""
    try:
        version = importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:  # files without pip's record: the newest release
        return f"{pip_command()} install --force-reinstall --no-deps {distribution}"
    command = f"{pip_command()} install --force-reinstall --no-deps '{distribution}=={version}'"
    if "+" in version:  # a local version (torch's +cpu): only the index it came from has it
        command += (f" --index-url URL (the index {distribution} {version} came from, e.g. "
                    "https://download.pytorch.org/whl/cpu for torch's +cpu builds)")
    return command


def _tensorrt(package: _Package) -> Finding:
    from adassr.runtime.engines.trt import tensorrt_unavailable_reason, tensorrt_version

    reason = tensorrt_unavailable_reason()
    if reason is not None:
        return Finding("package", package.name, MISSING, f"not usable (for {package.purpose}): {reason}")
    return Finding("package", package.name, OK, f"{tensorrt_version()} (for {package.purpose})")


def _weights(have: set[str]) -> list[Finding]:
    if "torch" not in have:
        return [Finding("weights", "backbones", MISSING, "not looked at: they are read with torch (adapt, export)")]
    from adassr.adapt.archs import BackboneRegistry, WeightSource, default_registry
    from adassr.adapt.quality.lpips_weights import FETCH_HINT, weights_path
    from adassr.runtime.errors import AdassrError

    registry: BackboneRegistry = default_registry()
    findings = []
    for entry in registry:
        if not isinstance(entry.source, WeightSource):
            continue
        try:
            entry.source.resolve()
        except AdassrError as exc:
            findings.append(Finding("weights", entry.name, MISSING, str(exc)))
            continue
        findings.append(Finding("weights", entry.name, OK, entry.source.describe()))
    path = weights_path("vgg")
    findings.append(Finding("weights", "lpips-vgg", OK, str(path)) if path.exists() else
                    Finding("weights", "lpips-vgg", MISSING,
                            "not fetched (adapt's perceptual term and `metrics lpips` need them)", FETCH_HINT))
    return findings


def _store(root: Path, *, can_export: bool) -> list[Finding]:
    from adassr.runtime.errors import AdassrError
    from adassr.runtime.store import FALLBACK_CAMERA, CameraStore, scan_store, store_option

    if root.exists() and not root.is_dir():
        return [Finding("store", str(root), BROKEN, "is a file, not a store folder",
                        "point --store at the folder that holds a folder per camera")]
    if not root.is_dir():
        needs = "" if can_export else " (once export can run: see its line below)"
        return [Finding("store", str(root), MISSING, "no store here (adapt or export create it)",
                        f"`adassr export --backbone realesrgan-x4plus{store_option(root)}` makes one with the "
                        f"fallback model{needs}")]
    try:
        scan = scan_store(root)  # raises when the folder cannot be listed (list_cameras would say "no camera")
    except OSError as exc:
        return [Finding("store", str(root), BROKEN, f"cannot be read: {exc.strerror or exc}", "check its permissions")]
    findings = [Finding("store", f"{root}/{camera}", BROKEN, f"its folder cannot be read ({why})",
                        "check its permissions") for camera, why in scan.unreadable.items()]
    cameras, exported = [], []
    for camera in scan.cameras:
        try:
            manifest = CameraStore.open(root, camera).read_manifest()
        except AdassrError as exc:  # damaged, or written by a newer adassr: every command refuses the camera
            findings.append(_refused(root, camera, str(exc)))
            continue
        cameras.append(camera)
        if manifest.get("exports"):
            exported.append(camera)
    ready = [c for c in exported if c != FALLBACK_CAMERA]
    fallback = ("the fallback model is exported" if FALLBACK_CAMERA in exported
                else "no fallback model (upscale exports it at first use where torch is installed)")
    adapted = [c for c in cameras if c != FALLBACK_CAMERA]
    return [Finding("store", str(root), OK, f"{len(adapted)} camera(s), {len(ready)} exported; {fallback}; "
                    f"`adassr cameras{store_option(root)}` lists them"), *findings]


def _refused(root: Path, camera: str, message: str) -> Finding:
    """A camera every command refuses; the way out of a damaged manifest goes into ``fix``, as for the
    other findings (``--json`` readers look there)."""
    from adassr.runtime.store import MANIFEST_NAME, damaged_manifest_advice

    advice = damaged_manifest_advice(root / camera / MANIFEST_NAME)
    if message.endswith(advice):
        return Finding("store", f"{root}/{camera}", BROKEN, f"refused: {message[:-len(advice)].rstrip('; ')}",
                       advice[0].upper() + advice[1:])
    return Finding("store", f"{root}/{camera}", BROKEN, f"refused: {message}")


def _commands(findings: list[Finding]) -> list[Finding]:
    ok = {(f.section, f.name) for f in findings if f.status == OK}
    detail = {(f.section, f.name): f.detail for f in findings}

    def has(*names: str) -> bool:
        return all(("package", n) in ok for n in names)

    def missing(*names: str) -> str:
        return ", ".join(n for n in names if ("package", n) not in ok)

    def command(name: str, needs: tuple[str, ...], what: str, extra: str, more: str = "") -> Finding:
        if has(*needs):
            return Finding("command", name, OK, what + more)
        return Finding("command", name, MISSING, f"{what}: needs {missing(*needs)}", f"install: {install_hint(extra)}")

    ort = detail.get(("package", "onnxruntime"), "")
    gpu_ort = "CUDAExecutionProvider" in ort
    backbone = ("weights", "realesrgan-x4plus") in ok
    lpips = ("weights", "lpips-vgg") in ok
    adapt_note = "" if backbone and lpips else (
        " (but " + " and ".join(w for w, present in (("the backbone weights", backbone), ("the LPIPS weights", lpips))
                                if not present) + " are missing: see above)")
    rows = [
        command("upscale / serve on the CPU", ("onnxruntime",), "onnxruntime", "cpu"),
        Finding("command", "upscale / serve on a GPU", OK if gpu_ort else MISSING,
                "onnxruntime with its CUDA provider" if gpu_ort else
                "onnxruntime has no CUDA provider here" if has("onnxruntime") else "onnxruntime is not installed",
                "" if gpu_ort else f"on a GPU box: {install_hint('gpu')} (instead of the cpu extra)"),
        command("TensorRT engines", ("tensorrt", "cuda"), "TensorRT and cuda-python", "tensorrt,gpu"),
        command("serve", ("starlette", "uvicorn", "prometheus_client", "multipart"),
                "the HTTP server (its models run as the upscale lines above say)", "serve"),
        command("adapt", ("torch", "safetensors", "scipy"), "adaptation", "adapt,cpu,cpu-torch", adapt_note),
        command("export", ("torch", "onnx", "onnxscript", "onnxruntime"), "ONNX export and its validation",
                "adapt,cpu,cpu-torch"),
        command("bench latency", ("onnxruntime", "onnx"), "latency of the exported models (with torch: PyTorch's too)",
                "adapt,cpu,cpu-torch"),
    ]
    return rows
