"""Load test of ``adassr serve``: 1, 4, 16 and 64 concurrent clients over mixed sizes and cameras.

Usage (from the repository root)::

    PYTHONPATH=. python benchmarks/serve_load.py [--duration 20] [--clients 1,4,16,64]
        [--workers 4] [--max-queue 12] [--max-models N] [--out-dir benchmarks/results]

What it does:

1. Builds a store in a temporary folder with three cameras (``_fallback``, ``canon``, ``nokia``),
   each a small convolutional x4 ONNX model (3 conv layers of 32 channels, DepthToSpace, plus a
   linear-upscale residual; different fixed random weights per camera), so the run measures the
   server (HTTP, decode, tiling, batching, encode) with a model that still costs real compute.
   ``--store DIR`` benchmarks an existing store instead (e.g. the exported Real-ESRGAN models:
   seconds per image on a CPU).
2. Inputs: crops of the bundled camera photos (Canon, Nokia, Nintendo: the last has no model and
   is served by the fallback) at several sizes, EXIF Make kept, so requests route by camera.
3. Reference outputs: ``adassr upscale`` (the CLI's code path) with the server's tiling options
   writes a PNG for every input; every response is compared with it (byte-identical, else the
   decoded pixels must be within 1/255); a mismatch counts as a corrupt response.
4. Starts ``adassr serve`` as a subprocess on a loopback port and, for each client count, runs
   that many clients (asyncio + httpx, one connection each) for ``--duration`` seconds. A client
   sends the next input, waits for the answer, and on 429 waits 50 ms before its next request.
5. Reports per client count: completed images/s, output megapixels/s, p50/p95/p99 latency of the
   successful requests as the clients saw it and as the server measured it
   (``X-Adassr-Latency-Ms``), counts by status (and transport errors / client timeouts), corrupt
   responses, the server's RSS (peak so far, from /proc) and the CPU it used (cores = CPU seconds
   per wall second; images per server CPU second: how efficiently it worked, independent of
   how much CPU other processes left it). With ``--workers 4 --max-queue 12``
   the server admits 16 requests, so 64 clients are a 4x overload.

Targets (checked and printed): 16 clients reach at least 1.3x the images/s of 1 client; no lost
or corrupt responses; at 64 clients every non-200 is a 429 (no 5xx, no timeouts).
Results: ``<out-dir>/serve_load_<machine>.md`` and ``.json`` (``_max-models-N`` added with ``--max-models``).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from script_cli import (  # noqa: E402
    existing_dir,
    int_at_least,
    non_negative_int,
    output_dir,
    positive_float,
    positive_int,
    run_script,
)

SAMPLES = ROOT / "samples" / "cameras"
SCALE = 4
TILE, OVERLAP = 64, 16
SOURCES = (
    ("canon", SAMPLES / "canon" / "flower.jpg"),
    ("nokia", SAMPLES / "nokia" / "iptc.jpg"),
    ("nintendo", SAMPLES / "nintendo" / "sugarshack.mpo"),
)
SIZES = ((64, 64), (96, 128), (128, 128), (160, 120))


def build_model(seed: int, channels: int = 32) -> bytes:
    """A small x4 SR model: conv3x3(3->c) LReLU conv3x3(c->c) LReLU conv3x3(c->48) DepthToSpace(4) + linear x4."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    chans = [3, channels, channels, 3 * SCALE * SCALE]
    nodes, inits, h = [], [], "lr"
    for k in range(3):
        gain = 0.02 if k == 2 else np.sqrt(2.0 / (9 * chans[k]))
        w = (rng.standard_normal((chans[k + 1], chans[k], 3, 3)) * gain).astype(np.float32)
        inits += [
            numpy_helper.from_array(w, f"w{k}"),
            numpy_helper.from_array(np.zeros(chans[k + 1], np.float32), f"b{k}"),
        ]
        nodes.append(helper.make_node("Conv", [h, f"w{k}", f"b{k}"], [f"c{k}"], pads=[1, 1, 1, 1]))
        h = f"c{k}"
        if k < 2:
            nodes.append(helper.make_node("LeakyRelu", [h], [f"a{k}"], alpha=0.2))
            h = f"a{k}"
    nodes.append(helper.make_node("DepthToSpace", [h], ["res"], blocksize=SCALE, mode="CRD"))
    inits.append(numpy_helper.from_array(np.array([1, 1, SCALE, SCALE], np.float32), "scales"))
    nodes.append(helper.make_node("Resize", ["lr", "", "scales"], ["base"], mode="linear"))
    nodes.append(helper.make_node("Add", ["base", "res"], ["sr"]))
    graph = helper.make_graph(
        nodes,
        "bench_sr",
        [helper.make_tensor_value_info("lr", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("sr", TensorProto.FLOAT, ["N", 3, "SH", "SW"])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="adassr-bench")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model.SerializeToString()


def build_store(root: Path) -> None:
    from adassr.runtime.store import CameraStore

    for seed, camera in enumerate(("_fallback", "canon", "nokia")):
        store = CameraStore.open(root, camera, create=True)
        data = build_model(seed)
        store.publish("model.onnx", lambda p, data=data: p.write_bytes(data), stage="export")
        record = {"file": "model.onnx", "scale": SCALE, "precision": "fp32", "input_name": "lr", "output_name": "sr"}

        def _update(manifest: dict[str, Any], record: dict[str, Any] = record) -> None:
            manifest["scale"] = SCALE
            manifest.setdefault("exports", {})["onnx"] = record

        store.update_manifest(_update)


def make_inputs() -> list[tuple[str, bytes]]:
    from PIL import Image

    inputs = []
    for k, (name, path) in enumerate(SOURCES):
        with Image.open(path) as im:
            exif = im.getexif()
            exif[0x0112] = 1
            rgb = im.convert("RGB")
            for j, (w, h) in enumerate(SIZES):
                x, y = 40 + 37 * j + 11 * k, 30 + 23 * j
                buf = io.BytesIO()
                rgb.crop((x, y, x + w, y + h)).save(buf, format="JPEG", quality=90, exif=exif.tobytes())
                inputs.append((f"{name}_{w}x{h}", buf.getvalue()))
    return inputs


def reference_outputs(store: Path, inputs: list[tuple[str, bytes]], work: Path) -> dict[str, bytes]:
    """What ``adassr upscale`` writes for every input, with the server's tiling options."""
    from adassr.runtime.upscale_cli import add_upscale_arguments, run_upscale

    src, dst = work / "in", work / "cli"
    src.mkdir()
    for name, data in inputs:
        (src / f"{name}.jpg").write_bytes(data)
    parser = argparse.ArgumentParser()
    add_upscale_arguments(parser)
    args = parser.parse_args(
        [
            "-i",
            str(src),
            "-o",
            str(dst),
            "--store",
            str(store),
            "--tile",
            str(TILE),
            "--tile-overlap",
            str(OVERLAP),
            "--ext",
            "png",
            "--no-progress",
            "--threads",
            "1",
        ]
    )
    code = run_upscale(args, stdout=io.StringIO(), stderr=io.StringIO())
    if code != 0:
        raise SystemExit("the CLI failed to make the reference outputs")
    return {name: (dst / f"{name}.png").read_bytes() for name, _ in inputs}


def _decode(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im).astype(np.int32)


def matches(response: bytes, reference: bytes) -> tuple[bool, bool]:
    """(acceptable, byte-identical)."""
    if response == reference:
        return True, True
    try:
        a, b = _decode(response), _decode(reference)
    except Exception:  # noqa: BLE001 - an undecodable response is corrupt
        return False, False
    return a.shape == b.shape and int(np.abs(a - b).max()) <= 1, False


@dataclass
class LevelStats:
    clients: int
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    output_pixels: int = 0
    identical: int = 0
    within_1: int = 0
    corrupt: int = 0
    corrupt_names: list[str] = field(default_factory=list)
    server_rss_mb: float = 0.0
    server_peak_rss_mb: float = 0.0
    server_cpu_s: float = 0.0


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds the process has used (all threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> tuple[float, float]:
    text = Path(f"/proc/{pid}/status").read_text()
    rss = int(re.search(r"VmRSS:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    hwm = int(re.search(r"VmHWM:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    return rss / 1024, hwm / 1024


async def run_level(
    url: str,
    clients: int,
    duration: float,
    inputs: list[tuple[str, bytes]],
    refs: dict[str, tuple[str, int]],
    timeout: float,
    pid: int,
) -> tuple[LevelStats, list[tuple[str, bytes]]]:
    import httpx

    stats = LevelStats(clients)
    suspicious: list[tuple[str, bytes]] = []
    stop = time.monotonic() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as client:

        async def worker(k: int) -> None:
            i = k
            while time.monotonic() < stop:
                name, data = inputs[i % len(inputs)]
                i += 1
                started = time.monotonic()
                try:
                    r = await client.post("/v1/upscale", content=data)
                except httpx.TimeoutException:
                    stats.statuses["timeout"] = stats.statuses.get("timeout", 0) + 1
                    continue
                except httpx.TransportError as exc:
                    key = f"transport:{type(exc).__name__}"
                    stats.statuses[key] = stats.statuses.get(key, 0) + 1
                    continue
                elapsed = time.monotonic() - started
                stats.statuses[str(r.status_code)] = stats.statuses.get(str(r.status_code), 0) + 1
                if r.status_code == 200:
                    stats.latencies.append(elapsed)
                    stats.server_latencies.append(float(r.headers.get("x-adassr-latency-ms", "nan")))
                    digest, pixels = refs[name]
                    stats.output_pixels += pixels
                    if hashlib.sha256(r.content).hexdigest() == digest:
                        stats.identical += 1
                    elif len(suspicious) < 200:
                        suspicious.append((name, r.content))
                    else:
                        stats.corrupt += 1  # cannot keep more for checking: count as not verified
                elif r.status_code == 429:
                    await asyncio.sleep(0.05)

        async def sample_rss() -> None:
            while time.monotonic() < stop:
                rss, peak = _rss_mb(pid)
                stats.server_rss_mb = max(stats.server_rss_mb, rss)
                stats.server_peak_rss_mb = peak
                await asyncio.sleep(0.25)

        t0 = time.monotonic()
        cpu0 = _cpu_s(pid)
        await asyncio.gather(sample_rss(), *(worker(k) for k in range(clients)))
        stats.seconds = time.monotonic() - t0
        stats.server_cpu_s = _cpu_s(pid) - cpu0
    stats.server_peak_rss_mb = _rss_mb(pid)[1]
    return stats, suspicious


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def summarise(stats: LevelStats) -> dict[str, Any]:
    lat = np.array(stats.latencies) * 1000 if stats.latencies else np.array([np.nan])
    srv = np.array(stats.server_latencies) if stats.server_latencies else np.array([np.nan])
    ok = stats.statuses.get("200", 0)
    return {
        "clients": stats.clients,
        "seconds": round(stats.seconds, 2),
        "ok": ok,
        "images_per_s": round(ok / stats.seconds, 3),
        "output_mp_per_s": round(stats.output_pixels / 1e6 / stats.seconds, 3),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p95_ms": round(float(np.percentile(lat, 95)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
        "server_p50_ms": round(float(np.percentile(srv, 50)), 1),
        "server_p99_ms": round(float(np.percentile(srv, 99)), 1),
        "statuses": dict(sorted(stats.statuses.items())),
        "byte_identical": stats.identical,
        "within_1_of_255": stats.within_1,
        "corrupt": stats.corrupt,
        "corrupt_names": stats.corrupt_names[:10],
        "server_rss_mb_max": round(stats.server_rss_mb, 1),
        "server_cpu_cores": round(stats.server_cpu_s / stats.seconds, 2),
        "images_per_server_cpu_s": round(ok / max(1e-9, stats.server_cpu_s), 2),
        "server_peak_rss_mb": round(stats.server_peak_rss_mb, 1),
    }


def client_counts(text: str) -> list[int]:
    """``--clients``: comma-separated client counts, each >= 1."""
    counts = [int_at_least(1)(part.strip()) for part in text.split(",") if part.strip()]
    if not counts:
        raise argparse.ArgumentTypeError(f"expected comma-separated client counts, got {text!r}")
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=positive_float, default=20.0,
                        help="seconds per client count, > 0 (default 20)")
    parser.add_argument("--clients", type=client_counts, default="1,4,16,64",
                        help="comma-separated client counts, each >= 1 (default 1,4,16,64)")
    parser.add_argument("--workers", type=positive_int, default=4)
    parser.add_argument("--max-queue", type=non_negative_int, default=12)
    parser.add_argument("--max-models", type=non_negative_int, default=0,
                        help="serve --max-models (default 0: every model open); 1 with the three cameras makes "
                        "most requests load their model")
    parser.add_argument("--max-batch", type=positive_int, default=4)
    parser.add_argument("--threads", type=positive_int, default=1,
                        help="onnxruntime threads per model call (default 1)")
    parser.add_argument(
        "--inference-threads", type=positive_int, default=os.cpu_count() or 1,
        help="model calls at once (default: one per core)"
    )
    parser.add_argument("--timeout", type=positive_float, default=60.0,
                        help="client timeout per request, s, > 5: the server's is 5 s less (default 60)")
    parser.add_argument("--store", type=existing_dir, default=None,
                        help="benchmark this store instead of the built one")
    parser.add_argument("--out-dir", type=output_dir, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    if args.timeout <= 5:
        parser.error(f"--timeout must be more than 5 s (the server's request timeout is 5 s less), "
                     f"got {args.timeout:g}")
    from adassr.export.bench import machine_name
    from adassr.runtime.store import atomic_write_bytes

    levels = args.clients
    with tempfile.TemporaryDirectory(prefix="adassr-serve-load-") as tmp:
        work = Path(tmp)
        store = args.store or work / "store"
        if args.store is None:
            build_store(store)
        inputs = make_inputs()
        started = time.monotonic()
        ref_bytes = reference_outputs(store, inputs, work)
        print(f"reference outputs from the CLI: {len(ref_bytes)} images in {time.monotonic() - started:.1f} s")
        refs = {
            name: (hashlib.sha256(data).hexdigest(), int(_decode(data).shape[0] * _decode(data).shape[1]))
            for name, data in ref_bytes.items()
        }
        port = _free_port()
        env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS=str(args.threads))
        cmd = [
            sys.executable,
            "-m",
            "adassr.cli",
            "serve",
            "--store",
            str(store),
            "--port",
            str(port),
            "--tile",
            str(TILE),
            "--tile-overlap",
            str(OVERLAP),
            "--workers",
            str(args.workers),
            "--max-queue",
            str(args.max_queue),
            "--max-batch",
            str(args.max_batch),
            "--threads",
            str(args.threads),
            "--inference-threads",
            str(args.inference_threads),
            "--request-timeout",
            str(args.timeout - 5),
            "--max-models",
            str(args.max_models),
        ]
        server = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        url = f"http://127.0.0.1:{port}"
        results: list[dict[str, Any]] = []
        try:
            import httpx

            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline or server.poll() is not None:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
            asyncio.run(run_level(url, 2, 3.0, inputs, refs, args.timeout, server.pid))  # warm-up
            for clients in levels:
                stats, suspicious = asyncio.run(
                    run_level(url, clients, args.duration, inputs, refs, args.timeout, server.pid)
                )
                for name, data in suspicious:  # not byte-identical: decode and compare within 1/255
                    ok, _ = matches(data, ref_bytes[name])
                    if ok:
                        stats.within_1 += 1
                    else:
                        stats.corrupt += 1
                        stats.corrupt_names.append(name)
                row = summarise(stats)
                results.append(row)
                print(json.dumps(row))
            metrics = httpx.get(f"{url}/metrics", timeout=10).text
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(60)
            except subprocess.TimeoutExpired:
                server.kill()
    batches = {
        m.group(1): float(m.group(2)) for m in re.finditer(r"adassr_batch_tiles_(count|sum) ([0-9.e+]+)", metrics)
    }
    mean_batch = batches.get("sum", 0) / max(1.0, batches.get("count", 1))
    by = {r["clients"]: r for r in results}
    checks: dict[str, Any] = {}
    if 1 in by and 16 in by:
        ratio = by[16]["images_per_s"] / max(1e-9, by[1]["images_per_s"])
        checks["throughput_16_vs_1"] = round(ratio, 2)
        checks["throughput_target_met"] = ratio >= 1.3
        checks["cpu_efficiency_16_vs_1"] = round(
            by[16]["images_per_server_cpu_s"] / max(1e-9, by[1]["images_per_server_cpu_s"]), 2
        )
    checks["no_corrupt_responses"] = all(r["corrupt"] == 0 for r in results)
    if 64 in by:
        bad = {k: v for k, v in by[64]["statuses"].items() if k not in ("200", "429")}
        checks["overload_only_429"] = not bad
        checks["overload_other_statuses"] = bad
    machine = machine_name()
    load = os.getloadavg()
    result = {
        "machine": machine,
        "load_average_at_end": [round(x, 2) for x in load],
        "note": "measured while other jobs shared the machine's cores unless the load average says otherwise",
        "model": "3-conv x4 (32 channels) per camera" if args.store is None else f"store {args.store}",
        "server": {
            "workers": args.workers,
            "max_queue": args.max_queue,
            "max_batch": args.max_batch,
            "threads": args.threads,
            "inference_threads": args.inference_threads,
            "max_models": args.max_models,
            "tile": TILE,
            "overlap": OVERLAP,
        },
        "inputs": [name for name, _ in inputs],
        "duration_s": args.duration,
        "levels": results,
        "mean_tiles_per_model_call": round(mean_batch, 2),
        "checks": checks,
    }
    cap = f", at most {args.max_models} models open" if args.max_models else ""
    lines = [
        "# adassr serve under load",
        "",
        f"Machine: {machine}; load average at the end {load[0]:.2f} (the server and its clients "
        "share the cores; a load above that means other jobs ran too). Model: "
        + result["model"] + f"; {len(inputs)} inputs (3 cameras, 4 sizes 64x64-160x120), "
        f"tile {TILE}/overlap {OVERLAP}; server workers {args.workers}, queue {args.max_queue}, "
        f"batch {args.max_batch}, {args.inference_threads} model calls at once x {args.threads} onnxruntime "
        f"threads{cap}; {args.duration:g} s per level.",
        "",
        "| clients | images/s | output MP/s | p50 ms | p95 ms | p99 ms | server-side p50 / p99 ms | statuses "
        "| identical / within 1/255 / corrupt | server RSS max / peak MB | server CPU (cores) "
        "| images per server CPU-s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        statuses = ", ".join(f"{k}: {v}" for k, v in r["statuses"].items())
        lines.append(
            f"| {r['clients']} | {r['images_per_s']} | {r['output_mp_per_s']} | {r['p50_ms']} | {r['p95_ms']} | "
            f"{r['p99_ms']} | {r['server_p50_ms']} / {r['server_p99_ms']} | {statuses} | "
            f"{r['byte_identical']} / {r['within_1_of_255']} / {r['corrupt']} | "
            f"{r['server_rss_mb_max']} / {r['server_peak_rss_mb']} | {r['server_cpu_cores']} | "
            f"{r['images_per_server_cpu_s']} |"
        )
    lines += [
        "",
        f"Mean tiles per model call over the run: {mean_batch:.2f}.",
        "",
        "Checks: " + ", ".join(f"{k} = {v}" for k, v in checks.items()) + ".",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    slug = re.sub(r"[^a-z0-9]+", "-", machine.lower()).strip("-") + (f"_max-models-{args.max_models}"
                                                                      if args.max_models else "")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out_dir / f"serve_load_{slug}.json", (json.dumps(result, indent=2) + "\n").encode())
    atomic_write_bytes(args.out_dir / f"serve_load_{slug}.md", text.encode())


if __name__ == "__main__":
    run_script(main)
