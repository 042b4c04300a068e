"""What makes a TensorRT engine valid for a machine: the engine cache key.

A serialized TensorRT engine runs only with the TensorRT version that built it, on the GPU
architecture it was built for, with the input shapes of its optimisation profiles. The key holds
every one of those facts, plus what the engine was built *from*:

- ``source_sha256``: the ONNX file's sha256 for a camera engine and for a refittable base engine
  with weights (built from the backbone's own ONNX, see :mod:`adassr.runtime.engines.refit`); for a
  weight-stripped base engine the sha256 of the network structure (the ONNX graph without its
  weight values, see :func:`adassr.runtime.engines.onnx_weights.structure_sha256`), so every
  camera adapted from one backbone shares it;
- ``tensorrt_version``, ``gpu_name``, ``compute_capability``;
- ``precision`` (``fp32``, ``fp16``, ``bf16``), the optimisation ``profiles`` (min / opt / max NCHW
  shapes of the input), the builder optimisation level, and whether the engine is refittable and
  weight-stripped.

:meth:`EngineKey.digest` is the sha256 of the key's canonical JSON; the first 16 hex digits name
the engine file. :func:`explain_mismatch` lists, in words, every field in which a stored engine's
key differs from the key wanted now: the log line that says why an engine is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from adassr.runtime.errors import ConfigError

ENGINE_PRECISIONS = ("fp32", "fp16", "bf16")
ENGINE_KINDS = ("camera", "base")
KEY_VERSION = 2
"""Bumped when the key's fields, the engine layout or the builder flags change: older keys then never
match. 2: TF32 off for fp16 and bf16 engines too (their fp32 layers ran in TF32)."""

BF16_LAYERS_VERSION = 2
"""The set of layers a bf16 build keeps in fp32 (``adassr.runtime.engines.trt.keeps_fp32``), part of a bf16
key only: 2 adds the 1x1 convolutions standing for the residual scaling (1 ran them in bf16)."""

Shape = tuple[int, int, int, int]


def _shape(value: Any, what: str) -> Shape:
    if not isinstance(value, (list, tuple)) or len(value) != 4 or not all(isinstance(v, int) for v in value):
        raise ConfigError(f"{what} must be 4 integers (N, C, H, W), got {value!r}")
    if min(value) < 1:
        raise ConfigError(f"{what} must be positive, got {tuple(value)}")
    return (value[0], value[1], value[2], value[3])


@dataclass(frozen=True)
class ProfileShape:
    """One optimisation profile of the image input: NCHW min <= opt <= max, element by element."""

    min: Shape
    opt: Shape
    max: Shape

    def __post_init__(self) -> None:
        for name in ("min", "opt", "max"):
            _shape(getattr(self, name), f"profile {name} shape")
        if not all(a <= b <= c for a, b, c in zip(self.min, self.opt, self.max, strict=True)):
            raise ConfigError(
                f"profile shapes must satisfy min <= opt <= max in every dimension, got min {self.min}, "
                f"opt {self.opt}, max {self.max}"
            )

    def accepts(self, shape: tuple[int, ...]) -> bool:
        """Whether an input of ``shape`` lies inside this profile."""
        return len(shape) == 4 and all(lo <= s <= hi for lo, s, hi in zip(self.min, shape, self.max, strict=False))

    def to_json(self) -> dict[str, list[int]]:
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProfileShape:
        return cls(_shape(data.get("min"), "profile min"), _shape(data.get("opt"), "profile opt"),
                   _shape(data.get("max"), "profile max"))


@dataclass(frozen=True)
class GpuIdentity:
    """The GPU model an engine is built for (engines do not depend on the device index)."""

    name: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        return f"sm_{self.compute_capability[0]}{self.compute_capability[1]}"

    @property
    def slug(self) -> str:
        """File-name-safe short form, e.g. ``nvidia-h200-sm90``."""
        text = re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")[:40]
        return f"{text}-sm{self.compute_capability[0]}{self.compute_capability[1]}"

    def __str__(self) -> str:
        return f"{self.name} ({self.sm})"


@dataclass(frozen=True)
class EngineKey:
    """Everything a stored engine must match to be loaded (see the module docstring)."""

    kind: str
    source_sha256: str
    tensorrt_version: str
    gpu: GpuIdentity
    precision: str
    profiles: tuple[ProfileShape, ...]
    optimization_level: int = 3
    refittable: bool = False
    weight_stripped: bool = False
    key_version: int = field(default=KEY_VERSION)
    bf16_layers: int = 0  # bf16 keys: BF16_LAYERS_VERSION (set when 0); other precisions: 0

    def __post_init__(self) -> None:
        if self.precision == "bf16" and self.bf16_layers == 0:
            object.__setattr__(self, "bf16_layers", BF16_LAYERS_VERSION)
        elif self.precision != "bf16" and self.bf16_layers != 0:
            raise ConfigError(f"bf16_layers is for bf16 engines only, got {self.bf16_layers} for {self.precision}")
        if self.kind not in ENGINE_KINDS:
            raise ConfigError(f"engine kind must be one of {', '.join(ENGINE_KINDS)}, got {self.kind!r}")
        if self.precision not in ENGINE_PRECISIONS:
            raise ConfigError(f"engine precision must be one of {', '.join(ENGINE_PRECISIONS)}, got {self.precision!r}")
        if not re.fullmatch(r"[0-9a-f]{64}", self.source_sha256):
            raise ConfigError(f"source_sha256 must be 64 lowercase hex digits, got {self.source_sha256!r}")
        if not self.profiles:
            raise ConfigError("an engine needs at least one optimisation profile")
        if not 0 <= self.optimization_level <= 5:
            raise ConfigError(f"builder optimisation level must be 0-5, got {self.optimization_level}")
        if self.weight_stripped and not self.refittable:
            raise ConfigError("a weight-stripped engine must be refittable (it is useless until refitted)")

    def to_json(self) -> dict[str, Any]:
        """Canonical JSON form (stored in the manifest, hashed by :meth:`digest`); ``bf16_layers`` only in a
        bf16 key, so the keys (and digests) of fp32 and fp16 engines are what they were."""
        extra = {"bf16_layers": self.bf16_layers} if self.precision == "bf16" else {}
        return extra | {
            "key_version": self.key_version,
            "kind": self.kind,
            "source_sha256": self.source_sha256,
            "tensorrt_version": self.tensorrt_version,
            "gpu_name": self.gpu.name,
            "compute_capability": list(self.gpu.compute_capability),
            "precision": self.precision,
            "profiles": [p.to_json() for p in self.profiles],
            "optimization_level": self.optimization_level,
            "refittable": self.refittable,
            "weight_stripped": self.weight_stripped,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EngineKey:
        """Parse a stored key; ConfigError if a field is missing or malformed."""
        try:
            cc = data["compute_capability"]
            return cls(
                kind=str(data["kind"]),
                source_sha256=str(data["source_sha256"]),
                tensorrt_version=str(data["tensorrt_version"]),
                gpu=GpuIdentity(str(data["gpu_name"]), (int(cc[0]), int(cc[1]))),
                precision=str(data["precision"]),
                profiles=tuple(ProfileShape.from_json(p) for p in data["profiles"]),
                optimization_level=int(data["optimization_level"]),
                refittable=bool(data["refittable"]),
                weight_stripped=bool(data["weight_stripped"]),
                key_version=int(data["key_version"]),
                bf16_layers=int(data.get("bf16_layers", 1)) if data["precision"] == "bf16" else 0,  # 1: before it
            )
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise ConfigError(f"malformed engine key {dict(data)!r}: {exc!r}") from exc

    @property
    def digest(self) -> str:
        """sha256 of the canonical JSON of the key."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    @property
    def file_name(self) -> str:
        """``<kind>-<precision>-<gpu slug>-trt<version>-<digest[:16]>.engine``."""
        version = re.sub(r"[^0-9.]", "", self.tensorrt_version) or "unknown"
        return f"{self.kind}-{self.precision}-{self.gpu.slug}-trt{version}-{self.digest[:16]}.engine"


def _profiles_text(profiles: tuple[ProfileShape, ...]) -> str:
    return "; ".join(f"min {p.min} opt {p.opt} max {p.max}" for p in profiles)


def explain_mismatch(stored: EngineKey, wanted: EngineKey) -> list[str]:
    """Why an engine built for ``stored`` must not serve ``wanted``: one phrase per differing field.

    An empty list means the keys are equal (the engine may be used).
    """
    reasons: list[str] = []
    if stored.key_version != wanted.key_version:
        reasons.append(f"engine key format {stored.key_version}, this adassr uses {wanted.key_version}")
    if stored.kind != wanted.kind:
        reasons.append(f"a {stored.kind} engine, a {wanted.kind} engine is needed")
    if stored.tensorrt_version != wanted.tensorrt_version:
        reasons.append(f"built with TensorRT {stored.tensorrt_version}, this is TensorRT {wanted.tensorrt_version}")
    if stored.gpu != wanted.gpu:
        reasons.append(f"built for {stored.gpu}, this GPU is {wanted.gpu}")
    if stored.source_sha256 != wanted.source_sha256:
        what = "network structure" if wanted.kind == "base" and wanted.weight_stripped else "ONNX model"
        reasons.append(
            f"built from {what} {stored.source_sha256[:12]}..., the current one is {wanted.source_sha256[:12]}..."
        )
    if stored.precision != wanted.precision:
        reasons.append(f"precision {stored.precision}, {wanted.precision} is wanted")
    elif stored.bf16_layers != wanted.bf16_layers:
        reasons.append(f"bf16 layer set {stored.bf16_layers} (fewer layers kept in fp32), {wanted.bf16_layers} is "
                       "wanted")
    if stored.profiles != wanted.profiles:
        reasons.append(f"profiles {_profiles_text(stored.profiles)}, wanted {_profiles_text(wanted.profiles)}")
    if stored.optimization_level != wanted.optimization_level:
        reasons.append(f"optimisation level {stored.optimization_level}, {wanted.optimization_level} is wanted")
    if (stored.refittable, stored.weight_stripped) != (wanted.refittable, wanted.weight_stripped):
        reasons.append(
            f"refittable={stored.refittable} weight_stripped={stored.weight_stripped}, wanted "
            f"refittable={wanted.refittable} weight_stripped={wanted.weight_stripped}"
        )
    return reasons
