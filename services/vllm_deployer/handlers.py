"""model-update -> vLLM adapter calls. Idempotent: vLLM answers 400 "already loaded"
to a repeated load, which counts as done; an unreachable vLLM is a dependency outage
(the update waits and is retried, never dead-lettered)."""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import httpx
from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import DependencyUnavailable, Outgoing
from shared.contracts import Event, ModelUpdate

from .settings import VllmDeployerOptions

log = logging.getLogger(__name__)


class VllmDeployer:
    def __init__(self, options: VllmDeployerOptions, client: httpx.Client | None = None) -> None:
        if not options.base_urls:
            raise ValueError("vllm_deployer.base_urls: at least one vLLM server")
        self._options = options
        headers = {"Authorization": f"Bearer {options.api_key.get_secret_value()}"} if options.api_key else {}
        self._client = client or httpx.Client(timeout=options.timeout_s, headers=headers)
        self._loaded: deque[str] = deque()

    def handle(self, event: Event, record: ConsumerRecord) -> list[Outgoing]:
        assert isinstance(event, ModelUpdate)
        if event.action == "promoted":
            path = str(Path(self._options.adapter_root) / "policy" / event.model_version) \
                if self._options.adapter_root else (event.adapter_uri or "").removeprefix("file://")
            self._call_all("/v1/load_lora_adapter", {"lora_name": event.model_version, "lora_path": path},
                           done_if="already")
            if event.model_version not in self._loaded:
                self._loaded.append(event.model_version)
            while len(self._loaded) > self._options.keep_versions:
                self._unload(self._loaded.popleft())
        elif event.action == "rolled_back" and event.model_version in self._loaded:
            self._loaded.remove(event.model_version)
            self._unload(event.model_version)
        return []

    def _unload(self, version: str) -> None:
        self._call_all("/v1/unload_lora_adapter", {"lora_name": version}, done_if="not found")

    def _call_all(self, path: str, body: dict[str, str], done_if: str) -> None:
        for base in self._options.base_urls:
            try:
                response = self._client.post(base.rstrip("/") + path, json=body)
            except httpx.TransportError as error:
                raise DependencyUnavailable(f"vLLM at {base}: {error}") from error
            if response.status_code >= 500:
                raise DependencyUnavailable(f"vLLM at {base} answered {response.status_code}")
            if response.status_code >= 400 and done_if not in response.text.lower():
                response.raise_for_status()  # retried, then dead-lettered with vLLM's answer
            log.info("vLLM %s%s %s -> %s", base, path, body.get("lora_name"), response.status_code)
