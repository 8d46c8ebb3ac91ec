"""The sampling decision for one output, and the closing of budget windows.

For each output, in order:
  1. already decided?  -> same outcome again (a selected task is re-emitted as is)
  2. an A/B output (canary vs stable) with room in the comparison quota?
                       -> a blind comparison task, before any rule and without the
                          dedupe (comparisons.py); over the quota it goes on to 3.
  3. the first rule whose filter matches and whose strategy accepts it wins, unless
     its prompt is a near-duplicate of a recently sampled one -> rejected (duplicate):
       no budget -> the task goes out now
       budget    -> held in the rule's window; when the window closes the top
                    `max_tasks` by score (a uniform reservoir for `uniform`) go out
     The dedupe check runs before the first rule that costs a model call (uncertainty,
     novelty), otherwise only once a rule accepted: under a uniform rate nearly every
     output is decided by its coin alone, without normalising and hashing its prompt.
  4. no rule took it -> rejected (no_rule)
A task gets PII redaction and, if it has fewer than N answers, candidate completion.

Nothing is written while a batch is being decided: each decision, with the prompt's
dedupe hash, its quota places and held item, joins the polled batch (batch.py; later
records of the batch see it), and the consumer loop's batch sink, `flush`, writes the
whole batch in one store transaction after its handlers and before the offset commit.
Only then do its tasks and preferences go out (`emitted`; the loop sends them and has
the broker acknowledge them before committing). So:

- an error or a kill before that commit leaves no trace, in the store, in memory
  (memory.py) or on the topics: the batch is redelivered and decided afresh, and no
  output meets its own prompt hash or quota place;
- after it, a redelivery finds the decision (step 1) and re-emits the stored task
  (same id, same content), counting nothing again; that covers a kill between the
  commit and the broker's acknowledgement as well;
- a task on the topic therefore always has its decision stored: nothing is produced
  that a redelivery could decide differently (a different completion, a different
  dedupe order across partitions, a window that rolled over in between).

Metrics move once per batch, after the commit (a redelivered batch counts once).
Lookups are served from memory filled from the store (memory.py). `handle` is the same
for one output (decide, write, return what it emits), for callers without a loop.

Besides the decision, and whatever it is, an output of an opted-in tenant yields the
preferences its users' edits and regenerates state (feedback_preferences.py), on every
delivery with the same ids (the trainer stores each once). Their marks (by id, to count
each once) go in the batch's transaction too; a rejection stores no decision, and a
redelivery emits the preferences again without counting them again.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
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
from shared.models.reward_scorer import RewardScorer
from shared.topics import PREFERENCES, RANKING_TASKS

from .batch import PendingBatch, PreferenceMarks, Staged
from .comparisons import (
    COMPARISON_QUOTA_VALUE,
    COMPARISON_RULE,
    COMPARISON_STRATEGY,
    ComparisonSettings,
    blind_order,
)
from .completion import CandidateCompleter
from .feedback_preferences import FeedbackPreferenceSettings, feedback_preferences
from .memory import DecidedIds, PromptMemory, QuotaMemory
from .metrics import MetricTally, SamplerMetrics
from .novelty import NoveltyMemory
from .redaction import Redactor
from .rules import SamplingRule
from .scoring import (
    feedback_score,
    fraction_prefix,
    normalized_prompt_hash,
    prompt_messages,
    prompt_text,
    reward_margin,
    stable_fraction_after,
)
from .store import (
    BatchWritten,
    Decision,
    DecisionWrite,
    Held,
    HeldItem,
    QuotaCount,
    SamplerStore,
)

log = logging.getLogger(__name__)

Clock = Callable[[], float]

# Prompt hashes kept in memory (~150 B each); beyond that, older ones are read from the store.
PROMPT_MEMORY_MAX = 200_000


@dataclass(frozen=True)
class Verdict:
    accepted: bool
    score: float
    key: float  # ordering inside a budget window (higher first)
    # novelty: the prompt's embedding, remembered only once the decision is stored
    # (remembering it earlier would make a redelivery after a failure a paraphrase of itself)
    vector: np.ndarray | None = None


_NOT_TAKEN = Verdict(False, 0.0, 0.0)
# strategies whose judgement costs a model call: the dedupe check comes first for them
_MODEL_STRATEGIES = frozenset({"uncertainty", "novelty"})


def _task_outgoing(task: RankingTask, task_json: str) -> Outgoing:
    """The task to send, with the JSON stored in its decision as its encoding: what is
    on the topic is byte for byte what a redelivery re-emits from the store."""
    return Outgoing(RANKING_TASKS, task, encoded=task_json.encode("utf-8"))


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
        comparisons: ComparisonSettings | None = None,
        feedback_preferences: FeedbackPreferenceSettings | None = None,
        clock: Clock = time.time,
    ) -> None:
        names = [r.name for r in rules]
        if len(set(names)) != len(names):
            raise ValueError(f"rule names must be unique: {names}")
        if COMPARISON_RULE in names:  # its quota counts and metrics would mix with the comparisons'
            raise ValueError(f"the rule name {COMPARISON_RULE!r} is reserved for A/B comparisons")
        if any(r.strategy == "novelty" for r in rules) and novelty is None:
            raise ValueError("a novelty rule needs an encoder")
        self._rules = {r.name: r for r in rules}
        # per rule, built once (this runs for every output): the filter to check (None:
        # it matches every output) and the bytes its coin hashes before the output id
        self._plan = [(r, None if r.filter.matches_everything() else r.filter, fraction_prefix(r.name))
                      for r in rules]
        self._store = store
        self._metrics = metrics
        self._dedupe_window_s = dedupe_window_s
        self._completer = completer
        self._redactor = redactor
        self._reward = reward_scorer
        self._novelty = novelty
        self._comparisons = comparisons or ComparisonSettings()
        self._feedback = feedback_preferences or FeedbackPreferenceSettings()
        self._clock = clock
        self._closing: dict[tuple[str, float], tuple[list[Decision], list[QuotaCount]]] = {}
        self._closing_hits: Counter[str] = Counter()
        # what the store holds, in memory (memory.py), and the batch being decided
        self._decided = DecidedIds(store.decided_ids)
        self._prompts = self._prompt_memory()
        self._quotas = QuotaMemory(store.quota_count)
        self._batch = PendingBatch()
        self._emitted: list[Outgoing] = []
        # the record (or closing window) in hand: counts not yet in a tally
        self._hits: Counter[str] = Counter()
        self._fallbacks = 0

    def _prompt_memory(self) -> PromptMemory:
        since = self._clock() - self._dedupe_window_s
        rows = self._store.recent_prompts(since, PROMPT_MEMORY_MAX + 1)
        complete_from = since
        if len(rows) > PROMPT_MEMORY_MAX:  # the oldest one stays in the store only
            complete_from = math.nextafter(rows[0][1], math.inf)
            rows = rows[1:]
        return PromptMemory(rows, complete_from, self._store.prompt_seen_at,
                            window_s=self._dedupe_window_s, max_entries=PROMPT_MEMORY_MAX)

    def close(self) -> None:
        if self._completer is not None:
            self._completer.close()
        self._store.close()

    # -- the consumer handler -----------------------------------------------------

    def handle(self, event: Event, record: ConsumerRecord | None) -> list[Outgoing]:
        """One output decided and stored on its own (a batch of one): what it emits."""
        self.collect(event, record)
        self.flush()
        return self.emitted()

    def collect(self, event: Event, record: ConsumerRecord | None) -> list[Outgoing]:
        """The consumer handler (with this sampler as the loop's batch sink): decide the
        output into the pending batch. Returns nothing: the batch's events go out
        through `emitted`, once `flush` stored it."""
        assert isinstance(event, ModelOutput)
        if self._hits:
            self._hits = Counter()
        self._fallbacks = 0
        marks, preferences = self._feedback_preferences(event) if event.feedback else (None, [])
        decided = self._decide(event)
        # the record's last step, nothing below can fail: a retried handler left no half
        batch = self._batch
        if isinstance(decided, str):  # rejected: nothing to store
            batch.rejected[decided] += 1
            if preferences or marks is not None:
                batch.add(Staged([], preferences), marks)
        else:
            decided.preferences = preferences
            batch.add(decided, marks)
        if self._hits:
            batch.tally.redactions.update(self._hits)
        batch.tally.uncertainty_fallbacks += self._fallbacks
        return []

    def flush(self) -> list[tuple[ConsumerRecord, str]]:
        """The batch sink: store the pending batch in one transaction, then let memory,
        metrics and `emitted` see it. Raises if the store does (the loop redelivers the
        batch, which is then decided afresh: nothing of it was kept). Never refuses a
        record."""
        batch, self._batch = self._batch, PendingBatch()
        self._emitted = []
        if not batch:
            return []
        to_write = batch.to_write()
        written = self._store.write_batch(to_write) if to_write else BatchWritten({}, set())
        tally, emitted = batch.tally, []
        for reason, count in batch.rejected.items():
            tally.decisions[("none", "rejected")] += count
            tally.rejections[reason] += count
        decided: list[str] = []
        prompts: list[tuple[str, float]] = []
        places: list[tuple[str, float, str]] = []
        for staged in batch.records:
            write = staged.write
            if write is not None:
                stored = written.already.get(write.decision.output_id)
                if stored is not None:  # another writer decided it first: its outcome, uncounted
                    emitted += [*self._outcome(stored), *staged.preferences]
                    continue
                decided.append(write.decision.output_id)
                if write.prompt_hash is not None:
                    prompts.append((write.prompt_hash, write.at))
                places += [(p.rule, p.window_start, p.value) for p in write.quota]
                tally.count(write.decision)
                self._remember(staged.vector)
            emitted += staged.outgoing
            emitted += staged.preferences
        first_marked = set(written.new_preferences)  # an output twice in a batch: counted once
        for marks in batch.marks:
            new = [source for pid, source in marks.ids_and_sources if pid in first_marked]
            first_marked.difference_update(pid for pid, _ in marks.ids_and_sources)
            tally.feedback_preferences.update(new)
            if new:
                tally.redactions.update(marks.redactions)
        self._decided.add(decided)
        self._prompts.add(prompts, self._clock())
        self._quotas.add(places)
        tally.apply(self._metrics)
        self._emitted = emitted
        return []

    def emitted(self) -> list[Outgoing]:
        """What the last flushed batch emits, in record order (asked once, after `flush`)."""
        emitted, self._emitted = self._emitted, []
        return emitted

    def _seen_prompt(self, prompt_hash: str, since: float) -> bool:
        at = self._batch.prompt_seen_at(prompt_hash)
        if at is not None and at >= since:
            return True
        return self._prompts.seen(prompt_hash, since)

    def _quota_count(self, rule: str, window_start: float, value: str) -> int:
        return self._quotas.count(rule, window_start, value) + self._batch.quota_taken(rule, window_start, value)

    def _decide(self, output: ModelOutput) -> Staged | str:
        """The output's share of the batch, or the reason it is rejected (nothing stored)."""
        # already decided, earlier in this batch or stored (the Bloom filter answers "no"
        # for nearly every output without a read)
        output_id = output.output_id
        known = self._batch.decision(output_id)
        if known is None and output_id in self._decided:
            known = self._store.decision(output_id)
        if known is not None:
            return Staged(self._outcome(known), [])
        now = self._clock()
        if output.ab is not None and self._comparisons.enabled:
            window = (now // self._comparisons.window_s) * self._comparisons.window_s
            if (self._quota_count(COMPARISON_RULE, window, COMPARISON_QUOTA_VALUE)
                    < self._comparisons.max_per_window):
                return self._select_comparison(output, window, now)
            # over the quota: an output like any other from here on
        # the dedupe check, once, when first needed (step 3 of the module doc)
        prompt_hash: str | None = None
        over_quota = False
        for rule, output_filter, coin_prefix in self._plan:
            if output_filter is not None and not output_filter.matches(output):
                continue
            if prompt_hash is None and rule.strategy in _MODEL_STRATEGIES:
                prompt_hash = normalized_prompt_hash(output)
                if self._seen_prompt(prompt_hash, since=now - self._dedupe_window_s):
                    return "duplicate"
            verdict = self._judge(rule, output, stable_fraction_after(coin_prefix, output_id))
            if not verdict.accepted:
                continue
            if prompt_hash is None:
                prompt_hash = normalized_prompt_hash(output)
                if self._seen_prompt(prompt_hash, since=now - self._dedupe_window_s):
                    return "duplicate"
            window = self._window_start(rule, now)
            if rule.quota and not self._quota_allows(rule, window, output):
                over_quota = True  # a later rule may still take it
                continue
            if rule.budget is not None:
                held = Held(rule.name, window, HeldItem(output.output_id, verdict.key, verdict.score,
                                                         output.model_dump_json()))
                decision = Decision(output.output_id, "held", rule.name, "budget_window", verdict.score, None)
                return Staged([], [], DecisionWrite(decision, now, prompt_hash, held=held), verdict.vector)
            return self._select_now(rule, output, verdict, window, prompt_hash, now)
        return "quota" if over_quota else "no_rule"

    # -- the ticker: budget windows ----------------------------------------------

    def due(self) -> list[Outgoing]:
        now = self._clock()
        window_lengths = {name: rule.window_s for name, rule in self._rules.items()}
        outgoing: list[Outgoing] = []
        self._closing = {}
        self._hits = Counter()  # redactions of the tasks, counted once they are delivered
        for rule_name, window in self._store.closed_windows(now, window_lengths):
            rule = self._rules.get(rule_name)
            decisions: list[Decision] = []
            # Quota places this window takes: stored with its decisions in `delivered`,
            # so a window offered again (delivery failed) has taken none yet.
            places: list[QuotaCount] = []
            queue = [(item, ModelOutput.model_validate_json(item.output_json))
                     for item in self._store.held(rule_name, window)]
            taken = 0
            while queue:
                if rule is None or rule.budget is None or taken >= rule.budget.max_tasks:
                    decisions += [Decision(item.output_id, "rejected", rule_name, "budget", item.score, None)
                                  for item, _ in queue]
                    break
                # One round: the best held items that may still fill the budget, their
                # candidates completed together (one deadline for the round, not one each).
                chosen, deferred, tentative = [], [], list(places)
                while queue and len(chosen) < rule.budget.max_tasks - taken:
                    item, output = queue.pop(0)
                    if rule.quota and not self._quota_allows(rule, window, output, tentative):
                        if self._quota_allows(rule, window, output, places):
                            deferred.append((item, output))  # only if a round-mate takes its place
                        else:
                            decisions.append(Decision(item.output_id, "rejected", rule_name, "quota", item.score,
                                                      None))
                        continue
                    chosen.append((item, output))
                    if rule.quota:
                        tentative += self._quota_places(rule, window, output)
                tasks = self._build_tasks(rule, [(output, item.score) for item, output in chosen])
                for (item, output), task in zip(chosen, tasks):
                    if task is None:
                        decisions.append(Decision(item.output_id, "dropped", rule_name, "too_few_candidates",
                                                  item.score, None))
                        continue
                    taken += 1
                    if rule.quota:
                        places += self._quota_places(rule, window, output)
                    task_json = task.model_dump_json()
                    decisions.append(Decision(item.output_id, "selected", rule_name, "budget_top_k",
                                              item.score, task_json))
                    outgoing.append(_task_outgoing(task, task_json))
                queue = deferred + queue
                if not chosen:  # everything left waited on a place nobody took
                    decisions += [Decision(item.output_id, "rejected", rule_name, "quota", item.score, None)
                                  for item, _ in queue]
                    break
            self._closing[(rule_name, window)] = (decisions, places)
        self._closing_hits, self._hits = self._hits, Counter()
        return outgoing

    def delivered(self, outgoing: list[Outgoing]) -> None:
        now = self._clock()
        for (rule_name, window), (decisions, places) in self._closing.items():
            self._store.close_window(rule_name, window, decisions, now, places)
            self._quotas.add((p.rule, p.window_start, p.value) for p in places)
            tally = MetricTally()
            for decision in decisions:
                tally.count(decision)
            tally.apply(self._metrics)
        if self._closing:
            self._metrics_redactions(self._closing_hits)
        self._closing, self._closing_hits = {}, Counter()

    # -- pieces ---------------------------------------------------------------------

    def _judge(self, rule: SamplingRule, output: ModelOutput, coin: float) -> Verdict:
        """`coin`: the rule's stable fraction of the output (`stable_fraction(rule.name,
        output_id)`)."""
        if rule.strategy == "uniform":
            if coin >= rule.rate and rule.budget is None:
                return _NOT_TAKEN  # most outputs: no verdict to build
            return Verdict(True, rule.rate, coin)
        if rule.strategy == "feedback":
            score = feedback_score(output)
            return Verdict(score > 0 and coin < rule.rate, score, score + coin * 1e-6)
        if rule.strategy == "uncertainty":
            return self._judge_uncertainty(rule, output, coin)
        assert self._novelty is not None
        novelty, vector = self._novelty.novelty(prompt_text(output))
        accepted = (rule.min_score is None or novelty >= rule.min_score) and coin < rule.rate
        return Verdict(accepted, novelty, novelty, vector)

    def _judge_uncertainty(self, rule: SamplingRule, output: ModelOutput, coin: float) -> Verdict:
        rewards = None
        if self._reward is not None and len(output.candidates) >= 2:
            # Scored as the task will carry it: redacted text is what annotators rank and
            # what the reward model is trained on, so the margin must be on it too.
            conversation, candidates = list(output.conversation), list(output.candidates)
            if self._redactor is not None:
                conversation, candidates = self._redact(conversation, candidates, count=False)
            rewards = self._reward.rewards(prompt_messages(output.model_copy(update={"conversation": conversation})),
                                           [c.text for c in candidates])
        if rewards is None:
            self._fallbacks += 1  # counted with the record's batch
            return Verdict(coin < rule.fallback_rate, 0.0, coin)
        margin = reward_margin(rewards)
        accepted = (rule.max_margin is None or margin <= rule.max_margin) and coin < rule.rate
        return Verdict(accepted, margin, -margin)

    def _select_now(self, rule: SamplingRule, output: ModelOutput, verdict: Verdict, window: float,
                    prompt_hash: str, now: float) -> Staged:
        # The completion calls run before anything is written (see the module doc).
        score = verdict.score
        task = self._build_task(rule, output, score)
        outgoing: list[Outgoing] = []
        if task is None:
            decision = Decision(output.output_id, "dropped", rule.name, "too_few_candidates", score, None)
            places: list[QuotaCount] = []  # no task, no quota place
        else:
            task_json = task.model_dump_json()
            decision = Decision(output.output_id, "selected", rule.name, "rule", score, task_json)
            places = self._quota_places(rule, window, output) if rule.quota else []
            # the task in hand is what `_outcome` would parse back from the stored JSON
            outgoing.append(_task_outgoing(task, task_json))
        return Staged(outgoing, [], DecisionWrite(decision, now, prompt_hash, tuple(places)), verdict.vector)

    def _select_comparison(self, output: ModelOutput, window: float, now: float) -> Staged:
        """The blind A/B task; no prompt hash is recorded (see comparisons.py), and its
        quota place is taken with the decision."""
        conversation, candidates = list(output.conversation), blind_order(output)
        if self._redactor is not None:
            conversation, candidates = self._redact(conversation, candidates)
        task_id = task_id_for(output.output_id)
        task = RankingTask(
            event_id=task_id, task_id=task_id, output_id=output.output_id,
            conversation_id=output.conversation_id, prompt=conversation, candidates=candidates,
            sampling=SamplingDecision(rule=COMPARISON_RULE, strategy=COMPARISON_STRATEGY),
            app=output.app, tags=list(output.tags), ab=output.ab,
        )
        task_json = task.model_dump_json()
        decision = Decision(output.output_id, "selected", COMPARISON_RULE, COMPARISON_STRATEGY, None, task_json)
        place = QuotaCount(COMPARISON_RULE, window, COMPARISON_QUOTA_VALUE)
        return Staged([_task_outgoing(task, task_json)], [], DecisionWrite(decision, now, quota=(place,)))

    def _feedback_preferences(self, output: ModelOutput) -> tuple[PreferenceMarks | None, list[Outgoing]]:
        """The preferences the output's feedback states (redacted as its task would be),
        and their marks for the batch (counted the first time only, at the flush)."""
        if not self._feedback.opted_in(output.tenant) or not output.feedback:
            return None, []
        hits: Counter[str] = Counter()
        if self._redactor is not None:
            output, hits = self._redacted_output(output)
        preferences = feedback_preferences(output, self._feedback)
        if not preferences:
            return None, []
        marks = PreferenceMarks(output.output_id, [(p.preference_id, p.source) for p in preferences],
                                self._clock(), hits)
        return marks, [Outgoing(PREFERENCES, p) for p in preferences]

    def _redacted_output(self, output: ModelOutput) -> tuple[ModelOutput, Counter[str]]:
        """The output with its prompt, answers and edited texts redacted alike (so an
        edit that only removed an e-mail address is no preference), and what was found."""
        redactor = self._redactor
        assert redactor is not None
        found: Counter[str] = Counter()

        def redact(text: str) -> str:
            redacted, hits = redactor.redact(text)
            found.update(hits)
            return redacted

        conversation = [m.model_copy(update={"content": redact(m.content)}) for m in output.conversation]
        candidates = [c.model_copy(update={"text": redact(c.text)}) for c in output.candidates]
        feedback = [f.model_copy(update={"edited_text": redact(f.edited_text)}) if f.edited_text else f
                    for f in output.feedback]
        return output.model_copy(update={"conversation": conversation, "candidates": candidates,
                                         "feedback": feedback}), found

    def _remember(self, vector: np.ndarray | None) -> None:
        if vector is not None and self._novelty is not None:
            self._novelty.remember(vector)

    @staticmethod
    def _outcome(decision: Decision) -> list[Outgoing]:
        """What a stored decision emits: its task if selected (the same task, same id,
        on every redelivery), otherwise nothing."""
        if decision.status == "selected" and decision.task_json:
            return [_task_outgoing(RankingTask.model_validate_json(decision.task_json), decision.task_json)]
        return []

    def _build_task(self, rule: SamplingRule, output: ModelOutput, score: float) -> RankingTask | None:
        return self._build_tasks(rule, [(output, score)])[0]

    def _build_tasks(self, rule: SamplingRule, outputs: list[tuple[ModelOutput, float]]) -> list[RankingTask | None]:
        """The task of each output (None: fewer than MIN_RANKED candidates even after
        completion); the missing candidates of all of them are asked for together."""
        completer = self._completer
        wanted = [i for i, (output, _) in enumerate(outputs)
                  if completer is not None and completer.missing(len(output.candidates))]
        extra: dict[int, list[Candidate]] = {}
        if completer is not None and wanted:
            found = completer.complete_many([(outputs[i][0].output_id, list(outputs[i][0].conversation),
                                              len(outputs[i][0].candidates)) for i in wanted])
            extra = dict(zip(wanted, found))
        return [self._task_of(rule, output, score, extra.get(i, [])) for i, (output, score) in enumerate(outputs)]

    def _task_of(self, rule: SamplingRule, output: ModelOutput, score: float,
                 completed: list[Candidate]) -> RankingTask | None:
        conversation = list(output.conversation)
        candidates = [*output.candidates, *completed][:MAX_RANKED]
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

    def _redact(self, conversation: list[ChatMessage], candidates: list[Candidate], count: bool = True
                ) -> tuple[list[ChatMessage], list[Candidate]]:
        """`count`: add what was found to the redaction metrics (once per task, not
        again when the same text is only scored)."""
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
        if count:
            self._hits.update(found)  # counted with the record's batch (or the delivered window)
        return new_conversation, new_candidates

    def _metrics_redactions(self, hits: Counter[str]) -> None:
        for kind, n in hits.items():
            self._metrics.redactions.labels(kind).inc(n)

    def _window_start(self, rule: SamplingRule, now: float) -> float:
        return (now // rule.window_s) * rule.window_s

    @staticmethod
    def _quota_values(rule: SamplingRule, output: ModelOutput) -> list[str]:
        assert rule.quota is not None
        if rule.quota.by == "tag":
            return list(output.tags) or ["-"]
        return [getattr(output, rule.quota.by) or "-"]

    def _quota_places(self, rule: SamplingRule, window: float, output: ModelOutput) -> list[QuotaCount]:
        return [QuotaCount(rule.name, window, value) for value in self._quota_values(rule, output)]

    def _quota_allows(self, rule: SamplingRule, window: float, output: ModelOutput,
                      pending: list[QuotaCount] | None = None) -> bool:
        """Room left for `output` in every quota value it falls under, counting the
        places `pending` (a closing window's earlier picks) takes but has not stored."""
        assert rule.quota is not None
        return all(self._quota_count(rule.name, window, value)
                   + sum(1 for p in pending or [] if p.value == value) < rule.quota.max_per_window
                   for value in self._quota_values(rule, output))
