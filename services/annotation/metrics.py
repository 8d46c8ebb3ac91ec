"""The annotation service's metrics, on a registry that is passed in."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

DISCARD_REASONS = ("no_submitted_response", "malformed", "not_a_task", "unknown_task")
COMPARISON_OUTCOMES = ("canary", "stable", "tie")


class AnnotationMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.pushed = Counter(
            "rlhf_annotation_records_pushed_total",
            "Ranking tasks written to Argilla (redeliveries update the same record).",
            ["candidates"], registry=registry)
        self.collected = Counter(
            "rlhf_annotation_records_collected_total",
            "Completed records turned into a ranking.", registry=registry)
        self.discarded = Counter(
            "rlhf_annotation_records_discarded_total",
            "Completed records that yielded nothing; reason: no_submitted_response, malformed, not_a_task, "
            "unknown_task (a comparison record whose task is not in the collector's state).",
            ["reason"], registry=registry)
        self.malformed_responses = Counter(
            "rlhf_annotation_responses_malformed_total",
            "Submitted responses skipped because they do not rank exactly the task's candidates.",
            registry=registry)
        self.preferences = Counter(
            "rlhf_annotation_preferences_total",
            "Preference pairs published.", registry=registry)
        self.ties = Counter(
            "rlhf_annotation_tied_pairs_total",
            "Candidate pairs with equal aggregated scores (no preference produced).", registry=registry)
        self.agreement = Histogram(
            "rlhf_annotation_pairwise_agreement",
            "Per record with 2+ annotators: share of candidate pairs two annotators order alike.",
            buckets=(0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0), registry=registry)
        self.push_errors = Counter(
            "rlhf_annotation_push_errors_total",
            "Argilla refusals of a push, by HTTP status and what the pusher did: retry (backoff, "
            "redelivery), split (a bulk too large), dead_letter (a record Argilla will never take).",
            ["status", "action"], registry=registry)
        self.argilla_up = Gauge(
            "rlhf_annotation_argilla_up",
            "1 while Argilla answers its status endpoint, 0 while it does not (checked every few seconds).",
            registry=registry)
        self.poll_errors = Counter(
            "rlhf_annotation_poll_errors_total",
            "Collector polls that failed (Argilla or Kafka unavailable); retried next poll.",
            registry=registry)
        self.last_poll = Gauge(
            "rlhf_annotation_last_successful_poll_timestamp_seconds",
            "Unix time of the collector's last successful poll.", registry=registry)
        self.pending = Gauge(
            "rlhf_annotation_tasks_pending",
            "Records in Argilla still waiting for their rankings (the annotation backlog).",
            registry=registry)
        self.watermark = Gauge(
            "rlhf_annotation_watermark_timestamp_seconds",
            "Record update time up to which completed records were collected.", registry=registry)
        self.comparisons = Counter(
            "rlhf_annotation_comparisons_total",
            "Blind canary-vs-stable comparisons judged (one per record revision), by the annotators' "
            "majority: canary, stable or tie.", ["outcome"], registry=registry)
        for reason in DISCARD_REASONS:  # at 0 from the start
            self.discarded.labels(reason)
        for outcome in COMPARISON_OUTCOMES:
            self.comparisons.labels(outcome)
