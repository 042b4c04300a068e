"""The internal-step loop on a tiny random-weight RRDBNet with scripted metrics."""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from adassr.adapt.archs import RRDBNet
from adassr.adapt.config import AdaptConfig
from adassr.adapt.loop import evaluation_crops, run_internal_step
from adassr.adapt.precision import Precision
from adassr.runtime.errors import ConfigError

FP32 = Precision("fp32", "cpu")


@dataclass
class _Batch:
    lr: np.ndarray
    hr: np.ndarray
    weight: np.ndarray


class _Sampler:
    """Seeded pairs with a non-uniform loss weight map each (``weight``: one value for every pixel instead)."""

    def __init__(self, seed: int = 0, p: int = 8, weight: float | None = None) -> None:
        self.rng = np.random.default_rng(seed)
        self.weight_rng = np.random.default_rng(seed + 1000)  # its own stream: drawing in chunks keeps both
        self.p = p
        self.weight = weight

    def sample(self, n: int) -> _Batch:
        hr = self.rng.random((n, 3, 4 * self.p, 4 * self.p), dtype=np.float32)
        lr = hr.reshape(n, 3, self.p, 4, self.p, 4).mean(axis=(3, 5))
        shape = (n, 1, 4 * self.p, 4 * self.p)
        weight = (2 * self.weight_rng.random(shape, dtype=np.float32) if self.weight is None
                  else np.full(shape, self.weight, np.float32))
        return _Batch(lr, hr, weight)


def _tiny(seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(num_feat=8, num_block=3, num_grow_ch=4)


def _scripted(scores: list[float]):
    calls = iter(scores)

    def metric(sr: torch.Tensor) -> torch.Tensor:
        return torch.tensor([next(calls)])

    return metric


CROPS = [np.random.default_rng(1).random((12, 12, 3), dtype=np.float32)]


def _config(**kw) -> AdaptConfig:
    base = dict(steps=6, lr_patch=8, batch=2, eval_every=2, feature_bank=4, tail_blocks=1, seed=3,
                ema_decay=0.5, lr=1e-3)
    base.update(kw)
    return AdaptConfig(**base)


@pytest.mark.parametrize("trainable", ["all", "tail"])
def test_keeps_best_ema_weights_and_stops(trainable: str) -> None:
    model = _tiny()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    # baseline 5.0, then improvements and a plateau -> stop after patience 2
    result = run_internal_step(model, _Sampler(), CROPS, _scripted([5.0, 4.0, 3.99, 3.98]),
                               _config(stop_patience=2), device=torch.device("cpu"), precision=FP32,
                               trainable=trainable)
    assert not result.kept_backbone
    assert result.best_step == 6 and result.steps == 6
    assert "consecutive" in result.stop_reason
    assert result.niqe_before == [5.0] and result.niqe_after == pytest.approx([3.98])
    changed = [k for k in start if not torch.equal(start[k], result.state_dict[k])]
    assert changed
    if trainable == "tail":  # the frozen front never moves
        assert all(not k.startswith(("conv_first", "body.0.", "body.1.")) for k in changed)
        assert any(k.startswith("body.2.") for k in changed)


def test_never_returns_weights_worse_than_backbone() -> None:
    model = _tiny()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_internal_step(model, _Sampler(), CROPS, _scripted([3.0, 3.5, 3.6, 3.7]), _config(),
                               device=torch.device("cpu"), precision=FP32, trainable="all")
    assert result.kept_backbone and result.best_step == 0
    assert "backbone is kept" in result.stop_reason
    assert all(torch.equal(start[k], result.state_dict[k]) for k in start)
    assert result.niqe_after == result.niqe_before == [3.0]


def test_backbone_margin_keeps_adapted_weights_within_it_and_the_backbone_beyond_it() -> None:
    # NIQE 3.0 -> 3.2 / 3.25 / 3.3: within a margin of 0.4 the best adapted weights (3.2) win
    model = _tiny()
    result = run_internal_step(model, _Sampler(), CROPS, _scripted([3.0, 3.2, 3.25, 3.3]),
                               _config(backbone_margin=0.4), device=torch.device("cpu"), precision=FP32,
                               trainable="all")
    assert not result.kept_backbone and result.niqe_after == pytest.approx([3.2])
    # a margin of 0.1 is exceeded at every evaluation: the backbone is kept, and the reason says why
    start = {k: v.clone() for k, v in _tiny().state_dict().items()}
    result = run_internal_step(_tiny(), _Sampler(), CROPS, _scripted([3.0, 3.2, 3.25, 3.3]),
                               _config(backbone_margin=0.1), device=torch.device("cpu"), precision=FP32,
                               trainable="all")
    assert result.kept_backbone and all(torch.equal(start[k], result.state_dict[k]) for k in start)
    assert "no evaluation came within 0.1 of the unadapted backbone's NIQE" in result.stop_reason
    with pytest.raises(ConfigError, match="--backbone-margin must be >= 0"):
        _config(backbone_margin=-0.1)


def test_without_early_stop_the_last_weights_are_kept_even_when_niqe_is_worse() -> None:
    """The ablation of the paper's early stop: same scripted NIQE as above, but the run goes to its
    step budget and returns the last evaluated EMA weights instead of the backbone."""
    model = _tiny()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_internal_step(model, _Sampler(), CROPS, _scripted([3.0, 3.5, 3.6, 3.7]),
                               _config(early_stop=False, stop_patience=1), device=torch.device("cpu"),
                               precision=FP32, trainable="all")
    assert not result.kept_backbone and result.best_step == 6 and result.steps == 6
    assert "backbone is kept" not in result.stop_reason and "step budget" in result.stop_reason
    assert result.niqe_before == [3.0] and result.niqe_after == pytest.approx([3.7])
    assert any(not torch.equal(start[k], result.state_dict[k]) for k in start)


@pytest.mark.parametrize("trainable", ["all", "tail"])
def test_evaluation_events_carry_the_evaluated_weights_read_only(trainable: str) -> None:
    """Each evaluation event (step 0 = the backbone) holds a read-only view of the EMA weights it
    scored; the copy taken at the best evaluation equals the weights the loop returns."""
    model = _tiny()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    seen: dict[int, dict[str, torch.Tensor]] = {}
    events = []

    def progress(event) -> None:
        events.append(event)
        if event.niqe is not None:
            assert event.weights is not None
            with pytest.raises(TypeError):
                event.weights["conv_last.weight"] = torch.zeros(1)  # type: ignore[index]
            seen[event.step] = {k: v.clone() for k, v in event.weights.items()}
        else:
            assert event.weights is None

    result = run_internal_step(model, _Sampler(), CROPS, _scripted([5.0, 4.0, 4.5, 4.6]), _config(),
                               device=torch.device("cpu"), precision=FP32, trainable=trainable,
                               progress=progress)
    assert sorted(seen) == [0, 2, 4, 6] and result.best_step == 2
    assert all(torch.equal(v, start[k]) for k, v in seen[0].items())
    assert all(torch.equal(v, result.state_dict[k]) for k, v in seen[2].items())
    assert any(not torch.equal(seen[6][k], seen[2][k]) for k in seen[2])
    if trainable == "tail":
        assert not any(k.startswith(("conv_first", "body.0.", "body.1.")) for k in seen[2])


def test_timing_counts_set_up_steps_period_starts_and_evaluations() -> None:
    # 6 steps with an evaluation every 2: periods start at steps 1, 3 and 5; the backbone is evaluated too
    result = run_internal_step(_tiny(), _Sampler(), CROPS, _scripted([5.0, 4.0, 3.0, 2.0]), _config(),
                               device=torch.device("cpu"), precision=FP32, trainable="tail")
    timing = result.timing
    assert result.steps == 6
    assert (timing["plain_steps"], timing["period_first_steps"], timing["evaluations"]) == (3, 3, 4)
    assert timing["setup_s"] > 0
    for part, count in (("plain_step", "plain_steps"), ("period_first_step", "period_first_steps"),
                        ("evaluation", "evaluations")):
        total = timing[f"{count}_s"]
        assert total > 0
        assert timing[f"mean_{part}_s"] == pytest.approx(total / timing[count], abs=1e-3)


def test_deterministic_with_seed() -> None:
    outs = []
    for _ in range(2):
        result = run_internal_step(_tiny(), _Sampler(seed=5), CROPS, _scripted([5.0, 4.0, 3.0, 2.0]),
                                   _config(), device=torch.device("cpu"), precision=FP32, trainable="tail")
        outs.append(result.state_dict)
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_interrupt_keeps_best_so_far() -> None:
    class _Interrupting(_Sampler):
        calls = 0

        def sample(self, n: int) -> _Batch:
            self.calls += 1
            if self.calls > 3:
                raise KeyboardInterrupt
            return super().sample(n)

    result = run_internal_step(_tiny(), _Interrupting(), CROPS, _scripted([5.0, 4.0, 3.0]),
                               _config(batch=1), device=torch.device("cpu"), precision=FP32, trainable="all")
    assert "interrupted" in result.stop_reason
    assert result.best_step == 2 and result.niqe_after == [4.0]


def test_a_signal_while_the_best_weights_are_copied_leaves_the_previous_best_whole(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The stopper recorded step 2 as the best before the copy of its weights; a Ctrl-C inside the
    copy returned "adapted at step 2" with the start weights (kept_backbone False): published with
    --keep-on-interrupt."""
    from adassr.adapt import ema as ema_module

    copies = {"n": 0}
    real = ema_module.WeightEma.state_dict

    def interrupted_copy(self: ema_module.WeightEma) -> dict[str, torch.Tensor]:
        copies["n"] += 1
        if copies["n"] == 2:  # the first copy is the start's; the second is step 2's, the new best
            raise KeyboardInterrupt
        return real(self)

    monkeypatch.setattr(ema_module.WeightEma, "state_dict", interrupted_copy)
    model = _tiny()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_internal_step(model, _Sampler(), CROPS, _scripted([5.0, 4.0, 3.0]), _config(batch=1),
                               device=torch.device("cpu"), precision=FP32, trainable="all")
    assert result.interrupted is not None and "interrupted" in result.stop_reason
    assert result.kept_backbone and result.best_step == 0 and result.niqe_after == [5.0]
    assert all(torch.equal(start[k], result.state_dict[k]) for k in start)
    assert "while the weights of step 2 were being kept" in result.stop_reason
    assert "no evaluation beat" not in result.stop_reason


def test_proximal_term_pulls_towards_anchor() -> None:
    def run(mu: float) -> float:
        model = _tiny()
        anchors = {k: v.detach().clone() for k, v in model.named_parameters()}
        result = run_internal_step(model, _Sampler(), CROPS, _scripted([9.0, 8.0, 7.0, 6.0]),
                                   _config(prox_mu=mu, ema_decay=0.0, lr=1e-2), device=torch.device("cpu"),
                                   precision=FP32, trainable="all", anchors=anchors)
        return float(sum((result.state_dict[k] - anchors[k]).pow(2).sum() for k in anchors))

    assert run(10.0) < run(0.0)


def test_evaluation_crops_pick_the_most_structured_window() -> None:
    image = np.full((40, 60, 3), 0.5, np.float32)
    texture = np.random.default_rng(0).random((10, 10, 3), dtype=np.float32)
    image[28:38, 45:55] = texture  # the only structure, far from the centre
    crops = evaluation_crops([image, image[:4]], 12, max_images=5)
    assert crops[0].shape == (12, 12, 3)
    assert (crops[0] == texture[0, 0]).all(axis=2).any()  # the textured patch is inside the crop
    assert crops[1].shape == (4, 12, 3)
    assert len(evaluation_crops([image] * 3, 12, max_images=2)) == 2


def test_all_nan_niqe_is_a_clear_error() -> None:
    from adassr.runtime.errors import ConfigError

    with pytest.raises(ConfigError, match="too flat"):
        run_internal_step(_tiny(), _Sampler(), CROPS, _scripted([float("nan")]), _config(),
                          device=torch.device("cpu"), precision=FP32, trainable="all")



@pytest.mark.parametrize("trainable", ["all", "tail"])
def test_niqe_turning_nan_after_training_began_keeps_the_best_weights(trainable: str) -> None:
    """Flat adapted outputs (NIQE NaN everywhere) used to end the run with the images blamed and the
    better weights of earlier evaluations lost."""
    reference = run_internal_step(_tiny(), _Sampler(), CROPS, _scripted([5.0, 4.8, 4.9]), _config(steps=4),
                                  device=torch.device("cpu"), precision=FP32, trainable=trainable)
    result = run_internal_step(_tiny(), _Sampler(), CROPS, _scripted([5.0, 4.8, float("nan")]), _config(),
                               device=torch.device("cpu"), precision=FP32, trainable=trainable)
    assert result.steps == 4 and result.best_step == 2 and not result.kept_backbone
    assert "NIQE became undefined (NaN)" in result.stop_reason and "step 4" in result.stop_reason
    assert result.niqe_after == pytest.approx([4.8])
    for name, value in reference.state_dict.items():  # the step-2 weights, as a run that scored step 4 keeps
        assert torch.equal(result.state_dict[name], value)

def _scripted_crops(rows: list[list[float]]):
    """A metric that scores crop after crop: ``rows[k]`` are the k-th evaluation's crop scores."""
    calls = iter([value for row in rows for value in row])

    def metric(sr: torch.Tensor) -> torch.Tensor:
        return torch.tensor([next(calls)])

    return metric


TWO_CROPS = [np.random.default_rng(seed).random((12, 12, 3), dtype=np.float32) for seed in (1, 2)]


def test_weights_whose_outputs_went_flat_on_some_crops_are_not_kept(caplog: pytest.LogCaptureFixture) -> None:
    """A crop whose NIQE turns NaN used to drop out of the mean: step 2 (crop 0 flat, crop 1 at 4.0)
    scored 4.0 against the backbone's 5.0 over both crops and was kept."""
    nan = float("nan")
    with caplog.at_level("WARNING", logger="adassr"):
        result = run_internal_step(_tiny(), _Sampler(), TWO_CROPS,
                                   _scripted_crops([[5.0, 5.0], [nan, 4.0], [4.7, 4.6]]), _config(steps=4),
                                   device=torch.device("cpu"), precision=FP32, trainable="all")
    assert result.best_step == 4 and result.niqe_after == pytest.approx([4.7, 4.6])
    assert "1 of the 2 evaluation crops at step 2" in caplog.text
    assert "the weights of step 2 were not considered" in result.stop_reason
    # the same scores where the backbone itself could not score crop 0: every evaluation averages crop 1 only
    result = run_internal_step(_tiny(), _Sampler(), TWO_CROPS,
                               _scripted_crops([[nan, 5.0], [3.0, 4.9], [nan, 4.8]]), _config(steps=4),
                               device=torch.device("cpu"), precision=FP32, trainable="all")
    assert result.best_step == 4 and result.history == [(0, 5.0), (2, pytest.approx(4.9)), (4, pytest.approx(4.8))]


def test_internal_patch_gan_term_runs_and_changes_the_result() -> None:
    def run(lambda_gan: float) -> dict[str, torch.Tensor]:
        return run_internal_step(_tiny(), _Sampler(), CROPS, _scripted([5.0, 4.0, 3.0, 2.0]),
                                 _config(lambda_gan=lambda_gan), device=torch.device("cpu"), precision=FP32,
                                 trainable="all").state_dict

    plain, with_gan = run(0.0), run(0.5)
    assert any(not torch.equal(plain[k], with_gan[k]) for k in plain)
    assert all(torch.isfinite(v).all() for v in with_gan.values())


def test_time_budget_evaluates_then_stops() -> None:
    # a budget already spent when the first step ends: that step is evaluated, kept, and the run stops
    result = run_internal_step(_tiny(), _Sampler(), CROPS, _scripted([5.0, 4.0]), _config(time_budget=1e-9),
                               device=torch.device("cpu"), precision=FP32, trainable="tail")
    assert result.steps == 1 and result.best_step == 1 and result.niqe_after == [4.0]
    assert "time budget" in result.stop_reason and [s for s, _ in result.history] == [0, 1]
    roomy = run_internal_step(_tiny(), _Sampler(), CROPS, _scripted([5.0, 4.0, 3.0, 2.0]), _config(time_budget=3600),
                              device=torch.device("cpu"), precision=FP32, trainable="tail")
    assert roomy.steps == 6 and "step budget" in roomy.stop_reason


class _VirtualClock:
    """``time`` for the loop module: every reading advances ``tick`` s, ``sleep`` advances by its
    argument; a busy machine cannot change what the loop sees (the wall-clock version of the test
    below failed whenever the set-up alone took longer than the budget allowed)."""

    def __init__(self, tick: float) -> None:
        self.now, self.tick = 0.0, tick

    def monotonic(self) -> float:
        self.now += self.tick
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_time_budget_leaves_room_for_the_last_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    # evaluations are slow (0.6 s each) and steps fast: training must stop early enough for the
    # closing evaluation to end within the budget, not start it once the deadline has passed
    import adassr.adapt.loop as loop_module

    clock = _VirtualClock(tick=0.01)
    monkeypatch.setattr(loop_module, "time", clock)
    budget, eval_s = 2.0, 0.6
    calls: list[tuple[float, float]] = []

    def slow_metric(sr: torch.Tensor) -> torch.Tensor:
        begin = clock.now
        clock.sleep(eval_s)
        calls.append((begin, clock.now))
        return torch.tensor([5.0 - 0.1 * len(calls)])  # always improving: only the budget stops the run

    result = run_internal_step(_tiny(), _Sampler(), CROPS, slow_metric,
                               _config(steps=100_000, eval_every=100_000, time_budget=budget, stop_patience=1000),
                               device=torch.device("cpu"), precision=FP32, trainable="tail")
    assert "time budget" in result.stop_reason and 10 < result.steps < 100_000
    assert len(calls) == 2  # the backbone's evaluation and the closing one
    # checking the deadline only after it passed would end at least eval_s past the budget
    assert calls[-1][1] <= budget + 0.05


def test_time_budget_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="time-budget"):
        _config(time_budget=0)


@pytest.mark.parametrize(("change", "message"), [
    ({"batch": 100_000}, "--batch must be at most 512, got 100000"),  # drew its pairs past any time budget
])
def test_absurd_batches_are_refused(change: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        AdaptConfig(**change)  # type: ignore[arg-type]


@pytest.mark.parametrize(("name", "flag"), [("lr", "--lr"), ("time_budget", "--time-budget"),
                                            ("prox_mu", "--prox-mu"), ("lambda_perceptual", "--lambda-perceptual"),
                                            ("backbone_margin", "--backbone-margin")])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_are_config_errors(name: str, flag: str, value: float) -> None:
    # NaN passes every "< 0" comparison, so it needs its own check
    with pytest.raises(ConfigError, match=f"{flag} must be a finite number"):
        AdaptConfig(**{name: value})


def test_feature_bank_computes_a_pairs_features_at_its_first_draw_only() -> None:
    from adassr.adapt.loop import _FeatureBank

    model = _tiny().eval()
    calls: list[int] = []
    run_front = model.run_front

    def counting_front(lr: torch.Tensor, tail_from: int) -> tuple[torch.Tensor, torch.Tensor]:
        calls.append(lr.shape[0])
        return run_front(lr, tail_from)

    model.run_front = counting_front  # type: ignore[method-assign]
    reference = _Sampler(p=8).sample(10)  # the same seeded stream, drawn in one piece
    bank = _FeatureBank(model, _Sampler(p=8).sample, 10, device=torch.device("cpu"), precision=FP32,
                        tail_from=1, chunk=4)
    assert calls == [] and bank.computed == 0  # sampling the pairs runs no network
    np.testing.assert_array_equal(bank.lr, reference.lr)  # chunks of 4 keep the sampler's stream
    rng = np.random.default_rng(0)
    for _ in range(6):
        before = bank.computed
        batch = bank.draw(3, rng)
        assert batch.feat is not None and batch.h is not None and batch.feat.shape[0] == 3
        assert sum(calls) == bank.computed  # each pair's front ran once, at its first draw
        assert before <= bank.computed <= before + 3
    assert sum(calls) == bank.computed <= 10  # 18 draws from 10 pairs: repeats reused their features
    # the rows of a draw are the front of exactly those pairs' LR inputs, with their targets
    batch = bank.draw(4, np.random.default_rng(5))
    idx = np.random.default_rng(5).choice(10, size=4, replace=False)
    with torch.no_grad():
        feat, h = run_front(torch.from_numpy(reference.lr[idx]), 1)
    assert batch.feat is not None and batch.h is not None
    torch.testing.assert_close(batch.feat, feat, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch.h, h, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(batch.hr, torch.from_numpy(reference.hr[idx]))
    torch.testing.assert_close(batch.weight, torch.from_numpy(reference.weight[idx]))  # each pair's own map


def test_feature_bank_caches_the_perceptual_targets_row_for_row() -> None:
    from adassr.adapt.loop import _FeatureBank
    from adassr.adapt.quality.lpips import LPIPS

    torch.manual_seed(0)
    perceptual = LPIPS("vgg")
    model = _tiny().eval()
    bank = _FeatureBank(model, _Sampler(p=12).sample, 6, device=torch.device("cpu"), precision=FP32,
                        tail_from=1, chunk=4, perceptual=perceptual)
    batch = bank.draw(3, np.random.default_rng(0))
    assert batch.hr_features is not None and batch.feat is not None and batch.h is not None
    with torch.no_grad():
        sr = model.run_tail(batch.feat, batch.h, 1).clamp(0, 1)
        torch.testing.assert_close(perceptual.distance_to(sr, batch.hr_features), perceptual(sr, batch.hr),
                                   rtol=1e-5, atol=1e-6)
    plain = _FeatureBank(model, _Sampler(p=12).sample, 6, device=torch.device("cpu"),
                         precision=FP32, tail_from=1)
    assert plain.draw(3, np.random.default_rng(0)).hr_features is None


@pytest.mark.parametrize("trainable", ["all", "tail"])
def test_evaluation_runs_in_fp32_when_training_runs_in_bf16(trainable: str) -> None:
    """NIQE scores what the exported (fp32) model outputs, not bf16-rounded outputs."""
    model = _tiny(4)
    with torch.no_grad():  # weights large enough that bf16 rounding shows in the output
        for p in model.parameters():
            p.mul_(4.0)
    crop = torch.from_numpy(CROPS[0].transpose(2, 0, 1).copy())[None]
    with torch.no_grad():
        want = model(crop).clamp(0, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            rounded = model(crop).float().clamp(0, 1)
    assert float((rounded - want).abs().max()) > 0.05  # bf16 would be visible
    seen: list[torch.Tensor] = []

    def metric(sr: torch.Tensor) -> torch.Tensor:
        seen.append(sr.detach().clone())
        return torch.tensor([5.0 - len(seen)])

    run_internal_step(model, _Sampler(), CROPS, metric, _config(steps=2, eval_every=2),
                      device=torch.device("cpu"), precision=Precision("bf16", "cpu"), trainable=trainable)
    assert seen[0].dtype == torch.float32
    torch.testing.assert_close(seen[0], want, rtol=0, atol=1e-3)  # the backbone's, up to fp32 rounding


def test_the_feature_bank_holds_no_more_pairs_than_a_period_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    """--feature-bank 20000 sampled 20,000 pairs (53 s) for a run of 2 steps of 4, past its time budget."""
    from adassr.adapt import loop

    sizes: list[int] = []
    real = loop._FeatureBank

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, model, sample, size, **kwargs):  # type: ignore[no-untyped-def]
            sizes.append(size)
            super().__init__(model, sample, size, **kwargs)

    monkeypatch.setattr(loop, "_FeatureBank", Recording)
    run_internal_step(_tiny(), _Sampler(), CROPS, _scripted([5.0, 4.0, 3.0]), _config(steps=3, feature_bank=20000),
                      device=torch.device("cpu"), precision=FP32, trainable="tail")
    assert sizes and max(sizes) == 4  # eval_every 2 x batch 2: what one period can draw


def test_a_patch_too_small_for_the_perceptual_term_is_refused_before_set_up() -> None:
    """--patch 1 failed after the set-up with "LPIPS-vgg reference: got shape (4, 3, 4, 4)"."""
    from adassr.adapt.run import _check_before_setup

    with pytest.raises(ConfigError, match=r"--patch 3 gives 12 px HR patches.*--patch >= 4, or --lambda-perceptual 0"):
        _check_before_setup(_config(lr_patch=3, lambda_perceptual=1.0, eval_crop=64), 4, blocks=3)
    _check_before_setup(_config(lr_patch=3, lambda_perceptual=0.0, eval_crop=64), 4, blocks=3)


def test_the_loss_is_weighted_by_each_pairs_map() -> None:
    """Nothing noticed a loss that ignored the weight maps (the stand-in sampler's were all ones): with the
    L1 term alone, zero weights leave the model as it was, and doubling every weight changes the steps."""
    config = _config(early_stop=False, lambda_perceptual=0, prox_mu=0)

    def run(sampler: _Sampler) -> dict[str, torch.Tensor]:
        return run_internal_step(_tiny(), sampler, CROPS, _scripted([3.0, 2.9, 2.8, 2.7]), config,
                                 device=torch.device("cpu"), precision=FP32, trainable="all").state_dict

    start = _tiny().state_dict()
    zero = run(_Sampler(weight=0.0))
    assert all(torch.equal(start[k], zero[k]) for k in start)  # no loss, no step
    ones, twos = run(_Sampler(weight=1.0)), run(_Sampler(weight=2.0))
    assert any(not torch.equal(start[k], ones[k]) for k in start)
    assert any(not torch.allclose(ones[k], twos[k]) for k in start if ones[k].is_floating_point())
