"""The canary judge: blind human comparisons decide whether a canary graduates or is
rolled back.

A promoted policy starts as a canary (`canary_fraction` of traffic). While it serves,
the policy servers answer a share of prompts from both the canary and the stable
version, annotators judge the pairs blind (services/annotation), and every judged
pair reaches the trainer as a `CanaryComparison`. The judge keeps one vote per
compared prompt (canary_store.py) and, after each new vote and on every scheduler
tick, applies the sequential test (sequential.py):

    graduate  -> the decision is written into the version's manifest, then
                 `graduated` (with the numbers) tells every policy server: all traffic
    rollback  -> the decision is written, the registry marks the version rolled back
                 and moves the promoted pointer to its last good version, and
                 `rolled_back` (with the numbers) returns traffic there
    continue  -> until `max_duration_s`; then `on_timeout` (graduate, keep or roll
                 back), the fallback for when no annotator judged enough pairs

The manifest is the truth (policy servers converge on it when an event is lost); the
event is sent until the broker acknowledges it: a decision whose send failed is sent
again on the next look. A canary is what the judge heard promoted with a fraction
below 1 (`promoted` events, which the announcer re-sends until they are on the
topic); the version a rollback returns to is not a new canary.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from kafka.errors import KafkaError
from shared.contracts import CanaryComparison, CanaryDecision, ModelUpdate

from .canary_store import Canary, CanaryStore, StoredDecision
from .metrics import TrainerMetrics
from .registry import ModelRegistry
from .sequential import Evidence, evaluate
from .settings import CanaryJudgeOptions

log = logging.getLogger(__name__)

BASE = "base"  # what the policy servers call the base model (services/policy_server/models.BASE_VERSION)


Rollback = Callable[[str, str, CanaryDecision], object]  # (version, reason, decision): registry + `rolled_back`


class CanaryJudge:
    def __init__(self, store: CanaryStore, registry: ModelRegistry, options: CanaryJudgeOptions,
                 publish_graduated: Callable[[str, CanaryDecision], None], rollback: Rollback,
                 metrics: TrainerMetrics | None = None, clock: Callable[[], float] = time.time) -> None:
        self._store, self._registry, self._options = store, registry, options
        self._publish_graduated, self._rollback = publish_graduated, rollback
        self._metrics, self._clock = metrics, clock
        self._kept: set[str] = set()  # canaries kept at their timeout (logged once)
        self._lock = threading.Lock()  # the consumer thread and the scheduler both look

    def close(self) -> None:
        self._store.close()

    # -- what the consumer hears ----------------------------------------------------------

    def on_update(self, event: ModelUpdate) -> None:
        """A `promoted` event with a fraction below 1 starts a canary's clock."""
        if event.action == "promoted" and event.canary_fraction < 1.0:
            if self._store.add_canary(event.model_version, event.previous_version or BASE, self._clock()):
                log.info("canary %s (against %s): judging blind comparisons", event.model_version,
                         event.previous_version or BASE)

    def on_comparison(self, comparison: CanaryComparison) -> bool:
        """Store one judged pair; True if it changed the counts (then look at once)."""
        changed = self._store.add(comparison)
        if self._metrics is not None:
            self._metrics.stored.labels("comparison", "new" if changed else "duplicate").inc()
        return changed

    # -- the look ---------------------------------------------------------------------------

    def look(self) -> CanaryDecision | None:
        """Re-send decisions not yet acknowledged, then judge the live canary. Returns
        the decision taken by this look, if any."""
        with self._lock:
            for pending in self._store.unannounced():
                self._announce(pending)
            canary = self._live_canary()
            if self._metrics is not None:
                self._metrics.canary_live.set(1 if canary else 0)
            if canary is None:
                return None
            evidence = evaluate(self._store.counts(canary.version), self._options)
            age = max(0.0, self._clock() - canary.started_at)
            self._export(evidence, age)
            if evidence.verdict != "continue":
                return self._decide(canary, evidence, evidence.verdict, "evidence", age)
            if age < self._options.max_duration_s:
                return None
            if self._options.on_timeout == "keep":
                if canary.version not in self._kept:
                    self._kept.add(canary.version)
                    self._count("keep", "timeout")
                    log.warning("canary %s undecided after %.0fs (%d comparisons): kept as a canary", canary.version,
                                age, evidence.counts.total)
                return None
            return self._decide(canary, evidence, self._options.on_timeout, "timeout", age)

    def _live_canary(self) -> Canary | None:
        version = self._registry.pointer("policy", "promoted")
        if version is None or self._store.decision(version) is not None:
            return None
        return self._store.canary(version)

    def _decide(self, canary: Canary, evidence: Evidence, outcome: str, reason: str, age: float) -> CanaryDecision:
        decision = CanaryDecision(
            outcome=outcome, reason=reason, canary_version=canary.version,  # type: ignore[arg-type]
            stable_version=canary.stable_version, wins=evidence.counts.wins, losses=evidence.counts.losses,
            ties=evidence.counts.ties, log_likelihood_ratio=evidence.log_likelihood_ratio,
            graduate_at=evidence.graduate_at, rollback_at=evidence.rollback_at,
            posterior_win_rate=evidence.posterior_win_rate, prob_not_worse=evidence.prob_not_worse,
            canary_age_s=age)
        stored = self._store.decide(canary.version, outcome, reason, decision.model_dump_json())
        self._registry.record_decision("policy", canary.version, json.loads(stored.decision_json))
        self._count(outcome, reason)
        log.warning("canary %s: %s on %s (wins %d, losses %d, ties %d, llr %.2f in [%.2f, %.2f], P(not worse) %.3f)",
                    canary.version, outcome, reason, decision.wins, decision.losses, decision.ties,
                    decision.log_likelihood_ratio, decision.rollback_at, decision.graduate_at,
                    decision.prob_not_worse)
        self._announce(stored)
        return decision

    def _announce(self, stored: StoredDecision) -> None:
        decision = CanaryDecision.model_validate_json(stored.decision_json)
        try:
            if stored.outcome == "graduate":
                self._publish_graduated(stored.canary_version, decision)
            elif stored.outcome == "rollback":
                self._rollback(stored.canary_version, f"canary judge: {stored.reason}", decision)
        except KafkaError as error:  # the manifest says it already; the next look sends again
            log.warning("decision on %s not acknowledged yet (%r): sending again on the next look",
                        stored.canary_version, error)
            return
        self._store.mark_announced(stored.canary_version)

    # -- metrics ----------------------------------------------------------------------------

    def _export(self, evidence: Evidence, age: float) -> None:
        m = self._metrics
        if m is None:
            return
        counts = evidence.counts
        for outcome, value in (("win", counts.wins), ("loss", counts.losses), ("tie", counts.ties)):
            m.canary_comparisons.labels(outcome).set(value)
        m.canary_llr.set(evidence.log_likelihood_ratio)
        m.canary_posterior_win_rate.set(evidence.posterior_win_rate)
        m.canary_prob_not_worse.set(evidence.prob_not_worse)
        m.canary_age.set(age)

    def _count(self, outcome: str, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.canary_decisions.labels(outcome, reason).inc()
