"""Prometheus metrics of the ML backend, served as text on ``GET /metrics``.

Each app gets its own :class:`~prometheus_client.CollectorRegistry` (never the global default
one), so several apps in one process, as in the tests, do not clash. Request counts and latency
are taken by a pure-ASGI middleware; the served model version and the batcher's queue are read
at scrape time, so a hot swap shows up at the next scrape.

Metrics (all prefixed ``hitl_backend_``):

- ``requests_total{endpoint, status}``: HTTP requests answered; unknown paths count as ``other``
- ``predict_latency_seconds{endpoint}``: histogram of ``/predict`` and ``/v1/predict`` request times
- ``texts_predicted_total{endpoint}``: texts that got a prediction
- ``rejected_requests_total{reason}``: ``queue_full`` (503) and ``too_large`` (413: body or task count)
- ``queue_size``: prediction requests waiting in the micro-batcher
- ``batches_total`` / ``batch_items_total``: model calls run and the texts they held
- ``model_info{version}``: 1, labelled with the model version being served
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.metrics_core import Metric

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4  # the text format generate_latest writes

ENDPOINTS = ("/predict", "/v1/predict", "/setup", "/health", "/webhook", "/versions", "/metrics")
PREDICT_ENDPOINTS = ("/predict", "/v1/predict")
# Label Studio waits 100 s for /predict
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 100.0)
REJECT_REASONS = {413: "too_large", 503: "queue_full"}


class _ServiceCollector:
    """What the service holds now, read at each scrape: the served version, the batcher's queue."""

    def __init__(self, service: Callable[[], Any]) -> None:
        self._service = service

    def describe(self) -> Iterable[Metric]:
        return ()

    def collect(self) -> Iterable[Metric]:
        s = self._service()
        if s is None:  # before the lifespan has loaded the model
            return
        batcher = s.batcher
        yield GaugeMetricFamily("hitl_backend_queue_size", "Prediction requests waiting in the micro-batcher.",
                                value=batcher.queue_size)
        yield CounterMetricFamily("hitl_backend_batches", "Model calls run by the micro-batcher.",
                                  value=batcher.batches_run)
        yield CounterMetricFamily("hitl_backend_batch_items", "Texts in the model calls run by the micro-batcher.",
                                  value=batcher.items_run)
        info = GaugeMetricFamily("hitl_backend_model_info", "The model version being served (value 1).",
                                 labels=["version"])
        if s.model_version is not None:  # none while waiting for the first version
            info.add_metric([s.model_version], 1)
        yield info


class BackendMetrics:
    """The app's registry and its metrics; label children are bound once and cached."""

    def __init__(self, service: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("hitl_backend_requests", "HTTP requests answered, by endpoint and status code.",
                                ["endpoint", "status"], registry=self.registry)
        self.latency = Histogram("hitl_backend_predict_latency_seconds",
                                 "Time to answer a prediction request, in seconds.", ["endpoint"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.texts = Counter("hitl_backend_texts_predicted", "Texts that got a prediction.", ["endpoint"],
                             registry=self.registry)
        self.rejected = Counter("hitl_backend_rejected_requests",
                                "Requests refused: queue_full (503) or too_large (413).", ["reason"],
                                registry=self.registry)
        self.registry.register(_ServiceCollector(service))
        self._endpoints = {path: path for path in ENDPOINTS}
        self._latency = {path: self.latency.labels(path) for path in PREDICT_ENDPOINTS}
        self.texts_predicted = {path: self.texts.labels(path) for path in PREDICT_ENDPOINTS}
        self._rejected = {status: self.rejected.labels(reason) for status, reason in REJECT_REASONS.items()}
        self._requests: dict[tuple[str, int], Any] = {}
        for reason in REJECT_REASONS.values():  # show zeros before the first rejection
            self.rejected.labels(reason)

    def endpoint(self, path: str) -> str:
        """The endpoint label of a path; ``other`` for paths the app does not serve (bounded labels)."""
        return self._endpoints.get(path, "other")

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        key = (endpoint, status)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(endpoint, str(status))
        child.inc()
        latency = self._latency.get(endpoint)
        if latency is not None:
            latency.observe(seconds)
        rejected = self._rejected.get(status)
        if rejected is not None:
            rejected.inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Count every HTTP request by endpoint and status, and time prediction requests.

    Pure ASGI: it only watches ``http.response.start`` for the status. A request that raises
    before answering counts as 500. Add it last so that it wraps :class:`BodySizeLimit` and sees
    its 413s.
    """

    def __init__(self, app: Any, metrics: BackendMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = self.metrics.endpoint(scope["path"])
        status = 500
        start = time.perf_counter()

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.observe(endpoint, status, time.perf_counter() - start)
