"""Model-update events -> loaded adapters and routes.

promoted    -> load the adapter beside the serving ones, health-check it with one short
               generation, then give it `canary_fraction` of traffic (1.0 = all);
               a failed health check rolls back at once and is counted
rolled_back -> all traffic to the previous (last good) version
published   -> nothing: only promotion makes a version servable
A canary that stays up for `canary_graduate_after_s` takes all traffic (ticker).
"""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.parse import urlparse

from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import DependencyUnavailable, Outgoing, PoisonMessage
from shared.contracts import Event, ModelUpdate

from .metrics import PolicyServerMetrics
from .models import BASE_VERSION, PolicyPool
from .routing import Router

log = logging.getLogger(__name__)


class VersionManager:
    def __init__(self, pool: PolicyPool, router: Router, registry_dir: Path, metrics: PolicyServerMetrics,
                 health_prompt: str, graduate_after_s: float) -> None:
        self._pool = pool
        self._router = router
        self._registry_dir = registry_dir
        self._metrics = metrics
        self._health_prompt = health_prompt
        self._graduate_after_s = graduate_after_s
        metrics.set_shares(router.shares())

    def start_from_registry(self) -> None:
        """Serve the registry's promoted policy from the start (a restarted pod)."""
        pointer = self._registry_dir / "policy" / "promoted.json"
        if not pointer.exists():
            return
        import json

        version = json.loads(pointer.read_text())["version"]
        self._pool.load(version, self._registry_dir / "policy" / version)
        self._router.start_canary(version, 1.0)
        self._metrics.set_shares(self._router.shares())

    def handle(self, event: Event, record: ConsumerRecord) -> list[Outgoing]:
        assert isinstance(event, ModelUpdate)
        if event.action == "promoted":
            self._promote(event)
        elif event.action == "rolled_back":
            target = event.previous_version if event.previous_version and self._pool.has(event.previous_version) else None
            now_serving = self._router.rollback(target)
            self._metrics.rollbacks.labels("event").inc()
            log.warning("rolled back from %s: all traffic to %s", event.model_version, now_serving)
            self._prune()
        self._metrics.set_shares(self._router.shares())
        return []

    def _promote(self, event: ModelUpdate) -> None:
        version = event.model_version
        if self._router.routes.stable == version or self._router.routes.canary == version:
            return  # a redelivered promotion
        adapter_dir = self._adapter_dir(event)
        if not (adapter_dir / "adapter_config.json").exists():
            if not self._registry_dir.exists():
                raise DependencyUnavailable(f"registry {self._registry_dir} is not mounted")
            raise PoisonMessage(f"adapter_uri: no adapter at {adapter_dir}")
        self._pool.load(version, adapter_dir)
        if not self._healthy(version):
            self._pool.unload(version)
            self._metrics.rollbacks.labels("health_check").inc()
            log.error("policy %s failed its health check; traffic stays on %s", version, self._router.routes.stable)
            return
        self._router.start_canary(version, event.canary_fraction)
        log.info("policy %s takes %.0f%% of traffic", version, 100 * event.canary_fraction)
        self._prune()

    def _healthy(self, version: str) -> bool:
        try:
            [generation] = self._pool.generate([{"role": "user", "content": self._health_prompt}], version,
                                               n=1, max_tokens=8, temperature=0.0, top_p=1.0)
        except Exception:  # noqa: BLE001 - any failure is an unhealthy version
            log.exception("health check of %s raised", version)
            return False
        return generation.completion_tokens > 0

    def _adapter_dir(self, event: ModelUpdate) -> Path:
        if event.adapter_uri:
            parsed = urlparse(event.adapter_uri)
            if parsed.scheme in ("", "file"):
                return Path(parsed.path)
        return self._registry_dir / "policy" / event.model_version

    def _prune(self) -> None:
        routes = self._router.routes
        keep = {routes.stable, routes.canary, routes.last_good, BASE_VERSION}
        for version in self._pool.versions:
            if version not in keep:
                self._pool.unload(version)

    # ticker: canary graduation
    def due(self) -> list[Outgoing]:
        graduated = self._router.graduate_if_due(self._graduate_after_s)
        if graduated:
            log.info("canary %s graduated: all traffic", graduated)
            self._metrics.set_shares(self._router.shares())
            self._prune()
        return []

    def delivered(self, outgoing: list[Outgoing]) -> None:
        return None
