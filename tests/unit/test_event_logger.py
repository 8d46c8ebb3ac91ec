"""The event logger's audit line: lineage ids and what happened, for every contract."""

from __future__ import annotations

from kafka.consumer.fetcher import ConsumerRecord

from services.event_logger.handlers import summarize
from tests import factories


def record(topic: str) -> ConsumerRecord:
    return ConsumerRecord(topic=topic, partition=1, leader_epoch=0, offset=42, timestamp=0, timestamp_type=0,
                          key=None, value=b"", headers=[], checksum=None, serialized_key_size=0,
                          serialized_value_size=0, serialized_header_size=0)


def test_a_comparison_line_says_which_canary_and_who_won() -> None:
    comparison = factories.canary_comparison(outcome="stable")
    line = summarize(comparison, record("rlhf.comparisons"))
    assert line["type"] == "CanaryComparison" and line["offset"] == 42
    assert (line["task_id"], line["ranking_id"], line["output_id"]) == (
        comparison.task_id, comparison.ranking_id, comparison.output_id)
    assert (line["outcome"], line["canary_version"]) == ("stable", "policy-v0002")


def test_a_preference_line_carries_its_source() -> None:
    task = factories.ranking_task(factories.model_output(n=2))
    pref = factories.preference(factories.ranking_result(task), task).model_copy(update={"source": "edit"})
    line = summarize(pref, record("rlhf.preferences"))
    assert line["source"] == "edit" and line["preference_id"] == pref.preference_id
