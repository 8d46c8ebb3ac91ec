"""Capture metrics, and the ASGI middleware that counts and times every request.

Labels stay bounded: `endpoint` is one of the app's own paths or `other` (a scanner
probing random URLs must not mint new series), `code` is the HTTP status.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SOURCES = ("api", "proxy")
PROXY_FAILURE_REASONS = ("broker", "queue_full", "invalid")
REQUEST_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class CaptureMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "rlhf_capture_requests_total", "HTTP requests by endpoint and status code.",
            ["endpoint", "code"], registry=registry,
        )
        self.latency = Histogram(
            "rlhf_capture_request_duration_seconds",
            "Time from request to the end of the response (for streams, the whole stream).",
            ["endpoint"], buckets=REQUEST_BUCKETS, registry=registry,
        )
        self.accepted = Counter(
            "rlhf_capture_events_accepted_total", "ModelOutput events the broker acknowledged.",
            ["source"], registry=registry,
        )
        self.unavailable = Counter(
            "rlhf_capture_broker_unavailable_total",
            "Requests answered 503 because the broker did not acknowledge in time.",
            registry=registry,
        )
        self.proxy_failures = Counter(
            "rlhf_capture_proxy_capture_failures_total",
            "Proxied exchanges that were not captured; reason: broker, queue_full, invalid.",
            ["reason"], registry=registry,
        )
        self.proxy_upstream_errors = Counter(
            "rlhf_capture_proxy_upstream_errors_total",
            "Proxied requests whose upstream could not be reached or timed out.",
            registry=registry,
        )
        self.proxy_queue = Gauge(
            "rlhf_capture_proxy_queue_depth", "Proxied exchanges waiting to be written.",
            registry=registry,
        )
        # Fixed label values at 0 from the start (a panel shows 0, an alert sees the first increase).
        for source in SOURCES:
            self.accepted.labels(source)
        for reason in PROXY_FAILURE_REASONS:
            self.proxy_failures.labels(reason)


class RequestMetricsMiddleware:
    """Pure ASGI (no BaseHTTPMiddleware): it must not buffer streamed proxy responses."""

    def __init__(self, app: Any, metrics: CaptureMetrics, endpoints: Iterable[str]) -> None:
        self.app = app
        self._metrics = metrics
        self._endpoints = frozenset(endpoints)
        # each series' child, looked up once: `labels()` per request was a visible cost
        self._requests: dict[tuple[str, int], Any] = {}
        self._latency = {endpoint: metrics.latency.labels(endpoint) for endpoint in (*self._endpoints, "other")}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        endpoint = scope["path"] if scope["path"] in self._endpoints else "other"
        status = 500  # what the client gets if the app raises before answering
        started = time.perf_counter()

        async def send_and_note(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            requests = self._requests.get((endpoint, status))
            if requests is None:  # bounded: endpoints x the status codes the app answers with
                requests = self._requests[(endpoint, status)] = self._metrics.requests.labels(endpoint, str(status))
            requests.inc()
            self._latency[endpoint].observe(time.perf_counter() - started)
