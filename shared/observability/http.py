"""A tiny HTTP server for /metrics, /healthz and /readyz.

Consumer-only services have no web framework, and a standard-library server on its
own thread is all Kubernetes probes and Prometheus need. Services that do serve HTTP
(FastAPI) mount `metrics_response` and the same checks on their own app instead.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from shared.settings import HttpSettings

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


def metrics_server(http: HttpSettings, registry: CollectorRegistry, liveness: Checks | None = None,
                   readiness: Checks | None = None) -> "HealthServer | None":
    """The /metrics (and probes) server on `http.metrics_port`, not started; None when
    metrics share the service's main port. Its own port lets Prometheus' network opening
    (NetworkPolicy, firewall) reach metrics without reaching the service's API."""
    if http.metrics_port is None:
        return None
    return HealthServer(registry, http.host, http.metrics_port, liveness=liveness, readiness=readiness)


class HealthServer:
    """Serves the registry's metrics, liveness and readiness on host:port (port 0 picks
    a free one; read `.port` after `start`)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str,
        port: int,
        liveness: Checks | None = None,
        readiness: Checks | None = None,
        *,
        serve_metrics: bool = True,
    ) -> None:
        self._registry = registry
        self._serve_metrics = serve_metrics
        self._liveness = dict(liveness or {})
        self._readiness = dict(readiness or {})
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="health-http", daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> "HealthServer":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "HealthServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = 10.0  # a client that stops sending does not hold a server thread forever

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/metrics" and outer._serve_metrics:
                    self._send(200, generate_latest(outer._registry), CONTENT_TYPE_LATEST)
                elif path in ("/healthz", "/readyz"):
                    checks = outer._liveness if path == "/healthz" else outer._readiness
                    ok, results = run_checks(checks)
                    body = json.dumps({"status": "ok" if ok else "unavailable", "checks": results})
                    self._send(200 if ok else 503, body.encode(), "application/json")
                else:
                    self._send(404, b'{"detail":"not found"}', "application/json")

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                # Probes hit these paths every few seconds; access logs would drown the service's own.
                return

        return Handler
