"""The sampler service end to end on the real broker: outputs in, ranking tasks out."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from services.runner import run_consumer_service
from services.sampler.service import build_sampler, build_spec
from services.sampler.settings import SamplerSettings
from shared.bus import EventProducer
from shared.contracts import RankingTask, UserFeedback
from shared.embedded.broker import EmbeddedBroker
from shared.topics import OUTPUTS, RANKING_TASKS, dead_letter_topic
from tests import factories
from tests.conftest import FAST_GROUP, read_topic, wait_for

pytestmark = pytest.mark.integration


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
        registry = CollectorRegistry()
        sampler = build_sampler(settings, registry)
        stop = threading.Event()
        thread = threading.Thread(target=run_consumer_service,
                                  args=(build_spec(settings, sampler), settings, stop),
                                  kwargs={"registry": registry})
        thread.start()
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
