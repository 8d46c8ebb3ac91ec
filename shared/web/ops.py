"""/metrics, /healthz and /readyz on the service's own FastAPI app, with the same
checks and body as `shared.observability.http.HealthServer`."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.observability.http import Checks, run_checks


def ops_router(registry: CollectorRegistry, liveness: Checks, readiness: Checks,
               serve_metrics: bool = True) -> APIRouter:
    """`serve_metrics`: False when /metrics has its own port (RLHF_HTTP__METRICS_PORT)."""
    router = APIRouter(include_in_schema=False)

    def probe(checks: Checks) -> JSONResponse:
        ok, results = run_checks(checks)
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": results},
                            status_code=200 if ok else 503)

    # Plain `def`: FastAPI runs them on the thread pool, so a slow TCP probe of the
    # broker never stalls the event loop that serves ingest traffic.
    if serve_metrics:
        @router.get("/metrics")
        def metrics() -> Response:
            return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @router.get("/healthz")
    def healthz() -> JSONResponse:
        return probe(liveness)

    @router.get("/readyz")
    def readyz() -> JSONResponse:
        return probe(readiness)

    return router
