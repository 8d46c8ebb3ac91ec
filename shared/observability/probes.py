"""Readiness probes for dependencies.

kafka-python exposes no public "am I connected" (its `bootstrap_connected` is only true
while bootstrapping), so readiness asks the question directly: can a TCP connection
to a bootstrap server be opened right now? Results are cached briefly so a scrape
storm does not become a connection storm.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable

from shared.settings import KafkaSettings


def tcp_reachable(host: str, port: int, timeout_s: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _host_port(server: str) -> tuple[str, int]:
    host, _, port = server.strip().rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port or 9092)


def kafka_reachable(settings: KafkaSettings, cache_s: float = 2.0) -> Callable[[], bool]:
    servers = [_host_port(s) for s in settings.bootstrap_servers.split(",") if s.strip()]
    return cached(lambda: any(tcp_reachable(host, port) for host, port in servers), cache_s)


def cached(check: Callable[[], bool], cache_s: float = 2.0,
           on_result: Callable[[bool], None] | None = None) -> Callable[[], bool]:
    """`check`, asked at most once per `cache_s`; `on_result` sees every fresh answer
    (e.g. to keep a gauge that says the dependency is up)."""
    lock = threading.Lock()
    state = {"at": float("-inf"), "ok": False}

    def probe() -> bool:
        with lock:
            if time.monotonic() - state["at"] > cache_s:
                try:
                    state["ok"] = bool(check())
                except Exception:  # noqa: BLE001 - a probe that raises says "down"
                    state["ok"] = False
                state["at"] = time.monotonic()
                if on_result is not None:
                    on_result(bool(state["ok"]))
            return bool(state["ok"])

    return probe


def http_ok(url: str, headers: dict[str, str] | None = None, timeout_s: float = 2.0) -> Callable[[], bool]:
    """True when GET `url` answers 2xx within `timeout_s` (not cached: wrap in `cached`)."""
    import httpx

    def check() -> bool:
        try:
            return httpx.get(url, headers=headers, timeout=timeout_s).is_success
        except httpx.HTTPError:
            return False

    return check


class BrokerUnreachable(RuntimeError):
    def __init__(self, servers: str, waited_s: float) -> None:
        super().__init__(f"cannot reach Kafka at {servers} (waited {waited_s:.0f}s): is the broker running? "
                         "(set RLHF_KAFKA__BOOTSTRAP_SERVERS)")


def wait_until_reachable(settings: KafkaSettings) -> None:
    """Block until a bootstrap server accepts connections, or raise BrokerUnreachable.

    kafka-python would otherwise spend its whole request timeout and fail with a
    generic timeout; this names the address an operator has to fix."""
    check = kafka_reachable(settings, cache_s=0.0)
    deadline = time.monotonic() + settings.startup_timeout_s
    while not check():
        if time.monotonic() >= deadline:
            raise BrokerUnreachable(settings.bootstrap_servers, settings.startup_timeout_s)
        time.sleep(0.25)
