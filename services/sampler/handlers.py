"""The sampling decision for one output, and the closing of budget windows.

For each output, in order:
  1. already decided?  -> same outcome again (a selected task is re-emitted as is)
  2. near-duplicate of a recently sampled prompt? -> rejected (duplicate)
  3. the first rule whose filter matches and whose strategy accepts it wins:
       no budget -> the task goes out now
       budget    -> held in the rule's window; when the window closes the top
                    `max_tasks` by score (a uniform reservoir for `uniform`) go out
  4. no rule took it -> rejected (no_rule)
A task gets PII redaction and, if it has fewer than N answers, candidate completion.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from kafka.consumer.fetcher import ConsumerRecord

from shared.bus import Outgoing
from shared.contracts import (
    Candidate,
    ChatMessage,
    Event,
    ModelOutput,
    RankingTask,
    SamplingDecision,
    task_id_for,
)
from shared.contracts.tasks import MAX_RANKED, MIN_RANKED
from shared.topics import RANKING_TASKS

from .completion import CandidateCompleter
from .metrics import SamplerMetrics
from .novelty import NoveltyMemory
from .redaction import Redactor
from shared.models.reward_scorer import RewardScorer
from .rules import SamplingRule
from .scoring import (feedback_score, normalized_prompt_hash, prompt_messages, prompt_text, reward_margin,
                      stable_fraction)
from .store import Decision, HeldItem, SamplerStore

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    score: float
    key: float  # ordering inside a budget window (higher first)


class Sampler:
    def __init__(
        self,
        rules: list[SamplingRule],
        store: SamplerStore,
        metrics: SamplerMetrics,
        *,
        dedupe_window_s: float,
        completer: CandidateCompleter | None = None,
        redactor: Redactor | None = None,
        reward_scorer: RewardScorer | None = None,
        novelty: NoveltyMemory | None = None,
        clock: Clock = time.time,
    ) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique: {names}")
        if any(r.strategy == "novelty" for r in rules) and novelty is None:
            raise ValueError("a novelty rule needs an encoder")
        self._rules = {r.name: r for r in rules}
        self._store = store
        self._metrics = metrics
        self._dedupe_window_s = dedupe_window_s
        self._completer = completer
        self._redactor = redactor
        self._reward = reward_scorer
        self._novelty = novelty
        self._clock = clock
        self._closing: dict[tuple[str, float], list[Decision]] = {}

    def close(self) -> None:
        if self._completer is not None:
            self._completer.close()
        self._store.close()

    # -- the consumer handler -----------------------------------------------------

    def handle(self, event: Event, record: ConsumerRecord) -> list[Outgoing]:
        assert isinstance(event, ModelOutput)
        output = event
        known = self._store.decision(output.output_id)
        if known is not None:
            if known.status == "selected" and known.task_json:
                return [Outgoing(RANKING_TASKS, RankingTask.model_validate_json(known.task_json))]
            return []
        now = self._clock()
        prompt_hash = normalized_prompt_hash(output)
        if self._store.seen_prompt(prompt_hash, since=now - self._dedupe_window_s):
            self._reject(output.output_id, None, "duplicate", now)
            return []
        over_quota = False
        for rule in self._rules.values():
            if not rule.filter.matches(output):
                continue
            verdict = self._judge(rule, output)
            if not verdict.accepted:
                continue
            window = self._window_start(rule, now)
            if rule.quota and not self._quota_allows(rule, window, output):
                over_quota = True  # a later rule may still take it
                continue
            self._store.remember_prompt(prompt_hash, now)
            if rule.budget is not None:
                self._store.hold(rule.name, window, HeldItem(output.output_id, verdict.key, verdict.score,
                                                              output.model_dump_json()))
                self._store.record(Decision(output.output_id, "held", rule.name, "budget_window",
                                            verdict.score, None), now)
                self._metrics.decisions.labels(rule.name, "held").inc()
                return []
            if rule.quota:
                self._store.count_quota(rule.name, window, self._quota_values(rule, output))
            return self._select_now(rule, output, verdict.score, now)
        self._reject(output.output_id, None, "quota" if over_quota else "no_rule", now)
        return []

    # -- the ticker: budget windows ----------------------------------------------

    def due(self) -> list[Outgoing]:
        now = self._clock()
        window_lengths = {name: rule.window_s for name, rule in self._rules.items()}
        outgoing: list[Outgoing] = []
        self._closing = {}
        for rule_name, window in self._store.closed_windows(now, window_lengths):
            rule = self._rules.get(rule_name)
            decisions: list[Decision] = []
            taken = 0
            for item in self._store.held(rule_name, window):
                output = ModelOutput.model_validate_json(item.output_json)
                if rule is None or rule.budget is None or taken >= rule.budget.max_tasks:
                    decisions.append(Decision(item.output_id, "rejected", rule_name, "budget", item.score, None))
                    continue
                if rule.quota and not self._quota_allows(rule, window, output):
                    decisions.append(Decision(item.output_id, "rejected", rule_name, "quota", item.score, None))
                    continue
                task = self._build_task(rule, output, item.score)
                if task is None:
                    decisions.append(Decision(item.output_id, "dropped", rule_name, "too_few_candidates",
                                              item.score, None))
                    continue
                taken += 1
                if rule.quota:
                    self._store.count_quota(rule.name, window, self._quota_values(rule, output))
                decisions.append(Decision(item.output_id, "selected", rule_name, "budget_top_k",
                                          item.score, task.model_dump_json()))
                outgoing.append(Outgoing(RANKING_TASKS, task))
            self._closing[(rule_name, window)] = decisions
        return outgoing

    def delivered(self, outgoing: list[Outgoing]) -> None:
        now = self._clock()
        for (rule_name, window), decisions in self._closing.items():
            self._store.close_window(rule_name, window, decisions, now)
            for decision in decisions:
                self._count(decision)
        self._closing = {}

    # -- pieces ---------------------------------------------------------------------

    def _judge(self, rule: SamplingRule, output: ModelOutput) -> Verdict:
        coin = stable_fraction(rule.name, output.output_id)
        if rule.strategy == "uniform":
            return Verdict(coin < rule.rate or rule.budget is not None, rule.rate, coin)
        if rule.strategy == "feedback":
            score = feedback_score(output)
            return Verdict(score > 0 and coin < rule.rate, score, score + coin * 1e-6)
        if rule.strategy == "uncertainty":
            return self._judge_uncertainty(rule, output, coin)
        assert self._novelty is not None
        novelty, vector = self._novelty.novelty(prompt_text(output))
        accepted = (rule.min_score is None or novelty >= rule.min_score) and coin < rule.rate
        if accepted:
            self._novelty.remember(vector)
        return Verdict(accepted, novelty, novelty)

    def _judge_uncertainty(self, rule: SamplingRule, output: ModelOutput, coin: float) -> Verdict:
        rewards = None
        if self._reward is not None and len(output.candidates) >= 2:
            rewards = self._reward.rewards(prompt_messages(output), [c.text for c in output.candidates])
        if rewards is None:
            self._metrics.uncertainty_fallbacks.inc()
            return Verdict(coin < rule.fallback_rate, 0.0, coin)
        margin = reward_margin(rewards)
        accepted = (rule.max_margin is None or margin <= rule.max_margin) and coin < rule.rate
        return Verdict(accepted, margin, -margin)

    def _select_now(self, rule: SamplingRule, output: ModelOutput, score: float, now: float) -> list[Outgoing]:
        task = self._build_task(rule, output, score)
        if task is None:
            decision = Decision(output.output_id, "dropped", rule.name, "too_few_candidates", score, None)
            self._store.record(decision, now)
            self._count(decision)
            return []
        decision = Decision(output.output_id, "selected", rule.name, "rule", score, task.model_dump_json())
        self._store.record(decision, now)
        self._count(decision)
        return [Outgoing(RANKING_TASKS, task)]

    def _build_task(self, rule: SamplingRule, output: ModelOutput, score: float) -> RankingTask | None:
        conversation = list(output.conversation)
        candidates = list(output.candidates)
        if self._completer is not None and self._completer.missing(len(candidates)):
            candidates += self._completer.complete(output.output_id, conversation, len(candidates))
        candidates = candidates[:MAX_RANKED]
        if len(candidates) < MIN_RANKED:
            return None
        if self._redactor is not None:
            conversation, candidates = self._redact(conversation, candidates)
        task_id = task_id_for(output.output_id)
        return RankingTask(
            event_id=task_id, task_id=task_id, output_id=output.output_id,
            conversation_id=output.conversation_id, prompt=conversation, candidates=candidates,
            sampling=SamplingDecision(rule=rule.name, strategy=rule.strategy, score=score),
            app=output.app, tags=list(output.tags),
        )

    def _redact(self, conversation: list[ChatMessage], candidates: list[Candidate]
                ) -> tuple[list[ChatMessage], list[Candidate]]:
        assert self._redactor is not None
        found: Counter[str] = Counter()
        new_conversation = []
        for message in conversation:
            text, hits = self._redactor.redact(message.content)
            found += hits
            new_conversation.append(message.model_copy(update={"content": text}))
        new_candidates = []
        for candidate in candidates:
            text, hits = self._redactor.redact(candidate.text)
            found += hits
            new_candidates.append(candidate.model_copy(update={"text": text}))
        for kind, n in found.items():
            self._metrics.redactions.labels(kind).inc(n)
        return new_conversation, new_candidates

    def _window_start(self, rule: SamplingRule, now: float) -> float:
        return (now // rule.window_s) * rule.window_s

    @staticmethod
    def _quota_values(rule: SamplingRule, output: ModelOutput) -> list[str]:
        assert rule.quota is not None
        if rule.quota.by == "tag":
            return list(output.tags) or ["-"]
        return [getattr(output, rule.quota.by) or "-"]

    def _quota_allows(self, rule: SamplingRule, window: float, output: ModelOutput) -> bool:
        assert rule.quota is not None
        return all(self._store.quota_count(rule.name, window, value) < rule.quota.max_per_window
                   for value in self._quota_values(rule, output))

    def _reject(self, output_id: str, rule: str | None, reason: str, now: float) -> None:
        # Not stored: a rejection changes no state (no task, no budget, no quota), so a
        # redelivery recomputes the same verdict. Storing it would cost a write for the
        # ~95% of traffic that is never sampled.
        self._count(Decision(output_id, "rejected", rule, reason, None, None))

    def _count(self, decision: Decision) -> None:
        self._metrics.decisions.labels(decision.rule or "none", decision.status).inc()
        if decision.status == "selected":
            self._metrics.tasks.labels(decision.rule or "none").inc()
            if decision.score is not None:
                self._metrics.scores.labels(decision.rule or "none").observe(decision.score)
        else:
            self._metrics.rejections.labels(decision.reason).inc()
