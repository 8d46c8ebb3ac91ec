"""Hostile input at every HTTP endpoint of the loop, each served for real (uvicorn or
the stdlib server, over TCP): whatever arrives is answered below 500, a bad body with
a 4xx, and the endpoint answers a valid request afterwards."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from pydantic import SecretStr

from services.annotation.webhooks import MAX_BODY_BYTES, PATH, WebhookListener
from services.policy_server.api import create_app as create_policy_app
from services.policy_server.metrics import PolicyServerMetrics
from services.policy_server.models import PolicyPool
from services.policy_server.routing import Router
from services.trainer.api import runs_router
from shared.contracts import ModelOutput
from shared.http_input import InputRejected, check_json_value, loads_json
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.capture_support import AUTH, capture_settings, payload, running_capture
from tests.fake_openai_upstream import UPSTREAM_KEY, create_upstream
from tests.helpers.hostile import hostile_bodies, nested
from tests.helpers.routes import serving
from shared.web import AppServer

from tests.trainer_support import loop_trainer_topics  # noqa: F401  (fixture: trainer_topics)

from .test_trainer import SleepExecutor, make_coordinator

pytestmark = pytest.mark.integration

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))


def assert_all_4xx(post: Callable[[bytes], httpx.Response], bodies: st.SearchStrategy[bytes],
                   allowed_ok: bool = False) -> set[int]:
    seen: set[int] = set()

    @FUZZ
    @given(body=bodies)
    def check(body: bytes) -> None:
        response = post(body)
        seen.add(response.status_code)
        assert response.status_code < 500, (body[:300], response.status_code, response.text[:300])
        if not allowed_ok:
            assert 400 <= response.status_code < 500, (body[:300], response.status_code, response.text[:300])

    check()
    return seen


# --- the shared rules -------------------------------------------------------------------

@pytest.mark.parametrize("raw", [b"NaN", b'{"a": Infinity}', b'[1, -Infinity]', nested(5000).encode(),
                                 b'{"a": 1e999}', b"\xff\xfe", b"{"])
def test_non_standard_or_deep_json_is_refused_naming_why(raw: bytes) -> None:
    with pytest.raises(InputRejected) as refused:
        loads_json(raw)
    assert 400 <= refused.value.status < 500


def test_a_deep_structure_built_in_memory_is_refused_without_recursion() -> None:
    value: list[object] = []
    for _ in range(100_000):
        value = [value]
    with pytest.raises(InputRejected) as refused:
        check_json_value(value)
    assert "nested deeper" in refused.value.message


# --- capture: /v1/outputs, /v1/outputs/batch, the proxy ---------------------------------------

@pytest.fixture
def capture_url(kafka: KafkaSettings, make_topic: Callable[..., Topic]) -> Iterator[str]:
    upstream = AppServer(create_upstream(), "127.0.0.1", 0, log_level="warning", graceful_s=1)
    with upstream:
        settings_ = capture_settings(kafka, proxy_upstream_url=f"http://127.0.0.1:{upstream.port}/v1",
                                     proxy_upstream_api_key=UPSTREAM_KEY)
        with running_capture(settings_, make_topic(ModelOutput, 1)) as running:
            yield running.base_url


CAPTURE_IDS: list[list[str | int]] = [["client_request_id"], ["conversation_id"], ["app"], ["tenant"],
                                      ["candidates", 0, "model", "name"], ["candidates", 0, "id"]]


def test_capture_outputs_answers_hostile_bodies_with_4xx(capture_url: str) -> None:
    valid = payload("fuzz-valid")
    bodies = hostile_bodies(valid, id_fields=CAPTURE_IDS,
                            list_fields=[(["messages"], valid["messages"][0]), (["tags"], "t")],
                            number_fields=[["candidates", 0, "generation_params", "temperature"]])
    with httpx.Client(base_url=capture_url, headers={**AUTH, "Content-Type": "application/json"}, timeout=30) as http:
        seen = assert_all_4xx(lambda body: http.post("/v1/outputs", content=body), bodies)
        batch = bodies.map(lambda b: b'{"items": [' + b + b"]}")
        seen |= assert_all_4xx(lambda body: http.post("/v1/outputs/batch", content=body), batch)
        assert http.post("/v1/outputs", json=payload("after-fuzz")).status_code == 202
    assert seen <= {400, 413, 415, 422}


@pytest.mark.parametrize("field,value", [("client_request_id", "a\x1fb"), ("client_request_id", "a\x00"),
                                         ("conversation_id", "c\nd"), ("tags", ["ok", "bad\x7f"])])
def test_control_characters_in_ids_are_422_naming_the_field(capture_url: str, field: str, value: object) -> None:
    with httpx.Client(base_url=capture_url, headers=AUTH, timeout=30) as http:
        response = http.post("/v1/outputs", json={**payload("ctl"), field: value})
    assert response.status_code == 422, response.text
    assert field in {e["field"].split(".")[0] for e in response.json()["detail"]}


def test_nan_in_generation_params_is_422_naming_the_field(capture_url: str) -> None:
    body = json.dumps(payload("nan", n=1)).replace('"temperature": 0.7', '"temperature": NaN')
    assert "NaN" in body
    with httpx.Client(base_url=capture_url, headers={**AUTH, "Content-Type": "application/json"}, timeout=30) as http:
        response = http.post("/v1/outputs", content=body)
    assert response.status_code == 422, response.text
    assert any(e["field"].startswith("candidates.0.generation_params") for e in response.json()["detail"])


def test_the_capture_proxy_answers_hostile_bodies_and_label_headers_with_4xx(capture_url: str) -> None:
    valid = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    bodies = hostile_bodies(valid, id_fields=[["model"]], list_fields=[], number_fields=[["temperature"]])
    headers = {**AUTH, "Content-Type": "application/json"}
    with httpx.Client(base_url=capture_url, headers=headers, timeout=30) as http:
        post = lambda body: http.post("/v1/chat/completions", content=body)  # noqa: E731
        # Some bodies are valid chat requests the upstream answers: below 500 is the rule.
        assert_all_4xx(post, bodies, allowed_ok=True)
        for raw in (nested(20_000).encode(), json.dumps(valid)[:-1].encode() + b', "temperature": NaN}'):
            assert post(raw).status_code == 400
        # uvicorn refuses control characters in a header itself; length is ours to check
        assert http.post("/v1/chat/completions", json=valid, headers={"X-RLHF-Request-Id": "a\x1fb"}).status_code == 400
        refused = http.post("/v1/chat/completions", json=valid, headers={"X-RLHF-Request-Id": "r" * 300})
        assert refused.status_code == 400 and "x-rlhf-request-id" in refused.text
        assert http.post("/v1/chat/completions", json=valid).status_code == 200


# --- the policy server ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def policy_pool(tiny_policy: Path) -> PolicyPool:
    return PolicyPool(tiny_policy)


def policy_app(pool: PolicyPool, **options: object) -> AppServer:
    registry = CollectorRegistry()
    app = create_policy_app(pool=pool, router=Router(seed=1), metrics=PolicyServerMetrics(registry),
                            registry=registry, served_model_name="rlhf-policy", max_tokens_default=2,
                            max_tokens_limit=4, max_n=2, producer=None, readiness={}, max_body_bytes=200_000,
                            **options)  # type: ignore[arg-type]
    return AppServer(app, "127.0.0.1", 0, log_level="warning", graceful_s=1)


@pytest.fixture(scope="module")
def policy_url(policy_pool: PolicyPool) -> Iterator[str]:
    with policy_app(policy_pool, api_key=SecretStr(POLICY_KEY)) as server:
        yield f"http://127.0.0.1:{server.port}"


def test_the_policy_server_without_metrics_on_its_api_port(policy_pool: PolicyPool) -> None:
    """What RLHF_HTTP__METRICS_PORT sets up: /metrics is served elsewhere, the probes stay."""
    with policy_app(policy_pool, serve_metrics=False) as server:
        assert httpx.get(f"http://127.0.0.1:{server.port}/metrics").status_code == 404
        assert httpx.get(f"http://127.0.0.1:{server.port}/healthz").status_code == 200


POLICY_KEY = "policy-api-key"
POLICY_AUTH = {"Authorization": f"Bearer {POLICY_KEY}"}


@pytest.mark.parametrize("authorization", [None, "Bearer wrong", f"Basic {POLICY_KEY}", "Bearer",
                                           f"Bearer {POLICY_KEY}x", f"bearer  {POLICY_KEY[:-1]}"])
def test_the_policy_servers_api_needs_its_key(policy_url: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    valid = {"model": "rlhf-policy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    with httpx.Client(base_url=policy_url, headers=headers, timeout=60) as http:
        for response in (http.post("/v1/chat/completions", json=valid), http.get("/v1/models")):
            assert response.status_code == 401, response.text
            assert response.headers["www-authenticate"] == "Bearer"
            assert response.json()["error"]["message"].startswith("missing or invalid bearer token")
        assert http.get("/healthz").status_code == 200 and http.get("/metrics").status_code == 200  # probes open
        assert http.get("/v1/models", headers=POLICY_AUTH).status_code == 200


def test_the_policy_server_answers_hostile_bodies_with_4xx(policy_url: str) -> None:
    valid = {"model": "rlhf-policy", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
    bodies = hostile_bodies(valid, id_fields=[["model"], ["user"]],
                            list_fields=[(["messages"], valid["messages"][0])],
                            number_fields=[["temperature"], ["top_p"]])
    with httpx.Client(base_url=policy_url, headers={**POLICY_AUTH, "Content-Type": "application/json"},
                      timeout=60) as http:
        post = lambda body: http.post("/v1/chat/completions", content=body)  # noqa: E731
        assert_all_4xx(post, bodies, allowed_ok=True)
        too_many = {**valid, "messages": valid["messages"] * 501}
        assert http.post("/v1/chat/completions", json=too_many).status_code == 422  # before generation
        assert post(nested(50_000).encode()).status_code in (400, 422)
        assert post(b'{"model": "rlhf-policy", "messages": [{"role": "user", "content": "' + b"x" * 300_000
                    + b'"}]}').status_code == 413
        assert http.post("/v1/chat/completions", json=valid).status_code == 200


# --- the trainer's run API --------------------------------------------------------------------

def test_the_trainer_run_api_answers_hostile_bodies_below_500_and_bad_fields_with_422(
    tmp_path: Path, kafka: KafkaSettings, trainer_topics: dict[str, Topic],  # noqa: F811
) -> None:
    coordinator = make_coordinator(tmp_path, kafka, SleepExecutor(0.1))
    token = "run-api-token"
    with serving(runs_router(coordinator, SecretStr(token))) as base, \
            httpx.Client(base_url=base, timeout=30, headers={"Authorization": f"Bearer {token}"}) as http:
        for path in ("/v1/runs", "/v1/rollback"):
            bodies = hostile_bodies({"reason": "fuzz", "version": "policy-v0001"},
                                    id_fields=[["reason"], ["version"]], list_fields=[], number_fields=[])
            assert_all_4xx(lambda body, path=path: http.post(path, content=body), bodies, allowed_ok=True)
        for body, field in ((b'{"reason": "a\\u0000b"}', "reason"), (b'{"version": 3}', "version"),
                            (b"[1]", "<body>"), (nested(9000).encode(), "<body>")):
            response = http.post("/v1/runs", content=body)
            assert 400 <= response.status_code < 500 and response.json()["field"] == field, response.text
        assert http.post("/v1/runs", content=b"x" * 20_000).status_code == 413
        assert http.post("/v1/runs", content=b"{}", headers={"Authorization": "Bearer wrong"}).status_code == 401


# --- the Argilla webhook listener -------------------------------------------------------------

def test_the_webhook_listener_caps_bodies_times_out_and_refuses_forged_signatures() -> None:
    woken: list[int] = []
    listener = WebhookListener(on_event=lambda: woken.append(1))
    listener.secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    with serving(listener.router()) as base, httpx.Client(timeout=30) as http:
        url, port = f"{base}{PATH}", int(base.rsplit(":", 1)[1])
        headers = {"webhook-id": "m1", "webhook-timestamp": str(int(time.time())),
                   "webhook-signature": "v1,\u00e9t\u00e9".encode()}
        assert http.post(url, content=b"{}", headers=headers).status_code == 401  # non-ASCII: no exception
        big = http.post(url, content=b"x" * (MAX_BODY_BYTES + 1), headers=headers)
        assert big.status_code == 413
        import socket

        with socket.create_connection(("127.0.0.1", port)) as raw:  # says 10 bytes, sends 0
            raw.sendall(f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n".encode())
            raw.settimeout(30)
            started = time.monotonic()
            answer = raw.recv(1024)  # the server gives up on its own and answers
            assert time.monotonic() - started < 25 and answer.startswith(b"HTTP/1.1 408"), answer
        # none of these woke the collector or left a record to re-read
        assert woken == [] and listener.take_records() == []
