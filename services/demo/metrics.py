"""Demo metrics on a registry passed in. The probe's gauges keep one series: the
version measured last (cleared before each update, so versions never pile up)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

from shared.stats import PairedComparison


class DemoMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("rlhf_demo_requests_total", "Replayed chat requests, by outcome (ok, error).",
                                ["outcome"], registry=registry)
        for outcome in ("ok", "error"):  # at 0 from the start
            self.requests.labels(outcome)
        self.ranked = Counter("rlhf_demo_records_ranked_total", "Records ranked by the simulated annotators.",
                              registry=registry)
        self.win_rate = Gauge("rlhf_demo_win_rate_vs_base",
                              "Served version vs the base on held-out prompts under the annotators' preference:"
                              " (wins + ties/2) / prompts.", ["version"], registry=registry)
        self.p_value = Gauge("rlhf_demo_win_rate_p_value", "One-sided sign test of that comparison.", ["version"],
                             registry=registry)
        self.probe_prompts = Gauge("rlhf_demo_win_rate_prompts", "Held-out prompts in that comparison.",
                                   ["version"], registry=registry)

    def observe_probe(self, version: str, comparison: PairedComparison) -> None:
        for gauge, value in ((self.win_rate, comparison.win_rate), (self.p_value, comparison.p_value),
                             (self.probe_prompts, comparison.n)):
            gauge.clear()
            gauge.labels(version).set(value)
