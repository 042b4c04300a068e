"""Pictures of the adaptation-quality benchmark (matplotlib; the ``plots`` extra).

- :func:`curves`: NIQE of the evaluation crops and the training loss against steps, one panel
  pair per group, one line per seed.
- :func:`crop_grid`: LR | bicubic | backbone | adapted | HR on the most structured LR window of
  each image of a group.
- :func:`attention_figure`: the attention weight map over its image (the analogue of the
  paper's Fig. 4) for a few photos.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SCALE = 4


def curves(result: dict[str, Any], path: Path) -> None:
    groups = [(n, g) for n, g in result["groups"].items() if g.get("runs")]
    if not groups:
        return
    fig, axes = plt.subplots(2, len(groups), figsize=(4.2 * len(groups), 6.5), squeeze=False)
    for col, (name, g) in enumerate(groups):
        for run in g["runs"]:
            niqe = np.asarray(run["trace"]["niqe"], dtype=float).reshape(-1, 2)
            loss = np.asarray(run["trace"]["loss"], dtype=float).reshape(-1, 2)
            axes[0, col].plot(niqe[:, 0], niqe[:, 1], marker="o", label=f"seed {run['seed']}")
            if len(loss):
                k = max(1, len(loss) // 50)
                smooth = np.convolve(loss[:, 1], np.ones(k) / k, mode="valid")
                axes[1, col].plot(loss[k - 1:, 0], smooth, label=f"seed {run['seed']}")
        before = float(np.nanmean(g["runs"][0]["niqe_eval_crops"]["before"]))
        axes[0, col].axhline(before, color="gray", ls="--", lw=0.8, label="backbone")
        axes[0, col].set_title(f"{name}: NIQE (eval crops)")
        axes[1, col].set_title(f"{name}: training loss")
        axes[1, col].set_xlabel("step")
        axes[0, col].legend(fontsize=7)
    fig.suptitle(f"{result['ablation']} -- {result['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _structured_window(image: np.ndarray, size: int) -> tuple[int, int]:
    gray = image.mean(axis=2)
    lap = np.abs(cv2.Laplacian(gray.astype(np.float32), cv2.CV_32F))
    box = cv2.boxFilter(lap, -1, (size, size), normalize=True, borderType=cv2.BORDER_CONSTANT)
    h, w = gray.shape
    half = size // 2
    inner = box[half:h - half, half:w - half]
    r, c = np.unravel_index(int(np.argmax(inner)), inner.shape)
    return int(r), int(c)


def crop_grid(pics: dict[str, dict[str, np.ndarray]], path: Path, *, title: str, size: int = 48) -> None:
    """One row per image: LR (nearest) | bicubic | backbone | adapted | HR, on a ``size`` LR window."""
    names = list(pics["lr"])
    cols = ("LR", "bicubic", "backbone", "adapted", "HR")
    fig, axes = plt.subplots(len(names), len(cols), figsize=(2.4 * len(cols), 2.4 * len(names)), squeeze=False)
    for row, name in enumerate(names):
        lr = pics["lr"][name]
        top, left = _structured_window(lr, size)
        lr_crop = lr[top:top + size, left:left + size]
        hs = slice(top * SCALE, (top + size) * SCALE), slice(left * SCALE, (left + size) * SCALE)
        bic = cv2.resize(lr, (lr.shape[1] * SCALE, lr.shape[0] * SCALE), interpolation=cv2.INTER_CUBIC)
        panels = (np.kron(lr_crop, np.ones((SCALE, SCALE, 1))), bic[hs], pics["backbone"][name][hs],
                  pics["adapted"][name][hs], pics["hr"][name][hs])
        for col, (label, panel) in enumerate(zip(cols, panels, strict=True)):
            ax = axes[row, col]
            ax.imshow(np.clip(panel, 0, 1), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(label)
        axes[row, 0].set_ylabel(name, fontsize=7)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def attention_figure(items: list[tuple[str, np.ndarray, np.ndarray]], path: Path) -> None:
    """``items``: (name, LR image HxWx3, weight map HxW); image and overlaid weight side by side."""
    fig, axes = plt.subplots(len(items), 2, figsize=(9, 3.6 * len(items)), squeeze=False)
    for row, (name, image, weight) in enumerate(items):
        axes[row, 0].imshow(np.clip(image, 0, 1))
        axes[row, 0].set_title(name, fontsize=8)
        axes[row, 1].imshow(np.clip(image, 0, 1).mean(axis=2), cmap="gray")
        shown = axes[row, 1].imshow(weight, cmap="inferno", alpha=0.65)
        axes[row, 1].set_title("attention loss weight", fontsize=8)
        fig.colorbar(shown, ax=axes[row, 1], fraction=0.046)
        for ax in axes[row]:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def attention_maps_main(argv: list[str] | None = None) -> int:
    """Write ``attention_maps.png``: the CPU default attention weight map over two bundled photos."""
    import argparse
    import sys

    import torch

    root = Path(__file__).resolve().parents[1]
    for path in (root, root / "benchmarks"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    from script_cli import existing_file, output_file

    from adassr.adapt.attention import compute_weight_map
    from adassr.adapt.config import cpu_demo_defaults
    from adassr.adapt.precision import resolve_precision
    from adassr.adapt.weights import load_backbone
    from adassr.runtime.images import read_image, to_float32

    parser = argparse.ArgumentParser(description=attention_maps_main.__doc__)
    parser.add_argument("--images", nargs="+", type=existing_file, default=[
        root / "samples" / "cameras" / "canon" / "flower.jpg", root / "samples" / "cameras" / "nokia" / "iptc.jpg"])
    parser.add_argument("--out", type=output_file, default=root / "benchmarks" / "results" / "attention_maps.png")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    model = load_backbone(device="cpu").model.eval()
    config = cpu_demo_defaults().attention
    items = []
    for path in args.images:
        pixels = to_float32(read_image(path).pixels)
        image = np.repeat(pixels, 3, axis=2) if pixels.shape[2] == 1 else pixels
        weight = compute_weight_map(model, np.ascontiguousarray(image), config, device=device,
                                    precision=resolve_precision("fp32", device))
        items.append((f"{path.parent.name}/{path.name} ({image.shape[1]}x{image.shape[0]})", image, weight))
        print(f"{path.name}: weight map {weight.shape}, range {weight.min():.2f}..{weight.max():.2f}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    attention_figure(items, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from script_cli import run_script

    run_script(attention_maps_main)
