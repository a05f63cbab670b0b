"""Prometheus metrics: requests by route and status, request and search latency, index size and reloads.

One registry per app. With `--workers N` the serve command points PROMETHEUS_MULTIPROC_DIR at a
private folder before the workers start, and a scrape (answered by any worker) aggregates all of
them through prometheus_client's multiprocess collector.
"""

from __future__ import annotations

import os
import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The server's metrics on a registry of their own."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("retrieval_http_requests", "HTTP requests answered.", ["method", "route", "status"], registry=self.registry)
        self.latency = Histogram("retrieval_http_request_duration_seconds", "Time from request to response, upload included.", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.search = Histogram("retrieval_search_duration_seconds", "Time to read, embed and rank a query once it is uploaded.",
                                buckets=LATENCY_BUCKETS, registry=self.registry)
        self.slices = Gauge("retrieval_index_slices", "Slices the server searches.", registry=self.registry, multiprocess_mode="livemostrecent")
        self.patients = Gauge("retrieval_index_patients", "Patients the server searches.", registry=self.registry, multiprocess_mode="livemostrecent")
        self.reloads = Counter("retrieval_index_reloads", "Times the index was reopened after `retrieval index` changed it.", registry=self.registry)

    def exposition(self) -> bytes:
        """The Prometheus text format, aggregated over worker processes when there are several."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
            return generate_latest(registry)
        return generate_latest(self.registry)


class MetricsMiddleware:
    """ASGI middleware counting and timing every HTTP request by its route template (never the raw path)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            route: Any = scope.get("route")
            label = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - start)
