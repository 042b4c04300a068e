"""Processes that the fault tests kill: run as ``python -m tests.faults._workers KIND ARGS`` from the repo root."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def store_writer(root: str, payload_bytes: int, pause_s: float = 0.0) -> None:
    """Publish generation after generation of two artifacts plus a manifest note, forever.

    Each generation's files start with ``gen=<n>;`` and the manifest records ``generation: n``,
    so a reader can tell whether what it sees belongs to one generation (consistent) or mixes two.
    """
    from adassr.runtime.store import CameraStore

    store = CameraStore.open(root, "cam", create=True)
    while True:
        body = os.urandom(payload_bytes)
        with store.transaction(timeout_s=30) as tx:
            generation = int(tx.manifest.get("generation", 0)) + 1
            for name in ("a.bin", "b.bin"):
                head = f"gen={generation};{name};".encode()
                tx.stage(name, lambda p, data=head + body: p.write_bytes(data), stage="test")
            tx.commit(lambda m, g=generation: m.update({"generation": g}))
        print(generation, flush=True)
        time.sleep(pause_s)  # let the other writer's lock poll in (real writers are far apart)


def export(root: str, camera: str, precision: str) -> None:
    from adassr.export.onnx import export_camera
    from tests.export.test_onnx_export import REGISTRY

    export_camera(root, camera, precision=precision, registry=REGISTRY)
    print("done", flush=True)


def adapt(weights_dir: str, images: str, store: str, steps: str, *extra: str) -> None:
    """``adapt --camera nokia`` through the real CLI, with the tiny backbone of the interrupt tests."""
    import functools

    import torch

    import adassr.adapt.config as config
    import adassr.adapt.run as run
    from adassr.cli import main as cli_main
    from tests.adapt.test_adapt_interrupt import tiny_registry

    torch.set_num_threads(1)
    defaults = config.cpu_demo_defaults
    # No early stop: the run must still be training when the test's signal arrives.
    config.cpu_demo_defaults = lambda *a, **k: defaults(*a, **k).with_overrides(  # type: ignore[assignment]
        stop_patience=1_000_000)
    registry = tiny_registry(Path(weights_dir))
    run.adapt_camera = functools.partial(run.adapt_camera, registry=registry)  # type: ignore[assignment]
    argv = ["adapt", "--camera", "nokia", "--images", images, "--store", store, "--backbone", "tiny",
            "--steps", steps, "--eval-every", "1", "--patch", "12", "--eval-crop", "48", "--lambda-perceptual", "0",
            "--feature-bank", "4", *extra]
    raise SystemExit(cli_main(argv))


def main() -> None:
    kind, *args = sys.argv[1:]
    sys.path.insert(0, str(Path.cwd()))
    if kind == "store-writer":
        store_writer(args[0], int(args[1]), float(args[2]) if len(args) > 2 else 0.0)
    elif kind == "export":
        export(*args)
    elif kind == "adapt":
        adapt(*args)
    else:
        raise SystemExit(f"unknown worker {kind!r}")


if __name__ == "__main__":
    main()
