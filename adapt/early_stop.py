"""NIQE early stopping (§IV-A1): evaluate every T steps, stop when the metric decreased by less
than ``min_delta`` on ``patience`` consecutive evaluations; remember the best evaluation."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StopDecision:
    step: int
    score: float
    is_best: bool
    stop: bool
    reason: str


class EarlyStopper:
    """Tracks a lower-is-better metric. The first observation is the unadapted baseline.

    ``enabled=False`` (the ablation without early stopping) never stops and treats each eligible
    observation as the best, so the last evaluated weights are kept whatever their score unless their
    outputs went flat on some crops (``eligible=False``); the history is the same.
    ``baseline_margin`` is added to the baseline's score when it competes for the best: a later
    observation is kept over the baseline unless it is worse by the margin or more (the history
    and the plateau rule see the true scores).
    """

    def __init__(self, *, min_delta: float = 0.05, patience: int = 3, enabled: bool = True,
                 baseline_margin: float = 0.0) -> None:
        if not (math.isfinite(baseline_margin) and baseline_margin >= 0):
            raise ValueError(f"baseline_margin must be a finite number >= 0, not {baseline_margin}")
        self.min_delta = min_delta
        self.patience = patience
        self.enabled = enabled
        self.baseline_margin = baseline_margin
        self.best_score = math.inf
        self.best_step: int | None = None
        self._previous: float | None = None
        self._small_decreases = 0
        self.history: list[tuple[int, float]] = []

    def observe(self, step: int, score: float, *, eligible: bool = True) -> StopDecision:
        """Record ``score``; ``eligible=False`` weights (some evaluation crops went flat) never become
        the best, but count for the plateau rule like any other evaluation."""
        if math.isnan(score):
            raise ValueError(f"NIQE at step {step} is NaN: the model output is broken")
        competing = score + self.baseline_margin if not self.history else score
        self.history.append((step, score))
        is_best = eligible and (competing < self.best_score or not self.enabled)
        if is_best:
            self.best_score, self.best_step = competing, step
        stop, reason = False, ""
        if self._previous is not None:
            decrease = self._previous - score
            self._small_decreases = self._small_decreases + 1 if decrease < self.min_delta else 0
            if self.enabled and self._small_decreases >= self.patience:
                stop = True
                reason = (
                    f"NIQE decreased by less than {self.min_delta} on {self.patience} consecutive "
                    f"evaluations (last at step {step})"
                )
        self._previous = score
        return StopDecision(step, score, is_best, stop, reason)
