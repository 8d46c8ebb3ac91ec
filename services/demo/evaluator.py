"""The number the demo is for: how often the served version beats the base model on
held-out prompts, judged by the annotators' own hidden preference.

Whenever the stable version changes, every held-out prompt is answered by it and by
the base (pinned by version name, one seeded sample each) through the policy server
with `"store": false`, so measurement traffic is never captured and never becomes
training data. The held-out prompts are never replayed as traffic either
(shared.datasets.hh_rlhf.prompt_split).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import httpx

from shared.stats import PairedComparison, compare

from .metrics import DemoMetrics
from .oracles import Oracle
from .pacing import TrainingWatch
from .settings import DemoOptions

log = logging.getLogger(__name__)

Prompt = list[dict[str, str]]
BASE = "base"
BASE_STEP_S = 30.0  # base answers are scored in steps this long, then the served version is checked again


class ServedPolicyProbe:
    def __init__(self, options: DemoOptions, oracle: Oracle, prompts: list[Prompt], metrics: DemoMetrics,
                 client: httpx.Client | None = None, watch: TrainingWatch | None = None) -> None:
        self._options = options
        self._watch = watch or TrainingWatch("", enabled=False)
        self._oracle = oracle
        self._prompts = prompts[: options.eval_prompts]
        self._metrics = metrics
        self._client = client or httpx.Client(timeout=300, headers=options.policy_headers())
        self._base_scores: list[float] = []  # base answers scored so far; complete once one per prompt
        self.last: tuple[str, PairedComparison] | None = None

    def served_version(self) -> str | None:
        """The stable version: the one with the largest traffic share."""
        response = self._client.get(self._options.policy_url.rstrip("/") + "/models")
        response.raise_for_status()
        routed = response.json()["data"][0].get("versions", {})
        return max(routed, key=routed.get) if routed else None

    def answer(self, version: str, prompt: Prompt, seed: int) -> str:
        response = self._client.post(self._options.policy_url.rstrip("/") + "/chat/completions", json={
            "model": version, "messages": prompt, "n": 1, "max_tokens": self._options.max_tokens,
            "temperature": self._options.temperature, "seed": seed, "store": False})
        response.raise_for_status()
        return str(response.json()["choices"][0]["message"]["content"] or "")

    def scores(self, version: str, stop: threading.Event, done: list[float] | None = None,
               deadline: float = float("inf")) -> list[float] | None:
        """Oracle scores of `version`'s answers, continuing after the `done` ones;
        None if stopped, partial (shorter) if `deadline` (monotonic) passed."""
        values = list(done or [])
        for seed, prompt in enumerate(self._prompts):
            if seed < len(values):
                continue
            if time.monotonic() > deadline:
                break
            if not self._watch.wait_until_idle(stop):
                return None
            values.extend(self._oracle(prompt[-1]["content"], [self.answer(version, prompt, seed)]))
        return values

    def measure(self, version: str, stop: threading.Event) -> PairedComparison | None:
        base = self.scores(BASE, stop, self._base_scores)  # only the base answers still missing
        if base is None:
            return None
        self._base_scores = base
        served = self.scores(version, stop)
        if served is None:
            return None
        comparison = compare(served, base)
        self.last = (version, comparison)
        self._metrics.observe_probe(version, comparison)
        log.info("served %s vs base on %d held-out prompts (annotators' preference): %d wins, %d losses, %d ties,"
                 " win rate %.3f, sign test p %.2g", version, comparison.n, comparison.wins, comparison.losses,
                 comparison.ties, comparison.win_rate, comparison.p_value)
        return comparison

    def run(self, stop: threading.Event, on_error: Callable[[Exception], None] | None = None) -> None:
        """The base's answers first, a few at a time beside the traffic while only the
        base is served, so a new version needs only its own answers. A newly served
        version is measured ahead of the traffic (see pacing)."""
        measured: str | None = None
        while not stop.wait(self._options.eval_check_interval_s):
            try:
                version = self.served_version()
                if version and version != BASE and version != measured:
                    with self._watch.probe_first():
                        if self.measure(version, stop):
                            measured = version
                elif len(self._base_scores) < len(self._prompts):
                    self._base_scores = self.scores(BASE, stop, self._base_scores,
                                                    time.monotonic() + BASE_STEP_S) or self._base_scores
            except httpx.HTTPError as error:  # the policy server restarting or busy: try again later
                log.warning("win-rate probe paused: %r", error)
                if on_error:
                    on_error(error)
        self._client.close()
