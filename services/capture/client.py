"""The Python client a chatbot backend imports to log what it answered.

    from services.capture.client import CaptureClient
    capture = CaptureClient("http://capture:9000", token=os.environ["CAPTURE_TOKEN"])
    capture.log_output(messages, [{"text": reply, "model": {"name": "policy", "version": "v7"}}])
    ...
    capture.close()   # flushes what is buffered

`log_output` never blocks the chatbot and never raises: it appends to a bounded
buffer that a background thread ships to /v1/outputs/batch. When the service is slow
or down the buffer fills and the OLDEST entries are dropped (counted in `stats`), so
memory stays bounded and the newest traffic wins. Transient failures (503, 5xx,
connection errors, timeouts) are retried with jittered exponential backoff, honouring
Retry-After; a 4xx is never retried (the request itself is wrong). Each entry gets a
client request id up front, so a retry after a lost response is deduplicated
downstream. `send`/`send_batch` are the blocking variants that return event ids.

Only httpx and the standard library: nothing of the service is imported.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

log = logging.getLogger(__name__)

Output = dict[str, Any]
RETRY_STATUSES = frozenset({500, 502, 503, 504})


class CaptureError(Exception):
    """The capture service did not store the output."""


class CaptureRejected(CaptureError):
    """A 4xx: the request is wrong and resending it cannot help."""

    def __init__(self, status: int, detail: Any) -> None:
        super().__init__(f"capture rejected the request ({status}): {detail}")
        self.status, self.detail = status, detail


class CaptureUnavailable(CaptureError):
    """Retries exhausted on 5xx or connection errors."""


@dataclass
class ClientStats:
    sent: int = 0
    retries: int = 0
    rejected: int = 0
    dropped_buffer_full: int = 0
    dropped_on_close: int = 0


def build_output(
    messages: Sequence[Mapping[str, str]],
    candidates: Sequence[Mapping[str, Any]],
    *,
    client_request_id: str | None = None,
    feedback: Sequence[Mapping[str, Any]] = (),
    conversation_id: str | None = None,
    app: str | None = None,
    tenant: str | None = None,
    tags: Sequence[str] = (),
    generated_at: str | None = None,
) -> Output:
    """The JSON body of POST /v1/outputs (see docs/capture.md); a request id is made up
    when none is given, so retries of this very output keep one event id."""
    body: Output = {
        "client_request_id": client_request_id or str(uuid.uuid4()),
        "messages": [dict(m) for m in messages],
        "candidates": [dict(c) for c in candidates],
        "feedback": [dict(f) for f in feedback],
        "tags": list(tags),
    }
    optional = {"conversation_id": conversation_id, "app": app, "tenant": tenant, "generated_at": generated_at}
    body.update({k: v for k, v in optional.items() if v is not None})
    return body


class _Backoff:
    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s, self.max_s = initial_s, max_s

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        delay = min(self.max_s, self.initial_s * 2 ** attempt) * random.uniform(0.5, 1.0)
        retry_after = response.headers.get("retry-after", "") if response is not None else ""
        if retry_after.isdigit():
            delay = max(delay, min(self.max_s, float(retry_after)))
        return delay


def _detail(response: httpx.Response) -> Any:
    try:
        return response.json().get("detail", response.text)
    except ValueError:
        return response.text


def _rejected_items(detail: Any) -> set[int]:
    """Indices of batch items a 422 names (loc = ["body", "items", i, ...])."""
    bad = set()
    for item in detail if isinstance(detail, list) else []:
        loc = item.get("loc", []) if isinstance(item, dict) else []
        if len(loc) > 2 and loc[:2] == ["body", "items"] and isinstance(loc[2], int):
            bad.add(loc[2])
    return bad


class CaptureClient:
    """Thread-safe; one per process. See the module docstring."""

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout_s: float = 10.0,
        max_retries: int = 5,
        backoff_initial_s: float = 0.2,
        backoff_max_s: float = 10.0,
        buffer_size: int = 10_000,
        batch_size: int = 100,
        flush_interval_s: float = 0.2,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url, headers=headers, timeout=timeout_s, transport=transport)
        self._max_retries = max_retries
        self._backoff = _Backoff(backoff_initial_s, backoff_max_s)
        self._buffer: collections.deque[Output] = collections.deque()
        self._buffer_size = buffer_size
        self._batch_size = batch_size
        self._flush_interval_s = flush_interval_s
        self._lock = threading.Condition()
        self._in_flight = 0
        self._closing = threading.Event()
        self.stats = ClientStats()
        self._thread = threading.Thread(target=self._ship_forever, name="capture-client", daemon=True)
        self._thread.start()

    # -- buffered, never blocks ----------------------------------------------------

    def log_output(self, messages: Sequence[Mapping[str, str]], candidates: Sequence[Mapping[str, Any]],
                   **fields: Any) -> str:
        """Buffer one output for the background thread; returns its client request id."""
        output = build_output(messages, candidates, **fields)
        self.enqueue(output)
        return str(output["client_request_id"])

    def enqueue(self, output: Output) -> None:
        with self._lock:
            if len(self._buffer) >= self._buffer_size:
                self._buffer.popleft()
                self.stats.dropped_buffer_full += 1
            self._buffer.append(output)
            self._lock.notify()

    def flush(self, timeout_s: float = 30.0) -> bool:
        """Wait until everything buffered so far was shipped (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout_s
        with self._lock:
            self._lock.notify()
            while self._buffer or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._lock.wait(min(remaining, 0.05))
        return True

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush for up to `timeout_s`, then stop; what is left is counted as dropped."""
        self.flush(timeout_s)
        self._closing.set()
        with self._lock:
            self._lock.notify()
        self._thread.join(timeout_s)
        with self._lock:
            self.stats.dropped_on_close += len(self._buffer)
            self._buffer.clear()
        self._http.close()

    def __enter__(self) -> "CaptureClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- blocking ------------------------------------------------------------------

    def send(self, output: Output) -> str:
        """POST one output now, with retries; its event id. Raises CaptureError."""
        return str(self._post("/v1/outputs", output, self._max_retries).json()["event_id"])

    def send_batch(self, outputs: Sequence[Output]) -> list[str]:
        response = self._post("/v1/outputs/batch", {"items": list(outputs)}, self._max_retries)
        return list(response.json()["event_ids"])

    def _post(self, path: str, body: Any, max_retries: int | None) -> httpx.Response:
        """POST with retries on transient failures; `max_retries=None` retries until closing."""
        attempt = 0
        while True:
            response: httpx.Response | None = None
            try:
                response = self._http.post(path, json=body)
            except httpx.TransportError as error:  # connection refused/reset, timeouts
                problem: str = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 400:
                    return response
                if response.status_code not in RETRY_STATUSES:
                    raise CaptureRejected(response.status_code, _detail(response))
                problem = f"HTTP {response.status_code}"
            if (max_retries is not None and attempt >= max_retries) or self._closing.is_set():
                raise CaptureUnavailable(f"gave up after {attempt + 1} attempts: {problem}")
            self.stats.retries += 1
            self._closing.wait(self._backoff.delay(attempt, response))
            attempt += 1

    # -- the background thread -----------------------------------------------------

    def _ship_forever(self) -> None:
        while True:
            with self._lock:
                while not self._buffer and not self._closing.is_set():
                    self._lock.wait(self._flush_interval_s)
                if not self._buffer:
                    return  # closing, nothing left
                batch = [self._buffer.popleft() for _ in range(min(self._batch_size, len(self._buffer)))]
                self._in_flight = len(batch)
            try:
                self._ship(batch)
            finally:
                with self._lock:
                    self._in_flight = 0
                    self._lock.notify_all()

    def _ship(self, batch: list[Output]) -> None:
        while batch:
            try:
                self._post("/v1/outputs/batch", {"items": batch}, max_retries=None)
                self.stats.sent += len(batch)
                return
            except CaptureRejected as rejected:
                bad = _rejected_items(rejected.detail) if rejected.status == 422 else set()
                if not bad or len(bad) >= len(batch):
                    self.stats.rejected += len(batch)
                    log.warning("capture: %d output(s) rejected: %s", len(batch), rejected)
                    return
                self.stats.rejected += len(bad)
                log.warning("capture: %d output(s) rejected: %s", len(bad), rejected)
                batch = [item for i, item in enumerate(batch) if i not in bad]
            except CaptureUnavailable as unavailable:  # only while closing
                with self._lock:
                    self.stats.dropped_on_close += len(batch)
                log.warning("capture: %d output(s) dropped at close: %s", len(batch), unavailable)
                return


class AsyncCaptureClient:
    """The asyncio variant of the blocking calls (`send`, `send_batch`, `log_output`
    awaiting the ack), same retry rules; no background buffer."""

    def __init__(self, base_url: str, token: str | None = None, *, timeout_s: float = 10.0,
                 max_retries: int = 5, backoff_initial_s: float = 0.2, backoff_max_s: float = 10.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=base_url, headers=headers, timeout=timeout_s, transport=transport)
        self._max_retries = max_retries
        self._backoff = _Backoff(backoff_initial_s, backoff_max_s)
        self.stats = ClientStats()

    async def log_output(self, messages: Sequence[Mapping[str, str]], candidates: Sequence[Mapping[str, Any]],
                         **fields: Any) -> str:
        return await self.send(build_output(messages, candidates, **fields))

    async def send(self, output: Output) -> str:
        return str((await self._post("/v1/outputs", output)).json()["event_id"])

    async def send_batch(self, outputs: Sequence[Output]) -> list[str]:
        return list((await self._post("/v1/outputs/batch", {"items": list(outputs)})).json()["event_ids"])

    async def _post(self, path: str, body: Any) -> httpx.Response:
        for attempt in range(self._max_retries + 1):
            response: httpx.Response | None = None
            try:
                response = await self._http.post(path, json=body)
            except httpx.TransportError as error:
                problem = f"{type(error).__name__}: {error}"
            else:
                if response.status_code < 400:
                    self.stats.sent += 1
                    return response
                if response.status_code not in RETRY_STATUSES:
                    raise CaptureRejected(response.status_code, _detail(response))
                problem = f"HTTP {response.status_code}"
            if attempt < self._max_retries:
                self.stats.retries += 1
                await asyncio.sleep(self._backoff.delay(attempt, response))
        raise CaptureUnavailable(f"gave up after {self._max_retries + 1} attempts: {problem}")

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> "AsyncCaptureClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
