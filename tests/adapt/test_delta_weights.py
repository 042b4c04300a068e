"""Per-camera weights stored as a delta on the backbone: round trip, size, refusal of another backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from adassr.adapt.archs.registry import ArchParams, BackboneEntry, WeightSource
from adassr.adapt.weights import load_safetensors_weights, save_delta_weights, save_safetensors_weights
from adassr.adapt.weights.state import LoadedBackbone, assemble, state_dict_sha256
from adassr.runtime.errors import WeightsError

TINY = BackboneEntry(name="tiny-test", scale=4, arch=ArchParams(num_feat=16, num_block=3, num_grow_ch=8),
                     source=WeightSource("none", "none", "none.param", "none.bin"), licence="test only",
                     description="tiny random-weight RRDBNet for tests")
TAIL = ("body.2.", "conv_body.", "conv_up1.", "conv_up2.", "conv_hr.", "conv_last.")


def _backbone(seed: int) -> LoadedBackbone:
    torch.manual_seed(seed)
    return assemble(TINY, TINY.build().state_dict(), source=f"random seed {seed}")


def _adapted(backbone: LoadedBackbone) -> dict[str, torch.Tensor]:
    """The backbone with only its tail changed, as tail training does."""
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    for key in state:
        if key.startswith(TAIL):
            state[key] += 0.01 * torch.randn(state[key].shape, generator=torch.Generator().manual_seed(len(key)))
    return state


def test_delta_round_trip_holds_only_the_changed_tensors(tmp_path: Path) -> None:
    backbone = _backbone(0)
    adapted = _adapted(backbone)
    delta_file, full_file = tmp_path / "delta.safetensors", tmp_path / "full.safetensors"
    digest = save_delta_weights(delta_file, adapted, backbone)
    assert digest == save_safetensors_weights(full_file, adapted, TINY) == state_dict_sha256(adapted)
    assert delta_file.stat().st_size < 0.6 * full_file.stat().st_size
    loaded = load_safetensors_weights(delta_file, TINY, base=backbone)
    assert loaded.weights_sha256 == digest
    for key, value in loaded.model.state_dict().items():
        assert torch.equal(value, adapted[key]), key
    x = torch.rand(1, 3, 12, 12)
    with torch.no_grad():
        reference = TINY.build()
        reference.load_state_dict(adapted)
        assert torch.equal(loaded.model(x), reference.eval()(x))


def test_delta_on_other_backbone_weights_is_refused(tmp_path: Path) -> None:
    backbone = _backbone(0)
    path = tmp_path / "delta.safetensors"
    save_delta_weights(path, _adapted(backbone), backbone)
    with pytest.raises(WeightsError, match="refusing to combine them"):
        load_safetensors_weights(path, TINY, base=_backbone(1))


def test_unchanged_weights_make_an_empty_delta_that_rebuilds_the_backbone(tmp_path: Path) -> None:
    backbone = _backbone(0)
    path = tmp_path / "delta.safetensors"
    save_delta_weights(path, backbone.model.state_dict(), backbone)
    loaded = load_safetensors_weights(path, TINY, base=backbone)
    assert loaded.weights_sha256 == backbone.weights_sha256


def test_a_tampered_delta_fails_its_digest(tmp_path: Path) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    backbone = _backbone(0)
    path = tmp_path / "delta.safetensors"
    save_delta_weights(path, _adapted(backbone), backbone)
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    tensors = load_file(str(path))
    key = sorted(tensors)[0]
    tensors[key] = tensors[key] + 1.0
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(WeightsError, match="corrupt"):
        load_safetensors_weights(path, TINY, base=backbone)


def test_a_backbone_trained_in_place_is_no_base_for_a_delta(tmp_path: Path) -> None:
    """The delta of a model against itself was empty, written, and then refused as corrupt at load."""
    backbone = _backbone(0)
    with torch.no_grad():
        backbone.model.conv_last.weight.add_(0.01)  # adapted in place, as a training loop does
    with pytest.raises(WeightsError, match="trained in place.*base_state"):
        save_delta_weights(tmp_path / "d.safetensors", backbone.model, backbone)
    assert not (tmp_path / "d.safetensors").exists()


def test_a_zero_that_only_changed_sign_is_in_the_delta(tmp_path: Path) -> None:
    """torch.equal(-0.0, 0.0) left the tensor out while the digest hashes the bits: 'the file is corrupt'."""
    backbone = _backbone(0)
    base = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    base["conv_last.bias"][0] = -0.0
    backbone = assemble(TINY, base, source="with a negative zero")
    adapted = {k: v.clone() for k, v in base.items()}
    adapted["conv_last.bias"][0] = 0.0
    path = tmp_path / "d.safetensors"
    digest = save_delta_weights(path, adapted, backbone)
    assert load_safetensors_weights(path, TINY, base=backbone).weights_sha256 == digest


def test_weights_with_nan_are_never_saved(tmp_path: Path) -> None:
    backbone = _backbone(0)
    adapted = _adapted(backbone)
    adapted["conv_last.weight"][0, 0, 0, 0] = float("nan")
    with pytest.raises(WeightsError, match="'conv_last.weight' has NaN or infinite values"):
        save_delta_weights(tmp_path / "d.safetensors", adapted, backbone)
    with pytest.raises(WeightsError, match="NaN or infinite"):
        save_safetensors_weights(tmp_path / "f.safetensors", adapted, TINY)


def test_equal_weights_give_equal_files(tmp_path: Path) -> None:
    """safetensors writes its metadata keys in a hash map's order, which changes between calls: the same
    seed's adaptation published a weights file of other bytes (another content-addressed name, its
    exports dropped) although its weights were identical (a helper's hunt of reproducibility)."""
    backbone = _backbone(0)
    adapted = _adapted(backbone)
    delta_files = {save_delta_weights(tmp_path / f"d{k}.safetensors", adapted, backbone) for k in range(6)}
    assert len(delta_files) == 1
    assert len({(tmp_path / f"d{k}.safetensors").read_bytes() for k in range(6)}) == 1
    for k in range(6):
        save_safetensors_weights(tmp_path / f"f{k}.safetensors", adapted, TINY)
    assert len({(tmp_path / f"f{k}.safetensors").read_bytes() for k in range(6)}) == 1
    loaded = load_safetensors_weights(tmp_path / "f0.safetensors", TINY)  # still a valid file with its metadata
    assert state_dict_sha256(loaded.model.state_dict()) == state_dict_sha256(adapted)


def test_a_delta_keeps_the_metadata_it_was_given(tmp_path: Path) -> None:
    from safetensors import safe_open

    backbone = _backbone(0)
    path = tmp_path / "delta.safetensors"
    save_delta_weights(path, _adapted(backbone), backbone, metadata={"camera": "nokia"})
    with safe_open(str(path), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["camera"] == "nokia" and meta["backbone_weights_sha256"] == backbone.weights_sha256


def test_a_delta_that_does_not_name_its_backbone_weights_is_refused(tmp_path: Path) -> None:
    """Without the backbone's digest a delta would be combined with any backbone weights."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    backbone = _backbone(0)
    path = tmp_path / "delta.safetensors"
    save_delta_weights(path, _adapted(backbone), backbone)
    with safe_open(str(path), framework="pt") as handle:
        meta = dict(handle.metadata())
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118 - a safetensors handle
    del meta["backbone_weights_sha256"], meta["weights_sha256"]
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(WeightsError, match="refusing to combine them"):
        load_safetensors_weights(path, TINY, base=backbone)
