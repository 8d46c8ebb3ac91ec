"""model-update -> vLLM adapter calls.

Idempotent by vLLM's status codes, not its wording: a repeated load is a 400 that says
the adapter is loaded already (done), unloading an adapter vLLM does not have is a 404
(done); an unreachable vLLM or a 5xx is a dependency outage (the update waits and is
retried, never dead-lettered). Which adapters are loaded is read back from vLLM's
`/v1/models` before the first update, so a restarted deployer still prunes the oldest.
`graduated` (the canary takes all traffic) needs nothing from vLLM: the adapter is
loaded since its promotion and stays so.
"""

from __future__ import annotations

import logging
from collections import deque
from pathlib import Path

import httpx
from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import DependencyUnavailable, Outgoing, PoisonMessage
from shared.contracts import Event, ModelUpdate
from shared.registry_reader import version_number

from .settings import VllmDeployerOptions

log = logging.getLogger(__name__)


class VllmDeployer:
    def __init__(self, options: VllmDeployerOptions, client: httpx.Client | None = None) -> None:
        if not options.base_urls:
            raise ValueError("vllm_deployer.base_urls: at least one vLLM server")
        self._options = options
        headers = {"Authorization": f"Bearer {options.api_key.get_secret_value()}"} if options.api_key else {}
        self._client = client or httpx.Client(timeout=options.timeout_s, headers=headers)
        self._loaded: deque[str] | None = None  # oldest first; read from vLLM when first needed

    def handle(self, event: Event, record: ConsumerRecord) -> list[Outgoing]:
        assert isinstance(event, ModelUpdate)
        if version_number("policy", event.model_version) is None:
            raise PoisonMessage(f"model_version: {event.model_version!r} is not a registry version name")
        loaded = self._loaded_versions()
        if event.action == "promoted":
            path = str(Path(self._options.adapter_root) / "policy" / event.model_version) \
                if self._options.adapter_root else (event.adapter_uri or "").removeprefix("file://")
            self._call_all("/v1/load_lora_adapter", {"lora_name": event.model_version, "lora_path": path})
            if event.model_version not in loaded:
                loaded.append(event.model_version)
            while len(loaded) > self._options.keep_versions:
                self._call_all("/v1/unload_lora_adapter", {"lora_name": loaded[0]})
                loaded.popleft()
        elif event.action == "graduated":
            # vLLM serves every loaded adapter under its own name; which one takes the
            # traffic is the router's choice, not vLLM's: nothing to load, and the
            # graduated adapter stays loaded (it is the one being served now).
            log.info("%s graduated: adapter stays loaded", event.model_version)
        elif event.action == "rolled_back" and event.model_version in loaded:
            self._call_all("/v1/unload_lora_adapter", {"lora_name": event.model_version})
            loaded.remove(event.model_version)
        return []

    def _loaded_versions(self) -> deque[str]:
        """Our adapters loaded on every server (a restart forgets nothing), oldest first."""
        if self._loaded is None:
            names: set[str] = set()
            for base in self._options.base_urls:
                models = self._request("GET", base, "/v1/models").json().get("data") or []
                names |= {str(m.get("id")) for m in models
                          if m.get("parent") and version_number("policy", str(m.get("id"))) is not None}
            self._loaded = deque(sorted(names, key=lambda v: version_number("policy", v) or 0))
            log.info("vLLM has these policy adapters loaded: %s", list(self._loaded) or "none")
        return self._loaded

    def _call_all(self, path: str, body: dict[str, str]) -> None:
        for base in self._options.base_urls:
            response = self._request("POST", base, path, json=body)
            if response.status_code >= 400 and not _already_done(path, response):
                response.raise_for_status()  # retried, then dead-lettered with vLLM's answer
            log.info("vLLM %s%s %s -> %s", base, path, body.get("lora_name"), response.status_code)

    def _request(self, method: str, base: str, path: str, **kwargs: object) -> httpx.Response:
        try:
            response = self._client.request(method, base.rstrip("/") + path, **kwargs)  # type: ignore[arg-type]
        except httpx.TransportError as error:
            raise DependencyUnavailable(f"vLLM at {base}: {error}") from error
        if response.status_code >= 500:
            raise DependencyUnavailable(f"vLLM at {base} answered {response.status_code}")
        return response


def _already_done(path: str, response: httpx.Response) -> bool:
    """vLLM's answers that mean the call's effect is already there."""
    if path.endswith("/unload_lora_adapter"):
        # 404 since vLLM 0.8 ("cannot be found", NotFoundError); older ones said so with a 400
        return response.status_code == 404 or (response.status_code == 400 and "cannot be found" in response.text)
    return response.status_code == 400 and "already been loaded" in response.text
