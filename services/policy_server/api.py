"""OpenAI-compatible HTTP API: /v1/chat/completions (streaming or not), /v1/models.

Generation runs off the event loop so it keeps serving probes and metrics: a request
is queued for the pool's next batch (models.py, batching.py) and awaited without
holding a thread (the default pool's few threads would cap how many requests can wait
to be batched together); a stream is generated on a thread of its own. Every completion is captured to rlhf.outputs after the response is built,
without waiting for the broker: capture can fail, the user's request cannot. A
request with `"store": false` is served and not captured. While a canary serves, a
share of requests is answered by the other version too, after the response, for a
blind A/B comparison (ab.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import Future
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, HTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, Field, SecretStr

from shared.auth import bearer_dependency
from shared.bus import EventProducer
from shared.contracts import ChatMessage
from shared.http_input import BodyLimit
from shared.web import Checks, ops_router

from .ab import ABJob, ABPick, ABSampler, ABWorker
from .capture import Capture
from .metrics import PolicyServerMetrics
from .models import Generation, PolicyPool, ShuttingDown
from .routing import Router

log = logging.getLogger(__name__)


MAX_MESSAGES = 500  # what rlhf.outputs accepts: a longer conversation could not be captured


class ChatRequest(BaseModel):
    model: str = Field(max_length=200)
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    n: int = Field(default=1, ge=1, le=16)
    temperature: float = Field(default=1.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stream: bool = False
    seed: int | None = None
    user: str | None = Field(default=None, max_length=200)
    # OpenAI's flag for "do not keep this completion": measurement traffic (the demo's
    # win-rate probe, benchmarks) sets it so it never becomes training data
    store: bool | None = None


def create_app(
    *,
    pool: PolicyPool,
    router: Router,
    metrics: PolicyServerMetrics,
    registry: CollectorRegistry,
    served_model_name: str,
    max_tokens_default: int,
    max_tokens_limit: int,
    max_n: int,
    producer: EventProducer | None,
    readiness: Checks,
    liveness: Checks | None = None,
    max_body_bytes: int = 1_000_000,
    api_key: SecretStr | None = None,
    serve_metrics: bool = True,
    ab_share: float = 0.0,
    ab_seed: int | None = None,
    ab_max_pending: int = 32,
) -> FastAPI:
    """`api_key`: every /v1 route needs it as a bearer token (None: open, for tests and
    benchmarks that build the app in-process). `serve_metrics`: False when /metrics is
    served on its own port. The probes are always open. `ab_share`: see ab.py (0: off,
    the default for an app built in-process); the A/B worker is `app.state.ab`, which
    the owner closes at shutdown."""
    app = FastAPI(title="rlhf-loop policy server", version="1")
    guard = [Depends(bearer_dependency(api_key, "RLHF_POLICY_SERVER__API_KEY"))] if api_key is not None else []
    v1 = APIRouter(dependencies=guard)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)  # type: ignore[arg-type]

    def error(status: int, message: str, param: str | None = None) -> JSONResponse:
        return JSONResponse(status_code=status, content={"error": {
            "message": message, "type": "invalid_request_error", "param": param, "code": None}})

    capturing = Capture(producer, metrics, served_model_name, max_tokens_default)
    sampler = ABSampler(ab_share, ab_seed)

    def resolve(request: ChatRequest) -> tuple[str, ABPick | None]:
        """The served name routes (stable/canary), and may draw an A/B pick; a loaded
        version name pins it (never compared: the caller chose the version)."""
        if request.model == served_model_name:
            version, routes = router.pick()
            comparable = capturing.wanted(request)
            return version, sampler.pick(version, routes) if comparable else None
        if pool.has(request.model):
            return request.model, None
        raise HTTPException(status_code=404, detail=f"model {request.model!r} not found")

    def submit(request: ChatRequest, version: str) -> Future[list[Generation]]:
        return pool.submit([m.model_dump() for m in request.messages], version, n=request.n,
                           max_tokens=min(request.max_tokens or max_tokens_default, max_tokens_limit),
                           temperature=request.temperature, top_p=request.top_p, seed=request.seed)

    def run(request: ChatRequest, version: str) -> list[Generation]:
        return submit(request, version).result()

    async def generate(request: ChatRequest, version: str) -> list[Generation]:
        """Tokenized on a worker thread, then awaited in the queue with no thread held."""
        return await asyncio.wrap_future(await asyncio.to_thread(submit, request, version))

    ab = ABWorker(run, capturing, metrics, ab_max_pending)
    app.state.ab = ab

    def capture(request: ChatRequest, version: str, completion_id: str, generations: list[Generation],
                pick: ABPick | None = None) -> None:
        """After the response is built: alone, or an A/B pick handed to the worker. With
        n > 1 the n answers are captured as always (they make a ranking task), and the
        pick pairs the first of them with the other version's one answer, as an output
        of its own."""
        if pick is not None and len(generations) == 1:
            ab.submit(ABJob(request, completion_id, version, generations[0], pick))
            return
        capturing.send(request, completion_id, version, generations)
        if pick is not None and generations:
            ab.submit(ABJob(request, completion_id, version, generations[0], pick, separate=True))

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Any, exc: RequestValidationError) -> JSONResponse:
        """FastAPI's own handler echoes the input back, and an input of NaN (which
        json.loads accepts) cannot be written as JSON: a 500. Name the field instead."""
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
                  for e in exc.errors()]
        field = ".".join(str(p) for p in errors[0]["loc"][1:]) if errors else None
        message = f"{field}: {errors[0]['msg']}" if errors else "invalid request"
        return JSONResponse(status_code=422, content={"error": {
            "message": message, "type": "invalid_request_error", "param": field, "code": None}, "detail": errors})

    @app.exception_handler(RecursionError)
    async def too_deep(_request: Any, _exc: RecursionError) -> JSONResponse:
        return error(400, "JSON body nested too deeply")

    @app.exception_handler(HTTPException)
    async def http_error(_request: Any, exc: HTTPException) -> JSONResponse:
        response = error(exc.status_code, str(exc.detail), "model" if exc.status_code == 404 else None)
        response.headers.update(exc.headers or {})  # WWW-Authenticate on a 401
        return response

    @v1.post("/v1/chat/completions", response_model=None)
    async def chat(request: ChatRequest) -> Any:
        if request.n > max_n:
            return error(400, f"n must be at most {max_n}", "n")
        version, pick = resolve(request)
        started = time.perf_counter()
        completion_id = f"chatcmpl-{uuid.uuid4().hex}"
        if request.stream and request.n == 1:
            return StreamingResponse(stream_live(request, version, completion_id, started, pick),
                                     media_type="text/event-stream")
        try:
            generations = await generate(request, version)
        except KeyError:  # the version was unloaded between routing and generation
            version, pick = router.choose(), None  # the routes changed: that pick's pair is gone
            generations = await generate(request, version)
        except ShuttingDown as stopped:
            metrics.requests.labels(version, "shutting_down").inc()
            return JSONResponse(status_code=503, headers={"Retry-After": "1"}, content={"error": {
                "message": str(stopped), "type": "server_error", "param": None, "code": "shutting_down"}})
        except Exception:
            metrics.requests.labels(version, "error").inc()
            raise
        metrics.latency.labels(version).observe(time.perf_counter() - started)
        metrics.requests.labels(version, "ok").inc()
        metrics.tokens.labels(version).inc(sum(g.completion_tokens for g in generations))
        capture(request, version, completion_id, generations, pick)
        created = int(time.time())
        if request.stream:
            return StreamingResponse(stream_chunks(completion_id, created, version, generations),
                                     media_type="text/event-stream")
        usage = sum(g.completion_tokens for g in generations)
        return {
            "id": completion_id, "object": "chat.completion", "created": created,
            "model": served_model_name, "system_fingerprint": version,
            "choices": [{"index": i, "finish_reason": g.finish_reason,
                         "message": {"role": "assistant", "content": g.text}} for i, g in enumerate(generations)],
            "usage": {"prompt_tokens": 0, "completion_tokens": usage, "total_tokens": usage},
        }

    def chunk(completion_id: str, created: int, version: str, index: int, delta: dict[str, str],
              finish: str | None) -> str:
        body = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": served_model_name, "system_fingerprint": version,
                "choices": [{"index": index, "delta": delta, "finish_reason": finish}]}
        return f"data: {json.dumps(body)}\n\n"

    async def stream_live(request: ChatRequest, version: str, completion_id: str,
                          started: float, pick: ABPick | None = None) -> AsyncIterator[str]:
        """n=1: token deltas as the model produces them (time to first token matters)."""
        created = int(time.time())
        deltas, result = pool.stream([m.model_dump() for m in request.messages], version,
                                     max_tokens=min(request.max_tokens or max_tokens_default, max_tokens_limit),
                                     temperature=request.temperature, top_p=request.top_p, seed=request.seed)
        yield chunk(completion_id, created, version, 0, {"role": "assistant", "content": ""}, None)
        try:
            while (piece := await asyncio.to_thread(next, deltas, None)) is not None:
                yield chunk(completion_id, created, version, 0, {"content": piece}, None)
        except Exception:
            metrics.requests.labels(version, "error").inc()
            raise
        yield chunk(completion_id, created, version, 0, {}, result.finish_reason)
        yield "data: [DONE]\n\n"
        metrics.latency.labels(version).observe(time.perf_counter() - started)
        metrics.requests.labels(version, "ok").inc()
        metrics.tokens.labels(version).inc(result.completion_tokens)
        capture(request, version, completion_id,
                [Generation(result.text, result.finish_reason, result.completion_tokens)], pick)

    async def stream_chunks(completion_id: str, created: int, version: str,
                            generations: list[Generation]) -> AsyncIterator[str]:
        """n>1: the answers are generated together, then sent one after the other."""
        for index, generation in enumerate(generations):
            yield chunk(completion_id, created, version, index, {"role": "assistant", "content": ""}, None)
            for piece in split_words(generation.text):
                yield chunk(completion_id, created, version, index, {"content": piece}, None)
            yield chunk(completion_id, created, version, index, {}, generation.finish_reason)
        yield "data: [DONE]\n\n"

    @v1.get("/v1/models")
    async def models() -> dict[str, Any]:
        shares = router.shares()
        data = [{"id": served_model_name, "object": "model", "owned_by": "rlhf-loop", "versions": shares}]
        data += [{"id": v, "object": "model", "owned_by": "rlhf-loop", "traffic_share": shares.get(v, 0.0)}
                 for v in pool.versions]
        return {"object": "list", "data": data}

    app.include_router(v1)
    # the probes every service has (shared/web); liveness: the App's, by reference
    app.include_router(ops_router(registry, liveness if liveness is not None else {}, readiness, serve_metrics))
    return app


def split_words(text: str) -> list[str]:
    """Stream granularity: words with their leading space, as token streams look."""
    pieces, current = [], ""
    for char in text:
        if char == " " and current:
            pieces.append(current)
            current = ""
        current += char
    if current:
        pieces.append(current)
    return pieces


