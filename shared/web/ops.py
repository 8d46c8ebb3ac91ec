"""/metrics, /healthz and /readyz, the same on every service's FastAPI app: a check
is a quick callable that returns True when healthy; one that raises is failing."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

from fastapi import APIRouter, FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger(__name__)

# name -> check; a check returns True when healthy and must be quick and never raise.
Checks = Mapping[str, Callable[[], bool]]


def run_checks(checks: Checks) -> tuple[bool, dict[str, bool]]:
    results: dict[str, bool] = {}
    for name, check in checks.items():
        try:
            results[name] = bool(check())
        except Exception:  # a check that raises is a failing check, not a crash
            log.exception("health check %s raised", name)
            results[name] = False
    return all(results.values()), results


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


def ops_app(registry: CollectorRegistry, liveness: Checks, readiness: Checks) -> FastAPI:
    """/metrics and the probes alone: the app on RLHF_HTTP__METRICS_PORT, so Prometheus'
    network opening (NetworkPolicy, firewall) reaches metrics without reaching an API."""
    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    app.include_router(ops_router(registry, liveness, readiness))
    return app
