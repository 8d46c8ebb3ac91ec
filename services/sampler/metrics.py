from __future__ import annotations

from collections import Counter as CounterType
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Histogram

if TYPE_CHECKING:
    from .store import Decision

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


class MetricTally:
    """A batch's metric changes, applied once its store transaction committed: a batch
    that fails to be stored is redelivered and decided again, and must not have counted
    anything the first time. Also one `labels()` + `inc()` per distinct series per batch
    instead of per output (at the sampler's rates that lookup was a visible cost)."""

    def __init__(self) -> None:
        self.decisions: CounterType[tuple[str, str]] = CounterType()
        self.rejections: CounterType[str] = CounterType()
        self.tasks: CounterType[str] = CounterType()
        self.scores: list[tuple[str, float]] = []
        self.redactions: CounterType[str] = CounterType()
        self.uncertainty_fallbacks = 0
        self.feedback_preferences: CounterType[str] = CounterType()

    def apply(self, metrics: SamplerMetrics) -> None:
        for (rule, decision), n in self.decisions.items():
            metrics.decisions.labels(rule, decision).inc(n)
        for reason, n in self.rejections.items():
            metrics.rejections.labels(reason).inc(n)
        for rule, n in self.tasks.items():
            metrics.tasks.labels(rule).inc(n)
        for rule, score in self.scores:
            metrics.scores.labels(rule).observe(score)
        for kind, n in self.redactions.items():
            metrics.redactions.labels(kind).inc(n)
        if self.uncertainty_fallbacks:
            metrics.uncertainty_fallbacks.inc(self.uncertainty_fallbacks)
        for source, n in self.feedback_preferences.items():
            metrics.feedback_preferences.labels(source).inc(n)

    def count(self, decision: Decision) -> None:
        """A decision as `rlhf_sampler_decisions_total` and friends count it."""
        rule = decision.rule or "none"
        self.decisions[(rule, decision.status)] += 1
        if decision.status == "selected":
            self.tasks[rule] += 1
            if decision.score is not None:
                self.scores.append((rule, decision.score))
        elif decision.status != "held":
            self.rejections[decision.reason] += 1
