"""The run API, a router on the trainer's HTTP server (shared/app.py):

    POST /v1/runs            start a run now (202 {"run_id"}; 409 busy; 422 too little data)
    GET  /v1/runs            recent runs
    GET  /v1/runs/{run_id}   one run
    POST /v1/rollback        roll the promoted policy (or {"version": ...}) back to its last good version

Every route needs `Authorization: Bearer <RLHF_TRAINER__API_TOKEN>` (401 otherwise): a
run starts training on GPUs, a rollback changes what users are served. /metrics and
the probes are the App's and stay open. Bodies are read capped and parsed as standard
JSON; a bad field is a 4xx naming it, never a 5xx.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import SecretStr
from starlette.concurrency import run_in_threadpool

from shared.auth import bearer_dependency
from shared.http_input import CONTROL_CHARS, InputRejected, loads_json, read_request_capped

from .runs import RunCoordinator, RunRejected

MAX_BODY_BYTES = 16_384  # {"reason": ..., "version": ...}


def _json(status: int, data: Any) -> Response:
    # json.dumps as the runs are stored: a metric may be NaN (JSONResponse refuses it: a 500)
    return Response(json.dumps(data, default=str), status_code=status, media_type="application/json")


async def _body(request: Request) -> tuple[str, str | None]:
    """(reason, version) of a POST; InputRejected names the field at fault."""
    raw = await read_request_capped(request, MAX_BODY_BYTES)
    body = loads_json(raw) if raw.strip() else {}
    if not isinstance(body, dict):
        raise InputRejected(400, "<body>", "body must be a JSON object")
    reason, version = body.get("reason", "manual (http)"), body.get("version")
    for field, value in (("reason", reason), ("version", version)):
        if value is not None and (not isinstance(value, str) or len(value) > 200
                                  or not re.match(CONTROL_CHARS, value)):
            raise InputRejected(422, field, "a string of at most 200 printable characters")
    return reason, version


def runs_router(coordinator: RunCoordinator, token: SecretStr) -> APIRouter:
    router = APIRouter(prefix="/v1", dependencies=[Depends(bearer_dependency(token, "RLHF_TRAINER__API_TOKEN"))])

    @router.get("/runs")
    def list_runs() -> Response:
        return _json(200, {"runs": [asdict(r) for r in coordinator.store.runs()[-50:]],
                           "active": coordinator.active_run()})

    @router.get("/runs/{run_id}")
    def get_run(run_id: str) -> Response:
        run = coordinator.store.get_run(run_id)
        return _json(200, asdict(run)) if run else _json(404, {"detail": "unknown run"})

    @router.post("/runs")
    async def start_run(request: Request) -> Response:
        try:
            reason, _version = await _body(request)
            run_id = await run_in_threadpool(coordinator.start_run, reason)
        except InputRejected as rejected:
            return _json(rejected.status, {"detail": str(rejected), "field": rejected.field})
        except RunRejected as error:
            return _json(error.status, {"detail": str(error)})
        return _json(202, {"run_id": run_id, "state": "queued"})

    @router.post("/rollback")
    async def rollback(request: Request) -> Response:
        try:
            reason, version = await _body(request)
            rolled_back, promoted = await run_in_threadpool(coordinator.rollback, version, reason)
        except InputRejected as rejected:
            return _json(rejected.status, {"detail": str(rejected), "field": rejected.field})
        except RunRejected as error:
            return _json(error.status, {"detail": str(error)})
        return _json(200, {"rolled_back": rolled_back, "promoted": promoted})

    return router
