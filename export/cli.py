"""``adassr export``: a camera's adapted weights, or a registry backbone as the fallback, to ONNX.

torch, onnx and onnxruntime are imported inside :func:`run_export` only.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from adassr.runtime.store import DEFAULT_STORE


def add_export_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--camera", metavar="NAME", help="camera group whose adapted.safetensors is exported")
    source.add_argument("--backbone", metavar="NAME",
                        help="export this unadapted registry backbone as the fallback model (<store>/_fallback/)")
    parser.add_argument("--store", type=Path, default=DEFAULT_STORE, metavar="DIR",
                        help=f"model store folder (default: {DEFAULT_STORE})")
    parser.add_argument("--precision", choices=("fp32", "fp16", "both"), default="fp32",
                        help="model.onnx (fp32), model_fp16.onnx (fp16: half weights and activations, "
                             "float32 I/O), or both (default: fp32)")
    parser.add_argument("--validation-image", type=Path, default=None, metavar="PATH",
                        help="photo whose crops validate the export (default: the camera's first readable "
                             "image, else samples/cameras/nokia/iptc.jpg)")


def run_export(args: argparse.Namespace) -> int:
    from adassr.export.onnx import export_camera, export_fallback

    if args.camera is not None:
        result = export_camera(args.store, args.camera, precision=args.precision,
                               validation_image=args.validation_image)
    else:
        result = export_fallback(args.store, args.backbone, precision=args.precision,
                                 validation_image=args.validation_image)
    for record in result.exports.values():
        path = result.directory / record["file"]
        print(
            f"{result.camera}: {path} ({record['precision']}, {record['bytes'] / 1e6:.1f} MB, "
            f"sha256 {record['sha256'][:12]}...), max abs error vs PyTorch fp32 "
            f"{record['max_abs_error_vs_torch']:.2g} (tolerance {record['tolerance']:g}), "
            f"export {record['export_time_s']:.1f} s"
        )
    return 0
