"""TimeBudget: when a time-budgeted loop must stop so that its last evaluation ends in time."""

from __future__ import annotations

from adassr.adapt.time_budget import LoopTimes, TimeBudget


def _budget(deadline: float) -> tuple[TimeBudget, LoopTimes]:
    times = LoopTimes()
    return TimeBudget(deadline, times), times


def test_evaluates_now_when_one_more_step_and_an_evaluation_would_pass_the_deadline() -> None:
    budget, times = _budget(100.0)
    times.record_step(2.0, starts_period=False)
    times.record_eval(10.0)
    assert not budget.evaluate_now(87.9)  # 87.9 + 2 + 10 = 99.9: one more step still fits
    assert budget.evaluate_now(88.0)  # 88 + 2 + 10 = 100: the evaluation would end at the deadline
    assert budget.evaluate_now(150.0)


def test_after_an_evaluation_the_next_periods_first_step_counts() -> None:
    # in tail mode a period's first step also builds the feature bank: much dearer than a plain step
    budget, times = _budget(100.0)
    times.record_step(15.0, starts_period=True)
    times.record_step(1.0, starts_period=False)
    times.record_eval(5.0)
    assert not budget.evaluate_now(80.0)  # plain steps still fit: 80 + 1 + 5 < 100
    assert budget.stop_after_evaluation(80.0)  # a new period would not: 80 + 15 + 5 = 100
    assert not budget.stop_after_evaluation(79.0)
    assert (times.last_step_s, times.last_period_start_s, times.last_eval_s) == (1.0, 15.0, 5.0)


def test_unmeasured_durations_count_as_zero_and_a_missing_period_start_as_a_plain_step() -> None:
    budget, times = _budget(10.0)
    assert not budget.evaluate_now(9.9) and budget.evaluate_now(10.0)
    times.record_step(3.0, starts_period=False)
    assert budget.stop_after_evaluation(7.0) and not budget.stop_after_evaluation(6.9)
    times.record_step(0.5, starts_period=False)  # the latest measurement replaces the earlier one
    assert not budget.evaluate_now(9.4) and budget.evaluate_now(9.5)
    assert times.to_dict()["plain_steps_s"] == 3.5  # while the record keeps the total


def test_loop_times_count_period_starts_apart_and_report_means() -> None:
    times = LoopTimes(setup_s=3.0)
    times.record_step(12.0, starts_period=True)  # builds the feature bank
    for _ in range(4):
        times.record_step(0.5, starts_period=False)
    times.record_eval(2.0)
    times.record_eval(4.0)
    assert times.to_dict() == {
        "setup_s": 3.0, "plain_steps": 4, "plain_steps_s": 2.0, "mean_plain_step_s": 0.5,
        "period_first_steps": 1, "period_first_steps_s": 12.0, "mean_period_first_step_s": 12.0,
        "evaluations": 2, "evaluations_s": 6.0, "mean_evaluation_s": 3.0,
    }
    assert LoopTimes().to_dict()["mean_evaluation_s"] == 0.0  # no division by zero


def test_a_set_up_that_eats_most_of_the_budget_is_reported_once(caplog) -> None:
    """Training gets what the set-up left of --time-budget; when that is under half, one warning
    says so and what to do (cached maps next time, fewer images, a larger budget)."""
    import logging
    import time

    from adassr.adapt.config import AdaptConfig
    from adassr.adapt.run import _training_budget

    config = AdaptConfig(time_budget=100.0)
    with caplog.at_level(logging.WARNING):
        assert 90.0 < _training_budget(config, time.perf_counter() - 5.0).time_budget <= 95.0
    assert not caplog.records
    with caplog.at_level(logging.WARNING):
        left = _training_budget(config, time.perf_counter() - 80.0).time_budget
    assert 15.0 < left <= 20.0
    (record,) = caplog.records
    assert "timing.before_training_s) took 80 s of the 100 s time budget, which it cannot cut short, leaving " \
           "20 s" in record.getMessage()
    assert "--max-images" in record.getMessage()
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert _training_budget(config, time.perf_counter() - 150.0).time_budget == 1e-3
    assert "leaving 0 s" in caplog.records[0].getMessage()
    assert _training_budget(AdaptConfig(), time.perf_counter() - 1e6).time_budget is None


def test_the_latest_period_start_replaces_the_earlier_one() -> None:
    budget, times = _budget(100.0)
    times.record_step(15.0, starts_period=True)
    times.record_step(15.0, starts_period=True)
    times.record_eval(5.0)
    assert times.last_period_start_s == 15.0 and times.to_dict()["period_first_steps_s"] == 30.0
    assert not budget.stop_after_evaluation(79.0)  # 79 + 15 + 5 < 100: the next period still fits
    assert budget.stop_after_evaluation(80.0)
