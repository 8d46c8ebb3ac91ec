"""The client library against the real service (and against nothing listening)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest

from services.capture.client import (
    AsyncCaptureClient,
    CaptureClient,
    CaptureRejected,
    CaptureUnavailable,
    build_output,
)
from shared.contracts import ModelOutput, output_id_for
from shared.embedded.ports import free_port
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.capture_support import TOKEN, RunningCapture, capture_settings, running_capture
from tests.conftest import read_topic, wait_for

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "user", "content": "hi"}]
CANDIDATES = [{"text": "hello!", "model": {"name": "policy", "version": "v7"}}]


@pytest.fixture
def topic(make_topic: Callable[..., Topic]) -> Topic:
    return make_topic(ModelOutput, 1)


@pytest.fixture
def capture(kafka: KafkaSettings, topic: Topic) -> Iterator[RunningCapture]:
    with running_capture(capture_settings(kafka), topic) as running:
        yield running


def test_buffered_outputs_arrive_on_the_topic(capture: RunningCapture, kafka: KafkaSettings, topic: Topic) -> None:
    with CaptureClient(capture.base_url, TOKEN, batch_size=4) as client:
        ids = [client.log_output(MESSAGES, CANDIDATES, app="bot", tags=["t"]) for _ in range(10)]
        assert client.flush(timeout_s=10)
        assert client.stats.sent == 10 and client.stats.retries == 0
    events = [ModelOutput.model_validate_json(r.value) for r in read_topic(kafka, topic.name, 10)]
    assert sorted(e.event_id for e in events) == sorted(output_id_for(i) for i in ids)
    assert all(e.app == "bot" and e.candidates[0].text == "hello!" for e in events)


def test_a_bad_item_is_dropped_and_the_rest_of_its_batch_still_ships(capture: RunningCapture) -> None:
    with CaptureClient(capture.base_url, TOKEN) as client:
        client.enqueue(build_output(MESSAGES, CANDIDATES))
        client.enqueue(build_output(MESSAGES, [{"text": "no model"}]))
        client.enqueue(build_output(MESSAGES, CANDIDATES))
        assert client.flush(timeout_s=10)
        assert (client.stats.sent, client.stats.rejected, client.stats.retries) == (2, 1, 0)


def test_blocking_send_returns_the_id_and_never_retries_a_4xx(capture: RunningCapture) -> None:
    with CaptureClient(capture.base_url, TOKEN, max_retries=3) as client:
        assert client.send(build_output(MESSAGES, CANDIDATES, client_request_id="cl-1")) == output_id_for("cl-1")
        with pytest.raises(CaptureRejected) as rejected:
            client.send(build_output(MESSAGES, [{"text": "no model"}]))
        assert rejected.value.status == 422
        assert client.stats.retries == 0
    assert capture.metric("rlhf_capture_requests_total", endpoint="/v1/outputs", code="422") == 1
    with CaptureClient(capture.base_url, "wrong-token") as client, pytest.raises(CaptureRejected) as denied:
        client.send(build_output(MESSAGES, CANDIDATES))
    assert denied.value.status == 401


def test_connection_errors_are_retried_then_reported() -> None:
    with CaptureClient(f"http://127.0.0.1:{free_port()}", TOKEN, max_retries=2, backoff_initial_s=0.01) as client:
        with pytest.raises(CaptureUnavailable, match="3 attempts"):
            client.send(build_output(MESSAGES, CANDIDATES))
        assert client.stats.retries == 2


def test_full_buffer_drops_the_oldest_and_counts_it() -> None:
    client = CaptureClient(f"http://127.0.0.1:{free_port()}", TOKEN, buffer_size=3,
                           backoff_initial_s=0.01, backoff_max_s=0.05)
    client.log_output(MESSAGES, CANDIDATES, client_request_id="first")
    assert wait_for(lambda: client.stats.retries >= 1, timeout_s=5)  # "first" is in flight, retrying
    for i in range(5):
        client.log_output(MESSAGES, CANDIDATES, client_request_id=f"later-{i}")
    assert client.stats.dropped_buffer_full == 2
    assert [o["client_request_id"] for o in client._buffer] == ["later-2", "later-3", "later-4"]
    client.close(timeout_s=0.3)
    assert client.stats.dropped_on_close == 4 and client.stats.sent == 0


def test_async_client(capture: RunningCapture) -> None:
    async def go() -> tuple[str, list[str]]:
        async with AsyncCaptureClient(capture.base_url, TOKEN) as client:
            one = await client.log_output(MESSAGES, CANDIDATES, client_request_id="as-1")
            many = await client.send_batch([build_output(MESSAGES, CANDIDATES, client_request_id="as-2")])
            with pytest.raises(CaptureRejected):
                await client.send({"messages": []})
            return one, many

    one, many = asyncio.run(go())
    assert one == output_id_for("as-1") and many == [output_id_for("as-2")]
