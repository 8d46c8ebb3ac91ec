"""create_app: the capture service's HTTP app (FastAPI behind the ingest fast path),
everything it needs passed in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from shared.bus import EventProducer
from shared.observability.probes import kafka_reachable
from shared.topics import OUTPUTS, Topic
from shared.web import Checks, ops_router

from .api import BATCH_PATH, OUTPUTS_PATH, ingest_router
from .auth import token_checker, token_test
from .background import BackgroundCapture
from .fast_ingest import ASGIApp, FastIngest
from .metrics import CaptureMetrics, RequestMetricsMiddleware
from .proxy import CHAT_PATH, proxy_router, upstream_client
from .publisher import OutputPublisher
from .settings import CaptureSettings


def create_app(
    settings: CaptureSettings,
    producer: EventProducer,
    registry: CollectorRegistry,
    *,
    topic: Topic = OUTPUTS,
    liveness: Checks | None = None,
    readiness: Checks | None = None,
) -> ASGIApp:
    """The app: well-formed ingest requests are answered by FastIngest, everything
    else by the FastAPI app behind it; request metrics wrap both. The caller owns
    (and closes) `producer`. The proxy's writer thread and upstream client live with
    the app's lifespan. `liveness`/`readiness`: the service App's checks (by
    reference); by default, the event loop and the broker."""
    options = settings.capture
    metrics = CaptureMetrics(registry)
    check_token = token_checker(options.token, options.auth_disabled)
    publisher = OutputPublisher(producer, topic, options.publish_timeout_s)
    proxy_on = options.proxy_upstream_url is not None
    capture = BackgroundCapture(publisher, metrics, options.proxy_queue_size) if proxy_on else None
    client = upstream_client(options) if proxy_on else None

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if capture is not None:
            capture.start()
        try:
            yield
        finally:
            if client is not None:
                await client.aclose()
            if capture is not None:
                capture.stop(timeout_s=options.publish_timeout_s + 1)

    app = FastAPI(title="rlhf-loop capture", version="1", lifespan=lifespan)
    app.include_router(ops_router(
        registry,
        # Answering at all is the liveness signal of an HTTP service: a wedged event
        # loop never gets here, and the probe times out.
        liveness=liveness if liveness is not None else {"event_loop": lambda: True},
        readiness=readiness if readiness is not None else {"kafka": kafka_reachable(settings.kafka)},
        serve_metrics=settings.http.metrics_port is None,
    ))
    app.include_router(ingest_router(options, publisher, metrics, check_token))
    endpoints = [OUTPUTS_PATH, BATCH_PATH, "/metrics", "/healthz", "/readyz"]
    if capture is not None and client is not None:
        app.include_router(proxy_router(options, client, capture, metrics, check_token))
        endpoints.append(CHAT_PATH)
    fast = FastIngest(app, options, publisher, metrics, token_test(options.token, options.auth_disabled))
    return RequestMetricsMiddleware(fast, metrics=metrics, endpoints=endpoints)
