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


def test_a_restarted_deployer_reads_what_vllm_has_loaded_and_still_prunes_the_oldest(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str, producer: EventProducer,
    start_loop: Callable[..., LoopThread],
) -> None:
    """vLLM kept v1 and v2 loaded while the deployer restarted; its 404 for an adapter
    it does not have says so in words the deployer never looks for."""
    stub = create_vllm_stub(loaded={"policy-v0001": "/r/policy-v0001", "policy-v0002": "/r/policy-v0002"},
                            unknown_unload_text='{"object": "error", "type": "NotFoundError", "code": 404}')
    topic = make_topic(ModelUpdate)
    with serve(stub) as base_v1:
        base = base_v1.removesuffix("/v1")
        deployer = VllmDeployer(VllmDeployerOptions(base_urls=[base], adapter_root="/r", keep_versions=2))
        runner = start_loop([topic], group_id, deployer.handle)
        producer.send(topic, promoted("policy-v0003"))
        rolled_back = ModelUpdate(event_id=model_update_id_for("policy-v0009", "rolled_back"),
                                  model_version="policy-v0009", action="rolled_back", base_model="smollm2")
        producer.send(topic, rolled_back)  # not loaded: nothing to unload, no error
        producer.send(topic, promoted("policy-v0003"))  # redelivered: vLLM's 400 "already loaded"
        producer.flush()
        assert wait_for(lambda: stub.state.calls.count(("load", "policy-v0003")) == 2)
        runner.join()
    assert sorted(stub.state.loaded) == ["policy-v0002", "policy-v0003"]
    assert ("unload", "policy-v0001") in stub.state.calls
    assert runner.metric("rlhf_messages_dead_lettered_total", topic=topic.name, group=group_id,
                         reason="retries_exhausted") == 0


def test_unloading_an_adapter_vllm_no_longer_has_is_done_whatever_its_404_says() -> None:
    stub = create_vllm_stub(unknown_unload_text="Not Found")
    with serve(stub) as base_v1:
        deployer = VllmDeployer(VllmDeployerOptions(base_urls=[base_v1.removesuffix("/v1")], keep_versions=1))
        deployer.handle(promoted("policy-v0001"), None)  # type: ignore[arg-type]
        stub.state.loaded.clear()  # vLLM restarted and lost it
        deployer.handle(promoted("policy-v0002"), None)  # prunes v1: a 404 "Not Found" is done
    assert ("unload", "policy-v0001") in stub.state.calls


def test_graduation_keeps_the_adapter_loaded_and_calls_nothing(
    kafka: KafkaSettings, make_topic: Callable[..., Topic], group_id: str, producer: EventProducer,
    start_loop: Callable[..., LoopThread],
) -> None:
    """`graduated` (the canary judge's decision) moves traffic in the router, not in
    vLLM: accepted, never dead-lettered, the adapter stays loaded, redelivery too."""
    stub = create_vllm_stub()
    topic = make_topic(ModelUpdate)
    graduated = ModelUpdate(event_id=model_update_id_for("policy-v0002", "graduated"), model_version="policy-v0002",
                            action="graduated", base_model="smollm2", previous_version="policy-v0001",
                            adapter_uri="file:///registry/policy/policy-v0002")
    with serve(stub) as base_v1:
        deployer = VllmDeployer(VllmDeployerOptions(base_urls=[base_v1.removesuffix("/v1")], adapter_root="/r",
                                                    keep_versions=2))
        runner = start_loop([topic], group_id, deployer.handle)
        for event in [promoted("policy-v0001"), promoted("policy-v0002"), graduated, graduated,
                      promoted("policy-v0003")]:
            producer.send(topic, event)
        producer.flush()
        assert wait_for(lambda: ("load", "policy-v0003") in stub.state.calls)
        runner.join()
    assert stub.state.calls == [("load", "policy-v0001"), ("load", "policy-v0002"), ("load", "policy-v0003"),
                                ("unload", "policy-v0001")]
    assert sorted(stub.state.loaded) == ["policy-v0002", "policy-v0003"]
    for reason in ("poison", "retries_exhausted"):
        assert runner.metric("rlhf_messages_dead_lettered_total", topic=topic.name, group=group_id,
                             reason=reason) == 0
