"""OpenAI-compatible capturing proxy: POST /v1/chat/completions.

The request goes to the upstream (vLLM, any OpenAI-compatible server) byte for byte
and the upstream's answer comes back unchanged, streamed (SSE) or not. A copy of the
exchange is handed to `BackgroundCapture` after the answer is complete; capture
never delays or fails the caller's request.

Auth (`proxy_auth`): by default callers present the capture token, exactly as on the
ingest API, and the proxy presents `proxy_upstream_api_key` upstream (or nothing): the
caller's own Authorization never leaves the proxy. With `passthrough` the caller's
Authorization goes upstream unchanged and the upstream decides (vLLM --api-key, the
policy server's key); the proxy then checks nothing itself.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from shared.http_input import InputRejected, loads_json

from .background import BackgroundCapture
from .body import read_limited, require_json
from .metrics import CaptureMetrics
from .proxy_mapping import ExchangeLabels, completion_from_sse, to_model_output
from .settings import CaptureOptions

log = logging.getLogger(__name__)

CHAT_PATH = "/v1/chat/completions"
# Not forwarded: hop-by-hop headers, what httpx sets itself, and our own labels.
DROPPED_HEADERS = {
    "host", "content-length", "connection", "keep-alive", "transfer-encoding", "te", "trailer",
    "upgrade", "proxy-authorization", "proxy-connection", "accept-encoding",
}
# A stream larger than this is relayed but not captured (it would not fit an event).
MAX_CAPTURED_STREAM_BYTES = 16 * 1024 * 1024


def upstream_client(options: CaptureOptions) -> httpx.AsyncClient:
    timeout = httpx.Timeout(connect=10.0, read=options.proxy_timeout_s, write=60.0, pool=10.0)
    return httpx.AsyncClient(base_url=options.proxy_upstream_url or "", timeout=timeout,
                             limits=httpx.Limits(max_connections=200, max_keepalive_connections=50))


def _forward_headers(request: Request, options: CaptureOptions) -> dict[str, str]:
    headers = {k: v for k, v in request.headers.items()
               if k not in DROPPED_HEADERS and not k.startswith("x-rlhf-")}
    headers["accept-encoding"] = "identity"  # relay bytes as they are; nothing to re-encode
    if options.proxy_auth == "token":  # the capture token is ours: it never goes upstream
        headers.pop("authorization", None)
        if options.proxy_upstream_api_key is not None:
            headers["authorization"] = f"Bearer {options.proxy_upstream_api_key.get_secret_value()}"
    return headers


def _upstream_error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "upstream_error", "code": status}},
                        status_code=status)


def proxy_router(
    options: CaptureOptions,
    client: httpx.AsyncClient,
    capture: BackgroundCapture,
    metrics: CaptureMetrics,
    check_token: Callable[[Request], Awaitable[None]],
) -> APIRouter:
    deps = [Depends(check_token)] if options.proxy_auth == "token" else []
    router = APIRouter(dependencies=deps, tags=["proxy"])

    @router.post(CHAT_PATH)
    async def chat_completions(request: Request) -> Response:
        require_json(request)
        raw = await read_limited(request, options.max_body_bytes)
        try:
            payload: Any = loads_json(raw)
            labels = ExchangeLabels.from_headers(request.headers, options.proxy_model_version)
        except InputRejected as rejected:
            raise HTTPException(rejected.status, str(rejected)) from None
        if not isinstance(payload, dict):
            raise HTTPException(400, "body must be a JSON object")
        upstream_request = client.build_request("POST", "/chat/completions", content=raw,
                                                headers=_forward_headers(request, options))
        try:
            upstream = await client.send(upstream_request, stream=True)
        except httpx.TimeoutException:
            metrics.proxy_upstream_errors.inc()
            return _upstream_error(504, "upstream timed out")
        except httpx.TransportError as error:
            metrics.proxy_upstream_errors.inc()
            log.warning("upstream unreachable: %s", error)
            return _upstream_error(502, "upstream unreachable")
        media_type = upstream.headers.get("content-type")
        if not payload.get("stream") or upstream.status_code != 200:
            try:
                content = await upstream.aread()
            finally:
                await upstream.aclose()
            if upstream.status_code == 200:
                capture.offer(lambda: to_model_output(payload, json.loads(content), labels))
            return Response(content, status_code=upstream.status_code, media_type=media_type)
        return StreamingResponse(_relay(upstream, payload, labels, capture), status_code=200,
                                 media_type=media_type)

    return router


async def _relay(upstream: httpx.Response, payload: dict[str, Any], labels: ExchangeLabels,
                 capture: BackgroundCapture) -> AsyncIterator[bytes]:
    """Yield the upstream's bytes as they come; keep a copy for capture.

    A stream counts as complete when the upstream finished it or its `data: [DONE]` was
    relayed: SDKs often hang up right after [DONE], which cancels this generator before
    the upstream's end is read. A stream abandoned before that is not captured."""
    copy: list[bytes] = []
    size = 0
    finished = False
    try:
        async for chunk in upstream.aiter_raw():
            size += len(chunk)
            if size <= MAX_CAPTURED_STREAM_BYTES:
                copy.append(chunk)
            yield chunk
        finished = True
    finally:
        # Offer before awaiting anything: a cancelled generator may not get further.
        if finished or b"data: [DONE]" in b"".join(copy[-3:])[-256:]:
            _offer_stream(capture, payload, labels, copy, size)
        await upstream.aclose()


def _offer_stream(capture: BackgroundCapture, payload: dict[str, Any], labels: ExchangeLabels,
                  copy: list[bytes], size: int) -> None:
    if size > MAX_CAPTURED_STREAM_BYTES:
        def too_big() -> Any:
            raise ValueError(f"stream of {size} bytes is too large to capture")
        capture.offer(too_big)
        return
    body = b"".join(copy)
    capture.offer(lambda: to_model_output(payload, completion_from_sse(body), labels))
