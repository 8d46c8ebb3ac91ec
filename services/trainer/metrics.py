"""Trainer metrics on a registry passed in. Labels are bounded: outcome and stage are
fixed sets; the version gauge keeps one series per (kind, pointer) by clearing
before it sets."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

RUN_OUTCOMES = ("succeeded", "gated", "failed")
PREFERENCE_SOURCES = ("ranking", "comparison", "edit", "regenerate")
STAGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)


class TrainerMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.runs = Counter("rlhf_trainer_runs_total", "Training runs by outcome (succeeded, gated, failed).",
                            ["outcome"], registry=registry)
        for outcome in RUN_OUTCOMES:  # exported at 0: an alert sees the first failure as an increase
            self.runs.labels(outcome)
        self.runs_recorded = Gauge(
            "rlhf_trainer_runs_recorded", "Runs in the trainer's durable run history by state (a restart keeps them;"
            " the counter above counts since the process started).", ["state"], registry=registry)
        self.stage_seconds = Histogram("rlhf_trainer_stage_duration_seconds", "Time per run stage.", ["stage"],
                                       buckets=STAGE_BUCKETS, registry=registry)
        self.rm_accuracy = Gauge("rlhf_trainer_rm_accuracy", "Held-out pair accuracy of the last reward model.",
                                 registry=registry)
        self.rm_live_agreement = Gauge(
            "rlhf_trainer_rm_live_agreement",
            "Share of the rankings that arrived since the promoted reward model was trained that it orders like the"
            " annotators (measured before training on them; NaN until measured).", registry=registry)
        self.rm_live_agreement.set(float("nan"))
        self.kl = Gauge("rlhf_trainer_kl", "KL of the last candidate policy to its reference.", registry=registry)
        self.win_rate = Gauge("rlhf_trainer_win_rate",
                              "Win rate (ties half) of the last candidate vs the incumbent on held-out prompts, by the"
                              " independent judge.", registry=registry)
        self.p_value = Gauge("rlhf_trainer_win_p_value",
                             "One-sided sign-test p-value of that comparison (gate: at most alpha).", registry=registry)
        self.new_preferences = Gauge("rlhf_trainer_preferences_since_last_training",
                                     "Stored preferences not yet used by a finished training run.", registry=registry)
        self.stored = Counter("rlhf_trainer_stored_total", "Events stored, by kind and whether new or a duplicate.",
                              ["kind", "result"], registry=registry)
        self.run_active = Gauge("rlhf_trainer_run_active", "1 while a training run is in progress.", registry=registry)
        self.promotions_reannounced = Counter(
            "rlhf_trainer_promotions_reannounced_total",
            "`promoted` events sent again because the topic never showed the promotion's own.", registry=registry)
        self.preferences_by_source = Counter(
            "rlhf_trainer_preferences_by_source_total", "New preferences stored, by where they came from (ranking,"
            " comparison, edit, regenerate).", ["source"], registry=registry)
        for source in PREFERENCE_SOURCES:
            self.preferences_by_source.labels(source)
        # the canary judge (canary.py): the live canary's blind A/B evidence and the decisions taken
        self.canary_live = Gauge("rlhf_canary_live", "1 while a canary is being judged by blind comparisons.",
                                 registry=registry)
        self.canary_comparisons = Gauge("rlhf_canary_ab_comparisons", "The live canary's judged comparisons by"
                                        " outcome for the canary (win, loss, tie).", ["outcome"], registry=registry)
        for outcome in ("win", "loss", "tie"):
            self.canary_comparisons.labels(outcome)
        self.canary_llr = Gauge("rlhf_canary_ab_log_likelihood_ratio", "The sequential test's statistic for the live"
                                " canary (graduates at or above the upper bound, rolls back at or below the lower).",
                                registry=registry)
        self.canary_posterior_win_rate = Gauge("rlhf_canary_ab_posterior_win_rate", "Beta(1,1) posterior mean of the"
                                               " live canary's win rate (ties half).", registry=registry)
        self.canary_prob_not_worse = Gauge("rlhf_canary_ab_prob_not_worse", "Posterior P(win rate > 0.5 - margin)"
                                           " of the live canary.", registry=registry)
        self.canary_age = Gauge("rlhf_canary_age_seconds", "How long the live canary has served.", registry=registry)
        self.canary_decisions = Counter("rlhf_canary_decisions_total", "Canary decisions by outcome (graduate,"
                                        " rollback, keep) and reason (evidence, timeout).", ["outcome", "reason"],
                                        registry=registry)
        for outcome in ("graduate", "rollback", "keep"):
            for reason in ("evidence", "timeout"):
                self.canary_decisions.labels(outcome, reason)
        self.version = Gauge("rlhf_trainer_model_version_info", "Current model versions (value is always 1).",
                             ["kind", "pointer", "version"], registry=registry)

    def observe_run(self, outcome: str, metrics: dict[str, float]) -> None:
        self.runs.labels(outcome).inc()
        for key, value in metrics.items():
            if key.startswith("stage_seconds_"):
                self.stage_seconds.labels(key.removeprefix("stage_seconds_")).observe(value)
        for key, gauge in (("rm_accuracy", self.rm_accuracy), ("rm_live_agreement", self.rm_live_agreement),
                           ("kl", self.kl), ("win_rate", self.win_rate), ("p_value", self.p_value)):
            if key in metrics:
                gauge.set(metrics[key])

    def set_run_counts(self, counts: dict[str, int]) -> None:
        for state in ("succeeded", "gated", "failed", "queued", "started", *counts):
            self.runs_recorded.labels(state).set(counts.get(state, 0))

    def set_versions(self, versions: dict[tuple[str, str], str | None]) -> None:
        self.version.clear()
        for (kind, pointer), version in versions.items():
            if version:
                self.version.labels(kind, pointer, version).set(1)
