"""The ADMM iterations (``--admm-iters K``) around stand-in internal and external steps: one time
budget for the whole run, and a signal in an external step keeps the evaluated internal result."""

from __future__ import annotations

import math
import signal
import time
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from adassr.adapt import external, pairs, run
from adassr.adapt.archs import RRDBNet
from adassr.adapt.config import AdaptConfig
from adassr.adapt.loop import InternalResult
from adassr.adapt.precision import Precision

STEP_S = 0.3  # what each stand-in step takes


@dataclass
class _Calls:
    log: list[tuple[str, float | None]]


def _setup(monkeypatch: pytest.MonkeyPatch, *, external_fails: BaseException | None = None) -> _Calls:
    calls = _Calls([])

    def internal(model: RRDBNet, sampler: Any, crops: Any, metric: Any, config: AdaptConfig,
                 **_: Any) -> InternalResult:
        calls.log.append(("internal", config.time_budget))
        time.sleep(STEP_S)  # an internal step cannot be shorter than its evaluations and one period
        state = {k: v.detach().clone() + 0.01 for k, v in model.state_dict().items()}
        return InternalResult(state, False, [5.0], [4.0], 2, 2, "reached the step budget (2 steps)",
                              timing={"setup_s": 0.1, "mean_evaluation_s": 0.05, "mean_period_first_step_s": 0.1})

    def external_step(model: RRDBNet, anchors: Any, config: AdaptConfig, *, deadline: float | None = None,
                      **_: Any) -> dict[str, torch.Tensor] | None:
        calls.log.append(("external", None if deadline is None else deadline - time.monotonic()))
        if external_fails is not None:
            raise external_fails
        end = time.monotonic() + STEP_S
        while time.monotonic() < end:  # trains until its steps are done or the deadline passes
            if deadline is not None and time.monotonic() >= deadline:
                return None
            time.sleep(0.01)
        return {k: v.detach().clone() for k, v in model.state_dict().items()}

    monkeypatch.setattr(run, "run_internal_step", internal)
    monkeypatch.setattr(external, "run_external_step", external_step)
    monkeypatch.setattr(pairs, "make_pair_sampler", lambda *a, **k: None)
    return calls


def _admm(budget: float | None, iters: int) -> tuple[InternalResult, float]:
    torch.manual_seed(0)
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4)
    config = AdaptConfig(admm_iters=iters, time_budget=budget, external_hr=Path("/nowhere/hr") if iters > 1 else None)
    inputs = SimpleNamespace(images=[], kernel=SimpleNamespace(kernel=None), pair_config=None, weights=None,
                             crops=[], metric=None, perceptual=None)
    start = time.monotonic()
    result = run._run_admm(model, inputs, config, dict(model.state_dict()), scale=4,  # type: ignore[arg-type]
                           device=torch.device("cpu"), precision=Precision("fp32", "cpu"), trainable="all",
                           progress=None)
    return result, time.monotonic() - start


def test_the_time_budget_covers_every_admm_iteration(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each internal step got the whole budget and the external steps had none: K x the budget."""
    calls = _setup(monkeypatch)
    result, took = _admm(1.0, 5)
    assert took < 1.0 + 0.1, took  # was 5 x 0.3 + 4 x 0.3 s; the last internal step fits in the budget
    internal_budgets = [b for kind, b in calls.log if kind == "internal"]
    assert internal_budgets[0] == pytest.approx(1.0, abs=0.05)
    assert all(later < earlier for earlier, later in pairwise(internal_budgets))
    assert len(calls.log) < 9 and "time budget" in result.stop_reason
    assert not result.kept_backbone and result.interrupted is None


def test_without_a_budget_every_iteration_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _setup(monkeypatch)
    result, _ = _admm(None, 3)
    assert [kind for kind, _ in calls.log] == ["internal", "external", "internal", "external", "internal"]
    assert all(b is None for _, b in calls.log) and "time budget" not in result.stop_reason


def test_every_admm_iteration_is_summarised(monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest recorded only the last internal step (its steps, best step and stop reason), so
    a K-iteration run looked like one of 2 steps."""
    _setup(monkeypatch)
    result, _ = _admm(None, 3)
    assert [s["iteration"] for s in result.admm] == [1, 2, 3]
    assert all(s["steps"] == 2 and s["best_step"] == 2 and not s["kept_start"] for s in result.admm)
    assert all(s["niqe_before"] == 5.0 and s["niqe_after"] == 4.0 for s in result.admm)
    assert result.admm[0]["stop_reason"] == "reached the step budget (2 steps)"
    single, _ = _admm(None, 1)
    assert single.admm == []  # no ADMM, no summary


@pytest.mark.parametrize("signal_", [KeyboardInterrupt(), run.Interrupted(signal.SIGTERM)])
def test_a_signal_in_an_external_step_keeps_the_evaluated_internal_result(
        monkeypatch: pytest.MonkeyPatch, signal_: BaseException) -> None:
    """The signal escaped _run_admm, so --keep-on-interrupt lost iteration 1's evaluated weights."""
    _setup(monkeypatch, external_fails=signal_)
    result, _ = _admm(None, 2)
    expected = signal.SIGINT if isinstance(signal_, KeyboardInterrupt) else signal.SIGTERM
    assert result.interrupted == int(expected) and not result.kept_backbone
    assert result.niqe_after == [4.0] and "external step" in result.stop_reason


def test_a_result_worse_than_the_backbone_after_admm_keeps_the_backbone(monkeypatch: pytest.MonkeyPatch) -> None:
    """Iteration 2 measured itself against the external step's weights (NIQE 5.283) and published a
    model at 5.306 as "adapted", 0.42 worse than the backbone's 4.884 (a helper's bug hunt)."""
    _setup(monkeypatch)
    scores = iter([([4.884], [4.884], True), ([5.283], [5.306], False)])  # (before, after, kept its start)

    def internal(model: RRDBNet, *args: Any, **kwargs: Any) -> InternalResult:
        before, after, kept = next(scores)
        state = {k: v.detach().clone() + (0.0 if kept else 0.5) for k, v in model.state_dict().items()}
        return InternalResult(state, kept, before, after, 3, 0 if kept else 1, "reached the step budget",
                              timing={"setup_s": 0.0, "mean_evaluation_s": 0.0, "mean_period_first_step_s": 0.0})

    monkeypatch.setattr(run, "run_internal_step", internal)
    torch.manual_seed(0)
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4)
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    config = AdaptConfig(admm_iters=2, backbone_margin=0.1, external_hr=Path("/nowhere/hr"))
    inputs = SimpleNamespace(images=[], kernel=SimpleNamespace(kernel=None), pair_config=None, weights=None,
                             crops=[], metric=None, perceptual=None)
    result = run._run_admm(model, inputs, config, start, scale=4,  # type: ignore[arg-type]
                           device=torch.device("cpu"), precision=Precision("fp32", "cpu"), trainable="all",
                           progress=None)
    assert result.kept_backbone and result.niqe_before == [4.884] == result.niqe_after
    assert all(torch.equal(result.state_dict[k], start[k]) for k in start)
    assert ("5.306 was worse than the unadapted backbone's 4.884 by more than --backbone-margin 0.1"
            in result.stop_reason)

    within = run._against_backbone(
        InternalResult({}, True, [4.95], [4.95], 3, 0, "r"), InternalResult({}, True, [4.9], [4.9], 3, 0, "r"),
        start, config)  # the last step kept the external weights, within the margin: published as adapted
    assert not within.kept_backbone and within.niqe_before == [4.9] and "external step's weights" in within.stop_reason


def test_the_admm_verdict_pairs_the_crops_the_backbone_scored() -> None:
    """Unpaired means: a result flat on a crop the backbone scored was published, and one better on the
    backbone's only crop was refused because a crop the backbone could not score joined its mean."""
    start = {"w": torch.zeros(1)}
    config = AdaptConfig(admm_iters=2, backbone_margin=0.1, external_hr=Path("/nowhere/hr"))
    first = InternalResult({}, True, [4.0, 5.0], [4.0, 5.0], 3, 0, "r")
    flat = run._against_backbone(InternalResult({"w": torch.ones(1)}, False, [4.0, 5.0], [3.9, math.nan], 3, 1, "r"),
                                 first, start, config)
    assert flat.kept_backbone and "went flat" in flat.stop_reason and torch.equal(flat.state_dict["w"], start["w"])
    one_scored = InternalResult({}, True, [4.0, math.nan], [4.0, math.nan], 3, 0, "r")
    better = run._against_backbone(InternalResult({"w": torch.ones(1)}, False, [4.0, 9.0], [3.8, 8.0], 3, 1, "r"),
                                   one_scored, start, config)
    assert not better.kept_backbone and torch.equal(better.state_dict["w"], torch.ones(1))


def test_a_backbone_result_after_admm_keeps_a_current_model_within_the_margin(monkeypatch: pytest.MonkeyPatch) -> None:
    """With --admm-iters > 1 a result reset to the backbone was judged as adapted weights: the margin rule
    was skipped and a current model within the margin of the backbone was replaced by the raw backbone."""
    from adassr.adapt import loop

    monkeypatch.setattr(run, "_current_weights", lambda *a, **k: object())
    monkeypatch.setattr(loop, "evaluate_model", lambda *a, **k: [5.05])  # the current model: 0.05 worse
    manifest = {"artifacts": {run.WEIGHTS_FILE: {"file": "w"}}, "backbone": {"name": "tiny"},
                "weights_sha256": "a" * 64}
    backbone = SimpleNamespace(entry=SimpleNamespace(name="tiny"), weights_sha256="b" * 64)
    result = InternalResult({}, True, [5.0], [5.0], 3, 0, "the backbone is kept")
    config = AdaptConfig(admm_iters=2, backbone_margin=0.1, external_hr=Path("/nowhere/hr"))
    kept = run._current_model_stays(None, manifest, backbone, {}, SimpleNamespace(crops=[], metric=None),  # type: ignore[arg-type]
                                    result, config, device=torch.device("cpu"))
    assert kept is not None and "which this run kept" in kept.reason
