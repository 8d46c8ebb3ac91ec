"""`main(stop)` as `rlhf-loop run capture` runs it: settings from the environment,
a generated token in embedded mode, graceful stop on the stop event."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import httpx
import pytest

from services.capture.service import main
from services.catalog import load
from shared.contracts import output_id_for
from shared.embedded.broker import EmbeddedBroker
from shared.embedded.ports import free_port
from tests.capture_support import payload
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def test_main_serves_until_stopped(broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                   caplog: pytest.LogCaptureFixture) -> None:
    assert load("capture") is main
    port = free_port()
    for name, value in {"RLHF_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers, "RLHF_HTTP__HOST": "127.0.0.1",
                        "RLHF_HTTP__PORT": str(port), "RLHF_DATA_DIR": str(tmp_path),
                        "RLHF_CAPTURE__PUBLISH_TIMEOUT_S": "5"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("RLHF_CAPTURE__TOKEN", raising=False)
    stop = threading.Event()
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run(main, stop, errors), daemon=True)
    caplog.set_level(logging.INFO)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    assert wait_for(lambda: _status(f"{base}/readyz") == 200, timeout_s=20), errors
    token = (tmp_path / "capture" / "token").read_text().strip()
    assert (tmp_path / "capture" / "token").stat().st_mode & 0o077 == 0  # owner-only
    assert httpx.post(f"{base}/v1/outputs", json=payload("svc")).status_code == 401
    accepted = httpx.post(f"{base}/v1/outputs", json=payload("svc"), headers={"Authorization": f"Bearer {token}"})
    assert accepted.status_code == 202 and accepted.json() == {"event_id": output_id_for("svc")}
    assert "rlhf_capture_events_accepted_total" in httpx.get(f"{base}/metrics").text
    stop.set()
    thread.join(15)
    assert not thread.is_alive() and not errors
    assert "capture: stopped cleanly" in caplog.text
    assert token not in caplog.text


def test_metrics_on_their_own_port_leave_the_api_port_without_them(
        broker: EmbeddedBroker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """RLHF_HTTP__METRICS_PORT: Prometheus' opening reaches /metrics, not the ingest API."""
    port, metrics_port = free_port(), free_port()
    for name, value in {"RLHF_KAFKA__BOOTSTRAP_SERVERS": broker.bootstrap_servers, "RLHF_HTTP__HOST": "127.0.0.1",
                        "RLHF_HTTP__PORT": str(port), "RLHF_HTTP__METRICS_PORT": str(metrics_port),
                        "RLHF_DATA_DIR": str(tmp_path), "RLHF_CAPTURE__TOKEN": "t0ken"}.items():
        monkeypatch.setenv(name, value)
    stop = threading.Event()
    errors: list[BaseException] = []
    thread = threading.Thread(target=lambda: _run(main, stop, errors), daemon=True)
    thread.start()
    api, metrics = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{metrics_port}"
    try:
        assert wait_for(lambda: _status(f"{metrics}/readyz") == 200 and _status(f"{api}/readyz") == 200,
                        timeout_s=20), errors
        assert httpx.post(f"{api}/v1/outputs", json=payload("own-port"),
                          headers={"Authorization": "Bearer t0ken"}).status_code == 202
        assert _status(f"{api}/metrics") == 404
        assert 'rlhf_capture_events_accepted_total{source="api"} 1.0' in httpx.get(f"{metrics}/metrics").text
        assert httpx.post(f"{metrics}/v1/outputs", json=payload("own-port-2"),
                          headers={"Authorization": "Bearer t0ken"}).status_code >= 400  # no API there
    finally:
        stop.set()
        thread.join(15)
    assert not thread.is_alive() and not errors


def _run(target, stop: threading.Event, errors: list[BaseException]) -> None:  # type: ignore[no-untyped-def]
    try:
        target(stop)
    except BaseException as error:  # surfaced by the assertion on `errors`
        errors.append(error)


def _status(url: str) -> int:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return 0
