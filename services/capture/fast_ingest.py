"""The ingest endpoints' fast path: a well-formed request never enters FastAPI.

Profiled under 16 concurrent single-event POSTs, the event loop spent more CPU in the
framework's layers (its middleware stack, routing, the Request object, the route's
exception wrappers) than in the request's own work (validate, map, send, await the
ack), and the loop's CPU is what bounds capture's rate. This pure ASGI layer, in front
of the FastAPI app, answers POST /v1/outputs and /v1/outputs/batch itself when every
check passes, with the same functions the routes use (api.decode_request, api.store,
api.accepted_body).

Anything else goes to the app unchanged: another path or method, a missing or wrong
token, another content type, a body over the limit, a body that does not validate.
The body read so far is replayed to it, so each refusal still comes from one place
(api.py), in FastAPI's exact shape. Only the broker's refusals (413 too large, 503
unavailable) are answered here, since they happen after the events were sent and a
second attempt would send them twice; they are api.store's HTTPException, written as
FastAPI writes one.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import HTTPException
from fastapi.exceptions import RequestValidationError

from .api import BATCH_PATH, OUTPUTS_PATH, accepted_body, decode_request, store
from .body import media_type
from .metrics import CaptureMetrics
from .publisher import OutputPublisher
from .settings import CaptureOptions

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

PATHS = frozenset((OUTPUTS_PATH, BATCH_PATH))


class FastIngest:
    """Pure ASGI in front of `app` (the capture FastAPI app); see the module doc."""

    def __init__(self, app: ASGIApp, options: CaptureOptions, publisher: OutputPublisher,
                 metrics: CaptureMetrics, authorized: Callable[[str | None], bool]) -> None:
        self.app = app
        self._options = options
        self._publisher = publisher
        self._metrics = metrics
        self._authorized = authorized

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in PATHS:
            await self.app(scope, receive, send)
            return
        if not self._headers_pass(scope):  # nothing read yet: the app sees the request as sent
            await self.app(scope, receive, send)
            return
        received, raw = await self._read(receive)
        events = None
        if raw is not None:
            try:
                events = decode_request(scope["path"], raw, self._options)
            except RequestValidationError:
                pass
        if events is None:
            await self.app(scope, _replay(received, receive), send)
            return
        try:
            await store(events, self._options, self._publisher, self._metrics)
        except HTTPException as refused:
            await _respond(send, refused.status_code, json.dumps({"detail": refused.detail}).encode(),
                           refused.headers)
            return
        await _respond(send, 202, accepted_body(scope["path"], events))

    def _headers_pass(self, scope: Scope) -> bool:
        """The token, the content type and a declared length within the limit (first
        occurrence of each header, decoded as Starlette decodes them)."""
        authorization = content_type = length = None
        for name, value in scope["headers"]:
            if name == b"authorization" and authorization is None:
                authorization = value.decode("latin-1")
            elif name == b"content-type" and content_type is None:
                content_type = value.decode("latin-1")
            elif name == b"content-length" and length is None:
                length = value
        if not self._authorized(authorization):
            return False
        if content_type is None or media_type(content_type) != "application/json":
            return False
        if length is not None:
            try:
                return int(length) <= self._options.max_body_bytes
            except ValueError:
                return False
        return True

    async def _read(self, receive: Receive) -> tuple[list[Message], bytes | None]:
        """The messages received, and the whole body (None: over the limit, or the
        client left before sending all of it)."""
        received: list[Message] = []
        size, limit = 0, self._options.max_body_bytes
        while True:
            message = await receive()
            received.append(message)
            if message["type"] != "http.request":
                return received, None
            size += len(message.get("body", b""))
            if size > limit:
                return received, None
            if not message.get("more_body", False):
                break
        return received, b"".join(m.get("body", b"") for m in received)


def _replay(received: list[Message], receive: Receive) -> Receive:
    """`receive` that gives back what was already read, then reads on."""
    pending = list(received)

    async def replayed() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replayed


async def _respond(send: Send, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
    raw_headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw_headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})
