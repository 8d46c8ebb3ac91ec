"""The vLLM deployer: model updates in, LoRA adapters loaded into vLLM servers."""

from __future__ import annotations

import threading

from shared.app import App
from shared.topics import MODEL_UPDATES

from .handlers import VllmDeployer
from .settings import VllmDeployerSettings


def main(stop: threading.Event) -> None:
    settings = VllmDeployerSettings()
    with App("vllm-deployer", settings) as app:
        deployer = VllmDeployer(settings.vllm_deployer)
        app.add_consumer([MODEL_UPDATES], deployer.handle, group_id=settings.vllm_deployer.group_id)
        app.run(stop)
