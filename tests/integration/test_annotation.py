"""The annotation service against the real parts: embedded argilla-server (SQLite, SQL
search engine, Redis, rq worker), the embedded broker, and annotators that log in and
rank through the same endpoints as the web UI."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import argilla as rg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.annotation.argilla_api import ArgillaRest
from services.annotation.collector import Collector
from services.annotation.datasets import RankingDatasets
from services.annotation.metrics import AnnotationMetrics
from services.annotation.pusher import Pusher
from services.annotation.schema import DatasetMismatch, dataset_name
from services.annotation.settings import AnnotationOptions, AnnotationSettings
from services.demo.simulated_annotator import SimulatedAnnotator
from services.annotation.state import CollectorState
from shared.bus import DependencyUnavailable, EventProducer
from shared.bus.codec import decode
from shared.contracts import (
    CanaryComparison,
    Candidate,
    ChatMessage,
    ModelRef,
    Preference,
    RankingResult,
    RankingTask,
    SamplingDecision,
    output_id_for,
    task_id_for,
)
from shared.embedded.argilla import EmbeddedArgilla
from shared.settings import KafkaSettings
from shared.topics import Topic, dead_letter_topic
from tests.conftest import committed_offsets, read_topic, wait_for
from tests.helpers.fault_proxy import Fault, FaultProxy

from .argilla_fixtures import argilla, argilla_client, dataset_prefix  # noqa: F401  (fixtures)

# The first test may create the server venv (pip install) before the server starts.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def make_task(request_id: str, scores: list[int]) -> RankingTask:
    """A task whose candidate texts carry their true quality: 'quality=7 ...'."""
    output_id = output_id_for(request_id)
    task_id = task_id_for(output_id)
    candidates = [
        Candidate(candidate_id=f"c{i}", text=f"quality={score} answer {i} to {request_id}",
                  model=ModelRef(name="tiny", version=f"v{i % 2}"))
        for i, score in enumerate(scores)
    ]
    return RankingTask(
        event_id=task_id, task_id=task_id, output_id=output_id,
        prompt=[ChatMessage(role="user", content=f"question {request_id}")],
        candidates=candidates,
        sampling=SamplingDecision(rule="uniform", strategy="uniform", score=0.5),
        tags=["test"],
    )


def quality_oracle(prompt: str, answers: list[str]) -> list[float]:
    return [float(answer.split()[0].split("=")[1]) for answer in answers]


def options(prefix: str, **overrides: object) -> AnnotationOptions:
    """Per-test dataset names: the ranking datasets and the comparison dataset."""
    return AnnotationOptions(**{"dataset": prefix, "comparison_dataset": f"{prefix}-ab", **overrides})  # type: ignore[arg-type]


class Setup:
    """Pusher and collector wired as the service wires them, on per-test topics."""

    def __init__(self, argilla: EmbeddedArgilla, client: rg.Argilla, opts: AnnotationOptions,
                 kafka: KafkaSettings, rankings: Topic, preferences: Topic, state_dir: Path,
                 comparisons: Topic) -> None:
        self.registry = CollectorRegistry()
        self.metrics = AnnotationMetrics(self.registry)
        self.datasets = RankingDatasets(client, opts)
        self.rest = ArgillaRest(argilla.url, argilla.api_key)
        self.state = CollectorState(state_dir / "collector.sqlite")
        self.pusher = Pusher(self.datasets, self.rest, opts.version, self.metrics, task_store=self.state)
        self.producer = EventProducer(kafka)
        self.collector = Collector(self.datasets, self.rest, self.producer, self.state, self.metrics,
                                   guideline_version=opts.version, overlap_s=5.0,
                                   rankings_topic=rankings, preferences_topic=preferences,
                                   comparisons_topic=comparisons)

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0

    def close(self) -> None:
        self.producer.close()
        self.rest.close()
        self.state.close()


@pytest.fixture
def make_setup(argilla: EmbeddedArgilla, argilla_client: rg.Argilla, kafka: KafkaSettings,  # noqa: F811
               make_topic: Callable[..., Topic], tmp_path: Path) -> Iterator[Callable[..., Setup]]:
    made: list[Setup] = []

    def make(opts: AnnotationOptions) -> Setup:
        setup = Setup(argilla, argilla_client, opts, kafka, make_topic(RankingResult),
                      make_topic(Preference), tmp_path / uuid.uuid4().hex, make_topic(CanaryComparison))
        made.append(setup)
        return setup

    yield make
    for setup in made:
        setup.close()


def annotator(argilla: EmbeddedArgilla, index: int = 0, **kwargs: object) -> SimulatedAnnotator:  # noqa: F811
    user = argilla.annotators[index]
    return SimulatedAnnotator(argilla.url, user.username, user.password, quality_oracle, **kwargs)  # type: ignore[arg-type]


def events(kafka: KafkaSettings, topic: Topic, expected: int, timeout_s: float = 10.0) -> list:  # type: ignore[type-arg]
    return [decode(r.value, topic.contract) for r in read_topic(kafka, topic.name, expected, timeout_s)]


# --- the embedded server -------------------------------------------------------------

def test_embedded_argilla_answers_with_the_sql_engine_and_logins(argilla: EmbeddedArgilla) -> None:  # noqa: F811
    status = httpx.get(f"{argilla.url}/api/v1/status", headers={"X-Argilla-Api-Key": argilla.api_key})
    assert status.status_code == 200
    assert status.json()["search_engine"]["distribution"] == "sql"
    assert status.json()["version"] == "2.8.0"
    user = argilla.annotators[0]
    token = httpx.post(f"{argilla.url}/api/v1/token", data={"username": user.username, "password": user.password})
    assert token.status_code == 201
    me = httpx.get(f"{argilla.url}/api/v1/me", headers={"Authorization": f"Bearer {token.json()['access_token']}"})
    assert me.json()["role"] == "annotator"
    assert httpx.get(f"{argilla.url}/api/v1/me", headers={"X-Argilla-Api-Key": "wrong"}).status_code == 401
    assert argilla.timings["server_s"] < 60


# --- dataset setup -------------------------------------------------------------------

def test_dataset_is_created_then_validated_and_a_mismatch_is_a_clear_error(
    argilla_client: rg.Argilla, dataset_prefix: str  # noqa: F811
) -> None:
    first = RankingDatasets(argilla_client, options(dataset_prefix, rating_axes=["helpfulness"]))
    created = first.ensure(4)
    assert created.name == dataset_name(dataset_prefix, 4)
    questions = {q.name for q in created.settings.questions}
    assert questions == {"rank", "rating_helpfulness", "rationale"}
    assert "Ranking guidelines" in (created.settings.guidelines or "")
    # a second service instance finds and accepts the same dataset
    again = RankingDatasets(argilla_client, options(dataset_prefix, rating_axes=["helpfulness"])).ensure(4)
    assert again.id == created.id
    with pytest.raises(DatasetMismatch) as error:
        RankingDatasets(argilla_client, options(dataset_prefix, min_submitted=3)).ensure(4)
    message = str(error.value)
    assert dataset_name(dataset_prefix, 4) in message
    assert "rating_helpfulness" in message and "min_submitted is 1, expected 3" in message


# --- pushing -------------------------------------------------------------------------

def test_a_redelivered_task_updates_its_record_instead_of_adding_one(
    argilla: EmbeddedArgilla, argilla_client: rg.Argilla, dataset_prefix: str,  # noqa: F811
    make_setup: Callable[..., Setup], make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: Callable[..., object], kafka: KafkaSettings,
) -> None:
    setup = make_setup(options(dataset_prefix))
    tasks_topic = make_topic(RankingTask)
    task = make_task(f"push-{dataset_prefix}", [3, 1, 2])
    for _ in range(3):  # the same task delivered three times
        producer.publish(tasks_topic, task)
    other = make_task(f"push2-{dataset_prefix}", [1, 2, 3])
    producer.publish(tasks_topic, other)
    loop = start_loop([tasks_topic], group_id, setup.pusher)
    assert wait_for(lambda: loop.metric("rlhf_messages_consumed_total", topic=tasks_topic.name,  # type: ignore[attr-defined]
                                        group=group_id) == 4, timeout_s=60)
    dataset = setup.datasets.ensure(3)
    records = list(dataset.records)
    assert sorted(r.id for r in records) == sorted([task.task_id, other.task_id])
    assert setup.metric("rlhf_annotation_records_pushed_total", candidates="3") == 4
    pushed = next(r for r in records if r.id == task.task_id)
    assert pushed.fields["answer_1"].startswith("quality=3")
    assert pushed.metadata["sampling_rule"] == "uniform"
    assert pushed.metadata["model_versions"] == ["tiny:v0", "tiny:v1"]


def test_an_unreachable_argilla_is_a_dependency_outage_not_a_poison_message(
    dataset_prefix: str, tmp_path: Path  # noqa: F811
) -> None:
    from shared.embedded.ports import free_port

    url = f"http://127.0.0.1:{free_port()}"
    datasets = RankingDatasets(lambda: rg.Argilla(api_url=url, api_key="x", timeout=2, retries=0),
                               options(dataset_prefix))
    pusher = Pusher(datasets, ArgillaRest(url, "x", timeout_s=2), "v1", AnnotationMetrics(CollectorRegistry()))
    with pytest.raises(DependencyUnavailable):
        pusher.push(make_task("down", [1, 2]))


# --- collecting ----------------------------------------------------------------------

def test_each_completed_record_yields_exactly_one_ranking_and_its_preferences(
    argilla: EmbeddedArgilla, dataset_prefix: str, make_setup: Callable[..., Setup],  # noqa: F811
    kafka: KafkaSettings,
) -> None:
    setup = make_setup(options(dataset_prefix))
    tasks = [make_task(f"poll-{dataset_prefix}-{i}", [1, 3, 2]) for i in range(2)]
    for task in tasks:
        setup.pusher.push(task)
    dataset = setup.datasets.ensure(3)
    assert setup.collector.poll() == 0  # nothing completed yet
    assert setup.metric("rlhf_annotation_tasks_pending") == 2
    with annotator(argilla) as person:
        assert person.annotate(str(dataset.id)) == 2
    assert setup.collector.poll() == 2
    assert setup.metric("rlhf_annotation_tasks_pending") == 0
    assert setup.collector.poll() == 0  # the overlap re-reads them; the state skips them
    rankings = events(kafka, setup.collector._rankings_topic, 2)
    preferences = events(kafka, setup.collector._preferences_topic, 6)
    assert len(rankings) == 2 and len(preferences) == 6
    assert len(events(kafka, setup.collector._preferences_topic, 7, timeout_s=2)) == 6  # no more arrive
    by_task = {r.task_id: r for r in rankings}
    assert set(by_task) == {t.task_id for t in tasks}
    ranks = {r.candidate_id: r.rank for r in by_task[tasks[0].task_id].annotations[0].ranks}
    assert ranks == {"c1": 1, "c2": 2, "c0": 3}
    first = [p for p in preferences if p.task_id == tasks[0].task_id]
    pairs = {(p.chosen.candidate_id, p.rejected.candidate_id): p.margin for p in first}
    assert pairs == {("c1", "c2"): 1.0, ("c1", "c0"): 2.0, ("c2", "c0"): 1.0}
    assert all(p.guideline_version == "v1" and p.agreement == 1.0 and p.annotator_count == 1 for p in first)
    assert all(p.ranking_id == by_task[tasks[0].task_id].ranking_id for p in first)
    assert setup.metric("rlhf_annotation_preferences_total") == 6
    # a restarted collector (same state file) publishes nothing again
    restarted = Collector(setup.datasets, setup.rest, setup.producer, setup.state, setup.metrics,
                          guideline_version="v1", rankings_topic=setup.collector._rankings_topic,
                          preferences_topic=setup.collector._preferences_topic)
    assert restarted.poll() == 0


def test_tied_answers_give_no_pair(
    argilla: EmbeddedArgilla, dataset_prefix: str, make_setup: Callable[..., Setup],  # noqa: F811
    kafka: KafkaSettings,
) -> None:
    setup = make_setup(options(dataset_prefix))
    task = make_task(f"tie-{dataset_prefix}", [5, 5, 1])
    setup.pusher.push(task)
    dataset = setup.datasets.ensure(3)
    with annotator(argilla) as person:
        record = person.next_pending(str(dataset.id))
        assert record is not None
        assert [r["rank"] for r in person.ranking_for(record)] == [1, 1, 3]
        person.submit(record["id"], person.ranking_for(record))
    assert setup.collector.poll() == 1
    [ranking] = events(kafka, setup.collector._rankings_topic, 1)
    assert sorted(r.rank for r in ranking.annotations[0].ranks) == [1, 1, 3]
    preferences = events(kafka, setup.collector._preferences_topic, 2)
    assert {(p.chosen.candidate_id, p.rejected.candidate_id, p.margin) for p in preferences} == {
        ("c0", "c2", 2.0), ("c1", "c2", 2.0)}
    assert setup.metric("rlhf_annotation_tied_pairs_total") == 1


def test_several_annotators_are_aggregated_by_borda_with_agreement(
    argilla: EmbeddedArgilla, dataset_prefix: str, make_setup: Callable[..., Setup],  # noqa: F811
    kafka: KafkaSettings,
) -> None:
    setup = make_setup(options(dataset_prefix, min_submitted=2))
    task = make_task(f"multi-{dataset_prefix}", [3, 2, 1])
    setup.pusher.push(task)
    dataset = setup.datasets.ensure(3)
    rankings = {0: [1, 2, 3], 1: [2, 1, 3]}  # annotator -> ranks of c0, c1, c2
    for index, ranks in rankings.items():
        with annotator(argilla, index) as person:
            record = person.next_pending(str(dataset.id))
            assert record is not None, f"annotator {index} got no record"
            person.submit(record["id"], [{"value": f"answer_{slot}", "rank": rank}
                                         for slot, rank in enumerate(ranks, start=1)])
        if index == 0:
            assert setup.collector.poll() == 0  # one of two annotators: not completed yet
    assert setup.collector.poll() == 1
    [ranking] = events(kafka, setup.collector._rankings_topic, 1)
    assert len(ranking.annotations) == 2
    preferences = {(p.chosen.candidate_id, p.rejected.candidate_id): p
                   for p in events(kafka, setup.collector._preferences_topic, 2)}
    # Borda: c0 = (2+1)/2, c1 = (1+2)/2, c2 = 0 -> c0 ~ c1 tie, both above c2
    assert set(preferences) == {("c0", "c2"), ("c1", "c2")}
    assert preferences[("c0", "c2")].margin == 1.5
    assert all(p.agreement == 1.0 and p.annotator_count == 2 for p in preferences.values())
    assert setup.registry.get_sample_value("rlhf_annotation_pairwise_agreement_count") == 1


def test_records_that_are_not_tasks_are_counted_as_discarded_and_skipped(
    argilla: EmbeddedArgilla, argilla_client: rg.Argilla, dataset_prefix: str,  # noqa: F811
    make_setup: Callable[..., Setup], kafka: KafkaSettings,
) -> None:
    setup = make_setup(options(dataset_prefix))
    good = make_task(f"good-{dataset_prefix}", [1, 2])
    setup.pusher.push(good)
    dataset = setup.datasets.ensure(2)
    # someone logs a record by hand: no task metadata, so no candidates to name
    dataset.records.log([rg.Record(id="hand-made", fields={"prompt": "p", "answer_1": "quality=1 a",
                                                               "answer_2": "quality=2 b"},
                                   metadata={"task": "{not json"})])
    with annotator(argilla) as person:
        assert person.annotate(str(dataset.id)) == 2
    assert setup.collector.poll() == 1
    assert setup.metric("rlhf_annotation_records_discarded_total", reason="not_a_task") == 1
    assert setup.collector.poll() == 0
    assert setup.metric("rlhf_annotation_records_discarded_total", reason="not_a_task") == 1  # counted once
    [ranking] = events(kafka, setup.collector._rankings_topic, 1)
    assert ranking.task_id == good.task_id


def test_the_service_end_to_end_from_task_topic_to_preferences(
    argilla: EmbeddedArgilla, dataset_prefix: str, kafka: KafkaSettings, tmp_path: Path,  # noqa: F811
) -> None:
    """`main` as `rlhf-loop run annotation` runs it, on the real loop topics. The poll
    interval is long, so the preference arriving within seconds proves the webhook
    path: Argilla's rq worker -> our listener -> an immediate collection."""
    from services.annotation.service import main
    from shared.topics import PREFERENCES, RANKING_TASKS

    settings = AnnotationSettings(
        kafka=kafka, data_dir=str(tmp_path), http={"host": "127.0.0.1", "port": 0},
        annotation={"argilla_url": argilla.url, "api_key": argilla.api_key, "dataset": dataset_prefix,
                    "group_id": f"annotation-{dataset_prefix}", "poll_interval_s": 120},
    )
    task = make_task(f"e2e-{dataset_prefix}", [2, 9])
    stop = threading.Event()
    registry = CollectorRegistry()
    service = threading.Thread(target=main, args=(stop, settings, registry), daemon=True)
    service.start()
    try:
        producer = EventProducer(kafka)
        producer.publish(RANKING_TASKS, task)
        producer.publish(RANKING_TASKS, task)  # a redelivery
        producer.close()
        client = rg.Argilla(api_url=argilla.url, api_key=argilla.api_key)
        name = dataset_name(dataset_prefix, 2)

        def pushed() -> bool:
            dataset = client.datasets(name=name, workspace="rlhf")
            return dataset is not None and len(list(dataset.records)) == 1

        assert wait_for(pushed, timeout_s=60, interval_s=0.5)
        dataset = client.datasets(name=name, workspace="rlhf")
        with annotator(argilla) as person:
            assert person.annotate(str(dataset.id)) == 1
        submitted = time.monotonic()

        def mine() -> list[Preference]:
            return [p for p in events(kafka, PREFERENCES, 10_000, timeout_s=1.0) if p.task_id == task.task_id]

        assert wait_for(lambda: len(mine()) == 1, timeout_s=30, interval_s=0.2), "no webhook-driven collection"
        latency_s = time.monotonic() - submitted
        assert latency_s < 15, f"submit -> preference took {latency_s:.1f}s"
        print(f"submit -> preference on the topic: {latency_s:.2f}s")
        [preference] = mine()
        assert (preference.chosen.candidate_id, preference.rejected.candidate_id) == ("c1", "c0")
        assert preference.margin == 1.0
        # the "no preferences for 6 h" alert reads this series: the collector's producer is metered
        assert registry.get_sample_value("rlhf_messages_produced_total", {"topic": PREFERENCES.name}) == 1
    finally:
        stop.set()
        service.join(30)
    assert not service.is_alive(), "the service did not stop"


def test_argilla_killed_during_a_push_loses_nothing_and_duplicates_nothing(
    argilla: EmbeddedArgilla, dataset_prefix: str,  # noqa: F811
    make_setup: Callable[..., Setup], make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: Callable[..., object], kafka: KafkaSettings,
) -> None:
    setup = make_setup(options(dataset_prefix))
    dataset = setup.datasets.ensure(2)
    tasks_topic = make_topic(RankingTask)
    tasks = [make_task(f"fault-{dataset_prefix}-{i}", [1, 2]) for i in range(40)]
    pusher = Pusher(setup.datasets, setup.rest, "v1", setup.metrics, batched=True)  # as the service runs it
    loop = start_loop([tasks_topic], group_id, pusher, sink=pusher, max_poll_records=5)
    pushed = lambda: setup.metric("rlhf_annotation_records_pushed_total", candidates="2")  # noqa: E731
    for task in tasks[:20]:
        producer.send(tasks_topic, task)
    producer.flush()
    assert wait_for(lambda: pushed() >= 5, timeout_s=60, interval_s=0.02)
    argilla.kill_server()  # SIGKILL mid-stream
    for task in tasks[20:]:
        producer.send(tasks_topic, task)
    producer.flush()
    time.sleep(2)  # the pusher meets the outage: backoff, no commit, no dead letter
    argilla.restart_server()
    assert wait_for(lambda: committed_offsets(kafka, group_id, tasks_topic.name) == {0: 40}, timeout_s=120)
    assert loop.metric("rlhf_messages_dead_lettered_total", topic=tasks_topic.name, group=group_id,  # type: ignore[attr-defined]
                       reason="poison") == 0
    assert loop.metric("rlhf_messages_failed_total", topic=tasks_topic.name, group=group_id,  # type: ignore[attr-defined]
                       reason="dependency_unavailable") >= 1
    ids = sorted(r.id for r in setup.datasets.ensure(2).records)
    assert ids == sorted(t.task_id for t in tasks)  # every task once: none lost, none doubled
    assert dataset.id == setup.datasets.ensure(2).id


def test_argilla_refusing_pushes_with_4xx_loses_nothing_duplicates_nothing_and_stays_up(
    argilla: EmbeddedArgilla, dataset_prefix: str,  # noqa: F811
    make_setup: Callable[..., Setup], make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: Callable[..., object], kafka: KafkaSettings,
) -> None:
    """The real Argilla behind a proxy that answers some bulk pushes itself: a rotated
    key (401), a rate limit (429), a write conflict (409), a dataset not found (404), a
    body too large for more than 2 records (413), and one task it always refuses (422)."""
    setup = make_setup(options(dataset_prefix))
    setup.datasets.ensure(2)
    tasks_topic = make_topic(RankingTask)
    tasks = [make_task(f"refused-{dataset_prefix}-{i}", [1, 2]) for i in range(12)]
    bad = make_task(f"refused-{dataset_prefix}-bad", [1, 2])
    bulk = r"/records/bulk$"
    with FaultProxy(argilla.url) as proxy:
        proxy.plan(
            Fault("PUT", bulk, 401, times=2), Fault("PUT", bulk, 429, times=2), Fault("PUT", bulk, 409),
            Fault("PUT", bulk, 404),
            Fault("PUT", bulk, 413, times=4, when=lambda body: body.count(b'"external_id"') > 2),
            Fault("PUT", bulk, 422, times=99, when=lambda body: bad.task_id.encode() in body),
        )
        rest = ArgillaRest(proxy.url, argilla.api_key)
        try:
            pusher = Pusher(setup.datasets, rest, "v1", setup.metrics, batched=True)
            for task in [*tasks[:6], bad, *tasks[6:]]:
                producer.send(tasks_topic, task)
            producer.flush()
            loop = start_loop([tasks_topic], group_id, pusher, sink=pusher, max_poll_records=7, max_attempts=2)
            assert wait_for(lambda: committed_offsets(kafka, group_id, tasks_topic.name) == {0: 13}, timeout_s=120)
            dead = read_topic(kafka, dead_letter_topic(group_id), expected=1)
        finally:
            rest.close()
    assert loop.error is None  # type: ignore[attr-defined]
    assert {status for _, _, status in proxy.injected} == {401, 429, 409, 404, 413, 422}
    ids = sorted(r.id for r in setup.datasets.ensure(2).records)
    assert ids == sorted(t.task_id for t in tasks)  # every good task once: none lost, none doubled
    assert [RankingTask.model_validate_json(r.value).task_id for r in dead] == [bad.task_id]
    assert "422" in dict((k, v.decode()) for k, v in dead[0].headers)["dlq.reason"]
    for status in ("401", "429", "409", "404"):
        assert setup.metric("rlhf_annotation_push_errors_total", status=status, action="retry") >= 1
    assert setup.metric("rlhf_annotation_push_errors_total", status="413", action="split") >= 1
    assert setup.metric("rlhf_annotation_push_errors_total", status="422", action="dead_letter") == 1


def test_batched_push_writes_one_record_per_task_in_one_request_per_batch(
    argilla: EmbeddedArgilla, dataset_prefix: str,  # noqa: F811
    make_setup: Callable[..., Setup], make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: Callable[..., object], kafka: KafkaSettings,
) -> None:
    setup = make_setup(options(dataset_prefix))
    tasks_topic = make_topic(RankingTask)
    tasks = [make_task(f"batch-{dataset_prefix}-{i}", [1, 2]) for i in range(12)]
    for task in [*tasks, tasks[0], tasks[3]]:  # two redelivered inside the same batch
        producer.send(tasks_topic, task)
    producer.flush()
    pusher = Pusher(setup.datasets, setup.rest, "v1", setup.metrics, batched=True)
    start_loop([tasks_topic], group_id, pusher, sink=pusher, max_poll_records=20)
    assert wait_for(lambda: committed_offsets(kafka, group_id, tasks_topic.name) == {0: 14}, timeout_s=60)
    ids = sorted(r.id for r in setup.datasets.ensure(2).records)
    assert ids == sorted(t.task_id for t in tasks)


# --- reward-model suggestions ---------------------------------------------------------

def test_the_promoted_reward_model_ranking_is_shown_as_a_suggestion(
    argilla: EmbeddedArgilla, argilla_client: rg.Argilla, dataset_prefix: str,  # noqa: F811
    make_setup: Callable[..., Setup], tmp_path: Path,
) -> None:
    """A real head-format reward model in a registry; the record Argilla stores carries
    its ranking (scores in 0..1, the version as agent), and nothing before promotion."""
    import json as json_module

    import httpx
    import torch

    from services.annotation.schema import RANK_QUESTION
    from services.annotation.suggestions import RankingSuggester
    from services.trainer.tiny_models import build_tiny_policy
    from shared.models.reward import RewardModel
    from shared.models.reward_scorer import RewardScorer, registry_locator

    setup = make_setup(options(dataset_prefix))
    registry = tmp_path / "registry"
    scorer = RewardScorer(registry_locator(registry), refresh_s=0)
    suggest = RankingSuggester(scorer, lambda k: str(setup.datasets.ensure(k).settings.questions[RANK_QUESTION].id))
    early = make_task(f"unpromoted-{dataset_prefix}", [1, 2, 3])
    assert suggest(early) is None  # no reward model promoted yet: no suggestion

    backbone = RewardModel.frozen_backbone(build_tiny_policy(tmp_path / "base"))
    torch.manual_seed(0)
    backbone.save_head(registry / "reward" / "rm-v0001", torch.randn(backbone.head.hidden_size))  # type: ignore[union-attr]
    (registry / "reward" / "rm-v0001" / "manifest.json").write_text("{}")
    (registry / "reward" / "promoted.json").write_text(json_module.dumps({"version": "rm-v0001"}))
    pusher = Pusher(setup.datasets, setup.rest, "v1", setup.metrics, suggest=suggest)
    task = make_task(f"suggested-{dataset_prefix}", [1, 2, 3])
    pusher.push(task)

    expected = scorer.rewards([{"role": "user", "content": task.prompt[0].content}], [c.text for c in task.candidates])
    assert expected is not None
    # read back over REST: the SDK's reader drops the rank numbers (see argilla_api.py)
    server_id = next(r._server_id for r in setup.datasets.ensure(3).records if r.id == task.task_id)
    stored = httpx.get(f"{argilla.url}/api/v1/records/{server_id}/suggestions",
                       headers={"X-Argilla-Api-Key": argilla.api_key}, timeout=15).raise_for_status().json()["items"]
    assert len(stored) == 1
    suggestion = stored[0]
    ranks = {v["value"]: v["rank"] for v in suggestion["value"]}
    best_first = sorted(range(3), key=lambda i: -expected[i])
    assert sorted(ranks, key=ranks.__getitem__) == [f"answer_{i + 1}" for i in best_first]  # the model's order
    assert suggestion["agent"] == "rm-v0001" and suggestion["type"] == "model"
    assert all(0 <= s <= 1 for s in suggestion["score"]) and abs(sum(suggestion["score"]) - 1) < 1e-4
