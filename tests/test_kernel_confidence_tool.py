"""benchmarks/kernel_confidence.py: its groups, the logistic fit, the scores, and the committed weights
refitted from the committed rows."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ROWS = ROOT / "benchmarks" / "results" / "kernel_confidence_rows"


@pytest.fixture(scope="module")
def tool(load_benchmark: Callable[[str], ModuleType]) -> ModuleType:
    return load_benchmark("kernel_confidence.py")


def test_the_frames_show_their_scenes_in_turn(tool: ModuleType) -> None:
    a, b = np.full((64, 96, 3), 0.2, np.float32), np.full((64, 96, 3), 0.7, np.float32)
    frames = tool.camera_frames([a, b], (1.6, 1.6, 0.0), noise=0.0, quality=None, rng=np.random.default_rng(0))
    assert len(frames) == tool.FRAMES and all(f.shape == (16, 24, 3) for f in frames)
    assert [round(float(f.mean()), 2) for f in frames[:4]] == [0.2, 0.7, 0.2, 0.7]
    noisy = tool.camera_frames([a], (1.6, 1.6, 0.0), noise=5.0, quality=None, rng=np.random.default_rng(0))
    assert not np.array_equal(noisy[0], noisy[1]) and 3.5 < 255 * float(noisy[0].std()) < 6.5
    rng = np.random.default_rng(1)
    kernels = [tool.random_kernel(rng) for _ in range(200)]
    assert all(3.2 >= k[0] >= k[1] >= 0.8 and 0 <= k[2] < 180 and k[0] / k[1] <= 3.0 + 1e-3 for k in kernels)


def test_the_logistic_fit_finds_known_weights(tool: ModuleType) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 2)) * [1.0, 3.0] + [0.0, 5.0]
    truth = np.array([-1.0, 2.0, -0.5])
    y = (rng.random(len(x)) < 1 / (1 + np.exp(-(truth[0] + x @ truth[1:])))).astype(float)
    assert tool.fit_logistic(x, y) == pytest.approx(truth, abs=0.12)


def test_auc_and_the_old_formula(tool: ModuleType) -> None:
    assert tool.auc([0.9, 0.8, 0.1], [True, True, False]) == 1.0
    assert tool.auc([0.1, 0.9], [True, False]) == 0.0 and tool.auc([0.5, 0.5], [True, False]) == 0.5
    assert math.isnan(tool.auc([0.5], [True]))
    d = {"residual_rms": 0.06, "n_pixels": 2000, "fallback_gap_allowed": 0.02, "fixed_gaussian_loss_gap": 0.05}
    assert tool.old_confidence(d) == pytest.approx(0.8 * 0.5 * 0.5)
    assert tool.old_confidence({**d, "fallback_gap_allowed": 0.0}) == pytest.approx(0.4)


def test_collect_writes_a_row_a_group(tool: ModuleType, tmp_path: Path) -> None:
    photos = [p[:256, :256] for p in tool.load_scenes(ROOT / "tests" / "data" / "hr")[:3]]
    with (tmp_path / "rows.jsonl").open("w") as out:
        out.write(json.dumps({"hr_dir": "x", "seed": 3, "groups": 2, "lr_sizes": ["64 x 64"], "machine": "m"}) + "\n")
        rows = tool.collect(photos, 2, 3, out)
    again, sources = tool.load_rows([tmp_path / "rows.jsonl"])
    assert again == json.loads(json.dumps(rows)) and len(rows) == 2
    assert sources == ["2 groups of x (LR 64 x 64, x4), seed 3, m"]
    for row in rows:
        assert row["scenes"] in (1, 2, 3) and row["diagnostics"]["n_scenes"] == row["scenes"]
        assert row["dist"] >= 0 and row["dist_g16"] > 0 and set(tool.RECORDED) <= set(row["diagnostics"])
    (tmp_path / "bad.jsonl").write_text("not json\n")
    with pytest.raises(SystemExit, match="not a file written by 'collect'"):
        tool.load_rows([tmp_path / "bad.jsonl"])


def test_collect_at_another_scale_keeps_the_lr_size_and_measures_there(tool: ModuleType, tmp_path: Path) -> None:
    at4 = tool.load_scenes(ROOT / "tests" / "data" / "hr")[:2]
    at2 = tool.load_scenes(ROOT / "tests" / "data" / "hr", 2)[:2]
    for big, small in zip(at4, at2, strict=True):
        assert small.shape[0] % 2 == 0 and small.shape[1] % 2 == 0
        assert abs(small.shape[0] // 2 - big.shape[0] // 4) <= 1 and abs(small.shape[1] // 2 - big.shape[1] // 4) <= 1
    frames = tool.camera_frames([at2[0]], (1.6, 1.6, 0.0), noise=0.0, quality=None, rng=np.random.default_rng(0),
                                scale=2)
    assert frames[0].shape[:2] == (at2[0].shape[0] // 2, at2[0].shape[1] // 2)
    # the distance is measured on the support the confidence uses at the scale (26 HR taps at x2 and x4, 25
    # at x3), wide enough that the scale hardly matters
    pair = ((2.0, 1.0, 30.0), (1.6, 1.6, 0.0))
    assert tool.kernel_distance(pair[0], pair[0], 2) == 0.0 and tool.kernel_distance(*pair, 2) > 0.05
    assert tool.kernel_distance(*pair, 2) == pytest.approx(tool.kernel_distance(*pair, 4), rel=1e-12)
    assert tool.kernel_distance(*pair, 3) == pytest.approx(tool.kernel_distance(*pair, 4), rel=1e-4)
    with (tmp_path / "rows.jsonl").open("w") as out:
        rows = tool.collect([p[:128, :128] for p in at2], 1, 5, out, scale=2)
    assert rows[0]["scale"] == 2 and rows[0]["dist_g16"] == pytest.approx(
        tool.kernel_distance(tool.FIXED, tuple(rows[0]["kernel"]), 2))


def test_the_committed_weights_are_what_the_committed_rows_fit(tool: ModuleType) -> None:
    """adapt/kernel/confidence.py WEIGHTS = the report's fit on the development photos' rows."""
    from adassr.adapt.kernel.confidence import WEIGHTS

    result = tool.report(sorted(ROWS.glob("dev_photos_*.jsonl")), sorted(ROWS.glob("hr_*.jsonl")), "test machine")
    assert result["weights"] == pytest.approx(list(WEIGHTS), abs=1e-4)
    check = result["check"]
    assert check["n_fitted"] == 198 and check["auc_new"] > check["auc_old"] + 0.2
    text = tool.to_markdown(result)
    assert "| log_scenes | 2.1638 |" in text and "Checked on (held out)" in text


def test_collect_from_the_command_line_estimates_at_its_scale(tool: ModuleType, tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``collect --scale 2``: the photos resized by 1/2, the frames downsampled by 2 and estimated at x2,
    the header and the report's source line saying x2 (mutants: the scale not passed on to load_scenes,
    collect, camera_frames or estimate_kernel; the LR sizes or the label at x4)."""
    from PIL import Image

    import adassr.adapt.kernel as kernel_pkg

    hr_dir = tmp_path / "hr"
    hr_dir.mkdir()
    for name in ("astronaut", "coffee"):
        with Image.open(ROOT / "tests" / "data" / "hr" / f"{name}.png") as im:
            im.convert("RGB").crop((0, 0, 256, 256)).save(hr_dir / f"{name}.png")
    seen = []
    real = kernel_pkg.estimate_kernel

    def spy(frames, *args, **kwargs):  # type: ignore[no-untyped-def]
        seen.append((kwargs.get("scale"), {f.shape[:2] for f in frames}))
        return real(frames, *args, **kwargs)

    monkeypatch.setattr(kernel_pkg, "estimate_kernel", spy)
    out = tmp_path / "rows.jsonl"
    assert tool.main(["collect", "--hr-dir", str(hr_dir), "--groups", "1", "--seed", "2", "--scale", "2",
                      "--out", str(out), "--machine", "m"]) == 0
    assert seen == [(2, {(64, 64)})]
    header, row = (json.loads(line) for line in out.read_text().splitlines())
    assert header["scale"] == 2 and header["lr_sizes"] == ["64 x 64"] and row["scale"] == 2
    rows, sources = tool.load_rows([out])
    assert rows == [row] and sources == [f"1 groups of {hr_dir} (LR 64 x 64, x2), seed 2, m"]


def test_the_report_reads_each_rows_scale(tool: ModuleType) -> None:
    """The x3 rows are scored and fitted with the confidence at x3 (its distance to G(1.6) on 25 taps):
    the committed x3 check is what the report gives, and a fit on x3 rows is the fit of their x3 features
    (mutants: the summary's or the fit's features at x4)."""
    from adassr.adapt.kernel.confidence import confidence_features

    x3 = ROWS / "scale3_dev_photos_seed30.jsonl"
    committed = json.loads((ROOT / "benchmarks" / "results" / "kernel_confidence_x3.json").read_text())
    result = tool.report(sorted(ROWS.glob("dev_photos_*.jsonl")), [x3], "test machine")
    for key in ("brier_new", "auc_new", "n_fitted"):
        assert result["check"][key] == pytest.approx(committed["check"][key], abs=1e-9)
    rows, _ = tool.load_rows([x3])
    train = tool.fitted_rows(rows)
    x = np.array([confidence_features(r["diagnostics"], 3) for r in train])
    y = np.array([float(tool.closer(r)) for r in train])
    assert tool.report([x3], [x3], "m")["weights"] == pytest.approx(list(tool.fit_logistic(x, y)), rel=1e-9)
