"""End to end with Debian's real Prometheus server: it scrapes the services that
`rlhf-loop up` runs on the embedded broker, and the loop's key series are there with
sensible values after some traffic."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from shared.embedded.ports import free_port, free_port_block, wait_for_port
from tests.conftest import wait_for

pytestmark = pytest.mark.integration

SERVICES = ["capture", "sampler", "event-logger"]


def query(prometheus: str, promql: str) -> list[dict[str, object]]:
    url = f"{prometheus}/api/v1/query?query={urllib.parse.quote(promql)}"
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())["data"]["result"]  # type: ignore[no-any-return]


def post_output(port: int, token: str, i: int, feedback: bool) -> int:
    body = {"client_request_id": f"scrape-{i}", "messages": [{"role": "user", "content": f"question {i}"}],
            "candidates": [{"text": "yes", "model": {"name": "m", "version": "v1"}},
                           {"text": "no", "model": {"name": "m", "version": "v1"}}],
            "feedback": [{"kind": "thumbs_down"}] if feedback else []}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/outputs", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.status


def test_prometheus_scrapes_the_running_loop(tmp_path: Path) -> None:
    base = free_port_block(len(SERVICES))
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLHF_")}
    loop = subprocess.Popen(
        [sys.executable, "-m", "services.cli", "up", "--no-demo", "--only", *SERVICES, "--data-dir", str(tmp_path / "data"),
         "--http-port-base", str(base), "--grace-seconds", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    prometheus = None
    try:
        ports = {name: base + i for i, name in enumerate(SERVICES)}
        for port in ports.values():
            assert wait_for_port("127.0.0.1", port, 60), f"service on :{port} did not start"
        token_file = tmp_path / "data" / "capture" / "token"
        assert wait_for(token_file.exists, timeout_s=30)
        token = token_file.read_text().strip()
        assert [post_output(ports["capture"], token, i, feedback=i % 2 == 0) for i in range(10)] == [202] * 10

        prom_port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(json.dumps({  # YAML is a superset of JSON
            "global": {"scrape_interval": "1s"},
            "scrape_configs": [{"job_name": "rlhf-loop", "static_configs": [
                {"targets": [f"127.0.0.1:{p}" for p in ports.values()]}]}],
        }))
        prometheus = subprocess.Popen(
            ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{prom_port}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{prom_port}"
        assert wait_for_port("127.0.0.1", prom_port, 30)

        def series_ready() -> bool:
            try:
                return (len(query(url, 'up{job="rlhf-loop"} == 1')) == len(SERVICES)
                        and bool(query(url, 'rlhf_sampler_tasks_total{rule="negative-feedback"} >= 5')))
            except OSError:
                return False

        assert wait_for(series_ready, timeout_s=60, interval_s=0.5)
        accepted = query(url, "sum(rlhf_capture_events_accepted_total)")
        assert float(accepted[0]["value"][1]) == 10  # type: ignore[index]
        consumed = query(url, 'sum by (group) (rlhf_messages_consumed_total{topic="rlhf.outputs"})')
        assert {r["metric"]["group"]: float(r["value"][1]) for r in consumed} == {  # type: ignore[index]
            "sampler": 10.0, "event-logger": 10.0}
        assert query(url, "rlhf_handler_duration_seconds_count") != []
        assert query(url, "time() - rlhf_consumer_last_poll_timestamp_seconds < 60") != []
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(10)
        loop.send_signal(signal.SIGINT)
        try:
            output, _ = loop.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            loop.kill()
            output, _ = loop.communicate()
    assert loop.returncode == 0, output
