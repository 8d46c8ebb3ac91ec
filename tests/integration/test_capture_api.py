"""The ingest API against a real uvicorn server and the real embedded broker."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.capture.mapping import to_model_output
from services.capture.schema import OutputIn
from shared.contracts import ModelOutput, output_id_for
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.capture_support import AUTH, TOKEN, RunningCapture, capture_settings, payload, running_capture
from tests.conftest import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(make_topic: Callable[..., Topic]) -> Topic:
    return make_topic(ModelOutput, 1)


@pytest.fixture
def capture(kafka: KafkaSettings, topic: Topic) -> Iterator[RunningCapture]:
    with running_capture(capture_settings(kafka, max_body_bytes=4096, max_batch_items=3), topic) as running:
        yield running


@pytest.fixture
def http(capture: RunningCapture) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=capture.base_url, headers=AUTH, timeout=15) as client:
        yield client


def events_on(kafka: KafkaSettings, topic: Topic, expected: int, timeout_s: float = 10.0) -> list[ModelOutput]:
    return [ModelOutput.model_validate_json(r.value) for r in read_topic(kafka, topic.name, expected, timeout_s)]


def test_posted_output_is_on_the_topic_as_posted(http: httpx.Client, kafka: KafkaSettings, topic: Topic) -> None:
    body = payload("req-1", n=3, conversation_id="conv-9", generated_at="2026-11-29T10:00:00+00:00",
                   feedback=[{"kind": "thumbs_up", "candidate_id": "c1", "comment": "great"}])
    response = http.post("/v1/outputs", json=body)
    assert response.status_code == 202, response.text
    assert response.json() == {"event_id": output_id_for("req-1")}
    records = read_topic(kafka, topic.name, 1)
    assert len(records) == 1
    assert records[0].key == b"conv-9"  # one conversation, one partition
    event = ModelOutput.model_validate_json(records[0].value)
    expected = to_model_output(OutputIn.model_validate(body))
    assert event.model_dump(exclude={"created_at"}) == expected.model_dump(exclude={"created_at"})
    # and, spelled out, what a reader of the topic relies on:
    assert event.event_id == event.output_id == output_id_for("req-1")
    assert [(m.role, m.content) for m in event.conversation] == [("system", "be brief"), ("user", "what is req-1?")]
    assert [c.candidate_id for c in event.candidates] == ["c0", "c1", "c2"]
    assert event.candidates[2].text == "answer 2"
    assert event.candidates[2].model.model_dump() == {"name": "tiny-llama", "version": "v3", "checkpoint": "step-2"}
    assert event.candidates[0].generation_params == {"temperature": 0.7, "top_p": 0.9}
    assert event.feedback[0].kind == "thumbs_up" and event.feedback[0].candidate_id == "c1"
    assert (event.app, event.tenant, event.tags, event.source) == ("support-bot", "acme", ["beta"], "api")
    assert event.captured_at.isoformat() == "2026-11-29T10:00:00+00:00"


def test_same_client_request_id_gives_the_same_event_id(http: httpx.Client, kafka: KafkaSettings,
                                                        topic: Topic) -> None:
    first = http.post("/v1/outputs", json=payload("resent"))
    second = http.post("/v1/outputs", json=payload("resent"))
    # Without a client request id, a resend (after a timeout, or a 503 whose write did
    # land) is the same event too: the id comes from the content.
    anonymous = [http.post("/v1/outputs", json=payload()).json()["event_id"] for _ in range(2)]
    other = http.post("/v1/outputs", json=payload(app="another-bot")).json()["event_id"]
    assert first.status_code == second.status_code == 202
    assert first.json() == second.json() == {"event_id": output_id_for("resent")}
    assert anonymous[0] == anonymous[1] != other
    ids = [e.event_id for e in events_on(kafka, topic, 5)]
    assert ids.count(output_id_for("resent")) == 2  # stored twice, one id: downstream dedupes
    assert ids.count(anonymous[0]) == 2


def test_batch_answers_ids_in_order_after_all_are_stored(http: httpx.Client, kafka: KafkaSettings,
                                                         topic: Topic) -> None:
    items = [payload(f"b-{i}", n=1 + i) for i in range(3)]
    response = http.post("/v1/outputs/batch", json={"items": items})
    assert response.status_code == 202, response.text
    assert response.json() == {"event_ids": [output_id_for(f"b-{i}") for i in range(3)]}
    stored = {e.event_id: e for e in events_on(kafka, topic, 3)}
    assert [len(stored[output_id_for(f"b-{i}")].candidates) for i in range(3)] == [1, 2, 3]


def test_batch_with_one_bad_item_stores_nothing_and_names_the_item(http: httpx.Client, kafka: KafkaSettings,
                                                                   topic: Topic) -> None:
    bad = payload("bad")
    del bad["candidates"][0]["model"]["version"]
    response = http.post("/v1/outputs/batch", json={"items": [payload("ok"), bad]})
    assert response.status_code == 422
    assert response.json()["detail"][0]["field"] == "items.1.candidates.0.model.version"
    too_many = http.post("/v1/outputs/batch", json={"items": [payload(f"m{i}", n=1) for i in range(4)]})
    assert too_many.status_code == 422 and too_many.json()["detail"][0]["field"] == "items"
    assert events_on(kafka, topic, 1, timeout_s=1.0) == []


@pytest.mark.parametrize(("mutate", "field"), [
    (lambda b: b["candidates"][0]["model"].pop("version"), "candidates.0.model.version"),
    (lambda b: b.__setitem__("messages", []), "messages"),
    (lambda b: b["messages"][0].__setitem__("role", "robot"), "messages.0.role"),
    (lambda b: b.__setitem__("candidtes", []), "candidtes"),
    (lambda b: b.__setitem__("candidates", [dict(b["candidates"][0], text=1)]), "candidates.0.text"),
    (lambda b: b.__setitem__("feedback", [{"kind": "thumbs_up", "candidate_id": "zz"}]), "<body>"),
    (lambda b: b.__setitem__("candidates", b["candidates"] * 9), "candidates"),
])
def test_bad_input_is_422_naming_the_field(http: httpx.Client, mutate: Callable[[dict], object],
                                           field: str) -> None:
    body = payload("r")
    mutate(body)
    response = http.post("/v1/outputs", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert field in [d["field"] for d in detail], detail
    assert all(d["loc"][0] == "body" for d in detail)


def test_invalid_json_is_422(http: httpx.Client) -> None:
    response = http.post("/v1/outputs", content=b'{"messages": [', headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == "json_invalid"


def test_oversize_body_is_413_declared_or_streamed(http: httpx.Client) -> None:
    big = payload("big", candidates=[{"text": "x" * 5000, "model": {"name": "m", "version": "1"}}])
    assert http.post("/v1/outputs", json=big).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: chunked transfer encoding
        data = json.dumps(big).encode()
        for i in range(0, len(data), 1000):
            yield data[i:i + 1000]

    response = http.post("/v1/outputs", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert http.post("/v1/outputs", json=payload("small")).status_code == 202  # still serving


def _in_chunks(data: bytes, size: int = 100) -> Iterator[bytes]:
    """The body as chunked transfer encoding (no Content-Length), in many ASGI messages."""
    for i in range(0, len(data), size):
        yield data[i:i + size]


def test_a_chunked_body_is_stored_whole(http: httpx.Client, kafka: KafkaSettings, topic: Topic) -> None:
    body = payload("chunked", n=3)
    response = http.post("/v1/outputs", content=_in_chunks(json.dumps(body).encode()),
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 202, response.text
    [event] = events_on(kafka, topic, 1)
    assert event.output_id == output_id_for("chunked")
    assert [c.text for c in event.candidates] == ["answer 0", "answer 1", "answer 2"]


def test_a_chunked_bad_body_is_422_naming_the_field(http: httpx.Client, kafka: KafkaSettings, topic: Topic) -> None:
    # the fast path read the whole body before finding it invalid; FastAPI, behind it,
    # must still see all of it to name the field
    bad = payload("bad-chunked", n=2)
    bad["candidates"][1]["model"] = {"name": "m"}
    response = http.post("/v1/outputs/batch", content=_in_chunks(json.dumps({"items": [payload("ok"), bad]}).encode()),
                         headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert [e["field"] for e in response.json()["detail"]] == ["items.1.candidates.1.model.version"]
    assert read_topic(kafka, topic.name, 1, timeout_s=1.0) == []


def test_unknown_content_type_is_415(http: httpx.Client) -> None:
    body = json.dumps(payload("ct")).encode()
    assert http.post("/v1/outputs", content=body, headers={"Content-Type": "text/plain"}).status_code == 415
    assert http.post("/v1/outputs", content=body).status_code == 415  # none at all
    ok = http.post("/v1/outputs", content=body, headers={"Content-Type": "application/json; charset=utf-8"})
    assert ok.status_code == 202


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {TOKEN}", "Bearer", f"Bearer {TOKEN}x"])
def test_missing_or_wrong_token_is_401(capture: RunningCapture, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = httpx.post(f"{capture.base_url}/v1/outputs", json=payload("a"), headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert TOKEN not in response.text


def test_auth_can_be_disabled_explicitly(kafka: KafkaSettings, topic: Topic) -> None:
    with running_capture(capture_settings(kafka, token=None, auth_disabled=True), topic) as running:
        assert httpx.post(f"{running.base_url}/v1/outputs", json=payload("open")).status_code == 202


def test_metrics_health_and_readiness(http: httpx.Client, capture: RunningCapture) -> None:
    http.post("/v1/outputs", json=payload("m1"))
    http.post("/v1/outputs/batch", json={"items": [payload("m2"), payload("m3")]})
    http.post("/v1/outputs", json={"messages": []})
    http.get("/no/such/path")
    assert http.get("/healthz").json() == {"status": "ok", "checks": {"event_loop": True}}
    assert http.get("/readyz").json() == {"status": "ok", "checks": {"kafka": True}}
    text = http.get("/metrics").text
    assert 'rlhf_capture_requests_total{code="202",endpoint="/v1/outputs"} 1.0' in text
    assert 'rlhf_capture_requests_total{code="202",endpoint="/v1/outputs/batch"} 1.0' in text
    assert 'rlhf_capture_requests_total{code="422",endpoint="/v1/outputs"} 1.0' in text
    assert 'rlhf_capture_requests_total{code="404",endpoint="other"} 1.0' in text
    assert 'rlhf_capture_events_accepted_total{source="api"} 3.0' in text
    assert 'rlhf_capture_request_duration_seconds_count{endpoint="/v1/outputs"} 2.0' in text
    assert capture.metric("rlhf_messages_produced_total", topic=next(iter(
        s.labels["topic"] for m in capture.registry.collect() for s in m.samples
        if s.name == "rlhf_messages_produced_total"))) == 3


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)
REQUIRED = ("messages", "candidates")


def _broken(valid: dict, field: str, value: object) -> dict:
    return {**valid, field: value}


BAD_BODIES = st.one_of(
    # anything JSON that lacks a required field
    JSON.filter(lambda v: not (isinstance(v, dict) and all(k in v for k in REQUIRED))).map(json.dumps),
    # a valid body with one field of the wrong shape
    st.builds(_broken, st.just(payload("h")), st.sampled_from(REQUIRED),
              st.one_of(st.none(), st.integers(), st.text(max_size=5), st.just([]),
                        st.lists(st.integers(), min_size=1, max_size=3))).map(json.dumps),
    st.binary(max_size=64).map(lambda b: b.decode("latin-1")),  # not JSON at all
)


def test_random_bad_payloads_get_4xx_and_the_service_stays_up(http: httpx.Client) -> None:
    seen: set[int] = set()

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(body=BAD_BODIES, content_type=st.sampled_from(["application/json", "application/json", "text/csv"]))
    def post(body: str, content_type: str) -> None:
        response = http.post("/v1/outputs", content=body.encode("utf-8"), headers={"Content-Type": content_type})
        seen.add(response.status_code)
        assert 400 <= response.status_code < 500, (body, response.status_code, response.text)

    post()
    assert seen <= {400, 413, 415, 422}
    assert http.get("/healthz").status_code == 200
    assert http.post("/v1/outputs", json=payload("after-fuzz")).status_code == 202
