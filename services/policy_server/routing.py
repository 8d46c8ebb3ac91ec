"""Which version serves a request: the stable one, or the canary for its share.

State changes (new canary, graduation, rollback) replace one immutable snapshot, so
a request reads a consistent (stable, canary, fraction) without a lock. Changes come
from one thread at a time (VersionManager holds its lock).
"""

from __future__ import annotations

import random
import threading
import time
from dataclasses import dataclass

from .models import BASE_VERSION


@dataclass(frozen=True)
class Routes:
    stable: str = BASE_VERSION
    canary: str | None = None
    canary_fraction: float = 0.0
    canary_since: float = 0.0
    last_good: str = BASE_VERSION


class Router:
    def __init__(self, seed: int | None = None, clock=time.monotonic) -> None:  # type: ignore[no-untyped-def]
        self._routes = Routes()
        self._random = random.Random(seed)
        self._random_lock = threading.Lock()
        self._clock = clock

    @property
    def routes(self) -> Routes:
        return self._routes

    def choose(self) -> str:
        return self.pick()[0]

    def pick(self) -> tuple[str, Routes]:
        """The version for one request and the snapshot it was drawn from: an A/B pair
        must name the canary and the stable version of that same snapshot."""
        routes = self._routes
        if routes.canary is None:
            return routes.stable, routes
        with self._random_lock:
            draw = self._random.random()
        return (routes.canary if draw < routes.canary_fraction else routes.stable), routes

    def shares(self) -> dict[str, float]:
        routes = self._routes
        if routes.canary is None:
            return {routes.stable: 1.0}
        return {routes.stable: 1.0 - routes.canary_fraction, routes.canary: routes.canary_fraction}

    def start_canary(self, version: str, fraction: float) -> None:
        routes = self._routes
        if fraction >= 1.0:
            self._routes = Routes(stable=version, last_good=routes.stable)
        else:
            self._routes = Routes(stable=routes.stable, canary=version, canary_fraction=fraction,
                                  canary_since=self._clock(), last_good=routes.stable)

    def graduate(self, version: str) -> bool:
        """The canary `version` takes all traffic (the canary judge decided). False when
        it is not the canary: already stable (a redelivery) or not served at all."""
        routes = self._routes
        if routes.canary != version:
            return False
        self._routes = Routes(stable=version, last_good=routes.stable)
        return True

    def graduate_if_due(self, after_s: float) -> str | None:
        """The timer of deployments without the canary judge (`after_s` 0: never)."""
        routes = self._routes
        if routes.canary is None or after_s <= 0 or self._clock() - routes.canary_since < after_s:
            return None
        return routes.canary if self.graduate(routes.canary) else None

    def rollback(self, to_version: str | None = None) -> str:
        """All traffic back to `to_version` (default: the last good version)."""
        routes = self._routes
        target = to_version or (routes.stable if routes.canary else routes.last_good)
        self._routes = Routes(stable=target, last_good=target)
        return target
