"""``adassr serve --max-models``: parked models opened at their first request, least recently used
ones closed, models closed once no request uses them (real tiny ONNX models, real onnxruntime)."""

from __future__ import annotations

import concurrent.futures as cf
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from adassr.runtime.backends import Backend
from adassr.runtime.errors import BackendError, ConfigError
from adassr.runtime.images import LoadedImage, read_image
from adassr.runtime.routing import RouteDecision, resolve_model
from adassr.runtime.server import models as models_module
from adassr.runtime.server.config import ServerConfig
from adassr.runtime.server.models import ModelRegistry, ModelUnavailable, UnknownCamera, default_opener
from adassr.runtime.store import FALLBACK_CAMERA

from ._models import publish_camera
from ._server import SAMPLES, running_server, small_jpeg_with_exif

TILE, OVERLAP = 32, 8


class _Tracked(Backend):
    """A real onnxruntime model that tells its opener when it is closed."""

    def __init__(self, inner: Backend, camera: str, closed: list[str]) -> None:
        super().__init__(inner.model_path)
        self.inner, self.camera, self.closed = inner, camera, closed

    @property
    def name(self) -> str:
        return "tracked"

    def _open(self) -> None:
        self.inner.open()

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.infer(batch)

    def _close(self) -> None:
        self.inner.close()
        self.closed.append(self.camera)


class Opener:
    """Opens real models, counts the models that opened and the closes; ``failing`` cameras raise,
    ``gate`` holds opens, ``before_open(route)`` runs as an open begins."""

    def __init__(self) -> None:
        self.real = default_opener("onnxruntime", providers=("CPUExecutionProvider",), threads=1)
        self.attempts: list[str] = []  # every open begun
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.failing: set[str] = set()
        self.gate: threading.Event | None = None
        self.before_open: Callable[[RouteDecision], None] | None = None
        self.entered = threading.Event()
        self._lock = threading.Lock()

    def __call__(self, route: RouteDecision) -> Backend:
        camera = route.model_camera
        with self._lock:
            self.attempts.append(camera)
        if self.gate is not None:
            self.entered.set()
            assert self.gate.wait(30)
        if self.before_open is not None:
            self.before_open(route)
        if camera in self.failing:
            raise BackendError(f"onnxruntime could not open the model of {camera} (out of memory)")
        # counted once open: an open that fails (its file removed by a newer version's commit) leaves nothing to
        # close (counted before, it made the many-threads test below see a model "leaked", once in 60 runs)
        backend = _Tracked(self.real(route), camera, self.closed).open()
        with self._lock:
            self.opened.append(camera)
        return backend


@pytest.fixture()
def store(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    for seed, camera in enumerate((FALLBACK_CAMERA, "canon", "nikon", "sony")):
        publish_camera(root, camera, seed=seed)
    return root


@pytest.fixture()
def image(tmp_path: Path) -> LoadedImage:
    """A real Canon JPEG (EXIF Make ``Canon``), small."""
    path = tmp_path / "canon.jpg"
    path.write_bytes(small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40))
    return read_image(path)


def _registry(store: Path, opener: Opener, max_models: int, evicted: list[str] | None = None) -> ModelRegistry:
    registry = ModelRegistry(store, open_model=opener, max_models=max_models,
                             on_evict=None if evicted is None else evicted.append)
    registry.refresh()
    return registry


def _serve(registry: ModelRegistry, camera: str | None, image: LoadedImage) -> str:
    """Route one request and run its model once; return the camera whose model served."""
    with registry.serving(camera, image) as route:
        out = route.model.backend.infer(np.zeros((1, 3, 8, 8), np.float32))
        assert out.shape == (1, 3, 32, 32)
        return route.model.camera


def test_parked_models_open_at_their_first_request_and_the_least_recently_used_closes(
    store: Path, image: LoadedImage
) -> None:
    opener, evicted = Opener(), []
    registry = _registry(store, opener, 2, evicted)
    assert opener.opened == [] and dict(registry.models) == {}
    assert set(registry.parked) == {FALLBACK_CAMERA, "canon", "nikon", "sony"}
    listing = registry.listing()
    assert set(listing) == registry.servable() and not any(entry["loaded"] for entry in listing.values())
    assert all(entry["loaded_at"] is None and len(entry["sha256"]) == 64 for entry in listing.values())

    assert _serve(registry, "nikon", image) == "nikon"
    assert _serve(registry, None, image) == "canon"  # routed by the JPEG's EXIF Make
    assert _serve(registry, "nikon", image) == "nikon"  # open: not opened again
    assert opener.opened == ["nikon", "canon"] and opener.closed == []
    assert _serve(registry, "sony", image) == "sony"  # a third: canon is the least recently used
    assert opener.closed == ["canon"] and evicted == ["canon"]
    assert set(registry.models) == {"nikon", "sony"} and "canon" in registry.parked
    assert registry.listing()["sony"]["loaded"] and not registry.listing()["canon"]["loaded"]
    assert _serve(registry, None, image) == "canon"  # opened again at its next request
    assert opener.opened == ["nikon", "canon", "sony", "canon"] and opener.closed == ["canon", "nikon"]
    assert len(registry.models) == 2 and registry.servable() == {FALLBACK_CAMERA, "canon", "nikon", "sony"}


def test_a_model_in_use_closes_when_its_last_request_ends(store: Path, image: LoadedImage) -> None:
    opener = Opener()
    registry = _registry(store, opener, 1)
    with registry.serving("nikon", image) as held:
        assert _serve(registry, "sony", image) == "sony"  # nikon evicted while a request uses it
        assert "nikon" in registry.parked and opener.closed == []
        assert held.model.backend.infer(np.zeros((1, 3, 8, 8), np.float32)).shape == (1, 3, 32, 32)
        with registry.serving("nikon", image) as again:  # opened again: a model of its own
            assert again.model is not held.model and again.model.sha256 == held.model.sha256
            assert again.model.key != held.model.key  # the batcher never mixes their tiles
        assert opener.closed == ["sony"]
    assert opener.closed == ["sony", "nikon"] and set(registry.models) == {"nikon"}


def test_a_replaced_model_closes_after_its_requests_in_either_mode(store: Path, image: LoadedImage) -> None:
    for max_models in (0, 2):
        opener = Opener()
        registry = _registry(store, opener, max_models)
        with registry.serving("canon", image) as held:
            old = held.model
            publish_camera(store, "canon", seed=11 + max_models)  # re-exported while a request runs
            assert registry.refresh() is True
            new = registry.models["canon"]  # a loaded camera's new version opens at once
            assert new is not old and new.sha256 != old.sha256
            assert old.backend.is_open and "canon" not in opener.closed
        assert opener.closed == ["canon"] and not old.backend.is_open and new.backend.is_open
        assert _serve(registry, "canon", image) == "canon"


def _four_requests_while_it_opens(registry: ModelRegistry, opener: Opener, camera: str, image: LoadedImage, *,
                                  settle_s: float = 0.0) -> None:
    """Four requests for a parked ``camera`` at once, its load held until ``settle_s`` after it began
    (time for the other three to wait on it); each is served by it."""
    opener.gate = threading.Event()
    with cf.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(_serve, registry, camera, image) for _ in range(4)]
        assert opener.entered.wait(30)
        time.sleep(settle_s)
        opener.gate.set()
        assert [f.result(timeout=60) for f in futures] == [camera] * 4


def test_requests_for_one_parked_model_open_it_once(store: Path, image: LoadedImage) -> None:
    opener = Opener()
    _four_requests_while_it_opens(_registry(store, opener, 2), opener, "nikon", image)
    assert opener.opened == ["nikon"]


def test_a_model_that_fails_to_open_is_503_then_retried_and_exif_requests_fall_back(
    store: Path, image: LoadedImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    opener, errors, loads = Opener(), [], []
    registry = ModelRegistry(store, open_model=opener, max_models=2, on_error=errors.append,
                             on_load=lambda camera, ok: loads.append((camera, ok)))
    registry.refresh()
    opener.failing.add("canon")
    with pytest.raises(ModelUnavailable) as caught:
        _serve(registry, "canon", image)
    assert "out of memory" in str(caught.value) and 0 < caught.value.retry_after_s <= models_module.ON_DEMAND_RETRY_S
    assert str(store) not in str(caught.value)
    assert "out of memory" in registry.problems["canon"] and errors == ["model_load"]
    assert loads == [("canon", False)]
    # within the retry time: no second attempt; a request routed by EXIF Make gets the fallback
    with pytest.raises(ModelUnavailable):
        _serve(registry, "canon", image)
    with registry.serving(None, image) as route:
        assert route.model.camera == FALLBACK_CAMERA and "could not be loaded" in route.reason
    assert loads == [("canon", False), (FALLBACK_CAMERA, True)]
    # the retry time passed and the cause is gone: it loads, and the problem is cleared
    opener.failing.clear()
    monkeypatch.setattr(models_module, "ON_DEMAND_RETRY_S", 0.0)
    assert _serve(registry, "canon", image) == "canon"
    assert "canon" not in registry.problems and loads[-1] == ("canon", True)


def test_a_parked_model_changed_on_disk_is_refused_not_served(store: Path, image: LoadedImage) -> None:
    opener, errors = Opener(), []
    registry = ModelRegistry(store, open_model=opener, max_models=2, on_error=errors.append)
    registry.refresh()
    path = registry.parked["sony"].onnx_path
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))  # after the refresh verified it, before its first request
    with pytest.raises(ModelUnavailable, match="checksum"):
        _serve(registry, "sony", image)
    assert opener.opened == [] and errors == ["model_checksum"]


def test_a_parked_version_removed_while_it_opens_gives_way_to_the_newest(store: Path, image: LoadedImage) -> None:
    """Two re-exports between a request's check of a parked model and its open remove that version's files
    (a camera keeps its previous version's files only): the request is served by the newest version, and no
    failure is counted or shown."""
    opener, errors, loads = Opener(), [], []
    registry = ModelRegistry(store, open_model=opener, max_models=2, on_error=errors.append,
                             on_load=lambda camera, ok: loads.append((camera, ok)))
    registry.refresh()
    old = registry.parked["sony"]

    def republish_twice(route: RouteDecision) -> None:
        if route.sha256 == old.sha256:
            publish_camera(store, "sony", seed=41)
            publish_camera(store, "sony", seed=42)

    opener.before_open = republish_twice
    with registry.serving("sony", image) as route:
        newest = resolve_model(store, camera="sony", precision="fp32", verify=False).sha256
        assert route.model.sha256 == newest != old.sha256
    assert not old.onnx_path.exists()  # the version checked was gone when it opened
    assert opener.attempts == ["sony", "sony"] and opener.opened == ["sony"]
    assert errors == [] and loads == [("sony", True)]
    assert "sony" not in registry.problems and set(registry.models) == {"sony"}


def test_new_versions_and_removed_cameras_while_parked(store: Path, image: LoadedImage) -> None:
    opener = Opener()
    registry = _registry(store, opener, 2)
    before = registry.parked["nikon"].sha256
    publish_camera(store, "nikon", seed=21)
    assert registry.refresh() is True
    after = registry.parked["nikon"].sha256
    assert after != before and opener.opened == []  # verified, not opened
    with registry.serving("nikon", image) as route:
        assert route.model.sha256 == after
    (store / "sony" / "manifest.json").unlink()
    assert registry.refresh() is True
    assert "sony" not in registry.servable()
    with pytest.raises(UnknownCamera, match="cameras: canon, nikon"):
        _serve(registry, "sony", image)


def test_an_unknown_camera_names_why_its_model_was_refused(store: Path, image: LoadedImage) -> None:
    path = next((store / "sony").glob("*.onnx"))
    path.write_bytes(path.read_bytes()[:-10])  # fails its checksum at the refresh
    for item in (store / "sony").iterdir():  # written long ago: damage, not a copy still going on
        os.utime(item, (time.time() - 3600, time.time() - 3600))
    registry = _registry(store, Opener(), 0)
    with pytest.raises(UnknownCamera, match=r"Its model was refused: .*checksum"):
        _serve(registry, "sony", image)


def test_max_models_is_checked() -> None:
    with pytest.raises(ConfigError, match="max_models"):
        ModelRegistry(Path("."), open_model=Opener(), max_models=-1)
    with pytest.raises(ConfigError, match="max_models"):
        ServerConfig(store=Path("."), max_models=True)  # type: ignore[arg-type]


def _metric(text: str, name: str, labels: str) -> float:
    match = re.search(re.escape(name) + r"\{" + re.escape(labels) + r"\} ([0-9.e+-]+)", text)
    return float(match.group(1)) if match else 0.0


@pytest.fixture()
def client_for(store: Path) -> Iterator[tuple[httpx.Client, Opener]]:
    opener = Opener()
    config = ServerConfig(store=store, tile=TILE, overlap=OVERLAP, threads=1, max_models=1)
    with running_server(config, open_model=opener) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        yield c, opener


def test_the_http_server_with_max_models(client_for: tuple[httpx.Client, Opener]) -> None:
    c, opener = client_for
    canon = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40)
    ready = c.get("/readyz").json()
    assert ready == {"status": "ready", "models": 4, "loaded": 0}
    listed = c.get("/v1/cameras").json()
    assert listed["max_models"] == 1 and listed["fallback"] is True
    assert {name: entry["loaded"] for name, entry in listed["cameras"].items()} == dict.fromkeys(
        (FALLBACK_CAMERA, "canon", "nikon", "sony"), False)
    r = c.post("/v1/upscale", content=canon)
    assert r.status_code == 200 and r.headers["x-adassr-camera-group"] == "canon"
    r2 = c.post("/v1/upscale?camera=nikon", content=canon)
    assert r2.status_code == 200 and r2.headers["x-adassr-model"].startswith("nikon/")
    assert opener.opened == ["canon", "nikon"]
    listed = c.get("/v1/cameras").json()["cameras"]
    assert listed["nikon"]["loaded"] and not listed["canon"]["loaded"]
    metrics = c.get("/metrics").text
    assert _metric(metrics, "adassr_model_evictions_total", 'camera="canon"') == 1
    assert re.search(r"^adassr_models_loaded 1\.0$", metrics, re.M)
    opener.failing.add("sony")
    r3 = c.post("/v1/upscale?camera=sony", content=canon)
    assert r3.status_code == 503 and r3.json()["error"] == "model_unavailable"
    assert int(r3.headers["retry-after"]) >= 1 and "out of memory" in r3.json()["message"]
    assert "out of memory" in c.get("/v1/cameras").json()["refused"]["sony"]


def test_serve_refuses_a_negative_max_models_by_its_option(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from adassr.cli import main

    assert main(["serve", "--store", str(store), "--max-models", "-2"]) == 2
    err = capsys.readouterr().err
    assert "--max-models" in err and "max_models" not in err


@pytest.mark.parametrize("max_models", [2, 0])
def test_many_threads_over_more_cameras_than_the_limit_leave_no_model_open_behind(
    store: Path, image: LoadedImage, max_models: int
) -> None:
    opener = Opener()
    registry = _registry(store, opener, max_models)
    cameras = [FALLBACK_CAMERA, "canon", "nikon", "sony"]
    rng = np.random.default_rng(3)
    plan = [cameras[i] for i in rng.integers(0, len(cameras), 160)]

    def serve_and_refresh(k: int, camera: str) -> str:
        if k % 40 == 0:  # a re-export now and then, while requests run
            publish_camera(store, camera, seed=100 + k)
            registry.refresh()
        return _serve(registry, camera, image)

    with cf.ThreadPoolExecutor(8) as pool:
        served = list(pool.map(serve_and_refresh, range(len(plan)), plan))
    assert served == plan
    assert len(registry.models) <= (max_models or 4)
    still_open = sorted(model.camera for model in registry.models.values())
    assert sorted(opener.opened) == sorted(opener.closed + still_open)  # every other one was closed
    assert all(model.backend.is_open for model in registry.models.values())


def test_waiters_find_the_model_in_place_when_its_load_ends(
    store: Path, image: LoadedImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The waiters of a load woke before the model was put in place: one that ran in that gap opened the
    model a second time (a helper's hunt, reproduced by a pause after the wake-up)."""

    class SlowToReturn(threading.Event):
        def set(self) -> None:
            super().set()
            time.sleep(0.05)  # the loading thread preempted right after waking the waiters

    monkeypatch.setattr(models_module.threading, "Event", SlowToReturn)
    opener = Opener()
    _four_requests_while_it_opens(_registry(store, opener, 2), opener, "canon", image, settle_s=0.2)
    assert opener.opened == ["canon"] and opener.closed == []


def test_not_ready_while_every_parked_model_fails_and_ready_again_once_one_opens(
    store: Path, image: LoadedImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    opener = Opener()
    registry = _registry(store, opener, 2)
    assert registry.ready()
    opener.failing.update(registry.servable())  # e.g. a GPU that opens nothing
    for camera in sorted(registry.servable()):
        with pytest.raises(ModelUnavailable):
            _serve(registry, camera, image)
        assert registry.ready() == (camera != "sony")  # ready while one parked model has not failed
    assert registry.retry_failed() is False  # within the retry time: nothing tried
    opener.failing.clear()
    monkeypatch.setattr(models_module, "ON_DEMAND_RETRY_S", 0.0)
    assert registry.retry_failed() is True and registry.ready()
    assert opener.opened == [FALLBACK_CAMERA] and set(registry.models) == {FALLBACK_CAMERA}


def test_a_parked_camera_s_new_version_that_cannot_open_leaves_the_previous_one_serving(
    store: Path, image: LoadedImage
) -> None:
    opener = Opener()
    registry = _registry(store, opener, 2)
    old = registry.parked["sony"].sha256
    publish_camera(store, "sony", seed=31)  # a new version that verifies but will not open
    registry.refresh()
    new = registry.parked["sony"].sha256
    assert new != old
    real = opener.real

    def refuse_new(route: RouteDecision) -> Backend:
        if route.sha256 == new:
            raise BackendError("this engine cannot be built on this GPU")
        return real(route)

    opener.real = refuse_new
    with registry.serving("sony", image) as route:  # served by the previous version, as without --max-models
        assert route.model.sha256 == old
    assert "keeps serving" in registry.problems["sony"] and "cannot be built" in registry.problems["sony"]
    assert opener.attempts == ["sony", "sony"] and opener.opened == ["sony"]  # the new version, then the previous
    assert _serve(registry, "sony", image) == "sony" and opener.attempts == ["sony", "sony"]  # open: served
    _serve(registry, "canon", image)
    _serve(registry, "nikon", image)  # sony evicted: parked as its previous version
    with registry.serving("sony", image) as route:  # opened again: still the previous version, still said
        assert route.model.sha256 == old
    assert "keeps serving" in registry.problems["sony"]
    publish_camera(store, "sony", seed=32)  # a newer one that opens
    registry.refresh()
    with registry.serving("sony", image) as route:
        assert route.model.sha256 not in (old, new)
    assert "sony" not in registry.problems


def test_readyz_turns_503_when_no_model_opens_and_back_when_one_does(
    store: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opener = Opener()
    opener.failing.update({FALLBACK_CAMERA, "canon", "nikon", "sony"})
    config = ServerConfig(store=store, tile=TILE, overlap=OVERLAP, threads=1, max_models=2, reload_interval_s=0.1)
    canon = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40)
    with running_server(config, open_model=opener) as live, httpx.Client(base_url=live.url, timeout=60) as c:
        assert c.get("/readyz").status_code == 200
        for camera in ("_fallback", "canon", "nikon", "sony"):
            assert c.post(f"/v1/upscale?camera={camera}", content=canon).status_code == 503
        deadline = time.monotonic() + 20
        while c.get("/readyz").status_code != 503:
            assert time.monotonic() < deadline, "never turned not ready"
            time.sleep(0.05)
        opener.failing.clear()
        monkeypatch.setattr(models_module, "ON_DEMAND_RETRY_S", 0.0)  # the poll tries one again at once
        while c.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, "never ready again"
            time.sleep(0.05)
        assert c.get("/readyz").json() == {"status": "ready", "models": 4, "loaded": 1}


def test_parked_models_are_hashed_once_when_they_open_not_at_every_refresh(
    store: Path, image: LoadedImage, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store of hundreds of cameras starts at once: the refresh reads the manifests, the files are
    verified when they open (they were hashed at the refresh and again at the open)."""
    hashed: list[str] = []
    real = RouteDecision.verify

    def counting(self: RouteDecision) -> Path:
        hashed.append(self.model_camera)
        return real(self)

    monkeypatch.setattr(RouteDecision, "verify", counting)
    registry = _registry(store, Opener(), 2)
    assert hashed == [] and len(registry.parked) == 4
    publish_camera(store, "canon", seed=41)
    registry.refresh()
    assert hashed == []
    assert _serve(registry, "canon", image) == "canon" and hashed == ["canon"]
    eager = _registry(store, Opener(), 0)  # without --max-models every model is verified at the refresh
    assert sorted(hashed[1:]) == sorted(eager.models)


class _SlowCalls(Backend):
    """A model whose calls take 0.4 s and that notes when they end and when it is closed."""

    def __init__(self, path: Path, camera: str, events: list[str]) -> None:
        super().__init__(path)
        self.camera, self.events = camera, events

    @property
    def name(self) -> str:
        return "slow"

    def _open(self) -> None:
        pass

    def _infer(self, batch: np.ndarray) -> np.ndarray:
        time.sleep(0.4)
        self.events.append(f"{self.camera} call ended, open={self.is_open}")
        return np.zeros((batch.shape[0], 3, batch.shape[2] * 4, batch.shape[3] * 4), np.float32)

    def _close(self) -> None:
        self.events.append(f"{self.camera} closed")


def test_a_model_evicted_under_a_cancelled_request_closes_after_its_running_call(store: Path) -> None:
    """A request whose deadline passed while its tile ran let go of its model at once: evicted meanwhile,
    the model was closed while the batcher still ran a call on it (a helper's review)."""
    from adassr.runtime.server.scheduler import DeadlineExceeded, Ticket, TileBatcher

    events: list[str] = []
    registry = ModelRegistry(store, open_model=lambda r: _SlowCalls(r.onnx_path, r.model_camera, events).open(),
                             max_models=1)
    registry.refresh()
    batcher = TileBatcher(max_batch=1, max_wait_s=0.0, threads=2)
    tile = np.zeros((1, 3, 8, 8), np.float32)
    outcome: list[str] = []

    def request(camera: str, deadline_s: float) -> None:
        ticket = Ticket(time.monotonic() + deadline_s)
        try:
            with registry.serving(camera, None) as route:  # type: ignore[arg-type]  # explicit camera: no image read
                batcher.infer_fn(route.model.key, route.model.backend, ticket)(tile)
            outcome.append(f"{camera} ok")
        except DeadlineExceeded:
            outcome.append(f"{camera} deadline")

    try:
        first = threading.Thread(target=request, args=("canon", 0.15))
        first.start()
        time.sleep(0.05)  # canon's tile is inside its model call
        request("nikon", 30.0)  # opens nikon and evicts canon, still in use
        first.join(10)
    finally:
        batcher.close(10)
    assert sorted(outcome) == ["canon deadline", "nikon ok"]
    assert events.index("canon call ended, open=True") < events.index("canon closed")


def test_adassr_serve_with_max_models_says_so_and_serves(store: Path) -> None:
    """The real command: the banner names the cap, /readyz counts parked models, a request opens one."""
    import os
    import signal
    import subprocess
    import sys

    from ._server import free_ports

    (port,) = free_ports(1)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "adassr.cli", "serve", "--store", str(store), "--port", str(port), "--tile", "32",
         "--tile-overlap", "8", "--threads", "1", "--max-models", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            try:
                if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not get ready"
            time.sleep(0.1)
        assert httpx.get(f"{url}/readyz", timeout=5).json() == {"status": "ready", "models": 4, "loaded": 0}
        canon = small_jpeg_with_exif(SAMPLES / "canon" / "flower.jpg", 40)
        r = httpx.post(f"{url}/v1/upscale", content=canon, timeout=60)
        assert r.status_code == 200 and r.headers["x-adassr-camera-group"] == "canon"
        assert httpx.get(f"{url}/readyz", timeout=5).json()["loaded"] == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output
    assert "at most 2 models open); SIGTERM drains" in output


# -- what mutation testing changed unnoticed (each test fails under its mutant) ---------------------
def test_a_version_superseded_while_it_opens_is_not_installed(store: Path, image: LoadedImage) -> None:
    opener = Opener()
    registry = _registry(store, opener, 2)
    v1 = registry.parked["sony"].sha256
    done: list[int] = []

    def republish(route: RouteDecision) -> None:
        if route.sha256 == v1 and not done:
            done.append(1)
            publish_camera(store, "sony", seed=51)
            registry.refresh()  # parks the new version while the old one opens

    opener.before_open = republish
    with registry.serving("sony", image) as route:
        assert route.model.sha256 != v1
    assert registry.models["sony"].sha256 == registry.listing()["sony"]["sha256"] != v1


def test_a_model_that_opened_after_a_failure_is_not_refused_again_after_eviction(
        store: Path, image: LoadedImage, monkeypatch: pytest.MonkeyPatch) -> None:
    opener = Opener()
    registry = _registry(store, opener, 1)
    opener.failing.add("canon")
    with pytest.raises(ModelUnavailable):
        _serve(registry, "canon", image)
    opener.failing.clear()
    monkeypatch.setattr(models_module, "ON_DEMAND_RETRY_S", 0.0)
    assert _serve(registry, "canon", image) == "canon"  # opened: the failure is over
    monkeypatch.setattr(models_module, "ON_DEMAND_RETRY_S", 10.0)
    assert _serve(registry, "nikon", image) == "nikon"  # canon evicted
    assert _serve(registry, "canon", image) == "canon"  # opens again: no 503 from the old failure


def test_the_previous_version_is_verified_before_it_serves(store: Path, image: LoadedImage) -> None:
    opener = Opener()
    registry = _registry(store, opener, 2)
    old = registry.parked["sony"]
    publish_camera(store, "sony", seed=31)
    registry.refresh()
    new = registry.parked["sony"]
    assert new.sha256 != old.sha256
    old.onnx_path.write_bytes(new.onnx_path.read_bytes())  # the previous file replaced: fails its checksum
    real = opener.real

    def refuse_new(route: RouteDecision) -> Backend:
        if route.sha256 == new.sha256:
            raise BackendError("this engine cannot be built on this GPU")
        return real(route)

    opener.real = refuse_new
    with pytest.raises(ModelUnavailable):
        _serve(registry, "sony", image)
    assert opener.opened == []


def test_retry_failed_releases_the_model_it_opened(store: Path, image: LoadedImage,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    opener = Opener()
    registry = _registry(store, opener, 2)
    opener.failing.update(registry.servable())
    for camera in sorted(registry.servable()):
        with pytest.raises(ModelUnavailable):
            _serve(registry, camera, image)
    opener.failing.clear()
    monkeypatch.setattr(models_module, "ON_DEMAND_RETRY_S", 0.0)
    assert registry.retry_failed() is True
    _serve(registry, "canon", image)
    _serve(registry, "nikon", image)  # the fallback evicted: nothing uses it, so it closes
    assert FALLBACK_CAMERA in opener.closed


def test_a_parked_camera_adapted_again_is_not_served_by_the_fallback(store: Path, image: LoadedImage) -> None:
    from adassr.runtime.store import CameraStore

    opener = Opener()
    registry = _registry(store, opener, 2)
    CameraStore.open(store, "sony").update_manifest(lambda m: m.pop("exports"))  # adapted again, not exported
    opener.failing.add("sony")  # its (old) model cannot open now
    with pytest.raises(ModelUnavailable):  # not the fallback's model served as sony's
        _serve(registry, "sony", image)


def test_a_version_that_opened_does_not_fall_back_to_the_one_before_it_later(store: Path, image: LoadedImage) -> None:
    opener = Opener()
    registry = _registry(store, opener, 1)
    publish_camera(store, "sony", seed=31)
    registry.refresh()
    new = registry.parked["sony"].sha256
    with registry.serving("sony", image) as route:
        assert route.model.sha256 == new  # the new version opened fine
    _serve(registry, "nikon", image)  # sony evicted
    real = opener.real

    def refuse_new(route: RouteDecision) -> Backend:
        if route.sha256 == new:
            raise BackendError("out of GPU memory")  # e.g. at its next open
        return real(route)

    opener.real = refuse_new
    with pytest.raises(ModelUnavailable):  # not the older version, which the newer one had replaced
        _serve(registry, "sony", image)


def test_a_bool_max_models_is_refused_by_the_registry() -> None:
    with pytest.raises(ConfigError, match="max_models"):
        ModelRegistry(Path("."), open_model=Opener(), max_models=True)


def test_an_empty_store_at_start_is_no_store_problem(tmp_path: Path) -> None:
    errors: list[str] = []
    root = tmp_path / "store"
    root.mkdir()
    registry = ModelRegistry(root, open_model=Opener(), on_error=errors.append)
    registry.refresh()
    assert registry.store_problem is None and errors == []


def test_a_version_loaded_at_a_request_during_a_refresh_that_replaces_it_is_closed(
        store: Path, image: LoadedImage, monkeypatch: pytest.MonkeyPatch) -> None:
    opener = Opener()
    registry = _registry(store, opener, 2)
    publish_camera(store, "sony", seed=61)
    real_resolve = models_module.resolve_model
    served: list[str] = []

    def resolve_while_a_request_loads_the_old_version(*args: object, **kwargs: object) -> object:
        if kwargs.get("camera") == "sony" and not served:
            served.append(_serve(registry, "sony", image))  # the parked (old) version opens at a request
        return real_resolve(*args, **kwargs)

    monkeypatch.setattr(models_module, "resolve_model", resolve_while_a_request_loads_the_old_version)
    assert registry.refresh() is True
    assert served == ["sony"] and "sony" in registry.parked  # the new version parked in its place
    assert opener.closed == ["sony"]  # the old version, no longer served and unused, closed
