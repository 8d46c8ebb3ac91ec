from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

ROLLBACK_REASONS = ("event", "health_check", "startup", "registry")
IGNORED_REASONS = ("not_promoted", "older", "rolled_back")
CAPTURE_OUTCOMES = ("ok", "error", "not_stored")
AB_RESULTS = ("ok", "error")
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)


class PolicyServerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("rlhf_policy_requests_total", "Chat completion requests by served version and status.",
                                ["version", "status"], registry=registry)
        self.latency = Histogram("rlhf_policy_request_duration_seconds", "Time to the full completion.",
                                 ["version"], buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter("rlhf_policy_completion_tokens_total", "Tokens generated, by version.",
                              ["version"], registry=registry)
        self.share = Gauge("rlhf_policy_traffic_share", "Configured traffic share per serving version (0..1).",
                           ["version"], registry=registry)
        self.rollbacks = Counter("rlhf_model_rollbacks_total",
                                 "Rollbacks to the last good version, by reason (event, health_check, startup: the "
                                 "promoted version could not serve when the replica started; registry: the registry "
                                 "marks a served version rolled back, its event not heard).",
                                 ["reason"], registry=registry)
        self.promotions_ignored = Counter(
            "rlhf_policy_promotions_ignored_total",
            "Promotions not served, once per version and reason (not_promoted: the registry promotes another, "
            "e.g. a replayed event; older: older than the served version; rolled_back).",
            ["reason"], registry=registry)
        self.captured = Counter("rlhf_policy_captured_total", "Completions captured to rlhf.outputs, by outcome (ok, error, not_stored: the request said store=false).",
                                ["outcome"], registry=registry)
        self.ab_pairs = Counter(
            "rlhf_policy_ab_pairs", "A/B answers of a canary and the stable version to one prompt, by result (ok: "
            "captured as a pair; error: the other answer failed or was shed, the served one captured alone).",
            ["result"], registry=registry)
        self.batch_size = Histogram(
            "rlhf_policy_batch_size", "Requests generated together in one batched generate call, by version (its "
            "count is the number of batches; a request of n answers is one request and n rows).",
            ["version"], buckets=BATCH_BUCKETS, registry=registry)

        # Fixed label values are exported at 0 from the start: an alert on increase() sees
        # the first rollback, and a panel shows 0 instead of "no data".
        for reason in ROLLBACK_REASONS:
            self.rollbacks.labels(reason)
        for reason in IGNORED_REASONS:
            self.promotions_ignored.labels(reason)
        for outcome in CAPTURE_OUTCOMES:
            self.captured.labels(outcome)
        for result in AB_RESULTS:
            self.ab_pairs.labels(result)

    def observe_batch(self, version: str, requests: int, _rows: int) -> None:
        """The pool's `on_batch`."""
        self.batch_size.labels(version).observe(requests)

    def set_shares(self, shares: dict[str, float]) -> None:
        self.share.clear()
        for version, share in shares.items():
            self.share.labels(version).set(share)
