"""The registry's promoted pointer is the outbox of `promoted` events.

A training job moves the pointer and then sends `promoted`, retrying a few times; a
broker that stays away for longer loses the event, and a consumer that only follows
the topic (the vLLM deployer) would never load the version users are promised. So the
trainer service records every `promoted` event it reads back from rlhf.model-updates,
and on each scheduler tick, while no run holds the lock, sends the event again for a
promoted version the topic has not shown within `grace_s`, rebuilt from the version's
manifest. The event id is derived from (version, action): a re-send a consumer has
already seen is a duplicate it ignores, so the worst case is one redundant event.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from kafka.errors import KafkaError

from .metrics import TrainerMetrics
from .registry import ModelRegistry
from .reporting import RunReporter
from .store import PreferenceStore

log = logging.getLogger(__name__)


class PromotionAnnouncer:
    def __init__(self, store: PreferenceStore, registry: ModelRegistry, reporter: RunReporter,
                 canary_fraction: float, base_model: str, metrics: TrainerMetrics | None = None,
                 grace_s: float = 30.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.store, self.registry, self.reporter, self.base_model = store, registry, reporter, base_model
        self.canary_fraction, self.metrics, self.grace_s, self.clock = canary_fraction, metrics, grace_s, clock
        self._unseen_since: dict[str, float] = {}

    def reconcile(self) -> str | None:
        """One look; returns the version it announced, if any."""
        version = self.registry.pointer("policy", "promoted")
        if not version or self.store.is_announced(version):
            self._unseen_since.clear()
            return None
        if self.store.lock_holder() is not None:  # a run may be announcing it right now
            return None
        first = self._unseen_since.setdefault(version, self.clock())
        if self.clock() - first < self.grace_s:
            return None
        manifest = self.registry.manifest("policy", version)
        try:
            self.reporter.model_update(
                action="promoted", model_version=version, run_id=manifest.get("run_id"),
                base_model=str(manifest.get("base_model") or self.base_model),
                adapter_uri=self.registry.path("policy", version).resolve().as_uri(),
                reward_model_version=manifest.get("reward_model_version"),
                previous_version=manifest.get("parent_version"),
                gate_passed=bool(manifest.get("gate", {}).get("passed", True)),
                gate_reasons=list(manifest.get("gate", {}).get("reasons", [])),
                metrics={k: float(v) for k, v in manifest.get("metrics", {}).items() if isinstance(v, int | float)},
                canary_fraction=self.canary_fraction)
        except KafkaError as error:
            log.warning("policy %s is promoted but its `promoted` event is not on the topic; re-sending failed "
                        "(%r), next try in %.0fs", version, error, self.grace_s)
            self._unseen_since[version] = self.clock()
            return None
        self._unseen_since[version] = self.clock()  # give the consumer `grace_s` to read it back
        if self.metrics is not None:
            self.metrics.promotions_reannounced.inc()
        log.warning("policy %s is promoted but its `promoted` event was never seen on the topic: sent it again",
                    version)
        return version
