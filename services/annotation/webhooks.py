"""Argilla webhooks as a "collect now" signal: the poll, but seconds sooner.

Argilla (through its rq worker) POSTs `record.completed` and `response.created`
events here, signed the Standard Webhooks way (HMAC-SHA256 over "id.timestamp.body"
with the webhook's secret). A verified delivery wakes the collector's scheduled job at
once; the collector then reads records exactly as a poll does, so a lost, duplicated
or reordered delivery changes nothing but latency, and the body is never trusted.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import argilla as rg

from shared.http_input import InputRejected, read_capped

log = logging.getLogger(__name__)

PATH = "/webhooks/argilla"
EVENTS = ["record.completed", "response.created"]
MAX_SKEW_S = 300  # Standard Webhooks' replay window
MAX_BODY_BYTES = 1_000_000  # Argilla's event bodies are a record or a response: kilobytes
SOCKET_TIMEOUT_S = 10.0


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
    """A stdlib HTTP server on its own thread; `on_event` must be quick (it only wakes
    the scheduler)."""

    def __init__(self, host: str, port: int, on_event: Callable[[], None]) -> None:
        self.secret: str | None = None
        self._on_event = on_event
        self._server = ThreadingHTTPServer((host, port), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="webhooks", daemon=True)
        self.received = 0

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> "WebhookListener":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        outer = self

        class Handler(BaseHTTPRequestHandler):
            timeout = SOCKET_TIMEOUT_S  # a client that stops sending does not hold a thread forever

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                if self.path.split("?", 1)[0] != PATH:
                    self._send(404)
                    return
                try:  # capped before reading: the signature is checked on what was read
                    body = read_capped(self.rfile, self.headers.get("Content-Length"), MAX_BODY_BYTES)
                except InputRejected as rejected:
                    self._send(rejected.status)
                    return
                headers = {k.lower(): v for k, v in self.headers.items()}
                if outer.secret is None or not verify(outer.secret, headers, body):
                    self._send(401)
                else:
                    outer.received += 1
                    outer._on_event()
                    self._send(204)

            def _send(self, status: int) -> None:
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                return

        return Handler
