"""Prometheus metrics of one server instance (its own registry, so several apps can coexist).

Names (all prefixed ``adassr_``):

- ``request_duration_seconds{camera, status}``: histogram of server-side latency per camera
  group served (``none`` before routing) and HTTP status;
- ``queue_depth{queue}``: ``requests`` admitted and waiting for a worker, ``tiles`` waiting in
  the batcher;
- ``inflight_requests``: requests admitted and not yet answered;
- ``batch_tiles``: histogram of tiles per model call;
- ``model_loads_total{camera, result}``: model loads, ``ok`` or ``failed``;
- ``errors_total{kind}``: errors by kind (``bad_request``, ``unsupported_image``, ``too_large``,
  ``invalid_parameter``, ``unknown_camera``, ``unauthorized``, ``overloaded``, ``deadline``,
  ``client_disconnect``, ``body_timeout``, ``not_ready``, ``model_checksum``, ``model_load``,
  ``inference``, ``internal``);
- ``tiles_cancelled_total``: queued tiles dropped because their request was cancelled or failed;
- ``models_loaded``: models open now (with ``--max-models``, parked ones are not counted);
- ``model_evictions_total{camera}``: models closed to keep at most ``--max-models`` open.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServerMetrics:
    """The metric objects; create one per app."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self, max_batch: int) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.latency = Histogram(
            "adassr_request_duration_seconds",
            "Server-side latency of /v1/upscale requests",
            ("camera", "status"),
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_depth = Gauge("adassr_queue_depth", "Items waiting", ("queue",), registry=r)
        self.inflight = Gauge("adassr_inflight_requests", "Upscale requests admitted and not answered", registry=r)
        buckets = tuple(float(b) for b in range(1, max_batch + 1))
        self.batch_tiles = Histogram("adassr_batch_tiles", "Tiles per model call", buckets=buckets, registry=r)
        self.model_loads = Counter("adassr_model_loads", "Model loads", ("camera", "result"), registry=r)
        self.errors = Counter("adassr_errors", "Errors by kind", ("kind",), registry=r)
        self.tiles_cancelled = Counter("adassr_tiles_cancelled", "Queued tiles dropped (request cancelled or failed)",
                                       registry=r)
        self.models_loaded = Gauge("adassr_models_loaded", "Models open now", registry=r)
        self.model_evictions = Counter("adassr_model_evictions", "Models closed to keep at most --max-models open",
                                       ("camera",), registry=r)
        self.upload_bytes = Gauge("adassr_upload_bytes", "Bytes of request bodies still arriving (not yet admitted)",
                                  registry=r)

    def bind_depths(self, requests: Callable[[], float], tiles: Callable[[], float],
                    uploads: Callable[[], float] | None = None) -> None:
        """Read the queue depths (and the bytes of uploads in progress) from these callables at scrape time."""
        self.queue_depth.labels("requests").set_function(requests)
        self.queue_depth.labels("tiles").set_function(tiles)
        if uploads is not None:
            self.upload_bytes.set_function(uploads)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)
