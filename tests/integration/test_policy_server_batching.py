"""Dynamic batching in the policy server (issue 16): concurrent users are generated
together. Real tiny models and adapters, real HTTP with the `openai` SDK as the client
(fixtures and the in-process server from test_policy_server.py).

The batches are made deterministic without sleeping: the window is long (seconds) and
`max_batch_size` is exactly the rows the test sends, so a batch starts the moment its
last request arrives. The window is widened only once the versions are loaded: a
health check is one request and would wait out the whole window."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest

from services.policy_server.models import BASE_VERSION
from tests.conftest import wait_for
from tests.helpers.openai_stub import serve
from tests.integration import test_policy_server as base
from tests.integration.test_policy_server import Server

policy_models = base.policy_models
registry_dir = base.registry_dir

pytestmark = pytest.mark.integration

PROMPTS = [f"question {i}: " + "how do I reset my password? " * (i % 4) for i in range(8)]  # different lengths


def concurrently(calls: list[Callable[[], Any]]) -> list[Any]:
    """Run every call at once on its own thread (released together); results in order."""
    results: list[Any] = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def one(i: int) -> None:
        start.wait()
        try:
            results[i] = calls[i]()
        except BaseException as error:  # noqa: BLE001 - asserted by the caller
            results[i] = error

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    return results


def batches(server: Server, version: str = BASE_VERSION) -> tuple[float, float]:
    """(batches, requests in them) from rlhf_policy_batch_size."""
    return (server.metric("rlhf_policy_batch_size_count", version=version),
            server.metric("rlhf_policy_batch_size_sum", version=version))


def serial_answer(server: Server, version: str, prompt: str, max_tokens: int, temperature: float = 0.0,
                  top_p: float = 1.0, n: int = 1, seed: int | None = None) -> list[str]:
    """The same request generated alone (a batch of one) on the pool; the window is
    closed first, as nothing could join it."""
    server.pool.batch_window_ms = 0
    return [g.text for g in server.pool.generate([{"role": "user", "content": prompt}], version, n=n,
                                                 max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                                                 seed=seed)]


def test_eight_concurrent_requests_are_one_batch_and_answer_as_they_would_alone(registry_dir: Path) -> None:
    server = Server(registry_dir, None, max_batch_size=8, batch_window_ms=10_000)
    alone = Server(registry_dir, None, max_batch_size=1)  # no batching: the serial server
    with serve(server.app) as url, serve(alone.app) as serial_url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        serial_client = openai.OpenAI(base_url=serial_url, api_key="unused", max_retries=0)

        def ask(c: openai.OpenAI, prompt: str) -> Any:
            return c.chat.completions.create(model="rlhf-policy", temperature=0, max_tokens=12,
                                             messages=[{"role": "user", "content": prompt}])

        together = concurrently([lambda p=p: ask(client, p) for p in PROMPTS])
        serial = [ask(serial_client, p) for p in PROMPTS]
    assert batches(server) == (1, 8)  # one generate call for eight requests
    assert batches(alone) == (8, 8)
    # greedy: left padding changes nothing a row computes (positions come from the mask)
    assert [r.choices[0].message.content for r in together] == [r.choices[0].message.content for r in serial]
    assert [r.usage.completion_tokens for r in together] == [r.usage.completion_tokens for r in serial]
    assert server.metric("rlhf_policy_requests_total", version=BASE_VERSION, status="ok") == 8


def test_each_request_keeps_its_own_max_tokens_temperature_top_p_seed_and_n_in_one_batch(
        registry_dir: Path) -> None:
    prompt = "tell me about the quick brown fox"
    requests: list[dict[str, Any]] = [
        {"max_tokens": 3, "temperature": 0},
        {"max_tokens": 12, "temperature": 0},
        {"max_tokens": 12, "temperature": 1.5, "seed": 5, "n": 2},  # 2 rows
        {"max_tokens": 12, "temperature": 1.0, "top_p": 1e-6},  # a nucleus of one token: greedy
        {"max_tokens": 7, "temperature": 1.2, "seed": 11},
    ]  # 6 rows
    server = Server(registry_dir, None, max_batch_size=6, batch_window_ms=10_000)
    with serve(server.app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        replies = concurrently([
            lambda r=r: client.chat.completions.create(model="rlhf-policy", messages=[{"role": "user",
                                                                                       "content": prompt}], **r)
            for r in requests])
    assert batches(server) == (1, 5)
    short, long, hot, nucleus, warm = [[c.message.content for c in reply.choices] for reply in replies]
    assert replies[0].usage.completion_tokens == 3 and replies[0].choices[0].finish_reason == "length"
    assert replies[1].usage.completion_tokens == 12  # a row that is done does not cut the others short
    assert replies[4].usage.completion_tokens == 7
    greedy12 = serial_answer(server, BASE_VERSION, prompt, 12)
    assert short == serial_answer(server, BASE_VERSION, prompt, 3) and long == greedy12 and nucleus == greedy12
    # sampled at their own temperature, from their own seed: the same answers alone
    assert hot == serial_answer(server, BASE_VERSION, prompt, 12, temperature=1.5, n=2, seed=5)
    assert warm == serial_answer(server, BASE_VERSION, prompt, 7, temperature=1.2, seed=11)
    assert len(hot) == 2 and hot[0] != hot[1] and greedy12[0] not in hot


def test_two_versions_in_flight_are_batched_per_version(registry_dir: Path) -> None:
    server = Server(registry_dir, None, max_batch_size=4)
    server.promote("policy-v0001", 1.0)
    server.pool.batch_window_ms = 10_000
    health_checks = batches(server, "policy-v0001")
    versions = ["policy-v0001", BASE_VERSION] * 4
    with serve(server.app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        replies = concurrently([
            lambda v=v, p=p: client.chat.completions.create(model=v, temperature=0, max_tokens=8,
                                                            messages=[{"role": "user", "content": p}])
            for v, p in zip(versions, PROMPTS, strict=True)])
    assert batches(server, "policy-v0001") == (health_checks[0] + 1, health_checks[1] + 4)
    assert batches(server, BASE_VERSION) == (1, 4)
    assert [r.system_fingerprint for r in replies] == versions
    for reply, version, prompt in zip(replies, versions, PROMPTS, strict=True):
        assert [reply.choices[0].message.content] == serial_answer(server, version, prompt, 8), (version, prompt)
    assert serial_answer(server, "policy-v0001", PROMPTS[0], 8) != serial_answer(server, BASE_VERSION, PROMPTS[0], 8)


def test_queued_requests_of_a_version_unloaded_meanwhile_are_routed_again(registry_dir: Path) -> None:
    """The KeyError path: requests pinned to the canary wait in the queue for company
    (the window), the canary is rolled back meanwhile; they are answered by the version
    that serves now, none fails."""
    server = Server(registry_dir, None, max_batch_size=8)
    server.promote("policy-v0001", 1.0)
    server.promote("policy-v0002", 0.5)
    server.pool.batch_window_ms = 3_000
    before = batches(server, "policy-v0001"), batches(server, "policy-v0002")
    hello = [{"role": "user", "content": "hello there"}]
    with serve(server.app) as url:
        client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0)
        results: list[Any] = []
        waiting = [threading.Thread(target=lambda: results.append(client.chat.completions.create(
            model="policy-v0002", max_tokens=4, temperature=0, messages=hello))) for _ in range(3)]
        for thread in waiting:
            thread.start()
        assert wait_for(lambda: server.pool.queued() == 3, timeout_s=10)
        server.roll_back("policy-v0002")  # the model is free: the queue is waiting out its window
        for thread in waiting:
            thread.join(60)
    assert "policy-v0002" not in server.pool.versions
    assert [r.system_fingerprint for r in results] == ["policy-v0001"] * 3
    assert batches(server, "policy-v0002") == before[1]  # its batch failed: unloaded
    assert batches(server, "policy-v0001") == (before[0][0] + 1, before[0][1] + 3)
    assert [r.choices[0].message.content for r in results] == serial_answer(server, "policy-v0001", "hello there", 4) * 3


def test_every_use_of_the_model_runs_on_the_one_model_thread(registry_dir: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Batches, streams, adapter loads and unloads all run on the batcher's thread,
    whichever thread asks: torch's OpenMP runtime stops spinning between kernels once
    more threads than cores have used it (batching.py), which slowed SmolLM2
    generation 1.6x here. Before, a stream ran on a thread of its own and an adapter
    was attached on the caller's thread."""
    from peft import PeftModel

    server = Server(registry_dir, None, max_batch_size=4, batch_window_ms=0)
    threads: list[tuple[str, str]] = []
    server.pool._base.register_forward_pre_hook(  # noqa: SLF001 - every forward pass, wrapped or not
        lambda *_: threads.append(("forward", threading.current_thread().name)))
    attach = PeftModel.from_pretrained.__func__  # type: ignore[attr-defined]
    load_more = PeftModel.load_adapter
    delete = PeftModel.delete_adapter

    def noting(kind: str, function: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            threads.append((kind, threading.current_thread().name))
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(PeftModel, "from_pretrained", classmethod(noting("attach", attach)))
    monkeypatch.setattr(PeftModel, "load_adapter", noting("load", load_more))
    monkeypatch.setattr(PeftModel, "delete_adapter", noting("delete", delete))
    for version in ("policy-v0001", "policy-v0002"):  # on a thread of its own, as the version manager's
        loader = threading.Thread(target=server.pool.load, args=(version, server.model_registry.path("policy", version)))
        loader.start()
        loader.join(60)
    messages = [{"role": "user", "content": "hello there"}]
    server.pool.generate(messages, "policy-v0001", n=2, max_tokens=3, temperature=0, top_p=1.0)
    deltas, result = server.pool.stream(messages, "policy-v0002", max_tokens=3, temperature=0, top_p=1.0)
    assert "".join(deltas) == result.text and result.completion_tokens > 0
    server.pool.unload("policy-v0002")
    assert server.pool.versions == [BASE_VERSION, "policy-v0001"]
    kinds = {kind for kind, _ in threads}
    assert kinds == {"forward", "attach", "load", "delete"}, threads
    assert {name for _, name in threads} == {"policy-batcher"}, threads
