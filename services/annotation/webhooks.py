"""Argilla webhooks as a "collect now" signal: the poll, but seconds sooner.

Argilla (through its rq worker) POSTs `record.completed`, `response.created` and
`response.updated` events here, signed the Standard Webhooks way (HMAC-SHA256 over
"id.timestamp.body" with the webhook's secret). A verified delivery wakes the
collector's scheduled job at once, and the record it names (a record event's `id`, a
response event's `record.id`) is handed to that job as a hint: an edited ranking's
record keeps its old `updated_at`, so the poll's walk alone would not find it. The
collector reads the hinted record again from Argilla, so only the id of a verified
delivery is used, never what the body says about the record; a lost, duplicated or
reordered delivery changes nothing but latency (the collector's rescan covers a lost
one).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from uuid import UUID

import argilla as rg
from fastapi import APIRouter, Request, Response

from shared.http_input import InputRejected, read_request_capped

log = logging.getLogger(__name__)

PATH = "/webhooks/argilla"
# On an edit of a submitted response Argilla sends `response.updated`, `record.updated`
# and `record.completed` (measured, argilla-server 2.8.0); two of them are enough.
EVENTS = ["record.completed", "response.created", "response.updated"]
MAX_SKEW_S = 300  # Standard Webhooks' replay window
MAX_BODY_BYTES = 1_000_000  # Argilla's event bodies are a record or a response: kilobytes
SOCKET_TIMEOUT_S = 10.0
MAX_PENDING_RECORDS = 10_000  # hinted ids not yet taken by the collector; beyond, the rescan covers


def verify(secret: str, headers: dict[str, str], body: bytes, now: float | None = None) -> bool:
    """True if one of the `webhook-signature` entries matches (Standard Webhooks v1)."""
    try:
        msg_id, timestamp = headers["webhook-id"], headers["webhook-timestamp"]
        if abs((now or time.time()) - int(timestamp)) > MAX_SKEW_S:
            return False
        key = base64.b64decode(secret.removeprefix("whsec_"))
    except (KeyError, ValueError):
        return False
    expected = base64.b64encode(
        hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    for entry in headers.get("webhook-signature", "").split():
        version, _, signature = entry.partition(",")
        # bytes, not str: compare_digest refuses a non-ASCII str (a forged header)
        if version == "v1" and hmac.compare_digest(signature.encode("utf-8", "replace"), expected.encode()):
            return True
    return False


def record_id_of(body: bytes) -> str | None:
    """The record a (verified) delivery is about, as a UUID string; None for anything
    else. Record events carry the record as `data`, response events as `data.record`."""
    try:
        event = json.loads(body)
        kind, data = str(event["type"]), event["data"]
        if kind.startswith("record."):
            raw: Any = data["id"]
        elif kind.startswith("response."):
            raw = data["record"]["id"]
        else:
            return None
        return str(UUID(str(raw)))
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


DESCRIPTION = "rlhf-loop annotation collector"


def register_webhook(client: rg.Argilla, url: str) -> str:
    """The webhook for `url` (reused if present, else created); returns its secret.
    Our webhooks for other URLs are deleted: an embedded service listens on a new port
    after each restart, and Argilla would keep retrying the dead ones."""
    for webhook in list(client.webhooks):
        if webhook.url != url and getattr(webhook, "description", None) == DESCRIPTION:
            webhook.delete()
    for webhook in client.webhooks:
        if webhook.url == url:
            if sorted(webhook.events) != sorted(EVENTS):
                webhook.events = EVENTS  # type: ignore[assignment]
                webhook.update()
            return str(webhook.secret)
    created = rg.Webhook(url=url, events=EVENTS, description=DESCRIPTION,  # type: ignore[arg-type]
                         _client=client).create()
    return str(created.secret)


class WebhookListener:
    """The webhook endpoint as a FastAPI router (served by the App on the webhook port);
    `on_event` must be quick (it only wakes the scheduler). The records verified
    deliveries name wait in `take_records`."""

    def __init__(self, on_event: Callable[[], None]) -> None:
        self.secret: str | None = None
        self._on_event = on_event
        self._records: set[str] = set()
        self._records_lock = threading.Lock()

    def take_records(self) -> list[str]:
        """The record ids named by verified deliveries since the last call."""
        with self._records_lock:
            taken, self._records = sorted(self._records), set()
        return taken

    def _remember(self, body: bytes) -> None:
        record_id = record_id_of(body)
        if record_id is None:
            return
        with self._records_lock:
            if len(self._records) < MAX_PENDING_RECORDS:
                self._records.add(record_id)

    def router(self) -> APIRouter:
        router = APIRouter(include_in_schema=False)

        @router.post(PATH)
        async def delivery(request: Request) -> Response:
            try:  # capped before reading, and a sender that stops sending is given up on
                body = await asyncio.wait_for(read_request_capped(request, MAX_BODY_BYTES), SOCKET_TIMEOUT_S)
            except InputRejected as rejected:
                return Response(status_code=rejected.status)
            except TimeoutError:
                return Response(status_code=408)
            headers = {k.lower(): v for k, v in request.headers.items()}
            if self.secret is None or not verify(self.secret, headers, body):
                return Response(status_code=401)
            self._remember(body)
            self._on_event()
            return Response(status_code=204)

        return router
