"""Helpers for the capture tests: the real app on a real uvicorn server on a free port,
writing to a real (embedded) broker."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from kafka.errors import KafkaError
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.capture.app import create_app
from shared.web import AppServer
from services.capture.settings import CaptureOptions, CaptureSettings
from shared.bus import EventProducer
from shared.observability.metrics import BusMetrics
from shared.settings import KafkaSettings
from shared.topics import Topic

TOKEN = "s3cret-capture-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def capture_settings(kafka: KafkaSettings, **options: Any) -> CaptureSettings:
    return CaptureSettings(kafka=kafka, capture=CaptureOptions(**{"token": SecretStr(TOKEN), **options}))


@dataclass
class RunningCapture:
    base_url: str
    registry: CollectorRegistry
    settings: CaptureSettings

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


@contextmanager
def running_capture(settings: CaptureSettings, topic: Topic) -> Iterator[RunningCapture]:
    registry = CollectorRegistry()
    producer = EventProducer(settings.kafka, BusMetrics(registry),
                             max_block_ms=int(settings.capture.publish_timeout_s * 1000))
    try:
        app = create_app(settings, producer, registry, topic=topic)
        with AppServer(app, "127.0.0.1", 0, log_level="warning", graceful_s=2) as server:
            yield RunningCapture(f"http://127.0.0.1:{server.port}", registry, settings)
    finally:
        try:
            producer.close(timeout_s=0.5)
        except KafkaError:  # unacknowledged sends were answered 503
            pass


def payload(request_id: str | None = None, n: int = 2, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "messages": [{"role": "system", "content": "be brief"},
                     {"role": "user", "content": f"what is {request_id or 'x'}?"}],
        "candidates": [
            {"text": f"answer {i}", "model": {"name": "tiny-llama", "version": "v3", "checkpoint": f"step-{i}"},
             "generation_params": {"temperature": 0.7, "top_p": 0.9}, "finish_reason": "stop"}
            for i in range(n)
        ],
        "app": "support-bot", "tenant": "acme", "tags": ["beta"],
    }
    if request_id is not None:
        body["client_request_id"] = request_id
    body.update(extra)
    return body
