"""The policy server with real tiny models, real LoRA adapters, the real broker and the
`openai` SDK as the client."""

from __future__ import annotations

import shutil
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import openai
import pytest
from prometheus_client import CollectorRegistry

from services.policy_server.api import create_app
from services.policy_server.metrics import PolicyServerMetrics
from services.policy_server.models import BASE_VERSION, PolicyPool
from services.policy_server.routing import Router
from services.policy_server.versions import VersionManager
from services.trainer.registry import ModelRegistry
from services.trainer.tiny_models import build_tiny_policy
from shared.bus import EventProducer, PoisonMessage
from shared.contracts import ModelOutput, ModelUpdate, model_update_id_for
from shared.settings import KafkaSettings
from shared.topics import OUTPUTS
from tests.conftest import read_topic
from tests.helpers.openai_stub import serve

pytestmark = pytest.mark.integration


VERSIONS = ["policy-v0001", "policy-v0002", "policy-v0003"]


@pytest.fixture(scope="module")
def policy_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base policy and three different LoRA adapters, built once per module."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("policy")
    base = build_tiny_policy(root / "base")
    for seed, version in enumerate(VERSIONS):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False, task_type="CAUSAL_LM"))
        model.save_pretrained(root / "adapters" / version)
    return root


@pytest.fixture
def registry_dir(policy_models: Path, tmp_path: Path) -> Path:
    """The trainer's registry, fresh per test (pointers and rollbacks change it): the
    adapters published as policy-v0001..3, each the parent of the next; nothing promoted."""
    registry = ModelRegistry(tmp_path / "registry")
    parent = None
    for version in VERSIONS:
        staged = registry.staging(f"run-{version}", "policy")
        shutil.copytree(policy_models / "adapters" / version, staged, dirs_exist_ok=True)
        assert registry.publish("policy", staged, {"parent_version": parent}) == version
        parent = version
    (registry.root / "base").symlink_to(policy_models / "base")
    return registry.root


def update(version: str, action: str, fraction: float = 1.0, previous: str | None = None,
           adapter_uri: str | None = None) -> ModelUpdate:
    return ModelUpdate(event_id=model_update_id_for(version, action), model_version=version, action=action,  # type: ignore[arg-type]
                       base_model="tiny", canary_fraction=fraction, previous_version=previous,
                       adapter_uri=adapter_uri)


class Clock:
    """The router's clock, moved by the test: graduation timers without waiting."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Server:
    def __init__(self, registry_dir: Path, kafka: KafkaSettings | None, seed: int = 7,
                 graduate_after_s: float = 0, clock: Clock | None = None, ab_share: float = 0.0,
                 max_batch_size: int = 8, batch_window_ms: float = 5.0, **versions: Any) -> None:
        self.registry = CollectorRegistry()
        self.metrics = PolicyServerMetrics(self.registry)
        self.model_registry = ModelRegistry(registry_dir)
        self.pool = PolicyPool(registry_dir / "base", max_batch_size=max_batch_size, batch_window_ms=batch_window_ms,
                               on_batch=self.metrics.observe_batch)
        self.router = Router(seed=seed, clock=clock or Clock())
        self.versions = VersionManager(self.pool, self.router, registry_dir, self.metrics, "hi", graduate_after_s,
                                       **versions)
        self.producer = EventProducer(kafka) if kafka else None
        self.app = create_app(pool=self.pool, router=self.router, metrics=self.metrics, registry=self.registry,
                              served_model_name="rlhf-policy", max_tokens_default=8, max_tokens_limit=32, max_n=5,
                              producer=self.producer, readiness={}, ab_share=ab_share, ab_seed=seed)

    def apply(self, event: ModelUpdate) -> None:
        self.versions.handle(event, None)  # type: ignore[arg-type]

    def promote(self, version: str, fraction: float = 1.0) -> None:
        """What the trainer does: move the promoted pointer, then announce it."""
        self.model_registry.set_pointer("policy", "promoted", version)
        self.apply(update(version, "promoted", fraction))

    def roll_back(self, version: str) -> None:
        """What the trainer does: mark it rolled back (the pointer returns), then announce it."""
        previous = self.model_registry.rollback("policy", version)
        self.apply(update(version, "rolled_back", previous=previous))

    def metric(self, name: str, **labels: str) -> float:
        return self.registry.get_sample_value(name, labels) or 0.0


def test_openai_sdk_non_streaming_and_streaming_with_capture(registry_dir: Path, kafka: KafkaSettings) -> None:
    server = Server(registry_dir, kafka)
    server.promote("policy-v0001", 1.0)
    with serve(server.app) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused")
        reply = client.chat.completions.create(model="rlhf-policy", n=2, max_tokens=6, seed=1,
                                               messages=[{"role": "user", "content": "how do I reset my password?"}])
        assert len(reply.choices) == 2 and reply.system_fingerprint == "policy-v0001"
        stream = client.chat.completions.create(model="rlhf-policy", max_tokens=6, stream=True, temperature=0,
                                                messages=[{"role": "user", "content": "hello there"}])
        chunks = list(stream)
        greedy = client.chat.completions.create(model="rlhf-policy", max_tokens=6, temperature=0,
                                                messages=[{"role": "user", "content": "hello there"}])
        two = list(client.chat.completions.create(model="rlhf-policy", max_tokens=6, stream=True, n=2,
                                                  messages=[{"role": "user", "content": "hello there"}]))
        models = client.models.list()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    content_chunks = [c for c in chunks if c.choices[0].delta.content]
    assert len(content_chunks) >= 2, "streamed in one piece, not as generated"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed == greedy.choices[0].message.content  # same tokens, streamed or not
    assert {c.choices[0].index for c in two} == {0, 1}
    assert {m.id for m in models.data} >= {"rlhf-policy", BASE_VERSION, "policy-v0001"}
    server.producer.flush()  # type: ignore[union-attr]
    captured = [ModelOutput.model_validate_json(r.value) for r in read_topic(kafka, OUTPUTS.name, expected=10_000,
                                                                               timeout_s=3)]
    mine = [o for o in captured if o.client_request_id == reply.id]
    assert len(mine) == 1
    [streamed_capture] = [o for o in captured if o.client_request_id == chunks[0].id]
    assert streamed_capture.candidates[0].text == streamed
    assert [c.text for c in mine[0].candidates] == [c.message.content for c in reply.choices]
    assert {c.model.version for c in mine[0].candidates} == {"policy-v0001"}
    assert mine[0].source == "policy_server"
    server.producer.close()  # type: ignore[union-attr]


def test_canary_split_within_tolerance_and_rollback(registry_dir: Path) -> None:
    server = Server(registry_dir, None, seed=42)
    server.promote("policy-v0001", 1.0)
    server.promote("policy-v0002", 0.25)
    assert server.router.shares() == {"policy-v0001": 0.75, "policy-v0002": 0.25}
    picks = Counter(server.router.choose() for _ in range(4000))
    assert abs(picks["policy-v0002"] / 4000 - 0.25) < 0.03
    assert server.registry.get_sample_value("rlhf_policy_traffic_share", {"version": "policy-v0002"}) == 0.25
    server.roll_back("policy-v0002")
    assert server.router.shares() == {"policy-v0001": 1.0}
    assert server.registry.get_sample_value("rlhf_model_rollbacks_total", {"reason": "event"}) == 1
    assert "policy-v0002" not in server.pool.versions  # unloaded


def test_reload_under_concurrent_requests_drops_nothing(registry_dir: Path) -> None:
    server = Server(registry_dir, None)
    errors: list[BaseException] = []
    served: Counter[str] = Counter()
    with serve(server.app) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                try:
                    reply = client.chat.completions.create(model="rlhf-policy", max_tokens=4,
                                                           messages=[{"role": "user", "content": "hi"}])
                    served[reply.system_fingerprint or "?"] += 1
                except BaseException as error:  # noqa: BLE001 - collected and asserted below
                    errors.append(error)

        workers = [threading.Thread(target=hammer) for _ in range(4)]
        for worker in workers:
            worker.start()
        server.promote("policy-v0001", 1.0)
        server.promote("policy-v0002", 0.5)
        server.roll_back("policy-v0002")
        server.promote("policy-v0003", 1.0)
        stop.set()
        for worker in workers:
            worker.join(30)
    assert errors == []
    assert sum(served.values()) > 0


def test_promotion_of_a_missing_adapter_is_poison(registry_dir: Path) -> None:
    server = Server(registry_dir, None)
    with pytest.raises(PoisonMessage, match="no adapter"):
        server.apply(update("policy-v0099", "promoted"))
    assert server.router.shares() == {BASE_VERSION: 1.0}


def test_unknown_model_is_404_and_too_many_choices_400(registry_dir: Path) -> None:
    server = Server(registry_dir, None)
    with serve(server.app) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="gpt-9", messages=[{"role": "user", "content": "hi"}])
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="rlhf-policy", n=9, messages=[{"role": "user", "content": "hi"}])


def test_measurement_traffic_is_served_never_captured_and_the_probe_reports_it(registry_dir: Path,
                                                                               kafka: KafkaSettings) -> None:
    """The demo's win-rate probe asks pinned versions with store=false: answered, not captured."""
    from services.demo.evaluator import ServedPolicyProbe
    from services.demo.metrics import DemoMetrics
    from services.demo.oracles import prefer_longer
    from services.demo.settings import DemoOptions

    server = Server(registry_dir, kafka)
    server.promote("policy-v0001", 1.0)
    prompts = [[{"role": "user", "content": f"held-out question {i}"}] for i in range(6)]
    demo_registry = CollectorRegistry()
    with serve(server.app) as base_url:
        probe = ServedPolicyProbe(DemoOptions(policy_url=base_url, eval_prompts=6, max_tokens=6, temperature=1.0),
                                  prefer_longer, prompts, DemoMetrics(demo_registry))
        assert probe.served_version() == "policy-v0001"
        stop = threading.Event()
        assert probe.scores("base", stop, deadline=time.monotonic() - 1) == []  # a step past its deadline
        first = probe.scores("base", stop)
        assert first is not None and probe.scores("base", stop, done=first[:2]) == first  # continues where it was
        comparison = probe.measure("policy-v0001", stop)
        again = probe.measure("policy-v0001", stop)
    assert comparison is not None and comparison.n == 6 and again == comparison  # seeded: the same answers again
    assert server.registry.get_sample_value("rlhf_policy_captured_total", {"outcome": "not_stored"}) == 18 + 10
    assert server.registry.get_sample_value("rlhf_policy_captured_total", {"outcome": "ok"}) == 0  # never counted
    assert server.registry.get_sample_value("rlhf_policy_requests_total", {"version": "base", "status": "ok"}) == 6 + 10
    assert demo_registry.get_sample_value("rlhf_demo_win_rate_vs_base", {"version": "policy-v0001"}) == \
        comparison.win_rate
    assert demo_registry.get_sample_value("rlhf_demo_win_rate_prompts", {"version": "policy-v0001"}) == 6
    server.producer.flush()  # type: ignore[union-attr]
    captured = [ModelOutput.model_validate_json(r.value) for r in read_topic(kafka, OUTPUTS.name, expected=10_000,
                                                                               timeout_s=3)]
    assert not [o for o in captured if o.conversation[0].content.startswith("held-out question")]
    server.producer.close()  # type: ignore[union-attr]


def test_closing_the_pool_stops_generation_in_flight_and_refuses_new_requests_with_503(registry_dir: Path) -> None:
    """Shutdown must not wait for generation it cannot cancel: a stream in progress stops
    at its next token (an error, never a cut answer passed off as complete), a request
    waiting for the model is refused, and the HTTP API answers 503 with Retry-After."""
    from services.policy_server.models import ShuttingDown

    server = Server(registry_dir, None)
    pool = server.pool
    hello = [{"role": "user", "content": "tell me a long story"}]
    deltas, result = pool.stream(hello, BASE_VERSION, max_tokens=400, temperature=1.0, top_p=1.0, seed=3)
    next(deltas)  # generating now
    waiting: list[BaseException] = []

    def queued() -> None:
        try:
            pool.generate(hello, BASE_VERSION, n=1, max_tokens=400, temperature=1.0, top_p=1.0)
        except BaseException as error:  # noqa: BLE001 - recorded for the assertion
            waiting.append(error)

    behind = threading.Thread(target=queued)
    behind.start()
    pool.close()
    with pytest.raises(ShuttingDown):
        list(deltas)
    behind.join(10)
    assert not behind.is_alive() and len(waiting) == 1 and isinstance(waiting[0], ShuttingDown)
    assert result.completion_tokens < 400
    with serve(server.app) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError) as refused:
            client.chat.completions.create(model="rlhf-policy", messages=hello, max_tokens=8)
    assert refused.value.status_code == 503 and refused.value.response.headers["retry-after"] == "1"
    assert server.registry.get_sample_value("rlhf_policy_requests_total",
                                            {"version": "base", "status": "shutting_down"}) == 1


# -- the registry is the truth, events are hints ------------------------------------------


def test_a_new_replica_replaying_every_promotion_serves_only_the_registrys_promoted_version(
        registry_dir: Path) -> None:
    """A new pod's own group starts from the earliest offset and replays every retained
    promotion: none of the older versions may become canary or stable, not even once
    the graduation timer has run out."""
    clock = Clock()
    server = Server(registry_dir, None, graduate_after_s=30, clock=clock)
    server.model_registry.set_pointer("policy", "promoted", "policy-v0003")
    server.versions.start_from_registry()
    seen = [server.router.routes]
    for version in VERSIONS:  # the retained history, oldest first
        server.apply(update(version, "promoted", 0.25))
        seen.append(server.router.routes)
        clock.now += 60
        server.versions.tick()
        seen.append(server.router.routes)
    assert {(r.stable, r.canary) for r in seen} == {("policy-v0003", None)}
    assert server.router.shares() == {"policy-v0003": 1.0}
    assert not {"policy-v0001", "policy-v0002"} & set(server.pool.versions)  # never even loaded
    assert server.metric("rlhf_policy_promotions_ignored_total", reason="not_promoted") == 2


def test_a_replayed_rollback_or_promotion_of_a_rolled_back_version_changes_nothing(registry_dir: Path) -> None:
    clock = Clock()
    server = Server(registry_dir, None, graduate_after_s=30, clock=clock)
    server.model_registry.set_pointer("policy", "promoted", "policy-v0003")
    server.model_registry.rollback("policy", "policy-v0002")  # an earlier rollback: v0003 is promoted since
    server.versions.start_from_registry()
    for event in [update("policy-v0001", "promoted"), update("policy-v0002", "promoted", 0.5),
                  update("policy-v0002", "rolled_back", previous="policy-v0001"), update("policy-v0003", "promoted")]:
        server.apply(event)
        clock.now += 60
        server.versions.tick()
        assert server.router.shares() == {"policy-v0003": 1.0}, event
    assert "policy-v0002" not in server.pool.versions


def test_reconciliation_on_tick_starts_a_promotion_whose_event_never_came_as_a_canary(registry_dir: Path) -> None:
    clock = Clock()
    server = Server(registry_dir, None, graduate_after_s=30, clock=clock, canary_fraction=0.25)
    server.promote("policy-v0001")
    server.model_registry.set_pointer("policy", "promoted", "policy-v0002")  # the event was lost
    server.versions.tick()
    assert server.router.shares() == {"policy-v0001": 1.0}  # its event may still be on the way
    server.versions.tick()
    assert server.router.shares() == {"policy-v0001": 0.75, "policy-v0002": 0.25}
    assert server.registry.get_sample_value("rlhf_policy_traffic_share", {"version": "policy-v0002"}) == 0.25
    clock.now += 31
    server.versions.tick()
    assert server.router.shares() == {"policy-v0002": 1.0}  # a healthy canary graduates as usual
    server.apply(update("policy-v0002", "promoted", 0.25))  # the late event changes nothing
    assert server.router.shares() == {"policy-v0002": 1.0}


def test_a_corrupt_promoted_adapter_at_start_falls_back_along_its_parents(registry_dir: Path) -> None:
    """v0003 cannot load (its weights are garbage), v0002 has lost its config: the
    replica serves v0001, its grandparent, instead of crash-looping."""
    registry = ModelRegistry(registry_dir)
    (registry.path("policy", "policy-v0003") / "adapter_model.safetensors").write_bytes(b"not safetensors" * 64)
    (registry.path("policy", "policy-v0002") / "adapter_config.json").unlink()
    registry.set_pointer("policy", "promoted", "policy-v0003")
    server = Server(registry_dir, None)
    server.versions.start_from_registry()
    assert server.router.shares() == {"policy-v0001": 1.0}
    assert server.metric("rlhf_model_rollbacks_total", reason="startup") == 2
    assert server.pool.versions == [BASE_VERSION, "policy-v0001"]
    server.versions.tick()  # the broken versions are not retried on every tick
    server.versions.tick()
    assert server.router.shares() == {"policy-v0001": 1.0}
    assert server.metric("rlhf_model_rollbacks_total", reason="startup") == 2


def test_a_model_version_or_adapter_uri_outside_the_registry_is_poison(registry_dir: Path, tmp_path: Path) -> None:
    outside = tmp_path / "evil"  # a loadable adapter beside the registry, not in it
    shutil.copytree(registry_dir / "policy" / "policy-v0001", outside)
    (registry_dir / "policy" / "policy-v0004").symlink_to(outside)  # inside by name, outside once resolved
    server = Server(registry_dir, None)
    server.model_registry.set_pointer("policy", "promoted", "policy-v0004")
    rejected = {
        "model_version": [update("../../evil", "promoted"), update("policy-v4", "promoted"),
                          update("policy-v0004", "promoted")],
        "adapter_uri": [update("policy-v0004", "promoted", adapter_uri=outside.as_uri()),
                        update("policy-v0001", "promoted", adapter_uri=str(registry_dir / "policy" / ".." / ".." / "evil")),
                        update("policy-v0001", "promoted", adapter_uri="s3://bucket/policy-v0001")],
    }
    for field, events in rejected.items():
        for event in events:
            with pytest.raises(PoisonMessage, match=f"^{field}: "):
                server.apply(event)
    server.versions.tick()  # nor does reconciliation follow the pointer out of the registry
    server.versions.tick()
    assert server.pool.versions == [BASE_VERSION] and server.router.shares() == {BASE_VERSION: 1.0}


def test_a_corrupt_first_version_at_start_leaves_the_base_serving_untouched(registry_dir: Path) -> None:
    """No parent to fall back to: the base serves, and answers as the base, with nothing
    of the adapter that failed to load left in the model."""
    registry = ModelRegistry(registry_dir)
    (registry.path("policy", "policy-v0001") / "adapter_model.safetensors").write_bytes(b"not safetensors" * 64)
    registry.set_pointer("policy", "promoted", "policy-v0001")
    clean = PolicyPool(registry_dir / "base")
    server = Server(registry_dir, None)
    server.versions.start_from_registry()
    assert server.router.shares() == {BASE_VERSION: 1.0}
    assert server.metric("rlhf_model_rollbacks_total", reason="startup") == 1
    hello = [{"role": "user", "content": "hello there"}]
    assert server.pool.generate(hello, BASE_VERSION, n=1, max_tokens=8, temperature=0.0, top_p=1.0) == \
        clean.generate(hello, BASE_VERSION, n=1, max_tokens=8, temperature=0.0, top_p=1.0)
