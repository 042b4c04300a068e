"""The kernel record handed to the pair maker and written to the manifest."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar

from adassr.adapt.degradation import bicubic_kernel, gaussian_kernel
from adassr.adapt.kernel.agreement import MIN_WARN_AXIS_RATIO, warn_threshold
from adassr.runtime.errors import ConfigError

__all__ = ["KernelEstimate", "bicubic_kernel_estimate", "METHOD_BICUBIC", "METHOD_CROSS_SCALE",
           "METHOD_FALLBACK", "METHOD_FIXED_GAUSSIAN"]

METHOD_CROSS_SCALE = "cross-scale-derivative-energy"
METHOD_BICUBIC = "bicubic"
METHOD_FALLBACK = "fallback-bicubic"
METHOD_FIXED_GAUSSIAN = "fallback-fixed-gaussian"

CONVENTION = (
    "y_rd = adassr.adapt.degradation.blur_downsample(y_r, kernel, scale): convolve with the kernel, then "
    "sample HR positions s*j + (s-1)/2 (pixel centres, as MATLAB imresize / cv2.INTER_AREA); "
    "sigma_x is the major axis, theta_deg turns it from +x (columns) towards +y (rows, down)"
)


@dataclass(frozen=True)
class KernelEstimate:
    """An estimated (or fixed) HR-resolution blur kernel for ``y_rd = downsample(y_r * k, s)``.

    ``sigma_x >= sigma_y``: standard deviations in HR pixels along the principal axes.
    ``theta``: radians in ``(-pi/2, pi/2]``, direction of the ``sigma_x`` axis from +x (columns)
    towards +y (rows, downwards); :meth:`to_dict` reports it in degrees. ``kernel``: the
    normalised float64 array (read-only) that :func:`adassr.adapt.degradation.blur_downsample` uses, its
    sides of the parity of ``scale``. For the bicubic kernel the sigmas are those of the closest
    Gaussian (L2), for reference only. ``confidence`` in [0, 1]: the modelled probability that the
    kernel is closer to the camera's true one than the fixed G(1.6) (see
    :mod:`adassr.adapt.kernel.confidence`); ``diagnostics`` holds JSON-friendly details.
    """

    sigma_x: float
    sigma_y: float
    theta: float
    scale: int
    kernel: np.ndarray = field(compare=False, repr=False)
    method: str
    confidence: float
    diagnostics: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        k = np.array(self.kernel, dtype=np.float64)
        if k.ndim != 2 or not np.all(np.isfinite(k)) or not math.isclose(float(k.sum()), 1.0, abs_tol=1e-6):
            raise ConfigError(
                f"kernel must be a finite 2-D array summing to 1, got shape {k.shape} and sum "
                f"{float(k.sum()) if k.size else 0.0:.6g}; normalise it first"
            )
        k.setflags(write=False)
        object.__setattr__(self, "kernel", k)
        object.__setattr__(self, "diagnostics", MappingProxyType(dict(self.diagnostics)))

    @property
    def theta_deg(self) -> float:
        return math.degrees(self.theta)

    @property
    def direction_agreement(self) -> float | None:
        """How well the group's images (one image: its tiles or quadrants) agree on the blur direction
        (see :mod:`adassr.adapt.kernel.agreement`); None when it was not measured (an image with fewer
        than two structured parts, the fixed Gaussian, a fixed kernel, or ``direction_check=False``)."""
        value = self.diagnostics.get("direction_agreement")
        return None if value is None else float(value)

    def describe(self) -> str:
        """One line for people: the axes, the angle, how it was found and how sure it is."""
        if self.method in (METHOD_BICUBIC, METHOD_FALLBACK):
            text = f"bicubic (closest Gaussian sigma {self.sigma_x:.2f} HR px)"
        elif math.isclose(self.sigma_x, self.sigma_y, rel_tol=1e-3):
            text = f"Gaussian sigma {self.sigma_x:.2f} HR px"
        else:
            text = (f"Gaussian sigma {self.sigma_x:.2f} x {self.sigma_y:.2f} HR px, "
                    f"major axis at {self.theta_deg:.0f} deg")
        details = [self.method, f"confidence {self.confidence:.2f}"]
        agreement = self.direction_agreement
        if agreement is not None:
            details.append(f"direction agreement {math.floor(agreement * 1000) / 1000:.3f}")  # as the warning
        drawn = int(self.diagnostics.get("n_pixels_too_sharp", 0))
        defects = int(self.diagnostics.get("n_pixels_fixed_defects", 0))
        counted = drawn + defects + int(self.diagnostics.get("n_pixels", 0))
        if drawn:
            details.append(f"{100 * drawn / counted:.1f} % of the pixels left out as drawn after capture: "
                           "burnt-in text, hot pixels")
        if defects:
            details.append(f"{100 * defects / counted:.1f} % left out around the sensor's defects: pixels that "
                           "stand out at the same places in most frames")
        scenes, frames = self._scenes()
        if scenes < frames:
            details.append(f"{frames} frames of {scenes} scene{'s' if scenes > 1 else ''}")
        return f"{text} ({', '.join(details)})"

    def _scenes(self) -> tuple[int, int]:
        """``(scenes, frames)`` the estimate was fitted on (both the frames' count for records without scenes)."""
        frames = len(self.diagnostics.get("images_used", []))
        return int(self.diagnostics.get("n_scenes", frames)), frames

    def scene_warning(self) -> str | None:
        """A message when several frames were fitted and all show one scene (a fixed camera): the kernel then
        rests on that scene's content alone; None otherwise."""
        scenes, frames = self._scenes()
        if scenes != 1 or frames < 2 or self.method != METHOD_CROSS_SCALE:
            return None
        return (f"the {frames} frames used for the blur kernel all show one scene (a fixed camera's view), so the "
                "kernel rests on that scene's content alone and was fitted as one image: one scene's edges bias "
                "it as much as a single photo's. Photos of other scenes from the same camera, or adapting with "
                "--kernel bicubic, avoid that")

    def direction_warning(self) -> str | None:
        """A message when the kernel is elongated but the images (one image: its parts) disagree on its
        direction (None otherwise)."""
        agreement = self.direction_agreement
        check = self.diagnostics.get("direction_check")
        threshold, parts = warn_threshold(check), check == "parts"
        if agreement is None or agreement >= threshold or self.sigma_x < MIN_WARN_AXIS_RATIO * self.sigma_y:
            return None
        fitted, more = (("the parts of the image", "More images of the camera,") if parts
                        else ("the images", "More images"))
        shown = math.floor(agreement * 1000) / 1000  # rounded down: 0.8483 must not read as the threshold 0.85
        return (f"the blur kernel's direction ({self.theta_deg:.0f} deg) is uncertain: {fitted}, fitted one by one, "
                f"agree on it only {shown:.3f} (1 = all alike, warned below {threshold:g}); heavy JPEG and "
                f"photos dominated by one edge direction cause this. {more} of varied content, or less "
                "compressed ones, make it reliable")

    def faint_warning(self) -> str | None:
        """A message when the kernel was fitted on faint structure only (``diagnostics["faint_structure_only"]``:
        every informative tile under 7/255 of edge amplitude and hardly above the noise at a coarse
        scale); None otherwise."""
        if not self.diagnostics.get("faint_structure_only") or self.method in (METHOD_BICUBIC, METHOD_FALLBACK):
            return None
        return ("the blur kernel was fitted on faint structure only (edges under 7/255 that hardly stand above "
                "the noise when averaged down by 4): a dim, low-contrast group, or flat frames (a wall, a covered "
                "lens) whose noise JPEG smoothed. If these are flat frames, the kernel is not the camera's: add "
                "photos with clear edges, or adapt with --kernel bicubic")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form for the manifest (angle in degrees, kernel as a 2-D list)."""
        return {
            "method": self.method,
            "scale": self.scale,
            "sigma_x": float(self.sigma_x),
            "sigma_y": float(self.sigma_y),
            "theta_deg": float(self.theta_deg),
            "confidence": float(self.confidence),
            "kernel_size": list(self.kernel.shape),
            "kernel": [[float(v) for v in row] for row in self.kernel],
            "convention": CONVENTION,
            "diagnostics": _jsonable(dict(self.diagnostics)),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> KernelEstimate:
        """Inverse of :meth:`to_dict` (a later stage reading the manifest)."""
        try:
            return cls(
                sigma_x=float(data["sigma_x"]),
                sigma_y=float(data["sigma_y"]),
                theta=math.radians(float(data["theta_deg"])),
                scale=int(data["scale"]),
                kernel=np.asarray(data["kernel"], dtype=np.float64),
                method=str(data["method"]),
                confidence=float(data["confidence"]),
                diagnostics=dict(data.get("diagnostics", {})),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"the manifest's kernel entry is malformed ({exc!r}); re-run `adapt` to estimate it again"
            ) from exc


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (np.floating, float)):
        return float(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    return value


def _bicubic_equivalent_sigma(scale: int) -> float:
    kb = bicubic_kernel(scale)

    def dist(sigma: float) -> float:
        g = gaussian_kernel(sigma, sigma, 0.0, scale=scale, size=kb.shape[0])
        return float(np.sum((g - kb) ** 2))

    res = minimize_scalar(dist, bounds=(0.1 * scale, 1.0 * scale), method="bounded",
                          options={"xatol": 1e-4})
    return float(res.x)


def bicubic_kernel_estimate(scale: int = 4, *, reason: str | None = None) -> KernelEstimate:
    """The kernel of antialiased bicubic downscaling, for ``--kernel bicubic``.

    ``kernel`` is :func:`adassr.adapt.degradation.bicubic_kernel` (Keys cubic, a = -0.5, stretched by
    ``scale``), so pairs made with it through ``blur_downsample`` are downscaled exactly like
    MATLAB ``imresize(x, 1/s, 'bicubic')`` / Pillow ``BICUBIC`` (away from the borders) -- the
    degradation the backbones were trained on. ``sigma_x = sigma_y`` is the L2-closest Gaussian
    (1.57 at x4), for reference. With ``reason`` the estimate is the estimator's fallback
    (``method="fallback-bicubic"``, ``confidence=0``, the reason in ``diagnostics``).
    """
    if isinstance(scale, bool) or not isinstance(scale, (int, np.integer)) or scale < 1:
        raise ConfigError(f"scale must be a positive integer, got {scale!r}")
    scale = int(scale)
    sigma = _bicubic_equivalent_sigma(scale)
    diagnostics: dict[str, Any] = {"equivalent_gaussian": "L2-closest isotropic Gaussian, same support"}
    method, confidence = METHOD_BICUBIC, 1.0
    if reason is not None:
        diagnostics["reason"] = reason
        method, confidence = METHOD_FALLBACK, 0.0
    return KernelEstimate(sigma_x=sigma, sigma_y=sigma, theta=0.0, scale=scale,
                          kernel=bicubic_kernel(scale), method=method, confidence=confidence,
                          diagnostics=diagnostics)
