"""The internal-learning step of AdaSSR (Algorithm 1, Eq. 10, 15, 16).

Starting from Theta = Theta_e, train on internal pairs (y_rd, y_r) with

    loss = lambda_l1 * mean(w * |N(y_rd) - y_r|) + lambda_p * perceptual(N(y_rd), y_r)
           [+ lambda_g * internal patch-GAN] + mu * ||Theta - Theta_tilde||^2

with Adam, keep an fp32 EMA of the weights, evaluate NIQE of the EMA model's SR outputs on the
group's evaluation crops every ``eval_every`` steps, stop when NIQE decreased by less than
``stop_min_delta`` on ``stop_patience`` consecutive evaluations, and return the best EMA weights.
The unadapted backbone is evaluation 0: weights that never beat it are not returned.

In ``tail`` mode only the last ``tail_blocks`` RRDB blocks and the upsampler train; each evaluation
period samples a bank of augmented pairs, and the frozen front's features of a pair are computed at
its first draw and reused by later draws in the period (much cheaper per step on CPU:
docs/performance.md).

With ``time_budget`` set, training stops early enough for the evaluation that closes it to end
within the budget (:class:`~adassr.adapt.time_budget.TimeBudget`, from the measured durations of
steps and evaluations), not merely once the deadline has passed.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np
import torch

from adassr.adapt.archs.rrdbnet import RRDBNet
from adassr.adapt.config import AdaptConfig
from adassr.adapt.early_stop import EarlyStopper
from adassr.adapt.ema import WeightEma
from adassr.adapt.interrupts import Interrupted
from adassr.adapt.losses import (
    PatchDiscriminator,
    ProximalTerm,
    gan_discriminator_loss,
    gan_generator_loss,
    make_adam,
    weighted_l1,
)
from adassr.adapt.precision import Precision
from adassr.adapt.time_budget import LoopTimes, TimeBudget
from adassr.runtime.errors import ConfigError

log = logging.getLogger(__name__)

Metric = Callable[[torch.Tensor], torch.Tensor]  # (B,3,H,W) in [0,1] -> (B,) lower is better


class Perceptual(Protocol):
    """A perceptual distance (LPIPS-VGG): ``(sr, hr) -> (B,)``, with reusable reference features."""

    def __call__(self, images: torch.Tensor, reference: torch.Tensor) -> torch.Tensor: ...

    def reference_features(self, reference: torch.Tensor) -> list[torch.Tensor]: ...

    def distance_to(self, images: torch.Tensor, reference_features: Sequence[torch.Tensor]) -> torch.Tensor: ...


class PairBatchLike(Protocol):
    """A batch of training pairs, NCHW float32 numpy arrays (see :class:`adassr.adapt.pairs.PairBatch`)."""

    @property
    def lr(self) -> np.ndarray: ...  # (n, 3, p, p): the degraded input y_rd
    @property
    def hr(self) -> np.ndarray: ...  # (n, 3, s*p, s*p): the target y_r
    @property
    def weight(self) -> np.ndarray: ...  # (n, 1, s*p, s*p): per-pixel loss weight


class PairSource(Protocol):
    """Where training pairs come from (:class:`adassr.adapt.pairs.PairSampler` is one)."""

    def sample(self, batch_size: int) -> PairBatchLike:
        """Draw ``batch_size`` pairs; the same source with the same seed draws the same batches."""
        ...


@dataclass(frozen=True)
class ProgressEvent:
    """One step of the loop. Evaluation events (``niqe`` set) also carry ``weights``: a read-only
    view of the evaluated EMA weights of the trained parameters (fp32, on the training device),
    valid only during the callback (the loop keeps updating them): copy what you want to keep, and
    never modify the tensors in place (they are the EMA itself).
    Benchmarks score them against ground truth at every evaluation (benchmarks/weight_selection.py)."""

    step: int
    total: int
    loss: float | None
    niqe: float | None
    message: str = ""
    weights: Mapping[str, torch.Tensor] | None = None


@dataclass
class InternalResult:
    """What one internal step produced. ``state_dict`` holds fp32 CPU tensors of every parameter."""

    state_dict: dict[str, torch.Tensor]
    kept_backbone: bool
    niqe_before: list[float]
    niqe_after: list[float]
    steps: int
    best_step: int
    stop_reason: str
    history: list[tuple[int, float]] = field(default_factory=list)
    losses: list[tuple[int, float]] = field(default_factory=list)
    interrupted: int | None = None  # the signal (SIGINT / SIGTERM) that stopped the loop, if any
    timing: dict[str, float | int] = field(default_factory=dict)  # LoopTimes.to_dict(): where the time went
    diverged: bool = False  # the loss became NaN or infinite and training stopped
    # --admm-iters > 1: one summary per ADMM iteration's internal step (``admm_summary``), in order
    admm: list[dict[str, Any]] = field(default_factory=list)


def admm_summary(iteration: int, result: InternalResult) -> dict[str, Any]:
    """The manifest's record of one ADMM iteration's internal step: its steps, the step it kept (0:
    its start, the external step's weights), mean NIQE before and after over its evaluation crops, and
    why it stopped."""
    def mean(scores: Sequence[float]) -> float | None:
        finite = [s for s in scores if math.isfinite(s)]
        return float(np.mean(finite)) if finite else None

    return {"iteration": iteration, "steps": result.steps, "best_step": result.best_step,
            "kept_start": result.kept_backbone, "niqe_before": mean(result.niqe_before),
            "niqe_after": mean(result.niqe_after), "stop_reason": result.stop_reason,
            "diverged": result.diverged}


def _to_tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array)).to(device, torch.float32)


def evaluation_crops(images: Sequence[np.ndarray], size: int, max_images: int) -> list[np.ndarray]:
    """Evaluation crops: for up to ``max_images`` images, the ``size`` x ``size`` LR window with
    the most structure (largest mean squared Laplacian on a grid of candidate positions).

    NIQE is undefined on flat regions (NaN), and a central crop of sky says nothing about the
    textures the adaptation is meant to improve.
    """
    crops = []
    for image in list(images)[:max_images]:
        h, w = image.shape[:2]
        ch, cw = min(size, h), min(size, w)
        gray = image.mean(axis=2) if image.ndim == 3 else image
        lap = np.zeros_like(gray)
        lap[1:-1, 1:-1] = (gray[:-2, 1:-1] + gray[2:, 1:-1] + gray[1:-1, :-2] + gray[1:-1, 2:]
                           - 4 * gray[1:-1, 1:-1])
        energy = np.pad(np.cumsum(np.cumsum(lap ** 2, 0), 1), ((1, 0), (1, 0)))
        step_y, step_x = max(1, (h - ch) // 8), max(1, (w - cw) // 8)
        best, best_pos = -1.0, ((h - ch) // 2, (w - cw) // 2)
        for top in range(0, h - ch + 1, step_y):
            for left in range(0, w - cw + 1, step_x):
                e = (energy[top + ch, left + cw] - energy[top, left + cw]
                     - energy[top + ch, left] + energy[top, left])
                if e > best:
                    best, best_pos = e, (top, left)
        top, left = best_pos
        crops.append(np.ascontiguousarray(image[top : top + ch, left : left + cw]))
    return crops


def _float_pair(pair: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    return pair[0].float(), pair[1].float()


class _Evaluator:
    """NIQE of a model's SR outputs on fixed LR crops; in tail mode the front is computed once.

    Always in fp32, whatever the training precision: the exported model runs in fp32, and bf16
    rounding of the outputs alone moves NIQE (on the nokia photo's crop, the backbone scored 7.44 in
    fp32 and 7.53 under bf16 autocast; docs/cpu.md), which would shift the early stop's choice and
    the NIQE reported before and after.
    """

    def __init__(self, model: RRDBNet, crops: Sequence[np.ndarray], metric: Metric, *,
                 device: torch.device, tail_from: int | None) -> None:
        self.metric = metric
        self.device = device
        self.tail_from = tail_from
        # channels-last: the evaluation's tail runs 1.26x faster on a 2-core AVX2 CPU (docs/cpu.md)
        self.inputs = [_to_tensor(c.transpose(2, 0, 1)[None], device).contiguous(memory_format=torch.channels_last)
                       for c in crops]
        self.fronts: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        if tail_from is not None:
            with torch.no_grad():
                self.fronts = [_float_pair(model.run_front(x, tail_from)) for x in self.inputs]

    @torch.no_grad()
    def __call__(self, model: RRDBNet) -> list[float]:
        scores = []
        model.eval()
        for i, x in enumerate(self.inputs):
            if self.fronts is not None and self.tail_from is not None:
                feat, h = self.fronts[i]
                sr = model.run_tail(feat, h, self.tail_from)
            else:
                sr = model(x)
            scores.append(float(self.metric(sr.float().clamp(0, 1))[0]))
        return scores


def evaluate_model(model: RRDBNet, crops: Sequence[np.ndarray], metric: Metric, *,
                   device: torch.device) -> list[float]:
    """NIQE of ``model``'s outputs on the evaluation crops (fp32), as the early stop scores them."""
    return _Evaluator(model, crops, metric, device=device, tail_from=None)(model)


def _group_score(scores: Sequence[float], step: int) -> float:
    """Mean NIQE over the crops that have one (NIQE is NaN on featureless crops)."""
    finite = [s for s in scores if math.isfinite(s)]
    if not finite:
        raise ConfigError(
            f"NIQE is undefined (NaN) on every evaluation crop at step {step}: the images are too "
            "flat; use larger or more textured images, or a larger --eval-crop"
        )
    return float(np.mean(finite))


@dataclass(frozen=True)
class Evaluation:
    """An evaluation of adapted weights, compared crop by crop with the backbone's."""

    score: float  # mean NIQE over the crops the backbone scored that still have one (NaN when none does)
    lost: int  # crops the backbone scored whose NIQE is now undefined (their outputs went flat)
    scored: int  # crops the backbone scored


def compare_with_backbone(scores: Sequence[float], before: Sequence[float]) -> Evaluation:
    """Score adapted weights on the crops the backbone scored, so that every evaluation averages the
    same crops as the baseline: a crop that turned NaN would otherwise drop out of the mean and make
    the weights look better than they are (and a crop the backbone could not score would join it)."""
    scored = [i for i, b in enumerate(before) if math.isfinite(b)]
    kept = [scores[i] for i in scored if math.isfinite(scores[i])]
    return Evaluation(float(np.mean(kept)) if kept else math.nan, len(scored) - len(kept), len(scored))


_T = TypeVar("_T")


def _computed(items: Sequence[_T | None], index: int) -> _T:
    """``items[index]``, which :meth:`_FeatureBank._compute` must have filled."""
    item = items[index]
    if item is None:
        raise RuntimeError(f"feature bank pair {index} was drawn before its features were computed")
    return item


class _FeatureBank:
    """Tail mode: a bank of augmented pairs whose frozen-front features (and the perceptual reference
    features of their targets, when a perceptual term is given) are computed once per pair.

    The pairs are sampled when the bank is made (cheap), in chunks of ``chunk`` as the sampler's
    seeded stream expects; the network features are computed at a pair's first draw and kept.
    With a bank as large as a period's draws (200 pairs, 50 steps of 4) about a third of the pairs
    is never drawn, so computing up front wasted a third of the bank's cost, and computing it at the
    period's first step made that step cost as much as dozens of plain ones.
    """

    def __init__(self, model: RRDBNet, sample: Callable[[int], PairBatchLike], size: int, *,
                 device: torch.device, precision: Precision, tail_from: int, chunk: int = 8,
                 perceptual: Perceptual | None = None) -> None:
        self.model, self.device, self.precision = model, device, precision
        self.tail_from, self.perceptual = tail_from, perceptual
        lrs, hrs, weights = [], [], []
        remaining = size
        while remaining > 0:
            n = min(chunk, remaining)
            batch = sample(n)
            lrs.append(batch.lr)
            hrs.append(_to_tensor(batch.hr, device))
            weights.append(_to_tensor(batch.weight, device))
            remaining -= n
        self.lr = np.concatenate(lrs)
        self.hr = torch.cat(hrs)
        self.weight = torch.cat(weights)
        self.feat: list[torch.Tensor | None] = [None] * size
        self.h: list[torch.Tensor | None] = [None] * size
        self.hr_features: list[list[torch.Tensor] | None] = [None] * size

    @property
    def size(self) -> int:
        return len(self.feat)

    @property
    def computed(self) -> int:
        """How many pairs have their features computed so far."""
        return sum(f is not None for f in self.feat)

    def _compute(self, indices: list[int]) -> None:
        """The front (and perceptual reference) features of the pairs ``indices``, in one batch."""
        with torch.no_grad():
            lr = _to_tensor(self.lr[indices], self.device)
            with self.precision.autocast():
                feat, h = self.model.run_front(lr, self.tail_from)
            taps = None
            if self.perceptual is not None:
                with self.precision.autocast():
                    taps = self.perceptual.reference_features(self.hr[indices])
        for row, i in enumerate(indices):
            self.feat[i], self.h[i] = feat[row].float(), h[row].float()
            if taps is not None:
                self.hr_features[i] = [level[row] for level in taps]

    def draw(self, batch: int, rng: np.random.Generator) -> _Batch:
        idx = rng.choice(self.size, size=batch, replace=False)
        rows = [int(i) for i in idx]
        missing = [i for i in rows if self.feat[i] is None]
        if missing:
            self._compute(missing)
        feat = torch.stack([_computed(self.feat, i) for i in rows])
        h = torch.stack([_computed(self.h, i) for i in rows])
        features = None
        if self.perceptual is not None:
            per_pair = [_computed(self.hr_features, i) for i in rows]
            features = [torch.stack(level) for level in zip(*per_pair, strict=True)]
        index = torch.from_numpy(idx)
        return _Batch(self.hr[index], self.weight[index], feat=feat, h=h, hr_features=features)


@dataclass
class _Trainer:
    """What one training step touches: the model, its trainable parameters and the optimisers."""

    model: RRDBNet
    params: dict[str, torch.nn.Parameter]
    config: AdaptConfig
    precision: Precision
    tail_from: int | None
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None = None
    disc: PatchDiscriminator | None = None
    disc_opt: torch.optim.Optimizer | None = None
    perceptual: Perceptual | None = None
    proximal: ProximalTerm | None = None

    def loss(self, batch: _Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """The training loss of ``batch`` (Eq. 10 + proximal term) and the SR output it was computed on."""
        config, precision = self.config, self.precision
        with precision.autocast():
            sr = self._forward(batch)
        loss = config.lambda_l1 * weighted_l1(sr, batch.hr, batch.weight)
        if self.perceptual is not None and config.lambda_perceptual > 0:
            with precision.autocast():
                if batch.hr_features is not None:  # the bank computed the targets' features once
                    distance = self.perceptual.distance_to(sr.float(), batch.hr_features)
                else:
                    distance = self.perceptual(sr.float(), batch.hr)
            loss = loss + config.lambda_perceptual * distance.mean()
        if self.disc is not None:
            loss = loss + config.lambda_gan * gan_generator_loss(self.disc, sr)
        if self.proximal is not None:  # its gradient is added in update()
            loss = loss + self.proximal.value()
        return loss, sr

    def _forward(self, batch: _Batch) -> torch.Tensor:
        if batch.lr is not None:
            return self.model(batch.lr)
        assert batch.feat is not None and batch.h is not None and self.tail_from is not None
        return self.model.run_tail(batch.feat, batch.h, self.tail_from)

    def update(self, loss: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor) -> None:
        """One optimiser step on ``loss`` (with the GradScaler in fp16), then one discriminator step."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            if self.proximal is not None:
                self.scaler.unscale_(self.optimizer)
                self.proximal.add_gradient()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            if self.proximal is not None:
                self.proximal.add_gradient()
            self.optimizer.step()
        if self.disc is not None and self.disc_opt is not None:
            self.disc_opt.zero_grad(set_to_none=True)
            gan_discriminator_loss(self.disc, sr, hr).backward()
            self.disc_opt.step()


@dataclass(frozen=True)
class _Batch:
    """One training batch on the device: LR input (or the frozen front's features in tail mode)."""

    hr: torch.Tensor
    weight: torch.Tensor
    lr: torch.Tensor | None = None
    feat: torch.Tensor | None = None
    h: torch.Tensor | None = None
    hr_features: list[torch.Tensor] | None = None  # the perceptual reference features of ``hr``


def _trainable(model: RRDBNet, trainable: str, tail_blocks: int) -> tuple[int | None, dict[str, torch.nn.Parameter]]:
    """``(tail_from, parameters to train)``: the last ``tail_blocks`` blocks and the upsampler, or all."""
    if trainable != "tail":
        return None, dict(model.named_parameters())
    tail_from = len(model.body) - min(tail_blocks, len(model.body))
    return tail_from, dict(model.tail_parameters(tail_from))


def _make_trainer(
    model: RRDBNet, config: AdaptConfig, start_state: dict[str, torch.Tensor], *, device: torch.device,
    precision: Precision, trainable: str, anchors: dict[str, torch.Tensor] | None, perceptual: Perceptual | None,
) -> _Trainer:
    tail_from, params = _trainable(model, trainable, config.tail_blocks)
    for name, param in model.named_parameters():
        param.requires_grad_(name in params)
    chosen = anchors if anchors is not None else {n: start_state[n] for n in params}
    anchor_dev = {n: chosen[n].to(device, torch.float32) for n in params}
    proximal = ProximalTerm(params.items(), anchor_dev, config.prox_mu) if config.prox_mu > 0 else None
    return _Trainer(model, params, config, precision, tail_from,
                    make_adam(params.values(), config.lr, device), perceptual=perceptual, proximal=proximal)


def _add_optimisers(trainer: _Trainer, device: torch.device) -> None:
    """The GradScaler (fp16) and the internal patch discriminator (``lambda_gan > 0``)."""
    if trainer.precision.needs_grad_scaler:
        trainer.scaler = torch.amp.GradScaler(device.type)
    if trainer.config.lambda_gan > 0:
        trainer.disc = PatchDiscriminator().to(device)
        trainer.disc_opt = make_adam(trainer.disc.parameters(), trainer.config.lr, device, betas=(0.9, 0.99))



def external_trainer(model: RRDBNet, config: AdaptConfig, anchors: dict[str, torch.Tensor], *, device: torch.device,
                     precision: Precision, perceptual: Perceptual | None) -> _Trainer:
    """The trainer of ADMM's external step (Eq. 8): every parameter, the internal step's loss
    composition scaled by ``lambda_external`` (the paper's lambda), the proximal term to ``anchors``,
    the GradScaler in fp16, no patch-GAN."""
    lam = config.lambda_external
    scaled = dataclasses.replace(config, lambda_l1=lam * config.lambda_l1,
                                 lambda_perceptual=lam * config.lambda_perceptual, lambda_gan=0.0)
    trainer = _make_trainer(model, scaled, anchors, device=device, precision=precision, trainable="all",
                            anchors=anchors, perceptual=perceptual)
    _add_optimisers(trainer, device)
    return trainer


def external_batch(lr: torch.Tensor, hr: torch.Tensor) -> _Batch:
    """A batch of the external step: uniform loss weights (the self-similarity map is the internal step's)."""
    weight = torch.ones((hr.shape[0], 1, *hr.shape[-2:]), device=hr.device, dtype=torch.float32)
    return _Batch(hr, weight, lr=lr)

def _ema_copy(model: RRDBNet, trainer: _Trainer) -> tuple[WeightEma, RRDBNet]:
    """The EMA of the trainable weights and a frozen copy of the model to evaluate it in."""
    ema = WeightEma(trainer.params.items(), trainer.config.ema_decay)
    ema_model = copy.deepcopy(model).eval()
    for p in ema_model.parameters():
        p.requires_grad_(False)
    return ema, ema_model


class _BatchSource:
    """Training batches: drawn from the sampler, or (tail mode) from a feature bank refreshed per period."""

    def __init__(self, sampler: PairSource, trainer: _Trainer, rng: np.random.Generator, device: torch.device) -> None:
        self.sampler, self.trainer, self.rng, self.device = sampler, trainer, rng, device
        self.bank: _FeatureBank | None = None

    def next(self) -> _Batch:
        config, tail_from = self.trainer.config, self.trainer.tail_from
        if tail_from is None:
            batch = self.sampler.sample(config.batch)
            return _Batch(_to_tensor(batch.hr, self.device), _to_tensor(batch.weight, self.device),
                          lr=_to_tensor(batch.lr, self.device))
        if self.bank is None:
            perceptual = self.trainer.perceptual if config.lambda_perceptual > 0 else None
            # no more pairs than one period can draw (a bank of 20,000 sampled them all for 4 draws, past the budget)
            size = max(config.batch, min(config.feature_bank, config.eval_every * config.batch,
                                         config.steps * config.batch))
            self.bank = _FeatureBank(self.trainer.model, self.sampler.sample, size,
                                     device=self.device, precision=self.trainer.precision, tail_from=tail_from,
                                     perceptual=perceptual)
        return self.bank.draw(config.batch, self.rng)

    def refresh(self) -> None:
        """Fresh augmented pairs for the next evaluation period."""
        self.bank = None


@dataclass
class _Progress:
    """What the loop has done so far: the best evaluation and why it stopped."""

    before: list[float]
    # (step, scores, EMA weights) of the best evaluation, replaced in one assignment, so that a signal
    # arriving while the weights are copied leaves the previous best whole (never a new step's number
    # with the old weights)
    best: tuple[int, list[float], dict[str, torch.Tensor]]
    stop_reason: str
    step: int = 0
    losses: list[tuple[int, float]] = field(default_factory=list)
    budget: TimeBudget | None = None  # when a time budget is set: stop so the last evaluation ends in time
    interrupted: int | None = None
    times: LoopTimes = field(default_factory=LoopTimes)
    flat_steps: list[int] = field(default_factory=list)  # evaluations not kept: some outputs went flat (NaN NIQE)
    diverged: bool = False  # the loss became NaN or infinite


def internal_result(start_state: dict[str, torch.Tensor], run: _Progress, stopper: EarlyStopper) -> InternalResult:
    """The step's result: the best EMA weights over the start, or the start when no evaluation beat it."""
    best_step, best_scores, best_state = run.best
    kept_backbone = best_step == 0
    final = dict(start_state)
    stop_reason = run.stop_reason
    if not kept_backbone:
        final.update({n: t.detach().to("cpu", torch.float32) for n, t in best_state.items()})
    elif not any(step > 0 for step, _ in stopper.history):
        stop_reason += "; no adapted weights were evaluated before the stop, so the backbone is kept"
    elif stopper.best_step not in (0, None):  # a signal came while that step's weights were being kept
        stop_reason += (f"; the signal came while the weights of step {stopper.best_step} were being kept, "
                        "before any adapted weights had been, so the backbone is kept")
    else:
        beat = (f"came within {stopper.baseline_margin:g} of" if stopper.baseline_margin > 0 else "beat")
        counted = "no evaluation" if not run.flat_steps else "no evaluation whose outputs kept their structure"
        stop_reason += f"; {counted} {beat} the unadapted backbone's NIQE, so the backbone is kept"
    if run.flat_steps:
        steps = ", ".join(str(s) for s in run.flat_steps)
        stop_reason += (f"; the weights of step {steps} were not considered: their outputs went flat (NIQE "
                        "undefined) on some evaluation crops")
    return InternalResult(
        state_dict=final,
        kept_backbone=kept_backbone,
        niqe_before=[float(s) for s in run.before],
        niqe_after=[float(s) for s in (run.before if kept_backbone else best_scores)],
        steps=run.step,
        best_step=best_step,
        stop_reason=stop_reason,
        history=list(stopper.history),
        losses=run.losses,
        interrupted=run.interrupted,
        timing=run.times.to_dict(),
        diverged=run.diverged,
    )


def run_internal_step(
    model: RRDBNet,
    sampler: PairSource,
    eval_crops: Sequence[np.ndarray],
    metric: Metric,
    config: AdaptConfig,
    *,
    device: torch.device,
    precision: Precision,
    trainable: str,
    anchors: dict[str, torch.Tensor] | None = None,
    perceptual: Perceptual | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
) -> InternalResult:
    """Adapt ``model`` (modified in place during training) and return the best EMA weights.

    ``sampler.sample(n)`` returns a batch with numpy ``lr`` (n,3,p,p), ``hr`` (n,3,ps,ps) and
    ``weight`` (n,1,ps,ps). ``anchors`` is Theta_tilde (default: the starting weights).
    ``trainable`` is ``"all"`` or ``"tail"``. Stops at ``config.steps``, on early stopping, on a
    non-finite loss or on SIGINT / SIGTERM (``result.interrupted`` names the signal; the caller
    decides whether to keep anything), always returning the best weights evaluated so far.
    """
    # the clock starts before the set-up below (the evaluator's cached fronts alone take seconds on a CPU)
    started = time.monotonic()
    times = LoopTimes()
    budget = None if config.time_budget is None else TimeBudget(started + config.time_budget, times)
    notify = progress or _ignore
    rng = np.random.default_rng(config.seed + 7919)
    torch.manual_seed(config.seed)
    model.to(device)
    start_state = {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()}
    trainer = _make_trainer(model, config, start_state, device=device, precision=precision, trainable=trainable,
                            anchors=anchors, perceptual=perceptual)
    ema, ema_model = _ema_copy(model, trainer)
    _add_optimisers(trainer, device)
    evaluator = _Evaluator(model, eval_crops, metric, device=device, tail_from=trainer.tail_from)
    stopper = EarlyStopper(min_delta=config.stop_min_delta, patience=config.stop_patience,
                           enabled=config.early_stop, baseline_margin=config.backbone_margin)
    times.setup_s = time.monotonic() - started
    before = _timed_evaluation(evaluator, ema_model, times)
    baseline = _group_score(before, 0)
    stopper.observe(0, baseline)
    run = _Progress(before, (0, before, ema.state_dict()), f"reached the step budget ({config.steps} steps)",
                    budget=budget, times=times)
    notify(ProgressEvent(0, config.steps, None, baseline, "backbone", weights=ema.view()))
    batches = _BatchSource(sampler, trainer, rng, device)
    try:
        for step in range(1, config.steps + 1):
            run.step = step
            if _train_one_step(trainer, batches, ema, ema_model, evaluator, stopper, run, notify):
                break
    except (KeyboardInterrupt, Interrupted) as exc:
        signum = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
        run.interrupted = signum
        run.stop_reason = f"interrupted by {signal.Signals(signum).name} at step {run.step}"
        log.warning(run.stop_reason)
    return internal_result(start_state, run, stopper)


def _timed_evaluation(evaluator: _Evaluator, model: RRDBNet, times: LoopTimes) -> list[float]:
    """``evaluator(model)``, its duration recorded in ``times`` (which the time budget reads)."""
    start = time.monotonic()
    scores = evaluator(model)
    times.record_eval(time.monotonic() - start)
    return scores


def _train_one_step(trainer: _Trainer, batches: _BatchSource, ema: WeightEma, ema_model: RRDBNet,
                    evaluator: _Evaluator, stopper: EarlyStopper, run: _Progress,
                    notify: Callable[[ProgressEvent], None]) -> bool:
    """Step ``run.step``: train, update the EMA, evaluate at the period's end. True when the loop must stop."""
    config, step = trainer.config, run.step
    step_start = time.monotonic()
    trainer.model.train()
    batch = batches.next()
    loss, sr = trainer.loss(batch)
    if not torch.isfinite(loss.detach()):
        run.stop_reason = (f"the loss became {float(loss.detach())} at step {step} (training diverged); "
                           "training stopped")
        run.diverged = True
        log.warning(run.stop_reason)
        return True
    trainer.update(loss, sr, batch.hr)
    ema.update()
    loss_value = float(loss.detach())
    run.losses.append((step, loss_value))
    out_of_time = False
    now = time.monotonic()
    starts_period = (step - 1) % config.eval_every == 0
    run.times.record_step(now - step_start, starts_period=starts_period)
    if run.budget is not None:
        out_of_time = run.budget.evaluate_now(now)
    if step % config.eval_every != 0 and step != config.steps and not out_of_time:
        notify(ProgressEvent(step, config.steps, loss_value, None))
        return False
    ema.copy_to(ema_model)
    scores = _timed_evaluation(evaluator, ema_model, run.times)
    if run.budget is not None:
        out_of_time = out_of_time or run.budget.stop_after_evaluation(time.monotonic())
    evaluation = compare_with_backbone(scores, run.before)
    if evaluation.lost == evaluation.scored:  # the backbone scored them (step 0): the adapted outputs went flat
        run.stop_reason = (f"NIQE became undefined (NaN) on every evaluation crop at step {step}: the adapted "
                           "outputs lost their structure; kept the best weights evaluated before")
        log.warning(run.stop_reason)
        return True
    if evaluation.lost:
        run.flat_steps.append(step)
        log.warning("NIQE became undefined (NaN) on %d of the %d evaluation crops at step %d: the adapted "
                    "outputs lost their structure there, so these weights are not kept", evaluation.lost,
                    evaluation.scored, step)
    decision = stopper.observe(step, evaluation.score, eligible=not evaluation.lost)
    if decision.is_best:
        run.best = (step, scores, ema.state_dict())
    notify(ProgressEvent(step, config.steps, loss_value, decision.score, weights=ema.view()))
    batches.refresh()
    if decision.stop:
        run.stop_reason = decision.reason
    elif out_of_time and step != config.steps:
        run.stop_reason = f"reached the time budget at step {step} (evaluated, best weights kept)"
        return True
    return decision.stop


def _ignore(event: ProgressEvent) -> None:
    return None
