"""How a webhook delivery becomes a hint to re-read one record (the end-to-end paths,
with the real Argilla, are in tests/integration/test_annotation_edits.py)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid

import httpx

from services.annotation import collector
from services.annotation.settings import AnnotationOptions
from services.annotation.webhooks import EVENTS, PATH, WebhookListener, record_id_of
from tests.helpers.routes import serving

RECORD = str(uuid.uuid4())
# The shapes argilla-server 2.8.0 sends (trimmed): record events carry the record as
# `data`, response events the response with its record inside.
RECORD_COMPLETED = {"type": "record.completed", "version": 1, "data": {"id": RECORD, "status": "completed"}}
RESPONSE_UPDATED = {"type": "response.updated", "version": 1,
                    "data": {"id": str(uuid.uuid4()), "status": "submitted", "record": {"id": RECORD}}}


def body(event: object) -> bytes:
    return json.dumps(event).encode()


def test_the_record_a_delivery_names_is_read_from_record_and_response_events() -> None:
    assert record_id_of(body(RECORD_COMPLETED)) == RECORD
    assert record_id_of(body(RESPONSE_UPDATED)) == RECORD
    assert record_id_of(body({**RESPONSE_UPDATED, "type": "response.created"})) == RECORD
    assert record_id_of(body({"type": "record.completed", "data": {"id": RECORD.upper()}})) == RECORD


def test_a_delivery_that_names_no_record_gives_no_hint() -> None:
    assert record_id_of(body({"type": "dataset.updated", "data": {"id": RECORD}})) is None
    assert record_id_of(body({"type": "record.completed", "data": {"id": "../datasets"}})) is None
    assert record_id_of(body({"type": "response.updated", "data": {"record": None}})) is None
    assert record_id_of(body({"type": "response.updated", "data": []})) is None
    assert record_id_of(body([1, 2])) is None
    assert record_id_of(b"not json") is None
    assert record_id_of(b"[" * 100_000) is None


def test_the_listener_keeps_the_records_of_verified_deliveries_only() -> None:
    key = b"0123456789abcdef0123456789abcdef"
    woken: list[int] = []
    listener = WebhookListener(on_event=lambda: woken.append(1))
    listener.secret = "whsec_" + base64.b64encode(key).decode()

    def signed(content: bytes, msg_id: str) -> dict[str, str]:
        timestamp = str(int(time.time()))
        mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + content, hashlib.sha256).digest()
        return {"webhook-id": msg_id, "webhook-timestamp": timestamp,
                "webhook-signature": f"v1,{base64.b64encode(mac).decode()}"}

    with serving(listener.router()) as base, httpx.Client(timeout=10) as http:
        url = f"{base}{PATH}"
        forged = body({"type": "record.completed", "data": {"id": str(uuid.uuid4())}})
        assert http.post(url, content=forged, headers={**signed(forged, "m0"), "webhook-id": "m9"}).status_code == 401
        for n, event in enumerate((RECORD_COMPLETED, RESPONSE_UPDATED)):
            content = body(event)
            assert http.post(url, content=content, headers=signed(content, f"m{n + 1}")).status_code == 204
        assert listener.take_records() == [RECORD]  # two deliveries about one record: one hint
        assert listener.take_records() == []
        assert len(woken) == 2


def test_edits_are_subscribed_to_and_the_rescan_defaults_match_the_settings() -> None:
    assert "response.updated" in EVENTS and "record.completed" in EVENTS
    options = AnnotationOptions()
    assert options.rescan_interval_s == collector.RESCAN_INTERVAL_S
    assert options.rescan_window_s == collector.RESCAN_WINDOW_S
