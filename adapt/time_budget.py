"""When a time-budgeted training loop must stop so that its last evaluation ends within the budget.

The loop trains in periods of ``eval_every`` steps and evaluates at each period's end. The time
budget counts the whole run, so training must stop *early enough* for the evaluation that closes
it: checking only ``now >= deadline`` lets the run overshoot by one step, one evaluation and, when
the deadline falls just after an evaluation, the next period's first step (which, in tail mode,
also samples the period's bank of pairs). :class:`TimeBudget` remembers how long those took last
time (as recorded in :class:`LoopTimes`) and answers the two questions the loop asks. Pure: the
caller passes the clock readings.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class LoopTimes:
    """Where a training loop's time went: counts and total seconds (recorded for the manifest).

    ``setup_s`` is the loop's set-up before its first evaluation (optimisers, EMA copy, the frozen
    front of the evaluation crops); a period's first step is counted apart from the plain steps
    because in tail mode it also samples the period's bank of pairs. The latest duration of each
    kind is kept too, for :class:`TimeBudget`. Pure: the caller passes durations.
    """

    setup_s: float = 0.0
    steps: int = 0
    steps_s: float = 0.0
    period_starts: int = 0
    period_starts_s: float = 0.0
    evaluations: int = 0
    evaluations_s: float = 0.0
    last_step_s: float = 0.0  # the latest step that did not start a period
    last_period_start_s: float = 0.0  # the latest step that started a period (fresh pairs)
    last_eval_s: float = 0.0  # the latest evaluation

    def record_step(self, seconds: float, *, starts_period: bool) -> None:
        if starts_period:
            self.period_starts += 1
            self.period_starts_s += seconds
            self.last_period_start_s = seconds
        else:
            self.steps += 1
            self.steps_s += seconds
            self.last_step_s = seconds

    def record_eval(self, seconds: float) -> None:
        self.evaluations += 1
        self.evaluations_s += seconds
        self.last_eval_s = seconds

    def to_dict(self) -> dict[str, float | int]:
        """Counts, totals and means (seconds, rounded to milliseconds); a mean of nothing is 0."""
        def mean(total: float, count: int) -> float:
            return round(total / count, 3) if count else 0.0

        return {
            "setup_s": round(self.setup_s, 3),
            "plain_steps": self.steps,
            "plain_steps_s": round(self.steps_s, 3),
            "mean_plain_step_s": mean(self.steps_s, self.steps),
            "period_first_steps": self.period_starts,
            "period_first_steps_s": round(self.period_starts_s, 3),
            "mean_period_first_step_s": mean(self.period_starts_s, self.period_starts),
            "evaluations": self.evaluations,
            "evaluations_s": round(self.evaluations_s, 3),
            "mean_evaluation_s": mean(self.evaluations_s, self.evaluations),
        }


@dataclass(frozen=True)
class TimeBudget:
    """The latest measured step, period's first step and evaluation of ``times``, against ``deadline``.

    ``deadline`` is a ``time.monotonic()`` reading by which the last evaluation should have ended.
    The durations are the latest ones the loop recorded in ``times`` (0 until measured); a period's
    first step that was never measured counts as a plain step.
    """

    deadline: float
    times: LoopTimes

    def evaluate_now(self, now: float) -> bool:
        """After a step: True when one more step and then an evaluation would end past the deadline,
        so the loop should evaluate now and stop."""
        return now + self.times.last_step_s + self.times.last_eval_s >= self.deadline

    def stop_after_evaluation(self, now: float) -> bool:
        """After an evaluation that did not stop the run: True when the next period's first step and
        one evaluation would end past the deadline, so the loop should stop on the weights just evaluated."""
        last = self.times
        return now + max(last.last_period_start_s, last.last_step_s) + last.last_eval_s >= self.deadline
