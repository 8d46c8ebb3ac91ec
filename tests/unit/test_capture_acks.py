"""The capture publisher's hand-over of broker acknowledgements from kafka-python's
network thread to the event loop (publisher._Acks): every ack of a burst reaches its
request, errors included, and a request that gave up is skipped."""

from __future__ import annotations

import asyncio
import threading

from kafka.errors import KafkaTimeoutError
from kafka.future import Future

from services.capture.publisher import _Acks


def test_a_burst_of_acks_from_another_thread_settles_every_waiter_with_its_own_outcome() -> None:
    async def scenario() -> list[object]:
        acks = _Acks(asyncio.get_running_loop())
        futures = [Future() for _ in range(50)]
        waiters = [acks.bridge(f) for f in futures]
        waiters[7].cancel()  # its request timed out and left

        def network_thread() -> None:  # one produce response acknowledges them all
            for i, future in enumerate(futures):
                if i % 10 == 3:
                    future.failure(KafkaTimeoutError(f"record {i}"))
                else:
                    future.success(object())

        thread = threading.Thread(target=network_thread)
        thread.start()
        thread.join()
        return await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)

    outcomes = asyncio.run(scenario())
    for i, outcome in enumerate(outcomes):
        if i == 7:
            assert isinstance(outcome, asyncio.CancelledError)
        elif i % 10 == 3:
            assert isinstance(outcome, KafkaTimeoutError) and str(i) in str(outcome)
        else:
            assert outcome is None, (i, outcome)


def test_acks_that_arrive_after_a_wake_up_was_taken_get_one_of_their_own() -> None:
    """An ack delivered while the loop is settling the previous burst is not lost."""
    async def scenario() -> None:
        acks = _Acks(asyncio.get_running_loop())
        for _round in range(20):
            futures = [Future() for _ in range(5)]
            waiters = [acks.bridge(f) for f in futures]
            threading.Thread(target=lambda fs=futures: [f.success(None) for f in fs]).start()
            await asyncio.wait_for(asyncio.gather(*waiters), 5)

    asyncio.run(scenario())
