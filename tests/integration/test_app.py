"""The App every service is declared on (shared/app.py), against the embedded broker:
it creates what its consumers read and write (dead-letter topics included), serves
routes beside the probes on one HTTP stack (metrics and a route set on ports of their
own when asked), runs periodic jobs and workers, and closes what it owns in reverse
order, the producer last, when `stop` is set."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import APIRouter

from shared.app import App
from shared.bus import EventProducer, Outgoing
from shared.bus.admin import list_topics
from shared.contracts import ModelOutput
from shared.settings import KafkaSettings, ServiceSettings
from shared.topics import Topic, dead_letter_topic
from tests import factories
from tests.conftest import read_topic, wait_for

pytestmark = pytest.mark.integration


class Closable:
    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    def close(self) -> None:
        self.log.append(self.name)


def start(app_main: Callable[[threading.Event], None]) -> tuple[threading.Thread, threading.Event]:
    stop = threading.Event()
    thread = threading.Thread(target=app_main, args=(stop,), daemon=True)
    thread.start()
    return thread, stop


def test_an_app_declares_serves_schedules_and_closes_in_reverse(
        kafka: KafkaSettings, make_topic: Callable[..., Topic], tmp_path: Path) -> None:
    source, sink = make_topic(ModelOutput, 2), make_topic(ModelOutput)
    group = f"app-test-{source.name}"
    settings = ServiceSettings(kafka=kafka, data_dir=str(tmp_path), http={"host": "127.0.0.1", "port": 0,
                                                                          "metrics_port": 0})
    closed: list[str] = []
    ticks: list[int] = []
    seen: list[str] = []
    started = threading.Event()
    ports: dict[str, Any] = {}
    router = APIRouter()

    @router.get("/v1/hello")
    def hello() -> dict[str, str]:
        return {"hello": "world"}

    side = APIRouter()

    @side.post("/hooks")
    def hook() -> dict[str, bool]:
        return {"ok": True}

    def handle(event: Any, _record: Any) -> list[Any]:
        seen.append(event.output_id)
        return [Outgoing(sink, event)]

    def worker(stop: threading.Event) -> None:
        stop.wait()
        closed.append("worker-saw-stop")

    def main(stop: threading.Event) -> None:
        def on_started(app: App) -> None:
            ports.update(http=app.http_port, metrics=app.metrics_port, side=side_listener.port, app=app)
            started.set()

        with App("app-test", settings, on_started=on_started) as app:
            app.own(Closable("first", closed))
            app.on_stop(closed.append, "second")
            app.add_consumer([source], handle, group_id=group, produces=[sink])
            app.add_periodic("tick", 3600, lambda: ticks.append(1), run_at_start=True)
            app.add_routes(router)
            side_listener = app.add_routes(side, host="127.0.0.1", port=0)
            app.add_worker("waiter", worker)
            app.run(stop)
        closed.append("after-exit")

    thread, stop = start(main)
    assert started.wait(60)
    app: App = ports["app"]
    # the topology, dead-letter topic included, exists on the broker
    existing = set(list_topics(kafka))
    assert {source.name, sink.name, dead_letter_topic(group)} <= existing
    assert dict(app.topology())[source.name] == 2
    # one consumer: records in, the handler's records out
    producer = EventProducer(kafka)
    outputs = [factories.model_output(f"app-{i}") for i in range(3)]
    for output in outputs:
        producer.send(source, output)
    producer.flush()
    producer.close()
    assert len(read_topic(kafka, sink.name, expected=3, timeout_s=30)) == 3
    assert sorted(seen) == sorted(o.output_id for o in outputs)
    # periodic: at start, then brought forward on demand
    assert wait_for(lambda: len(ticks) == 1, timeout_s=10)
    app.run_soon("tick")
    assert wait_for(lambda: len(ticks) == 2, timeout_s=10)
    with httpx.Client(timeout=10) as http:
        main_url, metrics_url = f"http://127.0.0.1:{ports['http']}", f"http://127.0.0.1:{ports['metrics']}"
        assert ports["metrics"] != ports["http"]
        assert http.get(f"{main_url}/v1/hello").json() == {"hello": "world"}
        health = http.get(f"{main_url}/healthz").json()
        assert health["status"] == "ok" and {f"consumer:{group}", "http", "worker:waiter"} <= set(health["checks"])
        assert http.get(f"{main_url}/readyz").json()["checks"] == {"kafka": True}
        assert http.get(f"{main_url}/metrics").status_code == 404  # metrics have their own port
        metrics = http.get(f"{metrics_url}/metrics").text
        assert f'rlhf_messages_consumed_total{{group="{group}",topic="{source.name}"}} 3.0' in metrics
        assert http.get(f"{metrics_url}/v1/hello").status_code == 404  # and only metrics there
        assert http.post(f"http://127.0.0.1:{ports['side']}/hooks").json() == {"ok": True}
        assert http.get(f"{main_url}/hooks").status_code in (404, 405)  # the side routes only on their port
    stop.set()
    thread.join(60)
    assert not thread.is_alive()
    # the worker saw stop; what the service owned closed in reverse order of ownership
    assert closed == ["worker-saw-stop", "second", "first", "after-exit"]
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{ports['http']}/healthz", timeout=2)


def test_an_app_must_be_entered_before_it_runs(tmp_path: Path) -> None:
    app = App("not-entered", ServiceSettings(data_dir=str(tmp_path)))
    with pytest.raises(RuntimeError, match="context manager"):
        app.run(threading.Event())


@pytest.mark.parametrize("freeze", [True, False])
def test_an_app_freezes_its_start_up_heap_out_of_full_collections_unless_told_not_to(
        tmp_path: Path, freeze: bool) -> None:
    """RLHF_GC_FREEZE (default on; the suite turns it off, see conftest): once built,
    the service's heap goes to the collector's permanent generation, so full passes
    no longer walk it (shared/lifecycle.freeze_heap)."""
    settings = ServiceSettings(data_dir=str(tmp_path), gc_freeze=freeze, http={"host": "127.0.0.1", "port": 0})
    frozen: list[int] = []
    started = threading.Event()

    def main(stop: threading.Event) -> None:
        def on_started(_app: App) -> None:
            frozen.append(gc.get_freeze_count())
            started.set()

        with App("gc-test", settings, kafka=False, on_started=on_started) as app:
            app.run(stop)

    gc.unfreeze()
    thread, stop = start(main)
    try:
        assert started.wait(30)
        if freeze:
            assert frozen[0] > 10_000  # modules, schemas, clients: the whole start-up heap
        else:
            assert frozen == [0]
    finally:
        stop.set()
        thread.join(30)
        gc.unfreeze()
    assert not thread.is_alive()
