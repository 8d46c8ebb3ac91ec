"""`rlhf-loop up`: the embedded broker plus one child process per service.

Each service runs as `rlhf-loop run NAME` in its own process, exactly as a Kubernetes
Deployment runs it, so the laptop exercises the production entry points. Ctrl-C (or
SIGTERM) stops the services first (SIGTERM, grace period, then SIGKILL), the broker
last. A service that dies is restarted with backoff, as Kubernetes would; so is the
broker, on the same port (the annotation service supervises its embedded Argilla).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shared.embedded.broker import EmbeddedBroker

log = logging.getLogger(__name__)

RESTART_BACKOFF_MAX_S = 30.0


@dataclass
class Child:
    name: str
    port: int
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    next_start: float = 0.0
    log_path: Path = field(default_factory=Path)


class Supervisor:
    def __init__(
        self,
        services: list[str],
        *,
        data_dir: Path,
        http_port_base: int,
        broker_port: int,
        grace_s: float,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._grace_s = grace_s
        self._extra_env = extra_env or {}
        self._broker = EmbeddedBroker(port=broker_port, log_file=data_dir / "logs" / "broker.log")
        self.broker_restarts = 0
        self.children = [
            Child(name, http_port_base + i, log_path=data_dir / "logs" / f"{name}.log")
            for i, name in enumerate(services)
        ]

    @property
    def bootstrap_servers(self) -> str:
        return self._broker.bootstrap_servers

    def run(self, stop: threading.Event, on_ready: Callable[["Supervisor"], None] | None = None,
            on_tick: Callable[["Supervisor"], None] | None = None) -> None:
        self._broker.start()
        try:
            for child in self.children:
                self._start(child)
            if on_ready is not None:
                on_ready(self)
            while not stop.wait(0.5):
                self._restart_dead()
                if on_tick is not None:
                    on_tick(self)
        finally:
            self._stop_children()
            self._broker.stop()

    def port_of(self, name: str) -> int | None:
        return next((c.port for c in self.children if c.name == name), None)

    def _env(self, child: Child) -> dict[str, str]:
        # One port per child serves everything, /metrics included (the status line and
        # the local Prometheus config scrape it): a shared metrics port would collide.
        inherited = {k: v for k, v in os.environ.items() if k != "RLHF_HTTP__METRICS_PORT"}
        return {
            **self._extra_env,
            **inherited,  # what the user set wins over the supervisor's defaults
            "RLHF_KAFKA__BOOTSTRAP_SERVERS": self._broker.bootstrap_servers,
            "RLHF_HTTP__HOST": "127.0.0.1",
            "RLHF_HTTP__PORT": str(child.port),
            "RLHF_DATA_DIR": str(self._data_dir),
            "RLHF_CONSUMER__SHUTDOWN_GRACE_S": str(self._grace_s),
        }

    def _start(self, child: Child) -> None:
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(child.log_path, "ab") as output:
            # New session: a terminal's Ctrl-C reaches only the supervisor, which then
            # stops children in order instead of everything dying at once.
            child.process = subprocess.Popen(
                [sys.executable, "-m", "services.cli", "run", child.name],
                stdout=output, stderr=subprocess.STDOUT, env=self._env(child), start_new_session=True,
            )
        log.info("started %s (pid %d): metrics http://127.0.0.1:%d/metrics, log %s",
                 child.name, child.process.pid, child.port, child.log_path)

    def _restart_dead(self) -> None:
        if not self._broker.is_running():
            # In memory, the broker's topics died with it; the services' clients
            # reconnect to the same address and resume (their stores dedupe repeats).
            log.error("the embedded broker died: restarting it on %s", self._broker.bootstrap_servers)
            try:
                self._broker.restart()
                self.broker_restarts += 1
            except Exception:  # noqa: BLE001 - tried again on the next round
                log.exception("restarting the embedded broker failed; retrying")
        now = time.monotonic()
        for child in self.children:
            if child.process is None or child.process.poll() is None:
                continue
            if child.next_start == 0.0:
                delay = min(RESTART_BACKOFF_MAX_S, 2.0 ** child.restarts)
                child.next_start = now + delay
                log.error("%s exited with %s; restarting in %.0fs (see %s)",
                          child.name, child.process.returncode, delay, child.log_path)
            elif now >= child.next_start:
                child.restarts += 1
                child.next_start = 0.0
                self._start(child)

    def kill_all(self) -> None:
        """SIGKILL every child and the broker (a second Ctrl-C: nothing is left behind)."""
        for child in self.children:
            if child.process is not None and child.process.poll() is None:
                child.process.kill()
        self._broker.kill()

    def _stop_children(self) -> None:
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + self._grace_s + 5
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
                log.info("%s stopped (exit %s)", child.name, child.process.returncode)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within the grace period: killing", child.name)
                child.process.kill()
                child.process.wait()
