from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter


class DemoMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("rlhf_demo_requests_total", "Replayed chat requests, by outcome (ok, error).",
                                ["outcome"], registry=registry)
        self.ranked = Counter("rlhf_demo_records_ranked_total", "Records ranked by the simulated annotators.",
                              registry=registry)
