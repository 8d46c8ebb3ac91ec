"""Bounds on what an HTTP client may send, shared by every endpoint of the loop.

Every service reads input from the network: the capture API and proxy, the policy
server, the trainer's run API, the Argilla webhook listener. Whatever arrives, the
answer is a 4xx naming what is wrong, never a 5xx: bodies are capped before they are
read (declared or streamed), JSON must be standard (no NaN / Infinity, which
`json.loads` accepts and no other JSON parser does) and nested at most a few dozen
levels (deep nesting makes recursive parsers and validators raise RecursionError).
"""

from __future__ import annotations

import json
import math
from collections.abc import Awaitable, Callable, MutableMapping
from typing import IO, Any

MAX_JSON_DEPTH = 32
CONTROL_CHARS = r"^[^\x00-\x1f\x7f]*$"  # for ids and labels: printable on one line


class InputRejected(ValueError):
    """The request is refused with `status`; `field` names the part at fault."""

    def __init__(self, status: int, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.status, self.field, self.message = status, field, message


def _reject_constant(name: str) -> Any:
    raise InputRejected(400, "<body>", f"{name} is not valid JSON (numbers must be finite)")


def loads_json(raw: bytes | str, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Standard JSON only, at most `max_depth` levels deep; InputRejected otherwise."""
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise InputRejected(400, "<body>", f"JSON nested deeper than {max_depth} levels") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputRejected(400, "<body>", f"not valid JSON: {error}") from None
    check_json_value(value, max_depth=max_depth)
    return value


def check_json_value(value: Any, *, max_depth: int = MAX_JSON_DEPTH, field: str = "<body>") -> None:
    """Walks without recursion: nesting deeper than `max_depth`, or a float that is not
    finite (from a parser that allowed it), is InputRejected naming where."""
    stack: list[tuple[Any, str, int]] = [(value, field, 0)]
    while stack:
        item, where, depth = stack.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise InputRejected(422, where, "numbers must be finite (no NaN or Infinity)")
        if isinstance(item, dict | list):
            if depth >= max_depth:
                raise InputRejected(400, where, f"nested deeper than {max_depth} levels")
            pairs = item.items() if isinstance(item, dict) else enumerate(item)
            stack.extend((child, f"{where}.{key}" if where != "<body>" else str(key), depth + 1)
                         for key, child in pairs)


def read_capped(stream: IO[bytes], content_length: str | None, max_bytes: int) -> bytes:
    """A stdlib handler's body: 411 without a length, 400 for a bad one, 413 over the cap."""
    if content_length is None:
        raise InputRejected(411, "Content-Length", "required")
    try:
        length = int(content_length)
    except ValueError:
        raise InputRejected(400, "Content-Length", "not a number") from None
    if length < 0:
        raise InputRejected(400, "Content-Length", "negative")
    if length > max_bytes:
        raise InputRejected(413, "<body>", f"body exceeds {max_bytes} bytes")
    return stream.read(length)


async def read_request_capped(request: Any, max_bytes: int) -> bytes:
    """A FastAPI/Starlette request's body, refused (413) as soon as it goes over
    `max_bytes`, declared or streamed, without reading the rest."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InputRejected(400, "Content-Length", "not a number")
        if int(declared) > max_bytes:
            raise InputRejected(413, "<body>", f"body exceeds {max_bytes} bytes")
    chunks, seen = [], 0
    async for chunk in request.stream():
        seen += len(chunk)
        if seen > max_bytes:
            raise InputRejected(413, "<body>", f"body exceeds {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, declared or streamed, before
    the application reads it whole (FastAPI would otherwise buffer any size)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await _refuse(send, 413 if declared.isdigit() else 400,
                          f"body exceeds {self.max_bytes} bytes" if declared.isdigit() else "invalid Content-Length")
            return
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _refuse(send, 413, f"body exceeds {self.max_bytes} bytes")


class _TooLarge(Exception):
    pass


async def _refuse(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": {"message": message, "type": "invalid_request_error", "param": None,
                                 "code": None}, "detail": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
