"""Speed of the numpy NIQE reference (target: 1-megapixel image <= 1 s) and of the torch port.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/niqe_speed.py [--machine NAME]
        [--repeats 5] [--torch-device cpu|cuda] [--out-dir benchmarks/results]

Inputs: a 1000x1000 (1.0 MP) centre crop and the full 2000x1072 (2.1 MP) frame of
``samples/cameras/canon/xmp_test.jpg``. Reports the median wall time over ``--repeats``
runs after one warm-up, a per-stage breakdown of the numpy path for the 1 MP image,
and the torch time (CUDA synchronised) on ``--torch-device``. Also prints both scores so
a speed change that alters results is visible.

Results: ``<out-dir>/niqe_speed_<machine>.md`` and ``.json`` (atomic writes), the machine named in
them (default: the detected CPU and the GPU of ``--torch-device cuda``) and in the file name, so one
machine's run does not replace another's (``niqe_speed.md`` is the first run's, on an AMD EPYC).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from script_cli import output_dir, positive_int, run_script  # noqa: E402

IMAGE = ROOT / "samples" / "cameras" / "canon" / "xmp_test.jpg"


def _median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    result = fn()  # warm-up (caches of imresize taps and AGGD tables)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _stages(luma: np.ndarray, repeats: int) -> dict[str, float]:
    from adassr.adapt.quality import niqe as n

    h, w = (s // n.BLOCK_SIZE * n.BLOCK_SIZE for s in luma.shape)
    img = luma[:h, :w]
    sd1, _ = n.mscn(img)
    half = n.matlab_imresize(img)
    sd2, _ = n.mscn(half)
    feats = np.concatenate([n.block_features(sd1, 96), n.block_features(sd2, 48)], axis=1)
    stages = {
        "mscn (both scales)": lambda: (n.mscn(img), n.mscn(half)),
        "imresize 0.5": lambda: n.matlab_imresize(img),
        "block features (both scales)": lambda: (n.block_features(sd1, 96), n.block_features(sd2, 48)),
        "MVG distance": lambda: n.niqe_distance(feats),
    }
    return {name: _median_time(fn, repeats)[0] for name, fn in stages.items()}


def _torch_time(pixels: np.ndarray, device: str, repeats: int) -> tuple[float, float]:
    import torch

    from adassr.adapt.quality.niqe_torch import niqe_torch

    x = torch.from_numpy(pixels.astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0).to(device)

    def run() -> float:
        out = niqe_torch(x)
        if x.is_cuda:
            torch.cuda.synchronize()
        return float(out[0])

    t, score = _median_time(run, repeats)
    return t, float(score)  # type: ignore[arg-type]


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def torch_device(text: str) -> str:
    """``--torch-device``: ``cpu``, or ``cuda`` / ``cuda:N`` of a GPU torch sees."""
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; pass cpu or cuda (cuda:N)") from None
    if device.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"{text!r}: this benchmark runs on cpu or cuda (cuda:N)")
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= count:
            have = f"CUDA devices 0-{count - 1}" if count else "no CUDA GPU visible to torch"
            raise argparse.ArgumentTypeError(f"{text!r} is not available: this machine has {have}; pass cpu")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--machine", default=None,
                        help="name of this machine for the record (default: the detected CPU, and the GPU when "
                             "--torch-device is a CUDA device)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed runs per measurement (>= 1)")
    parser.add_argument("--torch-device", type=torch_device, default="cpu", help="cpu or cuda[:N] (default cpu)")
    parser.add_argument("--out-dir", type=output_dir, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    from adassr.adapt.quality.niqe import niqe, to_luma
    from adassr.export.bench import machine_name
    from adassr.runtime.cpu_info import report_tag

    if args.machine is None:
        args.machine = f"CPU {machine_name()}"
        if args.torch_device.startswith("cuda"):
            import torch

            args.machine += f", GPU {torch.cuda.get_device_name(torch.device(args.torch_device))}"
        else:
            args.machine += ", torch on the CPU"
    tag = report_tag(args.machine)
    from adassr.runtime.images import read_image

    full = read_image(IMAGE).pixels
    h, w = full.shape[:2]
    top, left = (h - 1000) // 2, (w - 1000) // 2
    crops = {"1000x1000 (1.0 MP)": full[top : top + 1000, left : left + 1000], f"{w}x{h} ({w * h / 1e6:.1f} MP)": full}

    rows = []
    for label, pixels in crops.items():
        t_np, score_np = _median_time(lambda p=pixels: niqe(p), args.repeats)
        t_torch, score_torch = _torch_time(pixels, args.torch_device, args.repeats)
        rows.append({"image": label, "numpy_s": t_np, "numpy_niqe": score_np,
                     f"torch_{args.torch_device}_s": t_torch, "torch_niqe": score_torch})
    stages = _stages(to_luma(crops["1000x1000 (1.0 MP)"]), args.repeats)

    import torch

    record = {
        "machine": args.machine,
        "load_average_1min": os.getloadavg()[0],
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "torch_device": args.torch_device,
        "repeats": args.repeats,
        "source_image": str(IMAGE.relative_to(ROOT)),
        "rows": rows,
        "numpy_stages_1mp_s": stages,
    }
    md = [f"# NIQE speed ({args.machine})", "",
          f"Python {record['python']}, numpy {record['numpy']}, torch {record['torch']} "
          f"({record['torch_threads']} threads), median of {args.repeats} runs after a warm-up; "
          f"1-min load average {record['load_average_1min']:.1f} (shared machine).",
          f"Source: `{record['source_image']}`. Target: numpy NIQE of a 1 MP image <= 1 s.", "",
          f"| image | numpy (s) | torch {args.torch_device} (s) | NIQE numpy | NIQE torch |",
          "|---|---|---|---|---|"]
    for r in rows:
        md.append(f"| {r['image']} | {r['numpy_s']:.3f} | {r[f'torch_{args.torch_device}_s']:.3f} | "
                  f"{r['numpy_niqe']:.6f} | {r['torch_niqe']:.6f} |")
    md += ["", "numpy stages, 1 MP image:", "", "| stage | s |", "|---|---|"]
    md += [f"| {k} | {v:.3f} |" for k, v in stages.items()]
    text = "\n".join(md) + "\n"
    print(text)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(args.out_dir / f"niqe_speed_{tag}.md", text)
    _atomic_write(args.out_dir / f"niqe_speed_{tag}.json", json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    run_script(main)
