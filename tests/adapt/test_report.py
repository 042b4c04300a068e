"""``report.png``: published with a checksum next to the manifest, skipped with a log line without matplotlib."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from adassr.adapt import report as report_module
from adassr.adapt.loop import InternalResult
from adassr.adapt.run import _publish_report
from adassr.runtime.images import read_image
from adassr.runtime.store import CameraStore

PHOTO = Path(__file__).resolve().parents[1] / "data" / "hr" / "chelsea.png"


def _result() -> InternalResult:
    return InternalResult(state_dict={"w": torch.zeros(1)}, kept_backbone=False, niqe_before=[5.0], niqe_after=[4.6],
                          steps=20, best_step=10, stop_reason="reached the step budget (20 steps)",
                          history=[(0, 5.0), (10, 4.6), (20, 4.7)], losses=[(i, 1.0 / i) for i in range(1, 21)])


@pytest.mark.skipif(not report_module.matplotlib_available(), reason="matplotlib (the plots extra) not installed")
def test_report_png_is_published_and_recorded(tmp_path: Path) -> None:
    store = CameraStore.open(tmp_path, "cam", create=True)
    image = read_image(PHOTO).pixels.astype(np.float32) / 255
    weight = np.linspace(0.1, 3.0, image.shape[0] * image.shape[1], dtype=np.float32).reshape(image.shape[:2])
    with store.transaction() as tx:
        assert _publish_report(tx, "cam", _result(), image, weight) == "report.png"
        tx.commit()
    path = store.verified_path("report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    shown = read_image(path).pixels
    assert shown.shape[0] > 200 and shown.shape[1] > 500 and shown.std() > 10  # a drawn figure, not blank
    assert store.read_manifest()["artifacts"]["report.png"]["stage"] == "adapt"
    with store.transaction() as tx:
        assert _publish_report(tx, "cam", _result(), image, None) == "report.png"  # uniform weights
        tx.commit()


def test_report_is_skipped_with_a_log_line_without_matplotlib(tmp_path: Path, monkeypatch, caplog) -> None:
    monkeypatch.setattr(report_module, "matplotlib_available", lambda: False)
    store = CameraStore.open(tmp_path, "cam", create=True)
    image = np.zeros((40, 40, 3), np.float32)
    with caplog.at_level(logging.INFO, logger="adassr.adapt.run"), store.transaction() as tx:
        assert _publish_report(tx, "cam", _result(), image, None) is None
        assert "report.png" not in tx.manifest.get("artifacts", {})
    assert any("report.png skipped" in r.getMessage() and "matplotlib" in r.getMessage() for r in caplog.records)


def test_a_matplotlib_that_fails_to_import_skips_the_report_not_the_run(tmp_path: Path, monkeypatch,
                                                                         caplog) -> None:
    """Installed but broken (a numpy ABI mismatch): the ImportError discarded the trained weights."""
    def broken(path: Path, **_kw: object) -> None:
        raise ImportError("numpy.core.multiarray failed to import")

    monkeypatch.setattr(report_module, "matplotlib_available", lambda: True)
    monkeypatch.setattr(report_module, "render_report", broken)
    store = CameraStore.open(tmp_path, "cam", create=True)
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.run"), store.transaction() as tx:
        assert _publish_report(tx, "cam", _result(), np.zeros((40, 40, 3), np.float32), None) is None
        tx.commit()
    assert "ImportError: numpy.core.multiarray" in caplog.text
    assert "report.png" not in store.read_manifest()["artifacts"]


def test_large_images_are_reduced_before_drawing() -> None:
    """The report's panel is about 400 px wide: a large photo and its weight map are drawn from an
    INTER_AREA reduction to an 800 px longer side, not at full size (which cost GBs in matplotlib)."""
    rng = np.random.default_rng(0)
    big = rng.random((2000, 3000, 3), dtype=np.float32)
    small = report_module._for_display(big)
    assert small.shape == (533, 800, 3) and small.dtype == np.float32
    assert abs(float(small.mean()) - float(big.mean())) < 1e-3
    weight = report_module._for_display(rng.random((3000, 1000), dtype=np.float32))
    assert weight.shape == (800, 267)
    photo = read_image(PHOTO).pixels.astype(np.float32) / 255  # 451 x 300: drawn as it is
    assert report_module._for_display(photo) is photo


@pytest.mark.skipif(not report_module.matplotlib_available(), reason="matplotlib (the plots extra) not installed")
def test_report_of_a_large_image_renders(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    image = rng.random((2400, 3200, 3), dtype=np.float32)
    weight = rng.random((2400, 3200), dtype=np.float32) + 0.5
    path = tmp_path / "report.png"
    report_module.render_report(path, title="big", history=[(0, 5.0), (50, 4.8)], losses=[(1, 0.3), (2, 0.2)],
                                image=image, weight=weight, best_step=50)
    assert path.read_bytes()[:4] == b"\x89PNG"


def _pixels_near(pixels: np.ndarray, rgb: tuple[int, int, int], tol: int = 40) -> int:
    return int((np.abs(pixels.astype(int) - np.array(rgb)).max(axis=2) < tol).sum())


@pytest.mark.skipif(not report_module.matplotlib_available(), reason="matplotlib (the plots extra) not installed")
def test_report_draws_the_training_loss_and_the_kept_step(tmp_path: Path) -> None:
    """The orange loss curve (alpha 0.7 on white) appears only with losses, the green line of the kept
    step only when a step was kept (0: the backbone)."""
    image = np.full((60, 80, 3), 0.5, np.float32)
    history, losses = [(0, 5.0), (10, 4.6), (20, 4.7)], [(i, 1.0 / i) for i in range(1, 41)]
    counts = {}
    for name, loss, best in (("both", losses, 10), ("no-loss", [], 10), ("backbone", losses, 0)):
        path = tmp_path / f"{name}.png"
        report_module.render_report(path, title=name, history=history, losses=loss, image=image, weight=None,
                                    best_step=best)
        pixels = read_image(path).pixels
        counts[name] = (_pixels_near(pixels, (255, 165, 86)), _pixels_near(pixels, (44, 160, 44)))
    assert counts["both"][0] > 50 and counts["both"][1] > 10, counts
    assert counts["no-loss"][0] == 0 and counts["backbone"][1] == 0, counts
