"""The structure hash of an ONNX model: what a weight-stripped TensorRT base engine is keyed by.

Two exports of one backbone that differ only in their weight values (two cameras adapted from
it) have the same structure hash, so one refittable engine serves both after a refit. The
implementation lives in the torch-free runtime (:mod:`adassr.runtime.engines.onnx_weights`), which
also compares two exports weight by weight; see there for what the hash covers.
"""

from __future__ import annotations

from adassr.runtime.engines.onnx_weights import structure_sha256

__all__ = ["structure_sha256"]
