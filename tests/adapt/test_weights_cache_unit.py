"""The backbone cache file itself: which files read_cached_state accepts, and where the cache lives."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from adassr.adapt.weights import CACHE_ENV, default_cache_dir
from adassr.adapt.weights.cache import CACHE_FORMAT, read_cached_state, write_cached_state
from adassr.adapt.weights.state import state_dict_sha256

META = {"backbone": "tiny", "source_bin_sha256": "a" * 64, "source_param_sha256": "b" * 64}


def _state() -> dict[str, torch.Tensor]:
    return {"conv.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "conv.bias": torch.ones(2)}


def _shapes(state: dict[str, torch.Tensor]) -> dict[str, torch.Size]:
    return {key: value.shape for key, value in state.items()}


def test_a_valid_cache_file_round_trips(tmp_path: Path) -> None:
    state = _state()
    digest = write_cached_state(tmp_path / "tiny.safetensors", state, META)
    got = read_cached_state(tmp_path / "tiny.safetensors", META, _shapes(state))
    assert got is not None and got[1] == digest
    assert all(torch.equal(got[0][key], state[key]) for key in state)


def test_a_cache_of_other_shapes_is_refused_even_with_a_matching_checksum(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state = _state()
    write_cached_state(tmp_path / "tiny.safetensors", state, META)
    shapes = {**_shapes(state), "conv.weight": torch.Size([3, 2])}
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.weights.cache"):
        assert read_cached_state(tmp_path / "tiny.safetensors", META, shapes) is None
    assert any("unusable" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize(
    "stored",
    [
        {**META, "format": "adassr-backbone-cache/0"},  # another cache format version
        {"backbone": "tiny", "format": CACHE_FORMAT},  # no source checksums recorded
    ],
    ids=["other-format", "missing-source-sha"],
)
def test_a_cache_whose_metadata_is_missing_or_of_another_format_is_stale(tmp_path: Path,
                                                                       stored: dict[str, str]) -> None:
    state = _state()
    save_file(state, str(tmp_path / "tiny.safetensors"),
              metadata={**stored, "weights_sha256": state_dict_sha256(state)})
    assert read_cached_state(tmp_path / "tiny.safetensors", META, _shapes(state)) is None


def test_a_folder_at_the_cache_path_is_unusable_not_an_error(tmp_path: Path) -> None:
    (tmp_path / "tiny.safetensors").mkdir()
    assert read_cached_state(tmp_path / "tiny.safetensors", META, _shapes(_state())) is None


def test_cache_dir_variable_expands_the_home_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv(CACHE_ENV, "~/adassr-cache")
    assert default_cache_dir() == tmp_path / "home" / "adassr-cache"
