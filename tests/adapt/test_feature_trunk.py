"""The weight maps' trunk in onnxruntime (adapt/archs/rrdbnet_onnx.py, adapt/feature_trunk.py):
the hand-written graph computes what ``RRDBNet.trunk_features`` computes, with random weights of
other sizes and with the real backbone on a real photo, and is chosen only on an fp32 CPU."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from adassr.adapt import feature_trunk as feature_trunk_module
from adassr.adapt.archs.rrdbnet import RRDBNet
from adassr.adapt.archs.rrdbnet_onnx import trunk_graph
from adassr.adapt.attention import compute_weight_map
from adassr.adapt.config import AttentionConfig
from adassr.adapt.feature_trunk import OnnxRuntimeTrunk, feature_trunk
from adassr.adapt.precision import Precision
from adassr.runtime.errors import BackendError
from adassr.runtime.images import read_image, to_float32

pytest.importorskip("onnxruntime", reason="the onnxruntime trunk needs adassr[cpu]")

ROOT = Path(__file__).resolve().parents[2]
CPU = torch.device("cpu")
FP32 = Precision("fp32", "cpu")


def _photo(width: int, height: int) -> np.ndarray:
    image = to_float32(read_image(ROOT / "tests/data/hr/coffee.png").pixels)[..., :3]
    return np.ascontiguousarray(cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA))


def _torch_features(model: RRDBNet, image: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model.trunk_features(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None])


@pytest.mark.parametrize(("feat", "blocks", "grow", "in_ch"), [(32, 1, 16, 3), (16, 3, 8, 3), (8, 2, 4, 1)])
def test_graph_matches_the_module_with_random_weights(feat: int, blocks: int, grow: int, in_ch: int) -> None:
    torch.manual_seed(blocks)
    model = RRDBNet(num_in_ch=in_ch, num_feat=feat, num_block=blocks, num_grow_ch=grow).eval()
    with torch.no_grad():  # larger weights than the default init, so every residual path matters
        for p in model.parameters():
            p.mul_(3.0)
    image = _photo(45, 31)[..., :in_ch]
    got = OnnxRuntimeTrunk(model, threads=1)(image)
    want = _torch_features(model, image)
    assert got.shape == want.shape == (1, feat, 31, 45) and got.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    graph = trunk_graph(model)
    names = {i.name for i in graph.graph.initializer}
    upsampler = ("conv_up1.", "conv_up2.", "conv_hr.", "conv_last.")
    assert names - {"residual_scale"} == {n for n in model.state_dict() if not n.startswith(upsampler)}


def test_real_backbone_gives_the_same_features_and_weight_map_on_a_real_photo() -> None:
    from adassr.adapt.weights import load_backbone

    model = load_backbone().model
    image = _photo(64, 43)
    trunk = feature_trunk(model, device=CPU, precision=FP32)
    assert isinstance(trunk, OnnxRuntimeTrunk)
    got = trunk(image)
    want = _torch_features(model, image)
    scale = float(want.abs().max())
    assert scale > 0.1
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * scale)
    config = AttentionConfig(pool=4)
    onnx_map = compute_weight_map(model, image, config, device=CPU, precision=FP32, trunk=trunk)
    torch_map = compute_weight_map(model, image, config, device=CPU, precision=FP32)
    assert onnx_map.std() > 0.01  # a real map, not a constant
    np.testing.assert_allclose(onnx_map, torch_map, rtol=1e-3, atol=1e-3)


def test_session_keeps_the_weights_of_its_first_call() -> None:
    torch.manual_seed(1)
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    image = _photo(20, 14)
    trunk = OnnxRuntimeTrunk(model, threads=1)
    first = trunk(image)
    with torch.no_grad():
        model.conv_first.bias.add_(1.0)
    torch.testing.assert_close(trunk(image), first)


def test_onnxruntime_is_chosen_only_on_an_fp32_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    image = _photo(20, 14)
    assert isinstance(feature_trunk(model, device=CPU, precision=FP32), OnnxRuntimeTrunk)
    bf16 = feature_trunk(model, device=CPU, precision=Precision("bf16", "cpu"))
    assert not isinstance(bf16, OnnxRuntimeTrunk)
    assert bf16(image).shape == (1, 8, 14, 20)
    monkeypatch.setattr(feature_trunk_module, "_onnxruntime_available", lambda: False)
    fallback = feature_trunk(model, device=CPU, precision=FP32)
    assert not isinstance(fallback, OnnxRuntimeTrunk)
    torch.testing.assert_close(fallback(image), _torch_features(model, image), rtol=1e-4, atol=1e-5)


def test_bad_input_and_settings_are_refused() -> None:
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    with pytest.raises(BackendError, match="threads"):
        OnnxRuntimeTrunk(model, threads=0)
    with pytest.raises(BackendError, match="H x W x 3"):
        OnnxRuntimeTrunk(model)(np.zeros((8, 8), np.float32))


def test_an_image_with_the_wrong_channel_count_is_refused_before_onnxruntime_runs() -> None:
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    with pytest.raises(BackendError, match="H x W x 3"):
        OnnxRuntimeTrunk(model, threads=1)(np.zeros((8, 8, 4), np.float32))
    gray = RRDBNet(num_in_ch=1, num_feat=8, num_block=1, num_grow_ch=4).eval()
    with pytest.raises(BackendError, match="H x W x 1"):
        OnnxRuntimeTrunk(gray, threads=1)(_photo(20, 14))


def test_the_session_runs_on_the_requested_threads_and_on_pytorchs_by_default() -> None:
    from adassr.runtime.cpu_info import intra_op_threads

    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    image = _photo(20, 14)
    other = intra_op_threads() + 1  # differs from the default, so the setting must be the one used
    trunk = OnnxRuntimeTrunk(model, threads=other)
    trunk(image)
    assert trunk._session.get_session_options().intra_op_num_threads == other
    before = torch.get_num_threads()
    torch.set_num_threads(other)
    try:
        chosen = feature_trunk(model, device=CPU, precision=FP32)
        chosen(image)
    finally:
        torch.set_num_threads(before)
    assert isinstance(chosen, OnnxRuntimeTrunk)
    assert chosen._session.get_session_options().intra_op_num_threads == other


def test_without_onnxruntime_the_trunk_is_pytorchs(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # `import onnxruntime` now raises ImportError
    assert not feature_trunk_module._onnxruntime_available()
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    assert not isinstance(feature_trunk(model, device=CPU, precision=FP32), OnnxRuntimeTrunk)


def test_the_pytorch_trunk_computes_in_the_given_precision() -> None:
    from adassr.adapt.attention import trunk_features

    torch.manual_seed(2)
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    image = _photo(20, 14)
    bf16 = Precision("bf16", "cpu")
    got = feature_trunk(model, device=CPU, precision=bf16)(image)
    torch.testing.assert_close(got, trunk_features(model, image, device=CPU, precision=bf16), rtol=0, atol=0)
    assert float((got - _torch_features(model, image)).abs().max()) > 1e-4  # not the fp32 features


def test_graph_declares_the_channels_of_its_input_and_output() -> None:
    model = RRDBNet(num_in_ch=1, num_feat=8, num_block=1, num_grow_ch=4)
    graph = trunk_graph(model).graph

    def dims(value: object) -> list[object]:
        return [d.dim_value or d.dim_param for d in value.type.tensor_type.shape.dim]  # type: ignore[attr-defined]

    assert dims(graph.input[0]) == [1, 1, "height", "width"]
    assert dims(graph.output[0]) == [1, 8, "height", "width"]


def test_a_half_precision_model_gives_a_float32_graph() -> None:
    import copy

    from onnx import TensorProto

    torch.manual_seed(3)
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval().half()
    image = _photo(20, 14)
    want = OnnxRuntimeTrunk(copy.deepcopy(model).float(), threads=1)(image)  # the fp16 weights, in fp32
    graph = trunk_graph(model)
    assert {i.data_type for i in graph.graph.initializer} == {TensorProto.FLOAT}
    torch.testing.assert_close(OnnxRuntimeTrunk(model, threads=1)(image), want)


def test_a_float64_image_gives_the_float32_features() -> None:
    torch.manual_seed(4)
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    image = _photo(20, 14)
    trunk = OnnxRuntimeTrunk(model, threads=1)
    torch.testing.assert_close(trunk(image.astype(np.float64)), trunk(image))


def test_a_graph_onnxruntime_cannot_load_is_a_backend_error() -> None:
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    model.conv_body = torch.nn.Conv2d(8, 6, 3, padding=1)  # 6 channels cannot be added to conv_first's 8
    with pytest.raises(BackendError, match="cannot load the trunk graph"):
        OnnxRuntimeTrunk(model, threads=1)(_photo(20, 14))


def test_a_graph_onnxruntime_loads_but_cannot_run_is_a_backend_error() -> None:
    """Errors while the session runs (a failed allocation, a kernel whose shape the graph's weights contradict)
    escaped as onnxruntime's own exception types; they are BackendErrors naming the image's size."""
    model = RRDBNet(num_feat=8, num_block=1, num_grow_ch=4).eval()
    model.conv_first = torch.nn.Conv2d(3, 8, (3, 1), padding=(1, 0))  # the graph declares 3x3 kernels
    with pytest.raises(BackendError, match="onnxruntime failed on the trunk of the weight maps for a 20x14 image"):
        OnnxRuntimeTrunk(model, threads=1)(_photo(20, 14))
