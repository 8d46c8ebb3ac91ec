"""Dead-letter records: the original key, value and headers, plus why and from where,
so an operator can read the reason and replay the message to its origin."""

from __future__ import annotations

import time

from kafka.consumer.fetcher import ConsumerRecord

from .codec import MAX_REASON_CHARS

REASON = "dlq.reason"
KIND = "dlq.kind"
ERROR_TYPE = "dlq.error_type"
ORIGIN_TOPIC = "dlq.origin.topic"
ORIGIN_PARTITION = "dlq.origin.partition"
ORIGIN_OFFSET = "dlq.origin.offset"
GROUP = "dlq.group"
ATTEMPTS = "dlq.attempts"
FAILED_AT = "dlq.failed_at_ms"


def dead_letter_headers(
    record: ConsumerRecord, *, group_id: str, kind: str, reason: str, error_type: str, attempts: int
) -> list[tuple[str, bytes]]:
    ours = {
        REASON: reason[:MAX_REASON_CHARS],
        KIND: kind,
        ERROR_TYPE: error_type,
        ORIGIN_TOPIC: record.topic,
        ORIGIN_PARTITION: str(record.partition),
        ORIGIN_OFFSET: str(record.offset),
        GROUP: group_id,
        ATTEMPTS: str(attempts),
        FAILED_AT: str(int(time.time() * 1000)),
    }
    # Earlier dlq.* headers (a replayed message that failed again) are replaced, not stacked.
    kept = [(k, v) for k, v in (record.headers or []) if not k.startswith("dlq.")]
    return kept + [(k, v.encode("utf-8")) for k, v in ours.items()]


def header_map(headers: list[tuple[str, bytes]] | None) -> dict[str, str]:
    """Headers as a dict of strings, for reading a dead-letter record."""
    return {k: v.decode("utf-8", "replace") for k, v in (headers or [])}
