"""The sampler service end to end on the real broker: outputs in, ranking tasks out."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.sampler.service import run_service
from services.sampler.settings import SamplerSettings
from shared.bus import EventProducer
from shared.contracts import (
    Preference,
    RankingTask,
    UserFeedback,
    feedback_preference_id_for,
)
from shared.embedded.broker import EmbeddedBroker
from shared.topics import OUTPUTS, PREFERENCES, RANKING_TASKS, dead_letter_topic
from tests import factories
from tests.conftest import FAST_GROUP, read_topic, wait_for

pytestmark = pytest.mark.integration


def running_sampler(settings: SamplerSettings, stop: threading.Event, registry: CollectorRegistry) -> threading.Thread:
    """The sampler service as `main` runs it, on a thread, until `stop`."""
    thread = threading.Thread(target=run_service, args=(settings, stop), kwargs={"registry": registry})
    thread.start()
    return thread


def test_outputs_in_tasks_out_with_rule_metadata_and_dead_letters(tmp_path: Path) -> None:
    with EmbeddedBroker(log_file=tmp_path / "tansu.log") as broker:
        kafka = broker.kafka_settings(**FAST_GROUP)
        settings = SamplerSettings(
            kafka=kafka, http={"host": "127.0.0.1", "port": 0}, data_dir=str(tmp_path),
            sampler={"rules": [
                {"name": "neg", "strategy": "feedback", "filter": {"feedback_any": ["thumbs_down"]}},
                {"name": "none-else", "strategy": "uniform", "rate": 0.0},
            ]},
        )
        registry, stop = CollectorRegistry(), threading.Event()
        thread = running_sampler(settings, stop, registry)
        producer = EventProducer(kafka)
        sad = [factories.model_output(f"sad-{i}").model_copy(update={"feedback": [UserFeedback(kind="thumbs_down")]})
               for i in range(3)]
        happy = [factories.model_output(f"happy-{i}") for i in range(5)]
        for event in [*sad, *happy, sad[0]]:  # sad[0] redelivered
            producer.send(OUTPUTS, event)
        producer.send_raw(OUTPUTS.name, b"k", b'{"event_id": "bad"}')
        producer.flush()
        records = read_topic(kafka, RANKING_TASKS.name, expected=4)
        dead = read_topic(kafka, dead_letter_topic("sampler"), expected=1)
        assert wait_for(lambda: registry.get_sample_value(
            "rlhf_messages_consumed_total", {"topic": OUTPUTS.name, "group": "sampler"}) == 10)
        stop.set()
        thread.join(30)
        producer.close()
    tasks = [RankingTask.model_validate_json(r.value) for r in records]
    assert {t.output_id for t in tasks} == {o.output_id for o in sad}
    assert len({t.task_id for t in tasks}) == 3  # the redelivery re-emitted the same task, not a new one
    assert all(t.sampling.rule == "neg" for t in tasks)
    assert len(dead) == 1
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "no_rule"}) == 5


def test_a_slow_completion_endpoint_does_not_get_the_sampler_dropped_from_its_group(tmp_path: Path) -> None:
    """Eight outputs each wait 1.5 s for a missing candidate: one 12 s batch, with a 5 s
    poll interval. The sampler must stay in its group (never redo finished work), and
    every output gets exactly one task, completed."""
    from tests.helpers.openai_stub import create_stub_app, serve

    with EmbeddedBroker(log_file=tmp_path / "tansu.log") as broker, \
            serve(create_stub_app(delay_s=1.5, parallel=True)) as slow:
        kafka = broker.kafka_settings(**FAST_GROUP).model_copy(update={"max_poll_interval_ms": 5000})
        settings = SamplerSettings(
            kafka=kafka, http={"host": "127.0.0.1", "port": 0}, data_dir=str(tmp_path),
            sampler={"rules": [{"name": "all", "strategy": "uniform", "rate": 1.0}], "dedupe_window_s": 0,
                     "completion": {"target_candidates": 2, "deadline_s": 3.0, "endpoints": [
                         {"name": "slow", "base_url": slow, "model": "slow", "timeout_s": 5.0}]}},
        )
        registry, stop = CollectorRegistry(), threading.Event()
        thread = running_sampler(settings, stop, registry)
        producer = EventProducer(kafka)
        outputs = [factories.model_output(f"slow-{i}", n=1) for i in range(8)]
        for event in outputs:
            producer.send(OUTPUTS, event)
        producer.flush()
        records = read_topic(kafka, RANKING_TASKS.name, expected=8, timeout_s=60)
        stop.set()
        thread.join(30)
        producer.close()
    tasks = [RankingTask.model_validate_json(r.value) for r in records]
    assert sorted(t.output_id for t in tasks) == sorted(o.output_id for o in outputs)
    assert all(len(t.candidates) == 2 for t in tasks)
    # each output's candidate was asked for once: no batch was redone after a lost membership
    assert registry.get_sample_value("rlhf_sampler_completions_total", {"endpoint": "slow", "outcome": "ok"}) == 8


def test_ab_outputs_become_comparison_tasks_and_user_edits_become_preferences(tmp_path: Path) -> None:
    """Comparisons first (quota 2, the third falls through to a rule that takes nothing),
    the same prompt every time (no dedupe); an opted-in tenant's edit becomes one
    preference on rlhf.preferences, the same one again when its output is redelivered,
    counted once; another tenant's edit becomes none."""
    with EmbeddedBroker(log_file=tmp_path / "tansu.log") as broker:
        kafka = broker.kafka_settings(**FAST_GROUP)
        settings = SamplerSettings(
            kafka=kafka, http={"host": "127.0.0.1", "port": 0}, data_dir=str(tmp_path),
            sampler={"rules": [{"name": "none-else", "strategy": "uniform", "rate": 0.0}],
                     "comparisons": {"max_per_window": 2},
                     "feedback_preferences": {"enabled_tenants": ["acme"], "edit_weight": 1.5}},
        )
        registry, stop = CollectorRegistry(), threading.Event()
        thread = running_sampler(settings, stop, registry)
        producer = EventProducer(kafka)
        # one conversation, so one partition: consumed in the order sent (which two fit the quota)
        ab = [factories.ab_output(f"ab-{i}").model_copy(update={"conversation_id": "ab-conversation"})
              for i in range(3)]
        edits = [factories.model_output(f"edit-{tenant}").model_copy(update={
            "tenant": tenant, "feedback": [UserFeedback(kind="edit", candidate_id="c0", edited_text="better")]})
            for tenant in ("acme", "globex")]
        for event in [*ab, *edits, ab[0], edits[0]]:  # ab[0] and the opted-in edit redelivered
            producer.send(OUTPUTS, event)
        producer.flush()
        records = read_topic(kafka, RANKING_TASKS.name, expected=3)
        preferences = read_topic(kafka, PREFERENCES.name, expected=2)
        assert wait_for(lambda: registry.get_sample_value(
            "rlhf_messages_consumed_total", {"topic": OUTPUTS.name, "group": "sampler"}) == 7)
        stop.set()
        thread.join(30)
        producer.close()
    tasks = [RankingTask.model_validate_json(r.value) for r in records]
    assert len(tasks) == 3 and {t.output_id for t in tasks} == {ab[0].output_id, ab[1].output_id}
    assert all(t.ab is not None and t.sampling.rule == "canary-ab" for t in tasks)
    by_output = {t.output_id: [c.candidate_id for c in t.candidates] for t in tasks}
    assert [[c.candidate_id for c in t.candidates] for t in tasks if t.output_id == ab[0].output_id] == \
        [by_output[ab[0].output_id]] * 2  # the redelivery: same task, same order
    prefs = [Preference.model_validate_json(r.value) for r in preferences]
    assert len(prefs) == 2  # the opted-in edit, once per delivery, same id
    expected = feedback_preference_id_for(edits[0].output_id, "edit", "c0-edited", "c0")
    assert {p.preference_id for p in prefs} == {expected}
    assert all(p.source == "edit" and p.weight == 1.5 and p.chosen.text == "better" for p in prefs)
    assert registry.get_sample_value("rlhf_sampler_feedback_preferences_total", {"source": "edit"}) == 1
    assert registry.get_sample_value("rlhf_sampler_tasks_total", {"rule": "canary-ab"}) == 2
    # ab[2] over the quota (not a duplicate: comparisons record no prompt hash) and the three edit deliveries
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "no_rule"}) == 4
    assert registry.get_sample_value("rlhf_sampler_rejections_total", {"reason": "duplicate"}) == 0
