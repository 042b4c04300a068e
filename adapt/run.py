"""One adaptation run end to end: group -> kernel -> weight maps -> ADMM (internal [+ external])
-> artifacts in the store (``adapted.safetensors`` + ``manifest.json``).

ADMM (Eq. 5-8), with u the scaled multiplier and k = 1..K:
    external (k > 1): Theta_e <- argmin L_ext(Theta_e) + mu ||Theta_e - (Theta^(k) - u)||^2
    internal:         Theta   <- argmin L_int(Theta)   + mu ||Theta   - (Theta_e + u)||^2, from Theta_e
    u <- u + Theta_e - Theta
For K = 1 (the default) Theta_e is the pretrained backbone and u = 0, so Theta_tilde = Theta_e.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import platform
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from adassr.adapt.archs.registry import DEFAULT_BACKBONE, BackboneRegistry
from adassr.adapt.archs.rrdbnet import RRDBNet
from adassr.adapt.config import AdaptConfig
from adassr.adapt.cpu_setup import ThreadGovernor, configure_cpu_threads, governed, start_thread_governor
from adassr.adapt.groups import CameraGroup, GroupMember
from adassr.adapt.interrupts import Interrupted, deferred
from adassr.adapt.loop import (
    InternalResult,
    Perceptual,
    ProgressEvent,
    admm_summary,
    evaluation_crops,
    run_internal_step,
)
from adassr.adapt.precision import Precision, resolve_device, resolve_precision
from adassr.adapt.report import REPORT_FILE
from adassr.adapt.weight_map_cache import WeightMapCache, store_cache_folder
from adassr.runtime.errors import ConfigError, ImageError, StoreError, WeightsError
from adassr.runtime.store import (
    ADAPTED_WEIGHTS,
    CameraStore,
    StoreTransaction,
    camera_folder_for_writing,
    sha256_file,
)

if TYPE_CHECKING:
    from adassr.adapt.image_selection import Selection
    from adassr.adapt.kernel.result import KernelEstimate
    from adassr.adapt.pairs import PairConfig, UsableImages
    from adassr.adapt.weights import LoadedBackbone

log = logging.getLogger(__name__)

WEIGHTS_FILE = ADAPTED_WEIGHTS
SETUP_WARNING_SHARE = 0.5  # warn when the set-up leaves training less than this share of the time budget


@dataclass(frozen=True)
class AdaptOutcome:
    camera: str
    store_dir: Path
    weights_path: Path
    niqe_before: float
    niqe_after: float
    kept_backbone: bool
    steps: int
    stop_reason: str
    wall_time_s: float
    kernel: str = ""  # the blur kernel the training pairs used, in words (KernelEstimate.describe)
    report: str | None = None  # the report artifact's name (report.png), None when none was drawn
    kept_current: bool = False  # the camera's current model stayed (better on this run's crops): nothing published
    exports_dropped: bool = False  # the camera had exports of other weights, which this commit forgot (export again)


@dataclass(frozen=True)
class LoadedGroup:
    """What :func:`load_group_images` read: the members used and their pixels, and what it left out."""

    group: CameraGroup  # the members read, in the group's order
    images: list[np.ndarray]  # float32 RGB in [0, 1], one per member of ``group``
    unreadable: tuple[tuple[str, str], ...]  # (path, why it could not be read)
    readable: int  # members whose header could be read (the ones selection chose from)
    limited_by: str | None  # the limit that left readable members out (None: none was left out)
    too_small: tuple[tuple[str, int, int], ...] = ()  # (path, width, height) left out by header size
    duplicates: tuple[tuple[str, str], ...] = ()  # (path, the earlier path with the same bytes) left out


def load_group_images(group: CameraGroup, *, max_images: int | None = None,
                      max_megapixels: float | None = None, min_side: int | None = None) -> LoadedGroup:
    """Read the group's images as float32 RGB in [0, 1] (gray is replicated to RGB).

    With ``max_images`` / ``max_megapixels``, a large group is read in part: the sizes come from the
    file headers and :func:`adassr.adapt.image_selection.select_images` picks an even spread; one
    warning says how many were used and which limit to raise. An image that cannot be read (empty,
    damaged, not an image, over the pixel limit) is skipped with one warning naming it and why, so
    one bad file does not stop a camera's adaptation. With ``min_side``, images whose header says a
    side is shorter are left out before the selection while any image is large enough (they could
    not be used, and must not take the places of usable ones), with one warning naming them. A file
    with the same bytes as one before it in name order (a photo copied twice into the folder) is left
    out with one warning: it would weigh twice in training and in the early stop's score.
    Raises ImageError when no image can be read
    (a one-image group: that image's own error), ConfigError when the group has no images.
    """
    if not group.members:
        raise ConfigError(f"camera group {group.name!r} has no images")
    errors: list[tuple[str, ImageError]] = []
    sized = _header_sizes(group.members, errors)
    sized, duplicates = _without_duplicates(sized, errors)
    if duplicates:
        log.warning("camera group %r: left out %d file(s) with the same bytes as another of the group (a copy "
                    "would weigh twice): %s", group.name, len(duplicates),
                    ", ".join(f"{p} (= {q})" for p, q in duplicates))
    too_small: tuple[tuple[str, int, int], ...] = ()
    if min_side is not None and any(min(w, h) >= min_side for _, w, h in sized):
        too_small = tuple((str(m.path), w, h) for m, w, h in sized if min(w, h) < min_side)
        sized = [(m, w, h) for m, w, h in sized if min(w, h) >= min_side]
        if too_small:
            log.warning("camera group %r: skipped %d image(s) too small for the configured LR patch (under %d px "
                        "per side; the patch shrinks for small images only when no image of the group is large "
                        "enough): %s", group.name, len(too_small), min_side,
                        ", ".join(f"{p} ({w}x{h})" for p, w, h in too_small))
    readable_headers = len(sized) + len(too_small)
    selection, members, images = _select_and_decode(sized, max_images, max_megapixels, errors)
    if not images and too_small:  # the large images tried were damaged: the small ones may still serve
        log.warning("camera group %r: the images large enough for the LR patch that were tried failed to decode; "
                    "trying the %d smaller one(s), for which the patch shrinks", group.name, len(too_small))
        by_path = {str(m.path): m for m in group.members}
        sized = [(by_path[p], w, h) for p, w, h in too_small]
        selection, members, images = _select_and_decode(sized, max_images, max_megapixels, errors)
        too_small = ()
    unreadable = tuple((path, str(exc)) for path, exc in errors)
    if len(group.members) == 1 and errors:
        raise errors[0][1]
    if not images:
        listed = "; ".join(reason for _, reason in unreadable[:5])
        more = f"; and {len(unreadable) - 5} more" if len(unreadable) > 5 else ""
        raise ImageError(f"camera group {group.name!r}: none of the {len(unreadable)} images tried can be read: "
                         f"{listed}{more}. Replace or remove the damaged files.")
    if selection.limited_by is not None:
        log.warning("camera group %r: reading %d of its %d images, evenly spaced in name order (any that failed "
                    "to decode replaced by the next readable ones) (%s); raise it to use more", group.name,
                    len(images), len(sized), selection.limited_by)
    if unreadable:
        log.warning("camera group %r: skipped %d unreadable image(s) of %d, adapting on %d: %s",
                    group.name, len(unreadable), len(group.members), len(images),
                    "; ".join(reason for _, reason in unreadable))
    return LoadedGroup(CameraGroup(group.name, tuple(members)), images, unreadable, readable_headers,
                       selection.limited_by, too_small, duplicates)


def _file_sha256(path: str) -> str | None:
    """The file's sha256, or None when it cannot be read (any more: it was decoded a moment ago)."""
    try:
        return sha256_file(path)
    except OSError:
        return None


def _without_duplicates(sized: list[tuple[GroupMember, int, int]], errors: list[tuple[str, ImageError]],
                        ) -> tuple[list[tuple[GroupMember, int, int]], tuple[tuple[str, str], ...]]:
    """``sized`` without the files whose bytes equal an earlier one's, and ``(path, earlier path)`` of
    each left out. Only files that share their size in bytes and pixels are read and hashed (a large
    group is not read whole for this); one that cannot be read goes to ``errors``."""
    by_size: dict[tuple[int, int, int], list[int]] = {}
    for index, (member, width, height) in enumerate(sized):
        try:
            nbytes = member.path.stat().st_size
        except OSError:
            continue  # its decode names the problem
        by_size.setdefault((nbytes, width, height), []).append(index)
    dropped: dict[int, str] = {}
    for indices in (ix for ix in by_size.values() if len(ix) > 1):
        first_by_digest: dict[str, str] = {}
        for index in indices:
            path = sized[index][0].path
            try:
                digest = sha256_file(path)
            except OSError as exc:
                errors.append((str(path), ImageError(f"{path}: cannot be read ({exc.strerror or exc})")))
                dropped[index] = ""
                continue
            if digest in first_by_digest:
                dropped[index] = first_by_digest[digest]
            else:
                first_by_digest[digest] = str(path)
    kept = [entry for index, entry in enumerate(sized) if index not in dropped]
    return kept, tuple((str(sized[i][0].path), same) for i, same in sorted(dropped.items()) if same)


def _header_sizes(members: Sequence[GroupMember],
                  errors: list[tuple[str, ImageError]]) -> list[tuple[GroupMember, int, int]]:
    """``(member, width, height)`` from each file's header; a header that fails goes to ``errors``."""
    from adassr.runtime.errors import PixelLimitError
    from adassr.runtime.images import DEFAULT_MAX_PIXELS, read_image_size

    sized = []
    for member in members:
        try:
            width, height = read_image_size(member.path)
        except ImageError as exc:
            errors.append((str(member.path), exc))
            continue
        if width * height > DEFAULT_MAX_PIXELS:  # the reader would refuse it: left out before the selection
            errors.append((str(member.path), PixelLimitError(
                f"{member.path}: image is {width}x{height} = {width * height:,} pixels, above the reader's limit "
                f"of {DEFAULT_MAX_PIXELS:,}; downscale it first")))
            continue
        sized.append((member, width, height))
    return sized


def _select_and_decode(sized: Sequence[tuple[GroupMember, int, int]], max_images: int | None,
                       max_megapixels: float | None, errors: list[tuple[str, ImageError]],
                       ) -> tuple[Selection, list[GroupMember], list[np.ndarray]]:
    """The selection within the limits (an even spread), decoded; chosen files that fail to decode
    give their places to others (:func:`_replace_failed`). ``(selection, members, images)``."""
    from adassr.adapt.image_selection import select_images

    selection = select_images([w * h for _, w, h in sized], max_images=max_images or len(sized) or 1,
                              max_megapixels=max_megapixels or math.inf)
    members, images = _decode_members([sized[i][0] for i in selection.indices], errors)
    if len(images) < len(selection.indices):  # a chosen file's header was good but its data is not
        members, images = _replace_failed(members, images, sized, selection.indices, len(selection.indices),
                                          (max_megapixels or math.inf) * 1e6, errors)
    return selection, members, images


def _replace_failed(members: list[GroupMember], images: list[np.ndarray], sized: Sequence[tuple[GroupMember, int, int]],
                    chosen: Sequence[int], wanted: int, max_pixels: float,
                    errors: list[tuple[str, ImageError]]) -> tuple[list[GroupMember], list[np.ndarray]]:
    """Fill the places of chosen images that failed to decode with images the selection left out, in
    name order, within the pixel budget: ``--max-images N`` then trains on N images where N can be read."""
    taken = set(chosen)
    pixels = sum(int(image.shape[0]) * int(image.shape[1]) for image in images)
    members, images = list(members), list(images)
    for index, (member, width, height) in enumerate(sized):
        if len(images) >= wanted:
            break
        if index in taken or pixels + width * height > max_pixels:
            continue
        decoded, pixels_of = _decode_members([member], errors)
        if decoded:
            members += decoded
            images += pixels_of
            pixels += width * height
    order = {str(m.path): k for k, (m, _, _) in enumerate(sized)}  # name order, as the selection has it
    paired = sorted(zip(members, images, strict=True), key=lambda mi: order.get(str(mi[0].path), 0))
    return [m for m, _ in paired], [i for _, i in paired]


def _decode_members(members: Sequence[GroupMember],
                    errors: list[tuple[str, ImageError]]) -> tuple[list[GroupMember], list[np.ndarray]]:
    """The members that decode, and their pixels as float32 RGB; a file that fails goes to ``errors``, and so
    does a progressive JPEG whose scans stop before its picture is complete (cut between two scans): its
    missing detail would read as the camera's blur to the kernel estimate and the training pairs."""
    from adassr.runtime.images import INCOMPLETE_SCANS, read_image, to_float32, used_peak

    decoded, images = [], []
    for member in members:
        notes: list[str] = []
        try:
            loaded = read_image(member.path, notes=notes)
        except ImageError as exc:
            errors.append((str(member.path), exc))
            continue
        incomplete = [text for text in notes if INCOMPLETE_SCANS in text]
        for text in notes:
            if text not in incomplete:
                log.warning("%s", text)
        if incomplete:
            errors.append((str(member.path), ImageError(f"{incomplete[0]}; left out of the adaptation: its missing "
                                                        "detail would read as the camera's blur")))
            continue
        if loaded.alpha is not None:
            peak = np.iinfo(loaded.alpha.dtype).max
            clear = float(np.mean(loaded.alpha < peak // 2))  # see-through, not just a shade short of opaque
            if clear > 0:
                share = f"{100 * clear:.0f}%" if 0.01 <= clear <= 0.99 else ("under 1%" if clear < 0.01 else
                                                                             "over 99%" if clear < 1 else "all")
                log.warning("%s: %s of its pixels are transparent; adaptation trains on the colours stored under "
                            "them (its alpha is not used): adapt on opaque photos of the camera", member.path, share)
        pixels = to_float32(loaded.pixels, peak=used_peak(loaded.pixels))  # as upscale serves it
        if pixels.shape[2] == 1:
            pixels = np.repeat(pixels, 3, axis=2)
        decoded.append(member)
        images.append(np.ascontiguousarray(pixels))
    return decoded, images


def _versions() -> dict[str, str]:
    import adassr

    versions = {"adassr": adassr.__version__, "torch": torch.__version__, "numpy": np.__version__,
                "python": platform.python_version()}
    if torch.cuda.is_available():
        versions["cuda"] = str(torch.version.cuda)
    return versions


def _resolve_trainable(requested: str, device: torch.device) -> str:
    if requested == "auto":
        return "all" if device.type == "cuda" else "tail"
    return requested


def _known_kernel_shape(mode: str, scale: int) -> tuple[int, int] | None:
    """The blur kernel's shape before any image is read: the bicubic kernel's (``--kernel bicubic``);
    None for an estimated kernel, whose size the images decide."""
    if mode != "bicubic":
        return None
    from adassr.adapt.kernel import bicubic_kernel_estimate

    kh, kw = np.asarray(bicubic_kernel_estimate(scale).kernel).shape
    return int(kh), int(kw)


def _estimate_kernel(images: Sequence[np.ndarray], scale: int, mode: str) -> KernelEstimate:
    from adassr.adapt.kernel import bicubic_kernel_estimate, estimate_kernel

    if mode == "bicubic":
        return bicubic_kernel_estimate(scale)
    return estimate_kernel(images, scale=scale)


def _weight_maps(model: RRDBNet, images: Sequence[np.ndarray], config: AdaptConfig, device: torch.device,
                 precision: Precision, cache: WeightMapCache | None) -> list[np.ndarray] | None:
    """The loss-weight map of each image (None for uniform weights), from ``cache`` where it has them."""
    if config.attention.mode == "uniform":
        return None
    from adassr.adapt.attention import compute_weight_map
    from adassr.adapt.feature_trunk import feature_trunk

    trunk = feature_trunk(model, device=device, precision=precision)  # opens its session at the first call

    def compute(image: np.ndarray) -> np.ndarray:
        return compute_weight_map(model, image, config.attention, device=device, precision=precision, trunk=trunk)

    return [compute(image) if cache is None else cache.get_or_compute(image, compute) for image in images]


def _niqe_metric(device: torch.device) -> Callable[[torch.Tensor], torch.Tensor]:
    from adassr.adapt.quality.niqe_torch import niqe_torch

    def metric(batch: torch.Tensor) -> torch.Tensor:
        return niqe_torch(batch.to(device))

    return metric


def _perceptual(config: AdaptConfig, device: torch.device) -> Perceptual | None:
    if config.lambda_perceptual <= 0:
        return None
    from adassr.adapt.quality.lpips import load_lpips

    lpips = load_lpips("vgg", device=device)
    for p in lpips.parameters():
        p.requires_grad_(False)
    return lpips


def _usable_images_and_kernel(images: list[np.ndarray], group: CameraGroup, pair_config: PairConfig,
                              kernel_mode: str) -> tuple[list[np.ndarray], KernelEstimate, UsableImages]:
    """The images that can give training pairs, the kernel estimated from them, and the selection.

    Images too small for the LR patch are skipped with one warning naming them; when none fits,
    the patch shrinks (see :func:`adassr.adapt.pairs.select_usable_images`), and when no image
    can be used at all a ConfigError gives the minimum size. A first pass with the default
    kernel size keeps tiny images out of kernel estimation; the final pass uses the kernel's size.
    """
    from adassr.adapt.pairs import DEFAULT_KERNEL_SIZE, select_usable_images

    names = [str(p) for p in group.paths]
    known = _known_kernel_shape(kernel_mode, pair_config.scale)
    first = select_usable_images(images, pair_config, names=names, kernel_shape=known or (DEFAULT_KERNEL_SIZE,) * 2,
                                 kernel_assumed=known is None)
    kernel = _estimate_kernel([images[i] for i in first.indices], pair_config.scale, kernel_mode)
    # the diagnostics' image indices (images_used, images_skipped_flat) count these images, in this order
    kernel = replace(kernel, diagnostics={**kernel.diagnostics, "image_paths": [names[i] for i in first.indices]})
    log.info("camera group %r: blur kernel %s", group.name, kernel.describe())
    for doubt in (kernel.direction_warning(), kernel.faint_warning(), kernel.scene_warning()):
        if doubt:
            log.warning("camera group %r: %s", group.name, doubt)
    kh, kw = np.asarray(kernel.kernel).shape
    usable = select_usable_images(images, pair_config, names=names, kernel_shape=(int(kh), int(kw)))
    message = usable.warning()
    if message:
        log.warning("camera group %r: %s", group.name, message)
    return [images[i] for i in usable.indices], kernel, usable


@dataclass(frozen=True)
class _Inputs:
    """Everything the ADMM iterations read: the group's images and what was derived from them."""

    images: list[np.ndarray]  # the usable ones (see ``usable``)
    kernel: KernelEstimate
    pair_config: PairConfig
    usable: UsableImages
    used_paths: list[str]
    used_sha256: list[str | None]  # each used image file's sha256 (None: it could not be read again)
    unreadable: tuple[tuple[str, str], ...]  # (path, reason) of the images that could not be read
    selection: dict[str, Any]  # how many of the group's images were read, and under which limits
    weights: list[np.ndarray] | None
    crops: list[np.ndarray]
    crop_paths: list[str]  # the image each evaluation crop comes from
    metric: Callable[[torch.Tensor], torch.Tensor]
    perceptual: Perceptual | None
    too_small: tuple[tuple[str, int, int], ...] = ()  # (path, width, height) left out by header size
    duplicates: tuple[tuple[str, str], ...] = ()  # (path, the earlier path with the same bytes) left out
    prepared_s: float = 0.0  # seconds from the run's start to the end of this preparation (the manifest's
    # timing.before_training_s: reading, kernel estimation, loss-weight maps, metrics)


def _prepare_inputs(group: CameraGroup, config: AdaptConfig, model: RRDBNet, scale: int, *,
                    device: torch.device, precision: Precision, map_cache: WeightMapCache | None = None) -> _Inputs:
    """Read the group, keep the images large enough for the patch (:func:`_usable_images_and_kernel`),
    estimate the kernel from them, and build the weight maps and metrics."""
    from adassr.adapt.pairs import PairConfig, min_image_size

    perceptual = _perceptual(config, device)  # missing LPIPS weights fail now, not after reading the images
    pair_config = PairConfig(scale=scale, lr_patch=config.lr_patch)
    if not config.augment:
        pair_config = pair_config.without_augmentation()
    known = _known_kernel_shape(config.kernel, scale)  # bicubic: its size; estimated: not known yet
    loaded = load_group_images(group, max_images=config.max_images, max_megapixels=config.max_megapixels,
                               min_side=min_image_size(pair_config, known or (1, 1)))  # too small for any kernel
    images, kernel, usable = _usable_images_and_kernel(loaded.images, loaded.group, pair_config, config.kernel)
    used_paths = [str(loaded.group.members[i].path) for i in usable.indices]
    used_sha256 = [_file_sha256(path) for path in used_paths]  # provenance: a photo edited later is seen
    selection = {"images_in_group": len(group.members), "readable": loaded.readable, "read": len(loaded.images),
                 "max_images": config.max_images, "max_megapixels": config.max_megapixels,
                 "limited_by": loaded.limited_by}
    evaluated, evaluated_paths = _structured(images, used_paths, kernel, group.name)
    crops = evaluation_crops(evaluated, config.eval_crop, config.eval_max_images)
    return _Inputs(images, kernel, usable.config, usable, used_paths, used_sha256, loaded.unreadable, selection,
                   _weight_maps(model, images, config, device, precision, map_cache),
                   crops, evaluated_paths[: len(crops)], _niqe_metric(device), perceptual, loaded.too_small,
                   loaded.duplicates)


def _structured(images: list[np.ndarray], paths: Sequence[str], kernel: KernelEstimate,
                camera: str) -> tuple[list[np.ndarray], list[str]]:
    """``images`` without those the kernel estimate found to carry no structure above their noise, or
    only faint structure beside the others' clear edges (``images_skipped_flat``, which includes
    ``images_skipped_faint``): NIQE of a flat picture swings widely and would decide, alone,
    whether the adapted weights are kept. All of them when that would leave none."""
    diag = kernel.diagnostics
    estimated_on = list(diag.get("image_paths") or [])
    flat = {estimated_on[i] for i in diag.get("images_skipped_flat") or [] if 0 <= i < len(estimated_on)}
    if not flat:
        return list(images), list(paths)
    keep = [(image, path) for image, path in zip(images, paths, strict=True) if path not in flat]
    if not keep:
        log.warning("camera group %r: no image carries structure above its noise (%s); NIQE on such pictures "
                    "swings widely, so whether the adapted weights help is uncertain: adapt on photos with "
                    "detail", camera, ", ".join(sorted(flat)))
        return list(images), list(paths)
    log.warning("camera group %r: left out of the NIQE evaluation, as they carry no structure above their "
                "noise (or only faint structure beside the others' clear edges): %s", camera, ", ".join(sorted(flat)))
    return [image for image, _ in keep], [path for _, path in keep]


def _training_budget(config: AdaptConfig, start: float) -> AdaptConfig:
    """``time_budget`` counts the whole run: training gets what the set-up since ``start`` left of it."""
    if config.time_budget is None:
        return config
    setup = time.perf_counter() - start
    left = config.time_budget - setup
    if left < SETUP_WARNING_SHARE * config.time_budget:
        log.warning("the set-up before training (loading the backbone, reading the images, the kernel estimate, "
                    "the loss-weight maps; the manifest's timing.before_training_s) took %.0f s of the %.0f s time "
                    "budget, which it cannot cut short, leaving %.0f s for training (at least one step and its "
                    "evaluation run): a later run on the same images reuses the cached weight maps; else read "
                    "fewer images (--max-images) or raise --time-budget", setup, config.time_budget,
                    max(left, 0.0))
    return replace(config, time_budget=max(left, 1e-3))


def _run_admm(model: RRDBNet, inputs: _Inputs, config: AdaptConfig, start: Mapping[str, torch.Tensor], *,
              scale: int, device: torch.device, precision: Precision, trainable: str,
              progress: Callable[[ProgressEvent], None] | None) -> InternalResult:
    """K ADMM iterations from the weights ``start`` (module docstring); returns the last internal step's result."""
    from adassr.adapt.pairs import make_pair_sampler

    theta_e = dict(start)
    u = {k: torch.zeros_like(v) for k, v in theta_e.items()}
    result: InternalResult | None = None
    first: InternalResult | None = None  # iteration 1's: its baseline is the unadapted backbone's NIQE
    summaries: list[dict[str, Any]] = []  # one per internal step, for the manifest's ``admm``
    # one deadline for every step: each internal step gets what is left of the budget, not all of it
    deadline = None if config.time_budget is None else time.monotonic() + config.time_budget
    for k in range(1, config.admm_iters + 1):
        if result is not None:
            from adassr.adapt.external import run_external_step

            reserve = _internal_step_reserve(result, config)
            if deadline is not None and deadline - time.monotonic() < reserve:
                result.stop_reason += (f"; the time budget left too little for ADMM iteration {k} (its internal "
                                       f"step needs about {reserve:.0f} s)")
                break
            anchor_e = {n: result.state_dict[n] - u[n] for n in result.state_dict}
            model.load_state_dict(theta_e)
            try:
                external = run_external_step(model, anchor_e, config, device=device, precision=precision,
                                             scale=scale, seed=_admm_seed(config.seed, k, "external"),
                                             perceptual=inputs.perceptual,
                                             deadline=None if deadline is None else deadline - reserve)
            except (KeyboardInterrupt, Interrupted) as exc:  # the last internal step's result stands
                signum = exc.signum if isinstance(exc, Interrupted) else int(signal.SIGINT)
                result.interrupted = signum
                result.stop_reason += (f"; interrupted by {signal.Signals(signum).name} in ADMM iteration {k}'s "
                                       "external step")
                break
            if external is None:  # out of time inside the external step: no time left to evaluate another
                result.stop_reason += f"; the time budget ended in ADMM iteration {k}'s external step"
                break
            theta_e = external
        model.load_state_dict(theta_e)
        anchors = {n: theta_e[n] + u[n] for n in theta_e}
        sampler = make_pair_sampler(inputs.images, inputs.kernel.kernel, inputs.pair_config, weights=inputs.weights,
                                    seed=_admm_seed(config.seed, k, "internal"))
        step_config = config if deadline is None else replace(
            config, time_budget=max(deadline - time.monotonic(), 1e-3))
        result = run_internal_step(model, sampler, inputs.crops, inputs.metric, step_config, device=device,
                                   precision=precision, trainable=trainable, anchors=anchors,
                                   perceptual=inputs.perceptual, progress=progress)
        first = result if first is None else first
        summaries.append(admm_summary(k, result))
        u = {n: u[n] + theta_e[n] - result.state_dict[n] for n in u}
        if result.interrupted is not None:  # a signal ends the whole run, not just this iteration
            break
    if result is None or first is None:  # admm_iters >= 1 is validated by AdaptConfig
        raise ConfigError(f"--admm-iters must be >= 1, got {config.admm_iters}")
    if config.admm_iters > 1:
        result.admm = summaries
    return _against_backbone(result, first, start, config)


def _against_backbone(result: InternalResult, first: InternalResult, start: Mapping[str, torch.Tensor],
                      config: AdaptConfig) -> InternalResult:
    """The ADMM run's result judged against the unadapted backbone, as one internal step is.

    Each later iteration starts from the external step's weights and measures itself against them:
    its "kept the backbone" kept those weights, and its NIQE before was theirs. The backbone's own
    scores are iteration 1's baseline (the evaluation crops are the same): the result is kept only
    within ``backbone_margin`` of them, else the backbone is (a run once published weights 0.42 NIQE
    worse than the backbone as "adapted")."""
    if result is first:
        return result
    from adassr.adapt.loop import compare_with_backbone

    backbone = list(first.niqe_before)
    # the crops the backbone scored, and only those, as every evaluation of a step is compared
    evaluation = compare_with_backbone(result.niqe_after, backbone)
    finite = [b for b in backbone if math.isfinite(b)]
    base, after = (float(np.mean(finite)) if finite else math.nan), evaluation.score
    if evaluation.lost:
        reason = (f"; after the ADMM iterations the result's outputs went flat (NIQE undefined) on {evaluation.lost} "
                  "crop(s) the backbone scored, so the backbone is kept")
    elif not after <= base + config.backbone_margin:  # NaN too
        reason = (f"; after the ADMM iterations the result's NIQE {after:.3f} was worse than the unadapted "
                  f"backbone's {base:.3f}" + (f" by more than --backbone-margin {config.backbone_margin:g}"
                                              if config.backbone_margin > 0 else "") + ", so the backbone is kept")
    else:
        reason = ""
    if reason:
        return replace(result, state_dict={n: t.detach().to("cpu", torch.float32) for n, t in start.items()},
                       kept_backbone=True, best_step=0, niqe_before=backbone, niqe_after=backbone,
                       stop_reason=result.stop_reason + reason)
    note = ("; the last internal step kept its start, the external step's weights, which are within the margin of "
            "the backbone" if result.kept_backbone else "")
    return replace(result, kept_backbone=False, niqe_before=backbone, stop_reason=result.stop_reason + note)


def _internal_step_reserve(previous: InternalResult, config: AdaptConfig) -> float:
    """Seconds an internal step needs at least, measured on ``previous``: its set-up, the backbone's
    and one period's evaluations and one period of steps. An ADMM iteration starts (and its external
    step trains) only while that much of the time budget is left for the internal step after it."""
    t = previous.timing
    period = float(t.get("mean_period_first_step_s", 0.0)) + max(config.eval_every - 1, 0) * float(
        t.get("mean_plain_step_s", 0.0))
    return float(t.get("setup_s", 0.0)) + 2.0 * float(t.get("mean_evaluation_s", 0.0)) + period


def _admm_seed(seed: int, iteration: int, part: str) -> int:
    """The seed of one ADMM iteration's pair sampler: independent streams for every (run seed,
    iteration, part) (``seed + 1000 * k`` made run seed 0's second iteration run seed 1000's first).
    Iteration 1's internal sampler keeps ``seed + 1000``, so a run without ADMM (the default) draws the
    pairs it always did and recorded results stay reproducible."""
    if iteration == 1 and part == "internal":
        return seed + 1000
    entropy = np.random.SeedSequence([seed, iteration, 0 if part == "internal" else 1]).generate_state(1)
    return int(entropy[0])


def _finite_or_none(score: float) -> float | None:
    """A NIQE score for JSON: None where it is undefined (NaN on a crop without structure)."""
    return float(score) if math.isfinite(score) else None


def manifest_record(
    group: CameraGroup, config: AdaptConfig, backbone: LoadedBackbone, kernel: Mapping[str, Any],
    result: InternalResult, crop_names: Sequence[str], *, precision: str, device: str, trainable: str,
    wall_time_s: float, weights_sha256: str, versions: Mapping[str, str],
) -> dict[str, Any]:
    """The adapt stage's manifest fields (see :mod:`adassr.runtime.store`); pure: no I/O, no clock."""
    return {
        "images": group.to_manifest(),
        "backbone": {"name": backbone.entry.name, "weights_sha256": backbone.weights_sha256,
                     "source": backbone.source},
        "scale": backbone.scale,
        "kernel": dict(kernel),
        "niqe_before": float(np.nanmean(result.niqe_before)),
        "niqe_after": float(np.nanmean(result.niqe_after)),
        "niqe_evaluation": {"crop": config.eval_crop, "images": list(crop_names), "history": result.history},
        "per_image": [{"path": p, "niqe_before": _finite_or_none(b), "niqe_after": _finite_or_none(a)}
                      for p, b, a in zip(crop_names, result.niqe_before, result.niqe_after, strict=True)],
        "steps": result.steps,
        "best_step": result.best_step,
        "kept_backbone": result.kept_backbone,
        "stop_reason": result.stop_reason,
        **({"admm": list(result.admm)} if result.admm else {}),
        "timing": dict(result.timing),
        "interrupted": result.interrupted is not None,
        "seed": config.seed,
        "precision": precision,
        "device": device,
        "trainable": trainable,
        "wall_time_s": wall_time_s,
        "attention": asdict(config.attention),
        "versions": dict(versions),
        "weights_sha256": weights_sha256,
        "config": config.to_dict(),
    }


def _replace_adapt_fields(manifest: dict[str, Any], record: Mapping[str, Any]) -> None:
    """Write the adapt fields; exports and TensorRT engines made from other weights are forgotten
    (export again), and so is the previous run's report when this run drew none. Exports of the very
    weights this run publishes (a rerun with the same seed and images) stay valid and are kept."""
    exports = manifest.get("exports")
    same_weights = (isinstance(exports, Mapping) and bool(exports) and record.get("weights_sha256") is not None
                    and all(isinstance(r, Mapping) and r.get("weights_sha256") == record["weights_sha256"]
                            for r in exports.values()))
    manifest.update(record)
    artifacts = manifest.get("artifacts", {})
    stale = []
    if not same_weights:
        manifest.pop("exports", None)
        manifest.pop("engines", None)
        stale = [n for n, r in artifacts.items() if r.get("stage") == "export"]
    if not record.get("report") and REPORT_FILE in artifacts:
        stale.append(REPORT_FILE)
    for name in stale:
        del artifacts[name]


@dataclass(frozen=True)
class _Compute:
    """Where and how the run computes: the device, its precision and the trainable-parameter mode."""

    device: torch.device
    precision: Precision
    trainable: str  # "all" or "tail" ("auto" resolved for the device)
    threads: int | None = None  # CPU: the intra-op threads it started with
    governor: ThreadGovernor | None = None  # CPU with automatic threads: shrinks the pools while others are busy

    def threads_record(self) -> dict[str, Any] | None:
        """The manifest's ``threads``: the CPU pool size and every change the governor made, or None on a GPU."""
        if self.threads is None:
            return None
        changes = [] if self.governor is None else [
            {"from": a, "to": b, "busy_cpus_elsewhere": round(busy, 2)} for a, b, busy in self.governor.changes]
        return {"max": self.threads, "automatic": self.governor is not None, "changes": changes}

    @property
    def device_name(self) -> str:
        """The manifest's ``device``: ``cpu``, or the GPU's name."""
        return str(self.device) if self.device.type == "cpu" else torch.cuda.get_device_name(self.device)


def _resolve_compute(config: AdaptConfig) -> _Compute:
    """Resolve ``config``'s device, precision and trainable mode (on CPU, set the thread count first)."""
    device = resolve_device(config.device)
    threads = governor = None
    if device.type == "cpu":
        threads = configure_cpu_threads()  # before the precision probe, which is keyed by the thread count
        governor = start_thread_governor(threads)
    precision = resolve_precision(config.precision, device)
    return _Compute(device, precision, _resolve_trainable(config.trainable, device), threads, governor)


def _check_store_folder_holds_no_photo(folder: Path, group: CameraGroup) -> None:
    """ConfigError when the camera's store folder is (through a link) a folder of the group's photos, or one
    above them: the weights, manifest and report would be written among the photos, and the next scan would
    take that folder for a store's and skip its photos."""
    try:
        place = folder.resolve()
    except (OSError, RuntimeError):  # a loop of links: reported where the store opens the folder
        return
    for member in group.members:
        try:
            photo = member.path.resolve()
        except (OSError, RuntimeError):  # a photo behind a loop of links: reported where it is read
            continue
        if place in photo.parents:
            raise ConfigError(
                f"the camera's store folder {folder} is {place} (through a link), which holds its photo "
                f"{member.path}: adapt would write its model and manifest among the photos; point the store "
                "folder, or --store, elsewhere"
            )


def adapt_camera(
    group: CameraGroup,
    config: AdaptConfig,
    *,
    store_root: Path,
    backbone_name: str = DEFAULT_BACKBONE,
    registry: BackboneRegistry | None = None,
    progress: Callable[[ProgressEvent], None] | None = None,
    keep_on_interrupt: bool = False,
    replace: bool = False,
    on_published: Callable[[], None] | None = None,
) -> AdaptOutcome:
    """Adapt backbone ``backbone_name`` (of ``registry``, default: the bundled backbones) to ``group``
    and publish ``adapted.safetensors`` and the manifest into ``<store_root>/<camera>/``.

    Runs inside one store transaction, which validates the store (lock, manifest, schema) before any
    work; the camera's lock is held, nothing is published unless the run completes, and then weights
    and manifest commit together. Steps: load the backbone, prepare the inputs
    (:func:`_prepare_inputs`), run ADMM (:func:`_run_admm`), stage the weights and the report and
    build the manifest record (:func:`_stage_artifacts`), and commit.

    Interrupts (SIGINT, and SIGTERM inside :func:`adassr.adapt.interrupts.catch_interrupts`) raise
    :class:`~adassr.adapt.interrupts.Interrupted` and publish nothing: the previous model stays.
    With ``keep_on_interrupt`` the best weights evaluated before the signal are committed first,
    with ``"interrupted": true`` in the manifest, and then ``Interrupted`` (``kept=True``) is raised;
    when no evaluated weights beat the backbone by then, nothing is published (the previous model
    stays) and ``Interrupted`` says so in its ``note``. A signal during the commit waits for it, and
    the ``Interrupted`` raised afterwards says the model was published (``kept=True``).
    ``on_published()`` is called as the new model is committed, before a signal can be acted on again: a
    signal in the moments after (the outcome returned) raises a plain ``Interrupted`` that the caller must
    not read as "nothing was published".

    A camera that has an adapted model keeps it when it scores better on this run's evaluation crops
    than the run's result (:func:`_current_model_stays`; ``AdaptOutcome.kept_current``); ``replace``
    publishes the result anyway.
    """
    start = time.perf_counter()
    # absolute paths: the manifest's image records must not depend on where adapt was started (export
    # reads them to find a validation photo)
    group = CameraGroup(group.name, tuple(GroupMember(m.path.absolute(), m.derivation) for m in group.members))
    _check_store_folder_holds_no_photo(CameraStore(Path(store_root).expanduser(), group.name).directory, group)
    # a first run that published nothing leaves no empty camera folder (nor a store root it made) behind
    with camera_folder_for_writing(store_root, group.name) as store:
        store.refuse_alias()  # before the training, not at its end
        return _adapt_in_store(store, group, config, backbone_name, start=start, registry=registry,
                               progress=progress, keep_on_interrupt=keep_on_interrupt, replace=replace,
                               on_published=on_published)


def _adapt_in_store(store: CameraStore, group: CameraGroup, config: AdaptConfig, backbone_name: str, *,
                    start: float, registry: BackboneRegistry | None,
                    progress: Callable[[ProgressEvent], None] | None, keep_on_interrupt: bool,
                    replace: bool = False, on_published: Callable[[], None] | None = None) -> AdaptOutcome:
    """:func:`adapt_camera`'s work in the opened camera folder ``store``."""
    store_root = store.root
    if config.lambda_perceptual > 0:  # missing LPIPS weights fail before the backbone is converted (67 MB cached)
        from adassr.adapt.quality.lpips_weights import require_lpips_weights

        require_lpips_weights("vgg")
    compute = _resolve_compute(config)
    with store.transaction() as tx:
        backbone, base_state = _load_backbone(backbone_name, compute.device, registry)
        _check_before_setup(config, backbone.scale, blocks=len(backbone.model.body), trainable=compute.trainable)
        _check_memory(config, backbone.scale, compute)  # a batch the machine cannot hold fails now, not minutes on
        map_cache = WeightMapCache(store_cache_folder(store_root), backbone.weights_sha256, config.attention,
                                   compute.precision.name, compute.device.type)
        if compute.governor is not None:
            compute.governor.adjust(force=True)  # the weight maps' trunk sizes its pool from torch's
        inputs = _prepare_inputs(group, config, backbone.model, backbone.scale, device=compute.device,
                                 precision=compute.precision, map_cache=map_cache)
        inputs = dataclasses.replace(inputs, prepared_s=round(time.perf_counter() - start, 2))  # (replace: an argument)
        _check_memory(config, backbone.scale, compute)  # again: the images read and their maps hold memory now
        result = _run_admm(backbone.model, inputs, _training_budget(config, start), base_state, scale=backbone.scale,
                           device=compute.device, precision=compute.precision, trainable=compute.trainable,
                           progress=governed(progress, compute.governor))
        if result.interrupted is not None and not keep_on_interrupt:
            raise Interrupted(result.interrupted)  # the transaction discards everything staged
        if result.interrupted is not None and result.kept_backbone:
            raise Interrupted(result.interrupted, note=(  # publishing the backbone would replace a working model
                "no adapted weights had beaten the backbone before the signal, so nothing was published "
                "and the previous model is unchanged"))
        kept = None
        if not replace:
            try:
                kept = _current_model_stays(store, tx.previous, backbone, base_state, inputs, result, config,
                                            device=compute.device)
            except Interrupted as late:
                raise Interrupted(late.signum, note=(
                    "the signal came while the camera's current model was compared with this run's result: "
                    "nothing was published, the current model is unchanged")) from None
        if kept is not None:
            if result.interrupted is not None:  # --keep-on-interrupt, but the current model is better
                raise Interrupted(result.interrupted, note=kept.reason)
            return _kept_outcome(store, group.name, tx.previous, result, kept, start)
        try:
            # The result is decided: a signal now waits (a second or two: the weights file, report.png)
            # until the manifest is committed. Staging outside it lost a finished run to a late Ctrl-C.
            with deferred():
                record = _stage_artifacts(tx, _Run(group, config, backbone, base_state, compute, start), inputs,
                                          result)
                committed = tx.commit(functools.partial(_replace_adapt_fields, record=record))
                if on_published is not None:  # told before a signal can come again (the caller's record of it)
                    on_published()
        except Interrupted as late:  # raised only after a commit that completed (see deferred)
            if result.interrupted is None:
                raise Interrupted(late.signum, kept=True, note=(
                    "the signal came while the finished run was saved, which completed: the new model is "
                    "published")) from None
            raise Interrupted(result.interrupted, kept=True) from None
    if result.interrupted is not None:
        raise Interrupted(result.interrupted, kept=True)
    previous_exports = tx.previous.get("exports") if isinstance(tx.previous, Mapping) else None
    return AdaptOutcome(group.name, store.directory, store.artifact_path(WEIGHTS_FILE, committed),
                        record["niqe_before"], record["niqe_after"], result.kept_backbone, result.steps,
                        result.stop_reason, record["wall_time_s"], inputs.kernel.describe(), record["report"],
                        exports_dropped=bool(previous_exports) and not committed.get("exports"))


@dataclass(frozen=True)
class _KeptModel:
    """Why the camera's current model stays instead of this run's result, and its NIQE on the run's crops."""

    reason: str
    niqe: float


def _current_model_stays(store: CameraStore, manifest: Mapping[str, Any], backbone: LoadedBackbone,
                         base_state: dict[str, torch.Tensor], inputs: _Inputs, result: InternalResult,
                         config: AdaptConfig, *, device: torch.device) -> _KeptModel | None:
    """Whether the camera's current model must stay, rather than this run's result replace it.

    A re-run never makes a camera worse: its current adapted weights (made from the same backbone) are
    scored on this run's evaluation crops, and stay when they score a lower NIQE than the result's
    weights. Where the result is the unadapted backbone, the current model is held to the early stop's
    own rule: it stays unless it is worse than the backbone by more than ``--backbone-margin``. A run
    whose training diverged publishes nothing over an existing model. None: publish.
    """
    from adassr.adapt.loop import compare_with_backbone, evaluate_model

    if not manifest.get("artifacts", {}).get(WEIGHTS_FILE):
        return None  # the camera's first model
    if (manifest.get("backbone") or {}).get("name") != backbone.entry.name:
        return None  # another backbone's model: the run adapts the backbone asked for
    if manifest.get("weights_sha256") == backbone.weights_sha256:
        return None  # the current model is the backbone itself
    result_is_backbone = result.kept_backbone  # with K > 1 too: _against_backbone resets such a result to the backbone
    try:
        current = _current_weights(store, manifest, backbone, base_state)
    except (StoreError, WeightsError) as exc:
        log.warning("the camera's current adapted weights cannot be read (%s); this run's result replaces them", exc)
        return None
    current_comparison = compare_with_backbone(evaluate_model(current, inputs.crops, inputs.metric, device=device),
                                               result.niqe_before)
    if result.diverged and result.kept_backbone:
        return _KeptModel("this run's training diverged before any adapted weights were evaluated, so nothing "
                          "was published and the camera's current model is unchanged", current_comparison.score)
    result_comparison = compare_with_backbone(result.niqe_after, result.niqe_before)
    bar = result_comparison.score + (config.backbone_margin if result_is_backbone else 0.0)
    if current_comparison.lost or not current_comparison.score < bar:
        return None
    if result_is_backbone:
        margin = (f" (or worse by at most --backbone-margin {config.backbone_margin:g}, the early stop's rule)"
                  if config.backbone_margin > 0 else "")
        than = f"beats the unadapted backbone's {result_comparison.score:.3f}{margin}, which this run kept"
    else:
        starting = "adapted weights" if config.admm_iters == 1 else "weights"
        than = f"beats this run's {starting}' {result_comparison.score:.3f}"
    return _KeptModel(f"the camera's current model scores NIQE {current_comparison.score:.3f} on this run's "
                      f"evaluation crops, which {than}: it stays, and nothing was published (--replace "
                      "publishes the run's result anyway)", current_comparison.score)


def _current_weights(store: CameraStore, manifest: Mapping[str, Any], backbone: LoadedBackbone,
                     base_state: dict[str, torch.Tensor]) -> RRDBNet:
    """The camera's current adapted model, rebuilt on the backbone's weights before this run's training."""
    from adassr.adapt.weights import load_safetensors_weights
    from adassr.adapt.weights.state import assemble

    base = assemble(backbone.entry, base_state, source="the backbone", device="cpu",
                    weights_sha256=backbone.weights_sha256)  # the delta is rebuilt on the CPU anyway
    path = store.verified_path(WEIGHTS_FILE, manifest)
    loaded = load_safetensors_weights(path, backbone.entry, device=str(next(backbone.model.parameters()).device),
                                      base=base)
    return loaded.model


def _kept_outcome(store: CameraStore, camera: str, manifest: Mapping[str, Any], result: InternalResult,
                  kept: _KeptModel, start: float) -> AdaptOutcome:
    """The outcome of a run that left the camera's current model in place."""
    log.info("camera %s: %s", camera, kept.reason)
    before = float(np.nanmean(result.niqe_before)) if any(math.isfinite(v) for v in result.niqe_before) else math.nan
    return AdaptOutcome(camera, store.directory, store.artifact_path(WEIGHTS_FILE, manifest), before, kept.niqe,
                        False, result.steps, f"{result.stop_reason}; {kept.reason}",
                        round(time.perf_counter() - start, 2), report=None, kept_current=True)


def _check_before_setup(config: AdaptConfig, scale: int, *, blocks: int, trainable: str = "tail") -> None:
    """What depends on the backbone, checked before the minutes of set-up: the evaluation crop must
    give NIQE two 96 x 96 blocks, and ``--external-hr`` must hold usable images; ``--tail-blocks``
    beyond the backbone's ``blocks`` RRDB blocks gets a warning."""
    from adassr.adapt.quality.niqe import BLOCK_SIZE

    if trainable == "tail" and config.tail_blocks > blocks:  # clamped by the trainer: said here, not silently
        log.warning("--tail-blocks %d is more than the backbone's %d RRDB blocks: all %d train in tail mode",
                    config.tail_blocks, blocks, blocks)

    if config.lambda_perceptual > 0:
        from adassr.adapt.quality.lpips import MIN_SIDE

        need = -(-MIN_SIDE["vgg"] // scale)
        if config.lr_patch < need:  # failed after the set-up, naming LPIPS-vgg's input, not the option
            raise ConfigError(f"--patch {config.lr_patch} gives {config.lr_patch * scale} px HR patches, but the "
                              f"perceptual term (LPIPS-VGG) needs at least {MIN_SIDE['vgg']}: use --patch >= {need}, "
                              "or --lambda-perceptual 0")
    smallest = -(-2 * BLOCK_SIZE // scale)
    if config.eval_crop * scale < 2 * BLOCK_SIZE:
        raise ConfigError(f"--eval-crop {config.eval_crop} is too small: NIQE needs two {BLOCK_SIZE}x{BLOCK_SIZE} "
                          f"blocks of the x{scale} output, so the LR crop must be at least {smallest} px")
    if config.admm_iters > 1 and config.external_hr is not None:
        from adassr.adapt.external import check_external_images

        check_external_images(config.external_hr, min_side=config.lr_patch * scale)


def _check_memory(config: AdaptConfig, scale: int, compute: _Compute) -> None:
    """A CPU run's training must fit the memory left (:mod:`adassr.adapt.training_memory`): the kernel's
    out-of-memory killer ends it without a word. A GPU run's out-of-memory error is reported by ``adapt``."""
    if compute.device.type == "cpu":
        from adassr.adapt.training_memory import check_training_memory

        check_training_memory(config, scale=scale, trainable=compute.trainable)


def _load_backbone(name: str, device: torch.device,
                   registry: BackboneRegistry | None) -> tuple[LoadedBackbone, dict[str, torch.Tensor]]:
    """The backbone on ``device``, and a float32 CPU copy of its weights before adaptation (the
    weights file stores what differs from it)."""
    from adassr.adapt.weights import load_backbone

    backbone = load_backbone(name, device=str(device), registry=registry)
    base_state = {k: v.detach().cpu().float().clone() for k, v in backbone.model.state_dict().items()}
    return backbone, base_state


@dataclass(frozen=True)
class _Run:
    """What one adaptation run was given and resolved, as the manifest record needs it."""

    group: CameraGroup
    config: AdaptConfig
    backbone: LoadedBackbone
    base_state: dict[str, torch.Tensor]  # the backbone's weights before adaptation (float32, CPU)
    compute: _Compute
    start: float  # time.perf_counter() at the start of the run


def _stage_artifacts(tx: StoreTransaction, run: _Run, inputs: _Inputs, result: InternalResult) -> dict[str, Any]:
    """Stage the adapted weights and ``report.png`` in ``tx`` and return the manifest record: the
    adapt fields (:func:`manifest_record`, ``wall_time_s`` measured now), ``pairs`` and ``report``.
    An interrupted run's ``stop_reason`` says that the best evaluated weights were kept."""
    weights_record = _publish_weights(tx, result.state_dict, run.backbone, run.base_state)
    report = _publish_report(tx, run.group.name, result, inputs.images[0],
                             None if inputs.weights is None else inputs.weights[0])
    wall = round(time.perf_counter() - run.start, 2)
    record = manifest_record(
        run.group, run.config, run.backbone, inputs.kernel.to_dict(), result,
        inputs.crop_paths,
        precision=run.compute.precision.name, trainable=run.compute.trainable, wall_time_s=wall,
        versions=_versions(), device=run.compute.device_name, weights_sha256=weights_record["weights_sha256"],
    )
    record["pairs"] = _pairs_record(inputs.usable, inputs.used_paths, inputs.unreadable, used_sha256=inputs.used_sha256,
                                    requested_lr_patch=run.config.lr_patch, too_small=inputs.too_small,
                                    duplicates=inputs.duplicates)
    record["pairs"]["selection"] = dict(inputs.selection)
    # the crops as scored: an image smaller than --eval-crop is scored whole (the requested size stays in "crop")
    record["niqe_evaluation"]["crop_sizes"] = [[int(c.shape[0]), int(c.shape[1])] for c in inputs.crops]
    record["report"] = report
    # the loop's own set-up is timing.setup_s; what came before it (the time budget counts both) goes first
    record["timing"] = {"before_training_s": inputs.prepared_s, **record["timing"]}
    record["threads"] = run.compute.threads_record()  # None on a GPU (replaces an earlier CPU run's record)
    if result.interrupted is not None:
        record["stop_reason"] += "; best evaluated weights kept (--keep-on-interrupt)"
    return record


def _pairs_record(usable: UsableImages, used_paths: Sequence[str], unreadable: Sequence[tuple[str, str]], *,
                  requested_lr_patch: int, too_small: Sequence[tuple[str, int, int]] = (),
                  duplicates: Sequence[tuple[str, str]] = (), used_sha256: Sequence[str | None] = ()
                  ) -> dict[str, Any]:
    """The manifest's ``pairs`` field: the LR patch used and requested, the minimum image side, the
    images used (and their files' sha256) and skipped (unreadable, too small for the patch, or a copy of
    another); pure: no I/O."""
    return {
        "lr_patch": usable.config.lr_patch, "requested_lr_patch": requested_lr_patch, "min_side": usable.minimum,
        "images_used": list(used_paths), "images_used_sha256": list(used_sha256),
        "images_skipped": [{"path": p, "reason": f"unreadable: {why}"} for p, why in unreadable] + [
            {"path": p, "width": w, "height": h, "reason": f"smaller than {usable.minimum} LR px per side"}
            for p, w, h in usable.skipped] + [
            {"path": p, "width": w, "height": h, "reason": "too small for the LR patch with any kernel (header)"}
            for p, w, h in too_small] + [
            {"path": p, "reason": f"the same bytes as {same}"} for p, same in duplicates],
    }


def _publish_weights(tx: StoreTransaction, state: dict[str, torch.Tensor], backbone: LoadedBackbone,
                     base_state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Stage ``adapted.safetensors`` in ``tx`` as a delta on the backbone (only the changed tensors and
    the backbone's identity); the record carries both the file's and the full weights' digest."""
    from adassr.adapt.weights import save_delta_weights

    digest: dict[str, str] = {}

    def write(path: Path) -> None:  # path is already the transaction's temporary file: write it directly
        digest["weights"] = save_delta_weights(path, state, backbone, base_state=base_state,
                                               metadata={"stage": "adapt"}, atomic=False)

    record = tx.stage(WEIGHTS_FILE, write, stage="adapt",
                      extra={"backbone": backbone.entry.name, "format": "delta",
                             "backbone_weights_sha256": backbone.weights_sha256})
    record["weights_sha256"] = digest["weights"]
    return record


def _publish_report(tx: StoreTransaction, camera: str, result: InternalResult, image: np.ndarray,
                    weight: np.ndarray | None) -> str | None:
    """Stage ``report.png`` (NIQE history, one weight map) in ``tx``; None when it was skipped.

    A missing matplotlib or a failed drawing never fails the run: it is logged and skipped.
    """
    from adassr.adapt.report import matplotlib_available, render_report

    if not matplotlib_available():
        from adassr.runtime.install import install_hint

        log.warning("report.png skipped: matplotlib is not installed (%s)", install_hint("plots"))
        return None

    def write(path: Path) -> None:
        render_report(path, title=f"camera {camera}: {result.stop_reason}", history=result.history,
                      losses=result.losses, image=image, weight=weight, best_step=result.best_step)

    try:
        tx.stage(REPORT_FILE, write, stage="adapt")
    except Exception as exc:  # noqa: BLE001 - a broken optional extra (matplotlib installed but failing to
        # import: a numpy ABI mismatch, a missing kiwisolver) must not discard the trained weights
        log.warning("report.png skipped: drawing it failed (%s: %s)", type(exc).__name__, exc)
        return None
    return REPORT_FILE
