"""HTTP: the shared /metrics /healthz /readyz plus the run API.

    POST /v1/runs            start a run now (202 {"run_id"}; 409 busy; 422 too little data)
    GET  /v1/runs            recent runs
    GET  /v1/runs/{run_id}   one run
    POST /v1/rollback        roll the promoted policy (or {"version": ...}) back to its last good version

Every /v1 route needs `Authorization: Bearer <RLHF_TRAINER__API_TOKEN>` (401
otherwise): a run starts training on GPUs, a rollback changes what users are served.
/metrics and the probes stay open (/metrics moves to its own port with
RLHF_HTTP__METRICS_PORT). Extends the standard-library HealthServer rather
than adding a web framework for four routes.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from shared.auth import bearer_matches
from shared.http_input import CONTROL_CHARS, InputRejected, loads_json, read_capped
from shared.observability.http import Checks, HealthServer

from .runs import RunCoordinator, RunRejected


MAX_BODY_BYTES = 16_384  # {"reason": ..., "version": ...}


class TrainerHttpServer(HealthServer):
    def __init__(self, registry: CollectorRegistry, host: str, port: int, liveness: Checks | None = None,
                 readiness: Checks | None = None, *, coordinator: RunCoordinator, token: SecretStr,
                 serve_metrics: bool = True) -> None:
        self._coordinator = coordinator
        self._token = token
        super().__init__(registry, host, port, liveness=liveness, readiness=readiness, serve_metrics=serve_metrics)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        base: Any = super()._handler_class()
        coordinator, token = self._coordinator, self._token

        class Handler(base):  # type: ignore[misc, valid-type]
            def _authorized(self) -> bool:
                if bearer_matches(self.headers.get("Authorization"), token):
                    return True
                body = json.dumps({"detail": "missing or invalid bearer token (RLHF_TRAINER__API_TOKEN)"}).encode()
                self.send_response(401)
                self.send_header("WWW-Authenticate", "Bearer")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return False

            def do_GET(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0].rstrip("/")
                if path.startswith("/v1/") and not self._authorized():
                    return
                if path == "/v1/runs":
                    runs = [asdict(r) for r in coordinator.store.runs()[-50:]]
                    self._json(200, {"runs": runs, "active": coordinator.active_run()})
                elif path.startswith("/v1/runs/"):
                    run = coordinator.store.get_run(path.rsplit("/", 1)[1])
                    self._json(200, asdict(run)) if run else self._json(404, {"detail": "unknown run"})
                else:
                    super().do_GET()

            def do_POST(self) -> None:  # noqa: N802
                path = self.path.split("?", 1)[0].rstrip("/")
                if path not in ("/v1/runs", "/v1/rollback"):
                    self._json(404, {"detail": "not found"})
                    return
                if not self._authorized():
                    return
                try:
                    raw = read_capped(self.rfile, self.headers.get("Content-Length") or "0", MAX_BODY_BYTES)
                    body = loads_json(raw) if raw.strip() else {}
                except InputRejected as rejected:
                    self._json(rejected.status, {"detail": str(rejected), "field": rejected.field})
                    return
                if not isinstance(body, dict):
                    self._json(400, {"detail": "body must be a JSON object", "field": "<body>"})
                    return
                reason, version = body.get("reason", "manual (http)"), body.get("version")
                for field, value in (("reason", reason), ("version", version)):
                    if value is not None and (not isinstance(value, str) or len(value) > 200
                                              or not re.match(CONTROL_CHARS, value)):
                        self._json(422, {"detail": f"{field}: a string of at most 200 printable characters",
                                         "field": field})
                        return
                try:
                    if path == "/v1/rollback":
                        rolled_back, promoted = coordinator.rollback(version, reason)
                        self._json(200, {"rolled_back": rolled_back, "promoted": promoted})
                        return
                    run_id = coordinator.start_run(reason)
                except RunRejected as error:
                    self._json(error.status, {"detail": str(error)})
                    return
                self._json(202, {"run_id": run_id, "state": "queued"})

            def _json(self, status: int, data: Any) -> None:
                self._send(status, json.dumps(data, default=str).encode(), "application/json")

        return Handler
