"""``report.png`` of an adaptation run: NIQE against steps and the loss-weight map of one image.

matplotlib is optional (the ``plots`` extra) and imported only here, inside
:func:`render_report`; :func:`matplotlib_available` lets the caller skip the report with one
log line instead of failing the run.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Sequence
from pathlib import Path

import numpy as np

REPORT_FILE = "report.png"


def matplotlib_available() -> bool:
    return importlib.util.find_spec("matplotlib") is not None


def render_report(
    path: Path,
    *,
    title: str,
    history: Sequence[tuple[int, float]],
    losses: Sequence[tuple[int, float]],
    image: np.ndarray,
    weight: np.ndarray | None,
    best_step: int,
) -> None:
    """Write the report as PNG to ``path``.

    ``history``: (step, group NIQE) evaluations, step 0 the backbone. ``losses``: (step, training
    loss). ``image``: one LR image ``H x W x 3`` in [0, 1]; ``weight``: its loss-weight map
    ``H x W`` (None: uniform weights, the image alone is shown).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    ax = axes[0]
    if history:
        steps, scores = zip(*history, strict=True)
        ax.plot(steps, scores, marker="o", color="tab:blue", label="NIQE (eval crops)")
        ax.axhline(scores[0], color="gray", ls="--", lw=0.8, label="backbone")
        if best_step:
            ax.axvline(best_step, color="tab:green", ls=":", lw=1.0, label=f"kept: step {best_step}")
    ax.set_xlabel("step")
    ax.set_ylabel("NIQE (lower is better)")
    if losses:
        loss = np.asarray(losses, dtype=float)
        k = max(1, len(loss) // 50)
        smooth = np.convolve(loss[:, 1], np.ones(k) / k, mode="valid")
        twin = ax.twinx()
        twin.plot(loss[k - 1:, 0], smooth, color="tab:orange", lw=0.8, alpha=0.7, label="training loss")
        twin.set_ylabel("training loss")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title("NIQE against steps", fontsize=9)
    shown = _for_display(np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0))
    if weight is not None:
        weight = _for_display(np.asarray(weight, dtype=np.float32))
    if weight is None:
        axes[1].imshow(shown)
        axes[1].set_title("uniform loss weights", fontsize=9)
    else:
        axes[1].imshow(shown.mean(axis=2), cmap="gray")
        overlay = axes[1].imshow(weight, cmap="inferno", alpha=0.6)
        fig.colorbar(overlay, ax=axes[1], fraction=0.046)
        axes[1].set_title("loss-weight map", fontsize=9)
    axes[1].set_xticks([])
    axes[1].set_yticks([])
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80)
    plt.close(fig)


DISPLAY_MAX_SIDE = 800
"""Longer side the image and its weight map are reduced to before drawing (the panel is about 400 px
wide at the report's size): a 40 MP photo drawn at full size costs matplotlib several GB."""


def _for_display(picture: np.ndarray) -> np.ndarray:
    """``picture`` reduced (``INTER_AREA``) so its longer side is at most :data:`DISPLAY_MAX_SIDE`."""
    import cv2

    height, width = picture.shape[:2]
    if max(height, width) <= DISPLAY_MAX_SIDE:
        return picture
    factor = DISPLAY_MAX_SIDE / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return np.asarray(cv2.resize(picture, size, interpolation=cv2.INTER_AREA))
