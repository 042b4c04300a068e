"""EMA, proximal term, weighted L1, early stopping and the external degradation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from adassr.adapt.early_stop import EarlyStopper
from adassr.adapt.ema import WeightEma
from adassr.adapt.external import ExternalPairSampler, degrade_realesrgan
from adassr.adapt.losses import proximal_penalty, weighted_l1
from adassr.runtime.errors import ConfigError, ShapeError


def test_ema_follows_eq16() -> None:
    lin = nn.Linear(3, 2)
    start = {n: p.detach().clone() for n, p in lin.named_parameters()}
    ema = WeightEma(lin.named_parameters(), decay=0.9)
    targets = []
    with torch.no_grad():
        for _ in range(3):
            for p in lin.parameters():
                p.add_(1.0)
            targets.append({n: p.detach().clone() for n, p in lin.named_parameters()})
            ema.update()
    for name in start:
        expected = start[name]
        for t in targets:
            expected = 0.9 * expected + 0.1 * t[name]
        assert torch.allclose(ema.shadow[name], expected, atol=1e-6)
    other = nn.Linear(3, 2)
    ema.copy_to(other)
    assert torch.equal(other.weight, ema.shadow["weight"])
    with pytest.raises(ValueError):
        WeightEma(lin.named_parameters(), decay=1.0)


def test_proximal_penalty_value_and_gradient() -> None:
    p = nn.Parameter(torch.tensor([1.0, 2.0, 4.0]))
    anchor = {"p": torch.tensor([1.0, 0.0, 1.0])}
    value = proximal_penalty([("p", p)], anchor, mu=1e-2)
    assert value.item() == pytest.approx(1e-2 * (0 + 4 + 9))
    value.backward()
    assert torch.allclose(p.grad, 2e-2 * torch.tensor([0.0, 2.0, 3.0]))


def test_weighted_l1() -> None:
    sr = torch.zeros(2, 3, 4, 4)
    hr = torch.ones(2, 3, 4, 4)
    w = torch.zeros(2, 1, 4, 4)
    w[:, :, :2] = 2.0
    assert weighted_l1(sr, hr).item() == pytest.approx(1.0)
    assert weighted_l1(sr, hr, w).item() == pytest.approx(1.0)  # half the pixels at weight 2
    with pytest.raises(ShapeError):
        weighted_l1(sr, hr[:, :, :2])
    with pytest.raises(ShapeError):
        weighted_l1(sr, hr, w[:, :, :2])


def test_early_stopping_with_scripted_metric() -> None:
    stopper = EarlyStopper(min_delta=0.05, patience=3)
    scripted = [5.0, 4.8, 4.5, 4.49, 4.47, 4.6]  # step 0 is the backbone
    decisions = [stopper.observe(i * 100, s) for i, s in enumerate(scripted)]
    assert [d.stop for d in decisions] == [False, False, False, False, False, True]
    assert stopper.best_step == 400 and stopper.best_score == pytest.approx(4.47)
    # a big decrease resets the count of small ones
    stopper = EarlyStopper(min_delta=0.05, patience=2)
    flags = [stopper.observe(i, s).stop for i, s in enumerate([5.0, 4.99, 4.5, 4.49, 4.48])]
    assert flags == [False, False, False, False, True]
    # never better than the baseline: best stays at step 0
    stopper = EarlyStopper()
    for i, s in enumerate([3.0, 3.2, 3.3, 3.4]):
        stopper.observe(i, s)
    assert stopper.best_step == 0
    with pytest.raises(ValueError, match="NaN"):
        stopper.observe(9, float("nan"))
    # disabled (the ablation): never stops, the last observation is kept even when it is worse
    stopper = EarlyStopper(enabled=False)
    decisions = [stopper.observe(i * 50, s) for i, s in enumerate([3.0, 3.2, 3.3, 3.4, 3.4, 3.4])]
    assert not any(d.stop for d in decisions) and all(d.is_best for d in decisions)
    assert stopper.best_step == 250 and stopper.best_score == pytest.approx(3.4)
    assert stopper.history == [(i * 50, s) for i, s in enumerate([3.0, 3.2, 3.3, 3.4, 3.4, 3.4])]


def test_backbone_margin_keeps_adapted_weights_that_are_slightly_worse_by_niqe() -> None:
    # NIQE rises by 0.08 and 0.2 over the backbone's: without a margin the backbone is kept
    scores = [4.0, 4.08, 4.2]
    plain = EarlyStopper()
    for i, s in enumerate(scores):
        plain.observe(i * 50, s)
    assert plain.best_step == 0
    # a margin of 0.1: step 50 is within it and is kept; step 100 (worse than step 50) is not
    stopper = EarlyStopper(baseline_margin=0.1)
    decisions = [stopper.observe(i * 50, s) for i, s in enumerate(scores)]
    assert [d.is_best for d in decisions] == [True, True, False]
    assert stopper.best_step == 50 and stopper.history == [(0, 4.0), (50, 4.08), (100, 4.2)]
    # a margin of 0.5: the best NIQE among the adapted weights still wins
    stopper = EarlyStopper(baseline_margin=0.5)
    for i, s in enumerate([4.0, 4.3, 4.2, 4.4]):
        stopper.observe(i * 50, s)
    assert stopper.best_step == 100
    # the margin never hands the run to adapted weights that are worse by more than it
    stopper = EarlyStopper(baseline_margin=0.1)
    for i, s in enumerate([4.0, 4.15, 4.3]):
        stopper.observe(i * 50, s)
    assert stopper.best_step == 0
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="baseline_margin"):
            EarlyStopper(baseline_margin=bad)


def test_external_degradation_shapes_and_randomness() -> None:
    rng = np.random.default_rng(0)
    hr = np.random.default_rng(1).random((64, 64, 3)).astype(np.float32)
    lr = degrade_realesrgan(hr, 4, rng)
    assert lr.shape == (16, 16, 3) and lr.dtype == np.float32
    assert lr.min() >= 0.0 and lr.max() <= 1.0
    assert not np.allclose(lr, degrade_realesrgan(hr, 4, rng))
    with pytest.raises(ConfigError):
        degrade_realesrgan(hr[:63], 4, rng)
    sampler = ExternalPairSampler([hr], scale=4, lr_patch=8, seed=3)
    batch = sampler.sample(2)
    assert batch.lr.shape == (2, 3, 8, 8) and batch.hr.shape == (2, 3, 32, 32)
    again = ExternalPairSampler([hr], scale=4, lr_patch=8, seed=3).sample(2)
    assert np.array_equal(batch.lr, again.lr)
    with pytest.raises(ConfigError, match="smaller than the HR patch"):
        ExternalPairSampler([hr], scale=4, lr_patch=32, seed=0)
