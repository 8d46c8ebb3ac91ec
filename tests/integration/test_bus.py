"""The bus against a real embedded Tansu broker."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable

import pytest
from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import DependencyUnavailable, EventProducer, Outgoing, PoisonMessage
from shared.bus.dead_letter import header_map
from shared.contracts import Event, ModelOutput, RankingTask
from shared.settings import KafkaSettings
from shared.topics import Topic, dead_letter_topic
from tests import factories
from tests.conftest import LoopThread, committed_offsets, read_topic, wait_for

pytestmark = pytest.mark.integration

StartLoop = Callable[..., LoopThread]


def outputs(n: int, prefix: str = "r") -> list[ModelOutput]:
    return [factories.model_output(f"{prefix}-{i}") for i in range(n)]


def test_produce_consume_round_trip_forwards_and_commits(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source, sink = make_topic(ModelOutput, partitions=3), make_topic(RankingTask)
    sent = outputs(20)
    for event in sent:
        producer.send(source, event)
    producer.flush()
    seen: list[str] = []

    def to_task(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        seen.append(event.output_id)
        return [Outgoing(sink, factories.ranking_task(event))]

    runner = start_loop([source], group_id, to_task)
    tasks = read_topic(kafka, sink.name, expected=20)
    assert wait_for(lambda: sum(v or 0 for v in committed_offsets(kafka, group_id, source.name, 3).values()) == 20)
    runner.join()
    assert sorted(seen) == sorted(e.output_id for e in sent)
    assert sorted(RankingTask.model_validate_json(r.value).output_id for r in tasks) == sorted(seen)
    assert runner.metric("rlhf_messages_consumed_total", topic=source.name, group=group_id) == 20
    assert runner.metric("rlhf_messages_produced_total", topic=sink.name) == 20
    assert runner.metric("rlhf_handler_duration_seconds_count", topic=source.name, group=group_id) == 20


def test_an_outgoing_event_with_its_encoding_is_sent_as_those_bytes(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    """`Outgoing.encoded` (the sampler's stored task JSON) goes out verbatim, keyed like
    the event; without it the event is serialised as always."""
    source, sink = make_topic(ModelOutput), make_topic(RankingTask)
    producer.send(source, factories.model_output("given"))
    producer.send(source, factories.model_output("plain"))
    producer.flush()

    def to_task(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        task = factories.ranking_task(event)
        if event.output_id != factories.model_output("given").output_id:
            return [Outgoing(sink, task)]
        # a valid encoding that is not what serialising the task would give
        return [Outgoing(sink, task, encoded=json.dumps(task.model_dump(mode="json"), indent=1).encode())]

    runner = start_loop([source], group_id, to_task)
    records = read_topic(kafka, sink.name, expected=2)
    runner.join()
    by_output = {RankingTask.model_validate_json(r.value).output_id: r for r in records}
    given, plain = by_output[factories.model_output("given").output_id], by_output[factories.model_output("plain").output_id]
    given_task = factories.ranking_task(factories.model_output("given"))
    assert given.value == json.dumps(RankingTask.model_validate_json(given.value).model_dump(mode="json"),
                                     indent=1).encode()
    assert given.key == given_task.partition_key.encode()
    assert plain.value == RankingTask.model_validate_json(plain.value).to_json_bytes()


def test_failing_handler_is_retried_and_not_committed_until_it_succeeds(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source = make_topic(ModelOutput)
    producer.send(source, factories.model_output("flaky"))
    producer.flush()
    attempts: list[dict[int, int | None]] = []

    def flaky(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        # what the group has committed while this attempt runs
        attempts.append(committed_offsets(kafka, group_id, source.name))
        if len(attempts) < 3:
            raise RuntimeError("transient glitch")
        return ()

    runner = start_loop([source], group_id, flaky, max_attempts=5)
    assert wait_for(lambda: committed_offsets(kafka, group_id, source.name) == {0: 1})
    runner.join()
    assert len(attempts) == 3
    assert all(seen == {0: None} for seen in attempts), attempts
    assert runner.metric("rlhf_messages_failed_total", topic=source.name, group=group_id, reason="error") == 2
    assert runner.metric("rlhf_messages_dead_lettered_total", topic=source.name, group=group_id,
                         reason="retries_exhausted") == 0


def test_poison_goes_to_dead_letters_with_reason_and_the_loop_goes_on(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source = make_topic(ModelOutput)
    good_before, good_after = factories.model_output("before"), factories.model_output("after")
    producer.send(source, good_before)
    producer.send_raw(source.name, b"k1", b"{not json")
    producer.send_raw(source.name, b"k2", b'{"event_id": "e", "schema_version": 1}')
    producer.send(source, factories.model_output("handler-refuses"))
    producer.send(source, good_after)
    producer.flush()
    handled: list[str] = []

    def handler(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        if event.client_request_id == "handler-refuses":
            raise PoisonMessage("conversation: too long for annotators")
        handled.append(event.client_request_id or "")
        return ()

    runner = start_loop([source], group_id, handler)
    dead = read_topic(kafka, dead_letter_topic(group_id), expected=3)
    assert wait_for(lambda: committed_offsets(kafka, group_id, source.name) == {0: 5})
    runner.join()
    assert handled == ["before", "after"]
    assert [r.value for r in dead[:2]] == [b"{not json", b'{"event_id": "e", "schema_version": 1}']
    reasons = [header_map(r.headers) for r in dead]
    assert "Invalid JSON" in reasons[0]["dlq.reason"]
    assert "output_id: Field required" in reasons[1]["dlq.reason"]
    assert reasons[2]["dlq.reason"] == "conversation: too long for annotators"
    assert [h["dlq.origin.offset"] for h in reasons] == ["1", "2", "3"]
    assert all(h["dlq.origin.topic"] == source.name and h["dlq.kind"] == "poison" for h in reasons)
    assert dead[0].key == b"k1"
    assert runner.metric("rlhf_messages_dead_lettered_total", topic=source.name, group=group_id,
                         reason="poison") == 3


def test_a_message_that_keeps_failing_is_dead_lettered_after_max_attempts(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source = make_topic(ModelOutput)
    producer.send(source, factories.model_output("always-fails"))
    producer.send(source, factories.model_output("fine"))
    producer.flush()
    calls: list[str] = []

    def handler(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        calls.append(event.client_request_id or "")
        if event.client_request_id == "always-fails":
            raise ValueError("bug in handler")
        return ()

    runner = start_loop([source], group_id, handler, max_attempts=3)
    dead = read_topic(kafka, dead_letter_topic(group_id), expected=1)
    assert wait_for(lambda: committed_offsets(kafka, group_id, source.name) == {0: 2})
    runner.join()
    assert calls == ["always-fails"] * 3 + ["fine"]
    headers = header_map(dead[0].headers)
    assert headers["dlq.kind"] == "retries_exhausted"
    assert headers["dlq.attempts"] == "3"
    assert headers["dlq.error_type"] == "ValueError"
    assert "bug in handler" in headers["dlq.reason"]


def test_dependency_outage_is_retried_without_dead_letter_or_commit(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source = make_topic(ModelOutput)
    producer.send(source, factories.model_output("needs-argilla"))
    producer.flush()
    outage_left = [6]  # more than max_attempts: an outage is never dead-lettered
    committed_during_outage: list[dict[int, int | None]] = []

    def handler(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        if outage_left[0] > 0:
            outage_left[0] -= 1
            committed_during_outage.append(committed_offsets(kafka, group_id, source.name))
            raise DependencyUnavailable("argilla: connection refused")
        return ()

    runner = start_loop([source], group_id, handler, max_attempts=2)
    assert wait_for(lambda: committed_offsets(kafka, group_id, source.name) == {0: 1})
    runner.join()
    assert all(seen == {0: None} for seen in committed_during_outage)
    assert runner.metric("rlhf_messages_failed_total", topic=source.name, group=group_id,
                         reason="dependency_unavailable") == 6
    assert runner.metric("rlhf_messages_dead_lettered_total", topic=source.name, group=group_id,
                         reason="retries_exhausted") == 0
    assert runner.metric("rlhf_messages_consumed_total", topic=source.name, group=group_id) == 1


class Crash(BaseException):
    """Stands for the process dying (OOM kill, node loss): nothing in the loop catches it."""


def test_restart_after_a_crash_resumes_from_the_last_commit_without_loss(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source = make_topic(ModelOutput)
    first = outputs(5, "first")
    for event in first:
        producer.send(source, event)
    producer.flush()
    before_crash: list[str] = []

    def crash_on_second_wave(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        if (event.client_request_id or "").startswith("second"):
            raise Crash()
        before_crash.append(event.output_id)
        return ()

    crashed = start_loop([source], group_id, crash_on_second_wave)
    assert wait_for(lambda: committed_offsets(kafka, group_id, source.name) == {0: 5})
    second = outputs(5, "second")
    for event in second:
        producer.send(source, event)
    producer.flush()
    assert wait_for(lambda: not crashed.thread.is_alive())
    assert isinstance(crashed.error, Crash)
    crashed.producer.close()
    assert committed_offsets(kafka, group_id, source.name) == {0: 5}

    after_restart: list[str] = []

    def record_all(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        after_restart.append(event.output_id)
        return ()

    restarted = start_loop([source], group_id, record_all)
    assert wait_for(lambda: committed_offsets(kafka, group_id, source.name) == {0: 10})
    restarted.join()
    assert before_crash == [e.output_id for e in first]
    assert after_restart == [e.output_id for e in second]


def test_stop_during_a_batch_commits_finished_work_and_leaves_the_rest(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source = make_topic(ModelOutput)
    events = outputs(10, "batch")
    for event in events:
        producer.send(source, event)
    producer.flush()
    handled: list[str] = []
    runner_box: list[LoopThread] = []
    ready = threading.Event()

    def stop_after_three(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        ready.wait(10)
        assert isinstance(event, ModelOutput)
        handled.append(event.output_id)
        if len(handled) == 3:
            runner_box[0].stop.set()  # what SIGTERM does, mid-batch
        return ()

    runner = start_loop([source], group_id, stop_after_three)
    runner_box.append(runner)
    ready.set()
    runner.thread.join(30)
    assert not runner.thread.is_alive() and runner.error is None
    runner.producer.close()
    assert handled == [e.output_id for e in events[:3]]
    assert committed_offsets(kafka, group_id, source.name) == {0: 3}

    rest: list[str] = []
    resumed = start_loop([source], group_id, lambda e, r: rest.append(e.event_id) or ())
    assert wait_for(lambda: committed_offsets(kafka, group_id, source.name) == {0: 10})
    resumed.join()
    assert rest == [e.output_id for e in events[3:]]


class WindowTicker:
    """Emits one task per output it was given, once, and remembers what was delivered."""

    def __init__(self, sink: Topic) -> None:
        self.sink = sink
        self.waiting: list[ModelOutput] = []
        self.delivered_ids: list[str] = []
        self.offers = 0

    def due(self) -> list[Outgoing]:
        if self.waiting:
            self.offers += 1
        return [Outgoing(self.sink, factories.ranking_task(o)) for o in self.waiting]

    def delivered(self, outgoing: list[Outgoing]) -> None:
        self.delivered_ids += [o.event.event_id for o in outgoing]
        self.waiting = []


def test_ticker_output_is_produced_between_batches_and_confirmed_after_ack(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source, sink = make_topic(ModelOutput), make_topic(RankingTask)
    ticker = WindowTicker(sink)

    def hold(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        ticker.waiting.append(event)  # produced later, by the ticker
        return ()

    runner = start_loop([source], group_id, hold, ticker=ticker)
    held = outputs(3, "tick")
    for event in held:
        producer.send(source, event)
    producer.flush()
    tasks = read_topic(kafka, sink.name, expected=3)
    assert wait_for(lambda: len(ticker.delivered_ids) == 3)
    runner.join()
    assert sorted(RankingTask.model_validate_json(r.value).output_id for r in tasks) == sorted(
        e.output_id for e in held)
    assert len(tasks) == 3


class CollectingSink:
    """Holds the batch's events and writes them at flush, failing `failures` times
    first with an error that is neither poison nor an outage (a bug, an unexpected
    answer)."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.held: list[str] = []
        self.written: list[str] = []

    def __call__(self, event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        self.held.append(event.output_id)
        return ()

    def flush(self) -> list[tuple[ConsumerRecord, str]]:
        held, self.held = self.held, []
        if self.failures > 0:
            self.failures -= 1
            raise RuntimeError("unexpected answer from the sink's dependency")
        self.written += held
        return []


def test_a_sink_error_redelivers_the_batch_and_the_loop_keeps_running(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source = make_topic(ModelOutput)
    sink = CollectingSink(failures=2)
    events = outputs(4, "sink-flaky")
    for event in events:
        producer.send(source, event)
    producer.flush()
    runner = start_loop([source], group_id, sink, sink=sink, max_attempts=3)
    assert wait_for(lambda: committed_offsets(kafka, group_id, source.name) == {0: 4})
    runner.join()
    assert runner.error is None
    assert sorted(set(sink.written)) == sorted(e.output_id for e in events)
    assert runner.metric("rlhf_messages_failed_total", topic=source.name, group=group_id, reason="error") == 2
    assert runner.metric("rlhf_messages_dead_lettered_total", topic=source.name, group=group_id,
                         reason="retries_exhausted") == 0


def test_a_sink_that_keeps_failing_dead_letters_its_batch_and_goes_on(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source = make_topic(ModelOutput)
    sink = CollectingSink(failures=3)
    first, later = outputs(2, "sink-broken"), outputs(2, "sink-after")
    for event in first:
        producer.send(source, event)
    producer.flush()
    runner = start_loop([source], group_id, sink, sink=sink, max_attempts=3)
    dead = read_topic(kafka, dead_letter_topic(group_id), expected=2)
    for event in later:
        producer.send(source, event)
    producer.flush()
    assert wait_for(lambda: committed_offsets(kafka, group_id, source.name) == {0: 4})
    runner.join()
    assert runner.error is None
    assert sorted(ModelOutput.model_validate_json(r.value).output_id for r in dead) == sorted(
        e.output_id for e in first)
    headers = header_map(dead[0].headers)
    assert headers["dlq.kind"] == "retries_exhausted"
    assert "unexpected answer" in headers["dlq.reason"]
    assert headers["dlq.error_type"] == "RuntimeError"  # what the sink raised, not a generic poison
    assert sink.written == [e.output_id for e in later]


def test_slow_handlers_end_the_batch_in_time_so_the_member_is_never_dropped_from_its_group(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    """Eight records at 1 s each are one 8 s batch; with max_poll_interval at 4 s the
    member would be dropped from its group mid-batch, its commit refused and the batch
    redone. The loop ends a batch after half the poll interval instead."""
    source = make_topic(ModelOutput)
    events = outputs(8, "slow-handler")
    for event in events:
        producer.send(source, event)
    producer.flush()
    handled: list[str] = []

    def slow(event: Event, _record: ConsumerRecord) -> list[Outgoing]:
        handled.append(event.output_id)  # type: ignore[attr-defined]
        time.sleep(1.0)
        return []

    runner = start_loop([source], group_id, slow, kafka_options={"max_poll_interval_ms": 4000})
    assert wait_for(lambda: committed_offsets(kafka, group_id, source.name) == {0: 8}, timeout_s=60)
    runner.join()
    assert runner.error is None
    assert handled == [e.output_id for e in events]  # each once, in order: never redone


class RaisingTicker(WindowTicker):
    def __init__(self, sink: Topic, failures: int) -> None:
        super().__init__(sink)
        self.failures = failures

    def due(self) -> list[Outgoing]:
        if self.waiting and self.failures > 0:
            self.failures -= 1
            raise OSError("database is locked")
        return super().due()


def test_a_ticker_that_raises_is_asked_again_and_the_loop_keeps_running(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source, sink = make_topic(ModelOutput), make_topic(RankingTask)
    ticker = RaisingTicker(sink, failures=2)

    def hold(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        ticker.waiting.append(event)
        return ()

    runner = start_loop([source], group_id, hold, ticker=ticker)
    held = outputs(2, "tick-raises")
    for event in held:
        producer.send(source, event)
    producer.flush()
    assert wait_for(lambda: len(ticker.delivered_ids) == 2)
    runner.join()
    assert runner.error is None
    assert runner.metric("rlhf_messages_failed_total", topic="-", group=group_id, reason="ticker_error") == 2


class DeadLetterFailsOnce:
    """The real producer, except that the first dead-letter send fails as a broker
    timeout would (a test double for the failure only: Tansu cannot be told to refuse
    one topic)."""

    def __init__(self, real: EventProducer) -> None:
        self.real, self.failed = real, False

    def __getattr__(self, name: str) -> object:
        return getattr(self.real, name)

    def send_raw(self, *args: object, **kwargs: object) -> object:
        if not self.failed:
            self.failed = True
            from kafka.errors import KafkaTimeoutError

            raise KafkaTimeoutError("dead-letter topic not acknowledged")
        return self.real.send_raw(*args, **kwargs)  # type: ignore[arg-type]


def test_a_dead_letter_that_cannot_be_stored_redelivers_its_record(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str,
    producer: EventProducer, start_loop: StartLoop,
) -> None:
    source = make_topic(ModelOutput)
    producer.send_raw(source.name, None, b"{not json")
    producer.send(source, factories.model_output("after-poison"))
    producer.flush()
    handled: list[str] = []

    def handler(event: Event, record: ConsumerRecord) -> Iterable[Outgoing]:
        assert isinstance(event, ModelOutput)
        handled.append(event.client_request_id or "")
        return ()

    runner = start_loop([source], group_id, handler, wrap_producer=DeadLetterFailsOnce)
    dead = read_topic(kafka, dead_letter_topic(group_id), expected=1)
    assert wait_for(lambda: committed_offsets(kafka, group_id, source.name) == {0: 2})
    runner.join()
    assert runner.error is None
    assert [r.value for r in dead] == [b"{not json"]
    assert handled == ["after-poison"]
    assert runner.metric("rlhf_messages_failed_total", topic=source.name, group=group_id,
                         reason="dead_letter_failed") == 1
