"""Replayed chat traffic: HH-RLHF prompts to the policy server, at a steady rate."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable

import httpx

from shared.datasets.hh_rlhf import prompt_split

from .pacing import TrainingWatch
from .settings import DemoOptions

log = logging.getLogger(__name__)


def replay_prompts() -> list[list[dict[str, str]]]:
    """The traffic part of the bundled prompts: never the held-out or evaluation ones."""
    return prompt_split().replay


class Replayer:
    def __init__(self, options: DemoOptions, on_result: Callable[[str], None], watch: TrainingWatch) -> None:
        self._options = options
        self._watch = watch
        self._on_result = on_result
        self._client = httpx.Client(timeout=300, headers=options.policy_headers())
        self._prompts = replay_prompts()

    def run(self, stop: threading.Event) -> None:
        interval = 1.0 / self._options.requests_per_s
        for messages in itertools.cycle(self._prompts):
            if stop.wait(interval) or not self._watch.wait_for_traffic_turn(stop):
                break
            try:
                response = self._client.post(self._options.policy_url.rstrip("/") + "/chat/completions", json={
                    "model": self._options.model, "messages": messages, "n": self._options.candidates,
                    "max_tokens": self._options.max_tokens, "temperature": self._options.temperature})
                response.raise_for_status()
                self._on_result("ok")
            except httpx.HTTPError as error:
                self._on_result("error")
                log.warning("replayed request failed: %r", error)
        self._client.close()
