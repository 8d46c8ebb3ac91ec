"""When the broker is gone: the ingest API says 503 (never 202), the proxy still
answers its caller and counts the capture it could not make. Each test owns a broker
and stops it mid-test."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from services.capture.client import CaptureClient, CaptureUnavailable, build_output
from shared.web import AppServer
from shared.embedded.broker import EmbeddedBroker
from shared.topics import OUTPUTS
from tests.capture_support import AUTH, TOKEN, RunningCapture, capture_settings, payload, running_capture
from tests.conftest import FAST_GROUP, wait_for
from tests.fake_openai_upstream import UPSTREAM_KEY, create_upstream

pytestmark = pytest.mark.integration

PUBLISH_TIMEOUT_S = 1.5


@pytest.fixture
def doomed(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    broker = EmbeddedBroker(log_file=tmp_path / "tansu.log").start()
    yield broker
    broker.stop()


@pytest.fixture
def capture(doomed: EmbeddedBroker) -> Iterator[RunningCapture]:
    with AppServer(create_upstream(), "127.0.0.1", 0, log_level="warning", graceful_s=1) as upstream:
        settings = capture_settings(doomed.kafka_settings(**FAST_GROUP), publish_timeout_s=PUBLISH_TIMEOUT_S,
                                    retry_after_s=7, proxy_upstream_url=f"http://127.0.0.1:{upstream.port}/v1",
                                    proxy_upstream_api_key=UPSTREAM_KEY)
        with running_capture(settings, OUTPUTS) as running:
            yield running


def test_broker_down_is_503_with_retry_after_never_202(doomed: EmbeddedBroker, capture: RunningCapture) -> None:
    with httpx.Client(base_url=capture.base_url, headers=AUTH, timeout=15) as http:
        assert http.post("/v1/outputs", json=payload("before")).status_code == 202
        doomed.kill()
        started = time.monotonic()
        response = http.post("/v1/outputs", json=payload("during"))
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "7"
        assert time.monotonic() - started < PUBLISH_TIMEOUT_S + 2
        batch = http.post("/v1/outputs/batch", json={"items": [payload("b1"), payload("b2")]})
        assert batch.status_code == 503
        assert wait_for(lambda: http.get("/readyz").status_code == 503, timeout_s=5)
        assert http.get("/readyz").json() == {"status": "unavailable", "checks": {"kafka": False}}
        assert http.get("/healthz").status_code == 200  # alive: do not restart, just not ready
    assert capture.metric("rlhf_capture_broker_unavailable_total") == 2
    assert capture.metric("rlhf_capture_requests_total", endpoint="/v1/outputs", code="503") == 1
    assert capture.metric("rlhf_capture_events_accepted_total", source="api") == 1


def test_broker_down_never_fails_the_proxied_request(doomed: EmbeddedBroker, capture: RunningCapture) -> None:
    client = openai.OpenAI(base_url=f"{capture.base_url}/v1", api_key=TOKEN, max_retries=0)
    messages = [{"role": "user", "content": "hi"}]
    client.chat.completions.create(model="m", messages=messages)
    assert wait_for(lambda: capture.metric("rlhf_capture_events_accepted_total", source="proxy") == 1, 10)
    doomed.kill()
    started = time.monotonic()
    completion = client.chat.completions.create(model="m", messages=messages, n=2)
    chunks = list(client.chat.completions.create(model="m", messages=messages, stream=True))
    assert time.monotonic() - started < 1.0  # capture waits for the broker, the caller does not
    assert len(completion.choices) == 2 and chunks
    assert wait_for(lambda: capture.metric("rlhf_capture_proxy_capture_failures_total", reason="broker") == 2,
                    timeout_s=PUBLISH_TIMEOUT_S * 3)


def test_client_retries_503_then_gives_up(doomed: EmbeddedBroker, capture: RunningCapture) -> None:
    doomed.kill()
    body = build_output([{"role": "user", "content": "hi"}], [{"text": "x", "model": {"name": "m", "version": "1"}}])
    with CaptureClient(capture.base_url, TOKEN, max_retries=1, backoff_max_s=0.05) as client:
        with pytest.raises(CaptureUnavailable, match="HTTP 503"):
            client.send(body)
        assert client.stats.retries == 1
    assert capture.metric("rlhf_capture_requests_total", endpoint="/v1/outputs", code="503") == 2
