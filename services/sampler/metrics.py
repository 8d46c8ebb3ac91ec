from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

REJECTION_REASONS = ("no_rule", "duplicate", "quota", "budget", "too_few_candidates")
FEEDBACK_SOURCES = ("edit", "regenerate")
SCORE_BUCKETS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 2.0, 5.0)


class SamplerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "rlhf_sampler_decisions_total",
            "Sampling decisions; decision is selected, held (waiting for its budget window), "
            "rejected or dropped; rule is the deciding rule ('none' when no rule took it).",
            ["rule", "decision"], registry=registry)
        self.rejections = Counter(
            "rlhf_sampler_rejections_total",
            "Outputs not turned into tasks, by reason (no_rule, duplicate, quota, budget, "
            "too_few_candidates).",
            ["reason"], registry=registry)
        self.tasks = Counter(
            "rlhf_sampler_tasks_total", "Ranking tasks emitted, by rule.", ["rule"], registry=registry)
        self.scores = Histogram(
            "rlhf_sampler_score", "Score of outputs a rule selected.", ["rule"],
            buckets=SCORE_BUCKETS, registry=registry)
        self.completions = Counter(
            "rlhf_sampler_completions_total",
            "Extra-candidate requests to completion endpoints, by outcome (ok, error, deadline).",
            ["endpoint", "outcome"], registry=registry)
        self.redactions = Counter(
            "rlhf_sampler_redactions_total", "PII spans redacted, by kind.", ["kind"], registry=registry)
        self.uncertainty_fallbacks = Counter(
            "rlhf_sampler_uncertainty_fallbacks_total",
            "Uncertainty decisions made without a reward model (uniform fallback).", registry=registry)
        self.feedback_preferences = Counter(
            "rlhf_sampler_feedback_preferences_total",
            "Preferences read from users' own feedback (no annotator), by source (edit, regenerate); "
            "each once, not again when its output is redelivered.",
            ["source"], registry=registry)
        for source in FEEDBACK_SOURCES:
            self.feedback_preferences.labels(source)
        for reason in REJECTION_REASONS:  # at 0 from the start: a panel shows 0, not "no data"
            self.rejections.labels(reason)
