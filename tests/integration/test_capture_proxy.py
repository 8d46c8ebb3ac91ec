"""The capturing proxy with the real `openai` SDK as the caller, the real broker behind,
and a small OpenAI-compatible FastAPI app as the upstream (a stand-in for vLLM, which
cannot run here; see tests/fake_openai_upstream.py)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import openai
import pytest

from shared.web import AppServer
from shared.contracts import ModelOutput, output_id_for
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.capture_support import AUTH, TOKEN, RunningCapture, capture_settings, running_capture
from tests.conftest import read_topic, wait_for
from tests.fake_openai_upstream import UPSTREAM_KEY, answer, create_upstream

pytestmark = pytest.mark.integration

MESSAGES = [{"role": "developer", "content": "be kind"}, {"role": "user", "content": "hello there"}]


UPSTREAM_APP = create_upstream()


@pytest.fixture(scope="module")
def upstream() -> Iterator[str]:
    with AppServer(UPSTREAM_APP, "127.0.0.1", 0, log_level="warning", graceful_s=1) as server:
        yield f"http://127.0.0.1:{server.port}/v1"


@pytest.fixture
def topic(make_topic: Callable[..., Topic]) -> Topic:
    return make_topic(ModelOutput, 1)


@pytest.fixture
def proxy(kafka: KafkaSettings, topic: Topic, upstream: str) -> Iterator[RunningCapture]:
    settings = capture_settings(kafka, proxy_upstream_url=upstream, proxy_upstream_api_key=UPSTREAM_KEY,
                                proxy_model_version="policy-v7")
    with running_capture(settings, topic) as running:
        yield running


def sdk(base_url: str, api_key: str = TOKEN, **headers: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key=api_key, default_headers=headers, max_retries=0)


def captured(kafka: KafkaSettings, topic: Topic, expected: int = 1) -> list[ModelOutput]:
    return [ModelOutput.model_validate_json(r.value) for r in read_topic(kafka, topic.name, expected)]


def test_non_streaming_answer_is_unchanged_and_every_choice_is_captured(
        proxy: RunningCapture, kafka: KafkaSettings, topic: Topic) -> None:
    client = sdk(proxy.base_url, **{"X-RLHF-App": "shop", "X-RLHF-Tags": "a, b", "X-RLHF-Request-Id": "px-1"})
    completion = client.chat.completions.create(model="tiny-policy", messages=MESSAGES, n=3, temperature=0.8)
    assert [c.message.content for c in completion.choices] == [answer("hello there", i) for i in range(3)]
    assert completion.usage is not None and completion.usage.total_tokens == 20
    (event,) = captured(kafka, topic)
    assert event.event_id == output_id_for("px-1") and event.source == "proxy"
    assert [(m.role, m.content) for m in event.conversation] == [("system", "be kind"), ("user", "hello there")]
    assert [(c.candidate_id, c.text, c.finish_reason) for c in event.candidates] == [
        (f"c{i}", answer("hello there", i), "stop") for i in range(3)]
    assert event.candidates[0].model.model_dump() == {"name": "tiny-policy", "version": "policy-v7", "checkpoint": None}
    assert event.candidates[0].generation_params == {"n": 3, "temperature": 0.8}
    assert (event.app, event.tags) == ("shop", ["a", "b"])


def test_streaming_answer_is_relayed_chunk_by_chunk_and_captured(
        proxy: RunningCapture, kafka: KafkaSettings, topic: Topic) -> None:
    stream = sdk(proxy.base_url).chat.completions.create(model="tiny-policy", messages=MESSAGES, n=2, stream=True)
    texts: dict[int, str] = {}
    chunks = 0
    for chunk in stream:
        chunks += 1
        for choice in chunk.choices:
            texts[choice.index] = texts.get(choice.index, "") + (choice.delta.content or "")
    assert texts == {0: answer("hello there", 0), 1: answer("hello there", 1)}
    assert chunks > 4  # streamed, not one blob
    (event,) = captured(kafka, topic)
    assert [c.text for c in event.candidates] == [texts[0], texts[1]]
    assert event.client_request_id is not None and event.client_request_id.startswith("chatcmpl-")
    assert event.event_id == output_id_for(event.client_request_id)
    assert wait_for(lambda: proxy.metric("rlhf_capture_events_accepted_total", source="proxy") == 1, 5)


def test_upstream_errors_are_passed_through_and_not_captured(kafka: KafkaSettings, topic: Topic,
                                                            upstream: str) -> None:
    settings = capture_settings(kafka, proxy_upstream_url=upstream, proxy_auth="passthrough")
    with running_capture(settings, topic) as running:
        with pytest.raises(openai.AuthenticationError):  # the upstream's 401: passthrough checks nothing
            sdk(running.base_url, api_key="wrong").chat.completions.create(model="m", messages=MESSAGES)
        sdk(running.base_url, api_key=UPSTREAM_KEY).chat.completions.create(model="m", messages=MESSAGES)
        assert wait_for(lambda: running.metric("rlhf_capture_events_accepted_total", source="proxy") == 1, 5)
    records = read_topic(kafka, topic.name, expected=2, timeout_s=1.0)
    assert len(records) == 1  # only the successful exchange


def test_the_proxy_needs_the_capture_token_and_never_forwards_it(proxy: RunningCapture) -> None:
    before = len(UPSTREAM_APP.state.requests)
    with pytest.raises(openai.AuthenticationError):  # our 401: the upstream's key is not the capture token
        sdk(proxy.base_url, api_key=UPSTREAM_KEY).chat.completions.create(model="m", messages=MESSAGES)
    assert len(UPSTREAM_APP.state.requests) == before  # refused before anything went upstream
    completion = sdk(proxy.base_url).chat.completions.create(model="m", messages=MESSAGES)
    assert completion.choices[0].message.content == answer("hello there", 0)
    assert UPSTREAM_APP.state.requests[-1]["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_without_an_upstream_key_the_proxy_still_needs_the_capture_token(
        kafka: KafkaSettings, topic: Topic, upstream: str) -> None:
    """The review's defect: without `proxy_upstream_api_key` the proxy let anyone through
    to the upstream. Now it answers 401 itself, and the capture token it checked is not
    sent upstream (an upstream that wants a key gets none, and says so)."""
    settings = capture_settings(kafka, proxy_upstream_url=upstream)
    with running_capture(settings, topic) as running:
        before = len(UPSTREAM_APP.state.requests)
        anonymous = httpx.post(f"{running.base_url}/v1/chat/completions", json={"model": "m", "messages": MESSAGES})
        assert anonymous.status_code == 401 and anonymous.headers["www-authenticate"] == "Bearer"
        assert len(UPSTREAM_APP.state.requests) == before
        with pytest.raises(openai.AuthenticationError):  # the upstream's own 401: it got no key
            sdk(running.base_url).chat.completions.create(model="m", messages=MESSAGES)
        assert "authorization" not in UPSTREAM_APP.state.requests[-1]


def test_unreachable_upstream_is_502(kafka: KafkaSettings, topic: Topic) -> None:
    settings = capture_settings(kafka, proxy_upstream_url="http://127.0.0.1:9/v1")
    with running_capture(settings, topic) as running:
        response = httpx.post(f"{running.base_url}/v1/chat/completions", headers=AUTH,
                              json={"model": "m", "messages": MESSAGES})
        assert response.status_code == 502
        assert response.json()["error"]["type"] == "upstream_error"
        assert running.metric("rlhf_capture_proxy_upstream_errors_total") == 1
