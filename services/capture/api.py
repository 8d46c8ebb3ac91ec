"""The ingest endpoints: POST /v1/outputs and POST /v1/outputs/batch.

Order of checks: token (401), content type (415), size (413), schema (422); only then
is anything sent. 202 is returned after the broker acknowledged every event of the
request; an unacknowledged write is a 503 with Retry-After, never a 202.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError

from shared.contracts import ModelOutput

from .body import body_errors, parse_body, read_limited, require_json
from .mapping import to_model_output
from .metrics import CaptureMetrics
from .publisher import BrokerUnavailable, EventTooLarge, OutputPublisher
from .schema import Accepted, BatchAccepted, BatchIn, OutputIn
from .settings import CaptureOptions

log = logging.getLogger(__name__)

OUTPUTS_PATH = "/v1/outputs"
BATCH_PATH = "/v1/outputs/batch"


def _events(items: Sequence[OutputIn], prefix: tuple[object, ...]) -> list[ModelOutput]:
    events = []
    for i, item in enumerate(items):
        try:
            events.append(to_model_output(item))
        except ValidationError as error:  # the contract is stricter than the schema somewhere
            at = (*prefix, i) if len(prefix) > 1 else prefix
            raise RequestValidationError(body_errors(error, at)) from None
    return events


def decode_request(path: str, raw: bytes, options: CaptureOptions) -> list[ModelOutput]:
    """The events a request body to `path` becomes; RequestValidationError (422) names
    the field at fault. One function for both paths (fast_ingest.py, the routes below),
    so they cannot disagree about what is valid."""
    if path == OUTPUTS_PATH:
        return _events([parse_body(raw, OutputIn)], ("body",))
    batch = parse_body(raw, BatchIn)
    if len(batch.items) > options.max_batch_items:
        raise RequestValidationError([{
            "type": "too_long", "loc": ["body", "items"], "field": "items",
            "msg": f"at most {options.max_batch_items} items per batch, got {len(batch.items)}",
        }])
    return _events(batch.items, ("body", "items"))


def accepted_body(path: str, events: Sequence[ModelOutput]) -> bytes:
    """The 202's JSON: the event id, or the batch's ids in item order."""
    answer = (Accepted(event_id=events[0].event_id) if path == OUTPUTS_PATH
              else BatchAccepted(event_ids=[e.event_id for e in events]))
    return answer.model_dump_json().encode()


async def store(events: list[ModelOutput], options: CaptureOptions, publisher: OutputPublisher,
                metrics: CaptureMetrics) -> None:
    """Send the events and await every ack; HTTPException 413 (too large for the
    broker) or 503 with Retry-After (not acknowledged) otherwise."""
    try:
        await publisher.publish_all_async(events)
    except EventTooLarge as error:
        raise HTTPException(413, f"event too large for the broker: {error}") from None
    except BrokerUnavailable as error:
        metrics.unavailable.inc()
        log.warning("broker did not acknowledge %d event(s): %s", len(events), error)
        raise HTTPException(503, "the event store is unavailable; retry later",
                            headers={"Retry-After": str(options.retry_after_s)}) from None
    metrics.accepted.labels("api").inc(len(events))


def ingest_router(
    options: CaptureOptions,
    publisher: OutputPublisher,
    metrics: CaptureMetrics,
    check_token: Callable[[Request], Awaitable[None]],
) -> APIRouter:
    # The token is checked first thing in each endpoint rather than as a router
    # dependency, and each endpoint returns its response already encoded:
    # FastAPI's dependency solving and response-model serialisation were ~1/4 of
    # a single-event request's CPU (`response_model` still documents the answer).
    router = APIRouter(tags=["ingest"])

    async def read(request: Request) -> bytes:
        await check_token(request)
        require_json(request)
        return await read_limited(request, options.max_body_bytes)

    async def ingest(path: str, request: Request) -> Response:
        events = decode_request(path, await read(request), options)
        await store(events, options, publisher, metrics)
        return Response(accepted_body(path, events), status_code=202, media_type="application/json")

    @router.post(OUTPUTS_PATH, status_code=202, response_model=Accepted,
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": {"title": "OutputIn (see docs/capture.md)", "type": "object"}}}}})
    async def post_output(request: Request) -> Response:
        """One chatbot exchange; 202 once stored. Body: `OutputIn`."""
        return await ingest(OUTPUTS_PATH, request)

    @router.post(BATCH_PATH, status_code=202, response_model=BatchAccepted,
                 openapi_extra={"requestBody": {"required": True, "content": {"application/json": {
                     "schema": {"title": "BatchIn: {items: [OutputIn]}", "type": "object"}}}}})
    async def post_batch(request: Request) -> Response:
        """Many exchanges, all or none: every item is validated first, then all are sent
        and all acks awaited. Event ids come back in item order."""
        return await ingest(BATCH_PATH, request)

    return router
