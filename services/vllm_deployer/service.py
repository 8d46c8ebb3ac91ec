"""Wiring only."""

from __future__ import annotations

import threading

from services.runner import ConsumerSpec, run_consumer_service
from shared.topics import MODEL_UPDATES

from .handlers import VllmDeployer
from .settings import VllmDeployerSettings


def main(stop: threading.Event) -> None:
    settings = VllmDeployerSettings()
    deployer = VllmDeployer(settings.vllm_deployer)
    spec = ConsumerSpec(name="vllm-deployer", group_id=settings.vllm_deployer.group_id,
                        topics=[MODEL_UPDATES], handler=deployer.handle)
    run_consumer_service(spec, settings, stop)
