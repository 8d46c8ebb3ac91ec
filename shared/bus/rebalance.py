"""The consumer loop's side of a consumer-group rebalance.

kafka-python 3.x drives the group protocol on its own IO thread ("kafka-io-..."). A
rebalance (JoinGroup/SyncGroup) only starts from `KafkaConsumer.poll()` or `close()`,
and while it runs the loop's thread is blocked inside that call, waiting for the IO
thread: the listener's callbacks run on the IO thread, but never at the same time as
the loop's own code, so they may touch the loop's state without a lock.

They must not block on the consumer, though: a blocking call such as
`consumer.commit()` made from the IO thread raises ("Cannot block on net.run() from
the IO thread itself"). Hence an AsyncConsumerRebalanceListener, whose revoke awaits
`commit_async()`'s future on the IO loop (heartbeats keep flowing meanwhile).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Protocol

from kafka import KafkaConsumer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.structs import OffsetAndMetadata, TopicPartition

log = logging.getLogger(__name__)


class PartitionOwner(Protocol):
    """What the loop gives the listener: its per-partition state."""

    group_id: str

    def release(self, partitions: Iterable[TopicPartition]) -> dict[TopicPartition, OffsetAndMetadata]:
        """Forget all state of `partitions`; return their finished, not yet committed
        offsets (handled and their outputs flushed)."""
        ...

    def assigned(self, partitions: Iterable[TopicPartition]) -> None:
        """The group gave this consumer `partitions`: start them clean."""
        ...


class LoopRebalanceListener(AsyncConsumerRebalanceListener):
    def __init__(self, owner: PartitionOwner, consumer: KafkaConsumer) -> None:
        self._owner = owner
        self._consumer = consumer
        self.revocations = 0  # how many revokes committed something (observability, tests)

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        # Called before every rebalance (under the eager protocol with the whole
        # assignment) and from close(): still the owner, so finished work can be
        # committed before the next owner reads the group's offsets.
        offsets = self._owner.release(revoked)
        if not offsets:
            return
        try:
            await self._consumer.commit_async(offsets)
        except Exception as error:  # noqa: BLE001 - the new owner redelivers, ids are deterministic
            log.warning("group %s: commit at revoke failed for %s: %r; the next owner redelivers them",
                        self._owner.group_id, sorted(offsets), error)
            return
        self.revocations += 1
        log.info("group %s: committed finished work of revoked partitions: %s", self._owner.group_id,
                 {f"{tp.topic}/{tp.partition}": om.offset for tp, om in offsets.items()})

    async def on_partitions_lost(self, lost: set[TopicPartition]) -> None:
        # Evicted (session expired, generation fenced): a commit would be refused, and
        # the partitions may already be someone else's. Drop everything held for them.
        dropped = self._owner.release(lost)
        if dropped:
            log.warning("group %s: lost partitions %s with uncommitted finished work; the next owner "
                        "redelivers it", self._owner.group_id, sorted(dropped))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        self._owner.assigned(assigned)


def rebalance_requested(consumer: KafkaConsumer) -> bool:
    """True once the group coordinator has asked this member to rejoin (a heartbeat
    answered REBALANCE_IN_PROGRESS: another member joins or leaves). The loop then
    ends its batch early, commits, and polls, so the rebalance is not held up for a
    whole batch of slow records.

    kafka-python has no public API for this; it reads the coordinator's
    `need_rejoin()`, and answers False (the loop then finishes the batch as before)
    should a future release drop it."""
    coordinator = getattr(consumer, "_coordinator", None)
    need_rejoin = getattr(coordinator, "need_rejoin", None)
    if need_rejoin is None:
        return False
    try:
        return bool(need_rejoin())
    except Exception:  # noqa: BLE001 - a probe, never a reason to fail a batch
        return False
