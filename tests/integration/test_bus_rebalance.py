"""A consumer-group rebalance in the middle of processing, against the embedded broker.

Two ConsumerLoops share one group; the second joins while the first is working
through a slow batch. At-least-once allows a record to be handled twice only when
its first handling had not been committed yet; these tests assert the stronger
thing the loop promises: nothing is lost, and no record is handled again once its
offset was committed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Self

import pytest
from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError
from kafka.structs import TopicPartition

from shared.bus import DependencyUnavailable, EventProducer, Outgoing
from shared.contracts import Event, ModelOutput
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests import factories
from tests.conftest import LoopThread, committed_offsets, wait_for

pytestmark = pytest.mark.integration
log = logging.getLogger(__name__)

StartLoop = Callable[..., LoopThread]
PARTITIONS = 4


@dataclass(frozen=True)
class Handling:
    who: str
    partition: int
    offset: int
    output_id: str
    at: float  # monotonic, when the handler started on it


class CommitWatch:
    """Samples the group's committed offsets on a thread, from a client that never
    joins the group: a timeline of (time, {partition: committed offset})."""

    def __init__(self, kafka: KafkaSettings, group: str, topic: str, partitions: int) -> None:
        self._consumer = KafkaConsumer(**kafka.client_kwargs(), group_id=group, enable_auto_commit=False)
        self._tps = [TopicPartition(topic, p) for p in range(partitions)]
        self.samples: list[tuple[float, dict[int, int]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            before = time.monotonic()
            try:
                offsets = {tp.partition: self._consumer.committed(tp) or 0 for tp in self._tps}
            except Exception:  # noqa: BLE001 - a missed sample only weakens the check
                log.debug("committed offsets not read", exc_info=True)
                continue
            self.samples.append((before, offsets))  # read no earlier than `before`
            self._stop.wait(0.02)

    def latest(self) -> dict[int, int]:
        return self.samples[-1][1] if self.samples else {}

    def committed_before(self, at: float, partition: int) -> int:
        """The highest offset seen committed for `partition` by a read that started
        before `at` (commits never need to be undone, so the highest is what counts)."""
        return max((s[partition] for t, s in self.samples if t < at), default=0)


def slow_recorder(who: str, log: list[Handling], delay_s: float) -> Callable[[Event, ConsumerRecord], Iterable[Outgoing]]:
    def handle(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        log.append(Handling(who, record.partition, record.offset, event.output_id, time.monotonic()))
        time.sleep(delay_s)
        return ()

    return handle


def test_a_rebalance_mid_batch_loses_nothing_and_repeats_nothing_committed(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source = make_topic(ModelOutput, partitions=PARTITIONS)
    events = [factories.model_output(f"rb-{i}") for i in range(80)]
    for event in events:
        producer.send(source, event)
    producer.flush()
    log: list[Handling] = []

    with CommitWatch(kafka, group_id, source.name, PARTITIONS) as watch:
        a = start_loop([source], group_id, slow_recorder("a", log, 0.05))
        assert wait_for(lambda: len(log) >= 10), "consumer A never started"
        joined_at = time.monotonic()
        b = start_loop([source], group_id, slow_recorder("b", log, 0.05))
        assert wait_for(lambda: sum(watch.latest().values()) == len(events), timeout_s=60), (
            f"not all committed: {watch.latest()}")
        done_at = time.monotonic()
        a.join()
        b.join()
    assert a.error is None and b.error is None

    # Nothing lost: every event handled.
    assert {h.output_id for h in log} == {e.output_id for e in events}
    # Both consumers worked (the rebalance really split the partitions).
    assert {h.who for h in log if h.at > joined_at} == {"a", "b"}, "B never got partitions"
    # Nothing committed is handled again.
    repeats = [h for h in log if watch.committed_before(h.at, h.partition) > h.offset]
    assert repeats == [], f"{len(repeats)} records handled after their offset was committed: {repeats[:5]}"
    # And at-least-once left no duplicates at all here: A finished and committed what it
    # had started before giving its partitions up.
    seen: dict[str, list[Handling]] = {}
    for h in log:
        seen.setdefault(h.output_id, []).append(h)
    duplicates = {k: v for k, v in seen.items() if len(v) > 1}
    assert not duplicates, f"{len(duplicates)} handled twice: {list(duplicates.values())[:3]}"
    print(f"rebalance test: {len(log)} handlings, all committed {done_at - joined_at:.1f}s after B started")


def first_offsets(log: list[Handling], who: str) -> dict[int, int]:
    firsts: dict[int, int] = {}
    for h in log:
        if h.who == who:
            firsts.setdefault(h.partition, h.offset)
    return firsts


def test_the_handover_is_exact_b_starts_where_a_stopped(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    """What the listener and the rebalance-aware batch guarantee, seen from B: on every
    partition B takes from A it starts at exactly the record after A's last finished
    one (A committed all it finished before letting go, and handed on everything it
    had not started), and it takes over within seconds, not after A's whole batch."""
    source = make_topic(ModelOutput, partitions=PARTITIONS)
    events = [factories.model_output(f"hand-{i}") for i in range(120)]
    for event in events:
        producer.send(source, event)
    producer.flush()
    log: list[Handling] = []
    a = start_loop([source], group_id, slow_recorder("a", log, 0.05))
    assert wait_for(lambda: len(log) >= 10), "consumer A never started"
    joined_at = time.monotonic()
    b = start_loop([source], group_id, slow_recorder("b", log, 0.05))
    assert wait_for(lambda: any(h.who == "b" for h in log), timeout_s=30), "B never got partitions"
    took_over_s = next(h.at for h in log if h.who == "b") - joined_at
    assert wait_for(lambda: {h.output_id for h in log} == {e.output_id for e in events}, timeout_s=60)
    a.join()
    b.join()
    a_before = [h for h in log if h.who == "a" and h.at < joined_at + took_over_s]
    last_of_a = {p: max(h.offset for h in a_before if h.partition == p) for p in {h.partition for h in a_before}}
    for partition, offset in first_offsets(log, "b").items():
        assert offset == last_of_a.get(partition, -1) + 1, (
            f"partition {partition}: B started at {offset}, A had finished up to {last_of_a.get(partition)}")
    # A batch of 120 slow records is 6 s; A lets go after the record in hand, and
    # the join itself takes Tansu about a second.
    assert took_over_s < 5.0, f"B took over only {took_over_s:.1f}s after joining"
    assert len(log) == len(events), "a record was handled twice"
    print(f"handover: B handled its first record {took_over_s:.1f}s after it started")


def test_finished_work_whose_commit_was_refused_is_committed_at_revoke(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    """A's own commits are refused (as a broker refuses them while the group is
    rebalancing: fault injected at the consumer's commit, like wrap_producer does for
    the producer): the listener still commits what A finished when its partitions
    are revoked, so B repeats none of it."""
    source = make_topic(ModelOutput, partitions=2)
    events = [factories.model_output(f"refused-{i}") for i in range(60)]
    for event in events:
        producer.send(source, event)
    producer.flush()
    log: list[Handling] = []
    patched = threading.Event()
    record_slowly = slow_recorder("a", log, 0.05)

    def a_handler(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert patched.wait(10)
        return record_slowly(event, record)

    # Small batches: A rejoins within half a second, with or without the loop's
    # rebalance-aware batch, so what this test sees is the listener's doing.
    a = start_loop([source], group_id, a_handler, max_poll_records=10)
    refused: list[dict[TopicPartition, object]] = []

    def refuse(offsets: dict[TopicPartition, object], timeout_ms: int | None = None) -> None:
        refused.append(dict(offsets))
        raise CommitFailedError("injected: commit refused during a rebalance")

    a.loop._consumer.commit = refuse  # type: ignore[method-assign]
    patched.set()
    assert wait_for(lambda: len(log) >= 5), "consumer A never started"
    joined_at = time.monotonic()
    b = start_loop([source], group_id, slow_recorder("b", log, 0.05), max_poll_records=10)
    assert wait_for(lambda: {h.output_id for h in log} == {e.output_id for e in events}, timeout_s=60)
    b.join()
    a.join()  # A's close revokes too: the listener commits its last finished work
    assert refused, "the fault was not injected"
    assert any(h.who == "b" and h.at > joined_at for h in log), "B never got partitions"
    seen = [h.output_id for h in log]
    assert len(seen) == len(set(seen)) == len(events), (
        f"{len(seen) - len(set(seen))} records handled twice")
    assert committed_offsets(kafka, group_id, source.name, 2) == {
        p: sum(1 for h in log if h.partition == p) for p in range(2)}
    assert a.loop.rebalance_listener.revocations >= 1


def test_a_dependency_outage_pauses_only_its_partition(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    """Partition 0's dependency is down for 5 s (2 s backoffs); partition 1's records
    are handled as they arrive instead of waiting out partition 0's backoff."""
    source = make_topic(ModelOutput, partitions=2)
    outage_until = [float("inf")]
    handled_at: dict[str, tuple[int, float]] = {}

    def handler(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        if record.partition == 0 and time.monotonic() < outage_until[0]:
            raise DependencyUnavailable("partition 0's store: connection refused")
        handled_at.setdefault(event.output_id, (record.partition, time.monotonic()))
        return ()

    runner = start_loop([source], group_id, handler, backoff_initial_s=2.0, backoff_max_s=2.0)
    warmup = factories.model_output("outage-warmup")
    producer.send(source, warmup).get(timeout=10)
    assert wait_for(lambda: warmup.output_id in handled_at, timeout_s=20)
    outage_until[0] = time.monotonic() + 5.0
    sent_at: dict[str, float] = {}
    for i in range(16):
        event = factories.model_output(f"outage-{i}")
        producer.send(source, event).get(timeout=10)
        sent_at[event.output_id] = time.monotonic()
        time.sleep(0.25)
    assert wait_for(lambda: set(sent_at) <= set(handled_at), timeout_s=30)
    total = len(sent_at) + 1
    assert wait_for(lambda: sum(v or 0 for v in committed_offsets(kafka, group_id, source.name, 2).values())
                    == total, timeout_s=20)
    runner.join()
    on_1 = {k: handled_at[k][1] - sent_at[k] for k in sent_at if handled_at[k][0] == 1}
    on_0 = [k for k in sent_at if handled_at[k][0] == 0]
    assert on_1 and on_0, "the events did not spread over both partitions"
    assert all(handled_at[k][1] >= outage_until[0] for k in on_0)
    slow = {k: round(v, 2) for k, v in on_1.items() if v > 1.0}
    assert not slow, f"partition 1 waited out partition 0's backoff: {slow}"
    assert runner.metric("rlhf_messages_dead_lettered_total", topic=source.name, group=group_id,
                         reason="retries_exhausted") == 0
