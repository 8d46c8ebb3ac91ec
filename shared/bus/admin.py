"""Topic administration that works on Tansu and Kafka alike (create-if-missing, list)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from kafka import KafkaAdminClient
from kafka.admin import NewTopic
from kafka.errors import TopicAlreadyExistsError

from shared.settings import KafkaSettings

log = logging.getLogger(__name__)


def ensure_topics(
    settings: KafkaSettings, topics: Iterable[tuple[str, int]], replication_factor: int = 1
) -> list[str]:
    """Create the (name, partitions) topics that do not exist yet; return those created."""
    admin = KafkaAdminClient(**settings.client_kwargs())
    try:
        existing = set(admin.list_topics())
        missing = [NewTopic(name, partitions, replication_factor) for name, partitions in topics if name not in existing]
        created = []
        for new_topic in missing:
            try:
                admin.create_topics([new_topic])
                created.append(new_topic.name)
            except TopicAlreadyExistsError:  # another service won the race
                pass
        if created:
            log.info("created topics %s", created)
        return created
    finally:
        admin.close()


def list_topics(settings: KafkaSettings) -> list[str]:
    admin = KafkaAdminClient(**settings.client_kwargs())
    try:
        return sorted(admin.list_topics())
    finally:
        admin.close()
