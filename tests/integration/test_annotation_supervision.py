"""The annotation service with its own embedded Argilla, as `rlhf-loop up` runs it:
when the argilla-server process is killed (SIGKILL), readiness and the up gauge say so
at once, the embedded parts are restarted on their own, and collection resumes."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import argilla as rg
import httpx
import pytest

from services.annotation.schema import dataset_name
from services.annotation.service import main
from services.annotation.settings import AnnotationSettings
from services.demo.simulated_annotator import SimulatedAnnotator
from shared.bus import EventProducer
from shared.contracts import Preference
from shared.settings import KafkaSettings
from shared.topics import PREFERENCES, RANKING_TASKS
from tests.conftest import read_topic, wait_for

from .test_annotation import make_task, quality_oracle

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def server_pids(port: int) -> list[int]:
    """The argilla-server processes serving `port` (serve.py HOST PORT)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"serve.py") for a in argv) and str(port).encode() in argv:
            pids.append(int(entry.name))
    return pids


def test_argilla_killed_under_the_service_is_restarted_and_collection_resumes(
    kafka: KafkaSettings, tmp_path: Path,
) -> None:
    prefix = f"sup{int(time.time())}"
    settings = AnnotationSettings(
        kafka=kafka, data_dir=str(tmp_path), http={"host": "127.0.0.1", "port": 0},
        annotation={"dataset": prefix, "group_id": f"annotation-{prefix}", "poll_interval_s": 2},
    )
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    stop = threading.Event()
    service = threading.Thread(target=main, args=(stop, settings, registry), daemon=True)
    service.start()
    endpoint_file = tmp_path / "argilla" / "endpoint.json"
    producer = EventProducer(kafka)
    try:
        assert wait_for(endpoint_file.exists, timeout_s=180, interval_s=0.5), "embedded Argilla did not start"
        url = json.loads(endpoint_file.read_text())["url"]
        port = int(url.rsplit(":", 1)[1])
        users = json.loads((tmp_path / "argilla" / "credentials.json").read_text())
        owner = next(u for u in users if u["role"] == "owner")
        annotator = next(u for u in users if u["role"] == "annotator")
        up = lambda: registry.get_sample_value("rlhf_annotation_argilla_up")  # noqa: E731
        assert wait_for(lambda: up() == 1.0, timeout_s=30)

        def preferences_for(task_id: str) -> list[Preference]:
            return [p for p in (Preference.model_validate_json(r.value)
                                for r in read_topic(kafka, PREFERENCES.name, 100_000, timeout_s=1.0))
                    if p.task_id == task_id]

        def rank_all() -> int:
            client = rg.Argilla(api_url=url, api_key=owner["api_key"])
            dataset = client.datasets(name=dataset_name(prefix, 2), workspace="rlhf")
            if dataset is None:
                return 0
            with SimulatedAnnotator(url, annotator["username"], annotator["password"], quality_oracle) as person:
                return person.annotate(str(dataset.id))

        def ranked_and_collected(task_id: str) -> bool:
            """Rank whatever is pending (the shared topic may hold other tests' tasks too),
            then look for this task's preference."""
            rank_all()
            return len(preferences_for(task_id)) == 1

        before = make_task(f"{prefix}-before", [1, 5])
        producer.publish(RANKING_TASKS, before)
        assert wait_for(lambda: ranked_and_collected(before.task_id), timeout_s=90, interval_s=1)

        [pid] = server_pids(port)
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: up() == 0.0, timeout_s=15, interval_s=0.2), "the up gauge did not see Argilla die"
        after = make_task(f"{prefix}-after", [7, 2])
        producer.publish(RANKING_TASKS, after)  # arrives while Argilla is down

        assert wait_for(lambda: server_pids(port) not in ([], [pid]) and up() == 1.0, timeout_s=120, interval_s=0.5), \
            "embedded Argilla was not restarted"
        assert wait_for(lambda: ranked_and_collected(after.task_id), timeout_s=90, interval_s=1), \
            "collection did not resume"
        assert len(preferences_for(before.task_id)) == 1  # nothing doubled
        status = httpx.get(url + "/api/v1/status", headers={"X-Argilla-Api-Key": owner["api_key"]}, timeout=5)
        assert status.status_code == 200
    finally:
        producer.close()
        stop.set()
        service.join(60)
    assert not service.is_alive()
