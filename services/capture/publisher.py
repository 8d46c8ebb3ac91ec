"""Writes events and waits for the broker's acknowledgement within a deadline.

The ingest API answers 202 only after this returns: "accepted" must mean "stored".
Sends go out together and are then awaited together, so a batch costs one round of
broker acks, not one per item.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import anyio.to_thread
from kafka.errors import KafkaError, KafkaTimeoutError, MessageSizeTooLargeError
from kafka.producer.future import FutureRecordMetadata

from shared.bus import EventProducer
from shared.contracts import Event
from shared.topics import Topic


class BrokerUnavailable(Exception):
    """The broker did not acknowledge in time (or refused): nothing may be reported stored."""


class EventTooLarge(Exception):
    """An event exceeds the producer's `max_request_size`: resending cannot help."""


class OutputPublisher:
    def __init__(self, producer: EventProducer, topic: Topic, timeout_s: float) -> None:
        self._producer = producer
        self._topic = topic
        self.timeout_s = timeout_s
        # True once a send was acknowledged: the producer then knows the topic's
        # partitions, and `send` only appends to its buffer (no metadata wait).
        self.warm = False
        self._acks: _Acks | None = None  # of the loop that serves (one; tests run several in turn)

    def send_all(self, events: Sequence[Event]) -> list[FutureRecordMetadata]:
        try:
            return [self._producer.send(self._topic, event) for event in events]
        except MessageSizeTooLargeError as error:
            raise EventTooLarge(str(error)) from error
        except KafkaError as error:  # e.g. no metadata within max_block_ms
            raise BrokerUnavailable(f"{type(error).__name__}: {error}") from error

    def wait_all(self, futures: Sequence[FutureRecordMetadata]) -> list[BaseException | None]:
        """Each future's error (None when acknowledged), all within one deadline."""
        deadline = time.monotonic() + self.timeout_s
        errors: list[BaseException | None] = []
        for future in futures:
            try:
                future.get(timeout=max(0.001, deadline - time.monotonic()))
                errors.append(None)
                self.warm = True
            except KafkaError as error:
                errors.append(error)
        return errors

    def publish_all(self, events: Sequence[Event]) -> None:
        """Send every event, then wait for every ack (blocking); raise if any was not stored."""
        raise_for(self.wait_all(self.send_all(events)), len(events))

    async def publish_all_async(self, events: Sequence[Event]) -> None:
        """`publish_all` for the event loop. Once warm, sends happen inline and the acks
        are awaited as asyncio futures: no thread hop per request, which is most of the
        cost of a small request. Cold (first sends, no topic metadata yet) a send may
        block up to `max_block_ms`, so it runs on a worker thread."""
        if not self.warm:
            await anyio.to_thread.run_sync(self.publish_all, events)
            return
        futures = self.send_all(events)
        loop = asyncio.get_running_loop()
        if self._acks is None or self._acks.loop is not loop:
            self._acks = _Acks(loop)  # a replaced one still settles what it bridged
        waiters = [self._acks.bridge(f) for f in futures]
        done, pending = await asyncio.wait(waiters, timeout=self.timeout_s)
        for waiter in pending:
            waiter.cancel()
        errors: list[BaseException | None] = [
            (w.exception() if w in done else KafkaTimeoutError(f"no ack within {self.timeout_s}s")) for w in waiters
        ]
        raise_for(errors, len(events))


class _Acks:
    """Acknowledgements handed from kafka-python's network thread to one event loop.

    One produce response acknowledges the events of many requests at once, and waking
    the loop costs a write to its self-pipe and a turn of the loop: the first ack of a
    burst schedules one wake-up, and the ones that arrive before it runs join it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._lock = threading.Lock()
        self._inbox: list[tuple[asyncio.Future[None], BaseException | None]] = []

    def bridge(self, future: FutureRecordMetadata) -> asyncio.Future[None]:
        """An asyncio future resolved on the loop when the kafka-python future is."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        future.add_callback(lambda _md: self._deliver(waiter, None))
        future.add_errback(lambda exc: self._deliver(waiter, exc))
        return waiter

    def _deliver(self, waiter: asyncio.Future[None], error: BaseException | None) -> None:
        with self._lock:
            self._inbox.append((waiter, error))
            if len(self._inbox) > 1:
                return  # a wake-up is already on its way and takes this one too
        self.loop.call_soon_threadsafe(self._settle)

    def _settle(self) -> None:
        with self._lock:
            inbox, self._inbox = self._inbox, []
        for waiter, error in inbox:
            if waiter.done():  # cancelled: its request timed out
                continue
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


def raise_for(errors: Sequence[BaseException | None], total: int) -> None:
    failed = [e for e in errors if e is not None]
    if not failed:
        return
    if all(isinstance(e, MessageSizeTooLargeError) for e in failed):
        raise EventTooLarge(str(failed[0]))
    raise BrokerUnavailable(f"{len(failed)} of {total} not acknowledged: {type(failed[0]).__name__}: {failed[0]}")
