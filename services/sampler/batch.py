"""A polled batch's decisions, held in memory until one store transaction writes them.

The sampler decides each output as its handler is called, but writes nothing then:
the decision, the prompt hash, the quota places and the held item join the batch here,
and the consumer loop's batch sink (`Sampler.flush`) writes them all in one
transaction once the batch's handlers are done, before the commit. Later records of
the batch see what earlier ones decided through this overlay (`decision`,
`prompt_seen_at`, `quota_taken`): two outputs of one batch with the same prompt make
the second a duplicate, an output twice in one batch re-emits the first's task, exactly
as if each decision had been written at once.

A record joins the batch only when its handler succeeded (`add`, the handler's last
step), so a handler retried in place finds no half of its first attempt. What a batch
emits leaves only after its transaction committed (`Sampler.emitted`), so a task on
the topic always has its decision in the store.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from shared.bus import Outgoing

from .metrics import MetricTally
from .store import BatchWrite, Decision, DecisionWrite


@dataclass(frozen=True)
class PreferenceMarks:
    """An output's feedback preferences: marked in the store, counted if new."""

    output_id: str
    ids_and_sources: list[tuple[str, str]]
    at: float
    redactions: Counter[str]


@dataclass
class Staged:
    """One record's share of the batch (only records that emit or store something)."""

    outgoing: list[Outgoing]  # its task, if any
    preferences: list[Outgoing]  # its feedback preferences, if any
    write: DecisionWrite | None = None
    vector: np.ndarray | None = None  # novelty: remembered once the decision is stored


@dataclass
class PendingBatch:
    records: list[Staged] = field(default_factory=list)
    marks: list[PreferenceMarks] = field(default_factory=list)
    tally: MetricTally = field(default_factory=MetricTally)  # counts of the batch beyond its decisions
    # outputs no rule took, by reason (nothing stored; counted into `tally` at the flush:
    # one increment per output here instead of two)
    rejected: Counter[str] = field(default_factory=Counter)
    _decisions: dict[str, Decision] = field(default_factory=dict)
    _prompts: dict[str, float] = field(default_factory=dict)
    _quota: Counter[tuple[str, float, str]] = field(default_factory=Counter)

    # the overlay: what earlier records of the batch decided -----------------------

    def decision(self, output_id: str) -> Decision | None:
        return self._decisions.get(output_id)

    def prompt_seen_at(self, prompt_hash: str) -> float | None:
        return self._prompts.get(prompt_hash)

    def quota_taken(self, rule: str, window_start: float, value: str) -> int:
        return self._quota.get((rule, window_start, value), 0)

    # staging ----------------------------------------------------------------------

    def add(self, staged: Staged, marks: PreferenceMarks | None = None) -> None:
        """A record whose handler succeeded (its last step: nothing can fail after it)."""
        self.records.append(staged)
        if marks is not None:
            self.marks.append(marks)
        write = staged.write
        if write is not None:
            self._decisions[write.decision.output_id] = write.decision
            if write.prompt_hash is not None:
                self._prompts[write.prompt_hash] = write.at
            for place in write.quota:
                self._quota[(place.rule, place.window_start, place.value)] += 1

    def to_write(self) -> BatchWrite:
        return BatchWrite(
            decisions=[s.write for s in self.records if s.write is not None],
            preferences=[(m.output_id, [pid for pid, _ in m.ids_and_sources], m.at) for m in self.marks],
        )

    def __bool__(self) -> bool:
        return bool(self.records or self.marks or self.rejected or self.tally.decisions)
