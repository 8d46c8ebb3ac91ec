"""The Kafka bus on kafka-python: an event producer and an at-least-once consumer loop."""

from .consumer import (
    BatchSink,
    ConsumerLoop,
    EmittingBatchSink,
    Handler,
    Outgoing,
    Ticker,
)
from .errors import DependencyUnavailable, PoisonMessage
from .producer import EventProducer

__all__ = [
    "BatchSink",
    "ConsumerLoop",
    "DependencyUnavailable",
    "EmittingBatchSink",
    "EventProducer",
    "Handler",
    "Outgoing",
    "PoisonMessage",
    "Ticker",
]
