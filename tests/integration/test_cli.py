"""The `rlhf-loop` command as an operator runs it: real processes, real broker, signals."""

from __future__ import annotations

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.bus import EventProducer
from shared.embedded.broker import EmbeddedBroker
from shared.embedded.ports import free_port, free_port_block
from shared.settings import KafkaSettings
from shared.topics import LOOP_TOPICS, OUTPUTS
from tests import factories
from tests.conftest import FAST_GROUP, committed_offsets, wait_for
from tests.helpers.cli import CLI, bootstrap_of, cli_env, start_up

pytestmark = pytest.mark.integration



def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""  # not listening (yet)


def test_unknown_service_is_a_clear_error() -> None:
    done = subprocess.run([*CLI, "run", "nope"], capture_output=True, text=True, env=cli_env(), timeout=60)
    assert done.returncode == 2
    assert "unknown service 'nope'" in done.stderr
    assert "event-logger" in done.stderr


def test_unreachable_broker_is_a_clear_error() -> None:
    port = free_port()
    done = subprocess.run(
        [*CLI, "run", "event-logger"], capture_output=True, text=True, timeout=60,
        env=cli_env(RLHF_KAFKA__BOOTSTRAP_SERVERS=f"127.0.0.1:{port}", RLHF_KAFKA__STARTUP_TIMEOUT_S="1"),
    )
    assert done.returncode == 3
    assert f"cannot reach Kafka at 127.0.0.1:{port}" in done.stderr


def test_bad_setting_names_its_variable_and_hides_secrets() -> None:
    done = subprocess.run(
        [*CLI, "run", "event-logger"], capture_output=True, text=True, timeout=60,
        env=cli_env(RLHF_KAFKA__SESSION_TIMEOUT_MS="soon", RLHF_KAFKA__SASL_PASSWORD="",
                    RLHF_KAFKA__SASL_MECHANISM="NOPE"),
    )
    assert done.returncode == 2
    assert "RLHF_KAFKA__SESSION_TIMEOUT_MS" in done.stderr
    assert "'soon'" in done.stderr
    assert "RLHF_KAFKA__SASL_MECHANISM" in done.stderr


def test_up_refuses_taken_ports_with_a_clear_error() -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run([*CLI, "up", "--only", "event-logger", "--http-port-base", str(port)],
                              capture_output=True, text=True, env=cli_env(), timeout=60)
    assert done.returncode == 2
    assert f"ports [{port}] are taken" in done.stderr


def test_topics_creates_the_loop_topics(broker: EmbeddedBroker) -> None:
    done = subprocess.run([*CLI, "topics", "--bootstrap-servers", broker.bootstrap_servers],
                          capture_output=True, text=True, env=cli_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    listed = set(done.stdout.split())
    assert {t.name for t in LOOP_TOPICS} <= listed


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    """A broker of this test's own: the service under test tails a real loop topic."""
    with EmbeddedBroker(log_file=tmp_path / "tansu.log") as running:
        yield running


def test_run_service_serves_metrics_and_stops_cleanly_on_sigterm(own_broker: EmbeddedBroker, group_id: str) -> None:
    broker, topic = own_broker, OUTPUTS
    kafka = broker.kafka_settings(**FAST_GROUP)
    producer = EventProducer(kafka)
    events = [factories.model_output(f"sig-{i}") for i in range(200)]
    for event in events[:100]:
        producer.send(topic, event)
    producer.flush()
    port = free_port()
    process = subprocess.Popen(
        [*CLI, "run", "event-logger"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=cli_env(
            RLHF_KAFKA__BOOTSTRAP_SERVERS=broker.bootstrap_servers,
            RLHF_KAFKA__SESSION_TIMEOUT_MS=str(FAST_GROUP["session_timeout_ms"]),
            RLHF_KAFKA__HEARTBEAT_INTERVAL_MS=str(FAST_GROUP["heartbeat_interval_ms"]),
            RLHF_HTTP__HOST="127.0.0.1", RLHF_HTTP__PORT=str(port),
            RLHF_EVENT_LOGGER__TOPICS=json.dumps([topic.name]),
            RLHF_KAFKA__MAX_POLL_RECORDS="20",
            RLHF_EVENT_LOGGER__GROUP_ID=group_id,
        ),
    )
    try:
        assert wait_for(lambda: http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200, timeout_s=30)
        status, body = http_get(f"http://127.0.0.1:{port}/readyz")
        assert (status, json.loads(body)) == (200, {"status": "ok", "checks": {"kafka": True}})
        assert wait_for(lambda: sum(committed(kafka, group_id).values()) == 100, timeout_s=30), output_so_far(process)
        for event in events[100:]:
            producer.send(topic, event)
        producer.flush()
        time.sleep(0.05)  # let it be mid-stream
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        producer.close()
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "stopped cleanly" in output
    logged = [json.loads(line.split("rlhf.events: ", 1)[1]) for line in output.splitlines() if "rlhf.events: " in line]
    assert len(logged) >= 100
    per_partition: dict[int, list[int]] = {}
    for entry in logged:
        per_partition.setdefault(entry["partition"], []).append(entry["offset"])
    for offsets in per_partition.values():
        assert offsets == list(range(len(offsets))), "events were logged out of order or twice"
    # exactly the finished work is committed: nothing lost, nothing skipped
    expected = {p: len(per_partition.get(p, [])) for p in range(topic.partitions)}
    assert committed(kafka, group_id) == expected


def test_a_consumer_service_serves_metrics_on_their_own_port_when_asked(
        own_broker: EmbeddedBroker, group_id: str) -> None:
    port, metrics_port = free_port(), free_port()
    process = subprocess.Popen(
        [*CLI, "run", "event-logger"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=cli_env(RLHF_KAFKA__BOOTSTRAP_SERVERS=own_broker.bootstrap_servers, RLHF_HTTP__HOST="127.0.0.1",
                    RLHF_HTTP__PORT=str(port), RLHF_HTTP__METRICS_PORT=str(metrics_port),
                    RLHF_EVENT_LOGGER__GROUP_ID=group_id))
    try:
        assert wait_for(lambda: http_get(f"http://127.0.0.1:{metrics_port}/readyz")[0] == 200, timeout_s=30), \
            output_so_far(process)
        assert http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200  # probes stay on the main port
        assert http_get(f"http://127.0.0.1:{port}/metrics")[0] == 404
        status, body = http_get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and "rlhf_consumer_last_poll_timestamp_seconds" in body
        process.send_signal(signal.SIGTERM)
        output, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0 and "stopped cleanly" in output, output


def committed(kafka: KafkaSettings, group_id: str) -> dict[int, int]:
    return {p: v or 0 for p, v in committed_offsets(kafka, group_id, OUTPUTS.name, OUTPUTS.partitions).items()}


def output_so_far(process: subprocess.Popen[str]) -> str:
    process.kill()
    return process.communicate()[0]


def test_up_starts_broker_and_services_and_ctrl_c_stops_all(tmp_path: Path) -> None:
    base = free_port()
    process = subprocess.Popen(
        [*CLI, "up", "--only", "event-logger", "--data-dir", str(tmp_path), "--http-port-base", str(base),
         "--grace-seconds", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # a metrics port meant for one pod: `up` serves /metrics on each child's own port
        env=cli_env(RLHF_HTTP__METRICS_PORT=str(free_port())),
    )
    lines: list[str] = []
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            lines.append(line)
            if "Ctrl-C stops everything" in line or not line:
                break
        banner = "".join(lines)
        assert "rlhf-loop is up" in banner, banner
        assert f"http://127.0.0.1:{base}/metrics" in banner
        assert wait_for(lambda: http_get(f"http://127.0.0.1:{base}/healthz")[0] == 200, timeout_s=30)
        assert wait_for(lambda: http_get(f"http://127.0.0.1:{base}/readyz")[0] == 200, timeout_s=30)
        status, metrics = http_get(f"http://127.0.0.1:{base}/metrics")
        assert status == 200 and "rlhf_consumer_last_poll_timestamp_seconds" in metrics
        bootstrap = banner.split("RLHF_KAFKA__BOOTSTRAP_SERVERS=", 1)[1].split()[0]
        with_events = EventProducer(KafkaSettings(bootstrap_servers=bootstrap))
        with_events.publish(OUTPUTS, factories.model_output("through-up"))
        with_events.close()
        log_file = tmp_path / "logs" / "event-logger.log"
        assert wait_for(lambda: "through-up" in log_file.read_text() or
                        factories.model_output("through-up").output_id in log_file.read_text(), timeout_s=30)
        process.send_signal(signal.SIGINT)
        rest, _ = process.communicate(timeout=40)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, "".join(lines) + rest
    assert "rlhf-loop stopped." in rest
    assert "stopped cleanly" in (tmp_path / "logs" / "event-logger.log").read_text()


@pytest.mark.timeout(600)
def test_up_runs_the_whole_embedded_loop_with_a_real_chat_model_and_stops_it_cleanly(
        tmp_path: Path, real_models_dir: Path) -> None:
    """What `make up` runs: every default service (Argilla, Redis, SmolLM2-135M-Instruct
    included) comes up healthy, the demo's traffic is answered by the real model in
    real words, and Ctrl-C stops everything in order."""
    from services.catalog import EMBEDDED_LOOP

    base = free_port_block(len(EMBEDDED_LOOP))
    process = subprocess.Popen(
        [*CLI, "up", "--data-dir", str(tmp_path), "--http-port-base", str(base), "--grace-seconds", "10"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=cli_env(RLHF_MODELS_DIR=str(real_models_dir)),
    )
    policy = base + EMBEDDED_LOOP.index("policy-server")
    try:
        ports = [base + i for i in range(len(EMBEDDED_LOOP))]
        healthy = lambda: all(http_get(f"http://127.0.0.1:{p}/healthz")[0] == 200 for p in ports)  # noqa: E731
        assert wait_for(healthy, timeout_s=240, interval_s=1), {
            name: http_get(f"http://127.0.0.1:{p}/healthz")[0] for name, p in zip(EMBEDDED_LOOP, ports)}
        captured = lambda: 'rlhf_policy_captured_total{outcome="ok"}' in http_get(  # noqa: E731
            f"http://127.0.0.1:{policy}/metrics")[1]
        assert wait_for(captured, timeout_s=180, interval_s=2), "the demo's traffic was never answered"
        key = (tmp_path / "policy-server" / "api-key").read_text().strip()  # generated by `up`
        assert (tmp_path / "policy-server" / "api-key").stat().st_mode & 0o077 == 0  # owner-only
        anonymous = urllib.request.Request(f"http://127.0.0.1:{policy}/v1/models")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(anonymous, timeout=30)
        assert refused.value.code == 401
        request = urllib.request.Request(
            f"http://127.0.0.1:{policy}/v1/chat/completions", method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
            data=json.dumps({"model": "base", "max_tokens": 24, "temperature": 0, "store": False,
                                    "messages": [{"role": "user", "content": "What is the capital of France?"}]}).encode())
        with urllib.request.urlopen(request, timeout=120) as response:
            answer = json.loads(response.read())["choices"][0]["message"]["content"]
        words = [w for w in answer.split() if w.strip(".,!?'\"").isalpha()]
        assert len(words) >= 3 and "Paris" in answer, answer  # a real chat model, not byte noise
        process.send_signal(signal.SIGINT)
        output, _ = process.communicate(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 0, output
    assert "restarting in" not in output, output  # no service died on the way
    assert (real_models_dir / "smollm2-135m-instruct" / "config.json").is_file()
    assert "preparing SmolLM2" not in output  # prepared once, found again
    logs = {name: (tmp_path / "logs" / f"{name}.log").read_text() for name in EMBEDDED_LOOP}
    for name, text in logs.items():
        # (libraries may log a handled traceback while connections close; what counts
        # is that every service went through its own orderly shutdown)
        assert f"{name}: stopped cleanly" in text, f"{name} did not stop cleanly:\n{text[-3000:]}"


def test_a_second_ctrl_c_kills_everything_and_leaves_nothing_behind(tmp_path: Path) -> None:
    base = free_port()
    process, banner = start_up(["--only", "event-logger", "--data-dir", str(tmp_path), "--http-port-base", str(base),
                                "--grace-seconds", "30", "--status-interval", "0"])
    bootstrap = bootstrap_of(banner)
    assert wait_for(lambda: http_get(f"http://127.0.0.1:{base}/healthz")[0] == 200, timeout_s=30)
    process.send_signal(signal.SIGINT)
    time.sleep(0.2)
    process.send_signal(signal.SIGINT)  # impatient: no grace period
    process.communicate(timeout=30)
    assert process.returncode != 0
    host, port = bootstrap.rsplit(":", 1)
    assert wait_for(lambda: http_get(f"http://127.0.0.1:{base}/healthz")[0] == 0, timeout_s=10)
    import socket

    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=2).close()
