"""Backbone architectures and the explicit backbone registry."""

from __future__ import annotations

from adassr.adapt.archs.registry import (
    DEFAULT_BACKBONE,
    ArchParams,
    BackboneEntry,
    BackboneRegistry,
    SafetensorsSource,
    WeightSource,
    default_registry,
)
from adassr.adapt.archs.rrdbnet import RRDB, ResidualDenseBlock, RRDBNet

__all__ = [
    "DEFAULT_BACKBONE",
    "RRDB",
    "ArchParams",
    "BackboneEntry",
    "BackboneRegistry",
    "RRDBNet",
    "ResidualDenseBlock",
    "SafetensorsSource",
    "WeightSource",
    "default_registry",
]
