"""The upscaler registry: names, duplicates, the runtime's own entries and their whole-run checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from adassr.runtime.errors import ConfigError, StoreError
from adassr.runtime.pipeline import RuntimeOptions, Upscaler
from adassr.runtime.upscalers import UpscalerEntry, require_store, runtime_upscalers


@pytest.mark.parametrize("name", ["", "Half", " half", "half two"])
def test_an_upscaler_name_must_be_lower_case_without_spaces(name: str) -> None:
    with pytest.raises(ConfigError, match="must be non-empty, lower-case, without spaces"):
        UpscalerEntry(name, Upscaler, "test")


def test_a_taken_name_is_refused_and_the_runtime_entries_stay() -> None:
    upscalers = runtime_upscalers()
    with pytest.raises(ConfigError, match="'onnxruntime' is already registered"):
        upscalers.register(UpscalerEntry("onnxruntime", Upscaler, "another"))
    assert upscalers.names() == ("onnxruntime", "tensorrt")
    assert upscalers.get("onnxruntime").help == "exported ONNX models from the store"
    assert upscalers.get("onnxruntime").any_size is True
    assert upscalers.get("tensorrt").any_size is False  # fixed-shape engines: tiles are padded


def test_the_store_check_refuses_a_missing_store(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="does not exist"):
        require_store(RuntimeOptions(store=tmp_path / "nowhere"), camera=None, samples=())
