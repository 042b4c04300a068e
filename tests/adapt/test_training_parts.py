"""EMA, proximal term, weighted L1, early stopping and the external degradation."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from adassr.adapt.early_stop import EarlyStopper
from adassr.adapt.ema import WeightEma
from adassr.adapt.external import ExternalPairSampler, degrade_realesrgan
from adassr.adapt.losses import ProximalTerm, weighted_l1
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
    for decay in (1.0, "0.9", float("nan")):
        with pytest.raises(ConfigError, match="EMA decay must be a number in \\[0, 1\\)"):
            WeightEma(lin.named_parameters(), decay=decay)  # type: ignore[arg-type]


def _autograd_proximal(named: list[tuple[str, nn.Parameter]], anchors: dict[str, torch.Tensor],
                       mu: float) -> torch.Tensor:
    """Eq. 10's proximal sum written out for autograd: the reference ProximalTerm must match."""
    return mu * sum((param - anchors[name]).pow(2).sum() for name, param in named)


def test_proximal_term_value_and_gradient_match_autograd() -> None:
    p = nn.Parameter(torch.tensor([1.0, 2.0, 4.0]))
    anchor = {"p": torch.tensor([1.0, 0.0, 1.0])}
    term = ProximalTerm([("p", p)], anchor, mu=1e-2)
    assert term.value().item() == pytest.approx(1e-2 * (0 + 4 + 9))
    assert not term.value().requires_grad  # the gradient is added directly, not through autograd
    term.add_gradient()  # no grad yet: the pull alone
    assert torch.allclose(p.grad, 2e-2 * torch.tensor([0.0, 2.0, 3.0]))

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.LeakyReLU(0.2), nn.Conv2d(4, 2, 1))
    anchors = {name: param.detach() + 0.1 * torch.randn_like(param) for name, param in net.named_parameters()}
    x = torch.randn(2, 3, 6, 6)
    named = list(net.named_parameters())
    (net(x).square().mean() + _autograd_proximal(named, anchors, 0.3)).backward()
    expected = {name: param.grad.clone() for name, param in named}
    net.zero_grad(set_to_none=True)
    term = ProximalTerm(named, anchors, 0.3)
    (net(x).square().mean() + term.value()).backward()
    term.add_gradient()
    for name, param in named:
        torch.testing.assert_close(param.grad, expected[name], rtol=1e-5, atol=1e-7)
    assert term.value().item() == pytest.approx(_autograd_proximal(named, anchors, 0.3).item(), rel=1e-5)


def test_anchors_sharing_the_parameters_memory_are_copied() -> None:
    """``anchors=model.state_dict()`` shares memory with the parameters: the anchor moved with them
    and the penalty stayed 0 however far training went."""
    net = nn.Linear(3, 2)
    term = ProximalTerm(list(net.named_parameters()), net.state_dict(), mu=1.0)
    with torch.no_grad():
        net.weight.add_(1.0)
    assert term.value().item() == pytest.approx(6.0)  # 6 weights moved by 1
    distinct = {"weight": torch.zeros(2, 3), "bias": torch.zeros(2)}
    kept = ProximalTerm(list(net.named_parameters()), distinct, mu=1.0)._anchors[1]
    assert kept.data_ptr() == distinct["bias"].data_ptr()  # separate anchors are not copied


def test_lpips_unit_normalisation_has_finite_gradients_at_zero_and_in_fp16() -> None:
    """sqrt at 0 gave NaN gradients (then NaN weights and a diverged run); x * x overflowed in fp16."""
    from adassr.adapt.quality.lpips import _unit_normalize

    x = torch.zeros(1, 4, 2, 2, requires_grad=True)
    _unit_normalize(x).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    big = torch.full((1, 4, 1, 1), 300.0, dtype=torch.float16)  # 300^2 is beyond fp16's 65504
    out = _unit_normalize(big)
    assert out.dtype == torch.float16 and torch.allclose(out.float(), torch.full((1, 4, 1, 1), 0.5), atol=1e-3)
    y = torch.randn(2, 8, 3, 3)
    torch.testing.assert_close(_unit_normalize(y), y / (y.norm(dim=1, keepdim=True) + 1e-10), rtol=1e-6, atol=1e-7)


def test_proximal_term_rejects_bad_input() -> None:
    p = nn.Parameter(torch.zeros(3))
    with pytest.raises(KeyError, match="no anchor"):
        ProximalTerm([("p", p)], {}, 1e-4)
    with pytest.raises(ShapeError):
        ProximalTerm([("p", p)], {"p": torch.zeros(4)}, 1e-4)
    with pytest.raises(ValueError, match="at least one"):
        ProximalTerm([], {}, 1e-4)
    with pytest.raises(ValueError, match="mu"):
        ProximalTerm([("p", p)], {"p": torch.zeros(3)}, -1.0)


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
    # The weight must act where it is: an error only in the top rows counts with their weight (a helper's
    # mutants, mean(error) * mean(weight) and a transposed map, passed the uniform case above).
    err = torch.zeros(1, 3, 4, 4)
    err[:, :, 0] = 1.0  # the first row is wrong
    weight = torch.full((1, 1, 4, 4), 0.5)
    weight[:, :, 0] = 3.5  # and weighted 3.5 (the map averages 1.25)
    assert weighted_l1(err, torch.zeros_like(err), weight).item() == pytest.approx(3.5 / 4)
    assert weighted_l1(err, torch.zeros_like(err)).item() == pytest.approx(1 / 4)


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
    # ties (numbers exact in binary): worse by exactly the margin keeps the backbone; equal to the best
    # so far keeps the earlier weights; a decrease of exactly min_delta is progress, not a plateau step
    stopper = EarlyStopper(baseline_margin=0.5)
    stopper.observe(0, 4.0)
    assert not stopper.observe(50, 4.5).is_best and stopper.best_step == 0
    stopper = EarlyStopper(min_delta=0.5, patience=1)
    stopper.observe(0, 5.0)
    assert not stopper.observe(50, 4.5).stop and stopper.observe(100, 4.5).stop
    assert stopper.best_step == 50  # the tie at step 100 does not replace it


def test_ineligible_weights_never_become_the_best_but_count_for_the_plateau() -> None:
    stopper = EarlyStopper(min_delta=0.05, patience=2)
    decisions = [stopper.observe(0, 5.0), stopper.observe(50, 4.0, eligible=False), stopper.observe(100, 4.5),
                 stopper.observe(150, 4.48)]
    assert [d.is_best for d in decisions] == [True, False, True, True]
    assert stopper.best_step == 150 and stopper.best_score == pytest.approx(4.48)
    assert decisions[-1].stop  # 4.0 -> 4.5 -> 4.48: two evaluations without a decrease of 0.05
    disabled = EarlyStopper(enabled=False)
    assert not [disabled.observe(0, 5.0), disabled.observe(50, 4.0, eligible=False)][1].is_best
    assert disabled.best_step == 0


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


@pytest.mark.parametrize("trainable", ["all", "tail"])
def test_trainer_step_with_grad_scaler_equals_the_plain_step(trainable: str) -> None:
    """fp16's GradScaler path: the proximal gradient is added after unscaling, so one step with the
    scaler (no overflow) moves the weights as the plain step does."""
    from adassr.adapt.archs.rrdbnet import RRDBNet
    from adassr.adapt.config import AdaptConfig
    from adassr.adapt.loop import _make_trainer
    from adassr.adapt.precision import Precision

    torch.manual_seed(0)
    start = RRDBNet(num_feat=8, num_block=2, num_grow_ch=4).state_dict()
    anchors = {name: value + 0.05 * torch.randn_like(value) for name, value in start.items()}
    x = torch.rand(2, 3, 6, 6)
    config = AdaptConfig(prox_mu=0.5, lr=1e-3, tail_blocks=1)
    moved = []
    for scaled in (False, True):
        model = RRDBNet(num_feat=8, num_block=2, num_grow_ch=4)
        model.load_state_dict(start)
        trainer = _make_trainer(model, config, start, device=torch.device("cpu"), precision=Precision("fp32", "cpu"),
                                trainable=trainable, anchors=anchors, perceptual=None)
        if scaled:
            trainer.scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        assert trainer.proximal is not None
        sr = model(x)
        trainer.update(sr.abs().mean() + trainer.proximal.value(), sr, sr.detach())
        moved.append({name: param.detach().clone() for name, param in trainer.params.items()})
    for name, value in moved[0].items():
        torch.testing.assert_close(moved[1][name], value, rtol=1e-5, atol=1e-7)
        assert not torch.equal(value, start[name])  # the step moved every trained tensor



def test_external_step_weights_its_data_term_by_lambda_against_the_proximal_term() -> None:
    """Eq. 8: lambda * L_p + mu ||Theta_e - anchor||^2, with the paper's lambda = 1e-3 by default (the
    data term used to have weight 1, a thousand times the paper's ratio to the proximal term)."""
    from adassr.adapt.archs.rrdbnet import RRDBNet
    from adassr.adapt.config import AdaptConfig
    from adassr.adapt.loop import external_batch, external_trainer
    from adassr.adapt.precision import Precision

    torch.manual_seed(0)
    model = RRDBNet(num_feat=8, num_block=2, num_grow_ch=4)
    anchors = {name: value + 0.05 * torch.randn_like(value) for name, value in model.state_dict().items()}
    lr, hr = torch.rand(2, 3, 6, 6), torch.rand(2, 3, 24, 24)
    assert AdaptConfig().lambda_external == 1e-3
    for lam in (1e-3, 1.0):
        config = AdaptConfig(lambda_external=lam, lambda_gan=0.5, tail_blocks=1)
        trainer = external_trainer(model, config, anchors, device=torch.device("cpu"),
                                   precision=Precision("fp32", "cpu"), perceptual=None)
        assert trainer.tail_from is None and len(trainer.params) == len(dict(model.named_parameters()))
        assert trainer.disc is None and trainer.proximal is not None
        loss, sr = trainer.loss(external_batch(lr, hr))
        data = weighted_l1(sr, hr)
        torch.testing.assert_close(loss, lam * data + trainer.proximal.value())
    with pytest.raises(ConfigError, match="lambda-external must be > 0"):
        AdaptConfig(lambda_external=0.0)

def test_make_adam_is_fused_on_cpu_and_falls_back_where_the_build_lacks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from adassr.adapt.losses import make_adam

    net = nn.Linear(3, 2)
    adam = make_adam(net.parameters(), 1e-3, torch.device("cpu"))  # a generator: consumed once only
    assert adam.defaults["fused"] is True and len(adam.param_groups[0]["params"]) == 2

    real = torch.optim.Adam

    class NoFused(real):  # type: ignore[misc, valid-type]
        def __init__(self, params, **kwargs):  # type: ignore[no-untyped-def]
            if kwargs.get("fused"):
                raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of "
                                   "supported devices: ['cuda']")
            super().__init__(params, **kwargs)

    monkeypatch.setattr(torch.optim, "Adam", NoFused)
    adam = make_adam(net.parameters(), 1e-3, torch.device("cpu"))
    assert not adam.defaults["fused"] and len(adam.param_groups[0]["params"]) == 2


def test_external_images_are_checked_from_their_headers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Unusable external HR images are named and skipped; none usable is a ConfigError saying the minimum."""
    import logging

    from adassr.adapt.external import check_external_images, load_external_images
    from adassr.runtime.images import write_image

    rng = np.random.default_rng(0)
    write_image(tmp_path / "good.png", rng.integers(0, 256, (100, 120, 3)).astype(np.uint8))
    write_image(tmp_path / "small.png", rng.integers(0, 256, (40, 60, 3)).astype(np.uint8))
    (tmp_path / "empty.jpg").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        usable = check_external_images(tmp_path, min_side=96)
    assert usable == [tmp_path / "good.png"]
    assert "small.png is 60x40, smaller than the HR patch 96x96" in caplog.text and "empty.jpg" in caplog.text
    (image,) = load_external_images(usable, min_side=96, root=tmp_path)
    assert image.shape == (100, 120, 3) and image.dtype == np.float32
    with pytest.raises(ConfigError, match="at least 128x128 pixels .or a smaller --patch."):
        check_external_images(tmp_path, min_side=128)
    with pytest.raises(ConfigError, match="no images found"):
        check_external_images(tmp_path / "nothing", min_side=96)
    # A progressive JPEG cut between two scans reads blurred: no sharp target (a review of the change that
    # left such images out of the camera group but still used them as external HR images).
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (100, 120, 3)).astype(np.uint8)).save(buf, format="JPEG", progressive=True)
    data = buf.getvalue()
    (tmp_path / "cut.jpg").write_bytes(data[:data.rindex(b"\xff\xda")] + b"\xff\xd9")
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        (image,) = load_external_images([tmp_path / "good.png", tmp_path / "cut.jpg"], min_side=96, root=tmp_path)
    assert image.shape == (100, 120, 3)
    assert "--external-hr: skipped 1 of 2 images: " in caplog.text and "cut.jpg: the progressive JPEG's scans stop" \
        in caplog.text and "left out: an HR image must be sharp" in caplog.text


def test_adapt_config_checks_types_at_construction() -> None:
    """A library caller's ``early_stop="no"`` used to be taken as true; floats for counts and strings
    for numbers failed deep in a run, after the set-up work."""
    from adassr.adapt.config import AdaptConfig, AttentionConfig
    from adassr.runtime.errors import ConfigError

    for kwargs, words in (({"early_stop": "no"}, "True or False"), ({"steps": True}, "must be an integer"),
                          ({"stop_patience": 1.5}, "must be an integer"), ({"lr": "1e-4"}, "must be a number"),
                          ({"external_steps": -5}, "> 0"), ({"attention": None}, "AttentionConfig"),
                          ({"lambda_l1": 0.0, "lambda_perceptual": 0.0}, "nothing would be learnt"),
                          ({"lambda_l1": 0.0, "lambda_perceptual": 0.0, "lambda_gan": 0.1, "admm_iters": 2,
                            "external_hr": "hr"}, "the external step learns through")):
        with pytest.raises(ConfigError, match=words):
            AdaptConfig(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="must be an integer"):
        AttentionConfig(highpass=9.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="used by the external step only, which runs with"):  # was ignored
        AdaptConfig(external_hr="hr/")  # type: ignore[arg-type]
    config = AdaptConfig(seed=np.int64(3), steps=np.int64(5), lr=np.float32(1e-4), external_hr="hr/",  # type: ignore[arg-type]
                         admm_iters=2)
    assert (type(config.seed), type(config.steps), type(config.lr)) == (int, int, float)
    assert config.external_hr == Path("hr/") and AdaptConfig(lambda_l1=0.0).lambda_perceptual == 1.0


def test_library_calls_with_a_device_seed_or_names_that_cannot_work_say_so() -> None:
    from adassr.adapt.pairs import PairConfig, make_pair_sampler, select_usable_images
    from adassr.adapt.weights.state import checked_device

    for device, words in (("tpu", "not a torch device"), ("cuda:99", "CUDA")):
        if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.device_count() > 99:
            continue
        with pytest.raises(ConfigError, match=words):
            checked_device(device)
    assert checked_device("cpu") == torch.device("cpu")
    image = np.random.default_rng(0).random((200, 200, 3), dtype=np.float32)
    kernel = np.zeros((5, 5), np.float32)
    kernel[2, 2] = 1.0
    for seed in (-1, 1.5, True):
        with pytest.raises(ConfigError, match="seed must be an integer >= 0"):
            make_pair_sampler([image], kernel, PairConfig(lr_patch=16), seed=seed)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="2 names for 1 images"):
        select_usable_images([image], PairConfig(lr_patch=16), names=["a", "b"])


@pytest.mark.parametrize("field_, value", [("lambda_l1", 1e308), ("lambda_perceptual", 1e7), ("prox_mu", 1e9)])
def test_absurd_finite_loss_weights_are_refused(field_: str, value: float) -> None:
    """--lambda-l1 1e308 overflowed the loss at step 1: the run "trained" nothing, recorded a step and
    published the backbone (a helper's hunt)."""
    from adassr.adapt.config import AdaptConfig

    with pytest.raises(ConfigError, match=re.escape(f"got {value!r}")):
        AdaptConfig(**{field_: value})
    AdaptConfig(**{field_: 1.0})


@pytest.mark.parametrize(("external_steps", "expected"), [(2, 2), (None, 3)])
def test_the_external_step_runs_external_steps_or_else_steps(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                             external_steps: int | None, expected: int) -> None:
    """``--external-steps`` sets the external step's length; unset, it is ``--steps`` (an earlier
    mutation hunt found that always using ``steps`` went unnoticed)."""
    import logging

    from adassr.adapt.archs.rrdbnet import RRDBNet
    from adassr.adapt.config import AdaptConfig
    from adassr.adapt.external import run_external_step
    from adassr.adapt.precision import Precision
    from adassr.runtime.images import write_image

    write_image(tmp_path / "hr.png", np.random.default_rng(0).integers(0, 256, (40, 40, 3)).astype(np.uint8))
    torch.manual_seed(0)
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4)
    anchors = {name: value.detach().clone() for name, value in model.state_dict().items()}
    config = AdaptConfig(steps=3, external_steps=external_steps, lr_patch=8, batch=1, lambda_perceptual=0.0,
                         admm_iters=2, external_hr=tmp_path)
    with caplog.at_level(logging.INFO, logger="adassr.adapt.external"):
        state = run_external_step(model, anchors, config, device=torch.device("cpu"),
                                  precision=Precision("fp32", "cpu"), scale=4, seed=0)
    assert state is not None and set(state) == set(anchors)
    logged = [r.getMessage() for r in caplog.records if r.getMessage().startswith("external step ")]
    assert [line.split()[2] for line in logged] == [f"{i}/{expected}" for i in range(1, expected + 1)]
