"""TensorRT engine bookkeeping: cache keys, profile planning, the engine cache and refit records.

Everything here is pure Python (no TensorRT, no CUDA): which engine a machine may load, where it
lives, when it must be rebuilt and why. Building, refitting and running engines is in
:mod:`adassr.runtime.engines.trt` and :mod:`adassr.runtime.backends.tensorrt`, which import
``tensorrt`` only when called.
"""

from __future__ import annotations

from adassr.runtime.engines.cache import BuildOutput, EngineCache, EngineRecord, Lookup, match_records
from adassr.runtime.engines.key import ENGINE_PRECISIONS, EngineKey, GpuIdentity, ProfileShape, explain_mismatch
from adassr.runtime.engines.profiles import ProfilePlan, exact_profile, plan_profiles, select_profile

__all__ = [
    "ENGINE_PRECISIONS", "BuildOutput", "EngineCache", "EngineKey", "EngineRecord", "GpuIdentity", "Lookup",
    "ProfilePlan", "ProfileShape", "exact_profile", "explain_mismatch", "match_records", "plan_profiles",
    "select_profile",
]
