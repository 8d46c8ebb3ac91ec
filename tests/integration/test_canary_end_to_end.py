"""Issue 17 end to end: humans judge the canary, and every replica follows them.

Every part is real and every service runs as in production, from its own entry point
on a thread: an embedded Tansu broker of this test's own (the services use the loop's
real topics), the embedded Argilla, two policy-server replicas (`main`, configured by
the environment like a pod, each its own consumer group) on one registry of real tiny
LoRA adapters, the sampler, the annotation service and the trainer with its canary
judge (`run_service`). The trainer's training threshold is out of reach, so no run
starts: what decides is the judge alone.

The flow: the registry promotes policy-v0002 as a canary against policy-v0001
(`promoted`, canary_fraction 0.5, on rlhf.model-updates, as the trainer's pipeline
sends it); both replicas serve both versions; chat requests (the OpenAI SDK,
temperature 0) to replica 1 are all A/B picks (AB_SHARE=1.0), captured with both
versions' answers; the sampler makes them comparison tasks; the annotation service
pushes them, blind, into the comparison dataset; a simulated annotator, logged in
like a person, judges them through the UI's own endpoints with an oracle that knows
each version's greedy answer (asked of the replica beforehand, not captured); the
annotation service turns each judgement into a CanaryComparison; the judge decides.

- The canary judged better graduates on evidence (its timer is an hour away), and both
  replicas give it all traffic; its manifest holds the decision.
- The canary judged worse is rolled back: both replicas serve policy-v0001 only, the
  registry's promoted pointer is back on it and policy-v0002 is marked rolled back.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import argilla as rg
import httpx
import openai
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from services.annotation.service import main as annotation_main
from services.annotation.settings import AnnotationSettings
from services.demo.simulated_annotator import SimulatedAnnotator
from services.policy_server.service import main as policy_server_main
from services.sampler.service import run_service as sampler_service
from services.sampler.settings import SamplerSettings
from services.trainer.registry import ModelRegistry
from services.trainer.service import run_service as trainer_service
from shared.bus import EventProducer
from shared.bus.codec import decode
from shared.contracts import CanaryComparison, ModelUpdate, model_update_id_for
from shared.embedded.argilla import EmbeddedArgilla
from shared.embedded.ports import free_port
from shared.settings import KafkaSettings
from shared.topics import COMPARISONS, MODEL_UPDATES
from tests.conftest import read_topic, wait_for
from tests.integration import test_policy_server as policy_fixtures
from tests.trainer_support import own_broker_kafka, trainer_settings  # noqa: F401 (fixture: kafka, a broker per test)

from .argilla_fixtures import argilla, argilla_client, dataset_prefix  # noqa: F401  (fixtures)

# The first Argilla test of a session may create the server's venv before it starts.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

policy_models = policy_fixtures.policy_models  # a tiny base policy and LoRA adapters, built once per module

STABLE, CANARY = "policy-v0001", "policy-v0002"
SERVED = "rlhf-policy"
API_KEY = "e2e-policy-key"
MAX_TOKENS = 6
JUDGED = 5  # comparisons the annotator judges: one more than the judge's minimum
# The judge, loose enough that a handful of unanimous judgements decide: a win moves the
# log likelihood ratio by log(0.5 / 0.1) = 1.61, a loss by log(0.5 / 0.9) = -0.59, and
# the bounds are +-log(0.8 / 0.2) = +-1.39; nothing is decided before 4 judgements.
JUDGE = {"margin": 0.4, "false_graduation_rate": 0.2, "false_rollback_rate": 0.2, "min_comparisons": 4,
         "max_duration_s": 3600.0, "check_interval_s": 0.5}
# Distinct prompts (the judge keeps one vote per compared prompt); those on which the two
# versions' greedy answers differ are used.
PROMPTS = [
    "how do I reset my password?", "what is the capital of France?", "write a haiku about rain",
    "explain recursion to a child", "give me three tips for sleeping better", "how do I boil an egg?",
    "translate 'good morning' into Spanish", "what does HTTP stand for?", "name a prime number above 50",
    "summarise the plot of Hamlet", "how far away is the moon?", "suggest a name for a grey cat",
    "why is the sky blue?", "what is a good first programming language?", "how do I tie a tie?",
    "what should I pack for a beach trip?",
]


# -- the registry ----------------------------------------------------------------------------


@pytest.fixture
def registry(policy_models: Path, tmp_path: Path) -> ModelRegistry:
    """The trainer's registry (DATA_DIR/registry of the trainer): policy-v0001, promoted
    and serving, and policy-v0002, its child, not promoted yet."""
    registry = ModelRegistry(tmp_path / "trainer" / "registry")
    parent = None
    for version in (STABLE, CANARY):
        staged = registry.staging(f"run-{version}", "policy")
        shutil.copytree(policy_models / "adapters" / version, staged, dirs_exist_ok=True)
        published = registry.publish("policy", staged, {"run_id": f"run-{version}", "parent_version": parent,
                                                        "base_model": "tiny"})
        assert published == version
        parent = version
    registry.set_pointer("policy", "promoted", STABLE)
    return registry


def promoted(registry: ModelRegistry, version: str, fraction: float, previous: str | None) -> ModelUpdate:
    """The `promoted` event the trainer's pipeline sends after moving the pointer."""
    return ModelUpdate(event_id=model_update_id_for(version, "promoted"), model_version=version, action="promoted",
                       base_model="tiny", canary_fraction=fraction, previous_version=previous,
                       adapter_uri=registry.path("policy", version).resolve().as_uri())


# -- the services, each from its own entry point ------------------------------------------------


class Service:
    """One service's entry point on a thread, until `stop`; an exception it raises is
    kept for the test to report."""

    def __init__(self, name: str, target: Callable[..., None], *args: Any, **kwargs: Any) -> None:
        self.name, self.stop, self.error = name, threading.Event(), None
        self._target, self._args, self._kwargs = target, args, kwargs
        self.thread = threading.Thread(target=self._run, name=f"e2e-{name}", daemon=True)

    def _run(self) -> None:
        try:
            self._target(*self._args, stop=self.stop, **self._kwargs)
        except BaseException as error:  # noqa: BLE001 - reported by alive()/close()
            self.error = error

    def start(self) -> Service:
        self.thread.start()
        return self

    def alive(self) -> bool:
        assert self.error is None, f"{self.name} failed: {self.error!r}"
        return self.thread.is_alive()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        assert not self.thread.is_alive(), f"{self.name} did not stop"
        assert self.error is None, f"{self.name} failed: {self.error!r}"


class Replica(Service):
    """A policy-server replica: `main` reads its settings from the environment, as a pod's
    container does; each replica has its own port, data dir and consumer group."""

    def __init__(self, index: int, kafka: KafkaSettings, registry: ModelRegistry, base_model: Path,
                 data_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            "RLHF_KAFKA__BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
            "RLHF_KAFKA__SESSION_TIMEOUT_MS": str(kafka.session_timeout_ms),
            "RLHF_KAFKA__HEARTBEAT_INTERVAL_MS": str(kafka.heartbeat_interval_ms),
            "RLHF_CONSUMER__SHUTDOWN_GRACE_S": "4",
            "RLHF_HTTP__HOST": "127.0.0.1",
            "RLHF_HTTP__PORT": str(self.port),
            "RLHF_DATA_DIR": str(data_dir),
            "RLHF_POLICY_SERVER__BASE_MODEL": str(base_model),
            "RLHF_POLICY_SERVER__REGISTRY_DIR": str(registry.root),
            "RLHF_POLICY_SERVER__API_KEY": API_KEY,
            "RLHF_POLICY_SERVER__GROUP_ID": f"policy-server-{uuid.uuid4().hex[:8]}-{index}",
            "RLHF_POLICY_SERVER__AB_SHARE": "1.0",
            "RLHF_POLICY_SERVER__CANARY_SEED": str(index),
            "RLHF_POLICY_SERVER__CANARY_GRADUATE_AFTER_S": "0",  # no timer: only the judge graduates
            "RLHF_POLICY_SERVER__CANARY_FRACTION": "0.5",
            "RLHF_POLICY_SERVER__MAX_TOKENS_DEFAULT": str(MAX_TOKENS),
        }
        super().__init__(f"policy-server-{index}", lambda stop: policy_server_main(stop))
        self._http = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=30)
        self.client = openai.OpenAI(base_url=f"{self.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)

    def start(self) -> Replica:
        """Start with this replica's environment, held until its API answers (by then
        `main` has read its settings; the environment is restored for the next one)."""
        saved = {name: os.environ.get(name) for name in self.env}
        os.environ.update(self.env)
        try:
            super().start()
            assert wait_for(lambda: not self.alive() or self._answers(), timeout_s=90, interval_s=0.2), \
                f"{self.name} did not start"
            assert self.alive(), f"{self.name} stopped"
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
        return self

    def _answers(self) -> bool:
        try:
            return self._http.get("/v1/models").status_code == 200
        except httpx.HTTPError:
            return False

    def models(self) -> dict[str, Any]:
        response = self._http.get("/v1/models")
        response.raise_for_status()
        return {m["id"]: m for m in response.json()["data"]}

    def shares(self) -> dict[str, float]:
        """Who serves what share, as /v1/models shows it."""
        return dict(self.models()[SERVED]["versions"])

    def traffic_share(self) -> dict[str, float]:
        """rlhf_policy_traffic_share from the replica's own /metrics (versions at 0 left out)."""
        text = self._http.get("/metrics").raise_for_status().text
        return {s.labels["version"]: s.value for family in text_string_to_metric_families(text)
                for s in family.samples if s.name == "rlhf_policy_traffic_share" and s.value > 0}

    def metric(self, name: str, **labels: str) -> float:
        text = self._http.get("/metrics").raise_for_status().text
        return sum(s.value for family in text_string_to_metric_families(text) for s in family.samples
                   if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))

    def ask(self, prompt: str, model: str = SERVED, store: bool = True) -> Any:
        extra = {} if store else {"extra_body": {"store": False}}
        return self.client.chat.completions.create(model=model, max_tokens=MAX_TOKENS, temperature=0,
                                                   messages=[{"role": "user", "content": prompt}], **extra)

    def close(self) -> None:
        try:
            super().close()
        finally:
            self.client.close()
            self._http.close()


class Loop:
    """The running loop: the trainer (with its judge), sampler, annotation service and two
    policy-server replicas on one registry and one broker."""

    def __init__(self, kafka: KafkaSettings, registry: ModelRegistry, replicas: list[Replica],
                 trainer_metrics: CollectorRegistry, comparison_dataset: str) -> None:
        self.kafka, self.registry, self.replicas = kafka, registry, replicas
        self.trainer_metrics, self.comparison_dataset = trainer_metrics, comparison_dataset

    def updates(self, action: str) -> list[ModelUpdate]:
        return [u for r in read_topic(self.kafka, MODEL_UPDATES.name, 10_000, timeout_s=1.0)
                if (u := ModelUpdate.model_validate_json(r.value)).action == action]

    def comparisons(self) -> list[CanaryComparison]:
        return [decode(r.value, CanaryComparison) for r in read_topic(self.kafka, COMPARISONS.name, 10_000,
                                                                        timeout_s=1.0)]


@contextmanager
def running_loop(kafka: KafkaSettings, registry: ModelRegistry, argilla: EmbeddedArgilla,  # noqa: F811
                 dataset_prefix: str, policy_models: Path, tmp_path: Path) -> Iterator[Loop]:  # noqa: F811
    tag = uuid.uuid4().hex[:8]
    trainer_metrics = CollectorRegistry()
    trainer_started: list[object] = []
    # The trainer's data dir holds the registry (DATA_DIR/registry), as in production.
    trainer_config = trainer_settings(registry.root.parent, kafka, group_id=f"trainer-{tag}", canary_fraction=0.5,
                                      canary_judge=JUDGE)
    sampler_config = SamplerSettings(kafka=kafka, http={"host": "127.0.0.1", "port": 0},
                                     data_dir=str(tmp_path / "sampler"), sampler={"group_id": f"sampler-{tag}"})
    comparison_dataset = f"{dataset_prefix}-ab"
    annotation_config = AnnotationSettings(
        kafka=kafka, data_dir=str(tmp_path / "annotation"), http={"host": "127.0.0.1", "port": 0},
        annotation={"argilla_url": argilla.url, "api_key": argilla.api_key, "dataset": dataset_prefix,
                    "comparison_dataset": comparison_dataset, "webhooks": False, "poll_interval_s": 0.5,
                    "group_id": f"annotation-{tag}"})
    with ExitStack() as stack:
        def started(service: Service) -> Service:
            stack.callback(service.close)  # closed in reverse: the replicas first, the trainer last
            return service.start()

        trainer = started(Service("trainer", trainer_service, trainer_config, registry=trainer_metrics,
                                  on_started=trainer_started.append))
        sampler = started(Service("sampler", sampler_service, sampler_config, registry=CollectorRegistry()))
        annotation = started(Service("annotation", lambda stop: annotation_main(stop, annotation_config,
                                                                               CollectorRegistry())))
        assert wait_for(lambda: bool(trainer_started) or not trainer.alive(), timeout_s=60)
        replicas = [started(Replica(i, kafka, registry, policy_models / "base", tmp_path / f"replica-{i}"))
                    for i in (1, 2)]
        assert sampler.alive() and annotation.alive() and trainer.alive()
        yield Loop(kafka, registry, replicas, trainer_metrics, comparison_dataset)


# -- the flow ---------------------------------------------------------------------------------


def promote_canary(loop: Loop) -> None:
    """The stable version's `promoted` event, as its own promotion sent it (so the
    trainer's outbox has nothing to re-announce), then what the trainer's pipeline does
    for the new version: the pointer first, then the event, as a canary at 0.5."""
    producer = EventProducer(loop.kafka)
    try:
        producer.send(MODEL_UPDATES, promoted(loop.registry, STABLE, 1.0, None))
        producer.flush()
        loop.registry.set_pointer("policy", "promoted", CANARY)
        producer.send(MODEL_UPDATES, promoted(loop.registry, CANARY, 0.5, STABLE))
        producer.flush()
    finally:
        producer.close()
    for replica in loop.replicas:
        assert wait_for(lambda r=replica: r.shares() == {STABLE: 0.5, CANARY: 0.5}, timeout_s=30), \
            f"{replica.name} serves {replica.shares()}"


def greedy_answers(replica: Replica, count: int) -> dict[str, dict[str, str]]:
    """prompt -> version -> that version's greedy answer, asked of the replica with the
    version pinned and `store: false` (answered, never captured: no output, no task).
    Only prompts whose two answers differ, and no answer shared between the sides, so
    the oracle can tell them apart."""
    chosen: dict[str, dict[str, str]] = {}
    seen: set[str] = set()
    for prompt in PROMPTS:
        answers = {v: replica.ask(prompt, model=v, store=False).choices[0].message.content or "" for v in
                   (STABLE, CANARY)}
        texts = {answer.strip() for answer in answers.values()}
        if len(texts) == 2 and "" not in texts and not texts & seen:
            chosen[prompt] = answers
            seen |= texts
        if len(chosen) == count:
            return chosen
    raise AssertionError(f"only {len(chosen)} prompts on which the versions' greedy answers differ")


def oracle_preferring(answers: dict[str, dict[str, str]], version: str,
                      unknown: list[str]) -> Callable[[str, list[str]], list[float]]:
    """The annotator's taste: `version`'s answer wins. It reads only what the page shows
    (the prompt and the two answer texts); an answer it does not know is recorded."""
    preferred = {by_version[version].strip() for by_version in answers.values()}
    other = {text.strip() for by_version in answers.values() for v, text in by_version.items() if v != version}

    def score(prompt: str, texts: list[str]) -> list[float]:
        unknown.extend(t for t in texts if t.strip() not in preferred | other)
        return [1.0 if text.strip() in preferred else 0.0 for text in texts]

    return score


def chat_and_judge(loop: Loop, argilla: EmbeddedArgilla, argilla_client: rg.Argilla,  # noqa: F811
                   prefer: str) -> tuple[dict[str, dict[str, str]], float]:
    """Users chat with replica 1; every answer is an A/B pick; the annotator judges the
    pairs blind in Argilla, preferring `prefer`'s answers. Returns the answers and the
    time the judgements were submitted."""
    first = loop.replicas[0]
    answers = greedy_answers(first, JUDGED)
    served: dict[str, str] = {}
    for prompt in answers:
        reply = first.ask(prompt)
        version = reply.system_fingerprint
        assert version in (STABLE, CANARY)
        assert reply.choices[0].message.content == answers[prompt][version]  # the user gets the routed answer only
        served[prompt] = version
    assert wait_for(lambda: first.metric("rlhf_policy_ab_pairs_total", result="ok") == JUDGED, timeout_s=30)
    assert first.metric("rlhf_policy_captured_total", outcome="error") == 0

    def comparison_dataset() -> Any:
        dataset = argilla_client.datasets(name=loop.comparison_dataset, workspace="rlhf")
        return dataset if dataset is not None and len(list(dataset.records)) == JUDGED else None

    assert wait_for(lambda: comparison_dataset() is not None, timeout_s=60, interval_s=0.5), \
        "the comparison tasks did not reach the comparison dataset"
    dataset = comparison_dataset()
    for record in dataset.records:  # blind: no version anywhere an annotator reads
        assert STABLE not in json.dumps(record.fields) and CANARY not in json.dumps(record.fields)
    unknown: list[str] = []
    user = argilla.annotators[0]
    with SimulatedAnnotator(argilla.url, user.username, user.password,
                            oracle_preferring(answers, prefer, unknown)) as person:
        assert person.annotate(str(dataset.id)) == JUDGED
    assert unknown == [], f"the comparison records show answers the versions never gave: {unknown}"
    return answers, time.monotonic()


def judged_comparisons(loop: Loop, winner: str) -> list[CanaryComparison]:
    found: list[CanaryComparison] = []

    def all_there() -> bool:
        found[:] = loop.comparisons()
        return len(found) >= JUDGED

    assert wait_for(all_there, timeout_s=60, interval_s=0.5), f"{len(found)} CanaryComparison events"
    assert len(found) == JUDGED and len({c.task_id for c in found}) == JUDGED
    for comparison in found:
        assert (comparison.canary_version, comparison.stable_version) == (CANARY, STABLE)
        assert comparison.outcome == winner
    return found


def decision_event(loop: Loop, action: str) -> ModelUpdate:
    found: list[ModelUpdate] = []

    def decided() -> bool:
        found[:] = loop.updates(action)
        return bool(found)

    assert wait_for(decided, timeout_s=60, interval_s=0.5), f"no {action!r} event"
    # at least once: a send the broker did not acknowledge in time is sent again, same id
    [event] = {u.event_id: u for u in found}.values()
    return event


@pytest.fixture
def loop(kafka: KafkaSettings, registry: ModelRegistry, argilla: EmbeddedArgilla,  # noqa: F811
         dataset_prefix: str, policy_models: Path, tmp_path: Path) -> Iterator[Loop]:  # noqa: F811
    with running_loop(kafka, registry, argilla, dataset_prefix, policy_models, tmp_path) as running:
        promote_canary(running)
        yield running


def test_a_canary_the_annotators_prefer_graduates_on_evidence_and_every_replica_gives_it_all_traffic(
        loop: Loop, argilla: EmbeddedArgilla, argilla_client: rg.Argilla) -> None:  # noqa: F811
    promoted_at = time.monotonic()
    answers, submitted_at = chat_and_judge(loop, argilla, argilla_client, prefer=CANARY)
    judged_comparisons(loop, "canary")

    graduated = decision_event(loop, "graduated")
    decided_after_s = time.monotonic() - promoted_at
    decision = graduated.decision
    assert graduated.model_version == CANARY and graduated.previous_version == STABLE
    assert decision is not None and (decision.outcome, decision.reason) == ("graduate", "evidence")
    assert (decision.canary_version, decision.stable_version) == (CANARY, STABLE)
    assert decision.wins >= JUDGE["min_comparisons"] and decision.losses == 0 and decision.ties == 0
    assert decision.log_likelihood_ratio >= decision.graduate_at
    assert decision.posterior_win_rate > 0.5
    assert decision.canary_age_s < JUDGE["max_duration_s"] / 10  # evidence, well before the judge's timer
    assert decided_after_s < 300, f"decided {decided_after_s:.0f}s after the promotion"

    for replica in loop.replicas:
        assert wait_for(lambda r=replica: r.shares() == {CANARY: 1.0}, timeout_s=20), \
            f"{replica.name} serves {replica.shares()}"
        assert wait_for(lambda r=replica: r.traffic_share() == {CANARY: 1.0}, timeout_s=5)
        prompt = next(iter(answers))
        reply = replica.ask(prompt)  # a user's request now: the graduated version answers
        assert reply.system_fingerprint == CANARY and reply.choices[0].message.content == answers[prompt][CANARY]
    manifest = loop.registry.manifest("policy", CANARY)
    assert manifest["canary_decision"]["outcome"] == "graduate"
    assert manifest["canary_decision"]["wins"] == decision.wins
    assert loop.registry.pointer("policy", "promoted") == CANARY and CANARY not in loop.registry.rolled_back("policy")
    assert loop.trainer_metrics.get_sample_value("rlhf_canary_decisions_total",
                                                 {"outcome": "graduate", "reason": "evidence"}) == 1
    assert not loop.updates("rolled_back")
    print(f"graduated {decided_after_s:.1f}s after both replicas served the canary, "
          f"{time.monotonic() - submitted_at:.1f}s after the judgements (decision at {decision.wins} wins)")


def test_a_canary_the_annotators_judge_worse_is_rolled_back_on_every_replica_and_in_the_registry(
        loop: Loop, argilla: EmbeddedArgilla, argilla_client: rg.Argilla) -> None:  # noqa: F811
    promoted_at = time.monotonic()
    answers, submitted_at = chat_and_judge(loop, argilla, argilla_client, prefer=STABLE)
    judged_comparisons(loop, "stable")

    rolled_back = decision_event(loop, "rolled_back")
    decided_after_s = time.monotonic() - promoted_at
    decision = rolled_back.decision
    assert rolled_back.model_version == CANARY and rolled_back.previous_version == STABLE
    assert decision is not None and (decision.outcome, decision.reason) == ("rollback", "evidence")
    assert (decision.canary_version, decision.stable_version) == (CANARY, STABLE)
    assert decision.losses >= 3 and decision.wins == 0 and decision.ties == 0
    assert decision.log_likelihood_ratio <= decision.rollback_at
    assert decision.posterior_win_rate < 0.5
    assert decided_after_s < 300, f"decided {decided_after_s:.0f}s after the promotion"

    for replica in loop.replicas:
        assert wait_for(lambda r=replica: r.shares() == {STABLE: 1.0}, timeout_s=20), \
            f"{replica.name} serves {replica.shares()}"
        assert wait_for(lambda r=replica: r.traffic_share() == {STABLE: 1.0}, timeout_s=5)
        assert wait_for(lambda r=replica: CANARY not in r.models(), timeout_s=5)  # unloaded: never served again
        prompt = next(iter(answers))
        reply = replica.ask(prompt)
        assert reply.system_fingerprint == STABLE and reply.choices[0].message.content == answers[prompt][STABLE]
        # once, by the event or, had the replica missed it, from the registry on its tick
        assert wait_for(lambda r=replica: r.metric("rlhf_model_rollbacks_total") == 1, timeout_s=5)
        pairs = JUDGED if replica is loop.replicas[0] else 0  # no canary left: no pair for that request
        assert replica.metric("rlhf_policy_ab_pairs_total", result="ok") == pairs
    assert loop.registry.pointer("policy", "promoted") == STABLE
    assert CANARY in loop.registry.rolled_back("policy")
    assert loop.registry.manifest("policy", CANARY)["canary_decision"]["outcome"] == "rollback"
    assert loop.trainer_metrics.get_sample_value("rlhf_canary_decisions_total",
                                                 {"outcome": "rollback", "reason": "evidence"}) == 1
    assert not loop.updates("graduated")
    print(f"rolled back {decided_after_s:.1f}s after both replicas served the canary, "
          f"{time.monotonic() - submitted_at:.1f}s after the judgements (decision at {decision.losses} losses)")
