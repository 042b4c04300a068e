"""``adassr cameras``: what a model store holds, camera by camera, without starting a server.

For each camera folder with a manifest: whether it is adapted (NIQE before and after, or the backbone
kept), which exports it has (fp32, fp16) and whether they are of its current weights, its TensorRT
engines, scale, backbone and last update; with ``--verify``, each model and weights file checked
against its sha256. Folders that cannot be read or whose manifest is damaged are listed with the
reason, as are folders whose name is no camera group name. Torch-free: reads manifests only.

Exit status: 0 when every camera is readable (and, with ``--verify``, every file matches), 1 when
one is not (each named with its reason), 2 for a store that does not exist.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adassr.runtime.console import one_line
from adassr.runtime.errors import ConfigError, StoreError
from adassr.runtime.store import (
    ADAPTED_WEIGHTS,
    DEFAULT_STORE,
    EXPORT_KEYS,
    FALLBACK_BACKBONE,
    FALLBACK_CAMERA,
    CameraStore,
    adapt_command,
    misnamed_note,
    scan_store,
    store_argument,
    store_option,
)

_PRECISION_OF = {key: precision for precision, key in EXPORT_KEYS.items()}


@dataclass(frozen=True)
class CameraSummary:
    """One camera folder of the store, as ``adassr cameras`` shows it (``problem``: why it cannot serve)."""

    camera: str
    adapted: bool = False
    kept_backbone: bool | None = None
    niqe_before: float | None = None
    niqe_after: float | None = None
    exports: tuple[str, ...] = ()  # precisions exported ("fp32", "fp16")
    exports_current: bool = True  # the exports were made from the current adapted weights
    engines: int = 0
    scale: int | None = None
    backbone: str | None = None
    updated: str | None = None
    problem: str | None = None
    verified: tuple[str, ...] = field(default=())  # artifacts whose sha256 was checked (--verify)

    @property
    def state(self) -> str:
        """``exported``, ``adapted, not exported``, ``exports of earlier weights``, or ``no model``."""
        if self.problem is not None:
            return "refused"
        if self.exports and not self.exports_current:
            return "exports of earlier weights"
        if self.exports:
            return "exported"
        return "adapted, not exported" if self.adapted else "no model"


def summarise(store: Path, camera: str, *, verify: bool = False) -> CameraSummary:
    """The summary of one camera folder; a damaged manifest or (with ``verify``) a file that fails its
    sha256 becomes the summary's ``problem``, never an exception. A verification that fails while the
    camera's manifest changed meanwhile (an export committed during the check removes the previous
    files) is done again once, on the new manifest."""
    summary = _summarise(store, camera, verify=verify)
    if summary.problem is not None and verify:
        again = _summarise(store, camera, verify=verify)
        if again.updated != summary.updated or again.problem is None:
            return again
    return summary


def _summarise(store: Path, camera: str, *, verify: bool) -> CameraSummary:
    cam = CameraStore.open(store, camera)
    try:
        manifest = cam.read_manifest()
    except StoreError as exc:
        return CameraSummary(camera, problem=str(exc))
    found = manifest.get("exports")
    exports: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    weights = manifest.get("weights_sha256")
    current = all(not isinstance(r, Mapping) or r.get("weights_sha256") in (None, weights) for r in exports.values())
    backbone = manifest.get("backbone")
    niqe_before, niqe_after = manifest.get("niqe_before"), manifest.get("niqe_after")
    adapted = ADAPTED_WEIGHTS in (manifest.get("artifacts") or {})
    verified: list[str] = []
    problem = None
    if verify:
        names = [r.get("file") for r in exports.values() if isinstance(r, Mapping)]
        names += [ADAPTED_WEIGHTS] if adapted else []
        for name in (n for n in names if isinstance(n, str)):
            try:
                cam.verified_path(name, manifest)
            except StoreError as exc:
                problem = str(exc)
                break
            verified.append(name)
    engines = manifest.get("engines")
    return CameraSummary(
        camera,
        adapted=adapted,
        kept_backbone=manifest.get("kept_backbone") if adapted else None,
        niqe_before=float(niqe_before) if isinstance(niqe_before, (int, float)) else None,
        niqe_after=float(niqe_after) if isinstance(niqe_after, (int, float)) else None,
        exports=tuple(sorted(_PRECISION_OF.get(key, key) for key in exports)),
        exports_current=current,
        engines=len(engines) if isinstance(engines, Mapping) else 0,
        scale=manifest.get("scale") if isinstance(manifest.get("scale"), int) else None,
        backbone=backbone.get("name") if isinstance(backbone, Mapping) else None,
        updated=manifest.get("updated") if isinstance(manifest.get("updated"), str) else None,
        problem=problem,
        verified=tuple(verified),
    )


def describe(summary: CameraSummary, store: Path) -> str:
    """One line for a person: the camera, its state and what to run next where something is missing."""
    s = summary
    if s.problem is not None:
        return f"{s.camera}: refused: {s.problem}"
    parts = [s.state + (f" ({', '.join(s.exports)})" if s.exports else "")]
    if s.adapted and s.niqe_before is not None and s.niqe_after is not None:
        kept = ", the backbone kept" if s.kept_backbone else ""
        parts.append(f"NIQE {s.niqe_before:.3f} -> {s.niqe_after:.3f}{kept}")
    if s.scale is not None:
        parts.append(f"x{s.scale}")
    if s.backbone:
        parts.append(f"backbone {s.backbone}")
    if s.engines:
        parts.append(f"{s.engines} TensorRT engine{'s' if s.engines != 1 else ''}")
    if s.updated:
        parts.append(f"updated {s.updated}")
    if s.verified:
        parts.append(f"{len(s.verified)} file{'s' if len(s.verified) != 1 else ''} verified")
    option = store_option(store)
    if s.state in ("adapted, not exported", "exports of earlier weights"):
        parts.append(f"run `adassr export --camera {s.camera}{option}`")
    elif s.state == "no model":
        parts.append(f"run `{adapt_command(s.camera, store)}`" if s.camera != FALLBACK_CAMERA
                     else f"run `adassr export --backbone {FALLBACK_BACKBONE}{option}`")
    return f"{s.camera}: " + "; ".join(parts)


def add_cameras_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``adassr cameras`` options to ``parser``."""
    parser.add_argument("--store", type=store_argument, default=DEFAULT_STORE,
                        help=f"model store (default {DEFAULT_STORE})")
    parser.add_argument("--verify", action="store_true",
                        help="check every model and weights file against its sha256 (reads them whole)")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout instead of lines")


def run_cameras(args: argparse.Namespace) -> int:
    """``adassr cameras``: see the module docstring."""
    store = Path(args.store).expanduser()
    if not store.is_dir():
        raise ConfigError(f"the model store {store} does not exist or is not a folder; pass --store DIR (adapt "
                          "and export create it)")
    try:
        scan = scan_store(store)
    except OSError as exc:
        raise StoreError(f"cannot list the model store {store} ({exc.strerror or exc}); check its permissions") from exc
    summaries = [summarise(store, camera, verify=args.verify) for camera in scan.cameras]
    summaries += [CameraSummary(name, problem=f"its folder cannot be read ({why})")
                  for name, why in sorted(scan.unreadable.items())]
    misnamed = sorted(scan.misnamed.items())
    if args.json:
        payload: dict[str, Any] = {
            "store": str(store),
            "cameras": [{**asdict(s), "state": s.state} for s in summaries],
            "misnamed_folders": {name: why for name, why in misnamed},
        }
        print(json.dumps(payload, indent=1))
    else:
        if not summaries:
            option = one_line(store_option(store))
            print(f"the store {one_line(str(store))} holds no camera yet (`{one_line(adapt_command('NAME', store))}`, "
                  f"or `adassr export --backbone {FALLBACK_BACKBONE}{option}` for the fallback)")
        for summary in summaries:
            print(one_line(describe(summary, store)))
        for name, why in misnamed:
            print(one_line(f"{name}: {misnamed_note(why)}"))
    return 1 if any(s.problem is not None for s in summaries) else 0
