"""The vLLM deployer on the real broker against a local stand-in of vLLM's LoRA API."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from services.vllm_deployer.handlers import VllmDeployer
from services.vllm_deployer.settings import VllmDeployerOptions
from shared.bus import DependencyUnavailable, EventProducer
from shared.contracts import ModelUpdate, model_update_id_for
from shared.embedded.ports import free_port
from shared.settings import KafkaSettings
from shared.topics import Topic
from tests.conftest import LoopThread, wait_for
from tests.helpers.openai_stub import serve
from tests.helpers.vllm_stub import create_vllm_stub

pytestmark = pytest.mark.integration


def promoted(version: str) -> ModelUpdate:
    return ModelUpdate(event_id=model_update_id_for(version, "promoted"), model_version=version, action="promoted",
                       base_model="smollm2", adapter_uri=f"file:///registry/policy/{version}")


def test_promotions_load_adapters_keep_the_newest_and_redelivery_is_harmless(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str, producer: EventProducer,
    start_loop: Callable[..., LoopThread],
) -> None:
    stub = create_vllm_stub()
    topic = make_topic(ModelUpdate)
    with serve(stub) as base_v1:
        base = base_v1.removesuffix("/v1")
        deployer = VllmDeployer(VllmDeployerOptions(base_urls=[base], adapter_root="/mnt/registry", keep_versions=2))
        runner = start_loop([topic], group_id, deployer.handle)
        for version in ["policy-v0001", "policy-v0002", "policy-v0002", "policy-v0003"]:
            producer.send(topic, promoted(version))
        producer.flush()
        assert wait_for(lambda: stub.state.calls.count(("load", "policy-v0003")) == 1)
        runner.join()
    assert stub.state.loaded == {"policy-v0002": "/mnt/registry/policy/policy-v0002",
                                 "policy-v0003": "/mnt/registry/policy/policy-v0003"}
    assert ("unload", "policy-v0001") in stub.state.calls


def test_unreachable_vllm_is_a_dependency_outage() -> None:
    deployer = VllmDeployer(VllmDeployerOptions(base_urls=[f"http://127.0.0.1:{free_port()}"], timeout_s=1))
    with pytest.raises(DependencyUnavailable):
        deployer.handle(promoted("policy-v0001"), None)  # type: ignore[arg-type]
