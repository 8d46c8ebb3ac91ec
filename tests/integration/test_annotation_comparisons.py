"""Blind canary A/B comparisons against the real parts: embedded argilla-server, the
embedded broker, and simulated annotators judging through the UI's own endpoints.

What matters here: a comparison record names no version anywhere an annotator can
read it, a redelivered task is still one record, and a judged record becomes exactly
one CanaryComparison (plus its "comparison" preference), however often the
collector polls."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import argilla as rg
import httpx
import pytest
from prometheus_client import CollectorRegistry

from services.annotation.datasets import COMPARISON
from services.annotation.schema import COMPARISON_METADATA, dataset_name
from services.annotation.settings import AnnotationSettings
from services.demo.annotators import annotator_datasets
from services.demo.simulated_annotator import SimulatedAnnotator
from shared.bus import EventProducer
from shared.contracts import (
    ABPair,
    Candidate,
    CanaryComparison,
    ChatMessage,
    ModelRef,
    Preference,
    RankingTask,
    SamplingDecision,
    comparison_id_for,
    output_id_for,
    task_id_for,
)
from shared.embedded.argilla import EmbeddedArgilla
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.conftest import wait_for

from .argilla_fixtures import argilla, argilla_client, dataset_prefix  # noqa: F401  (fixtures)
from .test_annotation import Setup, events, make_setup, options  # noqa: F401  (fixture)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CANARY, STABLE = "policy-v0007", "policy-v0006"
MODEL = "rlhf-policy"


def ab_task(request_id: str, canary_first: bool = False) -> RankingTask:
    """A comparison task as the sampler makes one: the two answers in random order
    (here the stable one first unless `canary_first`), the versions only in `ab` and
    the candidates' model refs."""
    output_id = output_id_for(request_id)
    task_id = task_id_for(output_id)
    canary = Candidate(candidate_id="choice-0", text=f"the canary's careful answer to {request_id}.",
                       model=ModelRef(name=MODEL, version=CANARY))
    stable = Candidate(candidate_id="ab-stable", text=f"the stable, sloppier answer to {request_id}",
                       model=ModelRef(name=MODEL, version=STABLE))
    return RankingTask(
        event_id=task_id, task_id=task_id, output_id=output_id,
        prompt=[ChatMessage(role="user", content=f"question {request_id}")],
        candidates=[canary, stable] if canary_first else [stable, canary],
        sampling=SamplingDecision(rule="canary-ab", strategy="ab", score=1.0),
        app="support-bot", tags=[f"canary:{CANARY}"],
        ab=ABPair(canary_version=CANARY, stable_version=STABLE, canary_candidate_id=canary.candidate_id,
                  stable_candidate_id=stable.candidate_id),
    )


def prefers(marker: str) -> Callable[[str, list[str]], list[float]]:
    """An oracle that prefers the answer containing `marker` (the canary's text says
    "careful"); with a marker in neither, every answer scores the same (a tie)."""
    return lambda prompt, answers: [float(marker in answer) for answer in answers]


def judge(argilla: EmbeddedArgilla, index: int, marker: str) -> SimulatedAnnotator:  # noqa: F811
    user = argilla.annotators[index]
    return SimulatedAnnotator(argilla.url, user.username, user.password, prefers(marker))


def assert_blind(record: dict[str, Any]) -> None:
    """No version name anywhere in the record as Argilla returned it, and only the
    declared non-revealing metadata."""
    text = json.dumps(record)
    for version in (CANARY, STABLE, "v0007", "v0006"):
        assert version not in text, f"{version!r} is visible in the record: {text}"
    assert set(record.get("metadata") or {}) <= set(COMPARISON_METADATA)


def test_a_comparison_task_is_one_blind_record_in_the_comparison_dataset_whatever_the_redeliveries(
    argilla: EmbeddedArgilla, argilla_client: rg.Argilla, dataset_prefix: str,  # noqa: F811
    make_setup: Callable[..., Setup], make_topic: Callable[..., Topic], group_id: str,  # noqa: F811
    producer: EventProducer, start_loop: Callable[..., object], kafka: KafkaSettings,
) -> None:
    from services.annotation.pusher import Pusher

    setup = make_setup(options(dataset_prefix))
    task = ab_task(f"blind-{dataset_prefix}")
    tasks_topic = make_topic(RankingTask)
    for _ in range(3):  # the same task delivered three times
        producer.send(tasks_topic, task)
    producer.flush()
    pusher = Pusher(setup.datasets, setup.rest, "v1", setup.metrics, batched=True,  # as the service runs it
                    task_store=setup.state)
    loop = start_loop([tasks_topic], group_id, pusher, sink=pusher, max_poll_records=2)
    assert wait_for(lambda: loop.metric("rlhf_messages_consumed_total", topic=tasks_topic.name,  # type: ignore[attr-defined]
                                        group=group_id) == 3, timeout_s=60)
    setup.pusher.push(task)  # and once more, unbatched

    name = f"{dataset_prefix}-ab"
    dataset = argilla_client.datasets(name=name, workspace="rlhf")
    assert dataset is not None
    assert [r.id for r in dataset.records] == [task.task_id]  # one record, whatever the redeliveries
    assert argilla_client.datasets(name=dataset_name(dataset_prefix, 2), workspace="rlhf") is None  # not ranked
    assert "Comparison guidelines" in (dataset.settings.guidelines or "")
    assert RankingTask.model_validate_json(setup.state.task(task.task_id) or "") == task  # the task is kept here

    # what an annotator's session reads: the record, its metadata, the dataset itself
    with judge(argilla, 0, "careful") as person:
        record = person.next_pending(str(dataset.id))
        assert record is not None
        assert_blind(record)
        assert record["metadata"] == {"sampling_rule": "canary-ab", "app": "support-bot",
                                      "guideline_version": "comparison-v1"}
        assert record["fields"]["answer_1"] == task.candidates[0].text  # the task's (random) order kept
        by_id = person._http.get(f"/api/v1/records/{record['id']}",  # noqa: SLF001
                                 params={"include": ["responses", "suggestions"]})
        by_id.raise_for_status()
        assert_blind(by_id.json())
        assert_blind(person._http.get(f"/api/v1/datasets/{dataset.id}").raise_for_status().json())  # noqa: SLF001
    # nor does the owner's API see one: the versions are nowhere in Argilla
    owner = httpx.post(f"{argilla.url}/api/v1/datasets/{dataset.id}/records/search",
                       headers={"X-Argilla-Api-Key": argilla.api_key}, params={"include": "responses"},
                       json={}, timeout=15).raise_for_status().json()
    [item] = owner["items"]
    assert_blind(item["record"])


def test_a_judged_comparison_yields_one_canary_comparison_and_a_comparison_preference(
    argilla: EmbeddedArgilla, dataset_prefix: str, make_setup: Callable[..., Setup],  # noqa: F811
    kafka: KafkaSettings,
) -> None:
    setup = make_setup(options(dataset_prefix))
    task = ab_task(f"judged-{dataset_prefix}")
    setup.pusher.push(task)
    dataset_id = str(setup.datasets.ensure(COMPARISON).id)
    assert setup.collector.poll() == 0  # not judged yet
    with judge(argilla, 0, "careful") as person:  # prefers the canary's text
        assert person.annotate(dataset_id) == 1
    assert setup.collector.poll() == 1
    assert setup.collector.poll() == 0  # a re-poll (the overlap re-reads it) publishes nothing again

    [ranking] = events(kafka, setup.collector._rankings_topic, 1)
    [preference] = events(kafka, setup.collector._preferences_topic, 1)
    [comparison] = events(kafka, setup.collector._comparisons_topic, 2, timeout_s=2)  # and no second one
    assert isinstance(comparison, CanaryComparison)
    assert comparison.outcome == "canary"
    assert (comparison.canary_votes, comparison.stable_votes, comparison.tie_votes) == (1, 0, 0)
    assert (comparison.canary_version, comparison.stable_version) == (CANARY, STABLE)
    assert comparison.comparison_id == comparison_id_for(ranking.ranking_id)
    assert (comparison.task_id, comparison.output_id) == (task.task_id, task.output_id)
    assert comparison.guideline_version == "comparison-v1" == ranking.guideline_version
    assert comparison.judged_at >= ranking.annotations[0].submitted_at
    assert isinstance(preference, Preference)
    assert preference.source == "comparison" and preference.guideline_version == "comparison-v1"
    assert (preference.chosen.model.version, preference.rejected.model.version) == (CANARY, STABLE)
    assert preference.ranking_id == ranking.ranking_id and preference.revision_at == comparison.judged_at
    assert setup.metric("rlhf_annotation_comparisons_total", outcome="canary") == 1
    assert setup.registry.get_sample_value("rlhf_annotation_comparisons_total", {"outcome": "tie"}) == 0.0

    # a restarted collector on the same state finds nothing new
    from services.annotation.collector import Collector

    restarted = Collector(setup.datasets, setup.rest, setup.producer, setup.state, setup.metrics,
                          guideline_version="v1", rankings_topic=setup.collector._rankings_topic,
                          preferences_topic=setup.collector._preferences_topic,
                          comparisons_topic=setup.collector._comparisons_topic)
    assert restarted.poll() == 0
    assert len(events(kafka, setup.collector._comparisons_topic, 2, timeout_s=2)) == 1


def test_several_annotators_vote_and_an_even_split_is_a_tie_with_no_preference(
    argilla: EmbeddedArgilla, dataset_prefix: str, make_setup: Callable[..., Setup],  # noqa: F811
    kafka: KafkaSettings,
) -> None:
    """Two annotators per record: canary + tie is a canary majority (1:0); canary +
    stable is a tie (1:1), which yields no preference."""
    setup = make_setup(options(dataset_prefix, min_submitted=2))
    leaning = ab_task(f"lean-{dataset_prefix}", canary_first=True)
    split = ab_task(f"split-{dataset_prefix}")
    for task in (leaning, split):
        setup.pusher.push(task)
    dataset_id = str(setup.datasets.ensure(COMPARISON).id)
    # annotator 0 prefers the canary everywhere; annotator 1 ties `leaning`, prefers the stable on `split`
    with judge(argilla, 0, "careful") as first:
        assert first.annotate(dataset_id) == 2
    assert setup.collector.poll() == 0  # one of two annotators: not completed yet
    with judge(argilla, 1, "sloppier") as second:
        record = second.next_pending(dataset_id)
        assert record is not None
        answers = record["fields"]
        if answers["answer_1"] == leaning.candidates[0].text:  # `leaning`: judge the two answers equal
            second.submit(record["id"], [{"value": "answer_1", "rank": 1}, {"value": "answer_2", "rank": 1}])
            assert second.annotate(dataset_id) == 1  # `split`, preferring the stable answer
        else:
            second.submit(record["id"], second.ranking_for(record))
            leftover = second.next_pending(dataset_id)
            assert leftover is not None
            second.submit(leftover["id"], [{"value": "answer_1", "rank": 1}, {"value": "answer_2", "rank": 1}])
    assert setup.collector.poll() == 2
    by_task = {c.task_id: c for c in events(kafka, setup.collector._comparisons_topic, 2)}
    assert (by_task[leaning.task_id].outcome, by_task[leaning.task_id].canary_votes,
            by_task[leaning.task_id].tie_votes) == ("canary", 1, 1)
    assert (by_task[split.task_id].outcome, by_task[split.task_id].canary_votes,
            by_task[split.task_id].stable_votes) == ("tie", 1, 1)
    preferences = events(kafka, setup.collector._preferences_topic, 2, timeout_s=3)
    assert [(p.task_id, p.chosen.model.version, p.agreement) for p in preferences] == [
        (leaning.task_id, CANARY, 0.5)]
    assert setup.metric("rlhf_annotation_comparisons_total", outcome="tie") == 1
    assert setup.metric("rlhf_annotation_comparisons_total", outcome="canary") == 1


def test_the_demo_annotators_judge_the_comparison_dataset_first(
    argilla: EmbeddedArgilla, dataset_prefix: str, make_setup: Callable[..., Setup],  # noqa: F811
) -> None:
    setup = make_setup(options(dataset_prefix))
    ranking = setup.datasets.ensure(2)
    comparison = setup.datasets.ensure(COMPARISON)
    with judge(argilla, 0, "careful") as person:
        ids = annotator_datasets(person, first=comparison.name)
        assert ids[0] == str(comparison.id) and str(ranking.id) in ids
        assert annotator_datasets(person, first=ranking.name)[0] == str(ranking.id)


def test_the_service_routes_a_comparison_task_to_rlhf_comparisons(
    argilla: EmbeddedArgilla, dataset_prefix: str, kafka: KafkaSettings, tmp_path: Path,  # noqa: F811
) -> None:
    """`main` as `rlhf-loop run annotation` runs it, on the real loop topics: the task
    kept in its state, the record blind, the verdict on rlhf.comparisons."""
    from services.annotation.service import main
    from shared.topics import COMPARISONS, RANKING_TASKS

    settings = AnnotationSettings(
        kafka=kafka, data_dir=str(tmp_path), http={"host": "127.0.0.1", "port": 0},
        annotation={"argilla_url": argilla.url, "api_key": argilla.api_key, "dataset": dataset_prefix,
                    "comparison_dataset": f"{dataset_prefix}-ab", "webhooks": False, "poll_interval_s": 0.5,
                    "group_id": f"annotation-{dataset_prefix}"},
    )
    task = ab_task(f"service-{dataset_prefix}")
    stop = threading.Event()
    service = threading.Thread(target=main, args=(stop, settings, CollectorRegistry()), daemon=True)
    service.start()
    try:
        producer = EventProducer(kafka)
        producer.publish(RANKING_TASKS, task)
        producer.close()
        client = rg.Argilla(api_url=argilla.url, api_key=argilla.api_key)

        def pushed() -> str | None:
            dataset = client.datasets(name=f"{dataset_prefix}-ab", workspace="rlhf")
            return str(dataset.id) if dataset is not None and len(list(dataset.records)) == 1 else None

        assert wait_for(lambda: pushed() is not None, timeout_s=60, interval_s=0.5)
        with judge(argilla, 0, "careful") as person:
            assert person.annotate(pushed() or "") == 1

        def mine() -> list[CanaryComparison]:
            return [c for c in events(kafka, COMPARISONS, 10_000, timeout_s=1.0) if c.task_id == task.task_id]

        assert wait_for(lambda: len(mine()) == 1, timeout_s=30, interval_s=0.5)
        assert mine()[0].outcome == "canary"
    finally:
        stop.set()
        service.join(30)
    assert not service.is_alive(), "the service did not stop"
