"""The policy server with real tiny models, real LoRA adapters, the real broker and the
`openai` SDK as the client."""

from __future__ import annotations

import threading
import time
from collections import Counter
from pathlib import Path

import openai
import pytest
from prometheus_client import CollectorRegistry

from services.policy_server.api import create_app
from services.policy_server.metrics import PolicyServerMetrics
from services.policy_server.models import BASE_VERSION, PolicyPool
from services.policy_server.routing import Router
from services.policy_server.versions import VersionManager
from services.trainer.tiny_models import build_tiny_policy
from shared.bus import EventProducer, PoisonMessage
from shared.contracts import ModelOutput, ModelUpdate, model_update_id_for
from shared.settings import KafkaSettings
from shared.topics import OUTPUTS
from tests.conftest import read_topic
from tests.helpers.openai_stub import serve

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny base policy and two different LoRA adapters laid out as the trainer's registry."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("policy")
    base = build_tiny_policy(root / "base")
    registry = root / "registry"
    for seed, version in enumerate(["policy-v0001", "policy-v0002"]):
        torch.manual_seed(seed)
        model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                               LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                          init_lora_weights=False, task_type="CAUSAL_LM"))
        model.save_pretrained(registry / "policy" / version)
    (registry / "base").symlink_to(base)
    return registry


def update(version: str, action: str, fraction: float = 1.0, previous: str | None = None) -> ModelUpdate:
    return ModelUpdate(event_id=model_update_id_for(version, action), model_version=version, action=action,  # type: ignore[arg-type]
                       base_model="tiny", canary_fraction=fraction, previous_version=previous)


class Server:
    def __init__(self, registry_dir: Path, kafka: KafkaSettings | None, seed: int = 7) -> None:
        self.registry = CollectorRegistry()
        self.metrics = PolicyServerMetrics(self.registry)
        self.pool = PolicyPool(registry_dir / "base")
        self.router = Router(seed=seed)
        self.versions = VersionManager(self.pool, self.router, registry_dir, self.metrics, "hi", 0)
        self.producer = EventProducer(kafka) if kafka else None
        self.app = create_app(pool=self.pool, router=self.router, metrics=self.metrics, registry=self.registry,
                              served_model_name="rlhf-policy", max_tokens_default=8, max_tokens_limit=32, max_n=5,
                              producer=self.producer, readiness={})

    def apply(self, event: ModelUpdate) -> None:
        self.versions.handle(event, None)  # type: ignore[arg-type]


def test_openai_sdk_non_streaming_and_streaming_with_capture(registry_dir: Path, kafka: KafkaSettings) -> None:
    server = Server(registry_dir, kafka)
    server.apply(update("policy-v0001", "promoted", 1.0))
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
    server.apply(update("policy-v0001", "promoted", 1.0))
    server.apply(update("policy-v0002", "promoted", 0.25))
    assert server.router.shares() == {"policy-v0001": 0.75, "policy-v0002": 0.25}
    picks = Counter(server.router.choose() for _ in range(4000))
    assert abs(picks["policy-v0002"] / 4000 - 0.25) < 0.03
    assert server.registry.get_sample_value("rlhf_policy_traffic_share", {"version": "policy-v0002"}) == 0.25
    server.apply(update("policy-v0002", "rolled_back", previous="policy-v0001"))
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
        server.apply(update("policy-v0001", "promoted", 1.0))
        server.apply(update("policy-v0002", "promoted", 0.5))
        server.apply(update("policy-v0002", "rolled_back", previous="policy-v0001"))
        server.apply(update("policy-v0002", "promoted", 1.0))
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
    server.apply(update("policy-v0001", "promoted", 1.0))
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
    assert server.registry.get_sample_value("rlhf_policy_captured_total", {"outcome": "ok"}) is None
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
