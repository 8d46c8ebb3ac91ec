"""The consumer loop: at-least-once, commit after success, dead letters for poison.

Per polled batch, in partition order:
  decode the value into the topic's contract  -> PoisonMessage on failure
  call the handler                            -> it returns events to produce
  send those events
then flush the producer and commit the offsets of every finished record. A record
counts as finished when its handler succeeded or it was dead-lettered; nothing is
committed past a record that is still owed a retry.

Failures:
  PoisonMessage (bad JSON, contract violation, handler says so)
      -> dead-letter topic at once, with the reason in headers; the loop goes on.
  DependencyUnavailable (Argilla down, ...)
      -> seek back to the record and pause its partition for a backoff (growing per
         partition), while the other partitions go on; then resume and retry, for as
         long as it takes, never dead-lettered. Polling keeps the membership alive.
  any other exception
      -> retried in place with exponential backoff, `max_attempts` in all, then
         dead-lettered with the last error.
A BatchSink's flush runs after the batch's handlers, before the commit; an
EmittingBatchSink's events are sent right after it. The same three outcomes hold for a
BatchSink's flush (a whole batch redelivered with
backoff, `max_attempts` times for an unexpected error, then each of its records
dead-lettered) and a dead letter that cannot be stored redelivers its record. A
ticker that raises is logged and counted, and asked again at the next tick. Nothing a
dependency does ends the loop: only `stop` does.
Stop (SIGTERM): the record in hand is finished, the rest of the batch is left for
redelivery, finished work is flushed and committed, then the consumer closes.

Slow handlers: a batch whose handlers have run for half of max_poll_interval ends the
same way, so the next poll comes in time and the member is never dropped from its
group for a batch that is merely slow (a handler waiting on a model endpoint).

Rebalance (another member joins or leaves the group): once the coordinator asks this
member to rejoin, the batch ends like a stop does (the rest of it is sought back for
redelivery), finished work is flushed and committed, and the next poll rejoins at
once instead of after the whole batch. A LoopRebalanceListener (rebalance.py) then
commits, at revoke, any finished work whose commit had failed, and drops all state of
partitions no longer owned (retained offsets, pauses, outage counters), so nothing of
a revoked partition is committed later by this consumer; assigned partitions start
clean. A lost membership (eviction) drops that state without a commit.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from kafka import KafkaConsumer
from kafka.consumer.fetcher import ConsumerRecord
from kafka.errors import CommitFailedError, KafkaError, KafkaTimeoutError
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata, TopicPartition

from shared.contracts import Event
from shared.observability.batched_histogram import HistogramSeries
from shared.observability.metrics import BusMetrics
from shared.settings import ConsumerSettings, KafkaSettings
from shared.topics import Topic, by_name, dead_letter_topic

from .codec import decode
from .dead_letter import dead_letter_headers
from .errors import DependencyUnavailable, PoisonMessage
from .producer import EventProducer
from .rebalance import LoopRebalanceListener, rebalance_requested

log = logging.getLogger(__name__)

# How long a commit waits for what the batch produced to be acknowledged (see _commit).
FLUSH_TIMEOUT_S = 10.0
# How often, at most, a batch asks the group whether it wants this member to rejoin.
REBALANCE_PROBE_S = 0.005


@dataclass(frozen=True)
class Outgoing:
    """An event a handler wants produced once its input is done."""

    topic: Topic
    event: Event
    # The event's encoding (`encode(event)`), when its maker has it already: the sampler
    # stores each task's JSON with its decision, and serialising a task again for the
    # send was ~5 us of the ~35 us a selected output costs.
    encoded: bytes | None = field(default=None, compare=False, repr=False)


# A handler gets the decoded event and the raw record (for headers, offsets) and
# returns what to produce. It signals failure by raising (see the module docstring).
Handler = Callable[[Event, ConsumerRecord], Iterable[Outgoing]]


class Ticker(Protocol):
    """Time-driven output of a consumer service (e.g. a sampling window that closes).

    Called from the loop's own thread between batches, so it shares the handler's
    state without locks. `due` returns what should be produced now; `delivered` is
    called only once the broker acknowledged all of it, so a failed send is simply
    offered again at the next tick (ids are deterministic, repeats are harmless)."""

    def due(self) -> list[Outgoing]: ...

    def delivered(self, outgoing: list[Outgoing]) -> None: ...


class BatchSink(Protocol):
    """Writes a whole batch to a dependency in one call (e.g. one bulk request to
    Argilla), after the handler saw every record of the batch and before the commit.

    `flush` returns the records that can never be written, with the reason (they are
    dead-lettered); raising DependencyUnavailable redelivers the whole batch. Either way
    the sink starts the next batch empty."""

    def flush(self) -> list[tuple[ConsumerRecord, str]]: ...


@runtime_checkable
class EmittingBatchSink(BatchSink, Protocol):
    """A batch sink whose batch produces events that must not exist before its write
    (the sampler: a task goes out only once its decision is stored, so no redelivery
    can meet a task it did not store). Its handlers return nothing; `emitted`, asked
    right after a successful `flush`, returns the batch's events, which are sent like
    handlers' events: acknowledged before the commit, or the batch is redelivered."""

    def emitted(self) -> list[Outgoing]: ...


@dataclass
class _Tally:
    """What one batch handled of one topic, published to the metrics at its end."""

    histogram: HistogramSeries
    counter: Any  # a labelled prometheus Counter
    durations: list[float] = field(default_factory=list)
    consumed: int = 0


class _Retry(Exception):
    """Internal: the record must be redelivered (dependency down, or stopping)."""


class _Yield(Exception):
    """Internal: end the batch, commit, and poll (the group is rebalancing, or the batch
    has used its time budget)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


class ConsumerLoop:
    def __init__(
        self,
        *,
        topics: Sequence[Topic],
        group_id: str,
        handler: Handler,
        kafka: KafkaSettings,
        consumer: ConsumerSettings,
        producer: EventProducer,
        metrics: BusMetrics,
        stop: threading.Event,
        ticker: Ticker | None = None,
        tick_interval_s: float = 1.0,
        sink: BatchSink | None = None,
        dead_letters: str | None = None,
    ) -> None:
        """`dead_letters`: the dead-letter topic, default `rlhf.dlq.<group_id>`; a
        service whose replicas each have their own group (the policy server) names one
        shared topic, so the cluster can declare it."""
        if not topics:
            raise ValueError("a consumer loop needs at least one topic")
        self._topics = {t.name: t for t in topics}
        self.group_id = group_id
        self.dead_letter_topic = dead_letters or dead_letter_topic(group_id)
        self._handler = handler
        self._settings = consumer
        self._producer = producer
        self._metrics = metrics
        self._stop = stop
        self._consumer = KafkaConsumer(**kafka.consumer_kwargs(group_id))
        # Half the poll interval for the handlers of one batch; the rest is for the
        # sink, the ticker and the commit that follow it.
        self._batch_budget_s = kafka.max_poll_interval_ms / 1000 / 2
        # Per-partition state, dropped when a partition is revoked or lost (see the
        # listener): finished work whose commit failed, pauses for an outage.
        self._uncommitted: dict[TopicPartition, OffsetAndMetadata] = {}
        self._resume_at: dict[TopicPartition, float] = {}  # paused for an outage until
        self._outages: dict[TopicPartition, int] = {}  # consecutive DependencyUnavailable
        self.rebalance_listener = LoopRebalanceListener(self, self._consumer)
        self._consumer.subscribe(list(self._topics), listener=self.rebalance_listener)
        self._backoff_until = 0.0
        self._pending: list[FutureRecordMetadata] = []
        self._tallies: dict[str, _Tally] = {}
        self._ticker = ticker
        self._sink = sink
        self._tick_interval_s = tick_interval_s
        self._next_tick = 0.0
        self._dependency_failures = 0
        self._sink_failures = 0  # consecutive unexpected flush errors on the same batch
        self.last_poll_monotonic = time.monotonic()
        self._next_rebalance_probe = 0.0

    # -- public -------------------------------------------------------------------

    def run(self) -> None:
        """Poll and handle until `stop` is set, then commit finished work and close."""
        try:
            while not self._stop.is_set():
                self.run_once()
        finally:
            self.close()

    def run_once(self) -> int:
        """One poll and its batch; returns how many records were finished."""
        try:
            return self._run_batch()
        finally:
            self._publish_tallies()

    def _run_batch(self) -> int:
        self._wait_backoff()
        if self._stop.is_set():
            return 0
        self._resume_due()
        batch = self._consumer.poll(timeout_ms=self._poll_timeout_ms())
        self.last_poll_monotonic = time.monotonic()
        batch_deadline = self.last_poll_monotonic + self._batch_budget_s
        self._metrics.last_poll.labels(self.group_id).set_to_current_time()
        last_offsets: dict[TopicPartition, int] = {}  # the last finished record of each partition
        first_offsets: dict[TopicPartition, int] = {}
        handled: list[ConsumerRecord] = []  # what the sink holds, should it fail for good
        count = 0
        parts = list(batch.items())
        try:
            for index, (tp, records) in enumerate(parts):
                for record in records:
                    if self._stop.is_set():
                        raise _Retry()
                    why = self._why_end_batch(count, batch_deadline)
                    if why:
                        # Leave this record and everything after it for redelivery
                        # (to this consumer or the partition's next owner).
                        self._consumer.seek(tp, record.offset)
                        for later_tp, later in parts[index + 1:]:
                            self._consumer.seek(later_tp, later[0].offset)
                        raise _Yield(why)
                    try:
                        self._handle(tp, record)
                    except _Retry:
                        # Redeliver this record and the rest of its partition; other
                        # partitions of the batch go on.
                        self._consumer.seek(tp, record.offset)
                        break
                    first_offsets.setdefault(tp, record.offset)
                    last_offsets[tp] = record.offset
                    handled.append(record)
                    count += 1
        except _Retry:
            pass  # stopping: what is finished is committed below, the rest redelivered
        except _Yield as ended:
            log.info("group %s: %s; ending the batch after %d records to commit and poll",
                     self.group_id, ended.why, count)
        if not self._flush_sink({tp.topic for tp in first_offsets}, handled):
            for tp, offset in first_offsets.items():
                self._consumer.seek(tp, offset)
            return 0
        self._maybe_tick()
        finished = {tp: OffsetAndMetadata(offset + 1, "", -1) for tp, offset in last_offsets.items()}
        if not self._commit(finished):
            for tp, offset in first_offsets.items():
                self._consumer.seek(tp, offset)
            return 0
        if count:
            self._dependency_failures = 0  # a whole batch went through: the outage is over
        return count

    def _why_end_batch(self, handled: int, deadline: float) -> str | None:
        """Why the batch should end before the next record, if it should: the group
        wants this member to rejoin, or slow handlers have used the batch's time budget
        (the next poll must come within max_poll_interval, or the member is dropped
        from its group and its partitions' work is redone). At least one record is
        always handled, so a slow record still makes progress.

        The group is asked at most every REBALANCE_PROBE_S (asking costs more than
        handling a small record), so a batch ends at most that much later than the
        request; a rebalance waits for seconds anyway."""
        now = time.monotonic()
        if now >= self._next_rebalance_probe:
            self._next_rebalance_probe = now + REBALANCE_PROBE_S
            if rebalance_requested(self._consumer):
                return "rebalancing"
        if handled and now > deadline:
            return f"the batch used its {self._batch_budget_s:.0f} s budget"
        return None

    def _flush_sink(self, topics: set[str], handled: list[ConsumerRecord]) -> bool:
        """False when the batch must be redelivered: the sink's dependency is down, it
        failed unexpectedly (fewer than `max_attempts` times in a row), or a dead letter
        could not be stored."""
        if self._sink is None or not topics:
            return True
        try:
            refused = self._sink.flush()
            if isinstance(self._sink, EmittingBatchSink):
                for out in self._sink.emitted():
                    self._pending.append(self._producer.send(out.topic, out.event, encoded=out.encoded))
        except DependencyUnavailable as unavailable:
            self._dependency_failures += 1
            delay = self._delay(self._dependency_failures)
            for topic in topics:
                self._metrics.failed.labels(topic, self.group_id, "dependency_unavailable").inc()
            log.warning("group %s: batch write failed (%s); redelivering the batch in %.1fs",
                        self.group_id, unavailable, delay)
            self._backoff_until = time.monotonic() + delay
            return False
        except Exception as error:  # noqa: BLE001 - the loop decides, see the module docstring
            for topic in topics:
                self._metrics.failed.labels(topic, self.group_id, "error").inc()
            self._sink_failures += 1
            if self._sink_failures < self._settings.max_attempts:
                delay = self._delay(self._sink_failures)
                log.warning("group %s: batch write raised (attempt %d/%d), redelivering in %.1fs: %r",
                            self.group_id, self._sink_failures, self._settings.max_attempts, delay, error)
                self._backoff_until = time.monotonic() + delay
                return False
            reason = f"batch write failed {self._sink_failures} times: {type(error).__name__}: {error}"
            refused = [(record, reason) for record in handled]
            kind, cause = "retries_exhausted", error
        else:
            kind, cause = "poison", None
        self._sink_failures = 0
        try:
            for record, reason in refused:
                self._dead_letter(record, kind, reason, cause or PoisonMessage(reason), self._settings.max_attempts
                                  if kind == "retries_exhausted" else 1)
        except _Retry:
            return False
        return True

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        except Exception:  # closing must not hide the reason we are closing
            log.exception("error closing consumer of group %s", self.group_id)

    # -- one record ---------------------------------------------------------------

    def _handle(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        topic = self._topics.get(record.topic) or by_name(record.topic)
        labels = (record.topic, self.group_id)
        tally = self._tally(record.topic)
        durations = tally.durations
        attempts = 0
        while True:
            attempts += 1
            started = time.perf_counter()
            try:
                event = decode(record.value, topic.contract)
                outgoing = list(self._handler(event, record))
                for out in outgoing:
                    self._pending.append(self._producer.send(out.topic, out.event, encoded=out.encoded))
            except PoisonMessage as poison:
                self._dead_letter(record, "poison", poison.reason, poison, attempts)
                break
            except DependencyUnavailable as unavailable:
                self._metrics.failed.labels(*labels, "dependency_unavailable").inc()
                outages = self._outages[tp] = self._outages.get(tp, 0) + 1
                delay = self._delay(outages)
                log.warning("dependency unavailable handling %s@%s/%s (%s); partition paused, retry in %.1fs",
                            record.topic, record.partition, record.offset, unavailable, delay)
                self._pause(tp, delay)
                raise _Retry() from unavailable
            except Exception as error:  # noqa: BLE001 - the loop decides, see docstring
                self._metrics.failed.labels(*labels, "error").inc()
                if attempts >= self._settings.max_attempts:
                    reason = f"handler failed {attempts} times: {type(error).__name__}: {error}"
                    self._dead_letter(record, "retries_exhausted", reason, error, attempts)
                    break
                delay = self._delay(attempts)
                log.warning("handler error on %s@%s/%s (attempt %d/%d), retry in %.1fs: %r",
                            record.topic, record.partition, record.offset, attempts,
                            self._settings.max_attempts, delay, error)
                if self._stop.wait(delay):
                    raise _Retry() from error
                continue
            finally:
                durations.append(time.perf_counter() - started)
            break
        if self._outages:
            self._outages.pop(tp, None)  # this partition's dependency answered again
        tally.consumed += 1

    def _tally(self, topic: str) -> _Tally:
        """The batch's running counts of a topic, published by `_publish_tallies`."""
        tally = self._tallies.get(topic)
        if tally is None:
            tally = self._tallies[topic] = _Tally(
                self._metrics.handler_seconds.labels(topic, self.group_id),
                self._metrics.consumed.labels(topic, self.group_id),
            )
        return tally

    def _publish_tallies(self) -> None:
        """Hand the batch's handler timings and consumed counts to the metrics, once
        per topic: per message, `Histogram.observe` and `Counter.inc` cost ~1.1 us of
        the ~2 us the loop may add to a raw consumer's ~17 us."""
        for tally in self._tallies.values():
            if tally.durations:
                tally.histogram.observe_many(tally.durations)
                tally.durations.clear()
            if tally.consumed:
                tally.counter.inc(tally.consumed)
                tally.consumed = 0

    def _dead_letter(
        self, record: ConsumerRecord, kind: str, reason: str, error: BaseException, attempts: int
    ) -> None:
        """Store the record on the dead-letter topic, acknowledged. If the broker does
        not take it, the record is redelivered (raises _Retry): it is never committed
        without having been stored somewhere."""
        headers = dead_letter_headers(
            record, group_id=self.group_id, kind=kind, reason=reason,
            error_type=type(error).__name__, attempts=attempts,
        )
        try:
            self._producer.send_raw(self.dead_letter_topic, record.key, record.value,
                                    headers=headers).get(timeout=30)
        except Exception as failure:  # noqa: BLE001 - any failure to store is "try again"
            self._metrics.failed.labels(record.topic, self.group_id, "dead_letter_failed").inc()
            self._dependency_failures += 1
            delay = self._delay(self._dependency_failures)
            self._backoff_until = time.monotonic() + delay
            log.warning("group %s: dead letter for %s@%s/%s not stored (%r); redelivering in %.1fs",
                        self.group_id, record.topic, record.partition, record.offset, failure, delay)
            raise _Retry() from failure
        self._metrics.dead_lettered.labels(record.topic, self.group_id, kind).inc()
        log.error("dead-lettered %s@%s/%s to %s: %s",
                  record.topic, record.partition, record.offset, self.dead_letter_topic, reason)

    # -- commit and backoff -------------------------------------------------------

    def _commit(self, offsets: dict[TopicPartition, OffsetAndMetadata]) -> bool:
        """Flush what handlers produced, then commit. False when an output was not
        stored: the batch's inputs are then redelivered, not committed. Finished work
        whose commit fails is kept, offered again with the next commit, and committed
        at the latest when its partition is revoked."""
        if not offsets and not self._uncommitted:
            return True
        # What handlers produced must be stored before their inputs count as done. The wait
        # is bounded: with the broker gone, the producer would hold this poll loop for its
        # whole delivery timeout (120 s) before giving up; what is not acknowledged within
        # FLUSH_TIMEOUT_S counts as not stored, and the batch is redelivered (same ids).
        try:
            self._producer.flush(timeout_s=FLUSH_TIMEOUT_S)
        except KafkaTimeoutError:
            pass
        pending, self._pending = self._pending, []
        failed = [f for f in pending if not f.is_done or f.failed()]
        if failed:
            self._metrics.commits.labels(self.group_id, "failed").inc()
            self._dependency_failures += 1
            self._backoff_until = time.monotonic() + self._delay(self._dependency_failures)
            log.warning("group %s: %d produced events were not acknowledged (%r); redelivering the batch",
                        self.group_id, len(failed), failed[0].exception)
            return False
        owned = self._consumer.assignment()
        # Finished work only ever moves forward; anything of a partition this consumer
        # no longer owns is not its to commit.
        merged = {tp: om for tp, om in {**self._uncommitted, **offsets}.items() if tp in owned}
        self._uncommitted = {}
        if not merged:
            return True
        try:
            self._consumer.commit(merged)
            self._metrics.commits.labels(self.group_id, "ok").inc()
        except (CommitFailedError, KafkaError) as error:
            # A rebalance is under way, or took the partitions away: keep the offsets;
            # they go with the next commit or at revoke (rebalance.py). If the
            # partitions were lost instead, the new owner redelivers them, and
            # deterministic ids make the repeat harmless.
            self._uncommitted = merged
            self._metrics.commits.labels(self.group_id, "failed").inc()
            log.warning("commit failed for group %s: %r", self.group_id, error)
        return True

    def _maybe_tick(self) -> None:
        if self._ticker is None or time.monotonic() < self._next_tick:
            return
        self._next_tick = time.monotonic() + self._tick_interval_s
        try:
            outgoing = self._ticker.due()
        except Exception:  # noqa: BLE001 - a timer's failure must not end the consumer
            self._metrics.failed.labels("-", self.group_id, "ticker_error").inc()
            log.exception("group %s: ticker raised; asking again at the next tick", self.group_id)
            return
        if not outgoing:
            return
        futures = [self._producer.send(out.topic, out.event, encoded=out.encoded) for out in outgoing]
        self._producer.flush()
        failed = [f for f in futures if f.failed()]
        if failed:
            log.warning("group %s: %d of %d ticker events not acknowledged (%r); offered again next tick",
                        self.group_id, len(failed), len(futures), failed[0].exception)
            return
        self._ticker.delivered(outgoing)

    # -- partitions: outage pauses and rebalance state -------------------------------

    def _pause(self, tp: TopicPartition, delay: float) -> None:
        """Stop fetching `tp` for `delay` (its dependency is down); the rest go on."""
        self._consumer.pause(tp)
        self._resume_at[tp] = time.monotonic() + delay

    def _resume_due(self) -> None:
        if not self._resume_at:
            return
        now = time.monotonic()
        due = [tp for tp, at in self._resume_at.items() if at <= now]
        for tp in due:
            del self._resume_at[tp]
        owned = self._consumer.assignment()
        if due_owned := [tp for tp in due if tp in owned]:
            self._consumer.resume(*due_owned)

    def _poll_timeout_ms(self) -> int:
        """The poll's wait, cut short when a paused partition is due to resume."""
        timeout = self._settings.poll_timeout_ms
        if self._resume_at:
            soonest = min(self._resume_at.values()) - time.monotonic()
            timeout = max(0, min(timeout, int(soonest * 1000) + 1))
        return timeout

    def release(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        """Rebalance listener (kafka-python's IO thread, while this loop's thread waits
        in poll or close): forget `partitions`, returning their finished uncommitted
        offsets for a last commit."""
        released: dict[TopicPartition, OffsetAndMetadata] = {}
        for tp in partitions:
            if (om := self._uncommitted.pop(tp, None)) is not None:
                released[tp] = om
            self._resume_at.pop(tp, None)
            self._outages.pop(tp, None)
        return released

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """Rebalance listener: `partitions` are (again) this consumer's; they start
        clean. kafka-python keeps the fetch state (position, paused flag) of a
        partition it had before and gets back: the position is right (the loop seeks
        back whatever it left unfinished), a pause is lifted, since its schedule was
        dropped at revoke (the record is retried at once, backing off anew)."""
        partitions = set(partitions)
        for tp in partitions:
            self._uncommitted.pop(tp, None)
            self._resume_at.pop(tp, None)
            self._outages.pop(tp, None)
        if still_paused := [tp for tp in self._consumer.paused() if tp in partitions]:
            self._consumer.resume(*still_paused)
        self._sink_failures = 0

    def _delay(self, attempt: int) -> float:
        return min(self._settings.backoff_max_s, self._settings.backoff_initial_s * 2 ** (attempt - 1))

    def _wait_backoff(self) -> None:
        """Sleep out a backoff, but poll at once (to rejoin) if the group rebalances."""
        while (remaining := self._backoff_until - time.monotonic()) > 0:
            if self._stop.wait(min(remaining, 0.1)) or rebalance_requested(self._consumer):
                return
