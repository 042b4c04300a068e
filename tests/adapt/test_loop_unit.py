"""The training step's arithmetic: EMA after the optimiser step, the anchors of the proximal term, the
loss composition (weighted L1, perceptual, patch-GAN), the discriminator's step and the step count."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from adassr.adapt.archs import RRDBNet
from adassr.adapt.config import AdaptConfig
from adassr.adapt.loop import _add_optimisers, _Batch, _make_trainer, run_internal_step
from adassr.adapt.losses import gan_discriminator_loss, weighted_l1
from adassr.adapt.precision import Precision

FP32 = Precision("fp32", "cpu")
CPU = torch.device("cpu")
CROPS = [np.random.default_rng(1).random((12, 12, 3), dtype=np.float32)]


@dataclass
class _Pairs:
    lr: np.ndarray
    hr: np.ndarray
    weight: np.ndarray


class _Sampler:
    def __init__(self, seed: int = 0, p: int = 8) -> None:
        self.rng = np.random.default_rng(seed)
        self.p = p

    def sample(self, n: int) -> _Pairs:
        hr = self.rng.random((n, 3, 4 * self.p, 4 * self.p), dtype=np.float32)
        lr = hr.reshape(n, 3, self.p, 4, self.p, 4).mean(axis=(3, 5))
        weight = 2 * self.rng.random((n, 1, 4 * self.p, 4 * self.p), dtype=np.float32)
        return _Pairs(lr, hr, weight)


def _tiny(seed: int = 0) -> RRDBNet:
    torch.manual_seed(seed)
    return RRDBNet(num_feat=8, num_block=2, num_grow_ch=4)


def _falling(start: float = 5.0):
    """A metric that improves at every call."""
    calls = iter(range(1000))

    def metric(sr: torch.Tensor) -> torch.Tensor:
        return torch.tensor([start - 0.5 * next(calls)])

    return metric


def _config(**kw) -> AdaptConfig:  # type: ignore[no-untyped-def]
    base = dict(steps=1, lr_patch=8, batch=2, eval_every=1, feature_bank=4, tail_blocks=1, seed=3,
                ema_decay=0.75, lr=1e-2, lambda_perceptual=0.0, prox_mu=0.0)
    base.update(kw)
    return AdaptConfig(**base)


def test_the_returned_weights_are_the_ema_of_the_weights_after_the_optimiser_step() -> None:
    """Eq. 16 with alpha 0.75 after one step: 0.75 * start + 0.25 * the stepped weights (the model is
    trained in place, so it holds them). An EMA updated before the step stayed at the start; an inverted
    decay gave 0.25 * start + 0.75 * stepped."""
    model = _tiny()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    result = run_internal_step(model, _Sampler(), CROPS, _falling(), _config(),
                               device=CPU, precision=FP32, trainable="all")
    assert not result.kept_backbone and result.best_step == 1 and result.steps == 1
    stepped = dict(model.named_parameters())
    assert any(not torch.equal(start[k], p) for k, p in stepped.items())
    for name, param in stepped.items():
        torch.testing.assert_close(result.state_dict[name], 0.75 * start[name] + 0.25 * param.detach(),
                                   rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("trainable", ["all", "tail"])
def test_niqe_scores_the_outputs_of_the_ema_weights(trainable: str) -> None:
    """Each evaluation scores what the EMA weights output on the crop (not the training model's or
    the start's outputs): the metric sees the SR image of a model loaded with the event's weights."""
    crop = torch.from_numpy(CROPS[0].transpose(2, 0, 1).copy())[None]
    seen: list[torch.Tensor] = []
    expected: dict[int, torch.Tensor] = {}

    def metric(sr: torch.Tensor) -> torch.Tensor:
        seen.append(sr.detach().clone())
        return torch.tensor([5.0 - len(seen)])

    def progress(event) -> None:  # type: ignore[no-untyped-def]
        if event.niqe is None:
            return
        reference = _tiny()
        with torch.no_grad():
            for name, value in event.weights.items():
                reference.get_parameter(name).copy_(value)
            expected[event.step] = reference.eval()(crop).clamp(0, 1)

    run_internal_step(_tiny(), _Sampler(), CROPS, metric, _config(steps=2, ema_decay=0.5),
                      device=CPU, precision=FP32, trainable=trainable, progress=progress)
    assert sorted(expected) == [0, 1, 2] and len(seen) == 3
    assert not torch.allclose(expected[2], expected[0])  # the weights moved enough to tell apart
    for index, step in enumerate(sorted(expected)):
        torch.testing.assert_close(seen[index], expected[step], rtol=1e-5, atol=1e-6)


def test_the_last_step_is_evaluated_when_the_budget_is_not_a_multiple_of_the_period() -> None:
    events: list[tuple[int, bool]] = []
    result = run_internal_step(_tiny(), _Sampler(), CROPS, _falling(), _config(steps=3, eval_every=2),
                               device=CPU, precision=FP32, trainable="all",
                               progress=lambda e: events.append((e.step, e.niqe is not None)))
    assert events == [(0, True), (1, False), (2, True), (3, True)]
    assert result.steps == 3 and result.best_step == 3
    assert [step for step, _ in result.history] == [0, 2, 3]
    assert [step for step, _ in result.losses] == [1, 2, 3]


def test_the_proximal_term_pulls_to_the_given_anchors_not_the_start() -> None:
    """Theta_tilde (ADMM's external weights) differs from the start of the internal step."""
    torch.manual_seed(0)
    model = _tiny()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    anchors = {k: v + 0.1 * torch.randn_like(v) for k, v in start.items()}
    trainer = _make_trainer(model, _config(prox_mu=0.5), start, device=CPU, precision=FP32, trainable="all",
                            anchors=anchors, perceptual=None)
    assert trainer.proximal is not None
    expected = 0.5 * sum(float((start[k] - anchors[k]).pow(2).sum()) for k in trainer.params)
    assert trainer.proximal.value().item() == pytest.approx(expected, rel=1e-5)


class _Lpips:
    """A stand-in perceptual distance: per-image mean squared difference (a real function of sr)."""

    def __call__(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
        return (images - reference).pow(2).mean(dim=(1, 2, 3))

    def reference_features(self, reference: torch.Tensor) -> list[torch.Tensor]:
        return [reference]

    def distance_to(self, images: torch.Tensor, reference_features) -> torch.Tensor:  # type: ignore[no-untyped-def]
        return self(images, reference_features[0])


def test_the_internal_loss_adds_every_term_with_its_weight() -> None:
    """lambda_l1 * weighted L1 + lambda_p * perceptual + lambda_g * non-saturating GAN + proximal."""
    torch.manual_seed(0)
    model = _tiny()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()}
    anchors = {k: v + 0.05 * torch.randn_like(v) for k, v in start.items()}
    config = _config(lambda_l1=0.7, lambda_perceptual=3.0, lambda_gan=0.2, prox_mu=0.5)
    trainer = _make_trainer(model, config, start, device=CPU, precision=FP32, trainable="all",
                            anchors=anchors, perceptual=_Lpips())
    _add_optimisers(trainer, CPU)
    assert trainer.disc is not None and trainer.proximal is not None
    lr, hr = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 24, 24)
    weight = torch.rand(2, 1, 24, 24) * 2
    loss, sr = trainer.loss(_Batch(hr, weight, lr=lr))
    with torch.no_grad():
        want = (0.7 * weighted_l1(sr, hr, weight) + 3.0 * (sr - hr).pow(2).mean()
                + 0.2 * F.softplus(-trainer.disc(sr)).mean() + trainer.proximal.value())
    torch.testing.assert_close(loss.detach(), want, rtol=1e-5, atol=1e-7)


class _Identity(nn.Module):
    """A 'discriminator' whose logit is the image's channel mean: real (bright) and fake (dark) differ."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * x.mean(dim=1, keepdim=True)


def test_the_discriminator_loss_scores_real_as_real_and_does_not_reach_the_generator() -> None:
    sr = torch.zeros(1, 3, 4, 4, requires_grad=True)
    hr = torch.ones(1, 3, 4, 4)
    loss = gan_discriminator_loss(_Identity(), sr, hr)
    assert loss.item() == pytest.approx(float(F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(0.0))))
    loss.backward()
    assert sr.grad is None  # the generator is not trained by the discriminator's loss


def test_one_update_trains_the_discriminator_towards_telling_real_from_fake() -> None:
    torch.manual_seed(0)
    model = _tiny()
    trainer = _make_trainer(model, _config(lambda_gan=0.5, lr=1e-3), model.state_dict(), device=CPU,
                            precision=FP32, trainable="all", anchors=None, perceptual=None)
    _add_optimisers(trainer, CPU)
    assert trainer.disc is not None
    lr, hr = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 24, 24)
    loss, sr = trainer.loss(_Batch(hr, torch.ones(2, 1, 24, 24), lr=lr))
    with torch.no_grad():
        before = float(gan_discriminator_loss(trainer.disc, sr, hr))
    trainer.update(loss, sr, hr)
    with torch.no_grad():
        after = float(gan_discriminator_loss(trainer.disc, sr, hr))
    assert after < before


def test_each_update_steps_on_its_own_loss_s_gradient_only() -> None:
    """The gradients are cleared before each backward pass: a second update must not add the first's."""
    torch.manual_seed(0)
    model = _tiny()
    trainer = _make_trainer(model, _config(), model.state_dict(), device=CPU, precision=FP32, trainable="all",
                            anchors=None, perceptual=None)
    x = torch.rand(2, 3, 6, 6)
    sr = model(x)
    trainer.update(sr.abs().mean(), sr, sr.detach())
    sr = model(x)
    loss = sr.square().mean()
    expected = torch.autograd.grad(loss, list(trainer.params.values()), retain_graph=True)
    trainer.update(loss, sr, sr.detach())
    for param, grad in zip(trainer.params.values(), expected, strict=True):
        torch.testing.assert_close(param.grad, grad, rtol=1e-5, atol=1e-7)


def test_fp16_training_gets_a_grad_scaler_and_the_others_do_not() -> None:
    for name, scaled in (("fp16", True), ("bf16", False), ("fp32", False)):
        model = _tiny()
        trainer = _make_trainer(model, _config(), model.state_dict(), device=CPU, precision=Precision(name, "cpu"),
                                trainable="all", anchors=None, perceptual=None)
        _add_optimisers(trainer, CPU)
        assert (trainer.scaler is not None) is scaled
