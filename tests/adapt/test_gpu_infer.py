"""The PyTorch GPU inference modes, checked on the CPU where they exist there and on CUDA when present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adassr.adapt.archs.rrdbnet import RRDBNet
from adassr.adapt.gpu_infer import TorchRunner, TorchRunOptions
from adassr.runtime.errors import ConfigError


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return RRDBNet(num_feat=8, num_block=1, num_grow_ch=4)


def _batch() -> np.ndarray:
    return np.random.default_rng(0).random((2, 3, 12, 10), dtype=np.float32)


def test_channels_last_fp32_matches_the_plain_model() -> None:
    model = _model()
    with torch.no_grad():
        want = model(torch.from_numpy(_batch())).numpy()
    got = TorchRunner(_model(), TorchRunOptions(channels_last=True))(_batch())
    assert got.dtype == np.float32 and got.shape == (2, 3, 48, 40)
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_bf16_on_cpu_is_close_to_fp32() -> None:
    want = TorchRunner(_model(), TorchRunOptions())(_batch())
    got = TorchRunner(_model(), TorchRunOptions(precision="bf16", channels_last=True))(_batch())
    assert got.dtype == np.float32
    assert 0 < np.abs(got - want).max() < 0.1


@pytest.mark.parametrize("options, message", [
    ({"cuda_graph": True}, "CUDA graphs need a CUDA device"),
    ({"precision": "fp16"}, "fp16 inference needs a CUDA device"),
    ({"precision": "int8"}, "precision must be one of"),
])
def test_cpu_refuses_modes_it_cannot_run(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        TorchRunOptions(**options)  # type: ignore[arg-type]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_cuda_graph_replays_match_eager(precision: str) -> None:
    eager = TorchRunner(_model(), TorchRunOptions("cuda", precision, channels_last=True))
    graph = TorchRunner(_model(), TorchRunOptions("cuda", precision, channels_last=True, cuda_graph=True))
    for seed in (1, 2):
        batch = np.random.default_rng(seed).random((2, 3, 16, 16), dtype=np.float32)
        np.testing.assert_allclose(graph(batch), eager(batch), atol=1e-3)


def test_gpu_flag_names_the_devices_that_exist(capsys: pytest.CaptureFixture[str]) -> None:
    from adassr.cli import main

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA devices")
    assert main(["adapt", "--camera", "nokia", "--gpu", "1"]) == 2
    assert "--gpu 1 is not available: this machine has no CUDA device visible to torch" in capsys.readouterr().err
