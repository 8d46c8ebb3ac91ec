"""The policy server's side of issue 17: blind A/B answers while a canary serves, and
graduation or rollback decided by the trainer's canary judge, by event or read from
the registry on the tick. Real tiny models and adapters, the real broker, the `openai`
SDK as the client (fixtures and the in-process server from test_policy_server.py)."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import openai
import pytest
from prometheus_client import CollectorRegistry

from services.policy_server.ab import ABJob, ABPick, ABWorker
from services.policy_server.api import ChatRequest
from services.policy_server.capture import Capture
from services.policy_server.metrics import PolicyServerMetrics
from services.policy_server.models import BASE_VERSION, Generation
from services.policy_server.settings import PolicyServerOptions
from shared.bus import EventProducer
from shared.contracts import ChatMessage, ModelOutput
from shared.settings import KafkaSettings
from shared.topics import OUTPUTS
from tests.conftest import read_topic, wait_for
from tests.helpers.openai_stub import serve
from tests.integration import test_policy_server as base
from tests.integration.test_policy_server import Clock, Server, update

# the policy server's fixtures (tiny base model and a registry of adapters), shared
policy_models = base.policy_models
registry_dir = base.registry_dir

pytestmark = pytest.mark.integration

GRADUATE = {"outcome": "graduate", "reason": "evidence", "canary_version": "policy-v0002",
            "stable_version": "policy-v0001", "wins": 30, "losses": 10, "ties": 2}


def captured(kafka: KafkaSettings, *request_ids: str) -> dict[str, ModelOutput]:
    """The outputs on rlhf.outputs for these completion ids (the topic is shared)."""
    found: dict[str, ModelOutput] = {}
    deadline = time.monotonic() + 20
    while set(request_ids) - set(found) and time.monotonic() < deadline:
        for record in read_topic(kafka, OUTPUTS.name, expected=100_000, timeout_s=2):
            output = ModelOutput.model_validate_json(record.value)
            if output.client_request_id in request_ids:
                found[output.client_request_id] = output
    return found


def greedy(server: Server, version: str, prompt: str) -> str:
    [answer] = server.pool.generate([{"role": "user", "content": prompt}], version, n=1, max_tokens=6,
                                    temperature=0.0, top_p=1.0)
    return answer.text


# -- A/B answers ---------------------------------------------------------------------------


def test_while_a_canary_serves_picked_requests_are_captured_with_both_versions_answers(
        registry_dir: Path, kafka: KafkaSettings) -> None:
    server = Server(registry_dir, kafka, ab_share=1.0)
    server.promote("policy-v0001", 1.0)
    server.promote("policy-v0002", 0.5)
    prompt = "how do I reset my password?"
    hello = [{"role": "user", "content": prompt}]
    with serve(server.app) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        replies = [client.chat.completions.create(model="rlhf-policy", max_tokens=6, temperature=0, messages=hello)
                   for _ in range(6)]
        chunks = list(client.chat.completions.create(model="rlhf-policy", max_tokens=6, temperature=0, stream=True,
                                                     messages=hello))
        two = client.chat.completions.create(model="rlhf-policy", n=2, max_tokens=6, messages=hello)
        pinned = client.chat.completions.create(model="policy-v0002", max_tokens=6, messages=hello)
        client.chat.completions.create(model="rlhf-policy", max_tokens=6, messages=hello,
                                       extra_body={"store": False})
        assert wait_for(lambda: server.metric("rlhf_policy_ab_pairs_total", result="ok") == 8)
    served = {r.system_fingerprint for r in replies}
    assert served == {"policy-v0001", "policy-v0002"}, "the seeded draw routes to both sides"
    answers = {version: greedy(server, version, prompt) for version in ("policy-v0001", "policy-v0002")}
    assert answers["policy-v0001"] != answers["policy-v0002"], "the adapters must tell the versions apart"
    outputs = captured(kafka, *(r.id for r in replies), chunks[0].id, two.id, f"{two.id}:ab", pinned.id)
    for reply in replies:
        output = outputs[reply.id]
        version = reply.system_fingerprint
        other = ({"policy-v0001", "policy-v0002"} - {version}).pop()
        assert [c.candidate_id for c in output.candidates] == ["choice-0", "ab-1"]
        routed, compared = output.candidates
        assert routed.text == reply.choices[0].message.content == answers[version]  # the user's answer, unchanged
        assert (routed.model.version, compared.model.version) == (version, other)
        assert compared.text == answers[other]  # same prompt, same sampling parameters
        assert compared.generation_params == routed.generation_params
        assert output.ab is not None and (output.ab.canary_version, output.ab.stable_version) == \
            ("policy-v0002", "policy-v0001")
        ids = {c.model.version: c.candidate_id for c in output.candidates}
        assert (output.ab.canary_candidate_id, output.ab.stable_candidate_id) == \
            (ids["policy-v0002"], ids["policy-v0001"])
        assert "canary-ab" in output.tags
    streamed = outputs[chunks[0].id]
    assert streamed.ab is not None and len(streamed.candidates) == 2
    assert streamed.candidates[0].text == "".join(c.choices[0].delta.content or "" for c in chunks)
    pair = outputs[f"{two.id}:ab"]  # n=2: its first answer and the other version's, an output of its own
    assert pair.ab is not None and pair.output_id != outputs[two.id].output_id
    assert pair.candidates[0].text == two.choices[0].message.content
    assert pair.candidates[1].model.version != pair.candidates[0].model.version
    for alone in (outputs[two.id], outputs[pinned.id]):  # n=2 and a pinned version: captured whole, as today
        assert alone.ab is None and "canary-ab" not in alone.tags
        assert [c.candidate_id for c in alone.candidates] == [f"choice-{i}" for i in range(len(alone.candidates))]
    assert server.metric("rlhf_policy_captured_total", outcome="not_stored") == 1
    assert server.metric("rlhf_policy_ab_pairs_total", result="error") == 0
    server.producer.close()  # type: ignore[union-attr]


def test_without_a_canary_or_at_share_zero_nothing_is_compared(registry_dir: Path, kafka: KafkaSettings) -> None:
    quiet = Server(registry_dir, kafka, ab_share=0.0)
    quiet.promote("policy-v0001", 1.0)
    quiet.promote("policy-v0002", 0.5)
    alone = Server(registry_dir, kafka, ab_share=1.0)
    alone.promote("policy-v0001", 1.0)  # stable only: no canary to compare
    ids = []
    for server in (quiet, alone):
        with serve(server.app) as base_url:
            client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
            ids += [client.chat.completions.create(model="rlhf-policy", max_tokens=4,
                                                   messages=[{"role": "user", "content": "hi"}]).id
                    for _ in range(3)]
        assert server.metric("rlhf_policy_ab_pairs_total", result="ok") == 0
        server.producer.flush()  # type: ignore[union-attr]
    outputs = captured(kafka, *ids)
    assert len(outputs) == 6 and all(o.ab is None and len(o.candidates) == 1 for o in outputs.values())
    for server in (quiet, alone):
        server.producer.close()  # type: ignore[union-attr]


def test_the_ab_worker_never_holds_a_request_sheds_beyond_its_queue_and_captures_alone_on_close(
        registry_dir: Path, kafka: KafkaSettings) -> None:
    """The other answer waits for the model (here: a gate in front of the real pool);
    submitting never waits for it; a full queue, or closing, captures the served
    answer alone, so A/B never costs the loop a captured answer."""
    server = Server(registry_dir, None)
    server.promote("policy-v0001", 1.0)
    metrics = PolicyServerMetrics(CollectorRegistry())
    producer = EventProducer(kafka)
    gate, generating = threading.Event(), threading.Event()

    def generate(request: ChatRequest, version: str) -> list[Generation]:
        generating.set()
        gate.wait(30)
        return server.pool.generate([m.model_dump() for m in request.messages], version, n=1, max_tokens=4,
                                    temperature=0.0, top_p=1.0)

    worker = ABWorker(generate, Capture(producer, metrics, "rlhf-policy", 8), metrics, max_pending=1)
    request = ChatRequest(model="rlhf-policy", messages=[ChatMessage(role="user", content="hi")])
    ids = [f"chatcmpl-{uuid.uuid4().hex}" for _ in range(4)]
    pick = ABPick(other=BASE_VERSION, canary="policy-v0001")
    started = time.monotonic()
    worker.submit(ABJob(request, ids[0], "policy-v0001", Generation("served", "stop", 1), pick))
    assert generating.wait(10)
    for completion_id in ids[1:3]:  # one waits in the queue, the next is shed
        worker.submit(ABJob(request, completion_id, "policy-v0001", Generation("served", "stop", 1), pick))
    assert time.monotonic() - started < 5, "submitting waited for generation"
    assert metrics.ab_pairs.labels("error")._value.get() == 1  # noqa: SLF001
    gate.set()
    assert wait_for(lambda: metrics.ab_pairs.labels("ok")._value.get() == 2)  # noqa: SLF001
    worker.close()
    worker.submit(ABJob(request, ids[3], "policy-v0001", Generation("served", "stop", 1), pick))  # closed: alone
    producer.flush()
    outputs = captured(kafka, *ids)
    assert [len(outputs[i].candidates) for i in ids] == [2, 2, 1, 1]
    assert outputs[ids[0]].ab is not None and outputs[ids[0]].ab.canary_candidate_id == "choice-0"
    assert outputs[ids[2]].ab is None and outputs[ids[2]].candidates[0].text == "served"
    assert metrics.ab_pairs.labels("error")._value.get() == 2  # noqa: SLF001
    producer.close()


# -- graduation ------------------------------------------------------------------------------


def test_a_graduated_event_gives_the_canary_all_traffic_and_a_redelivery_changes_nothing(registry_dir: Path) -> None:
    server = Server(registry_dir, None)
    server.promote("policy-v0001", 1.0)
    server.promote("policy-v0002", 0.25)
    server.apply(update("policy-v0002", "graduated", previous="policy-v0001"))
    assert server.router.shares() == {"policy-v0002": 1.0}
    assert server.router.routes.last_good == "policy-v0001"  # what a later rollback returns to
    server.apply(update("policy-v0002", "graduated", previous="policy-v0001"))  # redelivered
    server.apply(update("policy-v0001", "graduated"))  # an old one replayed: the registry promotes v0002
    server.versions.tick()
    assert server.router.shares() == {"policy-v0002": 1.0}
    assert server.metric("rlhf_policy_promotions_ignored_total", reason="not_promoted") == 1
    assert server.registry.get_sample_value("rlhf_policy_traffic_share", {"version": "policy-v0002"}) == 1.0


def test_a_graduated_version_whose_promotion_was_never_heard_is_reconciled_at_all_traffic(registry_dir: Path) -> None:
    server = Server(registry_dir, None)
    server.promote("policy-v0001", 1.0)
    server.model_registry.set_pointer("policy", "promoted", "policy-v0002")  # its `promoted` was lost
    server.apply(update("policy-v0002", "graduated"))
    assert server.router.shares() == {"policy-v0002": 1.0}  # at once: no canary share, no two-tick wait
    assert "policy-v0002" in server.pool.versions


def test_the_tick_graduates_a_canary_whose_manifest_holds_the_judges_graduate(registry_dir: Path) -> None:
    """The `graduated` event was lost: the decision in the manifest is enough. A
    `keep` decision (the judge's timeout fallback) keeps the canary as it is."""
    clock = Clock()
    server = Server(registry_dir, None, clock=clock)
    server.promote("policy-v0001", 1.0)
    server.promote("policy-v0002", 0.25)
    server.model_registry.record_decision("policy", "policy-v0002", {**GRADUATE, "outcome": "keep"})
    clock.now += 10 * 3600  # no timer either: the default never graduates on time
    server.versions.tick()
    assert server.router.shares() == {"policy-v0001": 0.75, "policy-v0002": 0.25}
    server.model_registry.record_decision("policy", "policy-v0002", GRADUATE)
    server.versions.tick()
    assert server.router.shares() == {"policy-v0002": 1.0}
    server.apply(update("policy-v0002", "graduated"))  # the event, late: nothing left to do
    assert server.router.shares() == {"policy-v0002": 1.0}


def test_a_replica_that_missed_both_promotion_and_graduation_converges_from_the_registry(registry_dir: Path) -> None:
    server = Server(registry_dir, None, canary_fraction=0.1)
    server.promote("policy-v0001", 1.0)
    server.model_registry.set_pointer("policy", "promoted", "policy-v0002")
    server.model_registry.record_decision("policy", "policy-v0002", GRADUATE)
    server.versions.tick()  # a pointer seen once: its event may be on the way
    server.versions.tick()
    assert server.router.shares() == {"policy-v0002": 1.0}


def test_the_graduation_timer_is_off_by_default_and_still_works_when_set(registry_dir: Path) -> None:
    assert PolicyServerOptions().canary_graduate_after_s == 0
    clock = Clock()
    server = Server(registry_dir, None, graduate_after_s=30, clock=clock)
    server.promote("policy-v0001", 1.0)
    server.promote("policy-v0002", 0.25)
    clock.now += 31
    server.versions.tick()
    assert server.router.shares() == {"policy-v0002": 1.0}


# -- rollback from the registry -----------------------------------------------------------------


def test_a_canary_rolled_back_in_the_registry_loses_its_traffic_without_the_event(registry_dir: Path) -> None:
    server = Server(registry_dir, None)
    server.promote("policy-v0001", 1.0)
    server.promote("policy-v0002", 0.25)
    server.model_registry.rollback("policy", "policy-v0002")  # what the judge does; its event is lost
    server.versions.tick()
    assert server.router.shares() == {"policy-v0001": 1.0}
    assert server.metric("rlhf_model_rollbacks_total", reason="registry") == 1
    assert "policy-v0002" not in server.pool.versions
    server.apply(update("policy-v0002", "rolled_back", previous="policy-v0001"))  # the event, late
    server.apply(update("policy-v0002", "promoted", 0.25))  # a replayed promotion
    server.versions.tick()
    server.versions.tick()
    assert server.router.shares() == {"policy-v0001": 1.0}
    assert server.metric("rlhf_model_rollbacks_total", reason="registry") == 1
    assert server.metric("rlhf_model_rollbacks_total", reason="event") == 0


def test_a_stable_version_rolled_back_in_the_registry_returns_to_its_last_good_one_loading_it(
        registry_dir: Path) -> None:
    """A new replica serves v0003 only; the registry then rolls back v0002 (long ago)
    and v0003: the last good version is v0001, which this replica never loaded."""
    server = Server(registry_dir, None)
    server.model_registry.set_pointer("policy", "promoted", "policy-v0003")
    server.versions.start_from_registry()
    assert server.pool.versions == [BASE_VERSION, "policy-v0003"]
    server.model_registry.rollback("policy", "policy-v0002")
    server.versions.tick()
    assert server.router.shares() == {"policy-v0003": 1.0}  # not served: nothing to do
    server.model_registry.rollback("policy", "policy-v0003")
    server.versions.tick()
    assert server.router.shares() == {"policy-v0001": 1.0}
    assert "policy-v0003" not in server.pool.versions
    server.versions.tick()
    server.versions.tick()
    assert server.router.shares() == {"policy-v0001": 1.0}
    assert server.metric("rlhf_model_rollbacks_total", reason="registry") == 1


def test_a_graduated_version_rolled_back_later_by_the_registry_returns_to_the_previous_stable(
        registry_dir: Path) -> None:
    server = Server(registry_dir, None)
    server.promote("policy-v0001", 1.0)
    server.promote("policy-v0002", 0.25)
    server.apply(update("policy-v0002", "graduated"))
    server.model_registry.rollback("policy", "policy-v0002")  # an operator's rollback, event lost
    server.versions.tick()
    assert server.router.shares() == {"policy-v0001": 1.0}


def test_a_rollback_event_for_the_stable_version_of_a_fresh_replica_loads_its_last_good_one(
        registry_dir: Path) -> None:
    """A replica that started on v0003 has loaded nothing else: the event's rollback
    goes to v0002 (loaded now), not to the base, and the ticks keep it there."""
    server = Server(registry_dir, None)
    server.model_registry.set_pointer("policy", "promoted", "policy-v0003")
    server.versions.start_from_registry()
    server.roll_back("policy-v0003")  # the pointer returns to v0002, then the event
    assert server.router.shares() == {"policy-v0002": 1.0}
    for _ in range(3):
        server.versions.tick()
    assert server.router.shares() == {"policy-v0002": 1.0}
    assert server.metric("rlhf_model_rollbacks_total", reason="event") == 1
    assert server.metric("rlhf_model_rollbacks_total", reason="registry") == 0
