"""Model-update events -> loaded adapters and routes, reconciled with the registry.

The registry's promoted pointer, read through shared/registry_reader.py (the reader
every service shares with the trainer), is the truth; events only say that it may
have changed. Each replica has its own consumer group reading from the earliest
offset, so a new pod replays every update still retained: acting on each `promoted`
event would make every older version the canary in turn.

promoted    -> reconcile: only the version the registry promotes now is started,
               with the event's `canary_fraction` (1.0 = all). A replayed event for
               another version, an older or a rolled-back one is ignored and counted.
graduated   -> the trainer's canary judge decided: the canary takes all traffic. Not
               served yet (its `promoted` was lost): reconciled, at all traffic, if
               the registry still promotes it. A redelivery changes nothing.
rolled_back -> if this replica serves that version: all traffic to the previous
               (last good) one. A rolled-back version is never served again.
published   -> nothing: only promotion makes a version servable
tick        -> reconcile too, so a lost event heals (a pointer two ticks saw; the
               configured canary fraction), and follow what the registry says was
               decided: a canary whose manifest holds the judge's `graduate` takes
               all traffic, a served version the registry marks rolled back hands all
               traffic to its last good version. So every replica converges on the
               decision even when it missed the event. Without the judge a canary
               that stays up `canary_graduate_after_s` (when set) takes all traffic.

Starting a version: load the adapter beside the serving ones, health-check it with
one short generation; a failure is counted and that version is not tried again. At
start a promoted version that fails falls back along its parents to the base.
Names and paths from events are checked before any file is touched: versions are
named as the registry names them, adapters lie inside the registry (PoisonMessage).
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from urllib.parse import unquote, urlparse

from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import DependencyUnavailable, Outgoing, PoisonMessage
from shared.contracts import Event, ModelUpdate
from shared.registry_reader import RegistryReader, version_number

from .metrics import PolicyServerMetrics
from .models import BASE_VERSION, PolicyPool
from .routing import Router

log = logging.getLogger(__name__)


class VersionManager:
    def __init__(self, pool: PolicyPool, router: Router, registry_dir: Path, metrics: PolicyServerMetrics,
                 health_prompt: str, graduate_after_s: float, canary_fraction: float = 0.1) -> None:
        self._pool = pool
        self._router = router
        self._registry = RegistryReader(registry_dir)  # mounted read-only; never written here
        self._metrics = metrics
        self._health_prompt = health_prompt
        self._graduate_after_s = graduate_after_s
        self._canary_fraction = canary_fraction
        self._rolled_back: set[str] = set()  # heard by event, perhaps before the registry says so
        self._unservable: set[str] = set()  # failed to load or its health check
        self._declined: set[tuple[str, str]] = set()  # (version, reason) already counted
        self._pointer_seen: str | None = None  # the promoted pointer at the last tick
        # handle() runs on the consumer's thread, tick() on the App's scheduler: one at a time
        self._lock = threading.RLock()
        metrics.set_shares(router.shares())

    # -- start ---------------------------------------------------------------------------

    def start_from_registry(self) -> None:
        """Serve the registry's promoted policy from the start (a new or restarted pod).
        One that cannot serve falls back to its last good version, down to the base:
        a broken adapter must not crash-loop the replica."""
        try:
            version = self._registry.pointer("policy", "promoted")
        except (OSError, ValueError):
            log.exception("cannot read the registry's promoted pointer; serving the base until it can")
            version = None
        while version is not None and not self._startable(version):
            fallback = self._last_good(version)
            self._metrics.rollbacks.labels("startup").inc()
            log.error("promoted policy %s cannot serve; falling back to %s", version, fallback or BASE_VERSION)
            version = fallback
        if version is not None:
            self._router.start_canary(version, 1.0)
        self._metrics.set_shares(self._router.shares())

    def _startable(self, version: str) -> bool:
        try:
            if version in self._rolled_back_versions():
                return False
            return self._load_healthy(version, self._adapter_dir(version))
        except PoisonMessage as error:
            log.error("policy %s: %s", version, error.reason)
            self._unservable.add(version)
            return False
        except DependencyUnavailable as error:  # the tick reconciles once the registry reads again
            log.error("policy %s: %s", version, error)
            return False

    def _last_good(self, version: str) -> str | None:
        try:
            return self._registry.last_good("policy", version)
        except (OSError, ValueError):  # its manifest is gone or unreadable: nothing to walk
            log.exception("cannot read the parent of %s", version)
            return None

    # -- events --------------------------------------------------------------------------

    def handle(self, event: Event, record: ConsumerRecord) -> list[Outgoing]:
        with self._lock:
            return self._handle(event)

    def _handle(self, event: Event) -> list[Outgoing]:
        assert isinstance(event, ModelUpdate)
        if version_number("policy", event.model_version) is None:
            raise PoisonMessage(f"model_version: {event.model_version!r} is not a registry version name "
                                "(policy-vNNNN)")
        if event.action == "promoted":
            self._on_promoted(event)
        elif event.action == "graduated":
            self._on_graduated(event)
        elif event.action == "rolled_back":
            self._on_rolled_back(event)
        self._metrics.set_shares(self._router.shares())
        return []

    def _on_promoted(self, event: ModelUpdate) -> None:
        version = event.model_version
        self._check_adapter_uri(event)
        if self._serves(version):
            return  # a redelivered promotion
        self._require_published(version)
        self._adapter_dir(version)  # poison if it resolves outside the registry
        if not self._still_promoted(version):
            return
        self._reconcile(event.canary_fraction)

    def _on_graduated(self, event: ModelUpdate) -> None:
        version = event.model_version
        self._check_adapter_uri(event)
        if self._router.routes.stable == version or self._graduate(version, "event"):
            return  # graduated here already (a redelivery, or the tick read the decision first)
        self._require_published(version)
        if not self._still_promoted(version):  # replayed history: a newer version is promoted since
            return
        self._reconcile(1.0)  # its promotion was never heard here: it starts at all traffic

    def _require_published(self, version: str) -> None:
        """The version an event names is in the registry (down while it is not mounted,
        poison when the registry has no such adapter)."""
        if not self._registry.root.is_dir():
            raise DependencyUnavailable(f"registry {self._registry.root} is not mounted")
        if not self._registry.complete("policy", version):
            raise PoisonMessage(f"model_version: no adapter for {version!r} in the registry")

    def _still_promoted(self, version: str) -> bool:
        """The registry promotes `version` now; otherwise the event is declined, counted once."""
        promoted = self._promoted()
        if version != promoted:
            self._decline(version, "not_promoted", f"the registry promotes {promoted or BASE_VERSION}")
            return False
        return True

    def _graduate(self, version: str, source: str) -> bool:
        if not self._router.graduate(version):
            return False
        log.info("canary %s graduated (%s): all traffic", version, source)
        self._prune()
        return True

    def _on_rolled_back(self, event: ModelUpdate) -> None:
        version = event.model_version
        self._rolled_back.add(version)
        if not self._serves(version):
            log.info("rollback of %s: not served here, nothing to do", version)
            return
        previous = event.previous_version
        routes = self._router.routes
        target = previous if previous and self._pool.has(previous) and previous != version else None
        if target is None and routes.canary is None:
            # the stable version, its last good one not loaded (this replica started on it,
            # so the router's is the base): load the registry's, as the tick would
            target = self._last_good_servable(version, routes.last_good, self._rolled_back_known())
        now_serving = self._router.rollback(target)
        self._metrics.rollbacks.labels("event").inc()
        log.warning("rolled back from %s: all traffic to %s", version, now_serving)
        self._prune()

    def _check_adapter_uri(self, event: ModelUpdate) -> None:
        """An event's adapter must be its version's directory in the registry, symlinks
        and `..` resolved: anything else is a path this server must never load."""
        if not event.adapter_uri:
            return
        parsed = urlparse(event.adapter_uri)
        if parsed.scheme not in ("", "file") or parsed.netloc not in ("", "localhost"):
            raise PoisonMessage(f"adapter_uri: {event.adapter_uri!r} is not a path in the registry")
        path, root = Path(unquote(parsed.path)).resolve(), self._registry.root.resolve()
        if not path.is_relative_to(root):
            raise PoisonMessage(f"adapter_uri: {event.adapter_uri!r} resolves outside the registry {root}")
        if path != self._registry.path("policy", event.model_version).resolve():
            raise PoisonMessage(f"adapter_uri: {event.adapter_uri!r} is not {event.model_version}'s directory")

    # -- reconciliation --------------------------------------------------------------------

    def _reconcile(self, fraction: float) -> None:
        """Start the registry's promoted version as the canary, unless it is served
        already, older than what is served, rolled back, or failed before."""
        promoted = self._promoted()
        if promoted is None or self._serves(promoted) or promoted in self._unservable:
            return
        if promoted in self._rolled_back_versions():
            self._decline(promoted, "rolled_back", "it was rolled back")
            return
        if self._number(promoted) < max(self._number(v) for v in (self._router.routes.stable,
                                                                   self._router.routes.canary) if v):
            self._decline(promoted, "older", f"this replica serves {self._router.routes.stable}")
            return
        try:
            adapter_dir = self._adapter_dir(promoted)
        except PoisonMessage as error:
            self._unservable.add(promoted)
            log.error("policy %s: %s", promoted, error.reason)
            return
        if not self._load_healthy(promoted, adapter_dir):
            self._metrics.rollbacks.labels("health_check").inc()
            log.error("policy %s failed its health check; traffic stays on %s", promoted, self._router.routes.stable)
            return
        self._router.start_canary(promoted, fraction)
        log.info("policy %s takes %.0f%% of traffic", promoted, 100 * fraction)
        self._prune()

    def _promoted(self) -> str | None:
        try:
            return self._registry.pointer("policy", "promoted")
        except (OSError, ValueError) as error:
            raise DependencyUnavailable(f"registry pointer unreadable: {error!r}") from error

    def _rolled_back_versions(self) -> set[str]:
        try:
            return self._rolled_back | set(self._registry.rolled_back("policy"))
        except (OSError, ValueError) as error:
            raise DependencyUnavailable(f"registry rollbacks unreadable: {error!r}") from error

    def _decline(self, version: str, reason: str, why: str) -> None:
        if (version, reason) in self._declined:
            return
        self._declined.add((version, reason))
        self._metrics.promotions_ignored.labels(reason).inc()
        log.info("promotion of %s ignored: %s", version, why)

    # -- loading ---------------------------------------------------------------------------

    def _adapter_dir(self, version: str) -> Path:
        path, root = self._registry.path("policy", version).resolve(), self._registry.root.resolve()
        if not path.is_relative_to(root):
            raise PoisonMessage(f"model_version: {version}'s adapter resolves outside the registry ({path})")
        return path

    def _load_healthy(self, version: str, adapter_dir: Path) -> bool:
        """Loaded and answering; otherwise unloaded and never tried again."""
        try:
            self._pool.load(version, adapter_dir)
        except Exception:  # noqa: BLE001 - an adapter that cannot load is an unservable version
            log.exception("policy %s cannot load from %s", version, adapter_dir)
            self._unservable.add(version)
            return False
        if not self._healthy(version):
            self._pool.unload(version)
            self._unservable.add(version)
            return False
        return True

    def _healthy(self, version: str) -> bool:
        try:
            [generation] = self._pool.generate([{"role": "user", "content": self._health_prompt}], version,
                                               n=1, max_tokens=8, temperature=0.0, top_p=1.0)
        except Exception:  # noqa: BLE001 - any failure is an unhealthy version
            log.exception("health check of %s raised", version)
            return False
        return generation.completion_tokens > 0

    def _serves(self, version: str) -> bool:
        routes = self._router.routes
        return version in (routes.stable, routes.canary)

    @staticmethod
    def _number(version: str) -> int:
        return version_number("policy", version) or 0  # the base is older than any version

    def _prune(self) -> None:
        routes = self._router.routes
        keep = {routes.stable, routes.canary, routes.last_good, BASE_VERSION}
        for version in self._pool.versions:
            if version not in keep:
                self._pool.unload(version)

    # -- periodic: reconciliation and canary graduation ---------------------------------------

    def tick(self) -> None:
        """The App runs this every few seconds: follow the registry's promotion and
        decisions, graduate a canary on the timer (deployments without the judge)."""
        with self._lock:
            self._reconcile_on_tick()
            self._follow_decisions()
            graduated = self._router.graduate_if_due(self._graduate_after_s)
            if graduated:
                log.info("canary %s graduated (timer): all traffic", graduated)
                self._prune()
            self._metrics.set_shares(self._router.shares())

    def _follow_decisions(self) -> None:
        """The registry holds what was decided (the trainer writes it before it sends
        the event): read every tick, a lost `graduated` or `rolled_back` still reaches
        this replica, and a redelivered one finds it done."""
        if not self._registry.root.is_dir():
            return
        try:
            self._roll_back_marked()
            canary = self._router.routes.canary
            if canary is not None and (self._decision(canary) or {}).get("outcome") == "graduate":
                self._graduate(canary, "registry")
        except DependencyUnavailable as error:
            log.warning("following the registry's canary decisions skipped: %s", error)

    def _roll_back_marked(self) -> None:
        """A served version the registry marks rolled back: its traffic to the last good
        version (a canary's to the stable one; a stable one's along its parents)."""
        marked = self._rolled_back_versions()
        routes = self._router.routes
        if not {routes.stable, routes.canary} & marked:
            return
        if routes.canary is not None and routes.canary in marked:
            self._router.rollback()
            self._metrics.rollbacks.labels("registry").inc()
            log.warning("canary %s is rolled back in the registry: all traffic to %s", routes.canary, routes.stable)
            routes = self._router.routes
        if routes.stable in marked:
            target = self._last_good_servable(routes.stable, routes.last_good, marked)
            self._router.rollback(target)
            self._metrics.rollbacks.labels("registry").inc()
            log.warning("%s is rolled back in the registry: all traffic to %s", routes.stable, target)
        self._prune()

    def _last_good_servable(self, version: str, router_last_good: str, marked: set[str]) -> str:
        """The registry's last good version of `version` that loads and answers, down to
        the base; the router's own last good one when the registry cannot say."""
        try:
            target = self._registry.last_good("policy", version)
        except (OSError, ValueError):
            log.exception("cannot read the parent of %s; using the last good version served here", version)
            target = router_last_good if router_last_good not in marked | {version} else None
        while target is not None and not (self._pool.has(target) or self._startable(target)):
            target = self._last_good(target)
        return target or BASE_VERSION

    def _rolled_back_known(self) -> set[str]:
        """The rolled-back versions, or those heard by event when the registry cannot say."""
        try:
            return self._rolled_back_versions()
        except DependencyUnavailable:
            return set(self._rolled_back)

    def _decision(self, version: str) -> dict[str, object] | None:
        try:
            return self._registry.canary_decision("policy", version)
        except (OSError, ValueError) as error:
            raise DependencyUnavailable(f"manifest of {version} unreadable: {error!r}") from error

    def _reconcile_on_tick(self) -> None:
        """Act on a pointer only once two ticks saw it: one that has just moved has its
        event on the way, and that event carries the trainer's canary fraction."""
        if not self._registry.root.is_dir():
            return  # the trainer has not written it yet (or it is not mounted)
        try:
            promoted = self._promoted()
            if promoted != self._pointer_seen:
                self._pointer_seen = promoted
                return
            self._reconcile(self._canary_fraction)
        except DependencyUnavailable as error:
            log.warning("reconciliation with the registry skipped: %s", error)

    def delivered(self, outgoing: list[Outgoing]) -> None:
        return None
