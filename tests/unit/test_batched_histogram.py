"""The batched histogram must look, to a scrape, exactly like prometheus_client's own
Histogram fed the same values one by one: same series, same cumulative buckets
(`le` inclusive), same count and sum."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram

from shared.observability.batched_histogram import BatchedHistogram

BUCKETS = (0.001, 0.01, 0.1, 1.0)


def _samples(registry: CollectorRegistry, name: str) -> dict[tuple[str, tuple], float]:
    """Every sample of `name` except the `_created` timestamp, keyed by sample name and labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect() if family.name == name
        for sample in family.samples if not sample.name.endswith("_created")
    }


def test_same_exposition_as_prometheus_histogram() -> None:
    values = [random.Random(7).uniform(0, 2) for _ in range(500)] + list(BUCKETS) + [0.0, 5.0]
    reference_registry, batched_registry = CollectorRegistry(), CollectorRegistry()
    reference = Histogram("latency_seconds", "doc", ["topic"], buckets=BUCKETS, registry=reference_registry)
    batched = BatchedHistogram("latency_seconds", "doc", ["topic"], buckets=BUCKETS, registry=batched_registry)
    for value in values:
        reference.labels("a").observe(value)
    batched.labels("a").observe_many(values[:100])
    batched.labels("a").observe_many(values[100:])
    reference.labels("b")
    batched.labels("b")  # declared, never observed: exported at 0 like the reference

    expected, got = _samples(reference_registry, "latency_seconds"), _samples(batched_registry, "latency_seconds")
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert got[key] == pytest.approx(value), key
    assert got[("latency_seconds_count", (("topic", "a"),))] == len(values)


def test_label_arity_and_duplicate_registration_are_refused() -> None:
    registry = CollectorRegistry()
    histogram = BatchedHistogram("x_seconds", "doc", ["topic", "group"], buckets=BUCKETS, registry=registry)
    with pytest.raises(ValueError, match="takes labels"):
        histogram.labels("only-one")
    with pytest.raises(ValueError):
        BatchedHistogram("x_seconds", "doc", ["topic", "group"], buckets=BUCKETS, registry=registry)
