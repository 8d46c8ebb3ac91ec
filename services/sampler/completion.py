"""Candidate completion: ask OpenAI-compatible endpoints for more answers when an
output has fewer than the configured number of candidates.

Bounded in time on purpose: each endpoint has its own timeout, calls run in a small
thread pool, and the whole completion has a deadline, so a slow endpoint can delay a
task by at most `deadline_s` and never stalls the consumer loop.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import Any

import httpx
from pydantic import BaseModel, Field, SecretStr

from shared.contracts import Candidate, ChatMessage, ModelRef, derived_id

log = logging.getLogger(__name__)


class CompletionEndpoint(BaseModel):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", description="metric label")
    base_url: str = Field(description="e.g. http://policy-server:8000/v1")
    model: str
    model_version: str = "unknown"
    api_key: SecretStr | None = None
    params: dict[str, Any] = Field(default_factory=lambda: {"temperature": 0.8, "max_tokens": 256})
    timeout_s: float = Field(default=10.0, gt=0)


class CompletionSettings(BaseModel):
    target_candidates: int = Field(default=4, ge=2, le=5, description="N answers per task")
    endpoints: list[CompletionEndpoint] = Field(default_factory=list)
    max_concurrency: int = Field(default=4, ge=1)
    deadline_s: float = Field(default=20.0, gt=0)


Outcome = Callable[[str, str], None]  # (endpoint, outcome) -> metric hook


class CandidateCompleter:
    def __init__(self, settings: CompletionSettings, on_outcome: Outcome | None = None,
                 client: httpx.Client | None = None) -> None:
        self._settings = settings
        self._client = client or httpx.Client()
        self._pool = ThreadPoolExecutor(max_workers=settings.max_concurrency,
                                        thread_name_prefix="completion")
        self._on_outcome = on_outcome or (lambda _e, _o: None)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()

    def missing(self, have: int) -> int:
        return max(0, self._settings.target_candidates - have)

    def complete(self, output_id: str, conversation: list[ChatMessage], have: int) -> list[Candidate]:
        """Up to `missing(have)` new candidates, round-robin over endpoints; fewer when
        endpoints fail or the deadline passes."""
        return self.complete_many([(output_id, conversation, have)])[0]

    def complete_many(self, requests: list[tuple[str, list[ChatMessage], int]]) -> list[list[Candidate]]:
        """`complete` for several outputs at once (output id, conversation, candidates
        it has): every call shares the pool and ONE deadline, so closing a budget
        window of N tasks takes at most `deadline_s`, not N times it."""
        endpoints = self._settings.endpoints
        jobs: dict[Future[tuple[str, str | None]], tuple[int, int, CompletionEndpoint]] = {}
        for slot, (_output_id, conversation, have) in enumerate(requests):
            for i in range(self.missing(have) if endpoints else 0):
                endpoint = endpoints[i % len(endpoints)]
                jobs[self._pool.submit(self._ask, endpoint, conversation)] = (slot, i, endpoint)
        deadline = time.monotonic() + self._settings.deadline_s
        results: list[dict[int, Candidate]] = [{} for _ in requests]
        pending = set(jobs)
        while pending and time.monotonic() < deadline:
            done, pending = wait(pending, timeout=deadline - time.monotonic(), return_when=FIRST_COMPLETED)
            for future in done:
                slot, index, endpoint = jobs[future]
                try:
                    text, finish = future.result()
                except Exception as error:  # noqa: BLE001 - any failure means "no answer from here"
                    self._on_outcome(endpoint.name, "error")
                    log.warning("completion from %s failed: %r", endpoint.name, error)
                    continue
                self._on_outcome(endpoint.name, "ok")
                results[slot][index] = Candidate(
                    candidate_id=derived_id("completion", requests[slot][0], str(index)),
                    text=text,
                    model=ModelRef(name=endpoint.model, version=endpoint.model_version),
                    generation_params=dict(endpoint.params),
                    finish_reason=finish,
                )
        for future in pending:
            future.cancel()
            self._on_outcome(jobs[future][2].name, "deadline")
        return [[found[i] for i in sorted(found)] for found in results]

    def _ask(self, endpoint: CompletionEndpoint, conversation: list[ChatMessage]) -> tuple[str, str | None]:
        headers = {"Authorization": f"Bearer {endpoint.api_key.get_secret_value()}"} if endpoint.api_key else {}
        response = self._client.post(
            endpoint.base_url.rstrip("/") + "/chat/completions",
            json={"model": endpoint.model, "messages": [m.model_dump() for m in conversation],
                  **endpoint.params},
            headers=headers,
            timeout=endpoint.timeout_s,
        )
        response.raise_for_status()
        choice = response.json()["choices"][0]
        return str(choice["message"]["content"] or ""), choice.get("finish_reason")
