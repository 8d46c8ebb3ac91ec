"""The `up` supervisor's own duties, against the real embedded broker."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from services.supervisor import Supervisor
from shared.bus.admin import list_topics
from shared.embedded.ports import free_port
from shared.settings import KafkaSettings
from shared.topics import OUTPUTS
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def test_a_broker_that_dies_is_restarted_on_the_same_port_with_the_loops_topics(tmp_path: Path) -> None:
    supervisor = Supervisor([], data_dir=tmp_path, http_port_base=free_port(), broker_port=0, grace_s=1)
    stop = threading.Event()
    ready = threading.Event()
    runner = threading.Thread(target=supervisor.run, args=(stop,), kwargs={"on_ready": lambda _s: ready.set()},
                              daemon=True)
    runner.start()
    try:
        assert ready.wait(30)
        address = supervisor.bootstrap_servers
        pid = supervisor._broker.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: supervisor.broker_restarts == 1, timeout_s=30)
        assert supervisor.bootstrap_servers == address
        assert supervisor._broker.pid != pid
        assert OUTPUTS.name in list_topics(KafkaSettings(bootstrap_servers=address))
    finally:
        stop.set()
        runner.join(30)
    assert not runner.is_alive()
